"""The universal loss: a weighted sum of per-exit cross-entropies, with a fused head + cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
        # A frozen head (exit adapters on a pretrained model) needs no weight gradient.
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
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
            probs[torch.arange(len(t), device=t.device), t] -= 1.0  # d(CE)/d(logits) = softmax - onehot
            probs = probs.to(hidden.dtype)
            grad_hidden[i : i + chunk_rows] = probs @ weight
            if grad_weight is not None:
                grad_weight.addmm_(probs.T, h)
        ctx.save_for_backward(grad_hidden.div_(n), grad_weight.div_(n) if grad_weight is not None else None)
        return (total / n).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_weight = grad_weight * grad_output if grad_weight is not None else None
        return grad_hidden * grad_output, grad_weight, None, None


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
    return weighted_feature_loss(model.exit_features(inputs, exits=trained), model.lm_head.weight, targets, layer_weights)


def weighted_feature_loss(
    features: dict[int, torch.Tensor], head_weight: torch.Tensor, targets: torch.Tensor, layer_weights: dict[int, float]
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The universal loss of given exit features (normed states, (..., C) per layer) read by one head."""
    losses = {
        layer: head_cross_entropy(h.flatten(0, -2), head_weight, targets.flatten())
        for layer, h in features.items()
        if layer_weights.get(layer, 0) > 0
    }
    total_weight = sum(layer_weights[layer] for layer in losses)
    loss = sum(layer_weights[layer] * ce for layer, ce in losses.items()) / total_weight
    return loss, losses
