"""What exits: which token strings make up the shallow tokens at a threshold, and what they cost at each exit.

A routing result is only as meaningful as the tokens behind it: markup such as WikiText's <unk>,
split by a tokenizer into trivially predictable pieces, can fill the shallow path by itself.
"""

from __future__ import annotations

import numpy as np

from routed.records import TokenRecords
from routed.routing import check_threshold


def what_exits(
    records: TokenRecords, strings: dict[int, str], threshold: float, measure: str = "max_softmax", top: int = 20
) -> dict:
    """The `top` most frequent shallow tokens at `threshold`: count, share of the shallow tokens, NLL per exit.

    `strings` maps token ids to their text. Rows are sorted by count; each says whether the token is
    a corpus marker. The totals cover every shallow token, not just the rows shown.
    """
    check_threshold(threshold)
    if threshold is None:
        raise ValueError("threshold: 'none' routes no token to the shallow path; give a number in [0, 1]")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top: must be a positive integer, got {top!r}")
    if measure not in records.confidence:
        raise ValueError(f"measure: unknown confidence measure {measure!r}; choose one of {list(records.confidence)}")
    shallow = records.confidence[measure] >= threshold  # the routing rule (routed.routing.exits_early)
    n_shallow = int(shallow.sum())
    ids = records.token_id[shallow]
    unique, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    markers = records.is_marker if records.is_marker is not None else np.zeros(len(records), bool)
    exits = sorted(records.nll)
    nll_means = {
        e: np.bincount(inverse, weights=records.nll[e][shallow].astype(np.float64), minlength=len(unique)) / np.maximum(counts, 1)
        for e in exits
    }
    occurrences = np.bincount(records.token_id.astype(np.int64), minlength=int(unique.max()) + 1 if len(unique) else 0)
    order = np.argsort(-counts, kind="stable")[:top]
    rows, cumulative = [], 0.0
    for i in order:
        token_id = int(unique[i])
        share = 100.0 * counts[i] / n_shallow
        cumulative += share
        rows.append({
            "token": strings.get(token_id, f"<id {token_id}>"),
            "token_id": token_id,
            "count": int(counts[i]),
            "share_pct": share,
            "cumulative_pct": cumulative,
            "exit_rate_pct": 100.0 * counts[i] / occurrences[token_id],  # of this token's occurrences
            "nll_by_exit": {e: float(nll_means[e][i]) for e in exits},
            "marker": bool(markers[shallow][inverse == i].any()),
        })
    return {
        "threshold": float(threshold),
        "measure": measure,
        "tokens": len(records),
        "shallow_tokens": n_shallow,
        "shallow_pct": 100.0 * n_shallow / max(1, len(records)),
        "distinct_shallow_tokens": len(unique),
        "marker_share_pct": 100.0 * float(markers[shallow].sum()) / n_shallow if n_shallow else 0.0,
        "shallow_pct_without_markers": 100.0 * float((shallow & ~markers).sum()) / max(1, int((~markers).sum())),
        "rows": rows,
    }
