"""A team of researchers feeding N workers: the one driver with several proposers at once.

- four researchers and three workers, the head SIGKILLed at random moments and resumed: nothing
  lost or duplicated, the tip is the best;
- two researchers proposing the same change at the same moment: it runs once;
- one researcher hanging past its agent.timeout_s: its row is a `crash`, the others go on;
- every row records its researcher.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import HERE, TRAIN, assert_consistent, cli, kill_group, load_cfg, make_project, rows_of, set_constant

from autoresearch.agents.base import Proposal
from autoresearch.driver import Driver, Limits

SLOW_TRAIN = TRAIN.replace('print(f"aux: 7")', 'time.sleep(0.4)\nprint(f"aux: 7")')

TEAM = '''\
import re, sys, time
sys.path.insert(0, TESTS)
from autoresearch.config import load
from autoresearch.driver import Driver, Limits
from autoresearch.agents.base import Proposal


class Stepper:
    """Researcher i moves X down by its own step from wherever the best is: distinct changes."""

    name = "stepper"

    def __init__(self, i):
        self.i = i

    def propose(self, ctx, wt):
        time.sleep(0.15 * self.i)
        text = (wt / "train.py").read_text()
        x = float(re.search(r"(?m)^X = (.*)$", text).group(1))
        new = round(x - 0.0137 * self.i - 0.0001 * len(ctx.history), 6)
        (wt / "train.py").write_text(re.sub(r"(?m)^X = .*$", f"X = {new}", text, count=1))
        return Proposal(f"researcher {self.i}: X -> {new}")


Driver(load("."), "team", [Stepper(i) for i in (1, 2, 3, 4)],
       limits=Limits(max_experiments=int(sys.argv[1]))).run()
'''


class Sleeper:
    """Proposes `value` for X after `delay` seconds."""

    name = "sleeper"

    def __init__(self, value: float, delay: float):
        self.value, self.delay = value, delay

    def propose(self, ctx, wt):
        time.sleep(self.delay)
        set_constant(Path(wt) / "train.py", "X", self.value)
        return Proposal(f"X = {self.value}")


class Stepping:
    """Moves X down a little from the best each call."""

    name = "stepping"

    def __init__(self, step: float):
        self.step = step

    def propose(self, ctx, wt):
        text = (Path(wt) / "train.py").read_text()
        x = float(text.split("\nX = ", 1)[1].split("\n", 1)[0])
        set_constant(Path(wt) / "train.py", "X", round(x - self.step, 6))
        return Proposal(f"X {x} -> {round(x - self.step, 6)}")


def team_project(tmp_path: Path, workers: int, extra: str = "") -> Path:
    return make_project(tmp_path / "proj", files={"train.py": SLOW_TRAIN},
                        extra_toml=f"[engine]\nworkers = {workers}\n" + extra)


def test_four_researchers_three_workers_survive_sigkill_at_random_moments_and_resume(tmp_path):
    root = team_project(tmp_path, 3)
    script = tmp_path / "team.py"
    script.write_text(TEAM.replace("TESTS", repr(str(HERE))))
    rng = random.Random(14)
    seen: dict[int, tuple] = {}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    for round_ in range(3):
        head = subprocess.Popen([sys.executable, str(script), "40"], cwd=root, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(rng.uniform(2.5, 6.0))
            assert head.poll() is None, head.stderr.read().decode()[-2000:]
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        finally:
            kill_group(head)
        rows = rows_of(root, "team")
        for e in rows:  # a finished row never changes; a running one only becomes `interrupted`
            if e.id in seen and seen[e.id][0] != "running":
                assert (e.status, e.commit, e.metric) == seen[e.id], f"#{e.id} changed after it was final"
            seen[e.id] = (e.status, e.commit, e.metric)
    r = subprocess.run([sys.executable, str(script), "6"], cwd=root, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = assert_consistent(root, "team")  # every row terminal, nothing measured twice, tip = best keep
    by_id = {e.id: e for e in rows}
    assert set(seen) <= set(by_id), "a row was lost"
    for i, (status, commit, metric) in seen.items():
        if status != "running":
            assert (by_id[i].status, by_id[i].commit, by_id[i].metric) == (status, commit, metric)
    researchers = {e.researcher for e in rows if e.kind == "candidate"}
    assert len(researchers) >= 3, researchers  # several researchers proposed
    resumed = [e for e in rows if e.evidence.get("resumed_from")]
    interrupted = [e for e in rows if e.status == "interrupted" and e.commit and e.kind != "baseline"]
    assert interrupted, "no kill landed while an experiment was in flight: the test proved nothing"
    assert resumed, "nothing interrupted was resumed"
    for e in resumed:
        assert by_id[e.evidence["resumed_from"]].commit == e.commit


def test_two_researchers_proposing_the_same_change_run_it_once(tmp_path):
    root = team_project(tmp_path, 2)
    agents = [Sleeper(2.0, 0.3), Sleeper(2.0, 0.35)]
    Driver(load_cfg(root), "dup", agents, limits=Limits(max_experiments=2)).run()
    rows = rows_of(root, "dup")
    same = [e for e in rows if e.description == "X = 2.0"]
    assert len(same) >= 2, [(e.id, e.status, e.reason) for e in rows]
    ran = [e for e in same if e.metric is not None]
    assert len(ran) == 1 and ran[0].status == "keep"
    for twin in (e for e in same if e is not ran[0]):
        assert twin.status == "discard" and f"the same change as #{ran[0].id}" in twin.reason
    from autoresearch.ledger import Ledger

    led = Ledger(root / ".autoresearch" / "ledger.db")
    assert len(led.measurements(commit=ran[0].commit)) == 1  # measured once
    assert {e.researcher for e in same} == {"sleeper#1", "sleeper#2"}  # both proposed it
    assert_consistent(root, "dup")


def test_a_hanging_researcher_is_a_crash_and_the_others_go_on(tmp_path):
    root = team_project(tmp_path, 2, extra='[agent]\ntimeout_s = 2\n')
    hang = Sleeper(1.5, 600.0)
    t0 = time.monotonic()
    out = Driver(load_cfg(root), "hang", [hang, Stepping(0.1), Stepping(0.05)],
                 limits=Limits(max_experiments=8)).run()
    took = time.monotonic() - t0
    rows = rows_of(root, "hang")
    hung = [e for e in rows if e.researcher == "sleeper#1"]
    assert len(hung) == 1 and hung[0].status == "crash" and "gave no answer" in hung[0].reason, \
        [(e.id, e.researcher, e.status, e.reason) for e in rows]
    others = [e for e in rows if e.researcher in ("stepping#2", "stepping#3")]
    assert len(others) >= 6 and any(e.status == "keep" for e in others)  # they went on, and improved
    assert "max-experiments" in out.stop_reason
    assert took < 90, f"the run waited for the hung researcher ({took:.0f}s)"
    assert_consistent(root, "hang")


COMMAND_AGENT = '''\
import re, sys
from pathlib import Path

train = Path("train.py")
text = train.read_text()
x = float(re.search(r"(?m)^X = (.*)$", text).group(1))
train.write_text(re.sub(r"(?m)^X = .*$", f"X = {round(x - 0.031, 6)}", text, count=1))
print(f"command: X -> {round(x - 0.031, 6)}")
'''


def test_a_mixed_team_run_from_the_cli_adds_up_per_researcher(tmp_path):
    """[[agents]]: two mutate researchers and one command agent, three workers, a real `run`; status --json's
    per-researcher figures add up to its totals, and every row names its researcher."""
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "agent.py").write_text(COMMAND_AGENT)
    team = ('[agent]\nparallel = 3\n'
            '[[agents]]\nname = "mutate"\ncount = 2\n'
            f'[[agents]]\nname = "command"\ncommand = "python {tmp_path / "agent" / "agent.py"}"\nweight = 2\n')
    root = team_project(tmp_path, 3, extra=team)
    r = cli("run", "--tag", "mix", "--no-live", "--max-experiments", "9", cwd=root, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "team mutate#1, mutate#2, command#3" in r.stdout
    rows = assert_consistent(root, "mix")
    s = json.loads(cli("status", "--json", "--tag", "mix", cwd=root).stdout)
    team_rows, total = s["researchers"], s["researchers_total"]
    assert {t["researcher"] for t in team_rows} <= {"mutate#1", "mutate#2", "command#3"}
    assert len(team_rows) >= 2, team_rows
    for key in ("rows", "proposals", "keeps", "failed", "tokens"):
        assert sum(t[key] for t in team_rows) == total[key], key
    assert total["rows"] == s["experiments"] - 1  # every row but the baseline belongs to a researcher
    assert all(e.researcher for e in rows if e.kind != "baseline"), [(e.id, e.researcher) for e in rows]


class ColdStarts:
    """The local engine, but each slot's first job waits `cold` seconds before it starts (as a fresh Ray
    worker imports the harness on its first task)."""

    def __init__(self, cfg, cold: float):
        from autoresearch.engines.local import LocalEngine

        self.inner, self.cold, self.warm = LocalEngine(cfg), cold, set()
        self.name = "local"

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def submit(self, job, slot):
        from concurrent.futures import Future

        first = slot.index not in self.warm
        self.warm.add(slot.index)
        out: Future = Future()

        def go():
            if first:
                time.sleep(self.cold)
            inner = self.inner.submit(job, slot)
            inner.add_done_callback(lambda f: out.set_exception(f.exception()) if f.exception()
                                    else out.set_result(f.result()))

        import threading
        threading.Thread(target=go, daemon=True).start()
        return out


def test_a_slots_busy_time_is_its_runs_time_on_the_worker_not_a_cold_start(tmp_path):
    """parallel = "auto" asks for proposals a proposal's latency before slots free, from how long a slot is
    busy per run. A worker's one-off cold start (seconds, on its first job) is not part of that: counted,
    it made every later proposal late (at 16 Ray workers: 4.5 s idle per slot in the third round)."""
    root = team_project(tmp_path, 2, extra='[agent]\nparallel = "auto"\n')
    cfg = load_cfg(root)
    cold = 3.0
    d = Driver(cfg, "cold", [Stepping(0.1), Stepping(0.05)], limits=Limits(max_experiments=3),
               engine=ColdStarts(cfg, cold))
    d.run()
    rows = rows_of(root, "cold")
    assert sum(e.metric is not None for e in rows) >= 3, [(e.id, e.status, e.reason) for e in rows]
    ran = sorted(r["end"] - r["start"] for e in rows for r in e.evidence.get("measurements", []))
    assert max(ran) < cold, ran  # the runs themselves are short: the cold start is outside them
    assert d.slot_seconds() < cold / 2, (d.slot_seconds(), ran)



def test_program_md_read_is_recorded_once_when_researchers_start_together(tmp_path):
    """Every researcher notes the steering files (program.md, ideas.md) from its own thread as it builds its
    context; two starting at once recorded (and printed) `program.md read` twice (seen on the quickstart
    with parallel = "auto"). Here reporting is slow, so the two calls surely overlap."""
    import threading

    from autoresearch.control import Control
    from autoresearch.ledger import Ledger

    root = team_project(tmp_path, 2)
    led = Ledger(root / ".autoresearch" / "ledger.db")
    printed: list[str] = []

    def report(kind, message="", **_):
        time.sleep(0.3)
        printed.append(message)

    control = Control(root, "steer", led, report)
    threads = [threading.Thread(target=control.note_steering) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    steering = [e for e in led.events("steer") if e["kind"] == "steering"]
    assert len(steering) == 1 and "program.md read" in steering[0]["message"], steering
    assert len(printed) == 1, printed


class OutOfIdeas:
    name = "idle"

    def propose(self, ctx, wt):
        return Proposal("", stop="nothing left to try")


def test_researchers_stopping_for_the_same_reason_are_named_together(tmp_path):
    """A team of three that all had nothing to propose printed the same long reason three times in one line."""
    root = team_project(tmp_path, 2)
    out = Driver(load_cfg(root), "idle", [OutOfIdeas(), OutOfIdeas(), OutOfIdeas()],
                 limits=Limits(max_experiments=5)).run()
    assert out.stop_reason == ("every researcher stopped: the agents idle#1, idle#2, idle#3 stopped: "
                               "nothing left to try"), out.stop_reason


SLOW_COMMAND_AGENT = '''\
import os, random, re, time
from pathlib import Path

# the three researchers' calls overlap; the first researcher's (folder `propose`) ends first
time.sleep(0.3 if os.environ["AUTORESEARCH_WORKTREE"].endswith("propose") else 2.0)
train = Path("train.py")
text = train.read_text()
new = round(random.uniform(0.1, 0.9), 6)
train.write_text(re.sub(r"(?m)^X = .*$", f"X = {new}", text, count=1))
print(f"slow command: X -> {new}")
'''


def test_command_researchers_proposing_at_once_keep_their_own_logs_and_processes(tmp_path):
    """Each call of a process agent (command, claude-code, codex, ...) named its log and its processes' marker
    after the history's length alone. Researchers proposing at once see the same history: the calls shared one
    log (each deleting the others') and one marker, and the first to finish killed the others' processes — on
    tomli with three `command` researchers: one `crash` (exited -9) and two rows without their description."""
    from autoresearch.agents.command import CommandAgent

    (tmp_path / "agent.py").write_text(SLOW_COMMAND_AGENT)
    root = team_project(tmp_path, 2, extra=f'[agent]\nname = "command"\ncommand = "python {tmp_path / "agent.py"}"\n')
    cfg = load_cfg(root)
    Driver(cfg, "cmd", [CommandAgent(cfg) for _ in range(3)], limits=Limits(max_experiments=3)).run()
    rows = [e for e in rows_of(root, "cmd") if e.kind == "candidate"]
    assert len(rows) == 3, [(e.id, e.status, e.reason) for e in rows]
    assert all(e.status != "crash" for e in rows), [(e.id, e.status, e.reason) for e in rows]
    for e in rows:  # each row's description is its own call's output
        assert e.description.startswith("slow command: X -> "), e.description
        assert f"+X = {e.description.rsplit(' ', 1)[1]}" in e.patch, (e.description, e.patch)
    logs = sorted(p.name for p in (root / ".autoresearch" / "logs" / "cmd").glob("agent-*.log"))
    assert logs == ["agent-00001-2.log", "agent-00001-3.log", "agent-00001.log"], logs
    assert_consistent(root, "cmd")
