"""Training throughput at the default model size against this machine's measured matmul peak.

    python benchmarks/train_throughput.py [--steps 8] [--preset asymmetric_best]

Prints the fp32 and bf16 matmul peaks, then training tokens/s and achieved model GFLOP/s in fp32
and with bf16 autocast, all measured in the same run. Model FLOPs count the transformer layers and
one output head per trained exit, times 3 for forward + backward (attention included, elementwise
work not).
"""

from __future__ import annotations

import argparse
import time

import torch

from routed.config import ModelConfig, get_preset
from routed.devices import default_threads
from routed.loss import weighted_exit_loss
from routed.model import RoutedTransformer
from routed.routing import TokenCost


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="asymmetric_best")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap per measurement")
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


if __name__ == "__main__":
    main()
