"""Is routing actually faster? Plain vs dense-routed vs sparse-routed, batched and in generation.

    ROUTED_DATA_DIR=../shared/data python benchmarks/routed_inference.py [--checkpoint checkpoints/asymmetric_best]

For the shipped asymmetric_best model (WikiText-2 test text) and a larger model (d_model 512,
6 layers, exits {2, 6}, random weights), at thresholds giving about 25%, 50% and 75% early exits:
tokens/s of the plain model, of dense routing and of sparse routing, in batched teacher-forced
evaluation and in greedy generation, each as a ratio to the plain model measured in the same run,
next to the notional Compute% and FLOPs%.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from routed.config import ModelConfig
from routed.devices import default_threads
from routed.inference import generate, routed_forward
from routed.model import RoutedTransformer
from routed.routing import compute_pct, confidence, flops_pct


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@torch.no_grad()
def bench_model(label: str, model: RoutedTransformer, batch: torch.Tensor, exits: list[int], repeats: int, new_tokens: int):
    cfg = model.config
    n, first = cfg.n_layers, exits[0]
    conf = confidence(model(batch, exits=[first])[first]).flatten()
    tokens = batch.numel()
    plain_s = best_time(lambda: routed_forward(model, batch, None, "plain", exits), repeats)
    prompt = batch[0, :8].tolist()
    plain_gen = generate(model, prompt, new_tokens, None, "plain", exits)
    print(f"\n### {label}: d_model {cfg.d_model}, {n} layers, exits {exits}, vocabulary {cfg.vocab_size}, "
          f"batch {tuple(batch.shape)}")
    print(f"plain model: {tokens / plain_s:,.0f} tokens/s batched, {plain_gen.tokens_per_s:,.1f} tokens/s generating")
    print()
    print("| target early exits | threshold | measured early exits | Compute% | FLOPs% (dense) | FLOPs% (sparse) "
          "| batched dense (x plain time) | batched sparse (x plain time) | sparse time / FLOPs ratio "
          "| generation exits | gen. dense tok/s (x plain) | gen. sparse tok/s (x plain) |")
    print("|" + "---|" * 12)
    for target in (0.25, 0.50, 0.75):
        threshold = float(torch.quantile(conf, 1 - target))
        dense_s = best_time(lambda t=threshold: routed_forward(model, batch, t, "dense", exits), repeats)
        sparse_s = best_time(lambda t=threshold: routed_forward(model, batch, t, "sparse", exits), repeats)
        out = routed_forward(model, batch, threshold, "sparse", exits)
        shallow = float((out.exit_layer == first).float().mean())
        comp = compute_pct(shallow, n, first)
        fl_dense = flops_pct(shallow, cfg, first, reference_layers=n)
        fl_sparse = flops_pct(shallow, cfg, first, reference_layers=n, propagate_kv=True)
        gen_dense = generate(model, prompt, new_tokens, threshold, "dense", exits)
        gen_sparse = generate(model, prompt, new_tokens, threshold, "sparse", exits)
        gen_shallow = sum(t.exit_layer == first for t in gen_sparse.tokens) / max(1, len(gen_sparse.tokens))
        ratio = (sparse_s / plain_s) / (fl_sparse / 100)
        print(f"| {target:.0%} | {threshold:.4g} | {shallow:.1%} | {comp:.1f}% | {fl_dense:.1f}% | {fl_sparse:.1f}% "
              f"| {dense_s / plain_s:.2f} | {sparse_s / plain_s:.2f} | {ratio:.2f} | {gen_shallow:.0%} "
              f"| {gen_dense.tokens_per_s:,.1f} ({gen_dense.tokens_per_s / plain_gen.tokens_per_s:.2f}x) "
              f"| {gen_sparse.tokens_per_s:,.1f} ({gen_sparse.tokens_per_s / plain_gen.tokens_per_s:.2f}x) |")


def probe_vs_softmax(ckpt, corpus, fit_tokens: int = 200_000) -> None:
    """Routed PPL at FLOPs levels: max softmax (pays the early head for every token) vs a learned probe."""
    from routed.records import evaluate, probe_training_data
    from routed.routing import fit_confidence_probe
    from routed.sweep import ppl_at, sweep
    from routed.tokenizer import encode

    features, correct = probe_training_data(ckpt.model, encode(ckpt.tokenizer, corpus.train[: 6 * fit_tokens])[:fit_tokens])
    probe = fit_confidence_probe(features, correct)
    records = evaluate(ckpt.model, encode(ckpt.tokenizer, corpus.test), probe=probe)
    grid = torch.linspace(0, 1, 1001).numpy()
    curves = {m: sweep(records, grid, measure=m) for m in ("max_softmax", "probe")}
    levels = (70, 80, 90, 100, 110, 120)
    print(f"\n### {ckpt.name}: learned confidence probe (fitted on {len(correct):,} train tokens) vs max softmax, test split")
    print("| FLOPs% | " + " | ".join(f"PPL with {m}" for m in curves) + " |")
    print("|---|---|---|")
    for level in levels:
        print(f"| {level}% | " + " | ".join(f"{ppl_at(c, level, 'flops_pct'):.2f}" for c in curves.values()) + " |")
    print("(nan: that FLOPs% is outside the measure's range; deep-only PPL "
          f"{curves['probe']['deep_ppl'][0]:.2f} at {curves['probe']['flops_pct'][-1]:.1f}% with the probe, "
          f"{curves['max_softmax']['flops_pct'][-1]:.1f}% with max softmax)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/asymmetric_best")
    parser.add_argument("--corpus", default="wikitext-2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(default_threads())
    print(f"threads: {torch.get_num_threads()}; times are the best of {args.repeats}; "
          "ratios are routed time / plain time (below 1 is faster)")

    if Path(args.checkpoint, "config.json").exists():
        from routed.checkpoint import load_checkpoint
        from routed.data import load_corpus
        from routed.tokenizer import encode

        ckpt = load_checkpoint(args.checkpoint)
        text = load_corpus(args.corpus).test
        ids = encode(ckpt.tokenizer, text[:200_000])
        T = ckpt.model_config.context_length
        batch = ids[: 32 * T].view(32, T)
        bench_model(f"{ckpt.name} (trained, {args.corpus} test text)", ckpt.model, batch, [1, 3], args.repeats,
                    args.new_tokens)
        probe_vs_softmax(ckpt, load_corpus(args.corpus))
    else:
        print(f"(no checkpoint at {args.checkpoint}; skipping the trained model)")

    torch.manual_seed(0)
    big = RoutedTransformer(ModelConfig(vocab_size=4096, n_layers=6, d_model=512, n_heads=8, context_length=256)).eval()
    batch = torch.randint(0, 4096, (8, 256), generator=torch.Generator().manual_seed(0))
    bench_model("larger model (random weights)", big, batch, [2, 6], args.repeats, args.new_tokens)


if __name__ == "__main__":
    main()
