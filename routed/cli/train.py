"""python -m routed presets | train."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from routed.cli import args as argtypes
from routed.config import PRESETS, ModelConfig, TrainConfig, get_preset


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
    if args.alpha_schedule is not None:  # {1: alpha, last: 1 - alpha}, from the first step's alpha to the last's
        last = model_config.n_layers
        if last < 2:
            raise ValueError("alpha_schedule: needs a model of at least 2 layers (alpha weighs layer 1 against the last)")
        if args.layer_weights is not None:
            raise ValueError("alpha_schedule: give either --layer-weights or --alpha-schedule, not both")
        (a0, a1) = args.alpha_schedule
        overrides["layer_weights"] = {1: a0, last: round(1 - a0, 9)}
        overrides["final_layer_weights"] = {1: a1, last: round(1 - a1, 9)}
    if args.threshold not in (None, "default"):  # "default": the preset's own threshold
        overrides["routing_threshold"] = None if args.threshold == "none" else args.threshold
    base = preset.train_config()
    merged = {**base.to_dict(), **overrides}
    if "layer_weights" not in overrides:
        merged["layer_weights"] = dict(preset.layer_weights)
    train_config = TrainConfig.from_dict(merged)
    train_config.check_model(model_config)
    return model_config, train_config


def check_outputs(args, model_config, train_config) -> tuple[Path, Path]:
    """The checkpoint folder and resume-state folder of a run, refused before it starts when they are not
    free (or ours, with --force or --resume), or the run would not fit in memory."""
    from routed.checkpoint import train_state_path
    from routed.folders import CHECKPOINT, TRAIN_STATE, OutputError, check_replaceable, check_writable, output_folder
    from routed.limits import check_memory

    out = output_folder(args.out, "out")
    check_replaceable(out, CHECKPOINT, args.force)
    state = train_state_path(out)
    check_replaceable(state, TRAIN_STATE, True)
    if state.is_dir() and any(state.iterdir()) and not (args.resume or args.force):
        raise OutputError(f"out: {state} holds the state of an interrupted run of {out.name}: add --resume to "
                          "continue it, or --force to start afresh (it is then replaced)")
    from routed.devices import pick_device

    check_memory(model_config, train_config.batch_size, device=str(pick_device(args.device)))
    check_writable(out)
    return out, state


def cmd_train(args) -> int:
    from tqdm import tqdm

    from routed.checkpoint import save_trained
    from routed.data import load_corpus
    from routed.folders import TRAIN_STATE, remove_owned
    from routed.train import train

    model_config, train_config = build_configs(args)
    out, state = check_outputs(args, model_config, train_config)
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

    # the state is saved at every validation, so that --resume can continue
    if args.resume and not (state / "state.json").is_file():
        print(f"nothing to resume in {state}: starting from step 0", file=sys.stderr)
    result = train(model_config, train_config, corpus, on_progress=on_progress, device=args.device,
                   state_dir=state, resume=args.resume)
    bar.close()
    if result.rank != 0:  # under torchrun, rank 0 alone writes the checkpoint
        return 0
    if result.diverged and not result.good_weights:
        print(f"error: training stopped: {result.diverged}; no validation found finite weights: nothing saved "
              f"(the state in {state} is kept)", file=sys.stderr)
        return 1
    path = save_trained(out, result, extra={"preset": args.preset, "processes": result.world}, replace=args.force)
    last = result.history[-1] if result.history else {}
    if result.diverged:
        print(f"error: training stopped: {result.diverged}; saved the weights validated at step {result.best_step} "
              f"to {path} (its config.json says so)", file=sys.stderr)
        return 1
    remove_owned(state, TRAIN_STATE.files)  # finished: nothing left to resume
    print(f"saved {path} (best step {result.best_step}{', stopped early' if result.stopped_early else ''})")
    if last:
        print("validation PPL by exit:", {k: round(v, 2) for k, v in last["val_ppl"].items()})
    return 0


def register(sub) -> None:
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
    p.add_argument("--layer-weights", type=argtypes.layer_weights, help='override the preset, e.g. "1:0.8,3:0.2"')
    p.add_argument("--alpha-schedule", type=argtypes.alpha_schedule,
                   help="dynamic alpha: loss weights {1: a, last: 1-a} moving linearly from START to END, e.g. 0.9:0.5")
    p.add_argument("--threshold", type=argtypes.threshold, help="routing threshold to store (or 'none')")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast only on CPUs with bf16 units)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same command from its last validation")
    p.add_argument("--out", required=True, help="checkpoint folder to write (new, or empty)")
    p.add_argument("--force", action="store_true",
                   help="replace a checkpoint already at --out (only a routed checkpoint is ever replaced)")
    p.set_defaults(func=cmd_train)
