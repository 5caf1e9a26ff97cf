"""Routed PPL at equal FLOPs: max-softmax confidence (pays the early head for every token) vs a learned probe.

    ROUTED_DATA_DIR=../shared/data python benchmarks/confidence_probe.py [--checkpoint checkpoints/asymmetric_best]

Fits a linear confidence probe on the early exit's states of train tokens, evaluates the test split
with both measures and prints the routed PPL each reaches at the same FLOPs% (from routed.ledger).
"""

from __future__ import annotations

import argparse

import torch

from routed.checkpoint import load_checkpoint
from routed.data import load_corpus
from routed.devices import default_threads
from routed.records import evaluate, probe_training_data
from routed.routing import fit_confidence_probe
from routed.sweep import ppl_at, sweep
from routed.tokenizer import encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/asymmetric_best")
    parser.add_argument("--fit-tokens", type=int, default=200_000)
    args = parser.parse_args()
    torch.set_num_threads(default_threads())
    ckpt = load_checkpoint(args.checkpoint)
    corpus = load_corpus(ckpt.corpus)
    train = encode(ckpt.tokenizer, corpus.train[: 6 * args.fit_tokens])[: args.fit_tokens]
    features, correct = probe_training_data(ckpt.model, train)
    probe = fit_confidence_probe(features, correct)
    records = evaluate(ckpt.model, encode(ckpt.tokenizer, corpus.test), probe=probe)
    grid = torch.linspace(0, 1, 1001).numpy()
    curves = {m: sweep(records, grid, measure=m) for m in ("max_softmax", "probe")}
    print(f"### {ckpt.name}: learned confidence probe (fitted on {len(correct):,} train tokens) vs max softmax, test split")
    print("| FLOPs% | " + " | ".join(f"PPL with {m}" for m in curves) + " |")
    print("|---|---|---|")
    for level in (70, 80, 90, 100, 110, 120):
        print(f"| {level}% | " + " | ".join(f"{ppl_at(c, level, 'flops_pct'):.2f}" for c in curves.values()) + " |")
    print("(nan: that FLOPs% is outside the measure's range; deep-only PPL "
          f"{curves['probe']['deep_ppl'][0]:.2f} at {curves['probe']['flops_pct'][-1]:.1f}% with the probe, "
          f"{curves['max_softmax']['flops_pct'][-1]:.1f}% with max softmax)")


if __name__ == "__main__":
    main()
