"""Exact binomial tail probabilities and Clopper–Pearson bounds, in NumPy (no SciPy).

P(X <= k) for X ~ Binomial(n, p) equals the regularised incomplete beta function I_{1-p}(n - k, k + 1),
evaluated here by its continued fraction (modified Lentz), vectorised over arrays.
"""

from __future__ import annotations

import math

import numpy as np

_TINY = 1e-300
_EPS = 1e-15
_MAX_ITER = 100_000


def _lgamma(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.lgamma, otypes=[np.float64])(x)


def _beta_cf(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
    h = d.copy()
    active = np.ones(x.shape, dtype=bool)
    for m in range(1, _MAX_ITER + 1):
        m2 = 2.0 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
            c = 1.0 + aa / np.where(np.abs(c) < _TINY, _TINY, c)
            c = np.where(np.abs(c) < _TINY, _TINY, c)
            step = d * c
            h = np.where(active, h * step, h)
        active &= np.abs(step - 1.0) > _EPS
        if not active.any():
            return h
    raise ArithmeticError("incomplete beta: the continued fraction did not converge")


def betainc(a, b, x) -> np.ndarray:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1], elementwise."""
    a, b, x = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(a, b, x))
    if (a <= 0).any() or (b <= 0).any() or (x < 0).any() or (x > 1).any() or np.isnan(x).any():
        raise ValueError("betainc: need a, b > 0 and x in [0, 1]")
    out = np.where(x >= 1.0, 1.0, 0.0)
    inside = (x > 0) & (x < 1)
    if not inside.any():
        return out
    a, b, x = a[inside], b[inside], x[inside]
    # Use the side where the fraction converges: I_x(a, b) = 1 - I_{1-x}(b, a).
    flip = x > (a + 1.0) / (a + b + 2.0)
    a2, b2, x2 = np.where(flip, b, a), np.where(flip, a, b), np.where(flip, 1.0 - x, x)
    log_front = _lgamma(a2 + b2) - _lgamma(a2) - _lgamma(b2) + a2 * np.log(x2) + b2 * np.log1p(-x2)
    value = np.exp(log_front) * _beta_cf(a2, b2, x2) / a2
    out[inside] = np.clip(np.where(flip, 1.0 - value, value), 0.0, 1.0)
    return out


def binom_cdf(k, n, p) -> np.ndarray:
    """P(X <= k) for X ~ Binomial(n, p), elementwise (k, n integers >= 0; p in [0, 1])."""
    k, n, p = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(k, n, p))
    if (n < 0).any() or (k < 0).any() or (p < 0).any() or (p > 1).any() or np.isnan(p).any():
        raise ValueError("binom_cdf: need k, n >= 0 and p in [0, 1]")
    out = np.ones(k.shape, dtype=np.float64)  # k >= n: certain
    below = k < n
    if below.any():
        kb, nb = k[below], n[below]
        out[below] = betainc(nb - kb, kb + 1.0, 1.0 - p[below])
    return out


def clopper_pearson_upper(k, n, delta: float, rounds: int = 6, points: int = 32) -> np.ndarray:
    """One-sided upper (1 - delta) Clopper–Pearson bound on a binomial rate from k events in n trials.

    The p solving P(X <= k; n, p) = delta (the beta quantile B^-1(1 - delta; k + 1, n - k)), found by a
    bracketing search: the binomial CDF falls monotonically as p rises, so each round evaluates it at
    `points` values across the bracket at once and keeps the cell where it crosses delta (resolution
    points^-rounds, about 1e-9). n = 0 or k = n gives 1.
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta: must be in (0, 1), got {delta!r}")
    k, n = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(k, n))
    if (k < 0).any() or (k > n).any():
        raise ValueError("clopper_pearson_upper: need 0 <= k <= n")
    shape, k, n = k.shape, k.ravel(), n.ravel()
    lo, hi = np.zeros(k.shape), np.ones(k.shape)  # CDF(lo) > delta >= CDF(hi) while k < n
    rows, steps = np.arange(len(k)), np.linspace(0.0, 1.0, points + 1)
    open_ = k < n
    for _ in range(rounds):
        grid = lo[:, None] + (hi - lo)[:, None] * steps  # (M, points + 1)
        above = np.ones(grid.shape, dtype=bool)
        above[open_] = binom_cdf(k[open_, None], n[open_, None], grid[open_]) > delta
        j = np.clip(above.sum(axis=1), 1, points)  # the CDF is above delta at grid[:j]
        lo, hi = grid[rows, j - 1], grid[rows, j]
    return np.where(open_, hi, 1.0).reshape(shape)
