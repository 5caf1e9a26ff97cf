"""Evaluation: per-token records from one forward pass, and every threshold computed from them.

Windowing: a split is cut into contiguous, non-overlapping windows of the context length; each
window predicts its next tokens, so every token after the first is predicted exactly once, and a
token sees only the tokens of its own window before it. Deterministic and cheap; PPL is somewhat
higher than with overlapping (strided) windows because window starts have little context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from routed.config import ModelConfig
from routed.routing import (
    CONFIDENCE_MEASURES,
    check_threshold,
    compute_pct,
    confidence,
    confidence_measures,
    flops_pct,
    multi_exit_pct,
)

# Part of the records cache key: bump when records' contents or the text encoding change.
RECORDS_VERSION = 3


def windows(tokens: torch.Tensor, context_length: int, batch_size: int):
    """Yield (inputs, targets, start positions) batches of contiguous windows; the last may be short."""
    n = len(tokens) - 1
    starts = list(range(0, n, context_length))
    full = [s for s in starts if s + context_length <= n]
    for i in range(0, len(full), batch_size):
        chunk = full[i : i + batch_size]
        rows = torch.stack([tokens[s : s + context_length + 1] for s in chunk])
        yield rows[:, :-1], rows[:, 1:], chunk
    tail = [s for s in starts if s + context_length > n]
    for s in tail:
        rows = tokens[s : n + 1].unsqueeze(0)
        yield rows[:, :-1], rows[:, 1:], [s]


@torch.no_grad()
def exit_nll_sums(
    model, tokens: torch.Tensor, exits, batch_size: int = 32, bf16: bool = False, shard: tuple[int, int] = (0, 1)
) -> tuple[dict[int, float], int]:
    """Summed cross-entropy (nats) of each exit over `tokens`, and the number of tokens predicted.

    `shard` (rank, world size) takes every world-th batch of windows, so processes can split the work.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = {layer: 0.0 for layer in exits}
    count = 0
    for i, (x, y, _) in enumerate(windows(tokens, model.config.context_length, batch_size)):
        if i % shard[1] != shard[0]:
            continue
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x, exits=exits)
        for layer in exits:
            sums[layer] += float(
                torch.nn.functional.cross_entropy(logits[layer].flatten(0, 1).float(), y.flatten(), reduction="sum")
            )
        count += y.numel()
    model.train(was_training)
    return sums, count


def exit_losses(model, tokens: torch.Tensor, exits, batch_size: int = 32, bf16: bool = False) -> dict[int, float]:
    """Mean cross-entropy (nats/token) of each exit over `tokens`."""
    sums, count = exit_nll_sums(model, tokens, exits, batch_size, bf16)
    return {layer: s / count for layer, s in sums.items()}


@dataclass
class TokenRecords:
    """One row per predicted token: NLL at every exit and the early exit's confidence measures."""

    position: np.ndarray  # (N,) index of the predicted token in the split
    token_id: np.ndarray  # (N,) the predicted (target) token
    nll: dict[int, np.ndarray]  # {layer: (N,) negative log-likelihood in nats}
    confidence: dict[str, np.ndarray]  # {measure: (N,)} of the early exit
    early_correct: np.ndarray  # (N,) bool: the early exit's argmax is the target
    early_exit: int  # the exit whose confidence routes (layer 1)
    model_config: ModelConfig
    layer_confidence: dict[int, np.ndarray] | None = None  # {layer: (N,)} max softmax at every layer (multi-exit)
    top_ids: dict[int, np.ndarray] | None = None  # {layer: (N, k)} top predictions, when asked for
    top_probs: dict[int, np.ndarray] | None = None  # {layer: (N, k)} their probabilities

    @property
    def final_exit(self) -> int:
        return self.model_config.n_layers

    def __len__(self) -> int:
        return len(self.token_id)

    def save(self, path: Path | str) -> None:
        """Write as .npz (plain arrays, no pickle); atomic."""
        path = Path(path)
        arrays = {"position": self.position, "token_id": self.token_id, "early_correct": self.early_correct}
        arrays |= {f"nll_{k}": v for k, v in self.nll.items()}
        arrays |= {f"conf_{k}": v for k, v in self.confidence.items()}
        arrays |= {f"lconf_{k}": v for k, v in (self.layer_confidence or {}).items()}
        meta = {"early_exit": self.early_exit, **self.model_config.to_dict()}
        arrays["meta_keys"] = np.array(list(meta))
        arrays["meta_values"] = np.array(list(meta.values()), dtype=np.float64)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | str) -> TokenRecords:
        with np.load(path, allow_pickle=False) as z:
            meta = {str(k): v for k, v in zip(z["meta_keys"], z["meta_values"])}
            early = int(meta.pop("early_exit"))
            cfg = ModelConfig(**{k: (float(v) if k == "dropout" else int(v)) for k, v in meta.items()})
            return cls(
                position=z["position"],
                token_id=z["token_id"],
                nll={int(k[4:]): z[k] for k in z.files if k.startswith("nll_")},
                confidence={k[5:]: z[k] for k in z.files if k.startswith("conf_")},
                early_correct=z["early_correct"],
                early_exit=early,
                model_config=cfg,
                layer_confidence={int(k[6:]): z[k] for k in z.files if k.startswith("lconf_")} or None,
            )


@torch.no_grad()
def evaluate(
    model, tokens: torch.Tensor, batch_size: int = 32, early_exit: int = 1, top_k: int = 0, probe=None
) -> TokenRecords:
    """Per-token records of a split from one forward pass over contiguous windows.

    With top_k > 0 the records also hold each exit's top-k predictions (for inspecting text); with
    a ConfidenceProbe, its confidence is the measure "probe".
    """
    model.eval()
    cfg: ModelConfig = model.config
    exits = list(range(1, cfg.n_layers + 1))
    positions, targets, correct = [], [], []
    nll = {layer: [] for layer in exits}
    layer_conf = {layer: [] for layer in exits}
    conf = {m: [] for m in CONFIDENCE_MEASURES + (("probe",) if probe is not None else ())}
    top_ids = {layer: [] for layer in exits}
    top_probs = {layer: [] for layer in exits}
    for x, y, starts in windows(tokens, cfg.context_length, batch_size):
        features = model.exit_features(x, exits=exits)
        logits = {layer: model.lm_head(h) for layer, h in features.items()}
        if probe is not None:
            conf["probe"].append(probe(features[early_exit]).flatten())
        for layer in exits:
            logp = torch.log_softmax(logits[layer].float(), dim=-1)
            nll[layer].append(-logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).flatten())
            layer_conf[layer].append(confidence(logits[layer]).flatten())
            if top_k:
                top = logp.topk(top_k, dim=-1)
                top_ids[layer].append(top.indices.flatten(0, 1))
                top_probs[layer].append(top.values.exp().flatten(0, 1))
        for m, values in confidence_measures(logits[early_exit]).items():  # the probe's is added above
            conf[m].append(values.flatten())
        correct.append((logits[early_exit].argmax(-1) == y).flatten())
        targets.append(y.flatten())
        offsets = torch.arange(1, y.shape[1] + 1)
        positions.append((torch.tensor(starts).unsqueeze(1) + offsets).flatten())

    def cat(parts, dtype):
        return torch.cat(parts).numpy().astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return TokenRecords(
        position=cat(positions, np.int64),
        token_id=cat(targets, np.int32),
        nll={layer: cat(v, np.float32) for layer, v in nll.items()},
        confidence={m: cat(v, np.float32) for m, v in conf.items()},
        early_correct=cat(correct, bool),
        early_exit=early_exit,
        model_config=cfg,
        layer_confidence={layer: cat(v, np.float32) for layer, v in layer_conf.items()},
        top_ids={layer: torch.cat(v).numpy() for layer, v in top_ids.items()} if top_k and positions else None,
        top_probs={layer: torch.cat(v).numpy() for layer, v in top_probs.items()} if top_k and positions else None,
    )


@torch.no_grad()
def probe_training_data(model, tokens: torch.Tensor, early_exit: int = 1, batch_size: int = 32):
    """(features, correct) of the early exit over `tokens`: what a ConfidenceProbe is fitted on."""
    model.eval()
    feats, correct = [], []
    for x, y, _ in windows(tokens, model.config.context_length, batch_size):
        h = model.exit_features(x, exits=[early_exit])[early_exit]
        feats.append(h.flatten(0, 1))
        correct.append((model.lm_head(h).argmax(-1) == y).flatten())
    return torch.cat(feats), torch.cat(correct)


def _ppl(mean_nll):
    return np.exp(np.minimum(mean_nll, 50.0))


def sweep(records: TokenRecords, thresholds, measure: str = "max_softmax", routed: bool = True) -> dict[str, np.ndarray]:
    """Per threshold: routed PPL, Shallow%, Compute%, FLOPs%, and the shallow/deep/oracle reference PPLs.

    Vectorised: tokens are sorted by confidence once; at threshold t the tokens with
    confidence >= t (the routing rule) are a suffix of that order, so sums come from cumulative sums.
    """
    if measure not in records.confidence:
        raise ValueError(f"measure: unknown confidence measure {measure!r}; choose one of {list(records.confidence)}")
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if t.size and (np.isnan(t).any() or t.min() < 0 or t.max() > 1):
        raise ValueError("thresholds: every threshold must be a number in [0, 1]")
    n = len(records)
    if n == 0:
        raise ValueError("records: no tokens to sweep over")
    conf = records.confidence[measure]
    routed = routed and measure != "probe"  # a probe needs no early head for deep tokens
    order = np.argsort(conf, kind="stable")
    conf_sorted = conf[order].astype(np.float64)
    early_nll = records.nll[records.early_exit][order].astype(np.float64)
    final_nll = records.nll[records.final_exit][order].astype(np.float64)
    # deep tokens at threshold t: the first k = #(conf < t) in ascending order
    k = np.searchsorted(conf_sorted, t, side="left")
    cum_early = np.concatenate([[0.0], np.cumsum(early_nll)])
    cum_final = np.concatenate([[0.0], np.cumsum(final_nll)])
    routed_sum = cum_final[k] + (cum_early[-1] - cum_early[k])
    shallow_frac = (n - k) / n
    cfg = records.model_config
    routed = routed and records.early_exit < records.final_exit  # one exit: nothing to route, no second head
    ones = np.ones_like(t)
    return {
        "threshold": t,
        "routed_ppl": _ppl(routed_sum / n),
        "shallow_pct": 100.0 * shallow_frac,
        "compute_pct": compute_pct(shallow_frac, cfg.n_layers, records.early_exit, reference_layers=3),
        "flops_pct": flops_pct(shallow_frac, cfg, records.early_exit, routed=routed),
        "shallow_ppl": ones * _ppl(cum_early[-1] / n),
        "deep_ppl": ones * _ppl(cum_final[-1] / n),
        "oracle_ppl": ones * _ppl(np.minimum(early_nll, final_nll).mean()),
    }


def sweep_exits(records: TokenRecords, thresholds, exits, propagate_kv: bool = False) -> dict[str, np.ndarray]:
    """Multi-exit sweep (max-softmax confidence): a token leaves at the first exit whose confidence >= t.

    Per threshold: routed PPL, Compute%, FLOPs% and the share of tokens leaving at each exit
    (`exit_<layer>_pct`). Vectorised: a token leaves at exit e exactly for t in
    (max confidence at its earlier exits, its confidence at e], so each token adds its NLL over
    those threshold intervals through difference arrays.
    """
    if records.layer_confidence is None:
        raise ValueError("records: these records lack per-layer confidences; evaluate them again")
    cfg = records.model_config
    exits = sorted(set(exits) | {cfg.n_layers})
    if exits[0] < 1 or exits[-1] > cfg.n_layers:
        raise ValueError(f"exits: must be layers within 1..{cfg.n_layers}, got {exits!r}")
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if t.size and (np.isnan(t).any() or t.min() < 0 or t.max() > 1):
        raise ValueError("thresholds: every threshold must be a number in [0, 1]")
    order = np.argsort(t, kind="stable")
    ts = t[order]
    n, K = len(records), len(t)
    nll_sum = np.zeros(K + 1)
    counts = {e: np.zeros(K + 1) for e in exits}
    earlier_max = np.full(n, -np.inf)  # a token reaches exit e for t > max confidence at earlier exits
    for e in exits:
        if e == exits[-1]:
            lo = np.searchsorted(ts, earlier_max, side="right")  # t > earlier_max
            hi = np.full(n, K)
        else:
            conf = records.layer_confidence[e].astype(np.float64)
            lo = np.searchsorted(ts, earlier_max, side="right")
            hi = np.searchsorted(ts, conf, side="right")  # t <= conf
            earlier_max = np.maximum(earlier_max, conf)
        valid = hi > lo
        nll = records.nll[e].astype(np.float64)
        np.add.at(nll_sum, lo[valid], nll[valid])
        np.add.at(nll_sum, hi[valid], -nll[valid])
        np.add.at(counts[e], lo[valid], 1)
        np.add.at(counts[e], hi[valid], -1)
    routed_sum = np.cumsum(nll_sum)[:K]
    fracs = {e: np.cumsum(c)[:K] / n for e, c in counts.items()}
    compute, flops = multi_exit_pct(fracs, cfg, exits, propagate_kv=propagate_kv)
    unsort = np.argsort(order, kind="stable")
    result = {"threshold": t, "routed_ppl": _ppl(routed_sum / n)[unsort],
              "compute_pct": np.asarray(compute)[unsort], "flops_pct": np.asarray(flops)[unsort]}
    result |= {f"exit_{e}_pct": 100.0 * fracs[e][unsort] for e in exits}
    return result


def ppl_at(curve, level: float, x: str = "compute_pct") -> float:
    """Routed PPL where a sweep's x (Compute% or FLOPs%) equals `level`, linearly interpolated; NaN outside."""
    xs, ys = np.asarray(curve[x], dtype=float), np.asarray(curve["routed_ppl"], dtype=float)
    order = np.argsort(xs, kind="stable")
    if not xs.min() <= level <= xs.max():
        return float("nan")
    return float(np.interp(level, xs[order], ys[order]))


def pareto_front(cost, ppl) -> np.ndarray:
    """Boolean mask of the points no other point beats on both cost and PPL (lower is better for both)."""
    cost, ppl = np.asarray(cost, dtype=float), np.asarray(ppl, dtype=float)
    order = np.lexsort((ppl, cost))
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(ppl[order])[:-1]])
    mask = np.zeros(len(cost), dtype=bool)
    mask[order] = ppl[order] < best_before - 1e-12
    return mask


def summary(records: TokenRecords, threshold: float | None, measure: str = "max_softmax") -> dict:
    """The headline numbers of one model at one threshold (None: no routing, the last exit for all)."""
    check_threshold(threshold)
    cfg = records.model_config
    ppl_by_exit = {layer: float(_ppl(v.astype(np.float64).mean())) for layer, v in records.nll.items()}
    if threshold is None:
        row = {
            "routed_ppl": ppl_by_exit[records.final_exit],
            "shallow_pct": 0.0,
            "compute_pct": compute_pct(0.0, cfg.n_layers, reference_layers=3),
            "flops_pct": flops_pct(0.0, cfg, routed=False),
        }
    else:
        s = sweep(records, [threshold], measure)
        row = {key: float(s[key][0]) for key in ("routed_ppl", "shallow_pct", "compute_pct", "flops_pct")}
    return {"threshold": threshold, "measure": measure, **row, "ppl_by_exit": ppl_by_exit, "tokens": len(records)}


def threshold_for(
    records: TokenRecords,
    target_compute: float | None = None,
    max_ppl_increase: float | None = None,
    measure: str = "max_softmax",
    grid: int = 1001,
) -> float:
    """Calibrate a threshold on these records (use the validation split).

    target_compute: the highest threshold whose Compute% stays <= target (in percent).
    max_ppl_increase: the lowest threshold whose routed PPL is within (1 + x) of the deep-only PPL.
    """
    if (target_compute is None) == (max_ppl_increase is None):
        raise ValueError("threshold_for: give exactly one of target_compute or max_ppl_increase")
    for name, value in (("target_compute", target_compute), ("max_ppl_increase", max_ppl_increase)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value):
            raise ValueError(f"{name}: must be a number, got {value!r}")
    t = np.linspace(0.0, 1.0, grid)
    s = sweep(records, t, measure)
    if target_compute is not None:
        ok = s["compute_pct"] <= target_compute + 1e-9
        if not ok.any():
            raise ValueError(f"target_compute: no threshold reaches {target_compute}% (minimum {s['compute_pct'].min():.1f}%)")
        return float(t[ok].max())
    if not (math.isfinite(max_ppl_increase) and max_ppl_increase >= 0):
        raise ValueError(f"max_ppl_increase: must be a non-negative number, got {max_ppl_increase!r}")
    ok = s["routed_ppl"] <= s["deep_ppl"] * (1 + max_ppl_increase)
    return float(t[ok].min()) if ok.any() else 1.0


def records_for_checkpoint(checkpoint, split: str = "test", corpus=None, use_cache: bool = True) -> TokenRecords:
    """Per-token records of a checkpoint on a split of its corpus (or `corpus`), cached on disk.

    The cache key is the checkpoint's weight fingerprint, the corpus fingerprint and the split, so
    moving a threshold, restarting the app or re-running a command never recomputes them.
    """
    from routed.data import cache_dir, encode, load_corpus

    corpus = corpus if corpus is not None else load_corpus(checkpoint.corpus)
    if isinstance(corpus, str):
        corpus = load_corpus(corpus)
    text = corpus.split(split)
    path = cache_dir() / "records" / f"v{RECORDS_VERSION}-{checkpoint.fingerprint}-{corpus.fingerprint}-{split}.npz"
    if use_cache and path.exists():
        try:
            return TokenRecords.load(path)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    records = evaluate(checkpoint.model, encode(checkpoint.tokenizer, text))
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            records.save(path)
        except OSError:
            pass
    return records


@dataclass
class RoutedText:
    """A text routed token by token: the predicted tokens' records and their strings."""

    tokens: list[str]  # every token of the text (joined: the text); token 0 has no prediction
    records: TokenRecords  # rows for tokens 1..n-1
    windows: int  # context windows the text was cut into
    threshold: float | None
    measure: str

    @property
    def shallow(self) -> np.ndarray:
        from routed.routing import exits_early

        return exits_early(torch.from_numpy(self.records.confidence[self.measure]), self.threshold).numpy()


def route_text(model, tokenizer, text: str, threshold: float | None, measure: str = "max_softmax", top_k: int = 5) -> RoutedText:
    """Route every token of `text`; long texts are cut into context windows (see `windows`).

    Lone surrogates (from undecodable bytes, e.g. in a command line) are routed as U+FFFD.
    """
    import re

    from routed.data import encode, token_texts

    check_threshold(threshold)
    if measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"measure: unknown confidence measure {measure!r}; choose one of {CONFIDENCE_MEASURES}")
    if not isinstance(text, str):
        raise ValueError(f"text: must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("text: nothing to route; enter some text")
    text = re.sub("[\ud800-\udfff]", "\ufffd", text)  # the tokenizer takes valid Unicode only
    ids = encode(tokenizer, text)
    if len(ids) < 2:
        raise ValueError("text: at least two tokens are needed (the first token is only context)")
    records = evaluate(model, ids, top_k=top_k)
    n_windows = math.ceil((len(ids) - 1) / model.config.context_length)
    return RoutedText(token_texts(tokenizer, ids), records, n_windows, threshold, measure)
