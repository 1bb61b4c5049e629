"""Review of the one driver (issue 14): defects found, each as a failing test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from conftest import TOML, TRAIN, ScriptedAgent, improve_by, load_cfg, make_project, rows_of, set_constant, write_control

from autoresearch.agents.base import Proposal
from autoresearch.driver import Driver, Limits


def nothing(ctx, wt: Path) -> str:
    return "looked, changed nothing"


def test_a_row_finished_by_its_researcher_is_reported_and_tracked_once(tmp_path):
    """finish_unrun (researcher thread) already runs after_record; Driver._proposed runs it again."""
    root = make_project(tmp_path / "proj")
    seen: Counter = Counter()

    def reporter(kind, **data):
        if kind == "finished":
            seen[data["exp"].id] += 1

    Driver(load_cfg(root), "twice", ScriptedAgent([nothing, improve_by(0.5)]), reporter=reporter,
           limits=Limits(max_experiments=2)).run()
    rows = rows_of(root, "twice")
    unrun = [e for e in rows if e.status == "discard" and e.commit is None]
    assert unrun, [(e.id, e.status, e.reason) for e in rows]
    assert all(seen[e.id] == 1 for e in rows), {e.id: seen[e.id] for e in rows}


HANG_ONCE = '''\
import os, re, signal, time
from pathlib import Path

calls = Path(__file__).with_name("calls")
n = int(calls.read_text()) if calls.exists() else 0
calls.write_text(str(n + 1))
if n == 0:  # the first call hangs and ignores SIGTERM: killed by run_tree at timeout_s + grace_s
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
train = Path("train.py")
text = train.read_text()
x = float(re.search(r"(?m)^X = (.*)$", text).group(1))
train.write_text(re.sub(r"(?m)^X = .*$", f"X = {round(x - 0.25, 6)}", text, count=1))
print(f"X -> {round(x - 0.25, 6)}")
'''


def test_an_agent_killed_by_its_own_timeout_is_a_crash_and_the_sequential_run_goes_on(tmp_path):
    """A command agent past agent.timeout_s is killed by run_tree after experiment.grace_s and returns a
    `crash` proposal; the original loop then asked again. The driver's watchdog gives up on the researcher
    at timeout_s + 5 s, before the agent's own kill (timeout_s + grace_s) comes back: the only researcher
    is retired and the whole sequential run stops after one failed call."""
    (tmp_path / "agent").mkdir()
    script = tmp_path / "agent" / "agent.py"
    script.write_text(HANG_ONCE)
    toml = TOML.replace("grace_s = 1", "grace_s = 8").format(
        extra_experiment='sandbox = "none"  # an unconfined agent: killed by its process group, after grace_s', extra=f'[agent]\nname = "command"\ncommand = "python {script}"\ntimeout_s = 1\n')
    root = make_project(tmp_path / "proj", toml=toml)
    cfg = load_cfg(root)
    d = Driver.from_config(cfg, "own-timeout", limits=Limits(max_experiments=3))
    assert d.single
    out = d.run()
    rows = rows_of(root, "own-timeout")
    shown = [(e.id, e.status, e.reason[:80]) for e in rows]
    assert "max-experiments" in out.stop_reason, (out.stop_reason, shown)
    assert any(e.status == "keep" and e.kind == "candidate" for e in rows), shown


class Hanger:
    """Hangs until released (past agent.timeout_s: the driver gives up on it), then says it is done."""

    name = "hanger"

    def __init__(self):
        self.release = threading.Event()

    def propose(self, ctx, wt):
        self.release.wait(60)
        return Proposal("", stop="released")


def test_a_run_that_tampers_after_a_researcher_was_given_up_on_is_still_charged(tmp_path):
    """Sandbox off: a run that rewrites results.tsv is a `violation` (Decisions.put_back_before). The window of
    a researcher given up on (Driver._watchdog) is never closed, so RunSession.put_back charges everything it
    finds from then on to that dead window and returns []: the tampering run is kept, no event says anything."""
    root = make_project(tmp_path / "proj", extra_experiment='sandbox = "none"',
                        extra_toml='[agent]\ntimeout_s = 1\nparallel = 2\n[engine]\nproposals_ahead = 1\n')
    # (spelled so the patch check does not see it: the point is what the guard finds after the run)
    forge = ('import time\ntime.sleep(16)\nw = open(os.sep.join(os.getcwd().split(os.sep)[:-4] + ["".join(["res", '
             '"ults.t", "sv"])]), "w")\nw.write("forged")\nw.close()\n')

    def tamper(ctx, wt: Path) -> str:
        text = (wt / "train.py").read_text().replace('print(f"aux: 7")', forge + 'print(f"aux: 7")')
        (wt / "train.py").write_text(text.replace("X = 3.0", "X = 1.0"))
        return "X = 1.0 (and forge results.tsv)"

    hanger = Hanger()
    try:
        Driver(load_cfg(root), "dead-window", [ScriptedAgent([tamper, lambda c, w: Proposal("", stop="done")]), hanger],
               limits=Limits(max_experiments=4)).run()
    finally:
        hanger.release.set()
    rows = rows_of(root, "dead-window")
    shown = [(e.id, e.researcher, e.status, e.reason[:90]) for e in rows]
    assert any("gave no answer" in e.reason for e in rows), shown  # the hanger was given up on
    forged = next(e for e in rows if e.description.startswith("X = 1.0"))
    assert forged.status == "violation", shown


class SlowStep:
    """Moves X down by its own step after `delay` seconds: distinct changes from each researcher."""

    name = "slowstep"

    def __init__(self, step: float, delay: float = 0.5):
        self.step, self.delay = step, delay

    def propose(self, ctx, wt):
        time.sleep(self.delay)
        text = (Path(wt) / "train.py").read_text()
        x = float(text.split("\nX = ", 1)[1].split("\n", 1)[0])
        set_constant(Path(wt) / "train.py", "X", round(x - self.step, 6))
        return Proposal(f"X {x} -> {round(x - self.step, 6)}")


def test_max_experiments_bounds_the_proposals_of_a_team(tmp_path):
    """--max-experiments 2 with four researchers and two workers: stop_reason() counts only rows already
    begun (session.count), not proposals being made, so _fill asks three researchers at once and every
    one of them becomes an experiment (each an agent call paid for)."""
    root = make_project(tmp_path / "proj", extra_toml="[engine]\nworkers = 2\n")
    Driver(load_cfg(root), "cap", [SlowStep(0.1 * i) for i in (1, 2, 3, 4)], limits=Limits(max_experiments=2)).run()
    rows = [e for e in rows_of(root, "cap") if e.kind != "baseline"]
    assert len(rows) <= 2, [(e.id, e.researcher, e.status) for e in rows]


FORGING_TRAIN = TRAIN.replace('print(f"aux: 7")', 'if ctl.get("forge"):\n    open(ctl["forge"], "w").write("forged\\n")\n'
                              'print(f"aux: 7")')


def test_confirm_runs_are_guarded(tmp_path):
    """`confirm` runs through Driver.measure, whose rows are `final`: no put_back ever runs for them (the original
    Loop.measure checked a StateGuard around every run). An unconfined confirm run that rewrites results.tsv
    (or moves the branch, or edits rows) is neither put back nor reported."""
    from autoresearch.confirm import confirm

    control = tmp_path / "control.json"
    root = make_project(tmp_path / "proj", files={"train.py": FORGING_TRAIN}, control=control,
                        extra_experiment='sandbox = "none"')
    Driver(load_cfg(root), "conf", ScriptedAgent([nothing]), limits=Limits(max_experiments=1)).run()
    before = (root / "results.tsv").read_text()
    write_control(control, forge=str(root / "results.tsv"))
    # the control: the same run, unguarded (straight from a shell), does forge the record
    r = subprocess.run([sys.executable, "train.py"], cwd=root, env=dict(os.environ, CONTROL=str(control)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (root / "results.tsv").read_text() == "forged\n"
    (root / "results.tsv").write_text(before)
    confirm(load_cfg(root), "conf", runs=2)
    assert (root / "results.tsv").read_text() == before


def test_a_team_whose_every_researcher_hit_its_own_cap_stops(tmp_path):
    """[[agents]] caps: Researcher.cap_reached() only hides a researcher from Driver._idle_researcher; nothing sets
    its `done` (researcher.py's docstring says the cap does). When every researcher is capped, stop_reason() finds
    nothing, no proposal is asked and nothing is in flight: the driver idles forever."""
    import dataclasses

    from autoresearch.researcher import Researcher
    from autoresearch.session import RunSession

    root = make_project(tmp_path / "proj")
    cfg = load_cfg(root)
    own = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, max_tokens=150))

    def paid(ctx, wt: Path) -> Proposal:
        improve_by(0.1)(ctx, wt)
        return Proposal("X down by 0.1", tokens_in=100)

    session = RunSession(cfg, "capped")
    team = [Researcher(session, ScriptedAgent([paid, paid, paid, paid]), label="paid#1", cfg=own, own_caps=True)]
    d = Driver(cfg, "capped", team, session=session, limits=Limits(max_experiments=10))
    out: list = []
    t = threading.Thread(target=lambda: out.append(d.run()), daemon=True)
    t.start()
    t.join(30)
    hung = t.is_alive()
    if hung:
        session.stop_requested = "stopped by the test"
        t.join(30)
    rows = [e for e in rows_of(root, "capped") if e.kind != "baseline"]
    assert len(rows) == 2, [(e.id, e.status, e.tokens_in) for e in rows]  # the cap (150 tokens) is hit after two
    assert not hung, "the driver idled with every researcher capped and no stop reason"
