"""`confirm`: the noise-aware acceptance policy. A change is kept only when its runs say so.

Owns: calibrating the run-to-run noise on the baseline, the sequential confirmation of
a candidate, re-measuring the incumbent, and the evidence of every verdict. Like every
policy it runs nothing: it returns `more_runs` and the loop measures them into the
ledger's `measurements` table. A verdict is a pure function of those measurements, so a
decision interrupted half way resumes exactly where it was.

The rule. "t" and "p" are a one-sided Student t-test of the candidate's runs against the
incumbent's *estimated level* (levels.py: an empirical-Bayes estimate from every run of the
tag, which takes back the luck that got the incumbent kept), with the noise sd pooled over
every commit of the tag measured more than once (stats.compare_to_level):
- baseline: measured on `policy.calibration_runs` seeds (seed, seed+1, ...); their spread
  is the first noise estimate, recorded as an event and as the baseline's evidence.
- seed-only: a patch that only changes a seed (every differing constant under a seed-like
  name or call) is discarded at once (integrity.seed_only_change).
- incumbent re-measure: one fresh run before judging when the noise rests on fewer than
  calibration_runs - 1 degrees of freedom, or when the incumbent's level is known less
  well than one run would tell (kept on thin evidence, its children not yet in).
- look 1 (one run): discard unless t >= 0.9 (about one standard error better: not worth
  confirming otherwise). Keep at once only with a clear margin, p <= alpha * 0.4, and only
  when the result is not too good to be true.
- looks 2..max_runs (fresh seeds): keep when p <= alpha; discard when t < 1.4 (the
  confirmation runs took too much of the gain away) or max_runs is reached; else one more.
  Every keep is a test at level alpha or stricter; with several looks the chance that a
  null change is kept somewhere along the way is what benchmarks/noise_gate.py measures
  (about 4% at alpha 0.05).
- too good to be true (more than `too_good_sigma` noise-sigmas better, or better than
  `metric.floor`): never kept before two confirmation runs; a mean beyond the floor is
  discarded as impossible.
- a metric with measured noise exactly 0 is deterministic: strictly better is kept.
- a confirmation run that crashes or times out discards the candidate (not reproducible).
- metric.noise = "relative" (timings: the spread grows with the value): all of the above on
  log(metric), so a 2 ms program is not judged with the noise of the 60 ms one it replaced;
  the evidence is given back in metric units (geometric means) and `std` is on the log scale.
- paired decisions (policy.paired; "auto": with relative noise, i.e. timings, whose noise is
  the machine's load and drifts): the candidate is judged against the incumbent re-run side
  by side, interleaved in pairs (pairing.py), by a one-sided t-test on the paired differences
  with their sd pooled over the tag; the incumbent's older runs and level are context only.
  Where the runs' CPU time / wall time is on record, each pair is weighted by the noise of its
  class (busy or quiet machine, even or uneven load between its two runs: pairing.pair_class,
  each class's sd pooled over the tag) — on a shared machine a quiet pair tells several times
  more than a busy one. Calibration takes twice `calibration_runs` runs (back to back, they are
  A/A pairs). Look 1 (one pair): discard when clearly slower than the incumbent beside it
  (t < -1). Never kept on one pair (a load switching between its two runs makes one difference
  huge): from two pairs on, keep when p <= 0.4 * alpha (many looks share the level), the test
  without the most favourable pair still gives p <= alpha, and the plain mean of the pairs
  favours the candidate too (the weights decide how sure, never the direction); discard when
  t < 0 at look 2, t < 0.5 later, or after 3 * `max_runs` pairs; else one more pair, in a
  drawn order. Tuned on benchmarks/drift.py's real runs (docs/policy.md).
- every verdict records the machine's load around its runs (load average, CPU time / wall
  time, from the measurements' `load`) and says when the baseline's noise was calibrated
  under other load than now (evidence `conditions`).

The thresholds were chosen on the benchmark (null changes kept <= 5%, extra runs <= 30%,
then the most 2-sd gains kept); docs/policy.md has the figures and what was tried.
Not covered: noise that changes with the change itself (see stats.py), drift of the
machine over time in unpaired decisions (metric.noise = "absolute" unless policy.paired =
"always"), and metrics whose noise is not roughly symmetric.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from . import levels, noise, pairing, stats
from .config import Config
from .integrity import seed_only_change
from .ledger import Experiment, Ledger
from .noise import NOT_POSITIVE
from .states import Kind, Status
from .verdict import Verdict

TEST = "pooled t (one-sided)"
TEST_LEVEL = "t (one-sided) against the incumbent's estimated level (empirical Bayes)"


class Confirm:
    name = "confirm"
    screen_t = 0.9  # look 1: about one standard error better earns confirmation runs
    futility_t = 1.4  # looks 2+: below this the confirmation runs took too much of the gain away
    clear_fraction = 0.4  # a one-run keep needs p <= alpha * clear_fraction
    unknown_level = 0.9  # re-measure an incumbent whose level is known less well than ~one run tells
    robust_factor = 1.0  # paired: without its best pair a keep must still reach p <= alpha * robust_factor
    # (2.0 before: drift.py's real runs kept 4.7% of nulls, mostly on one lucky pair; 1.0: ~2%, power the same)
    paired_screen_t = -1.0  # paired look 1 (one pair): below this (clearly slower), discarded
    # (0.0 before: a one-pair screen lost ~15% of real 18% speed-ups when a pair's noise is about the effect)
    paired_futility_2 = 0.0  # paired look 2 (two pairs): below this (no better at all), discarded (was 0.5)
    paired_futility_t = 0.5  # paired looks 3+: below this, discarded
    pairs_per_run = 3  # paired: at most max_runs * pairs_per_run pairs...
    max_pairs = 18  # ...and never more than this: the loop asks a policy at most 20 times per decision
    paired_keep = 0.4  # paired: each look keeps at p <= alpha * paired_keep (many looks share alpha)

    def __init__(self, cfg: Config):
        p = cfg.policy
        self.lower = cfg.lower_is_better()
        self.alpha, self.max_runs, self.too_good = p.alpha, max(2, p.max_runs), p.too_good_sigma
        self.floor = cfg.metric.floor
        self.scale = stats.Scale.of(cfg.metric.noise)
        self.paired = pairing.enabled(p.paired, self.scale.relative)
        # paired: back-to-back calibration runs are the first A/A pairs of the difference's noise
        self.calibration_runs = max(1, p.calibration_runs) * (2 if self.paired and p.calibration_runs >= 2 else 1)

    # -- the decision --------------------------------------------------------------------------
    def decide(self, candidate: Experiment, incumbent: Optional[Experiment], ledger: Ledger) -> Verdict:
        if incumbent is None or incumbent.commit is None:
            return self._calibrate(candidate, ledger)
        if seed_only_change(candidate.patch):
            return Verdict(False, "only a seed changed: a different draw of the noise, not an improvement",
                           {"test": "seed-only patch", "runs": 1, "seeds": [candidate.seed], "mean": candidate.metric,
                            "rule": "seed-only"})
        by_commit = noise.runs_by_commit(ledger, candidate.tag, self.scale)
        mine, failed = noise.runs(by_commit, candidate.commit)
        if failed:
            f = failed[0]
            return Verdict(False, f"a confirmation run (seed {f['seed']}) ended `{f['status']}`: not reproducible"
                           + (f" ({NOT_POSITIVE})" if f["status"] == "not_positive" else ""),
                           {"test": TEST, "runs": len(mine), "seeds": [m["seed"] for m in mine], "rule": "failed rerun"})
        if self.paired:
            return self._decide_paired(candidate, incumbent, ledger, by_commit)
        ref, _ = noise.runs(by_commit, incumbent.commit)
        sd, df = noise.pooled(by_commit)
        level = self._level(ledger, candidate, incumbent, by_commit, sd)
        want = self._incumbent_runs(candidate, incumbent, by_commit, level, sd, df)
        if want:
            return Verdict(False, "re-measuring the incumbent", more_runs=want)
        if not ref:
            return Verdict(False, f"the incumbent #{incumbent.id} has no usable run to compare with (its re-runs "
                                  "failed): discarded", {"test": TEST, "runs": len(mine), "rule": "no reference"})
        values = [m["metric"] for m in mine]
        if level is None or not sd:
            c = stats.compare(values, [m["metric"] for m in ref], sd, df, self.lower)
        else:
            c = stats.compare_to_level(values, level.mean if self.lower else -level.mean, level.var, len(ref),
                                       sd, df, self.lower)
        ev = self._evidence(c, mine, ref, level)
        if cond := self._conditions(ledger, candidate, mine):
            ev["conditions"] = cond
        n = len(mine)
        if c.t is None:
            return Verdict(False, "no measure of the noise (no commit was run twice): discarded; set "
                                  "policy.calibration_runs >= 2", ev | {"rule": "no noise estimate"})
        if sd == 0:
            ev["test"] = "deterministic (measured noise is 0)"
            if self._beyond_floor(c.mean):
                return Verdict(False, f"better than metric.floor {self.floor:g}: impossible, check the evaluation", ev)
            if c.gain > 0:
                return Verdict(True, f"better by {ev['gain']:.6g} and the metric is deterministic", ev)
            return Verdict(False, f"not better ({ev['mean']:.6g} vs {ev['incumbent_mean']:.6g}; the metric is "
                                  "deterministic)", ev)
        too_good = (c.effect_sigma is not None and c.effect_sigma > self.too_good) or self._beyond_floor(c.mean)
        if n == 1:
            if c.t < self.screen_t:
                return self._final(False, ev, "screen", f"not better by enough to confirm "
                                   f"({_sig(c)}; confirming needs t >= {self.screen_t:g})", ledger, candidate)
            if not too_good and c.p_value <= self.alpha * self.clear_fraction:
                return self._final(True, ev, "clear margin", f"better by a clear margin on one run ({_sig(c)})",
                                   ledger, candidate)
            return Verdict(False, "confirming on fresh seeds", ev, self._more(candidate, mine))
        if too_good and n < 3:
            return Verdict(False, "too good to be true: held for confirmation", ev | {"rule": "held"},
                           self._more(candidate, mine))
        if self._beyond_floor(c.mean):
            return self._final(False, ev, "floor", f"mean {ev['mean']:.6g} is better than metric.floor {self.floor:g}: "
                               "impossible, check the evaluation", ledger, candidate)
        if c.p_value <= self.alpha:
            return self._final(True, ev, "confirmed", f"confirmed over {n} runs ({_sig(c)})", ledger, candidate)
        if n >= self.max_runs or c.t < self.futility_t:
            why = f"after {n} runs" + (" (policy.max_runs)" if n >= self.max_runs else "")
            return self._final(False, ev, "not confirmed", f"not confirmed {why} ({_sig(c)})", ledger, candidate)
        return Verdict(False, "confirming on fresh seeds", ev, self._more(candidate, mine))

    # -- paired: against the incumbent re-run side by side (pairing.py) ---------------------------
    def _decide_paired(self, candidate: Experiment, incumbent: Experiment, ledger: Ledger,
                       by_commit: dict[str, list[dict[str, Any]]]) -> Verdict:
        cand, inc = candidate.commit, incumbent.commit
        here = sorted((m for ms in by_commit.values() for m in ms if m["experiment_id"] == candidate.id
                       and m["commit"] in (cand, inc)), key=lambda m: m["id"])
        bad = [m for m in here if m["commit"] == inc and not noise.usable(m) and m["status"] != Status.INTERRUPTED]
        if bad:
            return Verdict(False, f"the incumbent's side-by-side run (seed {bad[0]['seed']}) ended "
                                  f"`{bad[0]['status']}`: nothing to pair with, discarded",
                           {"test": PAIRED_TEST + self.scale.label, "paired": True, "rule": "failed rerun"})
        done, waiting = pairing.pairs([m for m in here if noise.usable(m)], cand, inc, self.lower)
        seeds = {c: {m["seed"] for m in by_commit.get(c, [])} for c in (cand, inc)}
        fresh = {c: (c, _fresh(seeds[c], candidate.seed, 1)[0]) for c in (cand, inc)}
        if waiting is not None:  # its partner, right after it
            partner = inc if waiting["commit"] == cand else cand
            return Verdict(False, "re-measuring the incumbent side by side" if partner == inc
                           else "confirming side by side", more_runs=[fresh[partner]])
        if not done:
            return Verdict(False, "re-measuring the incumbent side by side", more_runs=[fresh[inc]])
        diffs = [p.diff for p in done]
        sd, df, classes, quiet = self._pair_noise(ledger, candidate.tag, by_commit)
        run_sd, _ = noise.pooled(by_commit)
        flags = [pairing.pair_class(p.candidate, p.incumbent, quiet) for p in done]
        weighted = classes.usable(flags)
        n, mean_d = len(done), stats.mean(diffs)
        if sd is None:
            ev = self._paired_evidence(done, sd, df, ledger, candidate, incumbent, by_commit)
            return Verdict(False, "no measure of the noise of a paired difference: discarded; set "
                                  "policy.calibration_runs >= 2", ev | {"rule": "no noise estimate"})
        if sd == 0 and not run_sd:
            ev = self._paired_evidence(done, sd, df, ledger, candidate, incumbent, by_commit)
            ev["test"] = "deterministic (measured noise is 0)"
            if mean_d > 0:
                return self._final(True, ev, "deterministic", f"better by {ev['gain']:.6g} and the metric is "
                                   "deterministic", ledger, candidate)
            return self._final(False, ev, "deterministic", "not better (the metric is deterministic)", ledger,
                               candidate)
        if weighted:
            est, se, t, p, test_df = pairing.weighted_test(diffs, flags, classes)
        else:
            est, t, p = pairing.paired_test(diffs, sd, df)
            se, test_df = sd / math.sqrt(n), df
        ev = self._paired_evidence(done, sd, df, ledger, candidate, incumbent, by_commit, (est, se, test_df))
        ev |= {"t": _finite(t), "p_value": p}
        if weighted:
            ev["test"] = WEIGHTED_TEST + self.scale.label
            noisy = sum(k != 0 for k in flags)
            ev["weighted"] = {"noisy_pairs": noisy, "classes": classes.as_dict(), "df": round(test_df, 1),
                              "quiet_cpu_per_wall": quiet, "mean_unweighted": mean_d}
            for q, k in zip(ev["pairs"], flags):
                q["class"] = pairing.CLASSES[k]
        sig = f"{_finite(ev['effect_sigma']) or 0:+.2f}σ, p={p:.3g}, {n} pair{'s' if n > 1 else ''} side by side" \
            + (f", {noisy} busy or uneven" if weighted else "")
        too_good = (ev["effect_sigma"] is not None and ev["effect_sigma"] > self.too_good) or \
            self._beyond_floor(stats.mean([q.candidate["metric"] for q in done]))
        more = pairing.next_pair(candidate.id, n, fresh[cand], fresh[inc])
        if n == 1:
            if t < self.paired_screen_t:
                return self._final(False, ev, "screen", f"slower than the incumbent run beside it ({sig}; "
                                   f"confirming needs t >= {self.paired_screen_t:g})", ledger, candidate)
            return Verdict(False, "confirming side by side", ev, more)
        if too_good and n < 3:
            return Verdict(False, "too good to be true: held for confirmation", ev | {"rule": "held"}, more)
        if self._beyond_floor(stats.mean([q.candidate["metric"] for q in done])):
            return self._final(False, ev, "floor", f"mean {ev['mean']:.6g} is better than metric.floor "
                               f"{self.floor:g}: impossible, check the evaluation", ledger, candidate)
        passed = p <= self.alpha * self.paired_keep
        if passed and mean_d <= 0:  # the weights decide how sure, never the direction
            passed = False
            ev["unweighted_not_better"] = True
        if passed:
            if weighted:  # the pair that adds the most to the weighted mean
                best = max(range(n), key=lambda i: diffs[i] / classes.var(flags[i]))
                _, _, _, p2, _ = pairing.weighted_test(diffs[:best] + diffs[best + 1:], flags[:best] + flags[best + 1:],
                                                    classes)
            else:
                _, _, p2 = pairing.paired_test(sorted(diffs)[:-1], sd, df)
            ev["p_without_best_pair"] = p2
            if p2 <= self.alpha * self.robust_factor:
                return self._final(True, ev, "confirmed", f"confirmed side by side ({sig})", ledger, candidate)
        most = min(self.max_pairs, self.max_runs * self.pairs_per_run)
        if n >= most or t < (self.paired_futility_2 if n == 2 else self.paired_futility_t):
            why = f"after {n} pairs" + (f" (at most {most}: 3 x policy.max_runs)" if n >= most else "")
            if ev.get("unweighted_not_better"):
                why += ", the plain mean of the pairs not better"
            elif p <= self.alpha * self.paired_keep:
                why += ", resting on one pair"
            return self._final(False, ev, "not confirmed", f"not confirmed {why} ({sig})", ledger, candidate)
        return Verdict(False, "confirming side by side", ev, more)

    def _pair_noise(self, ledger: Ledger, tag: str, by_commit: dict[str, list[dict[str, Any]]]
                    ) -> tuple[Optional[float], int, pairing.ClassNoise, Optional[float]]:
        """The noise of one paired difference, pooled over the tag's paired decisions and its
        calibrations: (sd, df) over all pairs, each class's (pairing.pair_class), and the program's
        quiet CPU share that tells the classes apart."""
        by_exp: dict[int, list[dict[str, Any]]] = {}
        for ms in by_commit.values():
            for m in ms:
                if noise.usable(m):
                    by_exp.setdefault(m["experiment_id"], []).append(m)
        quiet = pairing.quiet_share(m for ms in by_exp.values() for m in ms)
        decisions, calibration, flagged, aa = [], [], [], []
        for e in ledger.experiments(tag):
            runs = sorted(by_exp.get(e.id or -1, []), key=lambda m: m["id"])
            if e.kind == Kind.BASELINE:
                mine = [m for m in runs if m["commit"] == e.commit]
                calibration.append([m["metric"] for m in mine])
                aa += [(a["metric"] - b["metric"], pairing.pair_class(a, b, quiet)) for a, b in zip(mine[0::2], mine[1::2])]
                continue
            other = next((m["commit"] for m in runs if m["commit"] != e.commit), None)
            if other:
                got = pairing.pairs(runs, e.commit, other, self.lower)[0]
                decisions.append([p.diff for p in got])
                flagged.append([(p.diff, pairing.pair_class(p.candidate, p.incumbent, quiet)) for p in got])
        sd, df = pairing.pair_noise(decisions, calibration)
        return sd, df, pairing.class_noise(flagged, aa), quiet

    def _paired_evidence(self, done: list[pairing.Pair], sd: Optional[float], df: int, ledger: Ledger,
                         candidate: Experiment, incumbent: Experiment, by_commit: dict[str, list[dict[str, Any]]],
                         estimate: Optional[tuple[float, float, int]] = None) -> dict[str, Any]:
        """`estimate`: (mean difference, its standard error, degrees of freedom) of the test, when
        it differs from the plain mean of the pairs with `sd` (noisy pairs weighted less)."""
        units = self.scale.units
        c_vals, i_vals = [p.candidate["metric"] for p in done], [p.incumbent["metric"] for p in done]
        mean_d, ref = stats.mean([p.diff for p in done]), stats.mean(i_vals)
        if estimate is None and sd:
            estimate = (mean_d, sd / math.sqrt(len(done)), df)
        if estimate is not None:
            mean_d = estimate[0]
        earlier = [m for m in noise.runs(by_commit, incumbent.commit)[0] if m["experiment_id"] != candidate.id]
        ev: dict[str, Any] = {
            "test": PAIRED_TEST + self.scale.label, "paired": True, "runs": len(done),
            "mean": units(stats.mean(c_vals)),
            "seeds": [p.candidate["seed"] for p in done], "incumbent_runs": len(done),
            "incumbent_seeds": [p.incumbent["seed"] for p in done], "incumbent_mean": units(ref),
            "gain": self.scale.gain(mean_d, ref, self.lower), "std": sd, "df": df, "alpha": self.alpha,
            "effect_sigma": _finite(mean_d / (sd / math.sqrt(2))) if sd else None,
            "pairs": [{"first": p.first, "candidate": units(p.candidate["metric"]),
                       "incumbent": units(p.incumbent["metric"]), "seeds": [p.candidate["seed"], p.incumbent["seed"]],
                       "cpu_per_wall": [(p.candidate.get("load") or {}).get("cpu_per_wall"),
                                        (p.incumbent.get("load") or {}).get("cpu_per_wall")]} for p in done],
            # context, not the reference: the incumbent's runs taken at other times
            "incumbent_earlier_runs": len(earlier),
            "incumbent_earlier_mean": units(stats.mean([m["metric"] for m in earlier])) if earlier else None,
        }
        if self.scale.relative:
            ev["noise"] = stats.Scale.NOTE + "; std: of one paired difference"
        if estimate is not None and estimate[1]:
            half = stats.t_ppf(1 - self.alpha, estimate[2]) * estimate[1]
            ev["interval"] = [self.scale.gain(mean_d - half, ref, self.lower), self.scale.gain(mean_d + half, ref,
                                                                                                self.lower)]
            ev["confidence"] = 1 - 2 * self.alpha
        if load := pairing.load_summary([p.candidate for p in done] + [p.incumbent for p in done]):
            ev["load"] = load
        if cond := self._conditions(ledger, candidate, [p.candidate for p in done] + [p.incumbent for p in done]):
            ev["conditions"] = cond
        return ev

    def _conditions(self, ledger: Ledger, candidate: Experiment, now: list[dict[str, Any]]) -> Optional[dict]:
        """The load when the noise was calibrated (the baseline's runs) beside the load of `now`'s runs."""
        if not any(m.get("load") for m in now):
            return None  # no load on record (e.g. a simulated run): nothing to compare
        base = next((e for e in ledger.experiments(candidate.tag) if e.kind == Kind.BASELINE), None)
        if base is None:
            return None
        calib = [m for m in ledger.measurements(tag=candidate.tag) if m["experiment_id"] == base.id]
        return pairing.conditions(calib, now)

    # -- pieces --------------------------------------------------------------------------------
    def _calibrate(self, baseline: Experiment, ledger: Ledger) -> Verdict:
        """The starting point is kept; first its noise is measured on `calibration_runs` seeds."""
        mine, failed = noise.runs(noise.runs_by_commit(ledger, baseline.tag, self.scale), baseline.commit)
        done = {m["seed"] for m in mine} | {f["seed"] for f in failed}
        if len(mine) < self.calibration_runs and len(done) < 2 * self.calibration_runs:
            return Verdict(False, "calibrating the noise", more_runs=[
                (baseline.commit, s) for s in _fresh(done, baseline.seed, self.calibration_runs - len(mine))])
        values = [m["metric"] for m in mine]
        if not values:
            return Verdict(False, f"no usable run of the starting point on {len(done)} seeds"
                           + (f" ({NOT_POSITIVE})" if any(f["status"] == "not_positive" for f in failed) else ""),
                           {"test": "calibration", "runs": 0, "failed_runs": len(failed)})
        sd = stats.sd(values)
        ev = {"test": "calibration", "runs": len(values), "seeds": [m["seed"] for m in mine],
              "mean": self.scale.units(stats.mean(values)), "std": sd, "df": len(values) - 1}
        if self.scale.relative:
            ev["noise"] = stats.Scale.NOTE
        if failed:
            ev["failed_runs"] = len(failed)
        said = (f"noise sd {sd:.4g}{self.scale.label} over {len(values)} runs"
                 if sd is not None else "noise not measured (one run)")
        ledger.event(baseline.tag, "calibration", f"baseline {baseline.short}: mean {ev['mean']:.6g}, {said} "
                     f"(seeds {', '.join(map(str, ev['seeds']))})", baseline.id)
        return Verdict(True, f"the starting point; {said}", ev)

    def _level(self, ledger: Ledger, candidate: Experiment, incumbent: Experiment,
               by_commit: dict[str, list[dict[str, Any]]], sd: Optional[float]) -> Optional[levels.Level]:
        """The incumbent's estimated true level (levels.py), or None without a noise estimate."""
        if not sd:
            return None
        runs: dict[int, list[tuple[str, float]]] = {}
        for commit in by_commit:
            for m in noise.runs(by_commit, commit)[0]:
                runs.setdefault(m["experiment_id"], []).append((m["id"], commit, m["metric"]))
        ordered = {k: [(c, v) for _, c, v in sorted(rs)] for k, rs in runs.items()}
        found, _ = levels.estimate(ledger.experiments(candidate.tag), ordered, sd, self.lower, candidate.id)
        return found.get(incumbent.commit or "")

    def _incumbent_runs(self, candidate: Experiment, incumbent: Experiment,
                        by_commit: dict[str, list[dict[str, Any]]], level: Optional[levels.Level],
                        sd: Optional[float], df: int) -> list[tuple[str, int]]:
        """Fresh runs of the incumbent to take before judging: when the noise is measured on too
        few degrees of freedom, or the incumbent's level is known less well than one run would
        tell (a keep on thin evidence). Never because of what a candidate scored."""
        all_inc = by_commit.get(incumbent.commit, [])
        here = [m for m in all_inc if m["experiment_id"] == candidate.id]
        used = {m["seed"] for m in all_inc}
        if len(here) < self.calibration_runs and df < self.calibration_runs - 1:
            return [(incumbent.commit, _fresh(used, incumbent.seed, 1)[0])]
        if not here and level is not None and sd and level.var > self.unknown_level * sd * sd:
            return [(incumbent.commit, _fresh(used, incumbent.seed, 1)[0])]
        return []

    def _more(self, candidate: Experiment, mine: list[dict[str, Any]]) -> list[tuple[str, int]]:
        used = {m["seed"] for m in mine}
        return [(candidate.commit, _fresh(used, candidate.seed, 1)[0])]

    def _final(self, keep: bool, ev: dict[str, Any], rule: str, reason: str, ledger: Ledger,
               candidate: Experiment) -> Verdict:
        ev["rule"] = rule
        if keep and ev.get("std") is not None:
            what = ("sd of a paired difference {:.4g}{} ({} degrees of freedom, pooled over the paired decisions "
                    "and the calibration's back-to-back runs)" if ev.get("paired") else
                    "noise sd {:.4g}{} ({} degrees of freedom, pooled over the commits measured more than once)")
            ledger.event(candidate.tag, "noise", what.format(ev["std"], self.scale.label, ev["df"])
                         + f" when #{candidate.id} was kept", candidate.id)
        return Verdict(keep, reason, ev)

    def _beyond_floor(self, value: float) -> bool:
        """`value` on the judged scale (the log of the metric when the noise is relative)."""
        if self.floor is None:
            return False
        if self.scale.relative and self.floor <= 0:
            return not self.lower  # every positive value is above a floor <= 0
        floor = self.scale.judged(self.floor)
        return value < floor if self.lower else value > floor

    def _evidence(self, c: stats.Comparison, mine: list[dict[str, Any]], ref: list[dict[str, Any]],
                  level: Optional[levels.Level]) -> dict[str, Any]:
        # On the relative scale every figure is given back in metric units except std and
        # incumbent_se, which stay on the log scale (a fraction of the value, roughly).
        units, gain = self.scale.units, self.scale.gain(c.gain, c.mean_ref, self.lower)
        ev: dict[str, Any] = {
            "test": TEST if level is None else TEST_LEVEL, "runs": c.n, "mean": units(c.mean), "std": c.sd,
            "p_value": c.p_value, "effect_sigma": _finite(c.effect_sigma),
            "incumbent_mean": units(stats.mean([m["metric"] for m in ref])) if ref else None,
            "incumbent_runs": c.n_ref, "gain": gain, "df": c.df, "t": _finite(c.t), "alpha": self.alpha,
            "seeds": [m["seed"] for m in mine], "incumbent_seeds": [m["seed"] for m in ref],
        }
        if self.scale.relative:
            ev["noise"] = stats.Scale.NOTE
        if level is not None:
            ev["incumbent_estimate"], ev["incumbent_se"] = units(c.mean_ref), math.sqrt(level.var)
        iv = c.interval(self.alpha) if c.se else None
        if iv:
            ev["interval"] = [self.scale.gain(x, c.mean_ref, self.lower) for x in iv]
            ev["confidence"] = 1 - 2 * self.alpha
        return ev


# -- helpers ----------------------------------------------------------------------------------------
PAIRED_TEST = "paired t (one-sided) against the incumbent re-run side by side"
WEIGHTED_TEST = PAIRED_TEST + ", pairs weighted by their class's noise (busy, uneven)"


def _fresh(used: set[int], start: int, count: int) -> list[int]:
    out, s = [], start
    while len(out) < count:
        if s not in used:
            out.append(s)
        s += 1
    return out


def _finite(x: Optional[float]) -> Optional[float]:
    return x if x is not None and math.isfinite(x) else None


def _sig(c: stats.Comparison) -> str:
    eff = f"{c.effect_sigma:+.2f}σ" if c.effect_sigma is not None and math.isfinite(c.effect_sigma) else "?σ"
    return f"{eff}, p={c.p_value:.3g}, {c.n} vs {c.n_ref} runs"
