"""The universal loss, the fused head cross-entropy, and the trainer's behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_corpus, tiny_model_config, tiny_train_config

from routed.data import CorpusError, split_by_position
from routed.loss import head_cross_entropy, weighted_exit_loss
from routed.model import RoutedTransformer
from routed.records import exit_losses
from routed.sampler import WindowSampler
from routed.tokenizer import encode, train_tokenizer
from routed.train import learning_rate_at, train

# ---------------------------------------------------------------------------------------------
# The loss


@pytest.fixture
def batch():
    torch.manual_seed(0)
    model = RoutedTransformer(tiny_model_config())
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 300, (4, 17), generator=g)
    return model, rows[:, :-1], rows[:, 1:]


def plain_ce(model, x, y):
    """Reference per-exit cross-entropies from the ordinary forward pass."""
    logits = model(x)
    return {layer: F.cross_entropy(v.flatten(0, 1), y.flatten()) for layer, v in logits.items()}


def test_single_weight_equals_plain_cross_entropy(batch):
    model, x, y = batch
    loss, per_exit = weighted_exit_loss(model, x, y, {3: 1.0})
    assert list(per_exit) == [3]
    torch.testing.assert_close(loss, plain_ce(model, x, y)[3], rtol=1e-5, atol=1e-6)


def test_weighted_loss_equals_the_hand_computation(batch):
    model, x, y = batch
    loss, per_exit = weighted_exit_loss(model, x, y, {1: 0.7, 2: 0.0, 3: 0.3})
    assert sorted(per_exit) == [1, 3]  # a zero weight computes no loss at that exit
    ce = plain_ce(model, x, y)
    expected = (0.7 * ce[1] + 0.3 * ce[3]) / 1.0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for layer in per_exit:
        torch.testing.assert_close(per_exit[layer], ce[layer], rtol=1e-5, atol=1e-6)


def test_weighted_loss_gradients_equal_the_hand_computation(batch):
    model, x, y = batch
    loss, _ = weighted_exit_loss(model, x, y, {1: 0.7, 2: 0.0, 3: 0.3})
    fused = torch.autograd.grad(loss, list(model.parameters()))
    ce = plain_ce(model, x, y)
    reference = torch.autograd.grad(0.7 * ce[1] + 0.3 * ce[3], list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), fused, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("scale", [0.01, 3.0, 1000.0])
def test_weights_are_normalised(batch, scale):
    model, x, y = batch
    weights = {1: 0.5, 2: 0.2, 3: 0.3}
    base, _ = weighted_exit_loss(model, x, y, weights)
    scaled, _ = weighted_exit_loss(model, x, y, {k: scale * w for k, w in weights.items()})
    torch.testing.assert_close(scaled, base, rtol=1e-6, atol=1e-6)


def test_weighted_loss_without_gradients_uses_the_plain_path(batch):
    model, x, y = batch
    with torch.no_grad():
        loss, _ = weighted_exit_loss(model, x, y, {1: 0.5, 3: 0.5})
        ce = plain_ce(model, x, y)
    torch.testing.assert_close(loss, (ce[1] + ce[3]) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_rows", [1, 5, 8, 36, 37, 1000])
def test_head_cross_entropy_matches_cross_entropy_in_value_and_gradients(chunk_rows):
    # N = 37 rows: chunk sizes 5 and 8 leave a partial last chunk.
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 8, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (37,), generator=g)

    fused = head_cross_entropy(hidden, weight, targets, chunk_rows=chunk_rows)
    fused_grads = torch.autograd.grad(2.5 * fused, (hidden, weight))  # an upstream gradient != 1
    reference = F.cross_entropy(hidden @ weight.T, targets)
    reference_grads = torch.autograd.grad(2.5 * reference, (hidden, weight))

    # The softmax is taken in float32 (see test_head_cross_entropy_keeps_float64_precision).
    torch.testing.assert_close(fused.double(), reference, rtol=1e-6, atol=1e-6)
    for a, b in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-6, atol=1e-6)


def test_head_cross_entropy_keeps_float64_precision():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 8, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (37,), generator=g)
    fused = head_cross_entropy(hidden, weight, targets, chunk_rows=5)
    fused_grads = torch.autograd.grad(fused, (hidden, weight))
    reference = F.cross_entropy(hidden @ weight.T, targets)
    reference_grads = torch.autograd.grad(reference, (hidden, weight))
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    for a, b in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_head_cross_entropy_gradient_only_for_the_inputs_that_need_it():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 4, generator=g, requires_grad=True)
    weight = torch.randn(6, 4, generator=g)  # frozen head
    targets = torch.randint(0, 6, (9,), generator=g)
    loss = head_cross_entropy(hidden, weight, targets, chunk_rows=4)
    loss.backward()
    reference = hidden.detach().clone().requires_grad_()
    F.cross_entropy(reference @ weight.T, targets).backward()
    torch.testing.assert_close(hidden.grad, reference.grad, rtol=1e-5, atol=1e-6)
    assert weight.grad is None


# ---------------------------------------------------------------------------------------------
# Schedule and sampling


def test_learning_rate_schedule():
    cfg = tiny_train_config(learning_rate=1e-2, warmup_steps=4, min_lr_ratio=0.1)
    rates = [learning_rate_at(s, cfg, 20) for s in range(20)]
    assert rates[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert max(rates) == pytest.approx(1e-2)
    assert all(a >= b - 1e-12 for a, b in zip(rates[3:], rates[4:], strict=False))  # cosine decay never rises
    assert learning_rate_at(20, cfg, 20) == pytest.approx(1e-3)  # ends at learning_rate * min_lr_ratio
    assert min(rates) >= 1e-3 - 1e-12


def test_window_sampler_is_seeded_and_aligned():
    tokens = torch.arange(500)
    a = WindowSampler(tokens, context_length=16, batch_size=8, seed=0)
    b = WindowSampler(tokens, context_length=16, batch_size=8, seed=0)
    c = WindowSampler(tokens, context_length=16, batch_size=8, seed=1)
    batches_a = [a.next_batch() for _ in range(10)]  # more than one epoch (about 30 windows)
    batches_b = [b.next_batch() for _ in range(10)]
    batches_c = [c.next_batch() for _ in range(10)]
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert any(not torch.equal(xa, xc) for (xa, _), (xc, _) in zip(batches_a, batches_c, strict=True))
    for x, y in batches_a:
        assert x.shape == y.shape == (8, 16)
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
        assert torch.equal(y - x, torch.ones_like(x))  # contiguous windows of the token stream


# ---------------------------------------------------------------------------------------------
# The trainer


def curve(result):
    """The history without its wall-clock times."""
    return [{k: v for k, v in record.items() if k != "elapsed_s"} for record in result.history]


def val_loss_of(result, corpus):
    """The weighted validation loss of the returned model, computed like the trainer does."""
    cfg = result.train_config
    val = encode(result.tokenizer, corpus.validation)[: cfg.eval_tokens + 1]
    ce = exit_losses(result.model, val, list(range(1, result.model_config.n_layers + 1)))
    exits = cfg.trained_exits
    return sum(cfg.layer_weights[k] * ce[k] for k in exits) / sum(cfg.layer_weights[k] for k in exits)


def test_validation_loss_falls_on_a_tiny_corpus(tiny_run):
    history = tiny_run.history
    assert [r["step"] for r in history] == [10, 20, 30, 40]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["val_loss"] < math.log(300) * 0.75  # well below a uniform guess
    assert tiny_run.best_step == 40
    assert not tiny_run.stopped_early and not tiny_run.cancelled
    for record in history:
        assert set(record["val_ppl"]) == {1, 2, 3}
        assert record["tokens"] == record["step"] * 8 * 16
    assert not tiny_run.model.training


def test_result_describes_the_run(tiny_run, tiny_run_corpus):
    assert tiny_run.model_config.vocab_size == tiny_run.tokenizer.get_vocab_size()
    assert tiny_run.model.config == tiny_run.model_config
    assert tiny_run.corpus_name == "tiny"
    assert tiny_run.corpus_fingerprint == tiny_run_corpus.fingerprint


def test_same_seed_same_history_different_seed_different(tiny_run, tiny_run_corpus):
    again = train(tiny_run.model_config, tiny_run.train_config, tiny_run_corpus, tokenizer=tiny_run.tokenizer)
    assert curve(again) == curve(tiny_run)
    for (name, a), b in zip(again.model.state_dict().items(), tiny_run.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other = train(
        tiny_run.model_config,
        tiny_train_config(seed=1),
        tiny_run_corpus,
        tokenizer=tiny_run.tokenizer,
    )
    assert [r["val_loss"] for r in curve(other)] != [r["val_loss"] for r in curve(tiny_run)]


def test_pre_encoded_tokens_give_the_same_run(tiny_run, tiny_run_corpus):
    tok = tiny_run.tokenizer
    encoded = (encode(tok, tiny_run_corpus.train), encode(tok, tiny_run_corpus.validation))
    config = tiny_train_config(steps=10)
    a = train(tiny_run.model_config, config, tiny_run_corpus, tokenizer=tok)
    b = train(tiny_run.model_config, config, tiny_run_corpus, tokenizer=tok, encoded=encoded)
    assert curve(a) == curve(b)


def test_early_stopping_keeps_the_best_weights(tiny_run, tiny_run_corpus):
    # A learning rate this high sends validation loss up again; patience=1 stops at the first rise.
    config = tiny_train_config(learning_rate=1.0, eval_interval=5, patience=1)
    result = train(tiny_run.model_config, config, tiny_run_corpus, tokenizer=tiny_run.tokenizer)
    losses = [r["val_loss"] for r in result.history]
    assert result.stopped_early
    assert result.history[-1]["step"] < 40
    assert losses[-1] > min(losses)  # it stopped because the last validation was worse
    best = min(result.history, key=lambda r: r["val_loss"])
    assert result.best_step == best["step"] != result.history[-1]["step"]
    # The returned model is the best one, not the last one.
    assert val_loss_of(result, tiny_run_corpus) == pytest.approx(best["val_loss"], rel=1e-6)


def test_early_stopping_returns_the_weights_of_the_best_validation(tiny_run, tiny_run_corpus, monkeypatch):
    # Scripted validation losses: best at the 2nd validation, then two worse ones (patience=2).
    import copy

    import routed.train

    scripted, snapshots = iter([3.0, 2.0, 2.5, 2.4, 1.0]), []

    def fake_exit_nll_sums(model, tokens, exits, bf16=False, shard=(0, 1)):
        snapshots.append(copy.deepcopy(model.state_dict()))
        value = next(scripted)
        return {layer: 10 * value for layer in exits}, 10

    monkeypatch.setattr(routed.train, "exit_nll_sums", fake_exit_nll_sums)
    config = tiny_train_config(patience=2, eval_interval=5)
    result = train(tiny_run.model_config, config, tiny_run_corpus, tokenizer=tiny_run.tokenizer)
    assert result.stopped_early
    assert [r["step"] for r in result.history] == [5, 10, 15, 20]
    assert [r["val_loss"] for r in result.history] == pytest.approx([3.0, 2.0, 2.5, 2.4])
    assert result.best_step == 10
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, snapshots[1][name]), name
    assert any(not torch.equal(v, snapshots[-1][k]) for k, v in result.model.state_dict().items())


def test_returned_model_has_the_best_recorded_loss(tiny_run, tiny_run_corpus):
    best = min(r["val_loss"] for r in tiny_run.history)
    assert val_loss_of(tiny_run, tiny_run_corpus) == pytest.approx(best, rel=1e-6)


def test_should_stop_cancels_and_progress_is_reported(tiny_run, tiny_run_corpus):
    progress, polls = [], []

    def should_stop():
        polls.append(1)
        return len(polls) > 6  # polled once before training, then before each step: allows 5 steps

    result = train(
        tiny_run.model_config,
        tiny_train_config(),
        tiny_run_corpus,
        tokenizer=tiny_run.tokenizer,
        on_progress=progress.append,
        should_stop=should_stop,
    )
    assert result.cancelled and not result.stopped_early
    assert [p.step for p in progress] == [1, 2, 3, 4, 5]
    assert all(p.total_steps == 40 for p in progress)
    assert all(p.train_loss > 0 and p.learning_rate > 0 and p.eta_s >= 0 for p in progress)
    assert [p.elapsed_s for p in progress] == sorted(p.elapsed_s for p in progress)
    # A cancelled run still reports where it got to.
    assert [r["step"] for r in result.history] == [5]
    assert not result.model.training


def test_progress_carries_each_validation(tiny_run, tiny_run_corpus):
    progress = []
    result = train(
        tiny_run.model_config,
        tiny_train_config(steps=20),
        tiny_run_corpus,
        tokenizer=tiny_run.tokenizer,
        on_progress=progress.append,
    )
    steps = [p.step for p in progress]
    assert steps == list(range(1, 21))
    validated = [p for p in progress if p.validation is not None]
    assert [p.step for p in validated] == [10, 20]
    assert [p.validation for p in validated] == result.history


def test_epochs_set_the_number_of_steps(tiny_run, tiny_run_corpus):
    progress = []
    config = tiny_train_config(steps=None, epochs=0.5)
    train(tiny_run.model_config, config, tiny_run_corpus, tokenizer=tiny_run.tokenizer, on_progress=progress.append)
    n_train = len(encode(tiny_run.tokenizer, tiny_run_corpus.train))
    assert progress[-1].total_steps == math.ceil(0.5 * n_train / (8 * 16))


def test_bf16_autocast_trains(tiny_run, tiny_run_corpus):
    result = train(
        tiny_run.model_config, tiny_train_config(bf16=True, steps=10), tiny_run_corpus, tokenizer=tiny_run.tokenizer
    )
    record = result.history[-1]
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


def test_layer_weight_beyond_the_model_is_refused_before_training(tiny_run_corpus):
    with pytest.raises(ValueError, match="^layer_weights"):
        train(tiny_model_config(n_layers=2), tiny_train_config(layer_weights={3: 1.0}), tiny_run_corpus)


def test_too_small_a_corpus_is_refused():
    corpus = split_by_position("tiny text\n" * 3 + "x\n" * 3, name="small")
    tok = train_tokenizer(corpus.train, 300)
    with pytest.raises(CorpusError, match="train split"):
        train(tiny_model_config(), tiny_train_config(), corpus, tokenizer=tok)


def test_a_corpus_name_is_loaded(tmp_path, tiny_run):
    from helpers import repetitive_text, write_text

    path = write_text(tmp_path / "corpus.txt", repetitive_text())
    result = train(tiny_model_config(), tiny_train_config(steps=2), str(path), tokenizer=tiny_run.tokenizer)
    assert result.corpus_name == str(path)
    assert result.corpus_fingerprint == tiny_corpus().fingerprint
