"""The small statistics the noise-aware policy needs: stdlib only, no scipy.

Owns: sample mean and standard deviation, the pooled standard deviation of several
groups, Student's t distribution (upper tail and quantile) and the normal distribution,
and the one test the harness uses to compare two sets of runs.

The test: a one-sided pooled-variance Student t-test, with the variance pooled from
every commit measured more than once (not only the two being compared).
Why not Welch's t-test: with the 1–4 runs a candidate gets, Welch's variance of each
arm rests on 0–3 degrees of freedom, its critical values are huge (t(0.95, 2) = 2.92)
and a 2σ improvement would almost never pass. Run-to-run noise comes from the seed,
data order and the machine, and is close to equal for neighbouring versions of the same
code, so one shared noise estimate is justified and gains degrees of freedom with every
repeated run the loop makes. Why not a z-test: early in a run the noise estimate rests
on 2–3 degrees of freedom, and treating it as known would keep too much noise; the t
distribution pays for that uncertainty and becomes the z-test as the estimate firms up.
Limits: a change that alters the noise itself (an unstable learning rate) breaks the
equal-variance assumption; its own runs are part of the pool, which softens but does
not remove this. Noise that grows with the value (timings) is tested on the log scale
(metric.noise = "relative"; Scale below). Runs are assumed independent given their seeds.

Accuracy: the regularised incomplete beta is evaluated by its continued fraction
(modified Lentz), to ~1e-12; quantiles by bisection, to ~1e-10. Tested against
tabulated values in tests/test_policy.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence


def mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def sd(xs: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (n - 1); None with fewer than two values."""
    if len(xs) < 2:
        return None
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def pooled_sd(groups: Iterable[Sequence[float]]) -> tuple[Optional[float], int]:
    """(pooled standard deviation, degrees of freedom) over groups with two or more values.

    Each group contributes (n - 1) degrees of freedom and its sum of squared deviations
    from its own mean; a group of one contributes nothing. (None, 0) when nothing does.
    """
    ss, df = 0.0, 0
    for g in groups:
        if len(g) >= 2:
            m = mean(g)
            ss += math.fsum((x - m) ** 2 for x in g)
            df += len(g) - 1
    return (math.sqrt(ss / df), df) if df else (None, 0)


# -- distributions ----------------------------------------------------------------------------
def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise.
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom (df = inf: the normal)."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    if math.isinf(df):
        return normal_sf(t)
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t (the t with P(T <= t) = q)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile needs 0 < q < 1, got {q}")
    lo, hi = -1.0, 1.0
    while 1.0 - t_sf(lo, df) > q:
        lo *= 2
    while 1.0 - t_sf(hi, df) < q:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1.0 - t_sf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2


# -- the comparison ------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Candidate runs against reference runs, with a shared noise estimate.

    `gain` is positive when the candidate is better in the metric's direction. `t` and
    `p_value` are the one-sided pooled t-test of "the candidate is better"; `interval` is
    the two-sided (1 - 2 * one_sided_alpha) confidence interval of the gain, so its lower
    end is above 0 exactly when the one-sided test passes at that level.
    """

    n: int
    n_ref: int
    mean: float
    mean_ref: float
    gain: float
    sd: Optional[float]
    df: int
    se: Optional[float]
    t: Optional[float]
    p_value: Optional[float]
    effect_sigma: Optional[float]

    def interval(self, one_sided_alpha: float) -> Optional[tuple[float, float]]:
        if self.se is None or not self.df:
            return None
        half = t_ppf(1 - one_sided_alpha, self.df) * self.se
        return (self.gain - half, self.gain + half)


def compare(runs: Sequence[float], ref_runs: Sequence[float], noise_sd: Optional[float], noise_df: int,
            lower_is_better: bool) -> Comparison:
    """Compare two sets of runs with the pooled noise estimate (`noise_sd`, `noise_df`).

    With a noise estimate of exactly zero (a deterministic metric) any strict gain is
    certain: t = ±inf and p = 0 or 1. Without one (`noise_sd` None) t and p are None.
    """
    m, m_ref = mean(runs), mean(ref_runs)
    gain = m_ref - m if lower_is_better else m - m_ref
    if noise_sd is None or noise_df <= 0:
        return Comparison(len(runs), len(ref_runs), m, m_ref, gain, None, 0, None, None, None, None)
    se = noise_sd * math.sqrt(1 / len(runs) + 1 / len(ref_runs))
    if se == 0:
        t = math.inf if gain > 0 else (-math.inf if gain < 0 else 0.0)
        p = 0.0 if gain > 0 else (1.0 if gain < 0 else 0.5)
        effect = math.inf if gain > 0 else (-math.inf if gain < 0 else 0.0)
    else:
        t = gain / se
        p = t_sf(t, noise_df)
        effect = gain / noise_sd
    return Comparison(len(runs), len(ref_runs), m, m_ref, gain, noise_sd, noise_df, se, t, p, effect)


def compare_to_level(runs: Sequence[float], level: float, level_var: float, n_ref: int, noise_sd: float,
                     noise_df: int, lower_is_better: bool) -> Comparison:
    """Compare runs with a reference known as an estimate (`level`, variance `level_var`).

    The same one-sided t-test as `compare`, with the reference's variance taken from its
    estimate instead of noise_sd² / n_ref: with the reference a plain mean of n_ref runs
    (level_var = noise_sd² / n_ref) the two agree. `n_ref` is reported, not used. Needs a
    positive noise estimate (without one, or with a deterministic metric, use `compare`).
    """
    m = mean(runs)
    gain = level - m if lower_is_better else m - level
    se = math.sqrt(noise_sd ** 2 / len(runs) + max(0.0, level_var))
    t = gain / se
    return Comparison(len(runs), n_ref, m, level, gain, noise_sd, noise_df, se, t, t_sf(t, noise_df), gain / noise_sd)


# -- the scale of the test (metric.noise) --------------------------------------------------------
# A timing's spread grows with the time itself: 60 ms jitters by milliseconds, 2 ms by a tenth
# of that. On the log scale such noise is the same everywhere, so the tests above apply to
# log(values) unchanged; a Scale carries values there and results back to the metric's units.
@dataclass(frozen=True)
class Scale:
    relative: bool = False  # metric.noise = "relative": the test works on log(metric)

    NOTE = "relative (std on the log scale)"  # what the evidence says when the scale is relative

    @classmethod
    def of(cls, noise: str) -> "Scale":
        return cls(noise == "relative")

    @property
    def label(self) -> str:
        return " (log scale)" if self.relative else ""

    def judged(self, value: float) -> float:
        """A metric value on the scale the test works on (relative: needs value > 0)."""
        return math.log(value) if self.relative else value

    def units(self, value: float) -> float:
        """A value of the judged scale back in metric units (relative: a geometric mean)."""
        return math.exp(value) if self.relative else value

    def gain(self, judged_gain: float, judged_ref: float, lower_is_better: bool) -> float:
        """A gain on the judged scale as a gain in metric units against the reference units(judged_ref).

        Monotone in judged_gain, so the ends of an interval map to the ends of an interval.
        """
        if not self.relative:
            return judged_gain
        ref = math.exp(judged_ref)
        return ref * (1 - math.exp(-judged_gain)) if lower_is_better else ref * (math.exp(judged_gain) - 1)
