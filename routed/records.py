"""Per-token records: one forward pass over a split, one row per predicted token.

Windowing: a split is cut into contiguous, non-overlapping windows of the context length; each
window predicts its next tokens, so every token after the first is predicted exactly once, and a
token sees only the tokens of its own window before it. Deterministic and cheap; PPL is somewhat
higher than with overlapping (strided) windows because window starts have little context.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from routed.config import ModelConfig
from routed.routing import CONFIDENCE_MEASURES, confidence, confidence_measures

# Part of the records cache key: bump when records' contents or the text encoding change.
RECORDS_VERSION = 4


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
    n_bytes: np.ndarray | None = None  # (N,) UTF-8 bytes of each predicted token (for bits per byte)
    is_marker: np.ndarray | None = None  # (N,) bool: the predicted token is a corpus marker (e.g. <unk>)

    @property
    def final_exit(self) -> int:
        return self.model_config.n_layers

    def __len__(self) -> int:
        return len(self.token_id)

    @property
    def has_markers(self) -> bool:
        return self.is_marker is not None and bool(self.is_marker.any())

    def subset(self, mask: np.ndarray) -> TokenRecords:
        """The rows where `mask` is True (every per-token array cut alike)."""
        def cut(value):
            if isinstance(value, np.ndarray):
                return value[mask]
            if isinstance(value, dict):
                return {k: v[mask] for k, v in value.items()}
            return value

        return replace(self, **{f.name: cut(getattr(self, f.name)) for f in fields(self)})

    def without_markers(self) -> TokenRecords:
        """These records less the tokens that are corpus markers (unchanged when there are none)."""
        return self.subset(~self.is_marker) if self.has_markers else self

    def total_bytes(self) -> int:
        """UTF-8 bytes of the predicted tokens; 0 when unknown (records of an older version)."""
        return int(self.n_bytes.sum()) if self.n_bytes is not None else 0

    def save(self, path: Path | str) -> None:
        """Write as .npz (plain arrays, no pickle); atomic."""
        path = Path(path)
        arrays = {"position": self.position, "token_id": self.token_id, "early_correct": self.early_correct}
        arrays |= {f"nll_{k}": v for k, v in self.nll.items()}
        arrays |= {f"conf_{k}": v for k, v in self.confidence.items()}
        arrays |= {f"lconf_{k}": v for k, v in (self.layer_confidence or {}).items()}
        arrays |= {name: v for name in ("n_bytes", "is_marker") if (v := getattr(self, name)) is not None}
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
            kinds = {"dropout": float, "gated_mlp": bool}
            cfg = ModelConfig(**{k: kinds.get(k, int)(v) for k, v in meta.items()})
            return cls(
                position=z["position"],
                token_id=z["token_id"],
                nll={int(k[4:]): z[k] for k in z.files if k.startswith("nll_")},
                confidence={k[5:]: z[k] for k in z.files if k.startswith("conf_")},
                early_correct=z["early_correct"],
                early_exit=early,
                model_config=cfg,
                layer_confidence={int(k[6:]): z[k] for k in z.files if k.startswith("lconf_")} or None,
                n_bytes=z["n_bytes"] if "n_bytes" in z.files else None,
                is_marker=z["is_marker"] if "is_marker" in z.files else None,
            )


# Bounded memory for large vocabularies: a batch holds at most this many tokens, and an exit's
# (tokens x vocabulary) logits exist for at most HEAD_ROWS tokens at a time.
MAX_BATCH_TOKENS = 8192
HEAD_ROWS = 1024


def model_exits(model, exits=None) -> list[int]:
    """The exits to read, ascending: `exits`, else the model's `default_exits`, else every layer; the last always."""
    n = model.config.n_layers
    chosen = exits if exits is not None else getattr(model, "default_exits", None)
    chosen = sorted({int(e) for e in chosen} | {n}) if chosen is not None else list(range(1, n + 1))
    if chosen[0] < 1 or chosen[-1] > n:
        raise ValueError(f"exits: must be layers within 1..{n}, got {exits!r}")
    return chosen


@torch.no_grad()
def evaluate(
    model,
    tokens: torch.Tensor,
    batch_size: int = 32,
    early_exit: int | None = None,
    top_k: int = 0,
    probe=None,
    token_bytes: np.ndarray | None = None,
    marker_ids=(),
    exits=None,
) -> TokenRecords:
    """Per-token records of a split from one forward pass over contiguous windows.

    `exits` are the layers read out (default: the model's `default_exits`, else every layer; the last
    is always added); the trunk runs only up to the deepest, and each exit's head runs in row chunks,
    so memory stays bounded whatever the vocabulary. `early_exit` (default: the first exit) is the one
    whose confidence routes. With top_k > 0 the records also hold each exit's top-k predictions; with
    a ConfidenceProbe, its confidence is the measure "probe". `token_bytes` (bytes of each token id,
    see routed.tokenizer.token_byte_lengths) and `marker_ids` (the corpus' marker tokens) let the
    records give bits per byte and leave markers out.
    """
    model.eval()
    cfg: ModelConfig = model.config
    exits = model_exits(model, exits)
    early_exit = exits[0] if early_exit is None else early_exit
    if early_exit not in exits:
        raise ValueError(f"early_exit: {early_exit} is not one of the exits {exits}")
    batch_size = max(1, min(batch_size, MAX_BATCH_TOKENS // cfg.context_length))
    positions, targets, correct = [], [], []
    nll = {layer: [] for layer in exits}
    layer_conf = {layer: [] for layer in exits}
    conf = {m: [] for m in CONFIDENCE_MEASURES + (("probe",) if probe is not None else ())}
    top_ids = {layer: [] for layer in exits}
    top_probs = {layer: [] for layer in exits}
    for x, y, starts in windows(tokens, cfg.context_length, batch_size):
        features = model.exit_features(x, exits=exits)
        if probe is not None:
            conf["probe"].append(probe(features[early_exit]).flatten())
        y_flat = y.flatten()
        for layer in exits:
            h = features.pop(layer).flatten(0, 1)  # dropped once read: only one exit's rows are held
            for i in range(0, len(h), HEAD_ROWS):
                logits = model.lm_head(h[i : i + HEAD_ROWS]).float()
                target = y_flat[i : i + HEAD_ROWS]
                logp = torch.log_softmax(logits, dim=-1)
                nll[layer].append(-logp.gather(-1, target.unsqueeze(-1)).squeeze(-1))
                layer_conf[layer].append(confidence(logits))
                if top_k:
                    top = logp.topk(top_k, dim=-1)
                    top_ids[layer].append(top.indices)
                    top_probs[layer].append(top.values.exp())
                if layer == early_exit:  # the probe's measure is added above
                    for m, values in confidence_measures(logits).items():
                        conf[m].append(values)
                    correct.append(logits.argmax(-1) == target)
        targets.append(y_flat)
        offsets = torch.arange(1, y.shape[1] + 1)
        positions.append((torch.tensor(starts).unsqueeze(1) + offsets).flatten())

    def cat(parts, dtype):
        return torch.cat(parts).numpy().astype(dtype) if parts else np.zeros(0, dtype=dtype)

    token_id = cat(targets, np.int32)
    return TokenRecords(
        position=cat(positions, np.int64),
        token_id=token_id,
        nll={layer: cat(v, np.float32) for layer, v in nll.items()},
        confidence={m: cat(v, np.float32) for m, v in conf.items()},
        early_correct=cat(correct, bool),
        early_exit=early_exit,
        model_config=cfg,
        layer_confidence={layer: cat(v, np.float32) for layer, v in layer_conf.items()},
        top_ids={layer: torch.cat(v).numpy() for layer, v in top_ids.items()} if top_k and positions else None,
        top_probs={layer: torch.cat(v).numpy() for layer, v in top_probs.items()} if top_k and positions else None,
        n_bytes=np.asarray(token_bytes)[token_id].astype(np.int32) if token_bytes is not None else None,
        is_marker=np.isin(token_id, np.asarray(list(marker_ids), dtype=np.int64)),
    )


def evaluate_with_tokenizer(model, tokenizer, tokens: torch.Tensor, **options) -> TokenRecords:
    """`evaluate` with the tokenizer's byte lengths and marker tokens, so bits per byte and markers are known."""
    from routed.tokenizer import marker_ids, token_byte_lengths

    return evaluate(model, tokens, token_bytes=token_byte_lengths(tokenizer), marker_ids=marker_ids(tokenizer), **options)


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


def records_for_checkpoint(checkpoint, split: str = "test", corpus=None, use_cache: bool = True) -> TokenRecords:
    """Per-token records of a checkpoint on a split of its corpus (or `corpus`), cached on disk.

    The cache key is the checkpoint's weight fingerprint, the corpus fingerprint and the split, so
    moving a threshold, restarting the app or re-running a command never recomputes them.
    """
    from routed.data import cache_dir, load_corpus
    from routed.tokenizer import encode

    corpus = corpus if corpus is not None else load_corpus(checkpoint.corpus)
    if isinstance(corpus, str):
        corpus = load_corpus(corpus)
    text = corpus.split(split)
    # A model that reads out only some exits (a pretrained model) names them in the key.
    exits = getattr(checkpoint.model, "default_exits", None)
    tag = "" if exits is None else "-exits" + "_".join(map(str, model_exits(checkpoint.model)))
    path = cache_dir() / "records" / f"v{RECORDS_VERSION}-{checkpoint.fingerprint}{tag}-{corpus.fingerprint}-{split}.npz"
    if use_cache and path.exists():
        try:
            return TokenRecords.load(path)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    records = evaluate_with_tokenizer(checkpoint.model, checkpoint.tokenizer, encode(checkpoint.tokenizer, text))
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            records.save(path)
        except OSError:
            pass
    return records
