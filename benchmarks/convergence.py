"""How long must a preset train before more training stops helping? Final validation PPL per budget.

    ROUTED_DATA_DIR=../shared/data python benchmarks/convergence.py --corpus wikitext-2 --epochs 1,2,4,8

Trains one preset (default standard_3l, the slowest to converge) at each budget, each with its own
warm-up and cosine schedule, and prints the final and best validation PPL of the last exit per budget
and the validation curves. Each budget's result is written to OUT/<corpus>-<preset>-<budget>.json as it
finishes, and finished budgets are skipped, so several processes can share the work; a stopped budget
resumes from its last validation.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from routed.claims import claim, release
from routed.config import get_preset
from routed.data import load_corpus
from routed.folders import TRAIN_STATE, remove_owned
from routed.tokenizer import encode, train_tokenizer
from routed.train import train


def budget_label(epochs: float | None, steps: int | None) -> str:
    return f"e{epochs:g}" if epochs is not None else f"s{steps}"


def run_budget(args, corpus, tokenizer, ids, epochs, steps, path: Path) -> dict:
    preset = get_preset(args.preset)
    model_config = preset.model_config(vocab_size=tokenizer.get_vocab_size(), d_model=args.d_model, n_heads=args.n_heads)
    budget = {"epochs": epochs, "steps": None} if epochs is not None else {"steps": steps}
    train_config = preset.train_config(seed=args.seed, eval_interval=args.eval_interval, patience=None, **budget)
    start = time.perf_counter()
    # A stopped budget resumes from its last validation (a long budget is hours on one core).
    state = path.with_name(f".{path.stem}.resume")
    last = model_config.n_layers

    def on_progress(p) -> None:
        if p.validation:  # a long budget says how far it is
            print(f"  {path.stem}: step {p.step}/{p.total_steps} val PPL {p.validation['val_ppl'][last]:.3f} "
                  f"ETA {p.eta_s / 60:.0f} min", flush=True)

    result = train(model_config, train_config, corpus, tokenizer=tokenizer, encoded=ids, on_progress=on_progress,
                   state_dir=state, resume=True)
    # val_loss is the preset's training objective (its weighted exits): what "best" means for a multi-exit preset.
    curve = [{"step": h["step"], "tokens": h["tokens"], "val_ppl": h["val_ppl"][last], "val_loss": h["val_loss"],
              "val_ppl_by_exit": {str(k): v for k, v in h["val_ppl"].items()}} for h in result.history]
    record = {
        "corpus": args.corpus, "preset": args.preset, "seed": args.seed, "epochs": epochs, "steps": curve[-1]["step"],
        "vocab_size": tokenizer.get_vocab_size(), "d_model": args.d_model, "n_heads": args.n_heads,
        "context_length": model_config.context_length,
        "final_val_ppl": curve[-1]["val_ppl"],
        "best_val_ppl": min(c["val_ppl"] for c in curve), "best_step": result.best_step,
        "train_s": max(result.history[-1]["elapsed_s"], time.perf_counter() - start), "curve": curve,
    }
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    remove_owned(state, TRAIN_STATE.files)  # finished: nothing left to resume
    return record


def default_size_runs(reports: Path, preset: str) -> list[dict]:
    """The preset's seed-0 runs trained in the reproductions at the default size: one more budget each."""
    from routed.budget_check import reproduction_records
    from routed.config import ModelConfig

    default = ModelConfig()
    return [r for r in reproduction_records(reports, preset)
            if not r["quick"] and (r["d_model"], r["n_heads"]) == (default.d_model, default.n_heads)]


def write_report(out: Path) -> Path:
    """reports/convergence.md (beside OUT) and one figure per corpus: final PPL per budget and the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from routed.config import PRESETS, trained_as
    from routed.convergence import convergence

    records = [{**json.loads(p.read_text()), "source": "this benchmark"} for p in sorted(out.glob("*.json"))]
    # every trained preset: one doubling check may come from the reproductions alone (Standard 1L's did)
    for preset in sorted({trained_as(name) for name in PRESETS}):
        records += default_size_runs(out.parent, preset)
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["corpus"], r["preset"], r["vocab_size"]), []).append(r)
    lines = ["# How long to train: validation PPL against the token budget", "",
             "Each row is one run of the preset with its own warm-up and cosine schedule over the whole budget "
             "(seed 0, default size, validation on the first 65,536 validation tokens, corpus markers as single "
             "tokens). Command: `ROUTED_DATA_DIR=../shared/data python benchmarks/convergence.py --corpus CORPUS "
             "--epochs ... | --steps ...` (then `--report`). Rows trained in a `reproduction*/` folder are that "
             "reproduction's seed-0 run of the preset: the same training (none stopped early). Val PPL is the last "
             "exit's; the objective is what training minimises and what picks the best step (the preset's weighted "
             "exits; the last exit alone for Standard 3L). A reproduction reads the row at twice its budget as its "
             "doubling check: under 1% gained at the best objective, its budget counts as converged.", ""]
    for (corpus, preset, vocab), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["curve"][-1]["tokens"])
        lines += [f"## {corpus}, {preset}, vocabulary {vocab}", "",
                  "| budget | steps | tokens (M) | final val PPL | best val PPL | best objective PPL (step) | "
                  "gain over the budget before: best objective / final | last fifth gained | minutes | trained in |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        shorter: list[tuple] = []  # (best objective, final val PPL, tokens) of each row so far
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for r in rs:
            budget = f"{r['epochs']:g} epochs" if r.get("epochs") else f"{r['steps']} steps"
            # The objective (the preset's weighted exits) where the record kept it; the last exit's PPL, which is
            # the objective of a single-exit preset, in records written before.
            history = [{"step": c["step"], "val_loss": c.get("val_loss", math.log(c["val_ppl"]))} for c in r["curve"]]
            tail = convergence(history)["tail_gain_pct"]
            best_objective = math.exp(min(h["val_loss"] for h in history))
            tokens = r["curve"][-1]["tokens"]
            # against the last shorter budget: a second run of the same budget (a reproduction's, validated on
            # another interval) is no budget before
            previous = next((row for row in reversed(shorter) if row[2] < 0.99 * tokens), None)
            gain = (f"{100 * (previous[0] / best_objective - 1):.2f}% / {100 * (previous[1] / r['final_val_ppl'] - 1):.2f}%"
                    if previous else "–")
            ratio = tokens / previous[2] if previous else 2.0
            gain += "" if abs(ratio - 2) < 0.05 else f" (×{ratio:.3g} the tokens)"
            lines.append(f"| {budget} | {r['steps']} | {r['curve'][-1]['tokens'] / 1e6:.1f} | {r['final_val_ppl']:.3f} | "
                         f"{r['best_val_ppl']:.3f} | {best_objective:.3f} ({r['best_step']}) | {gain} | {tail:.1f}% | "
                         f"{r['train_s'] / 60:.1f} | {r['source']}{' (stopped early)' if r.get('stopped_early') else ''} |")
            shorter.append((best_objective, r["final_val_ppl"], tokens))
            twice = sum(abs(o["curve"][-1]["tokens"] - tokens) < 0.01 * tokens for o in rs) > 1
            ax.plot([c["tokens"] / 1e6 for c in r["curve"]], [c["val_ppl"] for c in r["curve"]],
                    label=f"{budget}, {r['source'].rstrip('/')}" if twice else budget)  # two runs of one budget
        ax.set_yscale("log")
        ax.set_xlabel("training tokens (millions)")
        ax.set_ylabel("validation PPL (last exit)")
        ax.set_title(f"{preset} on {corpus}: one curve per budget")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        figure = out / f"{corpus}-{preset}-v{vocab}.png"
        fig.savefig(figure, dpi=110)
        plt.close(fig)
        lines += ["", f"![curves]({out.name}/{figure.name})", ""]
    path = out.parent / f"{out.name}.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="wikitext-2")
    parser.add_argument("--preset", default="standard_3l")
    parser.add_argument("--epochs", help="comma-separated budgets in epochs, e.g. 1,2,4,8")
    parser.add_argument("--steps", help="comma-separated budgets in optimiser steps")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-interval", type=int, default=125)
    parser.add_argument("--out", default="reports/convergence")
    parser.add_argument("--report", action="store_true", help="only write reports/convergence.md from finished budgets")
    args = parser.parse_args()
    if args.report:
        print(f"wrote {write_report(Path(args.out))}")
        return
    budgets = [(float(e), None) for e in (args.epochs or "").split(",") if e] + [
        (None, int(s)) for s in (args.steps or "").split(",") if s
    ]
    if not budgets:
        parser.error("give --epochs or --steps")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(args.corpus)
    tokenizer = train_tokenizer(corpus.train, args.vocab_size, corpus.markers)
    ids = (encode(tokenizer, corpus.train), encode(tokenizer, corpus.validation))
    size = "" if (args.d_model, args.n_heads) == (128, 4) else f"-d{args.d_model}"
    for epochs, steps in budgets:
        path = out / f"{args.corpus}-{args.preset}{size}-v{tokenizer.get_vocab_size()}-{budget_label(epochs, steps)}.json"
        claim_path = path.with_name(path.name + ".claim")
        if path.exists():
            record = json.loads(path.read_text())
        else:
            if not claim(claim_path):
                print(f"{path.name}: being trained by another process, skipped", flush=True)
                continue
            try:
                record = run_budget(args, corpus, tokenizer, ids, epochs, steps, path)
            finally:
                release(claim_path)
        print(f"{path.name}: {record['steps']} steps, final val PPL {record['final_val_ppl']:.2f}, "
              f"best {record['best_val_ppl']:.2f} at step {record['best_step']}, {record['train_s'] / 60:.1f} min",
              flush=True)


if __name__ == "__main__":
    main()
