"""Drift: does a timing decision survive a machine whose load comes and goes?

A timing task — a small Python program that times its own work loop and prints `time_ms` —
is measured while a background load switches on and off every few seconds (one busy process
per CPU, stopped and continued with SIGSTOP/SIGCONT at intervals drawn from 2-5 s). A stream
of proposals is judged against the current best, as a ratchet: a *null change* renames the
work loop's local variable (the same work: byte-for-byte the same result, as in the mistune
report where `use_length = 1 -> 4` was kept as an 18.8% speed-up), a *real speed-up* does
`--speedup` of the incumbent's work (default 0.82: 18% less). Printed for each policy: null
changes kept, real speed-ups kept, runs per decision, with standard errors over sessions.
Goal (issue 13): <= 5% null keeps and >= 80% of real speed-ups kept under the switching load.

Policies: `today` is `confirm` as it was before paired decisions (metric.noise = "relative",
policy.paired = "never": the candidate's runs against the incumbent's estimated level from
runs taken at other times); `paired` is the default now (policy.paired = "auto", which pairs
relative-noise metrics: the incumbent is re-run side by side, interleaved, and the test is on
the paired differences; see pairing.py).

What is real and what is not. The decisions are the production code path: the real policy
classes (policy.make) read a real SQLite Ledger with real Experiment rows, and the loop's
decide step (ask the policy, take the (commit, seed) runs it asks for, ask again) is
Loop.decide's. Every run is real: a fresh Python process tree started by procs.run_tree (as
the judge starts a run), its metric parsed by judge.parse_metric, stored by
Ledger.add_measurement with the load record (load average, CPU time vs wall) the judge stores.
What is left out is the loop's git and sandbox work around each run (commit, worktree,
bubblewrap, integrity review: ~1-2 s per experiment here): it does not touch the timing or
the decision, and without it the two policies get ~10x more decisions in the same 10 minutes,
enough to tell 5% of null keeps from 10%. The two policies are interleaved proposal by
proposal (each on its own ledger and ratchet, the one going first alternating), so both see
the same load over the same minutes.

    python benchmarks/drift.py                    # 9 minutes (the README's figures; also with other users' load: --minutes 14)
    python benchmarks/drift.py --minutes 2        # a quick look
    python benchmarks/drift.py --records r.jsonl  # and one line per decision: its rule, every run and its load
    python benchmarks/drift.py --simulated 150 --replay r.jsonl   # a rule on that run's real pairs, in seconds
The last line is one JSON object: {policy: {null_keep_rate, speedup_keep_rate, runs_per_decision, ...}, "setup": {...}}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from autoresearch import policy as policies
from autoresearch.config import Config, ExperimentConfig, MetricConfig, PolicyConfig
from autoresearch.judge import parse_metric
from autoresearch.ledger import Experiment, Ledger
from autoresearch.procs import run_tree

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tally.py, also when loaded by path
from tally import pct, ratio, rounded  # noqa: E402

TAG = "drift"
SEED = 42
WORK = 1_000_000  # the baseline's loop iterations: ~45 ms on a quiet core here
PATCH = "--- a/bench.py\n+++ b/bench.py\n@@ -3 +3 @@\n-    acc = 0\n+    total = 0\n"
POLICIES: dict[str, dict[str, Any]] = {
    "today": {"name": "confirm", "paired": "never"},
    "paired": {"name": "confirm", "paired": "auto"},
}
PROGRAM = '''\
import time
N = {n}
def work(n):
    {var} = 0
    for i in range(n):
        {var} += (i * i) % 7
    return {var}
t0 = time.perf_counter()
work(N)
print(f"time_ms: {{(time.perf_counter() - t0) * 1000:.3f}}")
'''


class Load:
    """One busy process per CPU, switched on and off (SIGCONT/SIGSTOP) every few seconds."""

    def __init__(self, seed: int, low: float = 2.0, high: float = 5.0):
        self.rng, self.low, self.high = random.Random(f"load:{seed}"), low, high
        self.procs: list[subprocess.Popen] = []
        self.on = False
        self.switches = 0
        self.on_time = self.total_time = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._switch, daemon=True)

    def __enter__(self) -> "Load":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
                      for _ in range(os.cpu_count() or 1)]
        self.on = True
        self._thread.start()
        return self

    def _signal(self, sig: int) -> None:
        for p in self.procs:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass

    def _switch(self) -> None:
        while not self._stop.is_set():
            span = self.rng.uniform(self.low, self.high)
            self._stop.wait(span)
            self.total_time += span
            self.on_time += span if self.on else 0.0
            self.on = not self.on
            self.switches += 1
            self._signal(signal.SIGCONT if self.on else signal.SIGSTOP)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._signal(signal.SIGCONT)
        for p in self.procs:
            p.kill()
            p.wait()


@dataclass
class Tally:
    null: int = 0
    null_kept: int = 0
    real: int = 0
    real_kept: int = 0
    decisions: int = 0
    runs: int = 0  # runs taken for the proposals' decisions (primary + extra), calibration not included
    calibration_runs: int = 0
    loaded_runs: int = 0
    sessions: list[tuple[int, ...]] = field(default_factory=list)

    def add(self, s: "Tally") -> None:
        for k in ("null", "null_kept", "real", "real_kept", "decisions", "runs", "calibration_runs", "loaded_runs"):
            setattr(self, k, getattr(self, k) + getattr(s, k))
        self.sessions.append((s.null, s.null_kept, s.real, s.real_kept, s.decisions, s.runs))

    def figures(self) -> dict[str, Any]:
        cols = list(zip(*self.sessions)) if self.sessions else [()] * 6
        out: dict[str, Any] = {}
        for key, num, den in (("null_keep_rate", 1, 0), ("speedup_keep_rate", 3, 2), ("runs_per_decision", 5, 4)):
            rate, se = ratio(cols[num], cols[den])
            out[key], out[key + "_se"] = rounded(rate), rounded(se)
        out.update(nulls=self.null, null_kept=self.null_kept, speedups=self.real, speedups_kept=self.real_kept,
                   decisions=self.decisions, runs=self.runs, calibration_runs=self.calibration_runs,
                   runs_under_load=round(self.loaded_runs / max(1, self.runs + self.calibration_runs), 3))
        return out


class Simulated:
    """A stand-in for the machine, for tests and tuning (`--simulated`): no process is run.

    log(time) = log(work) + a shift while the switching load is on + the other users' load (a
    slowly wandering part, an Ornstein-Uhlenbeck process with a `tau`-second memory) + fast
    jitter; the clock advances by each run's own time plus the start-up, so the load switches
    between runs as on the machine. The defaults are what this shared 2-core machine showed
    (the program run back to back under the switching load, loadavg ~12): sd 0.22 of log(time)
    per run, 0.2 for the difference of two runs back to back, +0.15 while the load is on.
    """

    def __init__(self, seed: int, jitter: float = 0.14, wander: float = 0.15, tau: float = 3.0, shift: float = 0.15,
                 low: float = 2.0, high: float = 5.0):
        self.rng, self.jitter, self.shift, self.low, self.high = random.Random(f"sim:{seed}"), jitter, shift, low, high
        self.wander, self.tau, self.level = wander, tau, 0.0
        self.clock, self.next_switch, self.on, self.switches = 0.0, 0.0, False, 0
        self.on_time = self.total_time = 0.0

    def run(self, work: int) -> float:
        while self.clock >= self.next_switch:
            self.on = not self.on
            self.switches += 1
            self.next_switch += self.rng.uniform(self.low, self.high)
        noise = self.level + self.rng.gauss(0.0, self.jitter) + (self.shift if self.on else 0.0)
        ms = 45.0 * work / WORK * math.exp(noise)
        step = ms / 1000 + 0.1
        keep = math.exp(-step / self.tau)  # the wandering part: an exact Ornstein-Uhlenbeck step
        self.level = self.level * keep + self.rng.gauss(0.0, self.wander * math.sqrt(1 - keep * keep))
        self.clock += step
        return ms

    @property
    def load_on_share(self) -> float:
        return 0.5


class Replay(Simulated):
    """The real machine's noise replayed (`--replay FILE`, a `--records` file of a real run): for
    tuning a rule on what this machine did, with the production policy and its early-session
    estimates, in seconds. Runs come in consecutive twos (calibration's A/A pairs, each pair of a
    paired decision); each two is a pair drawn at random from the file's: its two runs' deviations
    in log(time) from their own commit's median in that decision (the effect taken out) and their
    CPU/wall, stored as the load record the judge stores. What is lost: the load's memory from one
    pair to the next (pairs are drawn independently)."""

    def __init__(self, seed: int, path: str):
        super().__init__(seed)
        self.pairs: list[tuple[float, float, Optional[float], Optional[float]]] = []
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            ok = [m for m in r["trace"] if m["ms"] is not None]
            med = {}
            for c in {m["commit"] for m in ok}:
                vals = sorted(math.log(m["ms"]) for m in ok if m["commit"] == c)
                med[c] = vals[len(vals) // 2]
            for a, b in zip(ok[0::2], ok[1::2]):
                self.pairs.append((math.log(a["ms"]) - med[a["commit"]], math.log(b["ms"]) - med[b["commit"]],
                                   a.get("cpu_per_wall"), b.get("cpu_per_wall")))
        self.pending: Optional[tuple[float, Optional[float]]] = None
        self.cpw: Optional[float] = None

    def run(self, work: int) -> float:
        if self.pending is None:
            u, v, cu, cv = self.rng.choice(self.pairs)
            self.pending, (noise, self.cpw) = (v, cv), (u, cu)
        else:
            (noise, self.cpw), self.pending = self.pending, None
        self.on = self.cpw is not None and self.cpw < 0.6
        return 45.0 * work / WORK * math.exp(noise)


class Session:
    """One ratchet of one policy: a real ledger, real timed runs of the program's versions."""

    def __init__(self, root: Path, policy_cfg: dict[str, Any], load: Any):
        root.mkdir(parents=True)
        self.root, self.load = root, load
        self.cfg = Config(root=root, experiment=ExperimentConfig(seed=SEED),
                          metric=MetricConfig(name="time_ms", direction="min", noise="relative"),
                          policy=PolicyConfig(**policy_cfg))
        self.ledger = Ledger(root / "ledger.db")
        self.policy = policies.make(self.cfg)
        self.work: dict[str, int] = {}
        self.tally = Tally()
        self.count = 0
        self.trace: list[dict[str, Any]] = []  # this decision's runs, for --records
        self.records: list[dict[str, Any]] = []

    def measure(self, exp: Experiment, commit: str, seed: int, calibration: bool = False) -> Optional[float]:
        """One real run of the commit's program, stored as Loop.measure stores it."""
        self.count += 1
        if isinstance(self.load, Simulated):
            value = self.load.run(self.work[commit])
            on = self.load.on
            self.trace.append({"commit": commit, "ms": round(value, 3), "load_on": [on, on]})
            load = {"cpu_per_wall": self.load.cpw, "cpus": 2} if isinstance(self.load, Replay) else None
            self.ledger.add_measurement(exp.id, commit, seed, value, {}, value / 1000, "ok", load=load)
            self.tally.calibration_runs += calibration
            self.tally.runs += not calibration
            self.tally.loaded_runs += self.load.on
            return value
        log = self.root / f"run{self.count}.log"
        loaded = self.load.on
        res = run_tree(f"{sys.executable} {commit}.py", cwd=self.root, env=dict(os.environ), log_path=log,
                       timeout_s=60, grace_s=1, marker=f"drift-bench-{os.getpid()}")
        value = parse_metric(log.read_text(), "time_ms") if res.exit_code == 0 else None
        self.trace.append({"commit": commit, "ms": value, "load_on": [loaded, self.load.on],
                           "cpu_per_wall": res.load().get("cpu_per_wall"), "loadavg": round(res.loadavg[0], 2)})
        status = "ok" if value is not None and math.isfinite(value) else "crash"
        self.ledger.add_measurement(exp.id, commit, seed, value, {}, res.wall_s, status, load=res.load())
        if calibration:
            self.tally.calibration_runs += 1
        else:
            self.tally.runs += 1
        self.tally.loaded_runs += loaded or self.load.on
        return value

    def decide(self, exp: Experiment, incumbent: Optional[Experiment]) -> policies.Verdict:
        """Loop.decide: ask the policy; take the runs it wants until it decides."""
        return policies.settle(self.policy, exp, incumbent, self.ledger,
                               lambda commit, seed: self.measure(exp, commit, seed, calibration=incumbent is None))

    def experiment(self, j: int, parent: Optional[str], work: int, kind: str) -> Experiment:
        commit = f"v{j:04d}"
        (self.root / f"{commit}.py").write_text(PROGRAM.format(n=work, var="acc" if j % 2 else f"acc_{j}"))
        self.work[commit] = work
        exp = Experiment(tag=TAG, parent=parent, commit=commit, description=f"{kind} {j}", kind=kind,
                         patch="" if kind == "baseline" else PATCH, seed=SEED)
        self.ledger.begin(exp)
        self.trace = []
        exp.metric = self.measure(exp, commit, SEED, calibration=kind == "baseline")
        if exp.metric is None:
            exp.status, exp.reason = "crash", "no time_ms"
        else:
            verdict = self.decide(exp, None if kind == "baseline" else self.ledger.incumbent(TAG))
            exp.status, exp.reason, exp.evidence = ("keep" if verdict.keep else "discard"), verdict.reason, \
                verdict.evidence
        self.ledger.finish(exp)
        return exp

    def propose(self, j: int, real: bool, speedup: float) -> None:
        inc = self.ledger.incumbent(TAG)
        work = self.work[inc.commit]
        exp = self.experiment(j, inc.commit, max(1000, int(work * speedup)) if real else work, "candidate")
        kept = exp.status == "keep"
        self.tally.decisions += 1
        ev = exp.evidence or {}
        self.records.append({"j": j, "real": real, "kept": kept, "rule": ev.get("rule"), "reason": exp.reason,
                             "pairs": len(ev.get("pairs") or []), "runs": len(self.trace), "p": ev.get("p_value"),
                             "t": ev.get("t"), "std": ev.get("std"), "df": ev.get("df"),
                             "incumbent": inc.commit, "candidate": exp.commit, "trace": self.trace})
        if real:
            self.tally.real += 1
            self.tally.real_kept += kept
        else:
            self.tally.null += 1
            self.tally.null_kept += kept


def bench(minutes: float, candidates: int, p_null: float, speedup: float, seed: int,
          chosen: dict[str, dict[str, Any]], simulated: int = 0, sim: Optional[dict[str, float]] = None,
          records: Any = None, replay: Optional[str] = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`simulated`: that many sessions on the Simulated machine (`sim`: its settings) instead of
    `minutes` of real runs, or with `replay` (a records file) on the Replay machine. `records`: a text file that gets one JSON line per decision (policy,
    session, proposal, real or null, kept, the rule that decided, pairs, runs, p, t, and every run:
    its time, whether the switching load was on at its start and end, CPU/wall, load average)."""
    totals = {k: Tally() for k in chosen}
    deadline = time.monotonic() + minutes * 60
    sessions = 0
    with tempfile.TemporaryDirectory(prefix="drift-") as tmp, \
            (contextlib.nullcontext(Replay(seed, replay) if replay else Simulated(seed, **(sim or {})))
             if simulated else Load(seed)) as load:
        while (sessions < simulated) if simulated else (time.monotonic() < deadline):
            rng = random.Random(f"proposer:{seed}:{sessions}")
            runs = {k: Session(Path(tmp) / f"{k}-{sessions}", v, load) for k, v in chosen.items()}
            for s in runs.values():
                s.experiment(0, None, WORK, "baseline")
            for j in range(1, candidates + 1):
                real = rng.random() >= p_null
                order = list(runs.values()) if j % 2 else list(reversed(runs.values()))
                for s in order:
                    s.propose(j, real, speedup)
                if not simulated and time.monotonic() >= deadline:
                    break
            for k, s in runs.items():
                s.ledger.close()
                totals[k].add(s.tally)
                if records is not None:
                    for r in s.records:
                        records.write(json.dumps({"policy": k, "session": sessions} | r) + "\n")
            sessions += 1
        setup = {"minutes": minutes if not simulated else None,
                 "simulated": ({"replay": replay} if replay else (sim or {})) if simulated else False,
                 "sessions": sessions, "candidates_per_session": candidates, "p_null": p_null,
                 "speedup_work_factor": speedup, "seed": seed, "cpus": os.cpu_count(), "load_switches": load.switches,
                 "load_on_share": round(load.on_time / max(1e-9, load.total_time), 3) if not simulated else 0.5}
    return {k: t.figures() | {"config": chosen[k]} for k, t in totals.items()}, setup


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget (default 9)")
    ap.add_argument("--candidates", type=int, default=12, help="proposals per session (default 12: the "
                    "program stays at ~half its size or more, so its runs stay long enough to time)")
    ap.add_argument("--p-null", type=float, default=0.6, help="probability a proposal is a null change (default 0.6)")
    ap.add_argument("--speedup", type=float, default=0.82, help="a real speed-up's work factor (default 0.82)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--simulated", type=int, default=0, metavar="SESSIONS",
                    help="run SESSIONS sessions on a simulated machine (no processes; for tests and tuning)")
    ap.add_argument("--sim", default="", metavar="K=V,...",
                    help="the simulated machine's settings, e.g. jitter=0.05,wander=0.05,shift=0.4 (see Simulated)")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated: " + ", ".join(POLICIES))
    ap.add_argument("--records", metavar="FILE", help="write one JSON line per decision to FILE (what decided it, "
                    "every run with its load)")
    ap.add_argument("--replay", metavar="FILE", help="with --simulated: replay the pairs of a real run's --records "
                    "FILE instead of the simulated machine (see Replay)")
    args = ap.parse_args(argv)
    chosen = {k: POLICIES[k] for k in args.policies.split(",")}
    with (open(args.records, "w") if args.records else contextlib.nullcontext()) as records:
        res, setup = bench(args.minutes, args.candidates, args.p_null, args.speedup, args.seed, chosen,
                           args.simulated, {k: float(v) for k, v in (kv.split('=') for kv in args.sim.split(',') if kv)},
                           records, args.replay)
    print(f"drift: {setup['sessions']} sessions x up to {args.candidates} proposals per policy, interleaved; "
          f"null changes with p={args.p_null:g}, real ones do {args.speedup:g} of the work; background load on "
          f"{setup['load_on_share']:.0%} of the time, {setup['load_switches']} switches")
    print(f"{'policy':8} {'null kept':>16} {'speed-ups kept':>16} {'runs/decision':>14}   "
          "(± standard error over sessions)")
    for label, r in res.items():
        print(f"{label:8} {pct(r, 'null_keep_rate'):>16} {pct(r, 'speedup_keep_rate'):>16} "
              f"{r['runs_per_decision'] or 0:>9.2f} ± {r['runs_per_decision_se'] or 0:.2f}   "
              f"{r['null_kept']}/{r['nulls']} null, {r['speedups_kept']}/{r['speedups']} real, "
              f"{r['calibration_runs']} calibration runs")
    print("goals: null kept <= 5%, speed-ups kept >= 80%")
    print(json.dumps({**res, "setup": setup}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
