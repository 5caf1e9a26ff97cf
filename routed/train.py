"""Training: the one trainer (CLI, app, reproduction and benchmarks all call `train`)."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from routed.config import ModelConfig, TrainConfig
from routed.data import Corpus, CorpusError, load_corpus
from routed.devices import all_reduce_sum, default_threads, pick_device, start_distributed
from routed.limits import check_memory
from routed.loss import weighted_exit_loss
from routed.model import RoutedTransformer
from routed.records import exit_nll_sums
from routed.sampler import WindowSampler
from routed.tokenizer import TokenizerCancelled, encode, train_tokenizer
from routed.train_state import pack_train_state, restore_train_state


def learning_rate_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to cfg.learning_rate, then cosine decay to learning_rate * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.learning_rate * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.learning_rate - floor) * (1 + math.cos(math.pi * progress))


@dataclass
class Progress:
    """What the trainer reports after every step (and, with `validation`, after an evaluation)."""

    step: int
    total_steps: int
    train_loss: float
    learning_rate: float
    tokens_per_s: float
    elapsed_s: float
    eta_s: float
    validation: dict | None = None


@dataclass
class TrainResult:
    model: RoutedTransformer
    tokenizer: object
    model_config: ModelConfig
    train_config: TrainConfig
    corpus_name: str
    corpus_fingerprint: str
    history: list[dict] = field(default_factory=list)
    best_step: int = 0
    stopped_early: bool = False
    cancelled: bool = False
    diverged: str | None = None  # why training stopped on a non-finite loss or gradient
    # False when training diverged before any validation found finite weights: nothing worth saving
    good_weights: bool = True
    rank: int = 0  # this process's rank under torchrun (only rank 0 saves)
    world: int = 1  # the number of processes that trained it


class _ExitLoss(torch.nn.Module):
    """The universal loss as a module, so that DistributedDataParallel can wrap it and sync gradients."""

    def __init__(self, model: RoutedTransformer, layer_weights: dict[int, float]):
        super().__init__()
        self.model, self.layer_weights = model, layer_weights

    def forward(self, inputs, targets):
        return weighted_exit_loss(self.model, inputs, targets, self.layer_weights)[0]


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    corpus: Corpus | str = "python-docs",
    *,
    tokenizer=None,
    encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = "cpu",
    state_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a routed transformer; returns the best weights (by validation loss, on the CPU) and the history.

    `tokenizer` (trained on the corpus when None) and `encoded` (train, validation token ids made
    with that tokenizer) let many runs share one tokenization. `on_progress` is called after every
    step; `should_stop` is polled every step (cancellation), and before and during tokenizer training
    (there it raises routed.tokenizer.TokenizerCancelled). Same configs and seeds give identical
    results on CPU. `device` None picks cuda, then mps, then cpu. Under torchrun the global batch is
    split over the processes (DistributedDataParallel) and validation is gathered from all of them.
    With `state_dir`, the full training state is saved there (atomically) at every validation, and
    `resume` continues from it: the result is the same as an uninterrupted run's. A non-finite loss
    or gradient stops training before it touches the weights (`TrainResult.diverged` says why).
    """
    from routed.checkpoint import load_train_state, save_train_state

    train_config.check_model(model_config)
    # Before the corpus, the tokenizer or any tensor: a model too large for this machine is refused at once.
    check_memory(model_config, train_config.batch_size, training=True,
                 device=str(device) if isinstance(device, (str, torch.device)) and str(device) != "auto" else "cpu")
    if should_stop is not None and should_stop():
        raise TokenizerCancelled("training was cancelled before it started")
    if isinstance(corpus, str):
        corpus = load_corpus(corpus)
    torch.set_num_threads(default_threads())
    rank, world, device, started_group = start_distributed(pick_device(device))
    if train_config.batch_size % world:
        raise ValueError(f"batch_size: {train_config.batch_size} cannot be split evenly over {world} processes")
    saved = load_train_state(state_dir) if (resume and state_dir is not None) else None
    if saved is not None:
        tokenizer = saved[2]
    if tokenizer is None:
        tokenizer = train_tokenizer(corpus.train, model_config.vocab_size, corpus.markers, should_stop)
    model_config = replace(model_config, vocab_size=tokenizer.get_vocab_size())
    train_ids, val_ids = encoded if encoded is not None else (encode(tokenizer, corpus.train), encode(tokenizer, corpus.validation))
    val_ids = val_ids[: train_config.eval_tokens + 1]
    if len(train_ids) < model_config.context_length + 1 + train_config.batch_size:
        raise CorpusError(
            f"corpus: the train split has {len(train_ids)} tokens, fewer than one batch of "
            f"context_length+1={model_config.context_length + 1}; use a larger corpus or a shorter context"
        )
    if len(val_ids) < 2:
        raise CorpusError("corpus: the validation split has fewer than 2 tokens")

    tokens_per_step = train_config.batch_size * model_config.context_length
    if train_config.epochs is not None:
        total_steps = max(1, math.ceil(train_config.epochs * len(train_ids) / tokens_per_step))
    else:
        total_steps = train_config.steps

    torch.manual_seed(train_config.seed)
    model = RoutedTransformer(model_config).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train_config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train_config.learning_rate,
        betas=(0.9, 0.95),
    )
    sampler = WindowSampler(train_ids, model_config.context_length, train_config.batch_size, train_config.seed)
    trained = train_config.trained_exits
    all_exits = list(range(1, model_config.n_layers + 1))
    loss_module = exit_loss = _ExitLoss(model, train_config.layer_weights)
    if world > 1:
        loss_module = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=max(trained) < model_config.n_layers,  # deeper blocks get no gradient
        )
    rows = slice(rank * train_config.batch_size // world, (rank + 1) * train_config.batch_size // world)

    result = TrainResult(
        model, tokenizer, model_config, train_config, corpus.name, corpus.fingerprint, history=[], rank=rank, world=world
    )
    best_loss, best_state, bad_evals = math.inf, None, 0
    first_step, running, elapsed_before = 1, None, 0.0
    identity = {"model": model_config.to_dict(), "train": train_config.to_dict(), "corpus": corpus.fingerprint,
                "world": world}
    if saved is not None:
        tensors, meta, _ = saved
        differs = [k for k in identity if json.loads(json.dumps(identity[k])) != meta.get(k)]
        if differs:
            raise ValueError(f"resume: the state saved in {str(state_dir)!r} is for another run "
                             f"(its {', '.join(differs)} differ); drop --resume or delete that folder")
        try:
            best_state = restore_train_state(tensors, model, optimizer, sampler, device)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:  # a damaged or edited state
            raise ValueError(f"resume: the state saved in {str(state_dir)!r} is damaged "
                             f"({str(exc).splitlines()[0][:200]}); drop --resume or delete that folder") from None
        first_step, running, elapsed_before = meta["step"] + 1, meta["running"], meta["elapsed_s"]
        best_loss, bad_evals, result.best_step = meta["best_loss"], meta["bad_evals"], meta["best_step"]
        result.history = [{**h, "val_ppl": {int(k): v for k, v in h["val_ppl"].items()}} for h in meta["history"]]
    start = time.perf_counter() - elapsed_before

    def validate(step: int, train_loss: float) -> dict:
        nonlocal best_loss, best_state, bad_evals
        sums, count = exit_nll_sums(model, val_ids, all_exits, bf16=train_config.bf16, shard=(rank, world))
        *sums, count = all_reduce_sum([sums[k] for k in all_exits] + [count], world)
        ce = {layer: s / count for layer, s in zip(all_exits, sums)}
        weights = train_config.validation_weights
        val_loss = sum(weights.get(k, 0.0) * ce[k] for k in trained) / sum(weights.get(k, 0.0) for k in trained)
        record = {
            "step": step,
            "tokens": step * tokens_per_step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_ppl": {layer: math.exp(min(v, 50.0)) for layer, v in ce.items()},
            "elapsed_s": time.perf_counter() - start,
        }
        result.history.append(record)
        if math.isfinite(val_loss) and val_loss < best_loss and _all_finite(model):
            best_loss, bad_evals, result.best_step = val_loss, 0, step
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_evals += 1
        if state_dir is not None and rank == 0:
            tensors = pack_train_state(model, best_state, optimizer, sampler, device)
            meta = {**identity, "step": step, "running": train_loss, "elapsed_s": record["elapsed_s"],
                    "best_loss": best_loss, "bad_evals": bad_evals, "best_step": result.best_step,
                    "history": result.history}
            save_train_state(state_dir, tensors, meta, tokenizer)
        return record

    step = first_step - 1
    for step in range(first_step, total_steps + 1):
        if should_stop is not None and should_stop():
            result.cancelled = True
            break
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step - 1, train_config, total_steps)
        exit_loss.layer_weights = train_config.layer_weights_at((step - 1) / max(1, total_steps - 1))
        x, y = sampler.next_batch()
        x, y = x[rows].to(device), y[rows].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train_config.bf16):
            loss = loss_module(x, y)
        loss_value = all_reduce_sum([float(loss.detach())], world)[0] / world
        if not math.isfinite(loss_value):
            result.diverged = f"the training loss is {loss_value} at step {step}"
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The norm is needed anyway to catch a non-finite gradient before it reaches the weights.
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip or math.inf)
        if not math.isfinite(float(grad_norm)):
            result.diverged = f"the gradient norm is {float(grad_norm)} at step {step}"
            break
        optimizer.step()

        running = loss_value if running is None else 0.95 * running + 0.05 * loss_value
        elapsed = time.perf_counter() - start
        record = None
        if step % train_config.eval_interval == 0 or step == total_steps:
            record = validate(step, running)
        if on_progress is not None:
            done = step - first_step + 1
            on_progress(
                Progress(
                    step=step,
                    total_steps=total_steps,
                    train_loss=running,
                    learning_rate=optimizer.param_groups[0]["lr"],
                    tokens_per_s=done * tokens_per_step / max(elapsed - elapsed_before, 1e-9),
                    elapsed_s=elapsed,
                    eta_s=(elapsed - elapsed_before) / done * (total_steps - step),
                    validation=record,
                )
            )
        if record is not None and train_config.patience is not None and bad_evals >= train_config.patience:
            result.stopped_early = True
            break

    if best_state is None and (result.cancelled or result.diverged) and step > 1:
        validate(step - 1, running if running is not None else math.nan)  # the weights are the last good ones
    if best_state is not None:
        model.load_state_dict(best_state)
    elif result.diverged:
        result.good_weights = False
    if started_group:
        import torch.distributed as dist

        dist.destroy_process_group()
    model.cpu().eval()
    return result


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
