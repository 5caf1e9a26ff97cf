"""Is routing faster? Plain, dense, sparse under each KV policy and self-speculative decoding, timed side by side.

    ROUTED_DATA_DIR=../shared/data python benchmarks/routed_inference.py CHECKPOINT [CHECKPOINT ...]
        [--repeats 5] [--inner 2] [--threshold T] [--device cpu|cuda] [--dtype float32|bfloat16]

For each trained checkpoint, on its corpus' test text and at its trained exits:

- batched teacher-forced evaluation (a batch of context-length windows) at thresholds giving about
  25 / 50 / 75% early exits: plain, dense routing, and sparse routing under each KV policy;
- greedy generation at batch 1 from prompts cut from the test text: plain KV-cached decoding, dense
  and sparse routing at the threshold giving 50% early exits in the batch (or --threshold), and
  self-speculative decoding (k chosen from measured costs), whose output is checked token for token
  against plain decoding.

Every repeat times every mode once, in a rotated order, and each mode's time is divided by the
plain model's time in the same repeat; the tables give the median ratio and its range over the
repeats. A repeat's time of a mode is the fastest of --inner back-to-back runs, so that a run the
scheduler preempted does not count as the model's. The plain model is also timed a second time in
each repeat ("plain again", an A/A control): its ratio shows how much two runs of the same work
differ on this machine. Dense routing does at least the plain model's work: where its median ratio
is below 1 and below every A/A ratio, or below 1 in every repeat, the run is measuring load, not
speed, and the table is refused.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch
import torch.nn.functional as F

from routed.checkpoint import load_checkpoint
from routed.data import load_corpus
from routed.devices import default_threads, pick_device
from routed.generate import generate
from routed.ledger import EXECUTIONS, KV_POLICIES, execution_cost
from routed.routing import confidence
from routed.sparse import routed_forward, trained_exits
from routed.speculative import DraftCosts, break_even, expected_speedup, measure_costs, speculative_generate
from routed.tokenizer import encode

TARGET_FLOPS_GAP = 1.15  # sparse time ratio within this factor of its FLOPs ratio (models of d_model >= 256)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rotated(keys: list, r: int) -> list:
    return keys[r % len(keys):] + keys[: r % len(keys)]


def ratios(times: dict, key) -> tuple[float, float, float]:
    """Median, min and max over repeats of times[key][r] / times['plain'][r]."""
    values = [t / p for t, p in zip(times[key], times["plain"])]
    return statistics.median(values), min(values), max(values)


def fmt(stats) -> str:
    return f"{stats[0]:.2f} [{stats[1]:.2f}–{stats[2]:.2f}]"


def refused(label: str, dense: list[tuple], control: tuple) -> bool:
    """Print a refusal and return True when dense routing measured faster than plain beyond the A/A noise."""
    bad = [d for d in dense if d[0] < 1.0 and (d[0] < control[1] or d[2] < 1.0)]
    if bad:
        print(f"REFUSED: {label} (at least the plain model's work) measured faster than plain: "
              f"{', '.join(fmt(d) for d in bad)}x plain time, against {fmt(control)} for plain timed again. "
              "That is load on the machine, not speed; rerun on a quiet machine.")
    return bool(bad)


@torch.no_grad()
def batched(ckpt, tokens: torch.Tensor, exits: list[int], args, device) -> tuple[list[dict], list[float]]:
    cfg, model = ckpt.model_config, ckpt.model
    T = cfg.context_length
    n_rows = min(args.batch, (len(tokens) - 1) // T)
    x = tokens[: n_rows * T].view(n_rows, T).to(device)
    y = tokens[1 : n_rows * T + 1].view(n_rows, T)
    conf = confidence(model(x, exits=[exits[0]])[exits[0]]).flatten().float().cpu()
    thresholds = [float(torch.quantile(conf, 1 - target)) for target in (0.25, 0.50, 0.75)]
    runs = {"plain": (None, "plain", "propagate"), "plain again": (None, "plain", "propagate")}
    for t in thresholds:
        runs |= {(t, e): (t, "dense", "propagate") if e == "dense" else (t, "sparse", e) for e in ("dense", *KV_POLICIES)}
    info = {}
    for key, (t, mode, policy) in runs.items():  # untimed pass: warm-up, exit shares and PPL
        out = routed_forward(model, x, t, mode, exits, kv_policy=policy)
        nll = F.cross_entropy(out.logits.flatten(0, 1).float().cpu(), y.flatten())
        shares = {e: float((out.exit_layer.cpu() == e).float().mean()) for e in exits}
        execution = "plain" if isinstance(key, str) else key[1]
        info[key] = (float(nll.exp()), shares, execution_cost(cfg, shares, execution, exits)[1])
    times = {key: [] for key in runs}
    for r in range(args.repeats):
        for key in rotated(list(runs), r):
            t, mode, policy = runs[key]
            best = float("inf")
            for _ in range(args.inner):  # the fastest of a few back-to-back runs: a preempted run is not the model
                sync(device)
                start = time.perf_counter()
                routed_forward(model, x, t, mode, exits, kv_policy=policy)
                sync(device)
                best = min(best, time.perf_counter() - start)
            times[key].append(best)
    plain_tps = x.numel() / statistics.median(times["plain"])
    print(f"\n### Batched evaluation: batch {tuple(x.shape)} of test text; plain {plain_tps:,.0f} tokens/s (median)\n")
    control = ratios(times, "plain again")
    if refused("dense routing (every layer and every exit's head)", [ratios(times, (t, "dense")) for t in thresholds],
               control):
        return [], thresholds
    print("| target early exits | threshold | execution | early exits | PPL (this batch) | FLOPs vs plain "
          "| time vs plain, median [range] | time ratio / FLOPs ratio |")
    print("|---|---|---|---|---|---|---|---|")
    plain_flops = info["plain"][2]
    print(f"| — | — | plain | 0.0% | {info['plain'][0]:.3f} | 1.000 | 1.00 | 1.00 |")
    print(f"| — | — | plain again (A/A) | 0.0% | {info['plain'][0]:.3f} | 1.000 | {fmt(control)} | {control[0]:.2f} |")
    rows = []
    for target, t in zip(("25%", "50%", "75%"), thresholds):
        for execution in ("dense", *KV_POLICIES):
            ppl, shares, flops = info[(t, execution)]
            stats = ratios(times, (t, execution))
            gap = stats[0] / (flops / plain_flops)
            rows.append({"execution": execution, "gap": gap, "time": stats[0], "flops": flops / plain_flops})
            print(f"| {target} | {t:.4g} | {execution} | {100 * (1 - shares[exits[-1]]):.1f}% | {ppl:.3f} "
                  f"| {flops / plain_flops:.3f} | {fmt(stats)} | {gap:.2f} |")
    return rows, thresholds


def prompts_from(tokens: torch.Tensor, n: int, length: int) -> list[list[int]]:
    step = max(length, (len(tokens) - length) // n)
    return [tokens[i * step : i * step + length].tolist() for i in range(n)]


@torch.no_grad()
def generation(ckpt, tokens: torch.Tensor, exits: list[int], args, device, threshold: float) -> dict:
    model, n = ckpt.model, ckpt.model_config.n_layers
    prompts = prompts_from(tokens, args.prompts, args.prompt_tokens)
    new = args.new_tokens
    modes = {"plain": lambda p: generate(model, p, new, None, "plain", exits),
             "plain again": lambda p: generate(model, p, new, None, "plain", exits),
             "dense": lambda p: generate(model, p, new, threshold, "dense", exits)}
    modes |= {f"sparse {e}": (lambda p, e=e: generate(model, p, new, threshold, "sparse", exits, kv_policy=e))
              for e in KV_POLICIES}
    costs_seen = []

    def speculative(p, draft_threshold):
        return speculative_generate(model, p, new, draft_threshold, None, exits, costs=costs_seen[-1])

    modes["speculative"] = lambda p: speculative(p, None)
    modes[f"speculative, drafting while confidence >= {args.draft_threshold:g}"] = lambda p: speculative(p, args.draft_threshold)
    costs_seen.append(measure_costs(model, exits))
    outputs = {m: [fn(p) for p in prompts] for m, fn in modes.items()}  # warm-up and outputs
    times = {m: [] for m in modes}
    for r in range(args.repeats):
        costs_seen.append(measure_costs(model, exits))  # this repeat's costs choose its k
        for m in rotated(list(modes), r):
            gens = [min((modes[m](p) for _ in range(args.inner)), key=lambda g: g.seconds) for p in prompts]
            times[m].append(sum(g.seconds for g in gens))
            if m.startswith("speculative"):
                outputs[m] = gens if r == 0 else outputs[m] + gens
    costs = DraftCosts(statistics.median(c.plain_s for c in costs_seen[1:]),
                       [statistics.median(c.round_s[k] for c in costs_seen[1:]) for k in range(costs_seen[0].k_max + 1)])
    plain_ids = [g.token_ids for g in outputs["plain"]]
    total = len(prompts) * new
    print(f"\n### Greedy generation at batch 1: {len(prompts)} prompts of {args.prompt_tokens} test tokens, {new} new "
          f"tokens each; routing threshold {threshold:g}; plain {total / statistics.median(times['plain']):,.1f} "
          "tokens/s (median)\n")
    if refused("dense-routed generation (every layer and every exit's head)", [ratios(times, "dense")],
               ratios(times, "plain again")):
        return {}
    print("| mode | early exits / acceptance | time vs plain, median [range] | tokens/s (median) | output |")
    print("|---|---|---|---|---|")
    result = {}
    for m in modes:
        gens = outputs[m]
        stats = ratios(times, m) if m != "plain" else (1.0, 1.0, 1.0)
        tps = total / statistics.median(times[m])
        if m.startswith("speculative"):
            same = sum(g.token_ids == plain_ids[i % len(prompts)] for i, g in enumerate(gens))
            drafted, accepted = sum(g.drafted for g in gens), sum(g.accepted for g in gens)
            rounds = sum(g.rounds for g in gens)
            k = Counter(k for g in gens for k in g.ks).most_common(1)[0][0]
            alpha = accepted / drafted if drafted else 0.0
            even = break_even(k, costs)
            result[m] = {"alpha": alpha, "even": even, "time": stats[0], "same": same, "runs": len(gens)}
            what = (f"acceptance {100 * alpha:.1f}%, {accepted / rounds:.2f} accepted drafts per verification, "
                    f"k {k} (most used); break-even acceptance at k {k}: {100 * even:.1f}%, expected "
                    f"{1 / expected_speedup(alpha, k, costs):.2f}x plain time")
            output = f"identical to plain on {same}/{len(gens)} runs"
        else:
            left = sum(t.exit_layer < n for g in gens for t in g.tokens) / total
            what = f"{100 * left:.1f}% early exits" if not m.startswith("plain") else "—"
            output = "—" if m.startswith("plain") else ("identical to dense" if [g.token_ids for g in gens] ==
                                               [g.token_ids for g in outputs["dense"]] else "differs from dense")
        print(f"| {m} | {what} | {fmt(stats)} | {tps:,.1f} | {output} |")
    print(f"\nmeasured costs (median over repeats): plain step {1e3 * costs.plain_s:.3f} ms; round with k drafts "
          + ", ".join(f"k={k}: {1e3 * s:.3f} ms" for k, s in enumerate(costs.round_s)))
    return result


def targets(name: str, d_model: int, sparse_rows: list[dict], spec: dict) -> None:
    print(f"\n### Targets for {name}")
    for m, s in spec.items():
        print(f"- {m}: greedy output identical to plain on {s['same']}/{s['runs']} runs: "
              f"{'met' if s['same'] == s['runs'] else 'NOT met'}")
        if s["alpha"] > s["even"]:
            met = "met" if s["time"] < 1.0 else "NOT met"
            print(f"- {m}: acceptance {100 * s['alpha']:.1f}% > break-even {100 * s['even']:.1f}%, so it should be "
                  f"faster than plain: {s['time']:.2f}x plain time: {met}")
        else:
            print(f"- {m}: acceptance {100 * s['alpha']:.1f}% <= break-even {100 * s['even']:.1f}%: not expected to "
                  f"be faster ({s['time']:.2f}x plain time)")
    sparse = [r for r in sparse_rows if r["execution"] in KV_POLICIES]
    if d_model >= 256 and sparse:
        ok = [r for r in sparse if r["gap"] <= TARGET_FLOPS_GAP]
        print(f"- sparse time ratio within {TARGET_FLOPS_GAP}x of its FLOPs ratio: {len(ok)}/{len(sparse)} "
              "(policy, threshold) rows: " + ", ".join(f"{r['execution']} {r['gap']:.2f}" for r in sparse))
    elif sparse:
        print(f"- (the {TARGET_FLOPS_GAP}x time/FLOPs target applies to d_model >= 256; this model has {d_model})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="trained checkpoint folders")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="windows per batched evaluation")
    parser.add_argument("--inner", type=int, default=2, help="back-to-back runs per mode and repeat; the fastest counts")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threshold", type=float,
                        help="generation's routing threshold (default: the one giving 50%% early exits in the batch)")
    parser.add_argument("--draft-threshold", type=float, default=0.5, help="the second speculative row's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats: at least 5 (the median and range need them)")
    device = pick_device(args.device)
    torch.set_num_threads(default_threads())
    print(f"device {device} ({args.dtype}), {torch.get_num_threads()} thread(s); {args.repeats} repeats; "
          "ratios are mode time / plain time in the same repeat (below 1 is faster)")
    print("executions: " + "; ".join(f"{e}: {EXECUTIONS[e]}" for e in ("dense", *KV_POLICIES)))
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        ckpt.model.to(device=device, dtype=getattr(torch, args.dtype))
        cfg = ckpt.model_config
        exits = trained_exits(ckpt.train_config, cfg.n_layers)
        tokens = encode(ckpt.tokenizer, load_corpus(ckpt.corpus).test[:400_000])
        print(f"\n## {ckpt.name}: d_model {cfg.d_model}, {cfg.n_layers} layers, exits {exits}, vocabulary "
              f"{cfg.vocab_size}, context {cfg.context_length}; {ckpt.corpus} test text")
        if len(exits) < 2:
            print("one trained exit: nothing to route or draft with; skipped")
            continue
        rows, thresholds = batched(ckpt, tokens, exits, args, device)
        spec = generation(ckpt, tokens, exits, args, device, args.threshold or thresholds[1])
        targets(ckpt.name, cfg.d_model, rows, spec)


if __name__ == "__main__":
    main()
