"""Command line: python -m routed {presets, train, eval, route, sweep, exits, lens, reliability, calibrate, generate,
reproduce, ...}.

Each command lives in its own module here with a `register(subparsers)` that adds its parser.
"""

from __future__ import annotations

import argparse
import sys

from routed.cli import calibrate, evaluate, generate, lens, pretrained, reproduce, train

COMMAND_MODULES = (train, evaluate, lens, calibrate, generate, reproduce, pretrained)


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
    except OSError as exc:  # unwritable or odd output paths, a full disk: one line, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; use a smaller model, batch or corpus", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
