"""Memory and latency of the Token routing page under many threshold moves, model switches and users.

    python benchmarks/app_memory.py [--checkpoints checkpoints] [--moves 100] [--switches 20] [--users 5]

Drives the app through Streamlit's AppTest (no browser) on the given checkpoint folder, with a fresh
cache folder. One session: a warm-up that opens every model once (so each bounded cache is as full as
it gets), then `moves` threshold slider moves with a model switch after every moves/switches of them,
reading the process RSS after each action. Then `users` sessions in threads at the same time, each
routing its own text, switching models and moving the slider, repeated `rounds` times. Prints one
table per part.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak so far (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def open_routing_page():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/token_routing.py").run()
    check(at)
    return at


def check(at) -> None:
    problems = [e.value for e in at.exception] + [e.value for e in at.error]
    if problems:
        raise SystemExit(f"the page failed: {problems}")


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def one_session(models: list[str], moves: int, switches: int) -> None:
    at = open_routing_page()
    for name in models:  # warm-up
        at.selectbox(key="routing_model").set_value(name).run()
        check(at)
    warm = rss_mib()
    thresholds = itertools.cycle([round(0.5 + k / 100, 2) for k in range(50)])
    next_model = itertools.cycle(models)
    samples, move_s, switch_s = [warm], [], []
    every = max(1, moves // max(1, switches))
    for k in range(1, moves + 1):
        move_s.append(timed(lambda: at.slider(key="routing_threshold").set_value(next(thresholds)).run()))
        check(at)
        samples.append(rss_mib())
        if k % every == 0 and len(switch_s) < switches:
            switch_s.append(timed(lambda: at.selectbox(key="routing_model").set_value(next(next_model)).run()))
            check(at)
            samples.append(rss_mib())
    rows = [
        ("actions measured", f"{moves} slider moves, {len(switch_s)} model switches over {len(models)} models"),
        ("RSS after warm-up", f"{warm:.0f} MiB"),
        ("RSS peak (sampled after warm-up and each action)", f"{max(samples):.0f} MiB"),
        ("RSS at the end", f"{samples[-1]:.0f} MiB"),
        ("growth over the last half", f"{samples[-1] - samples[len(samples) // 2]:+.1f} MiB"),
        ("slider move, median / max", f"{1000 * statistics.median(move_s):.0f} / {1000 * max(move_s):.0f} ms"),
        ("model switch, median / max", f"{1000 * statistics.median(switch_s):.0f} / {1000 * max(switch_s):.0f} ms"),
    ]
    table("One session", rows)


def many_sessions(models: list[str], users: int, moves: int, rounds: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from parallel_apptest import parallel_apptest

    def user(i: int) -> None:
        at = open_routing_page()
        text = at.text_area(key="routing_text").value
        at.text_area(key="routing_text").set_value(f"{text} User {i} wrote this .")  # own cache entries
        for k in range(moves):
            if k % 5 == 0:
                at.selectbox(key="routing_model").set_value(models[(i + k // 5) % len(models)]).run()
            at.slider(key="routing_threshold").set_value(round(0.5 + (i + k) % 50 / 100, 2)).run()
            check(at)

    rows = [
        ("sessions at once", f"{users}, each on its own text: {moves} slider moves, {-(-moves // 5)} model switches")
    ]
    with parallel_apptest(), ThreadPoolExecutor(users) as pool:
        for r in range(1, rounds + 1):  # the same work again: bounded caches keep RSS level
            total = timed(lambda: list(pool.map(user, range(users))))  # list() re-raises a session's failure
            rows.append((f"round {r}: total time, RSS after", f"{total:.1f} s, {rss_mib():.0f} MiB"))
    rows.append(("process peak RSS (VmHWM), whole run", f"{rss_mib('VmHWM'):.0f} MiB"))
    table("Concurrent sessions", rows)


def table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    parser.add_argument("--moves", type=int, default=100)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--user-moves", type=int, default=20, help="slider moves per concurrent session")
    parser.add_argument("--rounds", type=int, default=3, help="times the concurrent sessions are repeated")
    args = parser.parse_args()
    os.environ["ROUTED_CHECKPOINTS_DIR"] = str(Path(args.checkpoints).resolve())
    os.chdir(ROOT)
    import streamlit.logger
    import torch
    from streamlit import config

    config.get_config_options()  # parsed now, so that no later parse resets the level set next
    streamlit.logger.set_log_level("error")  # AppTest sessions in threads each warn of a missing ScriptRunContext

    from routed.adapters import is_adapter_folder
    from routed.checkpoint import list_checkpoints
    from routed.devices import default_threads

    torch.set_num_threads(default_threads())
    # routed's own models; exit adapters load a pretrained base of their own (benchmarks/pretrained_records.py)
    models = [m for m in list_checkpoints(args.checkpoints) if not is_adapter_folder(Path(args.checkpoints) / m)]
    print(f"{len(models)} checkpoints in {args.checkpoints}; RSS at start {rss_mib():.0f} MiB")
    with tempfile.TemporaryDirectory(prefix="routed-app-memory-") as cache:
        os.environ["ROUTED_CACHE_DIR"] = cache
        one_session(models, args.moves, args.switches)
        many_sessions(models, args.users, args.user_moves, args.rounds)


if __name__ == "__main__":
    main()
