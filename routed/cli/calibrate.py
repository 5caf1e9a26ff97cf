"""python -m routed calibrate: pick a threshold on the validation split, report it on the test split."""

from __future__ import annotations

import json

from routed.cli import args as argtypes
from routed.cli.evaluate import load, records


def cmd_calibrate(args) -> int:
    from routed.calibrate import threshold_for
    from routed.sweep import summary

    ckpt = load(args)
    val, test = records(ckpt, args, "validation"), records(ckpt, args, "test")
    threshold = threshold_for(
        val, target_compute=args.target_compute, max_ppl_increase=args.max_ppl_increase, measure=args.measure
    )
    result = {"threshold": threshold, "validation": summary(val, threshold, args.measure), "test": summary(test, threshold, args.measure)}
    print(json.dumps(result, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="pick a threshold on validation, report it on test")
    argtypes.add_checkpoint_args(p, with_threshold=False)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--target-compute", type=float, help="Compute%% to stay under")
    group.add_argument("--max-ppl-increase", type=float, help="allowed PPL rise over deep-only, e.g. 0.05")
    p.set_defaults(func=cmd_calibrate)
