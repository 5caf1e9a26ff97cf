"""Command line: python -m routed {presets, train, eval, route, sweep, exits, lens, reliability, calibrate, reproduce, ...}.

Each command lives in its own module here with a `register(subparsers)` that adds its parser.
"""

from __future__ import annotations

import argparse
import sys

from routed.cli import calibrate, evaluate, lens, reproduce, train

COMMAND_MODULES = (train, evaluate, lens, calibrate, reproduce)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m routed", description="Confidence-routed transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from routed.checkpoint import CheckpointError
    from routed.data import CorpusError

    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, CorpusError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
