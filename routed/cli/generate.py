"""python -m routed generate: text from a checkpoint, plain, routed (layer-skipping) or self-speculative."""

from __future__ import annotations

import argparse
import json
import sys

from routed.cli import args as argtypes
from routed.ledger import KV_POLICIES

GENERATE_MODES = ("plain", "routed", "speculative")
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def draft_k(text: str) -> int | None:
    """'auto' -> None (k chosen from measured costs), else an integer."""
    if text.lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"draft k must be an integer or 'auto', got {text!r}") from exc


def _prepare(args):
    """(checkpoint on its device, prompt ids, exits, threshold, notes) after checking every argument."""
    import torch

    from routed.cli.evaluate import resolve_threshold
    from routed.devices import default_threads, pick_device
    from routed.model import RoutedTransformer
    from routed.pretrained import load_any
    from routed.records import model_exits
    from routed.sparse import trained_exits
    from routed.tokenizer import encode

    if args.draft_k is not None and args.mode != "speculative":
        raise ValueError("draft_k: --draft-k applies to --mode speculative only")
    if args.temperature < 0 or args.temperature != args.temperature:
        raise ValueError(f"temperature: must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"top_k: must be at least 1, got {args.top_k}")
    if not args.prompt:
        raise ValueError("prompt: empty; give some text to continue")
    device = pick_device(args.device)
    torch.set_num_threads(default_threads())  # more threads than free cores slows batch-1 decoding sharply
    ckpt = load_any(args.checkpoint)
    own = isinstance(ckpt.model, RoutedTransformer)
    if not own and args.mode == "speculative":
        raise ValueError("mode: speculative decoding needs routed's own transformer (its shared KV cache); "
                         "a pretrained model generates with --mode plain or --mode routed")
    if DTYPES[args.dtype] != "float32":
        ckpt.model.to(getattr(torch, DTYPES[args.dtype]))
    ckpt.model.to(device)
    ids = encode(ckpt.tokenizer, args.prompt).tolist()
    if not ids:
        raise ValueError("prompt: it encodes to no tokens; give some text to continue")
    notes = []
    ctx = ckpt.model_config.context_length
    if len(ids) > ctx:
        notes.append(f"the prompt is {len(ids):,} tokens, longer than the context of {ctx}: "
                     f"generation sees its last {ctx} tokens")
    threshold = resolve_threshold(args.threshold, ckpt)
    exits = trained_exits(ckpt.train_config, ckpt.model_config.n_layers) if own else model_exits(ckpt.model, None)
    return ckpt, ids, exits, threshold, notes


def cmd_generate(args) -> int:
    from routed.generate import generate
    from routed.hf_generate import generate_pretrained
    from routed.model import RoutedTransformer
    from routed.speculative import speculative_generate
    from routed.tokenizer import decode

    ckpt, ids, exits, threshold, notes = _prepare(args)
    options = dict(temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    if not isinstance(ckpt.model, RoutedTransformer):  # a pretrained model: no KV cache, each step up to its exit
        notes.append("a pretrained model generates without a KV cache: each step recomputes its window")
        gen = generate_pretrained(ckpt.model, ids, args.max_new_tokens, threshold if args.mode == "routed" else None,
                                  exits, **options)
    elif args.mode == "speculative":
        gen = speculative_generate(ckpt.model, ids, args.max_new_tokens, threshold, args.draft_k, exits, **options)
    elif args.mode == "routed":
        gen = generate(ckpt.model, ids, args.max_new_tokens, threshold, "sparse", exits, kv_policy=args.kv_policy,
                       **options)
    else:
        gen = generate(ckpt.model, ids, args.max_new_tokens, None, "plain", exits, **options)
    text = decode(ckpt.tokenizer, gen.token_ids)
    result = {"checkpoint": str(ckpt.path), "mode": args.mode, "text": text, "token_ids": gen.token_ids,
              "prompt_tokens": len(ids), "new_tokens": len(gen.tokens), "seconds": gen.seconds,
              "tokens_per_s": gen.tokens_per_s, "temperature": args.temperature, "seed": args.seed, "notes": notes}
    if args.mode != "plain":
        result |= {"threshold": threshold, "exits": exits,
                   "early_exit_pct": 100.0 * sum(t.exit_layer < exits[-1] for t in gen.tokens) / max(1, len(gen.tokens))}
    if args.mode == "routed":
        result["kv_policy"] = args.kv_policy
    if args.mode == "speculative":
        result |= {"draft_k": "auto" if args.draft_k is None else args.draft_k, "draft_k_used": sorted(set(gen.ks)),
                   "rounds": gen.rounds, "drafted": gen.drafted, "accepted": gen.accepted,
                   "acceptance_rate": gen.acceptance_rate, "mean_accepted_length": gen.mean_accepted_length}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(args.prompt + text)
    line = f"{len(gen.tokens)} tokens in {gen.seconds:.3f} s: {gen.tokens_per_s:,.1f} tokens/s ({args.mode}"
    if args.mode == "routed":
        line += f", KV policy {args.kv_policy}, {result['early_exit_pct']:.0f}% left at an early exit"
    if args.mode == "speculative":
        line += (f", k {result['draft_k']} (used {', '.join(map(str, result['draft_k_used']))}), acceptance "
                 f"{100 * gen.acceptance_rate:.1f}%, {gen.mean_accepted_length:.2f} accepted drafts per verification")
    print(line + ")", file=sys.stderr)
    return 0


def register(sub) -> None:
    from routed.generate import MAX_NEW_TOKENS
    from routed.speculative import MAX_DRAFT_K

    p = sub.add_parser("generate", help="continue a prompt: plain, routed (layers skipped) or self-speculative")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint folder, exit-adapters folder, or hf:NAME_OR_FOLDER (plain and routed modes)")
    p.add_argument("--prompt", required=True, help="text to continue (a prompt longer than the context is "
                   "seen through its last context-length tokens, and a note says so)")
    p.add_argument("--max-new-tokens", type=int, default=64, help=f"tokens to generate, at most {MAX_NEW_TOKENS:,}")
    p.add_argument("--mode", default="plain", choices=GENERATE_MODES,
                   help="plain: every layer; routed: confident tokens skip the deeper layers (--kv-policy); "
                        "speculative: the early exit drafts, the full model verifies (the plain model's output)")
    p.add_argument("--draft-k", type=draft_k, help=f"speculative: drafts per round, 1..{MAX_DRAFT_K}, or auto "
                   "(default: chosen from measured draft and verify costs and the acceptance rate so far)")
    p.add_argument("--threshold", type=argtypes.threshold, default="default",
                   help="routed: the routing threshold; speculative: drafting stops below it "
                        "(default: the checkpoint's own; none: route nothing / always draft k)")
    p.add_argument("--kv-policy", default="propagate", choices=list(KV_POLICIES),
                   help="routed: the keys and values an exited token leaves at deeper layers")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int, help="sample from the k most likely tokens only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="weights' type; bfloat16 helps on GPUs (confidences and sampling stay float32)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)
