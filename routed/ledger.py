"""The one FLOPs ledger: what a named execution of a routed model costs per token.

Every FLOPs% that `routed` prints comes from `execution_cost`, for the execution whose PPL stands
beside it. Costs are forward FLOPs (2 per multiply-add) of the matrix products and attention; layer
norms, softmaxes and elementwise work are left out. FLOPs% is relative to a plain model of the same
width with max(3, L) layers and one head (the notes' Standard 3L, or a deeper model against itself).

Compute% is the notes' measure: the layers on each token's path (its exit layer) against the same
reference, whatever an execution really runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from routed.config import ModelConfig

# name -> what runs; routed.sparse runs each (and routed.sweep gives dense's PPL from stored records)
EXECUTIONS = {
    "plain": "every token through every layer and one head; no routing",
    "dense": "every token through every layer and every exit's head; the exit only picks the output (the notes' semantics)",
    "recompute": "exited tokens skip the later heads, but their deeper layers still run for the keys and values "
    "later tokens attend to (computed later, with the next deep token): the dense output exactly",
    "propagate": "exited tokens skip the deeper layers; their last state is carried up and only projected to "
    "keys and values at each deeper layer (state propagation, as in CALM)",
    "copy": "exited tokens skip the deeper layers; their keys and values at the exit layer are reused at every "
    "deeper layer (no extra work)",
    "drop": "exited tokens skip the deeper layers and leave no keys or values there (as Mixture-of-Depths)",
}
KV_POLICIES = ("propagate", "copy", "recompute", "drop")


def check_execution(execution: str) -> None:
    if execution not in EXECUTIONS:
        raise ValueError(f"execution: unknown execution {execution!r}; choose one of {', '.join(EXECUTIONS)}")


@dataclass(frozen=True)
class TokenCost:
    """Forward FLOPs per token of one transformer layer, one output head, one layer's K/V projection, one probe."""

    layer: float
    head: float
    kv: float
    probe: float

    @classmethod
    def of(cls, cfg: ModelConfig, attention: bool = True) -> TokenCost:
        """The costs of cfg; attention=False leaves out the attention scores (QK^T and AV), keeping the matmuls."""
        d, T = cfg.d_model, cfg.context_length
        kv_width = cfg.head_dim * cfg.kv_heads  # d, unless grouped-query attention shares key/value heads
        # Multiply-adds: q and out-proj d^2 each, k and v d * kv_width each, the MLP 2 (GELU) or 3 (gated)
        # matrices of d * d_ff; x2 for FLOPs. Routed's block: 2 * (4d^2 + 8d^2) = 24d^2. Plus QK^T and AV
        # over (T+1)/2 positions on average (2 * 2d each), unless attention=False.
        macs = 2 * d * d + 2 * d * kv_width + (3 if cfg.gated_mlp else 2) * d * cfg.mlp_width
        layer = 2 * macs + (2 * d * (T + 1) if attention else 0)
        return cls(layer=float(layer), head=float(2 * d * cfg.vocab_size), kv=float(4 * d * kv_width),
                   probe=float(2 * d))


def reference_layers(cfg: ModelConfig) -> int:
    """Layers of the plain model FLOPs% and Compute% are relative to: the notes' 3, or more for deeper models."""
    return max(3, cfg.n_layers)


def reference_flops(cfg: ModelConfig) -> float:
    """FLOPs per token of the plain reference model (same width, reference_layers(cfg) layers, one head)."""
    cost = TokenCost.of(cfg)
    return reference_layers(cfg) * cost.layer + cost.head


def _exits(cfg: ModelConfig, exits) -> list[int]:
    n = cfg.n_layers
    exits = sorted({int(e) for e in exits} | {n}) if exits is not None else sorted({1, n})
    if exits[0] < 1 or exits[-1] > n:
        raise ValueError(f"exits: must be layers within 1..{n}, got {exits!r}")
    return exits


def token_flops(cfg: ModelConfig, exits, exit_layer: int, execution: str, probe: bool = False,
                attention: bool = True) -> float:
    """Forward FLOPs of one token that leaves at `exit_layer` under `execution` (exits: the model's exit layers).

    probe: confidence comes from a learned linear probe of each exit's state, so a token runs one head,
    at its own exit, and a probe at every exit it passes. attention=False: without the attention scores.
    """
    check_execution(execution)
    exits = _exits(cfg, exits)
    if exit_layer not in exits:
        raise ValueError(f"exit_layer: {exit_layer} is not one of the exits {exits}")
    cost, n = TokenCost.of(cfg, attention), cfg.n_layers
    if execution == "plain" or len(exits) == 1:  # a single exit routes nothing
        return n * cost.layer + cost.head
    if execution == "dense":
        return n * cost.layer + len(exits) * cost.head
    checked = exits.index(exit_layer) + 1  # exits up to its own: each ran a head (or a probe) to decide
    if probe:  # the last exit always answers: no probe there
        flops = exit_layer * cost.layer + cost.head + min(checked, len(exits) - 1) * cost.probe
    else:
        flops = exit_layer * cost.layer + checked * cost.head
    skipped = n - exit_layer
    if skipped and execution == "propagate":
        flops += skipped * cost.kv
    elif skipped and execution == "recompute":  # deeper layers but the last in full, then the last one's K/V
        flops += (skipped - 1) * cost.layer + cost.kv
    return flops


def execution_cost(cfg: ModelConfig, exit_shares: dict, execution: str, exits=None, probe: bool = False):
    """(Compute%, FLOPs%) when a share exit_shares[e] of tokens leaves at exit e (shares sum to 1).

    Shares may be floats or arrays (one entry per threshold of a sweep). `exits` defaults to the
    layers in exit_shares plus the last layer.
    """
    check_execution(execution)
    exits = _exits(cfg, exits if exits is not None else list(exit_shares))
    unknown = [e for e in exit_shares if e not in exits]
    if unknown:
        raise ValueError(f"exit_shares: layer(s) {unknown} are not exits {exits}")
    if execution == "plain":  # no routing: every token takes the last exit
        exit_shares = {cfg.n_layers: sum(exit_shares.values())}
    flops = 0.0
    for e, share in exit_shares.items():
        flops = flops + share * token_flops(cfg, exits, e, execution, probe)
    return compute_pct(exit_shares, cfg), 100.0 * flops / reference_flops(cfg)


def compute_pct(exit_shares: dict, cfg: ModelConfig):
    """The notes' Compute%: layers run per token when a share exit_shares[e] leaves at layer e."""
    return 100.0 * sum(share * e for e, share in exit_shares.items()) / reference_layers(cfg)


def two_exit_cost(cfg: ModelConfig, shallow_share, execution: str, early_exit: int = 1, probe: bool = False):
    """(Compute%, FLOPs%) of a two-exit routing where `shallow_share` of tokens leave at `early_exit`."""
    if early_exit >= cfg.n_layers:  # one exit: nothing to route
        return execution_cost(cfg, {cfg.n_layers: 1.0 + 0 * shallow_share}, "plain")
    return execution_cost(cfg, {early_exit: shallow_share, cfg.n_layers: 1.0 - shallow_share}, execution, probe=probe)
