"""A routed text tabulated on the slider's grid of thresholds, so a chart can follow the slider in the browser.

The browser only looks rows up by the slider's position (0, 0.01, ..., 1): every number here comes from
the package (routed.routing's rule, routed.sweep, routed.breakdown), computed once per text and measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from appkit.tokens import visible
from routed.breakdown import what_exits
from routed.routing import exits_early
from routed.sweep import sweep

GRID = np.round(np.linspace(0.0, 1.0, 101), 2)  # the chart slider's positions (step 0.01)
BIN = 0.025  # histogram bin width of confidences
EXITS_ROWS = 10  # rows of "what exits"


def grid_index(threshold: float) -> int:
    """The slider position nearest to `threshold`."""
    return int(np.clip(round(float(threshold) * 100), 0, 100))


def exit_index(confidence: np.ndarray) -> np.ndarray:
    """Per token, the highest slider position at which it takes the shallow path (the routing rule is
    monotone in the threshold: shallow at t means shallow at every lower t). -1: at none."""
    import torch

    conf = torch.from_numpy(np.asarray(confidence))
    shallow_at = torch.stack([exits_early(conf, float(t)) for t in GRID])
    return shallow_at.sum(0).numpy().astype(np.int64) - 1


@dataclass
class SliderTables:
    """What a token-routing chart shows at each slider position, as small tables for the browser."""

    tokens: pd.DataFrame  # one row per drawn token: its string, numbers and exit_index
    numbers: pd.DataFrame  # one row per slider position: Shallow%, Compute%, FLOPs%, PPLs
    exits: pd.DataFrame  # per slider position, the most frequent shallow tokens (what exits)
    exit_totals: pd.DataFrame  # per slider position: shallow and distinct shallow tokens
    histogram: pd.DataFrame  # token counts per (confidence bin, exit_index)
    total_tokens: int
    early_exit: int
    final_exit: int


def numbers_table(records, measure: str) -> pd.DataFrame:
    """routed.sweep at every slider position (the execution and its FLOPs% as in the sweep)."""
    rows = sweep(records, GRID, measure)
    frame = pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in rows.items()})
    return frame.assign(position=np.arange(len(GRID)))


def exits_table(records, strings: dict, measure: str, top: int = EXITS_ROWS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """routed.breakdown.what_exits at every slider position: its rows and its totals."""
    rows, totals = [], []
    first, last = records.early_exit, records.final_exit
    for position, t in enumerate(GRID):
        summary = what_exits(records, strings, float(t), measure, top=top)
        totals.append({"position": position, "shallow_tokens": summary["shallow_tokens"],
                       "distinct": summary["distinct_shallow_tokens"], "tokens": summary["tokens"]})
        for rank, r in enumerate(summary["rows"]):
            rows.append({"position": position, "rank": rank, "token": visible(repr(r["token"])), "count": r["count"],
                         "exit_rate": r["exit_rate_pct"], "nll_first": r["nll_by_exit"][first],
                         "nll_last": r["nll_by_exit"][last]})
    columns = ["position", "rank", "token", "count", "exit_rate", "nll_first", "nll_last"]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(totals)


def histogram_table(confidence: np.ndarray, index: np.ndarray) -> pd.DataFrame:
    """Token counts per confidence bin and exit_index: a chart splits each bin by path at any position."""
    bins = np.minimum((np.asarray(confidence, dtype=np.float64) / BIN).astype(np.int64), int(round(1 / BIN)) - 1)
    pairs, counts = np.unique(np.stack([bins, index]), axis=1, return_counts=True)
    return pd.DataFrame({"bin_start": pairs[0] * BIN, "bin_end": (pairs[0] + 1) * BIN, "exit_index": pairs[1],
                         "count": counts})


def shown(token: str) -> str:
    """A token as drawn in the text: hidden characters as escapes, a line break or tab as a visible sign
    (the chart starts a new line after a line break)."""
    return visible(token.replace("\r", "␍").replace("\t", "⇥").replace("\n", "↵\n"))


def tokens_table(result, strings: dict, measure: str, index: np.ndarray, max_tokens: int) -> pd.DataFrame:
    """The first `max_tokens` tokens: string, confidence, NLL at both exits, top predictions, exit_index."""
    rec = result.records
    first, last = rec.early_exit, rec.final_exit
    n = min(len(result.tokens), max_tokens)

    def tops(layer: int, i: int) -> str:
        if rec.top_ids is None:
            return ""
        pairs = zip(rec.top_ids[layer][i], rec.top_probs[layer][i])
        return "  ".join(f"{visible(repr(strings.get(int(t), '?')))} {p:.2f}" for t, p in pairs)

    rows = [{"token": visible(repr(result.tokens[0])), "shown": shown(result.tokens[0]), "confidence": np.nan,
             "exit_index": -2, "nll_first": np.nan, "nll_last": np.nan, "top_first": "", "top_last": "",
             "exits_up_to": "first token: context only"}]
    conf = rec.confidence[measure]
    for i in range(n - 1):
        k = int(index[i])
        rows.append({"token": visible(repr(result.tokens[i + 1])), "shown": shown(result.tokens[i + 1]),
                     "confidence": float(conf[i]), "exit_index": k,
                     "nll_first": float(rec.nll[first][i]), "nll_last": float(rec.nll[last][i]),
                     "top_first": tops(first, i), "top_last": tops(last, i),
                     "exits_up_to": f"shallow at thresholds ≤ {GRID[k]:.2f}" if k >= 0 else "deep at every threshold"})
    return pd.DataFrame(rows).assign(i=np.arange(len(rows)))  # i: the token's place in the text


def slider_tables(result, strings: dict, measure: str, max_tokens: int) -> SliderTables:
    rec = result.records
    if measure not in rec.confidence:
        raise ValueError(f"measure: unknown confidence measure {measure!r}; choose one of {list(rec.confidence)}")
    index = exit_index(rec.confidence[measure])
    exits, totals = exits_table(rec, strings, measure)
    return SliderTables(
        tokens=tokens_table(result, strings, measure, index, max_tokens),
        numbers=numbers_table(rec, measure),
        exits=exits,
        exit_totals=totals,
        histogram=histogram_table(rec.confidence[measure], index),
        total_tokens=len(rec),
        early_exit=rec.early_exit,
        final_exit=rec.final_exit,
    )
