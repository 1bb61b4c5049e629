"""Swarm: does sharing one frontier through re-measured claims beat the same budget spent in isolation?

A task with known ground truth and real noise, P participants (P = 1, 2, 4, 8) and one fixed
total budget of experiments (`--total`), split equally: each participant runs `total / P`.

The task. A pool of `--pool` planted ideas, each with a true effect drawn once per task from an
exponential distribution (mean `--effect-mean` noise sds): many ideas are too small to see, a
few are large. A commit's true level is the start's (0) minus the effects of the ideas it holds
(lower is better). A proposal is, with probability `--p-null`, a null change (effect 0), else an
idea from the pool that the proposer's incumbent does not hold yet (a researcher reads the code).
Every run scatters around its commit's true level with Gaussian noise, sd 1, drawn per
(participant, commit, seed): each participant measures on its own machine.

The decisions come from the production code, as in benchmarks/noise_gate.py: every participant
has its own real Ledger (SQLite in a temporary folder) and the real `confirm` policy
(policy.make) decides every keep, asking for the extra runs it wants; only the run is simulated.

The swarm, as src/autoresearch/swarm.py builds it. After every keep a participant publishes its best:
the commit, the changes it holds (what git knows) and its record's metric (the kept experiment's
first run). When nothing is queued and a sync is due (every `--sync` of its own experiments) it reads
the others' bests; each one whose metric beats the local incumbent's by `--margin` noise sds (the
tag's pooled sd: Swarm.worth) is queued once, best claim first (Swarm.sync/consider). At its turn
(Swarm.candidate), against the local best as it is then: dropped if the local best has moved past
it, or holds its change already (the cherry-pick changes nothing); `merge` (the peer's change on the
local best) when the local best has changes the peer's commit lacks, else `adopt` (the same code);
a merge that is not kept is followed by the `adopt` of the peer's code as it is. Each is run in
place of a proposal, judged by the local policy against the local incumbent, out of the
participant's own share of the budget. Reputation (Swarm.recorded): per peer, claims that held
(kept here, merged or as they are) and that were refuted; a judged claim is never re-measured; a
peer whose refuted claims exceed `--refutes-allowed` plus twice its held ones is no longer heard.

`--variant s11` is the logic before (measured in the first report: every claim that beats the local
incumbent at all, in peer order, `adopt` then `merge`, kind fixed when queued); `--variant proposed`
is s11 with the three changes proposed then (best first, drop what the local best holds or beats,
no merge that is the same code as the adopt).

The malicious participant (on P = 4 + 1): it runs nothing and, every round, publishes a new
commit that is the start with a harmful change (true level `--sabotage` sds worse than the start)
under a metric `--claim-margin` sds better than the best honest claim on the hub. Every honest peer
re-measures it and its policy refutes it. Reported without a gate (as swarm.py is built) and with
the gate `--gate`: claims re-measured, adopted (the goal: none), and what the re-measures cost the
honest four (share of their experiments; true level reached against the honest swarm of four on
the same draws).

Printed for each P: the re-measure cost (share of experiments), claims held/refuted, (a) the
median number of a peer's own experiments between a winner's publication (a kept own idea that
truly improves) and the moment the peer's incumbent holds it, with the share of such
(winner, peer) pairs adopted by the end; (b) the swarm's best true level against the best of
P isolated runs at the same total experiments (positive = the swarm is better, in noise sds);
and the fraction of the total budget the swarm needed to reach the best isolated run's final
level, next to the same fraction for one participant given the whole budget (a sequential run
builds on every result at once, which a swarm approaches at best; the swarm's advantage over it is
wall-clock time, P experiments at once). Goal: the swarm of 4 gets there in at most half the total
experiments (median over tasks). The last line is one JSON object with the figures.

    python benchmarks/swarm.py                    # the reported figures (about 4 minutes on 2 cores)
    python benchmarks/swarm.py --reps 2 --total 96 --participants 1,2,4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from autoresearch import policy as policies
from autoresearch.config import Config, ExperimentConfig, MetricConfig, PolicyConfig
from autoresearch.ledger import Experiment, Ledger
from autoresearch.noise import pooled_noise
from autoresearch.swarm import MARGIN_SIGMA, REFUTES_ALLOWED

TAG = "bench"
SEED = 42
START = "0" * 40  # the shared starting commit every participant agrees on
PATCH = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-LR = 0.02\n+LR = 0.03\n"
INF = float("inf")


@dataclass
class Claim:
    """A published best: what the hub holds under refs/autoresearch-swarm/<name>/best/<class>."""

    peer: str
    commit: str
    claim: float  # the metric the publisher says it measured
    ideas: frozenset
    fake: bool = False


@dataclass
class Winner:
    """A kept own idea that truly improves on its parent, and where it has spread."""

    origin: str
    ideas: frozenset
    published_at: dict[str, int]  # each participant's own experiment count at publication
    adopted_after: dict[str, int] = field(default_factory=dict)  # peer -> own experiments until it held it


class World:
    """One task (the pool of planted ideas and their true effects) and the hub."""

    def __init__(self, rep_seed: int, pool: int, effect_mean: float, sabotage: float):
        rng = random.Random(f"task:{rep_seed}")
        self.pool = [f"idea{k}" for k in range(pool)]
        self.effects = {i: rng.expovariate(1.0 / effect_mean) for i in self.pool}
        self.sabotage = sabotage
        self.hub: dict[str, Claim] = {}
        self.winners: list[Winner] = []
        self.participants: list[Participant] = []
        self.clock = 0  # honest experiments done, all participants together

    def level(self, ideas: frozenset) -> float:
        """The true level of a commit holding `ideas` (lower is better)."""
        return -sum(self.effects.get(i, -self.sabotage if i.startswith("fake") else 0.0) for i in ideas)


class Participant:
    """One machine: its own ledger, the real policy, its own noise; publishes and adopts through the hub."""

    def __init__(self, world: World, root: Path, index: int, rep_seed: int, p_null: float, sync: int,
                 refutes_allowed: float, variant: str = "as_built", margin_sigma: float = MARGIN_SIGMA):
        self.world, self.index, self.rep_seed = world, index, rep_seed
        self.name = f"p{index}"
        root.mkdir(parents=True)
        self.cfg = Config(root=root, experiment=ExperimentConfig(seed=SEED),
                          metric=MetricConfig(name="score", direction="min"), policy=PolicyConfig(name="confirm"))
        self.ledger = Ledger(root / "ledger.db")
        self.policy = policies.make(self.cfg)
        self.p_null, self.sync, self.refutes_allowed = p_null, sync, refutes_allowed
        self.variant = variant
        self.margin_sigma = margin_sigma if variant == "as_built" else 0.0
        self.proposed = variant == "proposed"
        self.rng = random.Random(f"proposer:{rep_seed}:{index}")
        self.ideas: dict[str, frozenset] = {START: frozenset()}
        self.done = 0
        self.runs = 0
        self.adopt_experiments = self.adopt_runs = 0
        self.fake_experiments = self.fake_runs = self.fake_kept = 0
        self.queue: deque[tuple[str, Claim, frozenset]] = deque()  # (adopt | merge, claim, local ideas then)
        self.judged: set[tuple[str, str]] = set()  # (peer, commit) re-measured as `adopt`: never again
        self.held: set[tuple[str, str]] = set()  # (peer commit, local best) whose change the local best holds
        self.reputation: dict[str, list[int]] = {}  # peer -> [held, refuted]
        self.trajectory: list[float] = []  # the incumbent's true level after each own experiment
        self.run_counts: list[int] = []  # runs taken so far, after each own experiment

    # -- the simulated run ---------------------------------------------------------------------
    def noise(self, commit: str, seed: int) -> float:
        h = hashlib.blake2b(f"{self.rep_seed}:{self.index}:{commit}:{seed}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(h, "big")).gauss(0.0, 1.0)

    def measure(self, exp: Experiment, commit: str, seed: int) -> float:
        value = self.world.level(self.ideas[commit]) + self.noise(commit, seed)
        self.ledger.add_measurement(exp.id, commit, seed, value, {}, 1.0, "ok")
        self.runs += 1
        return value

    def decide(self, exp: Experiment, incumbent: Optional[Experiment]) -> policies.Verdict:
        """Loop.decide: ask the policy; take the extra measurements it wants until it decides."""
        return policies.settle(self.policy, exp, incumbent, self.ledger,
                               lambda commit, seed: self.measure(exp, commit, seed))

    def experiment(self, commit: str, ideas: frozenset, description: str, kind: str = "candidate") -> Experiment:
        inc = None if kind == "baseline" else self.ledger.incumbent(TAG)
        self.ideas[commit] = ideas
        exp = Experiment(tag=TAG, parent=inc.commit if inc else None, commit=commit, description=description,
                         kind=kind, patch="" if kind == "baseline" else PATCH, seed=SEED)
        self.ledger.begin(exp)
        exp.metric = self.measure(exp, commit, SEED)
        verdict = self.decide(exp, inc)
        exp.status, exp.reason, exp.evidence = ("keep" if verdict.keep else "discard"), verdict.reason, verdict.evidence
        self.ledger.finish(exp)
        return exp

    # -- the participant -----------------------------------------------------------------------
    def incumbent(self) -> tuple[Experiment, frozenset]:
        inc = self.ledger.incumbent(TAG)
        return inc, self.ideas[inc.commit]

    def publish(self, exp: Experiment) -> None:
        self.world.hub[self.name] = Claim(self.name, exp.commit, claimed(exp), self.ideas[exp.commit])

    def gated(self, peer: str) -> bool:
        """The proposed gate (not in swarm.py as built; --gate): a peer whose refuted claims exceed
        `refutes_allowed` plus twice its held ones is no longer re-measured."""
        held, refuted = self.reputation.get(peer, [0, 0])
        return refuted > self.refutes_allowed + 2 * held

    def sync_hub(self) -> None:
        """swarm.Swarm.sync/consider: queue each peer's best that claims to beat the local incumbent, once."""
        if self.variant == "as_built":
            return self.sync_hub_merge_first()
        inc, mine = self.incumbent()
        order = sorted(self.world.hub, key=lambda p: self.world.hub[p].claim if self.proposed else p)
        for peer in order:
            c = self.world.hub[peer]
            if peer == self.name or self.gated(peer) or not c.claim < inc.metric:
                continue
            if (peer, c.commit) in self.judged or any(q[1].commit == c.commit for q in self.queue):
                continue
            self.queue.append(("adopt", c, mine))
            if inc.commit != START and not (self.proposed and mine <= c.ideas):
                self.queue.append(("merge", c, mine))

    def sync_hub_merge_first(self) -> None:
        """swarm.py as built (Swarm.sync/consider): each peer's best that claims to beat the local incumbent,
        once, best claim first; what the local best holds already is dropped at its turn (next_candidate)."""
        inc, mine = self.incumbent()
        bar = inc.metric - self.margin()
        for peer in sorted(self.world.hub, key=lambda p: (self.world.hub[p].claim, p)):
            c = self.world.hub[peer]
            if peer == self.name or self.gated(peer) or not c.claim < bar or (c.commit, inc.commit) in self.held:
                continue
            if (peer, c.commit) in self.judged or any(q[1].commit == c.commit for q in self.queue):
                continue
            self.queue.append(("claim", c, mine))

    def margin(self) -> float:
        """Swarm.worth: a claim must beat the local incumbent by MARGIN_SIGMA x the tag's pooled noise sd."""
        sd, _ = pooled_noise(self.ledger, TAG)
        return self.margin_sigma * (sd or 0.0)

    def next_candidate(self) -> Optional[tuple[str, Claim, frozenset]]:
        """swarm.Swarm.next_candidate: sync when nothing is queued and a sync is due; the next item that
        changes something, or None (then the researcher proposes)."""
        if not self.queue and self.sync and self.done % self.sync == 0:
            self.sync_hub()
        inc, mine = self.incumbent()
        while self.queue:
            kind, c, base = self.queue.popleft()
            if self.variant == "as_built":  # Swarm.candidate: against the local best as it is now
                if kind == "after_merge":  # the merge was not kept: the peer's code as it is
                    if c.ideas == mine:  # NothingChanged: judged by the merge
                        self.reputation.setdefault(c.peer, [0, 0])[1] += 1
                        continue
                    return "adopt", c, c.ideas
                if not c.claim < inc.metric - self.margin():
                    continue  # the local best moved past it
                if c.ideas <= mine:  # the cherry-pick changes nothing: the local best holds it
                    self.held.add((c.commit, inc.commit))
                    continue
                return ("adopt" if mine <= c.ideas else "merge"), c, (mine | c.ideas)
            ideas = c.ideas if kind == "adopt" else base | c.ideas
            if self.proposed and (c.ideas <= mine or (kind == "adopt" and not c.claim < inc.metric)):
                continue  # proposed: the local best moved since the claim was queued and holds it, or beats it
            if ideas != mine:  # NothingChanged: the local best has this code already
                return kind, c, ideas
        return None

    def step(self) -> None:
        if self.done == 0:
            exp = self.experiment(START, frozenset(), "baseline", kind="baseline")
            assert exp.status == "keep", exp.reason
            self.publish(exp)
        else:
            pick = self.next_candidate()
            if pick:
                self.adopt(*pick)
            else:
                self.propose()
        self.done += 1
        self.world.clock += 1
        inc, mine = self.incumbent()
        self.trajectory.append(self.world.level(mine))
        self.run_counts.append(self.runs)
        for w in self.world.winners:
            if w.origin != self.name and self.name not in w.adopted_after and w.ideas <= mine:
                w.adopted_after[self.name] = self.done - w.published_at[self.name]

    def propose(self) -> None:
        inc, mine = self.incumbent()
        fresh = [i for i in self.world.pool if i not in mine]
        if self.rng.random() < self.p_null or not fresh:
            idea = f"null:{self.name}:{self.done}"
        else:
            idea = self.rng.choice(fresh)
        ideas = mine | {idea}
        exp = self.experiment(self.new_commit(), ideas, f"proposal {idea}")
        if exp.status == "keep":
            self.publish(exp)
            if self.world.level(ideas) < self.world.level(mine):
                self.world.winners.append(Winner(self.name, ideas, {p.name: p.done + (p is self)
                                                                    for p in self.world.participants}))

    def new_commit(self) -> str:
        return hashlib.sha1(f"{self.rep_seed}:{self.name}:{self.done}".encode()).hexdigest()

    def adopt(self, kind: str, c: Claim, ideas: frozenset) -> None:
        """A peer's claim as a local candidate (a new commit on the local best), judged by the local policy."""
        runs0 = self.runs
        exp = self.experiment(self.new_commit(), ideas, f"{kind} {c.peer}:{c.commit[:7]}")
        self.adopt_experiments += 1
        self.adopt_runs += self.runs - runs0
        if c.fake:
            self.fake_experiments += 1
            self.fake_runs += self.runs - runs0
            self.fake_kept += exp.status == "keep"
        if self.variant == "as_built":  # Swarm.recorded: the peer's change measured here, alone or merged
            self.judged.add((c.peer, c.commit))
            held = exp.status == "keep"
            if kind == "merge" and not held:
                self.queue.appendleft(("after_merge", c, frozenset()))  # its code as it is may still measure best
            else:
                self.reputation.setdefault(c.peer, [0, 0])[0 if held else 1] += 1
        elif kind == "adopt":  # Swarm.recorded: the reputation counts the peer's own code, measured here
            self.judged.add((c.peer, c.commit))
            self.reputation.setdefault(c.peer, [0, 0])[0 if exp.status == "keep" else 1] += 1
        if exp.status == "keep":
            self.publish(exp)


class Malicious:
    """Runs nothing; every round publishes the start with a harmful change under a fake, better claim."""

    def __init__(self, world: World, claim_margin: float):
        self.world, self.claim_margin, self.name, self.published = world, claim_margin, "mallory", 0

    def step(self) -> None:
        honest = [c.claim for p, c in self.world.hub.items() if p != self.name]
        if not honest:
            return
        self.published += 1
        commit = hashlib.sha1(f"fake:{self.published}".encode()).hexdigest()
        self.world.hub[self.name] = Claim(self.name, commit, min(honest) - self.claim_margin,
                                          frozenset({f"fake{self.published}"}), fake=True)


def claimed(exp: Experiment) -> float:
    """The metric a record claims, as swarm.py publishes and compares it: the experiment's own first run."""
    return exp.metric


# -- one task ---------------------------------------------------------------------------------------
def run_swarm(tmp: Path, label: str, args: argparse.Namespace, rep_seed: int, p: int, sync: int,
              refutes_allowed: float, malicious: bool = False) -> dict[str, Any]:
    world = World(rep_seed, args.pool, args.effect_mean, args.sabotage)
    honest = [Participant(world, tmp / label / f"p{i}", i, rep_seed, args.p_null, sync, refutes_allowed,
                          args.variant, args.margin) for i in range(p)]
    world.participants = honest
    mallory = Malicious(world, args.claim_margin) if malicious else None
    each = args.total // p
    curve: list[float] = []  # the swarm's best true level after each honest experiment
    for _ in range(each):
        for part in honest:
            part.step()
            curve.append(min(q.trajectory[-1] for q in honest if q.trajectory))
        if mallory:
            mallory.step()
    for part in honest:
        part.ledger.close()
    lat = [v for w in world.winners for v in w.adopted_after.values()]
    pairs = sum(p - 1 for _ in world.winners)
    return {
        "curve": curve, "best": curve[-1], "latencies": lat, "pairs": pairs,
        "adopted_pairs": len(lat), "experiments": each * p, "runs": sum(q.runs for q in honest),
        "adopt_experiments": sum(q.adopt_experiments for q in honest),
        "adopt_runs": sum(q.adopt_runs for q in honest),
        "held": sum(r[0] for q in honest for peer, r in q.reputation.items() if peer != "mallory"),
        "refuted": sum(r[1] for q in honest for peer, r in q.reputation.items() if peer != "mallory"),
        "fake_published": mallory.published if mallory else 0,
        "fake_experiments": sum(q.fake_experiments for q in honest),
        "fake_runs": sum(q.fake_runs for q in honest),
        "fake_adopted": sum(q.fake_kept for q in honest),
        "mallory_reputation": [sum(q.reputation.get("mallory", [0, 0])[k] for q in honest) for k in (0, 1)],
    }


def run_isolated(tmp: Path, args: argparse.Namespace, rep_seed: int,
                 ps: list[int]) -> dict[int, tuple[list[float], list[int]]]:
    """Participant i alone, as long as the longest isolated share it is part of (a prefix is a shorter run:
    nothing an isolated participant does depends on its budget). Returns i -> (true level, runs so far)
    after each experiment."""
    out: dict[int, tuple[list[float], list[int]]] = {}
    for i in range(max(ps)):
        world = World(rep_seed, args.pool, args.effect_mean, args.sabotage)  # the same task, nobody else on it
        length = max(args.total // p for p in ps if i < p)
        part = Participant(world, tmp / "iso" / f"p{i}", i, rep_seed, args.p_null, 0, INF)
        world.participants = [part]
        for _ in range(length):
            part.step()
        part.ledger.close()
        out[i] = (part.trajectory, part.run_counts)
    return out


def reach(curve: list[float], target: float) -> Optional[int]:
    """The first total experiment count at which the swarm's best true level is at `target` or better."""
    for t, v in enumerate(curve, 1):
        if v <= target + 1e-12:
            return t
    return None


def bench(args: argparse.Namespace) -> dict[str, Any]:
    ps = sorted(args.participants)
    per: dict[int, dict[str, list]] = {p: {} for p in ps}
    mal: dict[str, dict[str, list]] = {"no_gate": {}, "gate": {}}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as tmpdir:
        for r in range(args.reps):
            rep_seed = args.seed * 100_003 + r
            tmp = Path(tmpdir) / f"rep{r}"
            iso = run_isolated(tmp, args, rep_seed, ps)
            swarms: dict[int, dict[str, Any]] = {}
            for p in ps:
                s = run_isolated_as_swarm(iso, args, p) if p == 1 else run_swarm(
                    tmp, f"swarm{p}", args, rep_seed, p, args.sync, args.refutes_allowed)
                swarms[p] = s
                iso_best = min(iso[i][0][args.total // p - 1] for i in range(p))
                t_iso = reach(s["curve"], iso_best)
                t_single = reach(s["curve"], iso[0][0][-1]) if len(iso[0][0]) >= args.total else None
                t_ideal = reach(iso[0][0][: args.total], iso_best)  # one run with the whole budget: the bound
                row = {"gain": iso_best - s["best"], "swarm_best": s["best"], "isolated_best": iso_best,
                       "reach_fraction": t_iso / args.total if t_iso else None,
                       "reach_single_fraction": t_single / args.total if t_single else None,
                       "ideal_reach_fraction": t_ideal / args.total if t_ideal else None,
                       "adopt_share": s["adopt_experiments"] / s["experiments"],
                       "runs_per_experiment": s["runs"] / s["experiments"],
                       "latencies": s["latencies"], "pairs": s["pairs"], "adopted_pairs": s["adopted_pairs"],
                       "held": s["held"], "refuted": s["refuted"]}
                for k, v in row.items():
                    per[p].setdefault(k, []).append(v)
            if args.malicious and 4 in ps:
                for key, gate in (("no_gate", INF), ("gate", args.gate)):
                    m = run_swarm(tmp, f"mal-{key}", args, rep_seed, 4, args.sync, gate, malicious=True)
                    row = {"fake_published": m["fake_published"], "fake_experiments": m["fake_experiments"],
                           "fake_runs": m["fake_runs"], "fake_adopted": m["fake_adopted"],
                           "mallory_held": m["mallory_reputation"][0], "mallory_refuted": m["mallory_reputation"][1],
                           "experiments": m["experiments"], "best": m["best"],
                           "loss_vs_honest": m["best"] - swarms[4]["best"]}
                    for k, v in row.items():
                        mal[key].setdefault(k, []).append(v)
            print(f"  task {r + 1}/{args.reps} done ({time.monotonic() - t0:.0f}s)", file=sys.stderr)
    return {"per": per, "malicious": mal if args.malicious and 4 in ps else None,
            "seconds": round(time.monotonic() - t0, 1)}


def run_isolated_as_swarm(iso: dict[int, tuple[list[float], list[int]]], args: argparse.Namespace,
                          p: int) -> dict[str, Any]:
    """A swarm of one is an isolated run: the same participant, the same draws (not run twice)."""
    curve, runs = iso[0][0][: args.total], iso[0][1][args.total - 1]
    return {"curve": curve, "best": curve[-1], "latencies": [], "pairs": 0, "adopted_pairs": 0,
            "experiments": args.total, "runs": runs, "adopt_experiments": 0, "adopt_runs": 0, "held": 0, "refuted": 0}


def summarize(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p, d in res["per"].items():
        lat = [v for ls in d["latencies"] for v in ls]
        reach_f = [x if x is not None else INF for x in d["reach_fraction"]]
        gains = d["gain"]
        out[str(p)] = {
            "participants": p, "experiments_each": args.total // p,
            "remeasure_share": _r(statistics.mean(d["adopt_share"])),
            "runs_per_experiment": _r(statistics.mean(d["runs_per_experiment"])),
            "claims_held": sum(d["held"]), "claims_refuted": sum(d["refuted"]),
            "median_adoption_latency": _r(statistics.median(lat)) if lat else None,
            "adoption_latency_p90": _r(_quantile(lat, 0.9)) if lat else None,
            "adopted_share": _r(sum(d["adopted_pairs"]) / sum(d["pairs"])) if sum(d["pairs"]) else None,
            "swarm_best_true": _r(statistics.mean(d["swarm_best"])),
            "isolated_best_true": _r(statistics.mean(d["isolated_best"])),
            "gain_over_isolated": _r(statistics.mean(gains)),
            "gain_over_isolated_se": _r(statistics.stdev(gains) / math.sqrt(len(gains))) if len(gains) > 1 else None,
            "reach_fraction_median": _r(statistics.median(reach_f)),
            "reach_within_half_share": _r(sum(x <= 0.5 for x in reach_f) / len(reach_f)),
            "ideal_reach_fraction_median": _r(statistics.median(
                [x if x is not None else INF for x in d["ideal_reach_fraction"]])),
            "reach_single_run_fraction_median": _r(statistics.median(
                [x if x is not None else INF for x in d["reach_single_fraction"]])),
        }
    mal = None
    if res["malicious"]:
        mal = {}
        for key, d in res["malicious"].items():
            mal[key] = {"fake_claims_published": sum(d["fake_published"]),
                        "fake_claims_remeasured": sum(d["fake_experiments"]),
                        "fake_claims_adopted": sum(d["fake_adopted"]),
                        "mallory_reputation_held": sum(d["mallory_held"]),
                        "mallory_reputation_refuted": sum(d["mallory_refuted"]),
                        "honest_experiments_lost_share": _r(sum(d["fake_experiments"]) / sum(d["experiments"])),
                        "true_level_loss_vs_honest_swarm": _r(statistics.mean(d["loss_vs_honest"]))}
    goal = out.get("4", {}).get("reach_fraction_median")
    return {"per_participants": out, "malicious": mal,
            "goal": {"swarm4_reach_fraction_median": goal, "target": 0.5,
                     "met": goal is not None and goal <= 0.5},
            "setup": {"total": args.total, "reps": args.reps, "pool": args.pool, "effect_mean": args.effect_mean,
                      "p_null": args.p_null, "sync": args.sync, "refutes_allowed": _r(args.refutes_allowed),
                      "gate": args.gate, "variant": args.variant, "margin": args.margin,
                      "sabotage": args.sabotage, "claim_margin": args.claim_margin, "seed": args.seed,
                      "policy": "confirm", "seconds": res["seconds"]}}


def _r(x: Optional[float]) -> Optional[float]:
    return round(x, 4) if x is not None and math.isfinite(x) else None  # JSON has no inf: never reached


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total", type=int, default=320, help="total experiments, all participants together (default 320)")
    ap.add_argument("--participants", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8],
                    help="swarm sizes, comma-separated (default 1,2,4,8)")
    ap.add_argument("--reps", type=int, default=6, help="independent tasks (default 6)")
    ap.add_argument("--pool", type=int, default=40, help="planted ideas per task (default 40)")
    ap.add_argument("--effect-mean", type=float, default=1.0, help="mean true effect of an idea, noise sds (default 1)")
    ap.add_argument("--p-null", type=float, default=0.7, help="probability a proposal is a null change (default 0.7)")
    ap.add_argument("--sync", type=int, default=1, help="read the hub every this many own experiments (default 1)")
    ap.add_argument("--refutes-allowed", type=float, default=REFUTES_ALLOWED,
                    help="gate every swarm: refuted claims allowed beyond twice the held ones (default: swarm.py's, "
                         f"{REFUTES_ALLOWED}; -1: no gate)")
    ap.add_argument("--gate", type=float, default=3,
                    help="the gate of the malicious variant's second row, the proposal (default 3)")
    ap.add_argument("--no-malicious", dest="malicious", action="store_false", help="skip the malicious variant")
    ap.add_argument("--sabotage", type=float, default=1.0, help="how much worse the fake commit truly is (sds)")
    ap.add_argument("--claim-margin", type=float, default=1.0, help="how much better than the best the fake claims")
    ap.add_argument("--margin", type=float, default=MARGIN_SIGMA,
                    help=f"as_built: a claim must beat the local incumbent by this many noise sds (swarm.py's: "
                         f"{MARGIN_SIGMA:g}; 0: any claim that beats it)")
    ap.add_argument("--variant", choices=("as_built", "s11", "proposed"), default="as_built",
                    help="the adoption logic: swarm.py's (default), the one before (s11), or s11 with the changes "
                         "proposed then (see the docstring)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.refutes_allowed < 0:
        args.refutes_allowed = INF
    bad = [p for p in args.participants if p < 1 or args.total // p < 2]
    if bad:
        ap.error(f"--total {args.total} leaves fewer than 2 experiments each for {bad} participants: raise --total")
    res = summarize(bench(args), args)
    print(f"swarm: {args.total} experiments in all, split over P participants; {args.reps} tasks of {args.pool} "
          f"planted ideas (effects exponential, mean {args.effect_mean:g} sd), null proposals p={args.p_null:g}, "
          f"noise sd 1; policy confirm; hub read every {args.sync} experiment(s)")
    print(f"{'P':>2} {'each':>5} {'re-measure':>10} {'held/refuted':>12} {'latency med/p90':>16} {'adopted':>8} "
          f"{'swarm best':>10} {'isolated':>9} {'gain (sd)':>13} {'reach':>6} {'<=1/2':>6} {'1 run':>6}")
    for p, r in res["per_participants"].items():
        lat = (f"{r['median_adoption_latency']:g}/{r['adoption_latency_p90']:g}"
               if r["median_adoption_latency"] is not None else "-")
        adopted = f"{r['adopted_share'] * 100:.0f}%" if r["adopted_share"] is not None else "-"
        gain = f"{r['gain_over_isolated']:+.2f}" + (f" ± {r['gain_over_isolated_se']:.2f}"
                                                    if r["gain_over_isolated_se"] is not None else "")
        reach_f = f"{r['reach_fraction_median']:.2f}" if r["reach_fraction_median"] is not None else "never"
        ideal = f"{r['ideal_reach_fraction_median']:.2f}" if r["ideal_reach_fraction_median"] is not None else "never"
        print(f"{p:>2} {r['experiments_each']:>5} {r['remeasure_share'] * 100:>9.1f}% "
              f"{r['claims_held']:>5}/{r['claims_refuted']:<6} {lat:>16} {adopted:>8} {r['swarm_best_true']:>10.2f} "
              f"{r['isolated_best_true']:>9.2f} {gain:>13} {reach_f:>6} {r['reach_within_half_share'] * 100:>5.0f}% "
              f"{ideal:>6}")
    print("latency: a peer's own experiments from a winner's publication until its incumbent holds it; "
          "reach: fraction of the total budget the swarm needed to reach the best isolated run's final true level "
          "(median over tasks; <=1/2: share of tasks within half); 1 run: the same for one participant with the "
          "whole budget (what a swarm approaches at best; that run takes P times the wall-clock)")
    if res["malicious"]:
        for key, m in res["malicious"].items():
            print(f"malicious ({key}, 4 honest + 1): {m['fake_claims_published']} fake claims published, "
                  f"{m['fake_claims_remeasured']} re-measures, {m['fake_claims_adopted']} adopted; its reputation "
                  f"{m['mallory_reputation_held']} held / {m['mallory_reputation_refuted']} refuted; cost "
                  f"{m['honest_experiments_lost_share'] * 100:.1f}% of the honest experiments, "
                  f"{m['true_level_loss_vs_honest_swarm']:+.2f} sd in true level vs the honest swarm of 4")
    g = res["goal"]
    print(f"goal: the swarm of 4 reaches the best isolated run's level within half the total experiments: "
          f"median {g['swarm4_reach_fraction_median']} -> {'met' if g['met'] else 'NOT met'}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
