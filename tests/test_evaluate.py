"""Per-token records, sweeps and calibration, checked against an independent routed forward pass."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model_config

from routed.calibrate import threshold_for
from routed.model import RoutedTransformer
from routed.records import TokenRecords, evaluate, exit_losses, windows
from routed.routing import CONFIDENCE_MEASURES, confidence, confidence_measures, exits_early, route
from routed.sweep import summary, sweep
from routed.text import route_text
from routed.tokenizer import encode


@pytest.fixture(scope="module")
def tokens(tiny_run, tiny_run_corpus):
    ids = encode(tiny_run.tokenizer, tiny_run_corpus.validation + tiny_run_corpus.test)
    # A length that leaves a short last window.
    n = len(ids) - (len(ids) - 1) % 16 - 16 + 5
    assert (n - 1) % 16 != 0 and n > 100
    return ids[:n]


@pytest.fixture(scope="module")
def records(tiny_run, tokens):
    return evaluate(tiny_run.model, tokens, batch_size=3)


def direct_routed_ppl(model, tokens, threshold, exits=(1, 3)):
    """Routed PPL from model(x) on each context window in turn, routed with routing.route."""
    ctx, n = model.config.context_length, len(tokens) - 1
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, n, ctx):
            stop = min(start + ctx, n)
            x, y = tokens[start:stop].unsqueeze(0), tokens[start + 1 : stop + 1].unsqueeze(0)
            logits = model(x)
            chosen, _ = route({layer: logits[layer] for layer in exits}, threshold)
            total += float(F.cross_entropy(chosen.flatten(0, 1).double(), y.flatten(), reduction="sum"))
            count += y.numel()
    assert count == n
    return math.exp(total / count)


# ---------------------------------------------------------------------------------------------
# Records


def test_one_row_per_predicted_token(records, tokens):
    n = len(tokens) - 1
    assert len(records) == n
    assert np.array_equal(np.sort(records.position), np.arange(1, n + 1))  # each position exactly once
    assert np.array_equal(records.token_id, tokens.numpy()[records.position])
    for layer in (1, 2, 3):
        assert records.nll[layer].shape == (n,)
        assert np.isfinite(records.nll[layer]).all() and (records.nll[layer] >= 0).all()
    assert set(records.confidence) == set(CONFIDENCE_MEASURES)
    for values in records.confidence.values():
        assert values.shape == (n,) and (values >= 0).all() and (values <= 1 + 1e-6).all()
    assert records.early_correct.dtype == bool and records.early_correct.shape == (n,)
    assert records.early_exit == 1 and records.final_exit == 3


@pytest.mark.parametrize("length", [2, 16, 17, 18, 33, 50])
def test_windows_cover_every_target_once(length):
    tokens = torch.arange(length)
    targets = torch.cat([y.flatten() for _, y, _ in windows(tokens, 16, 2)])
    assert targets.tolist() == list(range(1, length))
    for x, y, starts in windows(tokens, 16, 2):
        assert x.shape == y.shape and x.shape[1] <= 16
        assert torch.equal(x[:, 0], torch.tensor(starts))


def test_records_do_not_depend_on_the_batch_size(tiny_run, tokens, records):
    other = evaluate(tiny_run.model, tokens, batch_size=32)
    assert np.array_equal(other.position, records.position)
    for layer in records.nll:
        np.testing.assert_allclose(other.nll[layer], records.nll[layer], rtol=1e-5, atol=1e-6)


def test_mean_nll_equals_exit_losses(tiny_run, tokens, records):
    ce = exit_losses(tiny_run.model, tokens, [1, 2, 3], batch_size=5)
    for layer in (1, 2, 3):
        assert records.nll[layer].astype(np.float64).mean() == pytest.approx(ce[layer], rel=1e-5)


def test_early_correct_and_top_k(tiny_run, tokens):
    with_top = evaluate(tiny_run.model, tokens, top_k=3)
    assert with_top.top_ids[1].shape == (len(tokens) - 1, 3)
    np.testing.assert_array_equal(with_top.early_correct, with_top.top_ids[1][:, 0] == with_top.token_id)
    np.testing.assert_allclose(with_top.top_probs[1][:, 0], with_top.confidence["max_softmax"], rtol=1e-5)
    assert (np.diff(with_top.top_probs[3], axis=1) <= 1e-7).all()  # sorted, most likely first


def test_records_save_load_round_trip_without_pickle(records, tmp_path):
    path = tmp_path / "records.npz"
    records.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.npz"]  # no partial file left
    with zipfile.ZipFile(path) as archive:
        assert all(name.endswith(".npy") for name in archive.namelist())
    with np.load(path, allow_pickle=False) as z:
        for name in z.files:
            assert z[name].dtype != object, name  # loading every array needs no pickle
    loaded = TokenRecords.load(path)
    assert loaded.model_config == records.model_config
    assert loaded.early_exit == records.early_exit
    for name in ("position", "token_id", "early_correct"):
        assert np.array_equal(getattr(loaded, name), getattr(records, name)), name
        assert getattr(loaded, name).dtype == getattr(records, name).dtype, name
    assert loaded.nll.keys() == records.nll.keys() and loaded.confidence.keys() == records.confidence.keys()
    for layer in records.nll:
        assert np.array_equal(loaded.nll[layer], records.nll[layer])
    for measure in records.confidence:
        assert np.array_equal(loaded.confidence[measure], records.confidence[measure])
    assert sweep(loaded, [0.5])["routed_ppl"] == sweep(records, [0.5])["routed_ppl"]


# ---------------------------------------------------------------------------------------------
# Sweeps against an independent routed forward pass


def test_sweep_equals_a_direct_routed_forward(tiny_run, tokens, records):
    conf = np.sort(records.confidence["max_softmax"].astype(np.float64))
    assert conf[-1] < 1.0
    # Thresholds between neighbouring confidences, so float rounding cannot move a token across.
    middles = [(conf[i] + conf[i + 1]) / 2 for i in (len(conf) // 4, len(conf) // 2, 3 * len(conf) // 4)]
    middles = [t for t in middles if conf[0] < t < conf[-1]]
    assert len(middles) == 3
    thresholds = [0.0, *middles, 1.0]
    rows = sweep(records, thresholds)
    for i, t in enumerate(thresholds):
        assert rows["routed_ppl"][i] == pytest.approx(direct_routed_ppl(tiny_run.model, tokens, t), rel=1e-5), t
    # Threshold 0: every token exits at layer 1; above every confidence: every token goes deep.
    exit1 = direct_routed_ppl(tiny_run.model, tokens, None, exits=(1,))
    exit3 = direct_routed_ppl(tiny_run.model, tokens, None, exits=(3,))
    assert rows["routed_ppl"][0] == pytest.approx(exit1, rel=1e-5)
    assert rows["routed_ppl"][-1] == pytest.approx(exit3, rel=1e-5)
    assert rows["shallow_pct"][0] == 100.0 and rows["shallow_pct"][-1] == 0.0
    assert rows["shallow_ppl"] == pytest.approx(exit1, rel=1e-5)
    assert rows["deep_ppl"] == pytest.approx(exit3, rel=1e-5)


def test_sweep_shallow_fraction_equals_the_routing_rule(records):
    conf = records.confidence["margin"]
    for t in [0.0, 0.05, float(np.median(conf)), 0.3, 0.99]:
        expected = 100.0 * exits_early(torch.from_numpy(conf), t).double().mean().item()
        assert sweep(records, [t], measure="margin")["shallow_pct"][0] == pytest.approx(expected), t


@pytest.mark.parametrize("measure", CONFIDENCE_MEASURES)
def test_shallow_pct_never_rises_with_the_threshold(records, measure):
    rows = sweep(records, np.linspace(0, 1, 201), measure=measure)
    assert (np.diff(rows["shallow_pct"]) <= 0).all()
    assert (np.diff(rows["compute_pct"]) >= -1e-9).all()
    assert (np.diff(rows["flops_pct"]) >= -1e-9).all()
    assert rows["shallow_pct"][0] == 100.0


def test_oracle_is_at_least_as_good_as_every_threshold(records):
    rows = sweep(records, np.linspace(0, 1, 101))
    assert (rows["oracle_ppl"] <= rows["routed_ppl"] * (1 + 1e-9)).all()


def test_sweep_rejects_bad_input(records):
    with pytest.raises(ValueError, match="^thresholds"):
        sweep(records, [0.5, 1.5])
    with pytest.raises(ValueError, match="^thresholds"):
        sweep(records, [float("nan")])
    with pytest.raises(ValueError, match="^measure"):
        sweep(records, [0.5], measure="entropy")


def test_summary_without_routing_is_the_last_exit(records):
    row = summary(records, None)
    assert row["routed_ppl"] == pytest.approx(row["ppl_by_exit"][3])
    assert (row["shallow_pct"], row["compute_pct"], row["flops_pct"]) == (0.0, 100.0, pytest.approx(100.0))
    assert row["tokens"] == len(records)
    routed_row = summary(records, 0.3)
    assert routed_row["routed_ppl"] == pytest.approx(float(sweep(records, [0.3])["routed_ppl"][0]))
    with pytest.raises(ValueError, match="^threshold"):
        summary(records, 1.5)


# ---------------------------------------------------------------------------------------------
# Calibration


@pytest.mark.parametrize("target", [40.0, 70.0, 90.0, 99.0])
def test_threshold_for_target_compute(records, target):
    t = threshold_for(records, target_compute=target)
    assert sweep(records, [t])["compute_pct"][0] <= target + 1e-9
    if t < 1.0:  # the highest such threshold on the grid
        assert sweep(records, [min(1.0, t + 1e-3)])["compute_pct"][0] > target


def test_threshold_for_max_ppl_increase(records):
    t = threshold_for(records, max_ppl_increase=0.0)
    row = sweep(records, [t])
    assert row["routed_ppl"][0] <= row["deep_ppl"][0]
    loose = threshold_for(records, max_ppl_increase=0.5)
    assert loose <= t
    assert sweep(records, [loose])["routed_ppl"][0] <= 1.5 * row["deep_ppl"][0]


def test_threshold_for_refuses_bad_requests(records):
    with pytest.raises(ValueError, match="exactly one"):
        threshold_for(records)
    with pytest.raises(ValueError, match="exactly one"):
        threshold_for(records, target_compute=50, max_ppl_increase=0.1)
    with pytest.raises(ValueError, match="^target_compute"):
        threshold_for(records, target_compute=10.0)  # below the all-shallow 33.3%
    with pytest.raises(ValueError, match="^max_ppl_increase"):
        threshold_for(records, max_ppl_increase=-0.1)


# ---------------------------------------------------------------------------------------------
# The routing rule and confidence measures


def test_confidence_measures_are_in_unit_interval_and_ordered():
    logits = torch.randn(4, 7, 50, generator=torch.Generator().manual_seed(0)) * 3
    measures = confidence_measures(logits)
    assert set(measures) == set(CONFIDENCE_MEASURES)
    for name, value in measures.items():
        assert value.shape == (4, 7), name
        assert (value >= 0).all() and (value <= 1 + 1e-6).all(), name
    p = logits.softmax(-1)
    torch.testing.assert_close(measures["max_softmax"], p.max(-1).values)
    assert (measures["margin"] <= measures["max_softmax"]).all()
    uniform = confidence(torch.zeros(3, 50), "neg_entropy")
    torch.testing.assert_close(uniform, torch.zeros(3), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="^measure"):
        confidence(logits, "entropy")


def test_route_threshold_extremes():
    g = torch.Generator().manual_seed(0)
    logits = {1: torch.randn(2, 5, 20, generator=g), 3: torch.randn(2, 5, 20, generator=g)}
    chosen, shallow = route(logits, 0.0)
    assert shallow.all() and torch.equal(chosen, logits[1])  # threshold 0: every token exits
    chosen, shallow = route(logits, 1.0)
    assert not shallow.any() and torch.equal(chosen, logits[3])  # above every confidence: none exit
    chosen, shallow = route(logits, None)
    assert not shallow.any() and torch.equal(chosen, logits[3])  # no routing
    conf = confidence(logits[1])
    t = float(conf.median())
    chosen, shallow = route(logits, t)
    assert torch.equal(shallow, conf >= t)
    assert torch.equal(chosen[shallow], logits[1][shallow]) and torch.equal(chosen[~shallow], logits[3][~shallow])


def test_exit_rate_never_rises_with_the_threshold():
    conf = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    rates = [exits_early(conf, t).float().mean().item() for t in np.linspace(0, 1, 51)]
    assert rates[0] == 1.0 and all(a >= b for a, b in zip(rates, rates[1:], strict=False))


# ---------------------------------------------------------------------------------------------
# Routing a text


def test_route_text(tiny_run):
    text = "the cat sees the ball.\nthe dog likes a tree.\n" * 3
    routed = route_text(tiny_run.model, tiny_run.tokenizer, text, 0.3)
    n = len(encode(tiny_run.tokenizer, text))
    assert len(routed.tokens) == n and len(routed.records) == n - 1
    assert "".join(routed.tokens) == text
    assert routed.windows == math.ceil((n - 1) / 16)
    assert np.array_equal(routed.shallow, routed.records.confidence["max_softmax"] >= 0.3)
    assert not route_text(tiny_run.model, tiny_run.tokenizer, text, None).shallow.any()
    with pytest.raises(ValueError, match="^text"):
        route_text(tiny_run.model, tiny_run.tokenizer, "   ", 0.5)
    with pytest.raises(ValueError, match="^threshold"):
        route_text(tiny_run.model, tiny_run.tokenizer, text, 2.0)


def test_untrained_model_records_are_complete():
    torch.manual_seed(0)
    model = RoutedTransformer(tiny_model_config(n_layers=2))
    tokens = torch.randint(0, 300, (40,), generator=torch.Generator().manual_seed(0))
    recs = evaluate(model, tokens)
    assert len(recs) == 39 and sorted(recs.nll) == [1, 2] and recs.final_exit == 2
    assert not model.training


def test_compute_pct_of_a_one_layer_model_does_not_depend_on_the_threshold():
    torch.manual_seed(0)
    model = RoutedTransformer(tiny_model_config(n_layers=1))
    recs = evaluate(model, torch.randint(0, 300, (60,), generator=torch.Generator().manual_seed(0)))
    unrouted = summary(recs, None)["compute_pct"]
    assert unrouted == pytest.approx(100 / 3)
    for t in (0.0, 0.5, 1.0):
        assert summary(recs, t)["compute_pct"] == pytest.approx(unrouted), t


def test_pareto_front_keeps_only_undominated_points():
    import numpy as np

    from routed.sweep import pareto_front

    cost = np.array([1.0, 2.0, 3.0, 2.5, 1.0])
    ppl = np.array([9.0, 5.0, 6.0, 4.0, 10.0])
    assert pareto_front(cost, ppl).tolist() == [True, True, False, True, False]


def test_ppl_at_interpolates_inside_the_curve_and_is_nan_outside():
    import math

    from routed.sweep import ppl_at

    curve = {"compute_pct": [40.0, 100.0, 60.0], "routed_ppl": [50.0, 20.0, 40.0]}
    assert ppl_at(curve, 50.0) == pytest.approx(45.0)
    assert ppl_at(curve, 80.0) == pytest.approx(30.0)
    assert math.isnan(ppl_at(curve, 30.0))
