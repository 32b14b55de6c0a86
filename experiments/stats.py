"""Statistics over seeds: per-variant summaries and pairwise comparisons.

A variant's score is a random variable of its training seed (initialization, batch
order, dropout and augmentation draws).  Two variants are compared by Welch's t-test
over their per-seed test macro-F1 (``scipy.stats.ttest_ind(equal_var=False)``) and the
95% confidence interval of the difference of means that it implies (one interval per
comparison, not adjusted).  A study makes several comparisons, so their p-values are
Holm-adjusted within the study (:func:`holm`, statsmodels' ``multipletests``), and a
difference is an *effect* only when its Holm-adjusted p is below 0.05.  With fewer than
two seeds on a side there is no estimate of seed noise, so no interval and no effect.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE   # family-wise error rate within a study (Holm)


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float          # sample SD (ddof=1); nan with one seed
    values: tuple       # per seed, in seed order

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": _finite(self.std), "values": list(self.values)}


def summarize(values) -> Summary:
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return Summary(0, math.nan, math.nan, ())
    std = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
    return Summary(int(v.size), float(np.mean(v)), std, tuple(float(x) for x in v))


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    mean_diff: float     # mean(a) - mean(b)
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    significant: bool    # an effect: Holm-adjusted p < ALPHA (before holm(): the interval excludes 0)
    n_a: int
    n_b: int
    df: float | None = None        # Welch-Satterthwaite degrees of freedom
    p_holm: float | None = None    # Holm-adjusted within the study (see holm())
    ci_excludes_0: bool = False    # the per-comparison 95% interval excludes 0 (unadjusted)

    def as_dict(self) -> dict:
        return asdict(self)


def welch(a_id: str, a_values, b_id: str, b_values, confidence: float = CONFIDENCE) -> Comparison:
    """Welch's t-test of mean(a) - mean(b) over seeds, with its ``confidence`` interval."""
    from scipy import stats

    a, b = np.asarray(list(a_values), float), np.asarray(list(b_values), float)
    diff = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2:
        return Comparison(a_id, b_id, diff, None, None, None, False, int(a.size), int(b.size))
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no seed noise at all: t is undefined
        exact = bool(diff != 0)
        return Comparison(a_id, b_id, diff, diff, diff, 0.0 if exact else 1.0, exact, int(a.size), int(b.size),
                          ci_excludes_0=exact)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence)
    low, high = float(ci.low), float(ci.high)
    excludes = bool(low > 0 or high < 0)
    return Comparison(a_id, b_id, diff, low, high, float(res.pvalue), excludes,
                      int(a.size), int(b.size), df=float(res.df), ci_excludes_0=excludes)


def holm(comparisons: list[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """The comparisons of one study with Holm-adjusted p-values (``p_holm``, statsmodels'
    ``multipletests(method="holm")`` over the comparisons that have a p-value), and
    ``significant`` redefined as ``p_holm < alpha``: the family-wise error rate of the
    study's effects stays at ``alpha``.  Comparisons without a p-value (a side with one
    seed) are left out of the family and stay non-effects."""
    from dataclasses import replace

    from statsmodels.stats.multitest import multipletests

    tested = [i for i, c in enumerate(comparisons) if c.p_value is not None]
    out = [replace(c, significant=False, p_holm=None) for c in comparisons]
    if not tested:
        return out
    _, adjusted, _, _ = multipletests([comparisons[i].p_value for i in tested], alpha=alpha, method="holm")
    for i, p in zip(tested, adjusted):
        out[i] = replace(comparisons[i], p_holm=float(p), significant=bool(p < alpha))
    return out


def pairwise(ids: list[str], values: dict[str, list]) -> list[Comparison]:
    """Every pair (a before b in ``ids``) of variants that have at least one run, Holm-adjusted
    together (they are one study's comparisons)."""
    have = [i for i in ids if values.get(i)]
    return holm([welch(a, values[a], b, values[b]) for k, a in enumerate(have) for b in have[k + 1:]])


def mean_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The t-interval of the mean over seeds (None with fewer than two values)."""
    from scipy import stats

    v = np.asarray(list(values), float)
    if v.size < 2:
        return None
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean()) - half, float(v.mean()) + half


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
