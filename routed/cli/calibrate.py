"""python -m routed calibrate: pick a threshold on the validation split, report it on the test split."""

from __future__ import annotations

import json

import numpy as np

from routed.cli import args as argtypes
from routed.cli.evaluate import load, records


def agreement_counts_of(ckpt, args) -> tuple[dict, dict]:
    """Validation and test agreement counts of the first exit over the calibration grid (whole splits)."""
    from routed.calibrate import AGREEMENT_GRID, agreement_counts
    from routed.diagnostics import early_agreement

    grid = np.linspace(0.0, 1.0, AGREEMENT_GRID)
    out = []
    for split in ("validation", "test"):
        arrays = early_agreement(ckpt, split, args.corpus)
        keep = ~arrays["is_marker"] if args.exclude_markers else np.ones(len(arrays["agrees"]), bool)
        shallow, disagree = agreement_counts(arrays[args.measure][keep], arrays["agrees"][keep], grid)
        out.append({"shallow": shallow, "disagree": disagree, "tokens": int(keep.sum())})
    return out[0], out[1]


def cmd_agreement(args, ckpt) -> int:
    from routed.calibrate import AGREEMENT_GRID, guarantee_report
    from routed.sweep import summary

    epsilon = 1.0 - args.agreement
    val_counts, test_counts = agreement_counts_of(ckpt, args)
    report = guarantee_report(val_counts, test_counts, np.linspace(0.0, 1.0, AGREEMENT_GRID), epsilon, args.delta)
    threshold = report["threshold"]
    val, test = records(ckpt, args, "validation"), records(ckpt, args, "test")
    result = {"threshold": threshold, "measure": args.measure, "agreement": args.agreement, "delta": args.delta,
              "fallback": None if threshold is not None else "deep-only: no threshold meets the guarantee; no token exits",
              "guarantee": report, "validation": summary(val, threshold, args.measure),
              "test": summary(test, threshold, args.measure)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    pick, held = report["validation"], report["test"]
    print(f"{ckpt.name}: the smallest threshold whose shallow tokens agree with the last layer's top-1 on at least "
          f"{100 * args.agreement:.6g}% of them, with probability at least {100 * (1 - args.delta):.6g}% ({args.measure}; validation picks, test checks)")
    print(f"  validation: {pick['candidates']} thresholds scanned from 1 down (fixed-sequence testing), {pick['tested']} "
          f"tested (a threshold needs at least {pick['min_shallow']} shallow tokens to be certified)")
    if threshold is None:
        print("  no threshold meets the guarantee on validation: falling back to deep-only (threshold none: no token exits)")
    else:
        print(f"  picked {threshold:.3f}: {pick['shallow']:,} of {pick['tokens']:,} validation tokens exit, "
              f"{pick['disagree']:,} disagree ({pick['disagree'] / pick['shallow']:.2%}; upper {100 * (1 - args.delta):.6g}% "
              f"bound {pick['upper_bound']:.2%} <= {epsilon:.2%})")
        if held["shallow"]:
            print(f"  test: {held['shallow']:,} of {held['tokens']:,} tokens exit, agreement {held['agreement']:.2%} -> "
                  + ("the guarantee held" if held["held"] else f"the guarantee did NOT hold (below {100 * args.agreement:.6g}%)"))
        else:
            print("  test: no test token exits at this threshold (the guarantee holds vacuously)")
    row = result["test"]
    print(f"  test at this threshold: routed PPL {row['routed_ppl']:.2f}, Shallow% {row['shallow_pct']:.1f}, "
          f"Compute% {row['compute_pct']:.1f}, FLOPs% {row['flops_pct']:.1f} ({row['execution']} execution)")
    return 0


def cmd_calibrate(args) -> int:
    from routed.calibrate import check_open_unit, threshold_for
    from routed.sweep import summary

    if args.delta is not None and args.agreement is None:
        raise ValueError("delta: goes with --agreement (the guarantee's failure probability)")
    if args.agreement is not None:  # checked before any work
        args.delta = 0.1 if args.delta is None else args.delta
        check_open_unit("agreement", args.agreement, "the share of shallow tokens that must agree, e.g. 0.95")
        check_open_unit("delta", args.delta, "the allowed failure probability, e.g. 0.1")
        return cmd_agreement(args, load(args))
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
    group.add_argument("--agreement", type=float,
                       help="share of shallow tokens that must agree with the last layer's top-1, e.g. 0.95")
    p.add_argument("--delta", type=float, help="with --agreement: allowed probability that the guarantee fails (default 0.1)")
    p.add_argument("--json", action="store_true", help="print JSON (the compute and PPL targets always do)")
    p.set_defaults(func=cmd_calibrate)
