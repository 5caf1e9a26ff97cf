"""Paired statistics for verdicts: a paired t-test, bootstrap confidence intervals, block bootstraps over tokens.

Pure functions (arrays in, numbers out). Between presets the unit is the seed (presets share seeds and data
order, so seed s of one preset is paired with seed s of the other); within one model the unit is a block of
test tokens (a context window), since the same tokens are routed at both thresholds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)), -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and x in [0, 1]."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x: must be in [0, 1], got {x!r}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The q-quantile (q in (0.5, 1)) of Student's t, by bisection on the distribution function."""
    if not 0.5 < q < 1.0:
        raise ValueError(f"q: must be in (0.5, 1), got {q!r}")
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1.0 - t_sf_two_sided(mid, df) / 2.0 < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class Comparison:
    """An effect (mean difference a − b), its 95% confidence interval and p-value, and how they were obtained."""

    effect: float
    ci_low: float
    ci_high: float
    p: float
    n: int
    test: str

    def to_dict(self) -> dict:
        return asdict(self)


def paired_t(a, b) -> Comparison:
    """Paired t-test of mean(a − b) = 0 with its 95% t interval; a[i] and b[i] share a seed."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    if n < 2:
        raise ValueError(f"paired_t: needs at least 2 pairs, got {n}")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:  # every pair differs by the same amount: no spread to test against
        p = 1.0 if mean == 0.0 else 0.0
        return Comparison(mean, mean, mean, p, n, "paired t")
    se = sd / math.sqrt(n)
    half = t_quantile(0.975, n - 1) * se
    return Comparison(mean, mean - half, mean + half, t_sf_two_sided(mean / se, n - 1), n, "paired t")


def bootstrap_mean_ci(d, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean of `d` over resamples with replacement."""
    d = np.asarray(d, float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _bootstrap_p(samples: np.ndarray) -> float:
    """Two-sided p-value of "the effect is 0" from bootstrap samples of the effect (percentile method)."""
    below = (np.count_nonzero(samples <= 0) + 1) / (len(samples) + 1)
    above = (np.count_nonzero(samples >= 0) + 1) / (len(samples) + 1)
    return float(min(1.0, 2 * min(below, above)))


def paired_block_bootstrap(
    a_sums: list, b_sums: list, counts: list, resamples: int = 2_000, seed: int = 0
) -> Comparison:
    """Difference of mean NLL per token, a − b, over blocks of tokens, pooled over seeds.

    For each seed s: a_sums[s][j], b_sums[s][j] are summed NLLs of block j under the two conditions and
    counts[s][j] its tokens. The effect is the mean over seeds of (sum a − sum b) / tokens; blocks are
    resampled within every seed, so the interval covers the test tokens' sampling noise.
    """
    if not (len(a_sums) == len(b_sums) == len(counts)) or not a_sums:
        raise ValueError("paired_block_bootstrap: give one list of block sums per seed for a, b and counts")
    rng = np.random.default_rng(seed)
    effects, samples = [], np.zeros(resamples)
    for a, b, c in zip(a_sums, b_sums, counts):
        diff, c = np.asarray(a, float) - np.asarray(b, float), np.asarray(c, float)
        effects.append(diff.sum() / c.sum())
        idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
        samples += diff[idx].sum(axis=1) / c[idx].sum(axis=1)
    samples /= len(a_sums)
    effect = float(np.mean(effects))
    return Comparison(effect, float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5)),
                      _bootstrap_p(samples), sum(len(a) for a in a_sums), f"block bootstrap ({len(a_sums)} seed(s))")


def verdict(c: Comparison, better_if_negative: bool = True) -> str:
    """'held' when the 95% interval lies on the claimed side of 0, 'contradicted' on the other, else 'not shown'."""
    if c.ci_high < 0 or c.ci_low > 0:
        claimed = (c.ci_high < 0) == better_if_negative
        return "held" if claimed else "contradicted"
    return "not shown"


def what_n_allows(n: int) -> str:
    """One sentence on what n seeds can show in a paired comparison."""
    if n < 2:
        return "one seed: no spread, so no test; the sign alone is shown"
    tq = t_quantile(0.975, n - 1)
    return (f"{n} seeds: the paired t-test has {n - 1} degrees of freedom (t at .975 = {tq:.2f}), so an effect is "
            f"shown only when it exceeds {tq / math.sqrt(n):.2f} standard deviations of the per-seed differences; "
            f"a seed bootstrap has only {math.comb(2 * n - 1, n)} distinct resamples, and a sign test cannot go below "
            f"p = {2 * 0.5 ** n:.2f}")
