"""Training: the universal loss (a weighted sum of per-exit cross-entropies) and the one trainer."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from routed.config import ModelConfig, TrainConfig
from routed.data import Corpus, CorpusError, encode, load_corpus, train_tokenizer
from routed.evaluate import exit_losses
from routed.model import RoutedTransformer


class _HeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (hidden @ weight.T) against targets, computed in row chunks.

    The (tokens x vocabulary) logits never exist whole: each chunk's softmax stays in cache and its
    gradients are formed at once (the loss is a scalar, so backward only rescales them). For small
    models the vocabulary-wide softmax otherwise costs as much as the matmuls.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows):
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        total = hidden.new_zeros((), dtype=torch.float64)
        for i in range(0, n, chunk_rows):
            h, t = hidden[i : i + chunk_rows], targets[i : i + chunk_rows]
            logits = (h @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32))
            peak = logits.amax(dim=-1, keepdim=True)
            target_logit = logits.gather(-1, t.unsqueeze(-1))
            probs = logits.sub_(peak).exp_()  # in place: one pass per step over the chunk
            norm = probs.sum(dim=-1, keepdim=True)
            total += (norm.log() + peak - target_logit).sum(dtype=torch.float64)  # CE = logsumexp - target
            probs.div_(norm)
            probs[torch.arange(len(t)), t] -= 1.0  # d(CE)/d(logits) = softmax - onehot
            probs = probs.to(hidden.dtype)
            grad_hidden[i : i + chunk_rows] = probs @ weight
            grad_weight.addmm_(probs.T, h)
        ctx.save_for_backward(grad_hidden.div_(n), grad_weight.div_(n))
        return (total / n).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None


def head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 256):
    """Mean CE of logits hidden @ weight.T (hidden (N, C), weight (V, C), targets (N,)), fused when training."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _HeadCrossEntropy.apply(hidden, weight, targets, chunk_rows)
    return F.cross_entropy((hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32)), targets)


def weighted_exit_loss(
    model: RoutedTransformer, inputs: torch.Tensor, targets: torch.Tensor, layer_weights: dict[int, float]
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The universal loss sum_l w_l * CE_l / sum_l w_l over layers with w_l > 0, and each CE_l.

    One trunk pass; the shared head is applied to each trained exit.
    """
    trained = [layer for layer, w in layer_weights.items() if w > 0]
    features = model.exit_features(inputs, exits=trained)
    losses = {
        layer: head_cross_entropy(h.flatten(0, 1), model.lm_head.weight, targets.flatten())
        for layer, h in features.items()
    }
    total_weight = sum(layer_weights[layer] for layer in losses)
    loss = sum(layer_weights[layer] * ce for layer, ce in losses.items()) / total_weight
    return loss, losses


def learning_rate_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to cfg.learning_rate, then cosine decay to learning_rate * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.learning_rate * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.learning_rate - floor) * (1 + math.cos(math.pi * progress))


def default_threads() -> int:
    """Intra-op threads: ROUTED_NUM_THREADS if set, else the cores this process may run on.

    More threads than cores (or two busy processes sharing them) slows small matmuls sharply.
    """
    if os.environ.get("ROUTED_NUM_THREADS", "").isdigit() and int(os.environ["ROUTED_NUM_THREADS"]) > 0:
        return int(os.environ["ROUTED_NUM_THREADS"])
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


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


class WindowSampler:
    """Non-overlapping training windows in a seeded random order, reshuffled (and shifted) every epoch."""

    def __init__(self, tokens: torch.Tensor, context_length: int, batch_size: int, seed: int):
        self.tokens, self.ctx, self.batch_size = tokens, context_length, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)

    def _new_epoch(self) -> None:
        span = self.ctx + 1
        shift = int(torch.randint(0, self.ctx, (1,), generator=self.generator)) if len(self.tokens) > 2 * span else 0
        starts = torch.arange(shift, len(self.tokens) - span + 1, self.ctx)
        self._order = starts[torch.randperm(len(starts), generator=self.generator)]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self._order) < self.batch_size:
            carry = self._order
            self._new_epoch()
            self._order = torch.cat([carry, self._order])
        starts, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        rows = torch.stack([self.tokens[s : s + self.ctx + 1] for s in starts.tolist()])
        return rows[:, :-1], rows[:, 1:]


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    corpus: Corpus | str = "python-docs",
    *,
    tokenizer=None,
    encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a routed transformer; returns the best weights (by validation loss) and the history.

    `tokenizer` (trained on the corpus when None) and `encoded` (train, validation token ids made
    with that tokenizer) let many runs share one tokenization. `on_progress` is called after every
    step; `should_stop` is polled every step (cancellation). Same configs and seeds give identical
    results on CPU.
    """
    train_config.check_model(model_config)
    if isinstance(corpus, str):
        corpus = load_corpus(corpus)
    torch.set_num_threads(default_threads())
    if tokenizer is None:
        tokenizer = train_tokenizer(corpus.train, model_config.vocab_size)
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
    model = RoutedTransformer(model_config)
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

    result = TrainResult(
        model, tokenizer, model_config, train_config, corpus.name, corpus.fingerprint, history=[]
    )
    best_loss, best_state, bad_evals = math.inf, None, 0
    start = time.perf_counter()
    running = None

    def validate(step: int, train_loss: float) -> dict:
        nonlocal best_loss, best_state, bad_evals
        ce = exit_losses(model, val_ids, all_exits, bf16=train_config.bf16)
        val_loss = sum(train_config.layer_weights.get(k, 0.0) * ce[k] for k in trained) / sum(
            train_config.layer_weights[k] for k in trained
        )
        record = {
            "step": step,
            "tokens": step * tokens_per_step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_ppl": {layer: math.exp(min(v, 50.0)) for layer, v in ce.items()},
            "elapsed_s": time.perf_counter() - start,
        }
        result.history.append(record)
        if val_loss < best_loss:
            best_loss, bad_evals, result.best_step = val_loss, 0, step
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_evals += 1
        return record

    for step in range(1, total_steps + 1):
        if should_stop is not None and should_stop():
            result.cancelled = True
            break
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step - 1, train_config, total_steps)
        x, y = sampler.next_batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=train_config.bf16):
            loss, _ = weighted_exit_loss(model, x, y, train_config.layer_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train_config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()

        loss_value = float(loss.detach())
        running = loss_value if running is None else 0.95 * running + 0.05 * loss_value
        elapsed = time.perf_counter() - start
        record = None
        if step % train_config.eval_interval == 0 or step == total_steps:
            record = validate(step, running)
        if on_progress is not None:
            on_progress(
                Progress(
                    step=step,
                    total_steps=total_steps,
                    train_loss=running,
                    learning_rate=optimizer.param_groups[0]["lr"],
                    tokens_per_s=step * tokens_per_step / max(elapsed, 1e-9),
                    elapsed_s=elapsed,
                    eta_s=elapsed / step * (total_steps - step),
                    validation=record,
                )
            )
        if record is not None and train_config.patience is not None and bad_evals >= train_config.patience:
            result.stopped_early = True
            break

    if best_state is None and result.cancelled and step > 1:
        validate(step - 1, running if running is not None else math.nan)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
