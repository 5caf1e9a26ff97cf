"""Threshold sweep from cached records against re-running the routed forward pass per threshold.

    ROUTED_DATA_DIR=../shared/data python benchmarks/sweep_speed.py [--checkpoint checkpoints/asymmetric_best]

Evaluates the WikiText-2 test split once into per-token records, then times `sweep` over 1,001
thresholds and, on the same tokens, the direct routed forward (model + routing rule + NLL) for
each of 11 thresholds; prints both and their ratio. Without a checkpoint a randomly initialised
default-size model is used (timings do not depend on the weights).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from routed.config import ModelConfig
from routed.data import load_corpus
from routed.devices import default_threads
from routed.model import RoutedTransformer
from routed.records import evaluate
from routed.sparse import routed_ppl
from routed.sweep import sweep
from routed.tokenizer import encode, train_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint folder (default: random default-size model)")
    parser.add_argument("--corpus", default="wikitext-2")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(default_threads())

    corpus = load_corpus(args.corpus)
    if args.checkpoint:
        from routed.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        model, tokenizer = ckpt.model, ckpt.tokenizer
    else:
        tokenizer = train_tokenizer(corpus.train, 4096)
        torch.manual_seed(0)
        model = RoutedTransformer(ModelConfig(vocab_size=tokenizer.get_vocab_size())).eval()
    tokens = encode(tokenizer, corpus.test)
    t = time.perf_counter()
    records = evaluate(model, tokens)
    evaluate_s = time.perf_counter() - t
    print(f"{args.corpus} test split: {len(records):,} predicted tokens; records computed once in {evaluate_s:.2f} s")

    grid = np.linspace(0, 1, 1001)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        sweep(records, grid)
        times.append(time.perf_counter() - t)
    sweep_s = statistics.median(times)

    eleven = np.linspace(0.5, 1.0, 11)
    t = time.perf_counter()
    direct = [routed_ppl(model, tokens, float(th), mode="dense")["ppl"] for th in eleven]
    forward_s = time.perf_counter() - t
    from_records = sweep(records, eleven)["routed_ppl"]
    max_rel = float(np.max(np.abs(np.array(direct) - from_records) / from_records))

    print()
    print("| method | thresholds | time (s) | per threshold (ms) |")
    print("|---|---|---|---|")
    print(f"| sweep over cached records (median of {args.repeats}) | 1,001 | {sweep_s:.4f} | {1000 * sweep_s / 1001:.4f} |")
    print(f"| routed forward pass per threshold | 11 | {forward_s:.2f} | {1000 * forward_s / 11:.1f} |")
    print()
    print(f"sweep of 1,001 thresholds is {forward_s / sweep_s:,.0f}x faster than 11 routed forward passes "
          f"({forward_s / 11 * 1001 / sweep_s:,.0f}x per threshold); target: sweep < 0.1 s -> "
          f"{'met' if sweep_s < 0.1 else 'NOT met'}")
    print(f"agreement: max relative PPL difference between sweep and direct forward over 11 thresholds: {max_rel:.2e}")


if __name__ == "__main__":
    main()
