"""Training throughput at the default model size: against the matmul peak, and against a plain PyTorch loop.

    python benchmarks/train_throughput.py [--steps 25] [--preset asymmetric_best]

Prints the fp32 and bf16 matmul peaks, then training tokens/s and achieved model GFLOP/s in fp32
and with bf16 autocast, all measured in the same run. Model FLOPs count the transformer layers and
one output head per trained exit, times 3 for forward + backward (attention included, elementwise
work not). Then `routed.train.train` (what the CLI, the app and `reproduce` run) against a textbook
PyTorch loop of the same model, loss, optimiser and clipping, in alternating repeats: the ratio of
their tokens/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from routed.config import ModelConfig, get_preset
from routed.data import Corpus
from routed.devices import default_threads
from routed.ledger import TokenCost
from routed.loss import weighted_exit_loss
from routed.model import RoutedTransformer
from routed.train import train


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """Best GFLOP/s of an n x n matmul over repeated trials."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def train_speed(cfg: ModelConfig, weights: dict, bf16: bool, steps: int, batch_size: int, max_seconds: float):
    """Tokens/s of full training steps (forward, backward, AdamW), after one warm-up step."""
    torch.manual_seed(0)
    model = RoutedTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.context_length))
    y = torch.randint(0, cfg.vocab_size, (batch_size, cfg.context_length))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = weighted_exit_loss(model, x, y, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    done, start = 0, time.perf_counter()
    while done < steps and (done == 0 or time.perf_counter() - start < max_seconds):
        step()
        done += 1
    elapsed = time.perf_counter() - start
    return done * batch_size * cfg.context_length / elapsed, done


def plain_loop_speed(cfg: ModelConfig, weights: dict, steps: int, batch_size: int, tokens: torch.Tensor) -> float:
    """Tokens/s of a textbook loop: logits of each trained exit, F.cross_entropy, AdamW, clipping."""
    torch.manual_seed(0)
    model = RoutedTransformer(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))
    trained = [layer for layer, w in weights.items() if w > 0]
    total = sum(weights[layer] for layer in trained)
    gen = torch.Generator().manual_seed(0)
    ctx = cfg.context_length

    def step():
        starts = torch.randint(0, len(tokens) - ctx - 1, (batch_size,), generator=gen)
        rows = torch.stack([tokens[s : s + ctx + 1] for s in starts.tolist()])
        x, y = rows[:, :-1], rows[:, 1:]
        logits = model(x, exits=trained)
        loss = sum(weights[k] * F.cross_entropy(logits[k].flatten(0, 1), y.flatten()) for k in trained) / total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size * ctx / (time.perf_counter() - start)


class _FixedVocabulary:
    """Stands in for a tokenizer: the trainer only asks it for the vocabulary size."""

    def __init__(self, size: int):
        self.size = size

    def get_vocab_size(self) -> int:
        return self.size


def trainer_speed(cfg: ModelConfig, preset, steps: int, batch_size: int, tokens: torch.Tensor) -> float:
    """Tokens/s of routed.train.train between its first and last step (the closing validation left out)."""
    stamps = {}

    def on_progress(p):
        stamps[p.step] = time.perf_counter()

    corpus = Corpus("synthetic", "x", "x", "x")
    train_config = preset.train_config(steps=steps + 2, batch_size=batch_size, eval_interval=steps + 2, eval_tokens=2048,
                                       warmup_steps=1, patience=None)
    train(cfg, train_config, corpus, tokenizer=_FixedVocabulary(cfg.vocab_size),
          encoded=(tokens, tokens[:4096]), on_progress=on_progress)
    return steps * batch_size * cfg.context_length / (stamps[steps + 1] - stamps[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="asymmetric_best")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats of trainer vs plain loop")
    args = parser.parse_args()

    torch.set_num_threads(default_threads())
    preset = get_preset(args.preset)
    cfg = preset.model_config()
    weights = preset.layer_weights
    trained = [layer for layer, w in weights.items() if w > 0]
    cost = TokenCost.of(cfg)
    flops_per_token = 3 * (cfg.n_layers * cost.layer + len(trained) * cost.head)

    print(f"threads: {torch.get_num_threads()}; model: {cfg}; preset {args.preset} (exits {trained})")
    print(f"model training FLOPs per token: {flops_per_token / 1e6:.2f} M")
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16, n=512, seconds=2.0)
    print(f"measured matmul peak: fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s")
    print()
    print("| precision | tokens/s | model GFLOP/s | % of fp32 matmul peak | % of same-precision peak | steps |")
    print("|---|---|---|---|---|---|")
    results = {}
    for name, bf16, peak in (("fp32", False, peak32), ("bf16 autocast", True, peak16)):
        tps, done = train_speed(cfg, weights, bf16, args.steps, args.batch_size, args.max_seconds)
        gflops = tps * flops_per_token / 1e9
        results[name] = tps
        print(f"| {name} | {tps:,.0f} | {gflops:.1f} | {100 * gflops / peak32:.1f}% | {100 * gflops / peak:.1f}% | {done} |")
    print()
    print(f"bf16 autocast / fp32 tokens/s: {results['bf16 autocast'] / results['fp32']:.2f}x")

    # The trainer against a plain loop of the same model: alternating, so that load hits both alike.
    tokens = torch.randint(0, cfg.vocab_size, (400_000,), generator=torch.Generator().manual_seed(1))
    ratios, rows = [], []
    for repeat in range(args.repeats):
        plain = plain_loop_speed(cfg, weights, args.steps, args.batch_size, tokens)
        ours = trainer_speed(cfg, preset, args.steps, args.batch_size, tokens)
        ratios.append(ours / plain)
        rows.append(f"| {repeat + 1} | {plain:,.0f} | {ours:,.0f} | {ours / plain:.2f}x |")
    print()
    print(f"routed.train.train against a plain PyTorch loop (F.cross_entropy on each trained exit, AdamW, clipping), "
          f"{args.steps} steps each, {args.repeats} alternating repeats:")
    print("| repeat | plain loop tokens/s | routed trainer tokens/s | ratio |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"median ratio {np.median(ratios):.2f}x (range {min(ratios):.2f}–{max(ratios):.2f}x): the trainer is "
          f"{'at least as fast as' if np.median(ratios) >= 1.0 else 'SLOWER than'} the plain loop")


if __name__ == "__main__":
    main()
