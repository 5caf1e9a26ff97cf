"""Per-token records of a pretrained model (SmolLM2-135M): peak memory and tokens/s by exit set, chunked or not.

    python -m routed fetch-model smollm2-135m          # once
    ROUTED_DATA_DIR=../shared/data python benchmarks/pretrained_records.py [--tokens 20000] [--all-layers]

Each configuration runs in its own process (so peak memory is its own): the model is loaded, then
`routed.records.evaluate` computes the records of the first --tokens tokens of the corpus' test
split at an exit set. Printed side by side: tokens/s of the records pass, resident memory after
loading and its peak during the pass (sampled every 5 ms), and each exit's PPL (equal between the
chunked and unchunked runs of one exit set: chunking changes memory, not results).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def worker(args) -> None:
    """One configuration: load, evaluate, print one JSON line."""
    import numpy as np
    import torch

    import routed.records
    from routed.data import load_corpus
    from routed.devices import default_threads
    from routed.pretrained import load_pretrained
    from routed.tokenizer import encode

    torch.set_num_threads(default_threads())
    started = time.perf_counter()
    ckpt = load_pretrained(args.model)
    load_s = time.perf_counter() - started
    tokens = encode(ckpt.tokenizer, load_corpus(args.corpus).test)[: args.tokens + 1]
    exits = list(range(1, ckpt.model_config.n_layers + 1)) if args.exits == "all" else [int(e) for e in args.exits.split(",")]
    if args.unchunked:  # the whole batch's logits at once, as before the chunking
        routed.records.HEAD_ROWS = routed.records.MAX_BATCH_TOKENS
    base, peak, done = rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    records = routed.records.evaluate(ckpt.model, tokens, exits=exits)
    seconds = time.perf_counter() - started
    done.set()
    thread.join()
    ppl = {e: float(np.exp(v.astype(np.float64).mean())) for e, v in records.nll.items()}
    print(json.dumps({"exits": args.exits, "unchunked": args.unchunked, "tokens": len(records), "seconds": seconds,
                      "load_s": load_s, "rss_after_load": base, "peak_rss": max(peak[0], rss_mib()), "ppl": ppl,
                      "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hf:smollm2-135m")
    parser.add_argument("--corpus", default="tinystories")
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--view", default="6,12,18,24,30", help="the exit set a view needs")
    parser.add_argument("--all-layers", action="store_true", help="also read every layer (30 heads per token; slow)")
    parser.add_argument("--exits", help=argparse.SUPPRESS)
    parser.add_argument("--unchunked", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.exits:
        worker(args)
        return
    from routed.records import HEAD_ROWS

    last = args.view.split(",")[-1]
    configs = [(last, False), (args.view, False), (args.view, True)] + ([("all", False)] if args.all_layers else [])
    print(f"{args.model}: records of {args.tokens:,} tokens of {args.corpus} (test), one process per row")
    print("| exits | heads | tokens/s | RSS after load (MiB) | peak RSS in records (MiB) | extra (MiB) | PPL per exit |")
    print("|---|---|---|---|---|---|---|")
    r = None
    for exits, unchunked in configs:
        command = [sys.executable, __file__, "--model", args.model, "--corpus", args.corpus, "--tokens", str(args.tokens),
                   "--exits", exits] + (["--unchunked"] if unchunked else [])
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {exits} | failed: {done.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        ppl = ", ".join(f"L{e} {v:.2f}" for e, v in r["ppl"].items()) if len(r["ppl"]) <= 6 else f"{len(r['ppl'])} exits"
        mode = "all at once" if unchunked else f"chunks of {HEAD_ROWS}"
        print(f"| {exits} | {len(r['ppl'])}, {mode} | {r['tokens'] / r['seconds']:.1f} | {r['rss_after_load']:.0f} | "
              f"{r['peak_rss']:.0f} | {r['peak_rss'] - r['rss_after_load']:.0f} | {ppl} |")
    if r is not None:
        print(f"(model load {r['load_s']:.0f} s per process; {r['threads']} thread(s); ROUTED_NUM_THREADS sets them)")


if __name__ == "__main__":
    main()
