"""Training batches: non-overlapping windows of the token stream, in a seeded order that resumes exactly."""

from __future__ import annotations

import torch


class WindowSampler:
    """Non-overlapping training windows in a seeded random order, reshuffled (and shifted) every epoch."""

    def __init__(self, tokens: torch.Tensor, context_length: int, batch_size: int, seed: int):
        self.tokens, self.ctx, self.batch_size = tokens, context_length, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)

    def _new_epoch(self) -> None:
        span = self.ctx + 1
        shift = int(torch.randint(0, self.ctx, (1,), generator=self.generator)) if len(self.tokens) > 2 * span else 0
        starts = torch.arange(shift, len(self.tokens) - span + 1, self.ctx)
        self._order = starts[torch.randperm(len(starts), generator=self.generator)]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self._order) < self.batch_size:
            carry = self._order
            self._new_epoch()
            self._order = torch.cat([carry, self._order])
        starts, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        rows = torch.stack([self.tokens[s : s + self.ctx + 1] for s in starts.tolist()])
        return rows[:, :-1], rows[:, 1:]

    def state(self) -> dict[str, torch.Tensor]:
        return {"sampler.rng": self.generator.get_state(), "sampler.order": self._order.clone()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(tensors["sampler.rng"])
        self._order = tensors["sampler.order"]
