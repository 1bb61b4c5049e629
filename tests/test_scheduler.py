"""The concurrent driver with the local engine: real git, real runs, real ledger, real processes.

Concurrent winners stack (the second is rebased and re-validated, a conflicting one is
discarded with the reason); proposals are made while experiments run, one agent call at a
time, and the agent sees what is in flight; results are compared within a hardware class
(and confirmed on a reference class); a killed head resumes without losing or repeating work.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from conftest import (ScriptedAgent, assert_consistent, cli, cli_popen, git, kill_group, make_project, rows_of,
                      set_constant, set_x, wait_until, write_control)

from autoresearch.config import load
from autoresearch.engines.local import LocalEngine
from autoresearch.driver import Driver, Limits

# X and Y are far apart, so changes to one never touch the other's lines in a merge.
TRAIN2 = '''\
"""Two constants, a score, and a per-experiment sleep read from CONTROL."""
import json
import os
import time

X = 3.0
# spacer
# spacer
# spacer
# spacer
Y = 3.0

path = os.environ.get("CONTROL", "")
ctl = json.loads(open(path).read()) if path and os.path.exists(path) else {}
me = os.environ.get("AUTORESEARCH_EXPERIMENT", "")
time.sleep(float(ctl.get("sleep", {}).get(me, ctl.get("default", 0))))
extra = float(ctl.get("class_offset", {}).get(os.environ.get("CLASS", ""), 0.0))
print(f"score: {(X - 1) ** 2 + (Y - 1) ** 2 + extra:.6f}")
'''


def project(tmp_path: Path, engine: str, **ctl) -> Path:
    control = write_control(tmp_path / "control.json", **ctl)
    return make_project(tmp_path / "proj", files={"train.py": TRAIN2}, control=control,
                        extra_toml=f"[engine]\n{engine}\n")


def set_y(value):
    def step(ctx, wt: Path) -> str:
        set_constant(wt / "train.py", "Y", value)
        return f"Y = {value}"
    return step


def test_concurrent_winners_stack_and_a_conflict_is_discarded(tmp_path):
    # A (#2) finishes first and is kept; B (#3) and C (#4) were proposed from the same parent
    # (the baseline) and both beat it. B's change is rebased onto A as #5 and re-validated;
    # C touches the line A changed: a conflict, discarded with the reason.
    root = project(tmp_path, "workers = 3", sleep={"2": 2.0, "3": 4.0, "4": 4.0})
    agent = ScriptedAgent([set_x(2.0), set_y(2.0), set_x(1.5)])
    out = Driver(load(root), "t", agent, limits=Limits(max_experiments=3)).run()
    assert out.stop_reason == "reached --max-experiments 3"
    rows = {e.id: e for e in rows_of(root, "t")}
    assert [(i, rows[i].kind, rows[i].status) for i in sorted(rows)] == [
        (1, "baseline", "keep"), (2, "candidate", "keep"), (3, "candidate", "discard"),
        (4, "candidate", "discard"), (5, "rebase", "keep")]
    a, b, c, rebased = rows[2], rows[3], rows[4], rows[5]
    assert b.parent == c.parent == a.parent == rows[1].commit  # all three started from the baseline
    assert "beat its parent #1" in b.reason and "rebased onto it as #5" in b.reason, b.reason
    assert b.evidence["rebased_as"] == 5 and b.metric == 5.0  # its own result (4 + 1) stays on its row
    assert "conflicts with the best in train.py" in c.reason, c.reason
    assert rebased.parent == a.commit and rebased.evidence["rebase_of"] == 3
    assert rebased.description == b.description and rebased.metric == 2.0  # re-validated: X=2 and Y=2 stack
    assert git(root, "rev-parse", "autoresearch/t") == rebased.commit
    tip_train = git(root, "show", f"{rebased.commit}:train.py")
    assert "X = 2.0" in tip_train and "Y = 2.0" in tip_train
    kinds = [ev["kind"] for ev in load_events(root)]
    assert "rebase" in kinds
    assert all(r["worker"].startswith("slot") for e in rows.values() for r in e.evidence.get("measurements", []))
    assert_consistent(root, "t")


def load_events(root: Path) -> list[dict]:
    from conftest import ledger_of

    led = ledger_of(root)
    try:
        return led.events("t")
    finally:
        led.close()


class RecordingAgent(ScriptedAgent):
    """Records when it was called, what it saw running, and whether two calls ever overlapped."""

    def __init__(self, steps, delay: float = 0.0):
        super().__init__(steps)
        self.delay, self.active, self.max_active, self.calls_at = delay, 0, 0, []
        self.lock = threading.Lock()

    def propose(self, ctx, workdir):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        t0 = time.time()
        try:
            time.sleep(self.delay)
            return super().propose(ctx, workdir)
        finally:
            self.calls_at.append((t0, time.time(), list(ctx.running), Path(workdir).name))
            with self.lock:
                self.active -= 1


def test_proposals_are_made_while_experiments_run_one_call_at_a_time_and_see_them(tmp_path):
    root = project(tmp_path, "workers = 2", default=1.0)
    agent = RecordingAgent([set_x(v) for v in (2.9, 2.8, 2.7, 2.6, 2.5, 2.4)], delay=0.2)
    Driver(load(root), "t", agent, limits=Limits(max_experiments=6)).run()
    rows = rows_of(root, "t")
    assert agent.max_active == 1 and {wt for *_, wt in agent.calls_at} == {"propose"}
    runs = sorted((r["start"], r["end"]) for e in rows for r in e.evidence["measurements"] if r["purpose"] == "primary")
    assert any(s2 < e1 for (s1, e1), (s2, e2) in zip(runs, runs[1:])), "two experiments never ran at once"
    overlapping = [c for c in agent.calls_at if any(s < c[0] < e for s, e in runs)]
    assert overlapping, "no proposal was made while an experiment ran"
    seen = [d for c in agent.calls_at for d in c[2]]
    assert seen and set(seen) <= {e.description for e in rows}, seen  # the agent saw what was in flight
    assert_consistent(root, "t")


def test_one_worker_with_a_proposal_ahead_keeps_its_slot_busy(tmp_path):
    # The agent takes 0.8 s, an experiment 1.5 s: sequential would leave the slot idle ~35% of the time.
    root = project(tmp_path, "workers = 1\nproposals_ahead = 1", default=1.5)
    agent = RecordingAgent([set_x(v) for v in (2.9, 2.8, 2.7, 2.6, 2.5)], delay=0.8)
    Driver(load(root), "t", agent, limits=Limits(max_experiments=5)).run()
    runs = sorted((r["start"], r["end"]) for e in rows_of(root, "t")[1:] for r in e.evidence["measurements"])
    busy = sum(e - s for s, e in runs) / (runs[-1][1] - runs[0][0])
    assert busy > 0.8, f"slot busy {busy:.0%} of the time"
    assert_consistent(root, "t")


class TwoClasses(LocalEngine):
    """Two local slots of different hardware classes; class B adds 10 to every score (a slower card)."""

    def start(self, run, ws, sandbox):
        slots = super().start(run, ws, sandbox)
        for slot, hw in zip(slots, "AB"):
            slot.hardware, slot.label = hw, f"slot{slot.index}:{hw}"
        return slots

    def slot_env(self, slot):
        return {"CLASS": slot.hardware}


def run_two_classes(tmp_path, engine_toml: str):
    # #2 (a non-improvement) holds slot A for 3 s, so #3 (a true improvement) runs on slot B.
    root = project(tmp_path, engine_toml, sleep={"2": 3.0}, class_offset={"B": 10.0})
    cfg = load(root)
    Driver(cfg, "t", ScriptedAgent([set_x(3.5), set_y(2.5)]), limits=Limits(max_experiments=2),
           engine=TwoClasses(cfg)).run()
    return root, {e.id: e for e in rows_of(root, "t")}


def test_results_are_compared_within_a_hardware_class(tmp_path):
    root, rows = run_two_classes(tmp_path, "workers = 2")
    base, worse, better = rows[1], rows[2], rows[3]
    assert (base.hardware, worse.hardware, better.hardware) == ("A", "A", "B")
    assert worse.status == "discard" and not [r for r in worse.evidence["measurements"] if r["purpose"] == "reference"]
    # 16.25 on B looks worse than the baseline's 8 on A; against the baseline measured on B (18) it wins.
    assert better.status == "keep" and better.metric == 16.25, better.reason
    ref = [r for r in better.evidence["measurements"] if r["purpose"] == "reference"]
    assert [(r["commit"], r["hardware"], r["metric"]) for r in ref] == [(base.commit, "B", 18.0)]
    assert better.evidence["incumbent"] == 18.0
    assert any(ev["kind"] == "reference" for ev in load_events(root))
    # (not assert_consistent: its "best keep" compares raw metrics across classes, which is the point here)
    assert git(root, "rev-parse", "autoresearch/t") == better.commit
    assert all(e.status in ("keep", "discard") for e in rows.values())


def test_two_tier_a_win_screened_on_another_class_is_confirmed_on_the_reference(tmp_path):
    root, rows = run_two_classes(tmp_path, 'workers = 2\nreference = "A"')
    better = rows[3]
    assert better.status == "keep", better.reason
    assert better.evidence["screen"]["hardware"] == "B" and better.evidence["screen"]["metric"] == 16.25
    confirm = [r for r in better.evidence["measurements"] if r["purpose"] == "confirm"]
    assert [(r["hardware"], r["metric"]) for r in confirm] == [("A", 6.25)]
    assert better.metric == 6.25 and better.evidence["incumbent"] == 8.0  # judged on the reference class
    assert_consistent(root, "t")


def test_a_killed_head_resumes_in_flight_work_without_losing_or_repeating_it(tmp_path):
    control = write_control(tmp_path / "control.json", default=3.0)
    root = make_project(tmp_path / "proj", files={"train.py": TRAIN2}, control=control,
                        extra_toml='[engine]\nworkers = 2\n[agent]\nname = "mutate"\n')
    args = ("run", "--tag", "t", "--no-live", "--max-experiments", "3")
    head = cli_popen(*args, cwd=root, log=tmp_path / "first.log")
    try:
        wait_until(lambda: len([e for e in rows_of(root, "t") if e.status == "running" and e.kind == "candidate"
                                and e.worker]) >= 2, timeout=60, what="two candidates running")
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=10)
    finally:
        kill_group(head)
    in_flight = [e.id for e in rows_of(root, "t") if e.status == "running" and e.kind == "candidate"]
    r = cli(*args, cwd=root, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {e.id: e for e in rows_of(root, "t")}
    resumed = {e.evidence.get("resumed_from"): e for e in rows.values() if e.evidence.get("resumed_from")}
    for i in in_flight:
        assert rows[i].status == "interrupted"
        assert i in resumed and resumed[i].commit == rows[i].commit and resumed[i].status in ("keep", "discard")
    assert_consistent(root, "t")
    status = json.loads(cli("status", "--json", "--tag", "t", cwd=root).stdout)
    workers = {w["worker"]: w for w in status["workers"]}
    assert set(workers) == {"slot0", "slot1"}, workers
    assert all(w["runs"] >= 1 and 0 < w["utilisation"] <= 1 and w["per_hour"] > 0 for w in workers.values())
