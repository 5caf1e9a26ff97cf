"""Background training: a queue of TrainJobs run one at a time by a worker thread.

The worker never touches a user interface; a UI reads a job's fields (status, progress, history)
and sets its cancel flag. Finished runs are saved as checkpoint folders.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from routed.config import ModelConfig, TrainConfig

STATUSES = ("queued", "running", "done", "failed", "cancelled")
_ids = itertools.count(1)


@dataclass
class TrainJob:
    """One training run: what to train, where to save it, and how far it got."""

    model_config: ModelConfig
    train_config: TrainConfig
    corpus: str  # a corpus name or a path to a .txt file (see routed.data.load_corpus)
    out: Path  # checkpoint folder written on success
    extra: dict = field(default_factory=dict)  # stored in the checkpoint's config.json
    id: int = field(default_factory=lambda: next(_ids))
    status: str = "queued"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None  # smoothed training loss
    tokens_per_s: float = 0.0
    eta_s: float | None = None
    history: list[dict] = field(default_factory=list)  # validation records (val_ppl per exit)
    error: str | None = None
    cancel_requested: bool = False
    created: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def fraction(self) -> float:
        """Share of the steps done, in [0, 1]."""
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    def cancel(self) -> None:
        """Ask the run to stop; a queued job is cancelled before it starts."""
        self.cancel_requested = True
        if self.status == "queued":
            self.status = "cancelled"


class JobQueue:
    """Queued TrainJobs, processed in order by one daemon worker thread; at most `max_active` waiting or running."""

    def __init__(self, on_finish: Callable[[TrainJob], None] | None = None, max_active: int = 16):
        self.max_active = max_active
        self._queue: queue.Queue[TrainJob] = queue.Queue()
        self._jobs: list[TrainJob] = []
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.on_finish = on_finish

    def submit(self, job: TrainJob) -> TrainJob:
        """Queue a job; a ValueError if its name is invalid or taken, or the model does not fit in memory."""
        from routed.folders import check_name
        from routed.limits import check_memory

        check_name(job.name)
        check_memory(job.model_config, job.train_config.batch_size)
        with self._lock:  # checked and claimed in one step, so two users cannot both take one name
            if os.path.lexists(job.out) or any(j.out == job.out and j.active for j in self._jobs):
                raise ValueError(f"checkpoint name: {job.name!r} is already taken; choose another name")
            if sum(j.active for j in self._jobs) >= self.max_active:  # one user must not queue days of work
                raise ValueError(f"queue: {self.max_active} runs are already waiting or running; "
                                 "wait for one to finish or cancel one")
            self._jobs.append(job)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="routed-train", daemon=True)
                self._worker.start()
        self._queue.put(job)
        return job

    def jobs(self) -> list[TrainJob]:
        """Every job submitted, newest first."""
        with self._lock:
            return list(reversed(self._jobs))

    def active(self) -> bool:
        return any(job.active for job in self.jobs())

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job.status == "queued":
                run_job(job)
                if self.on_finish is not None:
                    self.on_finish(job)
            self._queue.task_done()


def run_job(job: TrainJob) -> TrainJob:
    """Train and save one job, recording progress and the outcome on it (never raises)."""
    from routed.checkpoint import save_trained
    from routed.tokenizer import TokenizerCancelled
    from routed.train import train

    taken = "another program saved a checkpoint of that name while this run trained; nothing was replaced"

    job.status = "running"

    def on_progress(p) -> None:
        job.step, job.total_steps, job.loss = p.step, p.total_steps, p.train_loss
        job.tokens_per_s, job.eta_s = p.tokens_per_s, p.eta_s
        if p.validation is not None:
            job.history = [*job.history, p.validation]

    try:
        result = train(
            job.model_config,
            job.train_config,
            job.corpus,
            on_progress=on_progress,
            should_stop=lambda: job.cancel_requested,
        )
        if result.cancelled:
            job.status = "cancelled"
        elif result.diverged and not result.good_weights:
            job.error = f"training stopped: {result.diverged}; no validated finite weights: nothing was saved"
            job.status = "failed"
        elif result.diverged:  # the last good weights are saved (config.json says so), but the run is no success
            save_trained(job.out, result, extra=job.extra, replace=False, hint=taken)
            job.error = (f"training stopped: {result.diverged}; the weights validated at step {result.best_step} "
                         "were saved")
            job.status = "failed"
        else:
            save_trained(job.out, result, extra=job.extra, replace=False, hint=taken)
            job.status = "done"
    except TokenizerCancelled:
        job.status = "cancelled"
    except (ValueError, OSError) as exc:  # CorpusError and CheckpointError are ValueErrors
        job.error, job.status = str(exc), "failed"
    except Exception as exc:  # a bug: keep the worker alive and say where it happened
        last = traceback.extract_tb(exc.__traceback__)[-1]
        job.error = f"{type(exc).__name__}: {exc} (at {Path(last.filename).name}:{last.lineno})"
        job.status = "failed"
    job.finished = time.time()
    return job
