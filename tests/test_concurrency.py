"""Several users at once: app sessions in threads share one server process but never each other's state."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import charts
from parallel_apptest import parallel_apptest
from streamlit.testing.v1 import AppTest
from test_app import APP, errors

USERS = 5
WORDS = ["alpha", "bravo", "charlie", "delta", "echo"]
TIMEOUT = 150


def settings(i: int) -> dict:
    """Each user's own run: a distinct name, model width, threshold and text."""
    return dict(
        name=f"user{i}_{WORDS[i]}",
        d_model=16 + 8 * i,
        threshold=round(0.2 + 0.15 * i, 2),
        text=f"The tower of {WORDS[i]} is near the sea. The river of {WORDS[i]} is quiet at night.",
    )


def heatmap_text(at: AppTest) -> tuple[str, float]:
    """The text the Token routing chart draws, and the threshold its slider starts at."""
    return charts.routing_paths(at)[0], charts.start_threshold(charts.vega_charts(at)[0])


def user(i: int, corpus: bytes, barrier: threading.Barrier) -> None:
    try:
        session(i, corpus, barrier)
    except BaseException:
        barrier.abort()  # so the others stop waiting for this user
        raise


def session(i: int, corpus: bytes, barrier: threading.Barrier) -> None:
    me = settings(i)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/train.py").run()
    at.radio(key="train_mode").set_value("custom layer weights")
    tiny = dict(d_model=me["d_model"], n_heads=2, context=32, vocab=300, batch=4, steps=5, eval_interval=5)
    for key, value in tiny.items():
        at.number_input(key=f"train_{key}").set_value(value)
    at.selectbox(key="train_corpus").set_value("upload a .txt file")
    at.file_uploader(key="train_upload").upload("tiny.txt", corpus, "text/plain")
    at.text_input(key="train_name").input(me["name"])
    barrier.wait()  # everyone submits at once
    at.button(key="train_submit").click().run()
    assert not at.exception and not errors(at), errors(at)

    deadline = time.monotonic() + TIMEOUT
    status = ""
    while time.monotonic() < deadline:
        status = next((m.value for m in at.markdown if m.value.startswith(f"**{me['name']}**")), "")
        if "done" in status or "failed" in status:
            break
        time.sleep(1.0)
        at.run()
    assert "done" in status, (me["name"], status, errors(at))
    assert at.text_input(key="train_name").value == me["name"]

    barrier.wait()  # every checkpoint is saved; now everyone routes text at once
    at.switch_page("pages/token_routing.py").run()
    picker = at.selectbox(key="routing_model")
    assert {settings(j)["name"] for j in range(USERS)} <= set(picker.options)
    picker.set_value(me["name"])
    at.session_state["threshold"] = me["threshold"]  # as the calibration page's "use this threshold" sets it
    at.session_state["threshold_auto"] = False
    at.text_area(key="routing_text").set_value(me["text"]).run()
    assert not at.exception and not errors(at), errors(at)

    assert at.session_state["model"] == me["name"]
    assert at.session_state["threshold"] == me["threshold"]
    assert at.text_area(key="routing_text").value == me["text"]
    assert any(f"d_model {me['d_model']};" in c.value for c in at.caption), "the caption describes this user's model"
    visible, threshold = heatmap_text(at)
    assert visible == me["text"]
    assert threshold == me["threshold"]
    assert not any(w in visible for w in WORDS if w != WORDS[i])


def test_five_users_train_and_route_without_sharing_state(app_env):
    corpus = app_env.corpus.read_bytes()
    barrier = threading.Barrier(USERS, timeout=TIMEOUT)
    with parallel_apptest(), ThreadPoolExecutor(USERS) as pool:
        futures = [pool.submit(user, i, corpus, barrier) for i in range(USERS)]
    failures = [f.exception() for f in futures if f.exception() is not None]
    if failures:  # the first real one; the rest only stopped waiting for it at a barrier
        raise min(failures, key=lambda exc: isinstance(exc, threading.BrokenBarrierError))
    for i in range(USERS):
        assert (app_env.checkpoints / settings(i)["name"] / "config.json").is_file()


def test_two_users_cannot_take_one_checkpoint_name(tiny_world, tmp_path):
    from routed.config import ModelConfig, TrainConfig
    from routed.jobs import JobQueue, TrainJob

    model = ModelConfig(vocab_size=300, n_layers=1, d_model=16, n_heads=2, context_length=32)
    train = TrainConfig(layer_weights={1: 1.0}, batch_size=4, steps=2000, eval_interval=1000)
    queue, barrier = JobQueue(), threading.Barrier(USERS)

    def submit(_):
        job = TrainJob(model, train, str(tiny_world.corpus), tmp_path / "same_name")
        barrier.wait()
        try:
            return queue.submit(job)
        except ValueError as exc:
            assert "already taken" in str(exc)

    with ThreadPoolExecutor(USERS) as pool:
        taken = [job for job in pool.map(submit, range(USERS)) if job is not None]
    assert len(taken) == 1 and len(queue.jobs()) == 1
    taken[0].cancel()
    while taken[0].active:
        time.sleep(0.05)


def test_a_repeated_upload_never_truncates_the_file_under_a_reader():
    """Users uploading the same file share its path, while a training run may be reading it."""
    from conftest import tiny_text

    import appkit

    data = tiny_text().encode()
    path = Path(appkit.save_upload("tiny.txt", data))
    stop = threading.Event()

    def upload_again():
        while not stop.is_set():
            appkit.save_upload("tiny.txt", data)

    writer = threading.Thread(target=upload_again)
    writer.start()
    try:
        sizes = {len(path.read_bytes()) for _ in range(500)}
    finally:
        stop.set()
        writer.join()
    assert sizes == {len(data)}
