"""python -m routed reproduce: every preset over seeds, the notes' tables regenerated with verdicts."""

from __future__ import annotations

from pathlib import Path

from routed.cli import args as argtypes


def cmd_reproduce(args) -> int:
    from routed.reproduce import ReproduceSettings, reproduce

    schedules = [list(s) for s in args.alpha_schedule] if args.alpha_schedule else [[0.9, 0.5]]
    settings = ReproduceSettings(
        corpus=args.corpus or ("python-docs" if args.quick else "wikitext-2"), seeds=args.seeds, epochs=args.epochs,
        steps=args.steps, quick=args.quick, alphas=not args.no_alphas, alpha_schedules=schedules,
        vocab_size=args.vocab_size, d_model=args.d_model, n_heads=args.n_heads,
    )
    out = Path(args.out)
    reproduce(settings, out)
    if args.export:
        from routed.reproduce import export_checkpoints

        for path in export_checkpoints(out, Path(args.export), prefix=args.export_prefix):
            print(f"exported {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="train every preset over seeds and regenerate the notes' tables")
    p.add_argument("--corpus", help="default: wikitext-2 (python-docs with --quick)")
    p.add_argument("--seeds", type=int, default=3)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, help="training budget of every run (default: the converged budget, 4)")
    budget.add_argument("--steps", type=int)
    p.add_argument("--quick", action="store_true", help="a minutes-long miniature for smoke tests")
    p.add_argument("--no-alphas", action="store_true", help="skip the alpha sweep (fixed and scheduled alphas)")
    p.add_argument("--alpha-schedule", type=argtypes.alpha_schedule, action="append",
                   help="a dynamic alpha START:END in the alpha sweep (repeatable; default 0.9:0.5)")
    for name in ("vocab-size", "d-model", "n-heads"):
        p.add_argument(f"--{name}", type=int, help="model size override (default: the default model)")
    p.add_argument("--out", default="reports/reproduction")
    p.add_argument("--export", help="also copy each preset's seed-0 model here (e.g. checkpoints)")
    p.add_argument("--export-prefix", default="", help="name the exported models PREFIX<preset> (e.g. tinystories-)")
    p.set_defaults(func=cmd_reproduce)
