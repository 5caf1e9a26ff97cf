"""Training exit adapters on a frozen pretrained model with routed's universal weighted loss.

The base model never changes, so the residual states at the exits are computed once for a pool of
training tokens (one trunk pass, up to the deepest exit) and every step reads a random batch of
them: a step costs only the adapters, the shared norm and the head. Each map starts as a ridge
regression of the exit's state onto the last layer's normalised state (a linear shortcut between
layers, Din et al. 2023), or as the identity (the plain logit lens), then follows the loss.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from routed.adapters import ExitAdapters
from routed.loss import weighted_feature_loss
from routed.records import MAX_BATCH_TOKENS

INITS = ("regression", "identity")


@dataclass
class AdapterTrainConfig:
    """One adapters run: which exits, how many tokens and steps, and the optimiser."""

    exits: list[int] = field(default_factory=list)  # layers that get a map (the last layer never needs one)
    layer_weights: dict[int, float] | None = None  # the universal loss' weights; None: equal
    steps: int = 150
    batch_tokens: int = 256  # tokens per step, drawn from the pool
    pool_tokens: int = 16_384  # training tokens whose states are computed once
    eval_tokens: int = 4_096  # validation tokens (a fixed prefix of windows)
    window: int = 256  # context length of the windows the tokens are cut into
    learning_rate: float = 3e-4
    init: str = "regression"
    ridge: float = 1e-2  # regression penalty, on standardised states
    eval_interval: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        self.exits = sorted({int(e) for e in self.exits})
        if not self.exits or self.exits[0] < 1:
            raise ValueError(f"exits: give the layers to adapt, numbered from 1, got {self.exits!r}")
        for name in ("steps", "batch_tokens", "pool_tokens", "eval_tokens", "window", "eval_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < math.inf):
            raise ValueError(f"learning_rate: must be a positive number, got {self.learning_rate!r}")
        if self.init not in INITS:
            raise ValueError(f"init: choose one of {', '.join(INITS)}, got {self.init!r}")
        if self.layer_weights is not None:
            unknown = [e for e in self.layer_weights if int(e) not in self.exits]
            if unknown:
                raise ValueError(f"layer_weights: layer(s) {unknown} are not adapted exits {self.exits}")
            self.layer_weights = {int(e): float(w) for e, w in self.layer_weights.items()}
            if sum(self.layer_weights.values()) <= 0 or min(self.layer_weights.values()) < 0:
                raise ValueError("layer_weights: need non-negative weights, at least one positive")

    @property
    def weights(self) -> dict[int, float]:
        return self.layer_weights or {e: 1.0 for e in self.exits}

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.layer_weights is not None:
            data["layer_weights"] = {str(k): v for k, v in self.layer_weights.items()}
        return data


def _starts(n_tokens: int, window: int, wanted_tokens: int) -> list[int]:
    """Starts of windows spread evenly over a split, enough for `wanted_tokens` predictions."""
    room = n_tokens - window - 1
    if room < 0:
        raise ValueError(f"tokens: the split has {n_tokens} tokens, fewer than one window of {window} + 1")
    count = min(room // window + 1, math.ceil(wanted_tokens / window))
    return sorted({round(i * room / max(1, count - 1)) for i in range(count)}) if count > 1 else [0]


@torch.no_grad()
def collect_states(model, tokens: torch.Tensor, layers, n_tokens: int, window: int):
    """({layer: raw states (N, C)}, targets (N,)) of windows spread over `tokens`: one trunk pass per batch."""
    starts = _starts(len(tokens), window, n_tokens)
    states = {layer: [] for layer in layers}
    targets = []
    per_batch = max(1, MAX_BATCH_TOKENS // window)
    for i in range(0, len(starts), per_batch):
        rows = torch.stack([tokens[s : s + window + 1] for s in starts[i : i + per_batch]])
        hidden = model.hidden_states(rows[:, :-1], layers)
        for layer in layers:
            states[layer].append(hidden[layer].flatten(0, 1).float())
        targets.append(rows[:, 1:].flatten())
    return {layer: torch.cat(v) for layer, v in states.items()}, torch.cat(targets)


@torch.no_grad()
def regression_init(adapters: ExitAdapters, states: dict, final: torch.Tensor, ridge: float) -> None:
    """Set each map to the ridge regression of its standardised exit state onto the last state's direction.

    The target is h / rms(h) of the last layer: the final norm removes the scale anyway.
    """
    target = final.double()
    target = target / target.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    centre = target.mean(0)
    for layer in adapters.exits:
        x = states[layer].double()
        shift, scale = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - shift) / scale
        gram = z.T @ z + ridge * len(z) * torch.eye(z.shape[1], dtype=z.dtype)
        coef = torch.linalg.solve(gram, z.T @ (target - centre))  # (C, C): z @ coef ~ centred target
        adapters.set_map(layer, coef.T.float(), centre.float(), shift.float(), scale.float())


@torch.no_grad()
def exit_losses(model, adapters: ExitAdapters, states: dict, targets: torch.Tensor, rows: int = 512) -> dict[int, float]:
    """Mean cross-entropy (nats) of each adapted exit over the given states, in row chunks."""
    losses = {}
    for layer in adapters.exits:
        total = 0.0
        for i in range(0, len(targets), rows):
            h = model.norm(adapters(layer, states[layer][i : i + rows]))
            total += float(torch.nn.functional.cross_entropy(model.lm_head(h).float(), targets[i : i + rows],
                                                             reduction="sum"))
        losses[layer] = total / len(targets)
    return losses


def train_adapters(model, train_tokens: torch.Tensor, val_tokens: torch.Tensor, cfg: AdapterTrainConfig, log=None):
    """(ExitAdapters, history) trained on a frozen PretrainedLM; history holds validation CE per exit.

    The first history rows are the plain logit lens (identity maps) and the initialised maps. The maps
    returned are those of the best validation (weighted CE) among the initialised and the trained ones,
    so a learning rate that overshoots never leaves worse adapters than the initialisation.
    """
    n = model.config.n_layers
    if cfg.exits[-1] > n:
        raise ValueError(f"exits: the model has {n} layers, got {cfg.exits}")
    exits = [e for e in cfg.exits if e != n]  # the last layer is the model's own exit
    if not exits:
        raise ValueError(f"exits: the last layer ({n}) is the model's own output; adapt earlier layers")
    weights = {e: w for e, w in cfg.weights.items() if e in exits}
    log = log or (lambda message: None)
    torch.manual_seed(cfg.seed)
    adapters = ExitAdapters(model.config.d_model, exits)
    started = time.perf_counter()
    needs_final = cfg.init == "regression"
    layers = sorted(set(exits) | ({n} if needs_final else set()))
    log(f"computing states at layers {layers} for {cfg.pool_tokens:,} training tokens…")
    states, targets = collect_states(model, train_tokens, layers, cfg.pool_tokens, cfg.window)
    val_states, val_targets = collect_states(model, val_tokens, exits, cfg.eval_tokens, cfg.window)
    log(f"states ready in {time.perf_counter() - started:.0f}s")
    history = [{"step": 0, "stage": "identity", "val_ce": exit_losses(model, adapters, val_states, val_targets)}]
    log(_line(history[-1]))
    if needs_final:
        regression_init(adapters, states, states.pop(n), cfg.ridge)
        history.append({"step": 0, "stage": "regression",
                        "val_ce": exit_losses(model, adapters, val_states, val_targets)})
    log(_line(history[-1]))

    def weighted_val(row: dict) -> float:
        return sum(weights.get(e, 1.0) * row["val_ce"][e] for e in exits)

    best = (weighted_val(history[-1]), copy.deepcopy(adapters.state_dict()), history[-1])
    optimizer = torch.optim.Adam(adapters.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    for step in range(1, cfg.steps + 1):
        lr = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * (step - 1) / cfg.steps))  # cosine to 0
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = torch.randint(len(targets), (cfg.batch_tokens,), generator=generator)
        features = {e: model.norm(adapters(e, states[e][rows])) for e in exits}
        loss, _ = weighted_feature_loss(features, model.lm_head.weight, targets[rows], weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % cfg.eval_interval == 0 or step == cfg.steps:
            history.append({"step": step, "stage": "train", "train_loss": loss.item(),
                            "val_ce": exit_losses(model, adapters, val_states, val_targets),
                            "seconds": time.perf_counter() - started})
            log(_line(history[-1]))
            if weighted_val(history[-1]) < best[0]:
                best = (weighted_val(history[-1]), copy.deepcopy(adapters.state_dict()), history[-1])
    adapters.load_state_dict(best[1])
    history.append({"step": best[2]["step"], "stage": "kept", "val_ce": best[2]["val_ce"]})
    log(f"kept the maps of step {best[2]['step']} ({best[2]['stage']}), the best validation")
    return adapters.eval(), history


def _line(row: dict) -> str:
    ce = ", ".join(f"L{e} {v:.3f}" for e, v in row["val_ce"].items())
    return f"step {row['step']:>5} ({row['stage']}): validation CE {ce}"
