"""Bradley–Terry rankings from pairwise answers, with uncertainty.

The model: item ``i`` has a latent strength ``s_i`` and ``P(i beats j) = sigmoid(s_i - s_j)``. People cannot
rate "how angry" a face is on a scale, but their "which is angrier?" answers fit this model well.

Fitting is a maximum a-posteriori estimate with a weak Gaussian prior ``s ~ N(0, prior_sd^2)`` (sd 10). The prior is
what keeps the estimate finite when one item has won every comparison so far (the plain maximum-likelihood
estimate would run off to infinity), and it centres the scores so they are comparable between fits. The
uncertainty is the Laplace approximation: the inverse of the Hessian of the negative log posterior at the
optimum is the covariance of the scores (centred; see fit_bradley_terry). Rank intervals come from sampling it.

"equal" answers count as half a win for each side (the usual way to fold ties into Bradley–Terry without a
separate tie parameter); "skip" answers carry no information about order and are ignored here.
Pure numpy: no torch, so the judging server starts instantly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

# Wide enough not to shrink real differences: in simulation (tests/test_judge_ranking.py) 95 % intervals
# cover the true strengths >= 90 % of the time with up to 12 items 1.5 logits apart; sd 2 covered 24-66 %.
DEFAULT_PRIOR_SD = 10.0
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Outcome:
    """One answered comparison between two items (by index or key). ``winner`` is None for "equal"."""

    a: str
    b: str
    winner: str | None


@dataclass
class BTFit:
    """A fitted Bradley–Terry model over ``keys``. ``cov`` is the Laplace covariance of ``scores``."""

    keys: list[str]
    scores: np.ndarray
    cov: np.ndarray
    wins: np.ndarray
    comparisons: np.ndarray
    prior_sd: float = DEFAULT_PRIOR_SD
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {k: i for i, k in enumerate(self.keys)}

    def index(self, key: str) -> int:
        return self._index[key]

    @property
    def se(self) -> np.ndarray:
        """Standard error of each score (square root of the posterior variance)."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))

    def win_probability(self, a: str, b: str) -> float:
        """Model probability that ``a`` is chosen over ``b``."""
        i, j = self._index[a], self._index[b]
        return _sigmoid(self.scores[i] - self.scores[j])

    def difference_variance(self, a: str, b: str) -> float:
        """Posterior variance of ``s_a - s_b``: how unsure the model is about this pair's order."""
        i, j = self._index[a], self._index[b]
        return float(self.cov[i, i] + self.cov[j, j] - 2.0 * self.cov[i, j])

    def order(self) -> list[str]:
        """Keys from strongest to weakest (ties broken by key for stable output)."""
        return [self.keys[i] for i in sorted(range(len(self.keys)), key=lambda i: (-self.scores[i], self.keys[i]))]

    def rank_intervals(self, samples: int = 2000, seed: int = 0) -> dict[str, tuple[int, int]]:
        """95 % interval of each item's rank (1 = best), by sampling the Laplace posterior."""
        n = len(self.keys)
        if n == 0:
            return {}
        rng = np.random.default_rng(seed)
        # A tiny jitter keeps the Cholesky factorisation happy when the covariance is near singular.
        draws = rng.multivariate_normal(self.scores, self.cov + 1e-12 * np.eye(n), size=samples, method="eigh")
        ranks = (-draws).argsort(axis=1).argsort(axis=1) + 1
        lo = np.percentile(ranks, 2.5, axis=0, method="lower")
        hi = np.percentile(ranks, 97.5, axis=0, method="higher")
        return {k: (int(lo[i]), int(hi[i])) for i, k in enumerate(self.keys)}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x)) if isinstance(x, np.ndarray) else 1.0 / (1.0 + math.exp(-float(x)))


def fit_bradley_terry(
    keys: Sequence[str],
    outcomes: Iterable[Outcome],
    prior_sd: float = DEFAULT_PRIOR_SD,
    max_iter: int = 100,
    tol: float = 1e-9,
) -> BTFit:
    """Fit Bradley–Terry strengths for ``keys`` from ``outcomes`` (MAP with a Gaussian prior; Newton's method).

    Outcomes that mention a key not in ``keys`` raise ``ValueError``: they mean the caller mixed questions.
    With no outcomes every score is 0 and every difference has the prior variance ``2 * prior_sd**2``.
    """
    keys = list(keys)
    n = len(keys)
    index = {k: i for i, k in enumerate(keys)}
    # w[i, j]: (possibly fractional) number of times i was preferred to j.
    w = np.zeros((n, n))
    for o in outcomes:
        if o.a not in index or o.b not in index:
            raise ValueError(f"comparison {o.a!r} vs {o.b!r} mentions an item that is not being ranked")
        i, j = index[o.a], index[o.b]
        if i == j:
            continue
        if o.winner is None:
            w[i, j] += 0.5
            w[j, i] += 0.5
        elif o.winner == o.a:
            w[i, j] += 1.0
        elif o.winner == o.b:
            w[j, i] += 1.0
        else:
            raise ValueError(f"winner {o.winner!r} is neither {o.a!r} nor {o.b!r}")
    n_ij = w + w.T
    precision = 1.0 / (prior_sd * prior_sd)
    s = np.zeros(n)
    # The log posterior is strictly concave (the prior makes it so), so Newton's method converges from 0;
    # a step-halving line search guards the first steps when one item has won everything.
    def log_post(x):
        d = x[:, None] - x[None, :]
        return float(np.sum(w * -np.logaddexp(0.0, -d)) - 0.5 * precision * x @ x)

    current = log_post(s)
    for _ in range(max_iter):
        p = _sigmoid(s[:, None] - s[None, :])  # p[i, j] = P(i beats j)
        grad = (w - n_ij * p).sum(axis=1) - precision * s
        hess = n_ij * p * (1.0 - p)  # off-diagonal of the negative Hessian, negated below
        neg_h = -hess
        np.fill_diagonal(neg_h, hess.sum(axis=1) + precision)
        step = np.linalg.solve(neg_h, grad)
        t = 1.0
        while t > 1e-6:
            candidate = s + t * step
            value = log_post(candidate)
            if value >= current - 1e-12:
                break
            t *= 0.5
        s, current = candidate, value
        if np.max(np.abs(t * step)) < tol:
            break
    p = _sigmoid(s[:, None] - s[None, :])
    hess = n_ij * p * (1.0 - p)
    neg_h = -hess
    np.fill_diagonal(neg_h, hess.sum(axis=1) + precision)
    cov = np.linalg.inv(neg_h) if n else np.zeros((0, 0))
    # The answers say nothing about a shift of all scores together; only the prior pins it, so the raw
    # covariance would give every score a floor of uncertainty (prior_sd / sqrt(n)) that no amount of
    # judging removes. The scores sum to zero at the optimum, so report the covariance of centred scores:
    # differences (and so ranks and active selection) are unchanged by this.
    if n:
        centre = np.eye(n) - 1.0 / n
        cov = centre @ cov @ centre
    return BTFit(
        keys=keys,
        scores=s,
        cov=cov,
        wins=w.sum(axis=1),
        comparisons=n_ij.sum(axis=1),
        prior_sd=prior_sd,
    )


def summarize_fit(fit: BTFit, labels: dict[str, str] | None = None, seed: int = 0) -> list[dict]:
    """The fit as a list of rows sorted best first: key, label, score, se, ci95, rank, rank_ci95, wins, comparisons."""
    labels = labels or {}
    se = fit.se
    rank_ci = fit.rank_intervals(seed=seed)
    rows = []
    for rank, key in enumerate(fit.order(), start=1):
        i = fit.index(key)
        rows.append(
            {
                "key": key,
                "label": labels.get(key, key),
                "score": round(float(fit.scores[i]), 4),
                "se": round(float(se[i]), 4),
                "ci95": [round(float(fit.scores[i] - _Z95 * se[i]), 4), round(float(fit.scores[i] + _Z95 * se[i]), 4)],
                "rank": rank,
                "rank_ci95": list(rank_ci[key]),
                "wins": float(fit.wins[i]),
                "comparisons": float(fit.comparisons[i]),
            }
        )
    return rows
