"""python -m routed reproduce: every preset over seeds, the notes' tables regenerated with verdicts."""

from __future__ import annotations

import os
from pathlib import Path

from routed.cli import args as argtypes

REPORT_TITLE = b"# Reproduction"  # the first line of the report `reproduce` writes beside its folder


def check_outputs(args) -> None:
    """Refuse, before hours of training, an --out that is not a reproduction folder (or empty), a report
    path holding another file, and --export targets that are not free (or ours, with --force)."""
    from routed.config import PRESETS
    from routed.files import MB, read_json
    from routed.folders import (
        CHECKPOINT,
        OutputError,
        check_name,
        check_output_file,
        check_replaceable,
        check_writable,
        output_folder,
    )

    if args.report_only and (args.export or args.export_only):
        raise OutputError("report-only: rewrites the report and trains and exports nothing; drop --export")
    if args.export_only and not args.export:
        raise OutputError("export-only: name the folder to copy the models into with --export (e.g. checkpoints)")
    out = output_folder(args.out, "out")
    if os.path.lexists(out):
        if out.is_symlink() or not out.is_dir():
            raise OutputError(f"out: {out} is not a folder; routed writes a reproduction into a folder of its own")
        if any(out.iterdir()):
            try:
                settings = read_json(out / "settings.json", MB, "settings.json")
            except ValueError:
                settings = None
            if not (isinstance(settings, dict) and {"corpus", "seeds"} <= set(settings)):
                raise OutputError(f"out: {out} is a folder that routed did not write (it has no reproduction "
                                  "settings.json); choose a new or empty folder")

    def is_report(path: Path) -> bool:
        with open(path, "rb") as f:
            return f.read(len(REPORT_TITLE)) == REPORT_TITLE

    check_output_file(out.parent / f"{out.name}.md", is_report, True, "out (its report)")
    check_writable(out)
    if args.export:
        dest = Path(os.path.abspath(args.export))
        if os.path.lexists(dest) and (dest.is_symlink() or not dest.is_dir()):
            raise OutputError(f"export: {dest} is not a folder")
        for name in PRESETS:
            check_replaceable(dest / check_name(args.export_prefix + name, "export-prefix"), CHECKPOINT, args.force,
                              what="export")


def check_exportable(out: Path) -> None:
    """--export-only ships a folder's seed-0 runs as they are: every preset's, so that the shipped models
    come from one budget rather than a mix of this folder's runs and older ones."""
    from routed.folders import OutputError
    from routed.reproduce_export import unfinished_exports

    if not (out / "settings.json").is_file():
        raise OutputError(f"out: {out} holds no reproduction to export; run `reproduce` with this --out first")
    missing = unfinished_exports(out)
    if missing:
        raise OutputError(f"export-only: the seed-0 runs of {', '.join(missing)} have not finished in {out}; "
                          "export once every preset's has (or drop --export-only to train them)")


def rewrite_report(out: Path) -> Path:
    """--report-only: OUT.md, its tables and figures again from the finished runs, with the folder's own settings
    (e.g. once a doubled-budget check has landed in reports/convergence/), training nothing."""
    from routed.folders import OutputError
    from routed.report import report_path, write_report
    from routed.reproduce import saved_settings

    if not (out / "settings.json").is_file():
        raise OutputError(f"out: {out} holds no reproduction to report on; run `reproduce` with this --out first")
    try:
        settings = saved_settings(out)
    except ValueError as exc:
        raise OutputError(str(exc)) from exc
    return write_report(out, settings, session_s=stated_wall_time(report_path(out)))


def stated_wall_time(report: Path) -> float | None:
    """The wall time (s) of the last invocation that trained, as the report states it (None where it does not):
    rewriting the report trains nothing, so that figure still describes the runs."""
    import re

    try:
        found = re.search(r"^Wall time of the last reproduce invocation: ([0-9.]+) min\.$",
                          report.read_text(encoding="utf-8"), re.MULTILINE)
    except (OSError, UnicodeDecodeError):
        return None
    return float(found.group(1)) * 60 if found else None


def cmd_reproduce(args) -> int:
    from routed.reproduce import DEFAULT_EPOCHS, ReproduceSettings, reproduce

    check_outputs(args)
    if args.report_only:
        print(f"wrote {rewrite_report(Path(args.out))}")
        return 0
    schedules = [list(s) for s in args.alpha_schedule] if args.alpha_schedule else [[0.9, 0.5]]
    # the default budget is written into settings.json, so a later default cannot change what a folder's runs mean
    epochs = args.epochs if (args.epochs or args.steps or args.quick) else DEFAULT_EPOCHS
    settings = ReproduceSettings(
        corpus=args.corpus or ("python-docs" if args.quick else "wikitext-2"), seeds=args.seeds, epochs=epochs,
        steps=args.steps, quick=args.quick, alphas=not args.no_alphas, alpha_schedules=schedules,
        vocab_size=args.vocab_size, d_model=args.d_model, n_heads=args.n_heads,
    )
    out = Path(args.out)
    if args.export_only:
        check_exportable(out)
    else:
        reproduce(settings, out, weights_of_seed=0 if args.export else None)  # the exported seed needs its models
    if args.export:
        from routed.reproduce_export import export_checkpoints

        for path in export_checkpoints(out, Path(args.export), prefix=args.export_prefix):
            print(f"exported {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="train every preset over seeds and regenerate the notes' tables")
    p.add_argument("--corpus", help="default: wikitext-2 (python-docs with --quick)")
    p.add_argument("--seeds", type=int, default=3)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, help="training budget of every run (default 16 epochs, the longest measured on WikiText-2; see reports/convergence.md)")
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
    p.add_argument("--export-only", action="store_true",
                   help="with --export: copy the finished seed-0 runs of --out without training anything")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report of --out from its finished runs (and any doubled-budget checks), training nothing")
    p.add_argument("--force", action="store_true",
                   help="let --export replace checkpoints of the same names (only routed checkpoints are replaced)")
    p.set_defaults(func=cmd_reproduce)
