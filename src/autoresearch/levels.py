"""Levels: what each commit of a tag truly scores, estimated from every run the ledger holds.

Owns: the estimate (mean and variance) of each commit's true metric that the `confirm`
policy judges candidates against. Guarantees: a pure function of the tag's finished
experiments and measurements (a decision re-made after a crash gives the same answer),
stdlib only, and no experiment's own runs are used to build the reference it is judged by.

Why not the incumbent's mean: in a ratchet the incumbent is the candidate that won, and
the runs that made it win were lucky more often than not (the winner's curse). Its mean
flatters it by about one standard error, so every later candidate, null or real, looks a
standard error worse than it is: real gains are thrown away and the run stalls. Re-running
the incumbent enough to wash that out costs more runs than the night has.

The model (empirical Bayes, after Efron's "Tweedie's formula and selection bias", 2011):
- every commit has a true level; a child's level is its parent's minus an effect d, and
  the effects of a tag's proposals are draws from one distribution g (most ideas do
  nothing measurable; some help; some hurt). Runs scatter around the true level with the
  measured noise sd.
- g is estimated from the first run of every judged proposal (those are never selected:
  every proposal gets one), by maximum likelihood over a grid of effects from -6 to +6
  noise-sds (EM, the Kiefer-Wolfowitz estimator), shrunk towards a wide default with the
  weight of a few proposals so that an early estimate on little data stays humble.
- replaying the tag in order: the baseline's runs and every re-measure of a commit are
  plain measurements of its level; a kept child's level is its parent's minus d, with d's
  posterior under g given the child's runs (this is where the luck of a winner is taken
  back: a result that g says is mostly noise is shrunk towards its parent); a discarded
  child is evidence about its parent's level (most children change nothing), weighed by
  the same posterior. Each posterior is a mixture over the grid, summarised by its mean and
  variance (moment matching) before the next step.
Two passes: the first with the default g to place every first run against its parent's
estimate, then g is fitted, then the replay is done again with it.

Effects beyond the grid (a crash that still printed a number, a wild idea) fall to a wide
component of g that spreads them over +-20 sd: such a child tells nothing of its parent's
level, and a kept one is known by its own runs alone.
Limits: the noise sd is taken as known (the policy's t-test pays for its
uncertainty); experiments judged concurrently against an older incumbent still count as
children of the commit they were built on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import mul
from typing import Any, Iterable, Optional

from .states import Kind, Status

GRID = [x / 2 for x in range(-12, 13)]  # effects in noise sds, positive = better
ZERO = GRID.index(0.0)
WIDE = len(GRID)  # g's last weight: effects too large for the grid (a broken run, a wild idea)
WIDE_RANGE = 40.0  # ...spread evenly over this many noise sds: such a child says nothing of its parent
PRIOR_WEIGHT = 5.0  # the default g counts as this many proposals


@dataclass
class Level:
    mean: float  # in "badness" units: the metric, sign-flipped when higher is better
    var: float  # posterior variance of the true level, in the same units squared
    runs: int = 0  # plain measurements of this commit folded in

    def measured(self, y: float, noise_var: float) -> None:
        v = 1.0 / (1.0 / self.var + 1.0 / noise_var)
        self.mean, self.var, self.runs = v * (self.mean / self.var + y / noise_var), v, self.runs + 1


def default_prior() -> list[float]:
    """Half the proposals change nothing; most others move it either way with sd 2 noise-sds."""
    w = [math.exp(-0.5 * (d / 2.0) ** 2) for d in GRID]
    s = sum(w)
    g = [0.45 * x / s for x in w] + [0.05]
    g[ZERO] += 0.5
    return g


def fit_prior(first_looks: list[tuple[float, float]], iterations: int = 40) -> list[float]:
    """g from (observed effect, its sd) pairs in noise-sd units: EM for the grid's weights."""
    base = default_prior()
    if not first_looks:
        return base
    rows = [[_pdf((d - x) / s) / s for x in GRID] + [1.0 / WIDE_RANGE] for d, s in first_looks]
    columns = list(zip(*rows))
    g, n = base[:], len(rows)
    for _ in range(iterations):
        # E step: each look's total likelihood under g; M step: each grid point's share of the
        # looks, g_k * sum_r L_rk / L_r. map(mul) keeps the inner loops in C: the same sums.
        inv = [1.0 / (sum(map(mul, g, row)) or 1.0) for row in rows]
        g = [(gk * sum(map(mul, col, inv)) + PRIOR_WEIGHT * b) / (n + PRIOR_WEIGHT)
             for gk, col, b in zip(g, columns, base)]
    return g


def posterior_effect(parent: Level, y: float, runs: int, sd: float, g: list[float]) -> list[float]:
    """Weights over GRID (and WIDE, last) of the effect of a child whose `runs` runs average `y`."""
    s = math.sqrt(parent.var + sd * sd / runs)
    w = [gi * _pdf((parent.mean - d * sd - y) / s) / s for gi, d in zip(g, GRID)]
    w.append(g[WIDE] / (WIDE_RANGE * sd))
    tot = sum(w)
    return [x / tot for x in w]


def child_level(parent: Level, y: float, runs: int, sd: float, g: list[float]) -> Level:
    """The level of a kept child: its parent's minus d, combined with its own runs."""
    noise = sd * sd / runs
    w = posterior_effect(parent, y, runs, sd, g)
    k = noise / (parent.var + noise)
    means = [(parent.mean - d * sd) * k + y * (1 - k) for d in GRID]
    var = parent.var * noise / (parent.var + noise)
    return _moments(w, means + [y], [var] * len(GRID) + [noise], runs)  # WIDE: only its own runs tell


def parent_given_child(parent: Level, y: float, runs: int, sd: float, g: list[float]) -> Level:
    """The parent's level after a discarded child whose runs average `y`."""
    noise = sd * sd / runs
    w = posterior_effect(parent, y, runs, sd, g)
    k = parent.var / (parent.var + noise)
    means = [parent.mean + k * (y + d * sd - parent.mean) for d in GRID]
    var = parent.var * noise / (parent.var + noise)
    return _moments(w, means + [parent.mean], [var] * len(GRID) + [parent.var], parent.runs)  # WIDE: no news


def estimate(experiments: Iterable[Any], runs: dict[int, list[tuple[str, float]]], sd: float, lower: bool,
             judged_id: Optional[int] = None) -> tuple[dict[str, Level], list[float]]:
    """(level of every commit, fitted g) from the tag's history.

    `experiments`: the tag's Experiment rows in id order. `runs`: experiment id -> its usable
    runs as (commit, metric) in the order taken. Experiments after `judged_id` are ignored;
    the judged one contributes only its re-measures of other commits, never its own runs, and
    neither does an earlier experiment of the very same commit (identical code proposed again,
    researcher.same_code): its runs are the judged one's runs now, not evidence about the reference.
    """
    exps = [e for e in experiments if judged_id is None or e.id <= judged_id]
    judged_commit = next((e.commit for e in exps if e.id == judged_id), None)
    sign = 1.0 if lower else -1.0
    looks: list[tuple[float, float]] = []
    levels = _replay(exps, runs, sd, sign, default_prior(), judged_id, looks, judged_commit)
    g = fit_prior(looks)
    return _replay(exps, runs, sd, sign, g, judged_id, None, judged_commit), g


def _replay(exps: list[Any], runs: dict[int, list[tuple[str, float]]], sd: float, sign: float, g: list[float],
            judged_id: Optional[int], looks: Optional[list[tuple[float, float]]],
            judged_commit: Optional[str] = None) -> dict[str, Level]:
    levels: dict[str, Level] = {}
    noise_var = sd * sd
    for e in exps:
        mine = runs.get(e.id, [])
        for commit, value in mine:  # re-measures of other commits are plain measurements
            if commit != e.commit and commit in levels:
                levels[commit].measured(sign * value, noise_var)
        own = [sign * v for c, v in mine if c == e.commit]
        if not own or e.id == judged_id or (judged_commit and e.commit == judged_commit):
            continue
        if e.kind == Kind.BASELINE or e.parent not in levels:
            if e.status == Status.KEEP:  # a starting point: its runs are all there is to know of it
                if e.commit not in levels:
                    levels[e.commit], own = Level(own[0], noise_var, 1), own[1:]
                for y in own:
                    levels[e.commit].measured(y, noise_var)
            continue
        if e.status not in (Status.KEEP, Status.DISCARD):
            continue  # crashes, violations, interruptions: no evidence about a level
        parent = levels[e.parent]
        if looks is not None:
            looks.append(((parent.mean - own[0]) / sd, math.sqrt(1.0 + parent.var / noise_var)))
        y = sum(own) / len(own)
        if e.status == Status.KEEP:
            levels[e.commit] = child_level(parent, y, len(own), sd, g)
        else:
            levels[e.parent] = parent_given_child(parent, y, len(own), sd, g)
    return levels


def _moments(w: list[float], means: list[float], variances: list[float], runs: int) -> Level:
    m = sum(wi * mi for wi, mi in zip(w, means))
    v = sum(wi * (vi + (mi - m) ** 2) for wi, mi, vi in zip(w, means, variances))
    return Level(m, v, runs)


def _pdf(z: float) -> float:
    return math.exp(-0.5 * z * z) if abs(z) < 40 else 0.0
