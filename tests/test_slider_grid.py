"""The tables behind the Token routing chart agree with the package at every slider position."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from appkit.routing_chart import layout
from appkit.slider_grid import GRID, exit_index, grid_index, histogram_table, numbers_table
from routed.routing import exits_early
from routed.sweep import sweep


def confidences(seed: int = 0, n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    conf = rng.random(n).astype(np.float32)
    conf[:20] = GRID[rng.integers(0, 101, 20)]  # exactly on slider positions: the rule's boundary (>=)
    conf[20:25] = [0.0, 1.0, 0.57, 0.005, 0.995]
    return conf


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exit_index_follows_the_routing_rule_at_every_position(seed):
    conf = confidences(seed)
    index = exit_index(conf)
    for position, t in enumerate(GRID):
        expected = exits_early(torch.from_numpy(conf), float(t)).numpy()
        assert ((index >= position) == expected).all(), t


def test_grid_index_rounds_to_the_nearest_position():
    assert [grid_index(t) for t in (0.0, 0.004, 0.006, 0.57, 0.999, 1.0)] == [0, 0, 1, 57, 100, 100]


def test_histogram_splits_each_bin_by_path_as_the_rule_does():
    conf = confidences(3)
    table = histogram_table(conf, exit_index(conf))
    assert table["count"].sum() == len(conf)
    for position in (0, 30, 57, 100):
        shallow = int(table.loc[table["exit_index"] >= position, "count"].sum())
        assert shallow == int(exits_early(torch.from_numpy(conf), GRID[position].item()).sum())
    in_bins = ((conf[:, None] >= table["bin_start"].to_numpy() - 1e-9) & (conf[:, None] < table["bin_end"].to_numpy() + 1e-9))
    assert in_bins.any(axis=1).all()  # every confidence (1.0 included) falls in a drawn bin


def test_numbers_are_the_sweep_at_each_position(tiny_world):
    from routed.checkpoint import load_checkpoint
    from routed.text import route_text

    ckpt = load_checkpoint(tiny_world.checkpoints / "asymmetric_best")
    result = route_text(ckpt.model, ckpt.tokenizer, "the river of the tower is near the sea and the sea is quiet", None)
    table = numbers_table(result.records, "max_softmax")
    assert list(table["position"]) == list(range(101))
    for position in (0, 50, 100):
        row = sweep(result.records, [GRID[position].item()], "max_softmax")
        assert table.loc[position, "routed_ppl"] == pytest.approx(float(row["routed_ppl"][0]))
        assert table.loc[position, "shallow_pct"] == pytest.approx(float(row["shallow_pct"][0]))


def test_layout_wraps_breaks_lines_and_cuts_long_tokens():
    tokens = pd.DataFrame({"shown": ["ab", "cd", "↵\n", "efgh", "x" * 30, "ij"], "i": range(6)})
    placed = layout(tokens, line_chars=6)
    rows = list(zip(placed["piece"], placed["line"], placed["col"]))
    assert rows[:4] == [("ab", 0, 0), ("cd", 0, 2), ("↵", 0, 4), ("efgh", 1, 0)]
    assert rows[4] == ("xxxxx…", 2, 0)  # wider than a line: cut, on a line of its own
    assert rows[5] == ("ij", 3, 0)
    assert placed["width"].max() <= 6
