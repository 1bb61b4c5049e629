"""Harness overhead per experiment: commit, launch, judge, record, reset — everything but the run itself.

Runs N experiments (default 200) through the real Loop (real git, real SQLite, real process trees,
the project's default sandbox) on a throwaway project whose run command does nothing but print its
metric (`cat score.txt`), with a trivial in-process agent that changes one constant per proposal
(alternating a small improvement and a regression, so keep — the branch advances — and discard —
it stays — both happen).

Per experiment, wall time is measured between the loop's `proposing` events. Overhead is that wall
minus the command's own wall time, measured separately by running the same command bare
(`/bin/sh -c CMD`) outside the harness. The breakdown splits it into:
  propose  worktree reset, context, the agent (trivial here), check, commit, pin;
  run      the judge's launch-to-exit of the process tree (sandbox start-up, kill, /proc scans);
  judge    the rest of the trial: digests, review, parsing, decide, record, advance;
  after    results.tsv, the stop checks, until the next proposal.

`--agent command` proposes through the `command` agent instead (a shell command in its own process
tree: in the agent sandbox when there is one), and `--evaluate` sets `metric.command` so that every
experiment also pays for the separate evaluation (its own fresh checkout and process tree).

Usage: python benchmarks/overhead.py [-n 200] [--command 'cat score.txt'] [--sandbox auto|none]
                                     [--agent constant|command] [--evaluate] [--profile]
Ends with one line of JSON: {"median_overhead_s": ..., "p90_overhead_s": ..., "experiments": N, ...}.
Goal (SPEC §5): median < 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.agents.base import Proposal
from autoresearch.config import load
from autoresearch.driver import Driver, Limits

TOML = """\
[experiment]
run = "{command}"
budget_s = 1
timeout_s = 30
editable = ["score.txt"]
protected = ["judge.txt"]
sandbox = "{sandbox}"

[metric]
name = "score"
direction = "min"
memory = ""
{evaluate}

[agent]
repair_attempts = 0
{agent}

[policy]
name = "greedy"  # one measurement per experiment: extra confirmation runs are not overhead
"""


# The `command` agent's version of ConstantAgent: better or worse at random (keeps and discards both happen).
AGENT_SCRIPT = (
    "import random; p = open('score.txt').read().split(':'); v = float(p[1]); "
    "n = v - 0.001 if random.random() < 0.5 else v + 1.0; "
    "open('score.txt', 'w').write(f'score: {n:.6f}' + chr(10)); print(f'score {v:.6f} -> {n:.6f}')"
)


class ConstantAgent:
    """Changes the one constant: a small step down (better), then a step up (worse), and so on."""

    name = "constant"

    def __init__(self) -> None:
        self.calls = 0

    def propose(self, ctx, workdir: Path) -> Proposal:
        self.calls += 1
        path = workdir / "score.txt"
        value = float(path.read_text().split(":")[1])
        new = value - 0.001 if self.calls % 2 else value + 1.0
        path.write_text(f"score: {new:.6f}\n")
        return Proposal(f"score {value:.6f} -> {new:.6f} (#{self.calls})")


def make_project(root: Path, command: str, sandbox: str, agent: str = "constant", evaluate: bool = False) -> None:
    root.mkdir(parents=True)
    (root / "score.txt").write_text("score: 100.000000\n")
    (root / "judge.txt").write_text("the frozen part\n")
    (root / "program.md").write_text("# overhead benchmark\n")
    agent_keys = (f'name = "command"\ncommand = "python -c \\"{AGENT_SCRIPT}\\""' if agent == "command" else "")
    eval_keys = 'command = "cat score.txt"' if evaluate else ""  # the evaluation prints the metric; the run's is ignored
    (root / "autoresearch.toml").write_text(TOML.format(command=command, sandbox=sandbox, agent=agent_keys,
                                                        evaluate=eval_keys))
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env, capture_output=True)


def bare_command_s(command: str, cwd: Path, n: int = 30) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", command], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="experiments (default 200)")
    ap.add_argument("--command", default="cat score.txt", help="the run command (default: cat score.txt)")
    ap.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "none"))
    ap.add_argument("--agent", default="constant", choices=("constant", "command"),
                    help="constant: an in-process agent; command: a shell command as its own (sandboxed) process tree")
    ap.add_argument("--evaluate", action="store_true", help="score through metric.command (a separate evaluation)")
    ap.add_argument("--profile", action="store_true", help="print the harness's hottest functions")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="autoresearch-overhead-") as tmp:
        root = Path(tmp) / "proj"
        make_project(root, args.command, args.sandbox, args.agent, args.evaluate)
        bare = bare_command_s(args.command, root)
        cfg = load(root)
        marks: list[tuple[str, float, object]] = []

        def reporter(kind: str, **data) -> None:
            if kind in ("proposing", "started", "finished"):
                marks.append((kind, time.perf_counter(), data.get("exp")))

        from autoresearch.agents.command import CommandAgent

        agent = CommandAgent(cfg) if args.agent == "command" else ConstantAgent()
        loop = Driver(cfg, "bench", agent, limits=Limits(max_experiments=args.n), reporter=reporter)
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        outcome = loop.run()
        total = time.perf_counter() - t0
        if profiler:
            profiler.disable()
        rows = loop.ledger.experiments("bench")
        sandbox = loop.session.box.mode if loop.session.box else "?"

    # Per experiment: from its `proposing` to the next `proposing` (the last one: to its `finished` + after).
    starts = [i for i, m in enumerate(marks) if m[0] == "proposing"]
    per, parts = [], {"propose": [], "run": [], "judge": [], "after": []}
    by_id = {e.id: e for e in rows}
    for k, i in enumerate(starts[:-1]):
        j = starts[k + 1]
        seg = marks[i:j]
        started = next((m for m in seg if m[0] == "started"), None)
        finished = next((m for m in seg if m[0] == "finished"), None)
        if started is None or finished is None:
            continue  # a proposal refused before running (not expected here)
        exp = by_id[finished[2].id]
        wall = marks[j][1] - marks[i][1]
        run_wall = exp.wall_s or 0.0
        per.append(wall - bare)
        parts["propose"].append(started[1] - marks[i][1])
        parts["run"].append(run_wall - bare)
        parts["judge"].append(finished[1] - started[1] - run_wall)
        parts["after"].append(marks[j][1] - finished[1])

    statuses: dict[str, int] = {}
    for e in rows:
        statuses[e.status] = statuses.get(e.status, 0) + 1
    print(f"autoresearch overhead: {len(per)} experiments measured ({args.n} run) in {total:.1f}s, sandbox {sandbox}")
    print(f"  agent {args.agent}, evaluation {'metric.command' if args.evaluate else 'none (the log)'}")
    print(f"  run command: {args.command!r}, bare wall {bare * 1000:.1f} ms; statuses {statuses}")
    print(f"  overhead per experiment: median {statistics.median(per):.3f}s  p90 {pct(per, 0.9):.3f}s  "
          f"min {min(per):.3f}s  max {max(per):.3f}s")
    q = max(1, len(per) // 4)
    print(f"  trend: median of the first {q} {statistics.median(per[:q]):.3f}s, of the last {q} "
          f"{statistics.median(per[-q:]):.3f}s (growth with the ledger's size)")
    print("  breakdown (median):  " + "  ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in parts.items()))
    if profiler:
        import pstats

        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    out = {
        "median_overhead_s": round(statistics.median(per), 4),
        "p90_overhead_s": round(pct(per, 0.9), 4),
        "experiments": len(per),
        "breakdown_median_s": {k: round(statistics.median(v), 4) for k, v in parts.items()},
        "bare_command_s": round(bare, 4),
        "sandbox": sandbox,
        "agent": args.agent,
        "evaluate": args.evaluate,
        "stop_reason": outcome.stop_reason,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
