"""The background training queue (routed.jobs) and checkpoint folders by name (routed.checkpoint)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from routed.checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    read_sweep,
    write_sweep,
)
from routed.config import ModelConfig, TrainConfig
from routed.jobs import JobQueue, TrainJob, run_job

TINY_MODEL = ModelConfig(vocab_size=300, n_layers=3, d_model=32, n_heads=2, context_length=32)


def tiny_job(out, corpus, **train) -> TrainJob:
    config = TrainConfig(layer_weights={1: 0.7, 3: 0.3}, routing_threshold=0.9, batch_size=4, warmup_steps=1, **train)
    return TrainJob(TINY_MODEL, config, str(corpus), out, extra={"preset": None})


def wait(job: TrainJob, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while job.active and time.monotonic() < deadline:
        time.sleep(0.05)


def test_job_trains_records_progress_and_saves(tiny_world, tmp_path):
    job = run_job(tiny_job(tmp_path / "run", tiny_world.corpus, steps=4, eval_interval=2))
    assert job.status == "done", job.error
    assert (job.step, job.total_steps, job.fraction) == (4, 4, 1.0)
    assert [h["step"] for h in job.history] == [2, 4]
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.train_config.routing_threshold == 0.9 and ckpt.meta["best_step"] in (2, 4)


def test_failure_is_a_message_not_an_exception(tmp_path):
    job = run_job(tiny_job(tmp_path / "run", tmp_path / "missing.txt", steps=2))
    assert job.status == "failed" and "missing.txt" in job.error
    assert not (tmp_path / "run").exists()


def test_queue_runs_in_order_and_cancels(tiny_world, tmp_path):
    finished = []
    queue = JobQueue(on_finish=finished.append)
    first = queue.submit(tiny_job(tmp_path / "a", tiny_world.corpus, steps=2000, eval_interval=1000))
    second = queue.submit(tiny_job(tmp_path / "b", tiny_world.corpus, steps=2, eval_interval=2))
    third = queue.submit(tiny_job(tmp_path / "c", tiny_world.corpus, steps=2))
    third.cancel()  # still queued: cancelled at once and never started
    assert third.status == "cancelled" and queue.jobs()[0] is third
    while first.step == 0 and first.active:
        time.sleep(0.05)
    first.cancel()
    wait(first), wait(second)
    assert (first.status, second.status) == ("cancelled", "done")
    assert finished == [first, second]
    assert not (tmp_path / "a").exists() and (tmp_path / "b" / "config.json").is_file()
    assert not queue.active()


@pytest.mark.parametrize("bad", ["", " ", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden", "x\0y"])
def test_checkpoint_path_accepts_only_plain_names(tmp_path, bad):
    with pytest.raises(CheckpointError):
        checkpoint_path(bad, tmp_path)


def test_checkpoint_folders_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTED_CHECKPOINTS_DIR", str(tmp_path))
    assert checkpoint_path("model_1") == tmp_path / "model_1"
    for name, complete in (("b", True), ("a", True), ("partial", False), (".a.tmp-1", True)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "config.json").write_text("{}")
    assert list_checkpoints() == ["a", "b"]
    assert list_checkpoints(tmp_path / "nothing") == []


def test_sweep_csv_round_trip(tmp_path):
    t = np.linspace(0, 1, 11)
    rows = {
        c: t * i
        for i, c in enumerate(
            [
                "threshold",
                "routed_ppl",
                "shallow_pct",
                "compute_pct",
                "flops_pct",
                "shallow_ppl",
                "deep_ppl",
                "oracle_ppl",
            ]
        )
    }
    assert read_sweep(tmp_path) is None
    write_sweep(tmp_path, rows)
    back = read_sweep(tmp_path)
    assert set(rows) < set(back) and np.allclose(back["compute_pct"], rows["compute_pct"])
    assert np.isnan(back["routed_bpb"]).all()  # a sweep without bits per byte reads as NaN
    write_sweep(tmp_path, rows | {"routed_bpb": t, "shallow_bpb": t, "deep_bpb": t, "oracle_bpb": t})
    assert np.allclose(read_sweep(tmp_path)["routed_bpb"], t)
    (tmp_path / "sweep.csv").write_text("threshold,routed_ppl\n0.5,3\n")
    with pytest.raises(CheckpointError, match="lacks column"):
        read_sweep(tmp_path)


def test_the_queue_holds_a_bounded_number_of_runs(tiny_world, tmp_path):
    queue = JobQueue(max_active=2)
    jobs = [queue.submit(tiny_job(tmp_path / name, tiny_world.corpus, steps=2000, eval_interval=1000)) for name in "ab"]
    with pytest.raises(ValueError, match="^queue: 2 runs are already waiting or running"):
        queue.submit(tiny_job(tmp_path / "c", tiny_world.corpus, steps=2))
    for job in reversed(jobs):
        job.cancel()
    for job in jobs:
        wait(job)
    assert [job.status for job in jobs] == ["cancelled", "cancelled"]
    queue.submit(tiny_job(tmp_path / "c", tiny_world.corpus, steps=2)).cancel()  # room again
