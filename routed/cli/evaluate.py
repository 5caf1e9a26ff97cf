"""python -m routed eval | route | sweep | exits: a checkpoint's numbers on a split, per token or per threshold."""

from __future__ import annotations

import json

from routed.cli import args as argtypes
from routed.ledger import EXECUTIONS, KV_POLICIES


def load(args):
    """The checkpoint of --checkpoint: a routed folder, an exit-adapters folder or hf:NAME_OR_FOLDER.

    A pretrained model reads out only the layers --exits names (and its last), when given.
    """
    from routed.pretrained import load_any

    ckpt = load_any(args.checkpoint)
    if hasattr(ckpt.model, "default_exits"):
        import torch

        from routed.devices import default_threads
        from routed.records import model_exits

        torch.set_num_threads(default_threads())
        if getattr(args, "exits", None):
            ckpt.model.default_exits = model_exits(ckpt.model, args.exits)
    return ckpt


def resolve_threshold(arg, ckpt) -> float | None:
    """'default' -> the checkpoint's own routing threshold; 'none' -> no routing."""
    if arg == "default":
        return ckpt.train_config.routing_threshold
    return None if arg == "none" else arg


def records(ckpt, args, split: str | None = None):
    """The checkpoint's per-token records on the split, less the corpus markers when asked (cached)."""
    from routed.records import records_for_checkpoint

    result = records_for_checkpoint(ckpt, split or args.split, corpus=args.corpus)
    return result.without_markers() if args.exclude_markers else result


def _split_tokens(ckpt, args):
    from routed.data import load_corpus
    from routed.tokenizer import encode

    return encode(ckpt.tokenizer, load_corpus(args.corpus or ckpt.corpus).split(args.split))


def sparse_run(ckpt, args, tokens, threshold: float | None, exits=None) -> dict:
    """PPL, bits per byte and cost of routed execution that really skips layers under --kv-policy (markers left out when asked)."""
    from routed.ledger import execution_cost
    from routed.model import RoutedTransformer
    from routed.sparse import routed_ppl
    from routed.tokenizer import marker_ids, token_byte_lengths

    if not isinstance(ckpt.model, RoutedTransformer):
        raise ValueError("--mode sparse runs routed's own transformer; a pretrained model is evaluated dense")
    exclude = marker_ids(ckpt.tokenizer) if args.exclude_markers else []
    run = routed_ppl(ckpt.model, tokens, threshold, "sparse", exits, exclude_ids=exclude,
                     token_bytes=token_byte_lengths(ckpt.tokenizer), kv_policy=args.kv_policy)
    shares = {e: pct / 100.0 for e, pct in run["exit_pct"].items()}
    compute, flops = execution_cost(ckpt.model_config, shares, run["execution"], exits=list(shares))
    return {"ppl": run["ppl"], "bpb": run["bpb"], "compute_pct": float(compute), "flops_pct": float(flops),
            "execution": run["execution"], "exit_pct": run["exit_pct"]}


def _markers_line(ckpt, args) -> str:
    from routed.tokenizer import marker_ids

    if not marker_ids(ckpt.tokenizer):
        return "no corpus markers in this tokenizer"
    return "corpus markers left out" if args.exclude_markers else "corpus markers included (--exclude-markers to leave them out)"


def cmd_eval(args) -> int:
    from routed.sweep import summary

    ckpt = load(args)
    threshold = resolve_threshold(args.threshold, ckpt)
    result = summary(records(ckpt, args), threshold, args.measure)
    result |= {"checkpoint": str(ckpt.path), "split": args.split, "corpus": args.corpus or ckpt.corpus,
               "markers_excluded": bool(args.exclude_markers)}
    if args.mode == "sparse":
        sparse = sparse_run(ckpt, args, _split_tokens(ckpt, args), threshold)
        result |= {f"sparse_{k}": v for k, v in sparse.items()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{ckpt.name}: {result['tokens']:,} tokens ({result['bytes']:,} bytes) of {result['corpus']} "
          f"({args.split}); {_markers_line(ckpt, args)}")
    for layer, ppl in result["ppl_by_exit"].items():
        print(f"  exit {layer}: PPL per token {ppl:10.2f}   bits per byte {result['bpb_by_exit'][layer]:.4f}")
    t = "none (last exit for every token)" if threshold is None else f"{threshold:g} ({args.measure})"
    print(f"  threshold       {t}")
    print(f"  routed PPL      {result['routed_ppl']:10.2f}  per token; {result['routed_bpb']:.4f} bits per byte "
          "(the notes' routing: deep tokens see every deeper state)")
    print(f"  Shallow%        {result['shallow_pct']:10.1f}")
    print(f"  Compute%        {result['compute_pct']:10.1f}  (layers on each token's path)")
    print(f"  FLOPs%          {result['flops_pct']:10.1f}  ({result['execution']} execution: {EXECUTIONS[result['execution']]})")
    if "sparse_ppl" in result:
        execution = result["sparse_execution"]
        print(f"  sparse PPL      {result['sparse_ppl']:10.2f}  per token; {result['sparse_bpb']:.4f} bits per byte "
              f"(deep layers skipped for exited tokens; KV policy {execution})")
        print(f"  sparse FLOPs%   {result['sparse_flops_pct']:10.1f}  ({execution} execution: {EXECUTIONS[execution]})")
    return 0


def cmd_route(args) -> int:
    from routed.text import route_text

    ckpt = load(args)
    threshold = resolve_threshold(args.threshold, ckpt)
    routed = route_text(ckpt.model, ckpt.tokenizer, args.text, threshold, args.measure)
    r = routed.records
    exits = sorted(r.nll)
    label = "none (every token deep)" if threshold is None else f"{threshold:g} ({args.measure})"
    print(f"threshold {label}; {routed.windows} window(s) of {ckpt.model_config.context_length}")
    header = f"{'token':<20} {'confidence':>10}  {'path':<8}" + "".join(f" {'NLL@' + str(k):>8}" for k in exits)
    print(header)
    print(f"{routed.tokens[0]!r:<20} {'':>10}  {'(context)':<8}")
    for i, shallow in enumerate(routed.shallow):
        row = f"{routed.tokens[i + 1]!r:<20} {r.confidence[args.measure][i]:10.3f}  {'shallow' if shallow else 'deep':<8}"
        print(row + "".join(f" {r.nll[k][i]:8.3f}" for k in exits))
    n = len(routed.shallow)
    print(f"shallow {routed.shallow.sum()}/{n} tokens ({100 * routed.shallow.mean():.1f}%)")
    return 0


def csv_output(args):
    """Where `sweep --csv` writes: a new file, a sweep of ours (with --force), or a checkpoint folder's sweep.csv."""
    from pathlib import Path

    from routed.folders import CHECKPOINT, OutputError, check_output_file, check_writable, ownership_problem
    from routed.sweepfile import SWEEP_FILE, is_sweep_csv

    if args.exits:
        raise ValueError("csv: a multi-exit sweep has other columns; drop --exits to write the CSV")
    path = Path(args.csv)
    if path.is_dir() and not path.is_symlink():
        if ownership_problem(path, CHECKPOINT) is not None or not (path / "config.json").is_file():
            raise OutputError(f"csv: {path} is a folder and not a routed checkpoint; give a file path")
        path = path / SWEEP_FILE
    check_output_file(path, is_sweep_csv, args.force, "csv")
    check_writable(path, "csv")
    return path


def cmd_sweep(args) -> int:
    from routed.sweep import DENSE_EXECUTION, sweep, sweep_exits

    csv_path = csv_output(args) if args.csv else None
    ckpt = load(args)
    recs = records(ckpt, args)
    exits = sorted(set(args.exits or []) | {recs.early_exit, ckpt.model_config.n_layers})
    if args.exits:
        rows = sweep_exits(recs, args.thresholds, exits)
    else:
        rows = sweep(recs, args.thresholds, args.measure)
    sparse = None
    if args.mode == "sparse":  # one routed pass per threshold: sparse PPL is not a sweep
        tokens = _split_tokens(ckpt, args)
        sparse = [sparse_run(ckpt, args, tokens, float(t), exits) for t in rows["threshold"]]
    shown = [e for e in exits if f"exit_{e}_pct" in rows]
    print(f"{ckpt.name} on {args.corpus or ckpt.corpus} ({args.split}), "
          f"{'exits ' + str(exits) + ', max_softmax' if args.exits else 'confidence: ' + args.measure}; {_markers_line(ckpt, args)}")
    head = "".join(f" exit {e}% |" for e in shown) if shown else " Shallow% |"
    print(f"| Threshold | PPL | bits/byte |{head} Compute% | FLOPs% ({DENSE_EXECUTION}) |"
          + (f" sparse PPL | sparse bits/byte | FLOPs% ({args.kv_policy}) |" if sparse else ""))
    print("|---|---|---|" + "---|" * max(1, len(shown)) + "---|---|" + ("---|---|---|" if sparse else ""))
    for i, t in enumerate(rows["threshold"]):
        shares = "".join(f" {rows[f'exit_{e}_pct'][i]:.1f}% |" for e in shown) if shown else f" {rows['shallow_pct'][i]:.1f}% |"
        line = (f"| {t:.2f} | {rows['routed_ppl'][i]:.2f} | {rows['routed_bpb'][i]:.4f} |{shares} "
                f"{rows['compute_pct'][i]:.1f}% | {rows['flops_pct'][i]:.1f}% |")
        if sparse:
            s = sparse[i]
            line += f" {s['ppl']:.2f} | {s['bpb']:.4f} | {s['flops_pct']:.1f}% |"
        print(line)
    if not args.exits:
        print(f"reference: shallow-only PPL {rows['shallow_ppl'][0]:.2f}, deep-only PPL {rows['deep_ppl'][0]:.2f}, "
              f"oracle PPL {rows['oracle_ppl'][0]:.2f} (per token)")
    print(f"PPL is the notes' routing; FLOPs% ({DENSE_EXECUTION}) is the cheapest execution giving exactly it: "
          f"{EXECUTIONS[DENSE_EXECUTION]}.")
    if sparse:
        print(f"sparse ({args.kv_policy}): {EXECUTIONS[args.kv_policy]}.")
    if csv_path is not None:
        from routed.checkpoint import write_sweep

        write_sweep(csv_path, rows)
        print(f"wrote {csv_path}")
    return 0


def cmd_exits(args) -> int:
    from routed.breakdown import what_exits
    from routed.tokenizer import token_strings

    ckpt = load(args)
    threshold = resolve_threshold(args.threshold, ckpt)
    if threshold is None:
        raise ValueError("threshold: the checkpoint stores no threshold; give --threshold T")
    recs = records(ckpt, args)
    ids = sorted({int(i) for i in recs.token_id})
    strings = dict(zip(ids, token_strings(ckpt.tokenizer, ids)))
    result = what_exits(recs, strings, threshold, args.measure, args.top)
    result |= {"checkpoint": str(ckpt.path), "split": args.split, "corpus": args.corpus or ckpt.corpus,
               "markers_excluded": bool(args.exclude_markers)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{ckpt.name} on {result['corpus']} ({args.split}) at threshold {threshold:g} ({args.measure}): "
          f"{result['shallow_tokens']:,} of {result['tokens']:,} tokens exit early ({result['shallow_pct']:.2f}%), "
          f"{result['distinct_shallow_tokens']:,} distinct; {_markers_line(ckpt, args)}")
    if not args.exclude_markers:
        print(f"corpus markers are {result['marker_share_pct']:.1f}% of the shallow tokens; without them "
              f"Shallow% is {result['shallow_pct_without_markers']:.2f}%")
    exits = sorted(recs.nll)
    print("| token | count | share of shallow | cumulative | exit rate of this token |"
          + "".join(f" NLL@{e} |" for e in exits) + " marker |")
    print("|---|---|---|---|---|" + "---|" * len(exits) + "---|")
    for row in result["rows"]:
        print(f"| {row['token']!r} | {row['count']:,} | {row['share_pct']:.1f}% | {row['cumulative_pct']:.1f}% | "
              f"{row['exit_rate_pct']:.1f}% |" + "".join(f" {row['nll_by_exit'][e]:.3f} |" for e in exits)
              + (" yes |" if row["marker"] else " |"))
    return 0


def _add_kv_policy(p) -> None:
    p.add_argument("--kv-policy", default="propagate", choices=list(KV_POLICIES),
                   help="with --mode sparse: the keys and values exited tokens leave at deeper layers "
                        "(propagate, copy, recompute = exactly dense routing, drop)")


def register(sub) -> None:
    p = sub.add_parser("eval", help="PPL and bits per byte of every exit and of the routed model")
    argtypes.add_checkpoint_args(p)
    p.add_argument("--mode", default="dense", choices=["dense", "sparse"],
                   help="sparse: also run routed execution that really skips layers, and report its PPL")
    _add_kv_policy(p)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("route", help="per-token routing of a text")
    argtypes.add_checkpoint_args(p, markers_default=None)
    p.add_argument("--text", required=True)
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("sweep", help="the threshold table: PPL, bits per byte, Shallow%%, Compute%%, FLOPs%%")
    argtypes.add_checkpoint_args(p, with_threshold=False, with_exits=False)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--thresholds", type=argtypes.thresholds, default=[0.5, 0.7, 0.8, 0.9, 0.95])
    p.add_argument("--csv", help="also write the rows to this CSV file (new; or a checkpoint folder: its sweep.csv)")
    p.add_argument("--force", action="store_true", help="replace a sweep CSV routed wrote before at --csv")
    p.add_argument("--exits", type=argtypes.exits, help='multi-exit routing, e.g. "1,2,3": leave at the first confident exit '
                   "(a pretrained model reads out these layers)")
    p.add_argument("--mode", default="dense", choices=["dense", "sparse"],
                   help="sparse: also run layer-skipping execution at each threshold and report its PPL")
    _add_kv_policy(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("exits", help="what exits: the token strings behind the shallow tokens at a threshold")
    argtypes.add_checkpoint_args(p, markers_default=False)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--top", type=int, default=20, help="rows to show (the most frequent shallow tokens)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_exits)
