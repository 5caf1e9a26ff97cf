"""Command line: python -m routed {presets, train, eval, route, sweep, reproduce}."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from routed.config import PRESETS, ModelConfig, TrainConfig, get_preset


def _layer_weights(text: str) -> dict[int, float]:
    """Parse "1:0.7,3:0.3" into {1: 0.7, 3: 0.3}."""
    weights = {}
    for part in text.split(","):
        layer, sep, weight = part.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"layer weights are LAYER:WEIGHT pairs, got {part!r}")
        try:
            layer, weight = int(layer), float(weight)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad layer weight {part!r}") from exc
        if layer in weights:
            raise argparse.ArgumentTypeError(f"layer {layer} is given twice in {text!r}")
        weights[layer] = weight
    return weights


def _threshold(text: str) -> float | str:
    if text.lower() in ("none", "off", "default"):
        return text.lower().replace("off", "none")
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"threshold must be a number in [0, 1] or 'none', got {text!r}") from exc


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"thresholds are comma-separated numbers, got {text!r}") from exc
    if not values:  # an empty table would have no reference row to print
        raise argparse.ArgumentTypeError(f"thresholds: give at least one number in [0, 1], got {text!r}")
    return values


def _exits(text: str) -> list[int]:
    try:
        return sorted({int(e) for e in text.split(",") if e.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"exits are comma-separated layer numbers, got {text!r}") from exc


def cmd_presets(args) -> int:
    print(f"{'name':<18} {'layers':>6}  {'layer weights':<30} {'threshold':>9}  description")
    for p in PRESETS.values():
        weights = ", ".join(f"{k}: {v:.3g}" for k, v in p.layer_weights.items())
        threshold = "none" if p.routing_threshold is None else f"{p.routing_threshold:g}"
        print(f"{p.name:<18} {p.n_layers:>6}  {{{weights}}}{'':<{28 - len(weights)}} {threshold:>9}  {p.description}")
    return 0


def build_configs(args) -> tuple[ModelConfig, TrainConfig]:
    """Model and training configs from a preset plus command-line overrides."""
    preset = get_preset(args.preset)
    model_overrides = {
        k: v
        for k, v in {
            "vocab_size": args.vocab_size,
            "n_layers": args.n_layers,
            "d_model": args.d_model,
            "n_heads": args.n_heads,
            "context_length": args.context_length,
            "dropout": args.dropout,
        }.items()
        if v is not None
    }
    model_config = preset.model_config(**model_overrides)
    train_fields = {
        "steps": args.steps,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "grad_clip": args.grad_clip,
        "seed": args.seed,
        "eval_interval": args.eval_interval,
        "patience": args.patience,
        "bf16": args.bf16 or None,
    }
    overrides = {k: v for k, v in train_fields.items() if v is not None}
    if args.epochs is not None:
        overrides["steps"] = None
    if args.layer_weights is not None:
        overrides["layer_weights"] = args.layer_weights
    if args.threshold not in (None, "default"):  # "default": the preset's own threshold
        overrides["routing_threshold"] = None if args.threshold == "none" else args.threshold
    base = preset.train_config()
    merged = {**base.to_dict(), **overrides}
    if "layer_weights" not in overrides:
        merged["layer_weights"] = dict(preset.layer_weights)
    train_config = TrainConfig.from_dict(merged)
    train_config.check_model(model_config)
    return model_config, train_config


def cmd_train(args) -> int:
    from tqdm import tqdm

    from routed.checkpoint import save_trained, train_state_path
    from routed.data import load_corpus
    from routed.train import train

    model_config, train_config = build_configs(args)
    corpus = load_corpus(args.corpus, text_column=args.text_column, max_chars=args.max_chars)
    bar = tqdm(total=1, unit="step", dynamic_ncols=True, disable=args.quiet)

    def on_progress(p):
        bar.total = p.total_steps
        bar.n = p.step
        postfix = {"loss": f"{p.train_loss:.3f}", "tok/s": f"{p.tokens_per_s:,.0f}"}
        if p.validation:
            postfix["val_ppl"] = "/".join(f"{v:.1f}" for v in p.validation["val_ppl"].values())
            bar.write(f"step {p.step}: validation PPL by exit {json.dumps({k: round(v, 2) for k, v in p.validation['val_ppl'].items()})}")
        bar.set_postfix(postfix)
        bar.refresh()

    state = train_state_path(args.out)  # saved at every validation, so that --resume can continue
    if args.resume and not (state / "state.json").is_file():
        print(f"nothing to resume in {state}: starting from step 0", file=sys.stderr)
    result = train(model_config, train_config, corpus, on_progress=on_progress, device=args.device,
                   state_dir=state, resume=args.resume)
    bar.close()
    if result.rank != 0:  # under torchrun, rank 0 alone writes the checkpoint
        return 0
    path = save_trained(args.out, result, extra={"preset": args.preset, "processes": result.world})
    last = result.history[-1] if result.history else {}
    if result.diverged:
        print(f"error: training stopped: {result.diverged}; saved the last good weights "
              f"(best validation at step {result.best_step}) to {path}", file=sys.stderr)
        return 1
    shutil.rmtree(state, ignore_errors=True)  # finished: nothing left to resume
    print(f"saved {path} (best step {result.best_step}{', stopped early' if result.stopped_early else ''})")
    if last:
        print("validation PPL by exit:", {k: round(v, 2) for k, v in last["val_ppl"].items()})
    return 0


def _load(args):
    from routed.checkpoint import load_checkpoint

    return load_checkpoint(args.checkpoint)


def _resolve_threshold(arg, ckpt) -> float | None:
    """'default' -> the checkpoint's own routing threshold; 'none' -> no routing."""
    if arg == "default":
        return ckpt.train_config.routing_threshold
    return None if arg == "none" else arg


def cmd_eval(args) -> int:
    from routed.evaluate import records_for_checkpoint, summary

    ckpt = _load(args)
    threshold = _resolve_threshold(args.threshold, ckpt)
    records = records_for_checkpoint(ckpt, args.split, corpus=args.corpus)
    result = summary(records, threshold, args.measure)
    result |= {"checkpoint": str(ckpt.path), "split": args.split, "corpus": args.corpus or ckpt.corpus}
    if args.mode == "sparse":
        from routed.data import encode, load_corpus
        from routed.inference import routed_ppl

        text = load_corpus(args.corpus or ckpt.corpus).split(args.split)
        sparse = routed_ppl(ckpt.model, encode(ckpt.tokenizer, text), threshold, "sparse")
        result["sparse_ppl"] = sparse["ppl"]  # deep tokens see propagated states of exited ones
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{ckpt.name}: {result['tokens']:,} tokens of {result['corpus']} ({args.split})")
    for layer, ppl in result["ppl_by_exit"].items():
        print(f"  exit {layer} PPL      {ppl:10.2f}")
    t = "none (last exit for every token)" if threshold is None else f"{threshold:g} ({args.measure})"
    print(f"  threshold       {t}")
    print(f"  routed PPL      {result['routed_ppl']:10.2f}  (dense: every layer runs, as in the notes)")
    if "sparse_ppl" in result:
        print(f"  sparse PPL      {result['sparse_ppl']:10.2f}  (deep layers skipped for exited tokens)")
    print(f"  Shallow%        {result['shallow_pct']:10.1f}")
    print(f"  Compute%        {result['compute_pct']:10.1f}")
    print(f"  FLOPs%          {result['flops_pct']:10.1f}")
    return 0


def cmd_route(args) -> int:
    from routed.evaluate import route_text

    ckpt = _load(args)
    threshold = _resolve_threshold(args.threshold, ckpt)
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


def cmd_sweep(args) -> int:
    from routed.evaluate import records_for_checkpoint, sweep

    ckpt = _load(args)
    records = records_for_checkpoint(ckpt, args.split, corpus=args.corpus)
    if args.exits:
        return _print_multi_exit(ckpt, records, args)
    rows = sweep(records, args.thresholds, args.measure)
    sparse = _sparse_ppls(ckpt, args, rows["threshold"]) if args.mode == "sparse" else None
    print(f"{ckpt.name} on {args.corpus or ckpt.corpus} ({args.split}), confidence: {args.measure}")
    print("| Threshold | PPL | Shallow% | Compute% | FLOPs% |" + (" sparse PPL |" if sparse else ""))
    print("|---|---|---|---|---|" + ("---|" if sparse else ""))
    for i, t in enumerate(rows["threshold"]):
        print(
            f"| {t:.2f} | {rows['routed_ppl'][i]:.2f} | {rows['shallow_pct'][i]:.1f}% | "
            f"{rows['compute_pct'][i]:.1f}% | {rows['flops_pct'][i]:.1f}% |" + (f" {sparse[i]:.2f} |" if sparse else "")
        )
    print(
        f"reference: shallow-only PPL {rows['shallow_ppl'][0]:.2f}, deep-only PPL {rows['deep_ppl'][0]:.2f}, "
        f"oracle PPL {rows['oracle_ppl'][0]:.2f}"
    )
    if sparse:
        print("PPL is dense routing (every layer runs); sparse PPL skips the deep layers for exited tokens.")
    if args.csv:
        from routed.checkpoint import write_sweep

        write_sweep(args.csv, rows)
        print(f"wrote {args.csv}")
    return 0


def _sparse_ppls(ckpt, args, thresholds, exits=None) -> list[float]:
    """PPL of sparse execution at each threshold (one routed pass each: sparse PPL is not a sweep)."""
    from routed.data import encode, load_corpus
    from routed.inference import routed_ppl

    tokens = encode(ckpt.tokenizer, load_corpus(args.corpus or ckpt.corpus).split(args.split))
    return [routed_ppl(ckpt.model, tokens, float(t), "sparse", exits)["ppl"] for t in thresholds]


def _print_multi_exit(ckpt, records, args) -> int:
    from routed.evaluate import sweep_exits

    rows = sweep_exits(records, args.thresholds, args.exits, propagate_kv=args.mode == "sparse")
    exits = sorted(int(k[5:-4]) for k in rows if k.startswith("exit_"))
    sparse = _sparse_ppls(ckpt, args, rows["threshold"], exits) if args.mode == "sparse" else None
    print(f"{ckpt.name} on {args.corpus or ckpt.corpus} ({args.split}); exits {exits}, max-softmax confidence")
    head = " | ".join(f"exit {e}%" for e in exits)
    print(f"| Threshold | PPL | {head} | Compute% | FLOPs% |" + (" sparse PPL |" if sparse else ""))
    print("|---|---|" + "---|" * len(exits) + "---|---|" + ("---|" if sparse else ""))
    for i, t in enumerate(rows["threshold"]):
        shares = " | ".join(f"{rows[f'exit_{e}_pct'][i]:.1f}%" for e in exits)
        print(f"| {t:.2f} | {rows['routed_ppl'][i]:.2f} | {shares} | {rows['compute_pct'][i]:.1f}% | "
              f"{rows['flops_pct'][i]:.1f}% |" + (f" {sparse[i]:.2f} |" if sparse else ""))
    return 0


def cmd_calibrate(args) -> int:
    from routed.evaluate import records_for_checkpoint, summary, threshold_for

    ckpt = _load(args)
    val = records_for_checkpoint(ckpt, "validation", corpus=args.corpus)
    test = records_for_checkpoint(ckpt, "test", corpus=args.corpus)
    threshold = threshold_for(
        val, target_compute=args.target_compute, max_ppl_increase=args.max_ppl_increase, measure=args.measure
    )
    result = {"threshold": threshold, "validation": summary(val, threshold, args.measure), "test": summary(test, threshold, args.measure)}
    print(json.dumps(result, indent=2))
    return 0


def cmd_reproduce(args) -> int:
    from routed.reproduce import ReproduceSettings, reproduce

    settings = ReproduceSettings(
        corpus=args.corpus or ("python-docs" if args.quick else "wikitext-2"), seeds=args.seeds, epochs=args.epochs, steps=args.steps, quick=args.quick,
        alphas=not args.no_alphas, vocab_size=args.vocab_size, d_model=args.d_model, n_heads=args.n_heads,
    )
    out = Path(args.out)
    reproduce(settings, out)
    if args.export:
        from routed.reproduce import export_checkpoints

        for path in export_checkpoints(out, Path(args.export), prefix=args.export_prefix):
            print(f"exported {path}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m routed", description="Confidence-routed transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("presets", help="the research notes' configurations").set_defaults(func=cmd_presets)

    p = sub.add_parser("train", help="train a model and save a checkpoint folder")
    p.add_argument("--preset", default="asymmetric_best", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--corpus", default="python-docs", help="python-docs, wikitext-2, tinyshakespeare, tinystories, hf:NAME, or a path")
    p.add_argument("--text-column", default="text", help="column of a hf: dataset holding the text")
    p.add_argument("--max-chars", type=int, help="cap on the training text (characters)")
    p.add_argument("--steps", type=int)
    p.add_argument("--epochs", type=float)
    for name in ("vocab-size", "n-layers", "d-model", "n-heads", "context-length", "batch-size", "warmup-steps", "seed", "eval-interval", "patience"):
        p.add_argument(f"--{name}", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--layer-weights", type=_layer_weights, help='override the preset, e.g. "1:0.8,3:0.2"')
    p.add_argument("--threshold", type=_threshold, help="routing threshold to store (or 'none')")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast only on CPUs with bf16 units)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its last validation")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.set_defaults(func=cmd_train)

    def checkpoint_args(p, with_threshold=True):
        p.add_argument("--checkpoint", required=True, help="checkpoint folder")
        p.add_argument("--corpus", help="evaluate on another corpus than the checkpoint's")
        p.add_argument("--measure", default="max_softmax", choices=["max_softmax", "margin", "neg_entropy"])
        if with_threshold:
            p.add_argument("--threshold", type=_threshold, default="default", help="default: the checkpoint's own")

    p = sub.add_parser("eval", help="PPL of every exit and of the routed model")
    checkpoint_args(p)
    p.add_argument("--mode", default="dense", choices=["dense", "sparse"],
                   help="sparse: also run routed execution that really skips layers, and report its PPL")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("route", help="per-token routing of a text")
    checkpoint_args(p)
    p.add_argument("--text", required=True)
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("sweep", help="the threshold table: PPL, Shallow%%, Compute%%, FLOPs%%")
    checkpoint_args(p, with_threshold=False)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--thresholds", type=_thresholds, default=[0.5, 0.7, 0.8, 0.9, 0.95])
    p.add_argument("--csv", help="also write the rows to this CSV file")
    p.add_argument("--exits", type=_exits, help='multi-exit routing, e.g. "1,2,3": leave at the first confident exit')
    p.add_argument("--mode", default="dense", choices=["dense", "sparse"],
                   help="sparse: also run layer-skipping execution at each threshold and report its PPL")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("calibrate", help="pick a threshold on validation, report it on test")
    checkpoint_args(p, with_threshold=False)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--target-compute", type=float, help="Compute%% to stay under")
    group.add_argument("--max-ppl-increase", type=float, help="allowed PPL rise over deep-only, e.g. 0.05")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("reproduce", help="train every preset over seeds and regenerate the notes' tables")
    p.add_argument("--corpus", help="default: wikitext-2 (python-docs with --quick)")
    p.add_argument("--seeds", type=int, default=3)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float)
    budget.add_argument("--steps", type=int)
    p.add_argument("--quick", action="store_true", help="a minutes-long miniature for smoke tests")
    p.add_argument("--no-alphas", action="store_true", help="skip the alpha sweep")
    for name in ("vocab-size", "d-model", "n-heads"):
        p.add_argument(f"--{name}", type=int, help="model size override (default: the default model)")
    p.add_argument("--out", default="reports/reproduction")
    p.add_argument("--export", help="also copy each preset's seed-0 model here (e.g. checkpoints)")
    p.add_argument("--export-prefix", default="", help="name the exported models PREFIX<preset> (e.g. tinystories-)")
    p.set_defaults(func=cmd_reproduce)
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
