"""Self-speculative decoding: the early exit drafts, the full model verifies, the output is the full model's.

Each round (as LayerSkip, Elhoushi et al. 2024) feeds the last accepted token through the layers up
to the early exit and drafts with that exit's head while its confidence stays at or above the
threshold, up to k tokens. The full model then runs its remaining layers on the whole draft in one
pass over the shared KV cache (the drafts' early layers are already cached: they are the full
model's own early layers) and keeps the longest prefix it agrees with plus one token of its own.
Greedy, the output is plain greedy decoding's, token for token. Sampling, a draft d is accepted
with probability min(1, p(d)/q(d)) and a rejection is replaced by a sample of norm(max(0, p - q))
(Leviathan et al. 2023; Chen et al. 2023), so every token is distributed as the full model's p.

Choosing k: with measured seconds `plain_s` per plain token and `round_s[k]` per round drafting k,
and an acceptance rate a per draft, a round yields (1 - a^(k+1)) / (1 - a) tokens on average, so
the speed-up over plain decoding is that times plain_s / round_s[k]. `best_k` takes the k that
maximises it; `break_even(k)` is the acceptance rate at which it equals 1.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from routed.generate import GeneratedToken, Generation, check_request, pick, probabilities, window_after
from routed.kvcache import KVCache, run_rows
from routed.model import RoutedTransformer
from routed.routing import check_threshold, confidence, exits_early
from routed.sparse import check_exits, routed_forward

MAX_DRAFT_K = 32  # drafts per round: past this the verify pass only grows


@dataclass
class DraftCosts:
    """Measured seconds of one plain decoding step and of one speculative round drafting k tokens (k = 0..)."""

    plain_s: float
    round_s: list[float]

    @property
    def k_max(self) -> int:
        return len(self.round_s) - 1


def expected_tokens(acceptance: float, k: int) -> float:
    """Mean tokens a round of k drafts yields when each draft is accepted with probability `acceptance`."""
    if acceptance >= 1.0:
        return k + 1.0
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def expected_speedup(acceptance: float, k: int, costs: DraftCosts) -> float:
    """Tokens per second of speculative decoding with k drafts over plain decoding's, from measured costs."""
    return expected_tokens(acceptance, k) * costs.plain_s / costs.round_s[k]


def break_even(k: int, costs: DraftCosts) -> float:
    """The acceptance rate at which k drafts per round are exactly as fast as plain decoding (1.0: never faster)."""
    if expected_speedup(1.0, k, costs) <= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(50):  # the speed-up rises with the acceptance rate: bisect
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_speedup(mid, k, costs) < 1.0 else (lo, mid)
    return hi


def best_k(acceptance: float, costs: DraftCosts) -> int:
    """The number of drafts per round (1..k_max) with the highest expected speed-up at this acceptance rate."""
    return max(range(1, costs.k_max + 1), key=lambda k: expected_speedup(acceptance, k, costs))


@dataclass
class SpeculativeGeneration(Generation):
    """A generation by self-speculative decoding, with its drafting statistics."""

    rounds: int = 0  # verification passes of the full model
    drafted: int = 0
    accepted: int = 0
    ks: list[int] = field(default_factory=list)  # drafts allowed in each round (fewer near the end or a full window)

    @property
    def acceptance_rate(self) -> float:
        """Share of the drafted tokens the full model accepted."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Accepted drafts per verification pass (each pass also adds one token of the full model's)."""
        return self.accepted / self.rounds if self.rounds else 0.0


def check_speculative(model: RoutedTransformer, exits, draft_k) -> list[int]:
    """The exits (draft exit first), refusing a model with one exit or a k outside 1..MAX_DRAFT_K."""
    exits = check_exits(model, exits, "sparse")
    if len(exits) < 2:
        raise ValueError(f"exits: speculative decoding drafts with an early exit, and this model has one exit "
                         f"(layer {exits[-1]}); use plain decoding")
    if draft_k is not None and (isinstance(draft_k, bool) or not isinstance(draft_k, int)
                                or not 1 <= draft_k <= MAX_DRAFT_K):
        raise ValueError(f"draft_k: must be an integer within 1..{MAX_DRAFT_K} (or automatic), got {draft_k!r}")
    return exits


class _Speculator:
    """The shared KV cache of one sequence and one draft-then-verify round over it."""

    def __init__(self, model: RoutedTransformer, exits: list[int], threshold, measure: str):
        self.model, self.early, self.threshold, self.measure = model, exits[0], threshold, measure
        self.device = model.tok_emb.weight.device
        self.cache = KVCache(model)

    def prefill(self, ids: list[int]) -> None:
        """A fresh cache holding positions 0..len(ids)-1 (one plain pass)."""
        self.cache = KVCache(self.model)
        if ids:
            routed_forward(self.model, torch.tensor([ids], device=self.device), None, "plain", cache=self.cache)

    def _early(self, token: int, pos: int) -> torch.Tensor:
        m = self.model
        x = m.tok_emb.weight[token].view(1, -1) + m.pos_emb.weight[pos].view(1, -1)
        for i, block in enumerate(m.blocks[: self.early]):
            x = run_rows(block, x, [pos], self.cache, i)
        return x  # (1, C): the state at the early exit

    @torch.no_grad()
    def round(self, token: int, pos: int, k: int, temperature: float, top_k, generator):
        """Draft up to k tokens after `token` (at `pos`), verify, keep the agreed prefix and one more.

        Returns (accepted drafts, their early confidences, the full model's token, the rejected draft or None,
        drafts made, every early confidence computed). The cache afterwards holds positions up to and
        including the last accepted draft.
        """
        m = self.model
        states, drafts, q_probs, confs = [self._early(token, pos)], [], [], []
        for i in range(k):
            logits = m.head(states[-1])[0]
            conf = float(confidence(logits, self.measure))
            confs.append(conf)
            if not bool(exits_early(torch.tensor(conf), self.threshold)):
                break  # not confident enough to draft: verify what there is
            if temperature > 0:
                q_probs.append(probabilities(logits, temperature, top_k))
                drafts.append(int(torch.multinomial(q_probs[-1].cpu(), 1, generator=generator)))
            else:
                drafts.append(int(logits.argmax()))
            states.append(self._early(drafts[-1], pos + i + 1))
        rows, positions = torch.cat(states), list(range(pos, pos + len(states)))
        for i, block in enumerate(m.blocks[self.early :], start=self.early):
            rows = run_rows(block, rows, positions, self.cache, i)
        full = m.head(rows)  # (m, V): the full model's next-token logits at each position
        greedy = full.argmax(-1).tolist() if temperature <= 0 else None
        accepted, rejected = 0, None
        for i, d in enumerate(drafts):
            if temperature > 0:
                p = probabilities(full[i], temperature, top_k).cpu()
                q = q_probs[i].cpu()
                ok = float(torch.rand(1, generator=generator)) < min(1.0, float(p[d] / q[d]))
            else:
                ok = greedy[i] == d
            if not ok:
                rejected = d
                if temperature > 0:
                    residual = (p - q).clamp(min=0)
                    residual = residual if float(residual.sum()) > 0 else p
                    nxt = int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
                else:
                    nxt = greedy[i]
                break
            accepted += 1
        else:
            nxt = pick(full[len(drafts)], temperature, top_k, generator)
        self.cache.truncate(pos + accepted + 1)
        return drafts[:accepted], confs[:accepted], nxt, rejected, len(drafts), confs


@torch.no_grad()
def speculative_generate(
    model: RoutedTransformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    threshold: float | None,
    draft_k: int | None = None,
    exits=None,
    measure: str = "max_softmax",
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    decode=None,
    on_token=None,
    costs: DraftCosts | None = None,
) -> SpeculativeGeneration:
    """Generate with the early exit (exits[0]) drafting and the full model verifying; draft_k None chooses k.

    threshold: drafting stops at a draft whose early-exit confidence is below it (None: always draft k).
    Automatic k is `best_k` of the acceptance rate seen so far (prior 1/2) and `costs` (measured here
    when not given, before the clock starts). Same windows, sampling and callbacks as routed.generate.
    """
    exits = check_speculative(model, exits, draft_k)
    check_threshold(threshold)
    check_request(model, prompt_ids, max_new_tokens)
    model.eval()
    if draft_k is None and costs is None:
        costs = measure_costs(model, exits, measure=measure)
    draft_threshold = 0.0 if threshold is None else threshold
    spec = _Speculator(model, exits, draft_threshold, measure)
    ctx, n = model.config.context_length, model.config.n_layers
    generator = torch.Generator().manual_seed(seed)
    ids = [int(t) for t in prompt_ids]
    result = SpeculativeGeneration(list(ids))
    start = max(0, len(ids) - ctx)
    spec.prefill(ids[start:-1])
    outside = 0.0
    began = time.perf_counter()
    while len(result.tokens) < max_new_tokens:
        k = draft_k or best_k((result.accepted + 1) / (result.drafted + 2), costs)
        result.ks.append(k)
        visible = len(ids) - start
        k = min(k, ctx - visible, max_new_tokens - len(result.tokens) - 1)
        drafts, confs, nxt, rejected, made, seen = spec.round(ids[-1], visible - 1, k, temperature, top_k, generator)
        result.rounds += 1
        result.drafted += made
        result.accepted += len(drafts)
        ids.extend(drafts + [nxt])
        t = time.perf_counter()
        new = [GeneratedToken(d, decode([d]) if decode else "", exits[0], c, drafted=True) for d, c in zip(drafts, confs)]
        conf = seen[len(drafts)] if len(seen) > len(drafts) else float("nan")
        new.append(GeneratedToken(nxt, decode([nxt]) if decode else "", n, conf, rejected_id=rejected,
                                  rejected_text=decode([rejected]) if decode and rejected is not None else ""))
        for token in new:
            result.tokens.append(token)
            if on_token is not None:
                on_token(token)
        outside += time.perf_counter() - t
        restarted = window_after(len(ids), start, ctx)
        if restarted != start:
            start = restarted
            if len(result.tokens) < max_new_tokens:
                spec.prefill(ids[start:-1])
    result.seconds = time.perf_counter() - began - outside
    return result


@torch.no_grad()
def measure_costs(model: RoutedTransformer, exits, k_max: int = 8, repeats: int = 7, measure: str = "max_softmax",
                  context: int | None = None) -> DraftCosts:
    """Median seconds of a plain decoding step and of a round drafting k = 0..k_max tokens, at batch 1.

    Timed at `context` cached positions (default: half the context length) with drafting forced,
    so that each round drafts exactly k tokens whatever the weights.
    """
    from routed.generate import Decoder

    exits = check_speculative(model, exits, None)
    ctx = model.config.context_length
    k_max = max(1, min(k_max, MAX_DRAFT_K, ctx - 2))
    length = max(1, min(context or ctx // 2, ctx - k_max - 1))
    ids = torch.randint(0, model.config.vocab_size, (length + 1,), generator=torch.Generator().manual_seed(0)).tolist()
    generator = torch.Generator().manual_seed(0)

    cuda = model.tok_emb.weight.device.type == "cuda"

    def median_s(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            if cuda:  # the plain step returns logits still being computed
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    plain = Decoder(model, None, "plain", exits)
    plain.prefill(ids[:-1])
    plain_s = median_s(lambda: plain.step(ids[-1], length))
    spec = _Speculator(model, exits, 0.0, measure)
    spec.prefill(ids[:-1])

    def one_round(k: int) -> None:
        spec.round(ids[-1], length, k, 0.0, None, generator)
        spec.cache.truncate(length)

    return DraftCosts(plain_s, [median_s(lambda k=k: one_round(k)) for k in range(k_max + 1)])
