"""Scaling: N workers on a local Ray instance against N x one worker, and how busy the slots stay.

Each experiment sleeps for a fixed budget (no CPU: the 2-core machine only pays the harness),
on a Ray instance with N simulated GPU slots (a custom resource, `gpu_slot`); each researcher
takes a set time per proposal and writes a new score. The team is `[agent] parallel = "auto"`
(researchers added as the driver asks for them); `single` measures the same with one researcher
(`parallel = 1`): with a realistic agent (--agent-s 2 on a 10 s budget: a 60 s agent on a 300 s
run) one proposer cannot keep 16 workers busy. The full harness runs: proposals in their
worktree, commits, bundles to the node cache, the judge (sandbox included), the ledger, the
policy (greedy), keeps by compare-and-swap, rebases. For N in --slots it runs N x --rounds
experiments and reads, from the ledger alone (each run's worker, start, end, wall time):

    throughput   sum over slots of runs / (last end - first start)  [a slot's span: ramp-up and
                 drain at the ends of the session are excluded; every gap between its runs counts]
    efficiency   throughput(N) / (N x throughput(1))                [goal >= 0.9 at N = 16]
    busy         experiment wall time / slot span, over all slots   [goal >= 0.97 at N = 16 when the agent is
                                                                     faster than budget / N]
    wall eff.    all runs / (N x whole session) / throughput(1)     [for context: ramp-up included]

The last line is one JSON object: {"efficiency": {N: ...}, "busy_fraction": {N: ...}, "researchers":
{N: ...}, ..., "single": {the same for one researcher}}.

    python benchmarks/scaling.py [--budget 10] [--agent-s 0.05] [--rounds 3] [--slots 1 2 4 8 16] [--no-single]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOML = """\
[experiment]
run = "sleep $AUTORESEARCH_BUDGET_S; cat score.txt"
budget_s = {budget}
timeout_s = {timeout}
editable = ["score.txt"]

[metric]
name = "score"
direction = "min"
memory = ""

[policy]
name = "greedy"

[agent]
parallel = {parallel}

[engine]
name = "ray"
workers = {workers}
num_cpus = 0
resources = {{ gpu_slot = 1 }}
cache = "{cache}"
"""


class SleepyAgent:
    """Takes `delay` seconds to think, then proposes a new score (a unique change each time)."""

    name = "sleepy"

    def __init__(self, delay: float, seed: int):
        self.delay, self.rng = delay, random.Random(seed)

    def propose(self, ctx, workdir):
        from autoresearch.agents.base import Proposal

        time.sleep(self.delay)
        value = self.rng.random()
        (Path(workdir) / "score.txt").write_text(f"score: {value:.9f}\n")
        return Proposal(f"score {value:.9f}")


def project(folder: Path, budget: float, workers: int, parallel: str) -> Path:
    root = folder / f"n{workers}-{parallel.strip(chr(34))}"
    root.mkdir(parents=True)
    (root / "score.txt").write_text("score: 1.0\n")
    (root / "program.md").write_text("Make the score lower.\n")
    (root / "autoresearch.toml").write_text(TOML.format(budget=budget, timeout=budget * 3 + 30, workers=workers,
                                                        cache=folder / "node-cache", parallel=parallel))
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench project"]):
        subprocess.run(["git", *ident, *args], cwd=root, check=True, capture_output=True)
    return root


def measure(root: Path, workers: int, rounds: int, agent_s: float) -> dict:
    from autoresearch.config import load
    from autoresearch.ledger import Ledger
    from autoresearch.driver import Driver, Limits

    t0 = time.monotonic()
    Driver(load(root), "bench", SleepyAgent(agent_s, workers), limits=Limits(max_experiments=workers * rounds),
           grow=lambda n: SleepyAgent(agent_s, workers * 1000 + n)).run()
    elapsed = time.monotonic() - t0
    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    rows = ledger.experiments("bench")
    ledger.close()
    slots: dict[str, list[dict]] = {}
    for e in rows:
        for r in e.evidence.get("measurements", []):
            slots.setdefault(r["worker"].split("@")[0], []).append(r)
    rate = busy = span = 0.0
    for runs in slots.values():
        s = max(r["end"] for r in runs) - min(r["start"] for r in runs)
        rate += len(runs) / s
        busy += sum(r["wall_s"] for r in runs)
        span += s
    allruns = [r for runs in slots.values() for r in runs]
    whole = max(r["end"] for r in allruns) - min(r["start"] for r in allruns)
    return {"workers": workers, "slots_used": len(slots), "runs": len(allruns), "rows": len(rows),
            "researchers": len({e.researcher for e in rows if e.researcher}),
            "kept": sum(e.status == "keep" for e in rows), "throughput_per_h": rate * 3600,
            "busy_fraction": busy / span, "wall_rate": len(allruns) / whole, "elapsed_s": elapsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=10.0, help="seconds each experiment sleeps (default 10)")
    ap.add_argument("--agent-s", type=float, default=0.05, help="seconds the agent takes per proposal")
    ap.add_argument("--rounds", type=int, default=3, help="experiments per slot (default 3)")
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--no-single", action="store_true", help="skip the one-researcher comparison")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    most = max(args.slots)
    ray.init(num_cpus=2, resources={"gpu_slot": most}, object_store_memory=100 * 1024**2, include_dashboard=False,
             log_to_driver=False)

    @ray.remote(num_cpus=0, resources={"gpu_slot": 1})
    def warm() -> int:
        time.sleep(1.0)
        return os.getpid()

    ray.get([warm.remote() for _ in range(most)])  # start the worker processes once, as a long run would
    modes = {"auto": '"auto"'} | ({} if args.no_single else {"single": "1"})
    results: dict[str, dict[int, dict]] = {m: {} for m in modes}
    with tempfile.TemporaryDirectory(prefix="autoresearch-scaling-") as tmp:
        for n in args.slots:
            for mode, parallel in modes.items():
                r = results[mode][n] = measure(project(Path(tmp), args.budget, n, parallel), n, args.rounds,
                                               args.agent_s)
                print(f"N={n:>2} {mode:>6}: {r['runs']} runs in {r['elapsed_s']:.0f}s, {r['researchers']} "
                      f"researcher(s)", file=sys.stderr, flush=True)
    ray.shutdown()
    out: dict = {"budget_s": args.budget, "agent_s": args.agent_s, "rounds": args.rounds}
    for mode in modes:
        figures = table(results[mode], args, mode)
        if mode == "auto":
            out |= figures
        else:
            out[mode] = figures
    print(json.dumps(out))
    return 0


def table(results: dict[int, dict], args, mode: str) -> dict:
    one = results[min(args.slots)]["throughput_per_h"] / min(args.slots)
    print(f"\n{mode}: budget {args.budget:g}s per experiment, agent {args.agent_s:g}s per proposal, "
          f"{args.rounds} rounds; one worker: {one:.0f} experiments/h")
    print(f"{'N':>3} {'runs':>5} {'exp/h':>8} {'efficiency':>10} {'busy':>7} {'wall eff.':>9} {'kept':>5} "
          f"{'researchers':>11}")
    eff, busy, wall, who = {}, {}, {}, {}
    for n, r in results.items():
        eff[n] = r["throughput_per_h"] / (n * one)
        wall[n] = r["wall_rate"] * 3600 / (n * one)
        busy[n] = r["busy_fraction"]
        who[n] = r["researchers"]
        print(f"{n:>3} {r['runs']:>5} {r['throughput_per_h']:>8.0f} {eff[n]:>10.3f} {busy[n]:>7.1%} "
              f"{wall[n]:>9.3f} {r['kept']:>5} {who[n]:>11}")
    top = max(eff)
    return {"efficiency": {str(n): round(v, 4) for n, v in eff.items()},
            "busy_fraction": {str(n): round(v, 4) for n, v in busy.items()},
            "researchers": {str(n): v for n, v in who.items()},
            "wall_efficiency": {str(n): round(v, 4) for n, v in wall.items()},
            "experiments_per_hour": {str(n): round(r["throughput_per_h"], 1) for n, r in results.items()},
            "goal_met": eff[top] >= 0.9 and busy[top] >= 0.97}


if __name__ == "__main__":
    sys.exit(main())
