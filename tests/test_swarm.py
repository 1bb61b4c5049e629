"""The swarm end to end: a local bare repository as the hub, participants as separate `autoresearch run`
processes in separate clones of one tiny project (tests/conftest.py: lower `score` is better, X = 1 is
the optimum, prepare.py is the protected evaluator's constant).

- alice finds a real improvement (X = 1.0: 4.5 -> 0.5) and publishes it;
- bob and carol (same hardware class) run at the same moment and adopt it after re-measuring it, within
  their first experiments; both push concurrently and the hub loses none of their records;
- dave declares another hardware class: he never adopts or ranks their numbers;
- malicious namespaces: a fake metric for the unchanged start, a commit editing the protected
  evaluator, a copy of alice's records, a record that is not JSON, a lie on a real but useless change
  (refuted by re-measurement, never adopted again), and a rewritten history: none is kept anywhere,
  each refused with its reason, and `swarm status` shows the reputation;
- a participant SIGKILLed in the middle of a push leaves the hub at its previous state; restarted, it
  publishes exactly its ledger and its ledger is consistent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (assert_consistent, cli, cli_popen, git, kill_group, ledger_of, make_project, rows_of, wait_until,
                      write_control)

CLASS = "cpu-test"
IMPROVE = "sed -i 's/^X = .*/X = 1.0/' train.py && echo 'X = 1.0' > \"$AUTORESEARCH_DESCRIPTION_FILE\""
IDLE = "echo \"# idle $(date +%s%N)\" >> train.py && echo 'a comment' > \"$AUTORESEARCH_DESCRIPTION_FILE\""


def join(tmp: Path, origin: Path, hub: Path, name: str, hardware: str = CLASS) -> Path:
    root = tmp / name
    git(tmp, "clone", "-q", str(origin), str(root))
    r = cli("swarm", "init", str(hub), "--name", name, "--sync", "0", "--hardware", hardware, cwd=root)
    assert r.returncode == 0, r.stderr
    return root


def run(root: Path, agent_command: str, n: int, log: Path) -> subprocess.Popen:
    return cli_popen("run", "--tag", "t", "--agent", "command", "--agent-command", agent_command,
                     "--max-experiments", str(n), "--no-live", cwd=root, log=log)


def hub_refs(hub: Path) -> dict[str, str]:
    out = git(hub, "for-each-ref", "--format=%(refname) %(objectname)", "refs/autoresearch-swarm/")
    return dict(line.split() for line in out.splitlines()) if out else {}


def hub_records(hub: Path, name: str) -> dict[int, dict]:
    tip = hub_refs(hub).get(f"refs/autoresearch-swarm/{name}/log")
    if not tip:
        return {}
    out = {}
    for fname in git(hub, "ls-tree", "--name-only", tip).splitlines():
        if fname.startswith("r-"):
            data = json.loads(git(hub, "cat-file", "blob", f"{tip}:{fname}"))
            out[data["id"]] = data
    return out


def forge(tmp: Path, origin: Path, hub: Path, name: str, records, files: dict | None = None,
          raw: str | None = None, best: str = "") -> str:
    """Publish `name`'s namespace by hand (what a malicious participant can push to a plain bare hub):
    a log whose first record is alice's task, then `records` (dicts, or a function of the best commit
    returning them; `raw` text adds one unparsed record); best -> a commit changing `files` on the start
    (the start itself when `files` is None), or the hub's ref `best`. Returns the best commit."""
    work = tmp / f"forge-{name}"
    if not work.exists():
        git(tmp, "clone", "-q", str(origin), str(work))
    git(work, "reset", "-q", "--hard", "origin/main")
    start = git(work, "rev-parse", "HEAD")
    commit = start
    if files:
        for rel, text in files.items():
            (work / rel).write_text(text)
        git(work, "commit", "-qam", f"{name}'s change")
        commit = git(work, "rev-parse", "HEAD")
    git(work, "fetch", "-q", str(hub), "+refs/autoresearch-swarm/alice/log:refs/alice-log")
    if best:
        git(work, "fetch", "-q", str(hub), f"+{best}:refs/copied-best")
        commit = git(work, "rev-parse", "refs/copied-best")
    task = git(work, "cat-file", "blob", "refs/alice-log:task.json")
    records = records(commit) if callable(records) else records
    entries, tip = [], None
    blobs = [("task.json", task)] + [(f"r-{r['id']:06d}.json", json.dumps(r)) for r in records]
    if raw is not None:
        blobs.append(("r-000002.json", raw))
    for fname, text in blobs:
        oid = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=work, input=text, text=True,
                             capture_output=True).stdout.strip()
        entries.append(f"100644 blob {oid}\t{fname}")
        tree = subprocess.run(["git", "mktree"], cwd=work, input="\n".join(entries) + "\n", text=True,
                              capture_output=True).stdout.strip()
        tip = git(work, "commit-tree", tree, *(["-p", tip] if tip else []), "-m", fname)
    git(work, "push", "-q", "-f", str(hub), f"{tip}:refs/autoresearch-swarm/{name}/log",
        f"{commit}:refs/autoresearch-swarm/{name}/best/{CLASS}")
    return commit


def record(name: str, i: int, commit: str, metric: float, start: str, **kw) -> dict:
    return {"v": 1, "participant": name, "id": i, "commit": commit, "parent": start, "description": f"{name} idea {i}",
            "status": "keep", "kind": "candidate", "metric": metric, "evidence": {}, "hardware": CLASS,
            "agent": "x", "cost_usd": 0.0, "at": time.time(), "origin": "", **kw}


def notes_of(root: Path) -> list[dict]:
    led = ledger_of(root)
    try:
        return led.swarm_notes("t")
    finally:
        led.close()


@pytest.fixture
def swarm(tmp_path: Path):
    origin = make_project(tmp_path / "origin")
    hub = tmp_path / "hub.git"
    git(tmp_path, "init", "-q", "--bare", str(hub))
    return tmp_path, origin, hub


def test_improvement_spreads_and_poison_is_refused(swarm):
    tmp, origin, hub = swarm
    start = git(origin, "rev-parse", "HEAD")
    alice = join(tmp, origin, hub, "alice")
    p = run(alice, IMPROVE, 1, tmp / "alice.log")
    assert p.wait(timeout=120) == 0, (tmp / "alice.log").read_text()
    kept = [e for e in rows_of(alice, "t") if e.status == "keep" and e.kind != "baseline"]
    assert [e.metric for e in kept] == [0.5]
    assert set(hub_records(hub, "alice")) == {e.id for e in rows_of(alice, "t")}  # every row published
    origin_id = f"alice#{kept[0].id}"

    # poison, each in its own namespace so each reason shows
    forge(tmp, origin, hub, "mallory-fake", [record("mallory-fake", 1, start, 0.01, start)])
    forge(tmp, origin, hub, "mallory-evil", lambda c: [record("mallory-evil", 1, c, -99.5, start)],
          files={"prepare.py": "OFFSET = -100.0\n"})
    copied = [dict(r) for r in hub_records(hub, "alice").values()]  # alice's records and best, as they are
    forge(tmp, origin, hub, "mallory-copy", copied, best=f"refs/autoresearch-swarm/alice/best/{CLASS}")
    forge(tmp, origin, hub, "mallory-junk", [record("mallory-junk", 1, start, 0.3, start, status="discard")],
          raw="{not json")
    useless = (origin / "train.py").read_text().replace("Y = 2", "Y = 5")  # changes nothing measurable
    forge(tmp, origin, hub, "mallory-liar", lambda c: [record("mallory-liar", 1, c, 0.1, start)],
          files={"train.py": useless})

    bob, carol = join(tmp, origin, hub, "bob"), join(tmp, origin, hub, "carol")
    dave = join(tmp, origin, hub, "dave", hardware="other-class")
    procs = {n: run(r, IDLE, 3, tmp / f"{n}.log") for n, r in (("bob", bob), ("carol", carol), ("dave", dave))}
    for n, proc in procs.items():
        assert proc.wait(timeout=150) == 0, (tmp / f"{n}.log").read_text()

    for root in (bob, carol):
        rows = assert_consistent(root, "t")
        adopted = [e for e in rows if e.agent == "swarm" and e.status == "keep"]
        assert len(adopted) == 1 and adopted[0].evidence["origin"] == origin_id, \
            [(e.description, e.status) for e in rows]
        assert adopted[0].description.startswith(f"adopt {origin_id}: ") and adopted[0].metric == 0.5
        assert adopted[0].id <= rows[0].id + 2  # within its first two experiments after the baseline
        assert "X = 1.0" in git(root, "show", "autoresearch/t:train.py")
        # nothing of the poison is kept; the one claim worth measuring was measured and refuted
        for e in rows:
            assert not (e.status == "keep" and str(e.evidence.get("origin", "")).startswith("mallory")), e
        notes = notes_of(root)
        why = {n["peer"]: (n["status"], n["reason"]) for n in notes if n["peer"].startswith("mallory")}
        assert why["mallory-fake"][0] == "refused" and "unchanged start" in why["mallory-fake"][1]
        assert why["mallory-evil"][0] == "banned" and "prepare.py" in why["mallory-evil"][1]
        assert why["mallory-copy"][0] == "refused" and "copy of another participant" in why["mallory-copy"][1]
        assert why["mallory-junk"][0] == "refused" and "not JSON" in why["mallory-junk"][1]
        assert why["mallory-liar"][0] == "refuted" and "claimed 0.1" in why["mallory-liar"][1]
        liars = [e for e in rows if e.evidence.get("origin") == "mallory-liar#1"]
        assert len(liars) == 1 and liars[0].status == "discard"  # measured once, never adopted again
        assert [n["status"] for n in notes if n["peer"] == "alice"] == ["held"]
        # the hub has every row of this participant (bob and carol pushed at the same moment)
        assert set(hub_records(hub, root.name)) == {e.id for e in rows}
        assert hub_refs(hub)[f"refs/autoresearch-swarm/{root.name}/best/{CLASS}"] == \
            git(root, "rev-parse", "autoresearch/t")

    # another hardware class: never adopts, and nobody adopts its numbers
    dave_rows = assert_consistent(dave, "t")
    assert not [e for e in dave_rows if e.agent == "swarm"]
    assert not [n for n in notes_of(dave) if n["status"] in ("held", "refuted")]
    assert {r["hardware"] for r in hub_records(hub, "dave").values()} == {"other-class"}

    r = cli("swarm", "status", "--json", cwd=bob)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    parts = {p["name"]: p for p in st["participants"]}
    assert parts["alice"]["reputation"]["held"] == 1
    assert parts["mallory-liar"]["reputation"]["refuted"] == 1 and parts["mallory-evil"]["reputation"]["banned"] == 1
    assert set(st["frontier"]) == {CLASS, "other-class"}
    assert all(b["participant"] != "mallory-liar" for b in st["frontier"][CLASS])  # refused peers not ranked
    assert [b["participant"] for b in st["frontier"]["other-class"]] == ["dave"]
    spread = {s["idea"]: sorted(a["adopted_by"] for a in s["adopted"]) for s in st["spread"]}
    assert spread == {origin_id: ["bob", "carol"]}
    text = cli("swarm", "status", cwd=bob).stdout
    in_order = ", ".join(a["adopted_by"] for a in st["spread"][0]["adopted"])  # as they adopted it
    assert sorted(a["at"] for a in st["spread"][0]["adopted"]) == [a["at"] for a in st["spread"][0]["adopted"]]
    assert "mallory-evil" in text and "prepare.py" in text and f"idea {origin_id}: adopted by {in_order}" in text
    assert cli("report", "--html", cwd=bob).returncode == 0  # the HTML report's swarm view
    page = (bob / "report.html").read_text()
    view = page[page.index("<h2>The swarm</h2>"):]
    assert origin_id in view and "mallory-evil" in view and "banned 1" in view and "refuted 1" in view
    # the hub's side, as `swarm status --json` has it: the frontier per class and how the idea spread
    frontier = table(page, "swarm-frontier")
    assert {(r[0], r[2]) for r in frontier} == {(CLASS, b["participant"]) for b in st["frontier"][CLASS]} | \
        {("other-class", "dave")}
    assert [r[3] for r in frontier if r[0] == CLASS][0] == "0.5" and not [r for r in frontier if "mallory" in r[2]]
    assert {r[2]: r[4] for r in frontier if r[0] == CLASS}["alice"] == "verified here"
    spread_rows = {r[0]: r for r in table(page, "swarm-spread")}
    assert set(spread_rows) == {origin_id} and spread_rows[origin_id][1] == "X = 1.0"
    assert spread_rows[origin_id][2] == "alice"
    by = {a["adopted_by"]: a["id"] for a in st["spread"][0]["adopted"]}
    assert all(f"{name} (#{i}," in spread_rows[origin_id][4] for name, i in by.items()) and set(by) == {"bob", "carol"}


def table(page: str, table_id: str) -> list[list[str]]:
    """The data rows of the table `table_id` in `page`, each a list of its cells' text."""
    from html.parser import HTMLParser

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.inside, self.rows, self.cell = False, [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table" and dict(attrs).get("id") == table_id:
                self.inside = True
            elif self.inside and tag == "tr":
                self.rows.append([])
            elif self.inside and tag == "td":
                self.cell = ""

        def handle_endtag(self, tag):
            if tag == "table":
                self.inside = False
            elif tag == "td" and self.cell is not None:
                self.rows[-1].append(self.cell)
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    parser = Cells()
    parser.feed(page)
    return [r for r in parser.rows if r]


def test_rewritten_history_is_refused(swarm):
    tmp, origin, hub = swarm
    start = git(origin, "rev-parse", "HEAD")
    alice = join(tmp, origin, hub, "alice")
    assert run(alice, IDLE, 1, tmp / "alice.log").wait(timeout=120) == 0
    useless = (origin / "train.py").read_text().replace("Y = 2", "Y = 7")
    forge(tmp, origin, hub, "eve", lambda c: [record("eve", 1, c, 4.5, start)],
          files={"train.py": useless})
    bob = join(tmp, origin, hub, "bob")
    assert run(bob, IDLE, 1, tmp / "bob.log").wait(timeout=120) == 0
    assert not [n for n in notes_of(bob) if n["peer"] == "eve"]  # a well-formed log: accepted as seen
    # eve rewrites her published record (its 4.5 becomes 0.1): the chain seen is gone
    commit = forge(tmp, origin, hub, "eve", lambda c: [record("eve", 1, c, 0.1, start)], files={"train.py": useless})
    assert run(bob, IDLE, 1, tmp / "bob.log").wait(timeout=120) == 0
    why = [n["reason"] for n in notes_of(bob) if n["peer"] == "eve"]
    assert len(why) == 1 and "rewritten" in why[0], why
    assert not [e for e in rows_of(bob, "t") if e.evidence.get("origin", "").startswith("eve")]
    assert commit  # the forged best exists on the hub, and was never used


def test_sigkill_mid_push_leaves_hub_and_ledger_consistent(swarm):
    tmp, origin, hub = swarm
    hooks = hub / "hooks"
    flag, inside = tmp / "slow", tmp / "in-push"
    (hooks / "pre-receive").write_text(f"#!/bin/sh\nif [ -e {flag} ]; then touch {inside}; sleep 30; fi\n"
                                       "cat >/dev/null\n")
    (hooks / "pre-receive").chmod(0o755)
    erin = join(tmp, origin, hub, "erin")
    assert run(erin, IMPROVE, 1, tmp / "erin.log").wait(timeout=120) == 0
    before = hub_refs(hub)
    flag.touch()
    proc = run(erin, IDLE, 3, tmp / "erin.log")
    try:
        wait_until(inside.exists, timeout=90, what="erin's push to reach the hub")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        kill_group(proc)
    assert hub_refs(hub) == before  # the push that was cut never moved a ref
    assert subprocess.run(["git", "fsck", "--no-dangling"], cwd=hub, capture_output=True).returncode == 0
    flag.unlink()
    assert run(erin, IDLE, 1, tmp / "erin.log").wait(timeout=120) == 0  # restarted: resumes, then publishes
    rows = assert_consistent(erin, "t")
    published = hub_records(hub, "erin")
    assert set(published) == {e.id for e in rows}
    assert {i: r["status"] for i, r in published.items()} == {e.id: e.status for e in rows}
    led = ledger_of(erin)
    try:
        assert led.verify("t") == []
    finally:
        led.close()


TWO_AXES = '''\
"""Two independent knobs, far apart so that changes to each merge cleanly."""
from prepare import OFFSET

X = 3.0
# ---
# ---
# ---
# ---
Z = 3.0
print("aux: 7")
print(f"score: {(X - 1.0) ** 2 + (Z - 1.0) ** 2 + 0.5 + OFFSET:.6f}")
'''


def bob_meets_alice(tmp_path, train: str):
    """bob sets Z = 2 alone (8.5 -> 5.5), alice in the swarm sets X = 1 (8.5 -> 4.5); then bob joins the swarm
    and runs three idle rounds, adopting what he can of hers. Returns bob's folder."""
    origin = make_project(tmp_path / "origin", files={"train.py": train})
    hub = tmp_path / "hub.git"
    git(tmp_path, "init", "-q", "--bare", str(hub))
    bob = tmp_path / "bob"
    git(tmp_path, "clone", "-q", str(origin), str(bob))
    z2 = "sed -i 's/^Z = .*/Z = 2.0/' train.py && echo 'Z = 2.0' > \"$AUTORESEARCH_DESCRIPTION_FILE\""
    assert run(bob, z2, 1, tmp_path / "bob.log").wait(timeout=120) == 0  # alone: 8.5 -> 5.5
    alice = join(tmp_path, origin, hub, "alice")
    assert run(alice, IMPROVE, 1, tmp_path / "alice.log").wait(timeout=120) == 0  # 8.5 -> 4.5 (X = 1)
    assert cli("swarm", "init", str(hub), "--name", "bob", "--sync", "0", "--hardware", CLASS, cwd=bob).returncode == 0
    assert run(bob, IDLE, 3, tmp_path / "bob.log").wait(timeout=120) == 0
    return bob


def test_a_peers_change_is_also_merged_onto_the_local_best(tmp_path):
    bob = bob_meets_alice(tmp_path, TWO_AXES)
    rows = assert_consistent(bob, "t")
    swarm_rows = [(e.description.split(":")[0], e.status, e.metric) for e in rows if e.agent == "swarm"]
    # her change on bob's own best first (both axes, 1.5): kept, so her code as it is (4.5, which the local
    # best now holds and beats) is not measured: one experiment instead of two
    assert swarm_rows == [("merge alice#2", "keep", 1.5)], swarm_rows
    tip = git(bob, "show", "autoresearch/t:train.py")
    assert "X = 1.0" in tip and "Z = 2.0" in tip
    notes = [(n["status"], n["reason"]) for n in notes_of(bob) if n["peer"] == "alice"]
    assert len(notes) == 1 and notes[0][0] == "held" and "merged onto the local best" in notes[0][1], notes


CLASHING_AXES = TWO_AXES.replace('print(f"score: {(X - 1.0) ** 2 + (Z - 1.0) ** 2 + 0.5 + OFFSET:.6f}")',
                                 'print(f"score: {(X - 1.0) ** 2 + (Z - 1.0) ** 2 + 0.5 + 10 * (X < 2 and Z < 3)'
                                 ' + OFFSET:.6f}")')


def test_when_the_merge_measures_worse_the_peers_code_as_it_is_is_tried_and_kept(tmp_path):
    """The two changes clash (together they cost 10): alice's change on bob's best (11.5) is not kept,
    so her code as it is (4.5, better than bob's 5.5) is measured next and kept: what measures best."""
    bob = bob_meets_alice(tmp_path, CLASHING_AXES)
    rows = assert_consistent(bob, "t")
    swarm_rows = [(e.description.split(":")[0], e.status, e.metric) for e in rows if e.agent == "swarm"]
    assert swarm_rows == [("merge alice#2", "discard", 11.5), ("adopt alice#2", "keep", 4.5)], swarm_rows
    tip = git(bob, "show", "autoresearch/t:train.py")
    assert "X = 1.0" in tip and "Z = 3.0" in tip
    # one verdict on the claim, from her code as it is (the merge alone says nothing against her)
    notes = [(n["status"], n["reason"]) for n in notes_of(bob) if n["peer"] == "alice"]
    assert len(notes) == 1 and notes[0][0] == "held" and "merged" not in notes[0][1], notes


@pytest.mark.parametrize("verify", [True, False])
def test_control_a_copy_of_anothers_records(swarm, monkeypatch, verify):
    """mallory republishes alice's records and best as hers (alice has left the hub). With the checks,
    mallory is refused and nothing of hers is used; the control without them credits her: bob keeps
    alice's change as `mallory-copy#2` and mallory's reputation says `held`."""
    from autoresearch import swarm as swarm_mod
    from autoresearch.driver import Driver, Limits

    from conftest import ScriptedAgent, load_cfg

    tmp, origin, hub = swarm
    alice = join(tmp, origin, hub, "alice")
    assert run(alice, IMPROVE, 1, tmp / "alice.log").wait(timeout=120) == 0
    copied = [dict(r) for r in hub_records(hub, "alice").values()]
    forge(tmp, origin, hub, "mallory-copy", copied, best=f"refs/autoresearch-swarm/alice/best/{CLASS}")
    for ref in hub_refs(hub):
        if "/alice/" in ref:
            git(hub, "update-ref", "-d", ref)
    bob = join(tmp, origin, hub, "bob")
    monkeypatch.setattr(swarm_mod, "VERIFY", verify)
    Driver(load_cfg(bob), "t", ScriptedAgent(), limits=Limits(max_experiments=2)).run()
    rows = assert_consistent(bob, "t")
    stolen = [e for e in rows if e.evidence.get("origin", "").startswith("mallory-copy") and e.status == "keep"]
    notes = [(n["status"], n["reason"]) for n in notes_of(bob) if n["peer"] == "mallory-copy"]
    if verify:
        assert not stolen and len(notes) == 1 and notes[0][0] == "refused" and "copy of another" in notes[0][1]
    else:
        assert len(stolen) == 1 and [s for s, _ in notes] == ["held"]


@pytest.mark.parametrize("verify", [True, False])
def test_control_a_claim_that_edits_the_evaluator(swarm, monkeypatch, verify):
    """mallory's best edits the protected prepare.py (OFFSET = -100: every score 100 better). With the
    checks it is refused before anything runs and mallory is banned; the control without them runs her
    code here, where only the judge's second line (protected files hashed around the run) stops it."""
    from autoresearch import swarm as swarm_mod
    from autoresearch.driver import Driver, Limits

    from conftest import ScriptedAgent, load_cfg

    tmp, origin, hub = swarm
    start = git(origin, "rev-parse", "HEAD")
    alice = join(tmp, origin, hub, "alice")
    assert run(alice, IDLE, 1, tmp / "alice.log").wait(timeout=120) == 0
    forge(tmp, origin, hub, "mallory-evil", lambda c: [record("mallory-evil", 1, c, -99.5, start)],
          files={"prepare.py": "OFFSET = -100.0\n"})
    bob = join(tmp, origin, hub, "bob")
    monkeypatch.setattr(swarm_mod, "VERIFY", verify)
    agent = ScriptedAgent()
    Driver(load_cfg(bob), "t", agent, limits=Limits(max_experiments=2)).run()
    # ideas travel: what alice tried and failed is in bob's researcher's context (mallory's is not)
    ctx = agent.contexts[0]
    assert "Failed elsewhere" in ctx.swarm and "alice#2: a comment (discard" in ctx.swarm
    assert ctx.swarm in ctx.render()
    assert ("mallory" not in ctx.swarm) == verify  # a banned peer's ideas are not shown either
    rows = assert_consistent(bob, "t")
    evil = [e for e in rows if e.evidence.get("origin", "").startswith("mallory-evil")]
    assert not [e for e in evil if e.status == "keep"]
    assert "OFFSET = 0.0" in git(bob, "show", "autoresearch/t:prepare.py")
    if verify:
        assert not evil
        assert [n["status"] for n in notes_of(bob) if n["peer"] == "mallory-evil"] == ["banned"]
    else:
        assert [e.status for e in evil] == ["violation"], [(e.status, e.reason) for e in evil]


def test_a_record_edited_in_place_is_refused(swarm):
    """A later commit of a peer's log that changes an earlier record (here: its claim 4.5 -> 0.1) while
    adding a new one is not an append: the peer is refused and nothing of it is used."""
    tmp, origin, hub = swarm
    start = git(origin, "rev-parse", "HEAD")
    alice = join(tmp, origin, hub, "alice")
    assert run(alice, IDLE, 1, tmp / "alice.log").wait(timeout=120) == 0
    useless = (origin / "train.py").read_text().replace("Y = 2", "Y = 9")
    best = forge(tmp, origin, hub, "eve", lambda c: [record("eve", 1, c, 4.5, start)], files={"train.py": useless})
    work = tmp / "forge-eve"
    git(work, "fetch", "-q", str(hub), "+refs/autoresearch-swarm/eve/log:refs/eve-log")
    tip = git(work, "rev-parse", "refs/eve-log")

    def blob(text: str) -> str:
        return subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=work, input=text, text=True,
                              capture_output=True).stdout.strip()

    entries = [line for line in git(work, "ls-tree", tip).splitlines() if "r-000001" not in line]
    entries += [f"100644 blob {blob(json.dumps(record('eve', 1, best, 0.1, start)))}\tr-000001.json",
                f"100644 blob {blob(json.dumps(record('eve', 2, best, 0.1, start)))}\tr-000002.json"]
    tree = subprocess.run(["git", "mktree"], cwd=work, input="\n".join(entries) + "\n", text=True,
                          capture_output=True).stdout.strip()
    edited = git(work, "commit-tree", tree, "-p", tip, "-m", "r-000002.json")
    git(work, "push", "-q", "-f", str(hub), f"{edited}:refs/autoresearch-swarm/eve/log")
    bob = join(tmp, origin, hub, "bob")
    assert run(bob, IDLE, 1, tmp / "bob.log").wait(timeout=120) == 0
    why = [(n["status"], n["reason"]) for n in notes_of(bob) if n["peer"] == "eve"]
    assert len(why) == 1 and why[0][0] == "refused" and "does not add exactly one record" in why[0][1], why
    assert not [e for e in rows_of(bob, "t") if e.agent == "swarm"]


def test_a_peer_on_another_task_is_ignored_with_a_warning(swarm):
    """frank starts from another commit (his program differs): his real improvement is never adopted."""
    tmp, origin, hub = swarm
    other = tmp / "other-origin"
    git(tmp, "clone", "-q", str(origin), str(other))
    (other / "program.md").write_text("# Another program\n")
    git(other, "commit", "-qam", "another task")
    frank = join(tmp, other, hub, "frank")
    assert run(frank, IMPROVE, 1, tmp / "frank.log").wait(timeout=120) == 0
    assert [e.metric for e in rows_of(frank, "t") if e.status == "keep"] == [4.5, 0.5]
    bob = join(tmp, origin, hub, "bob")
    assert run(bob, IDLE, 2, tmp / "bob.log").wait(timeout=120) == 0
    assert not [e for e in rows_of(bob, "t") if e.agent == "swarm"]
    notes = [(n["status"], n["reason"]) for n in notes_of(bob) if n["peer"] == "frank"]
    assert len(notes) == 1 and notes[0][0] == "ignored" and "another task" in notes[0][1]
    assert "frank runs another task" in (tmp / "bob.log").read_text()


def test_a_push_that_loses_a_race_is_retried_and_loses_nothing(swarm, monkeypatch):
    """Another writer moves bob's log on the hub between bob's fetch and his push: the push's lease fails,
    bob fetches again and pushes on top, so both the other writer's record and all of bob's are there."""
    from autoresearch import swarm as swarm_mod
    from autoresearch.driver import Driver, Limits

    from conftest import ScriptedAgent, load_cfg

    tmp, origin, hub = swarm
    bob = join(tmp, origin, hub, "bob")
    assert run(bob, IDLE, 1, tmp / "bob.log").wait(timeout=120) == 0
    work = tmp / "racer"
    git(tmp, "clone", "-q", str(origin), str(work))
    start = git(origin, "rev-parse", "HEAD")
    raced, real_fetch, fetches = [], swarm_mod.Swarm.fetch, []

    def racing_fetch(self) -> None:
        real_fetch(self)
        fetches.append(1)
        if not raced:  # right after bob's first fetch: another writer appends to bob/log
            raced.append(1)
            git(work, "fetch", "-q", str(hub), "+refs/autoresearch-swarm/bob/log:refs/bob-log")
            tip = git(work, "rev-parse", "refs/bob-log")
            extra = json.dumps(record("bob", 99, start, 4.5, start, status="discard"))
            oid = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=work, capture_output=True, text=True,
                                 input=extra).stdout.strip()
            entries = git(work, "ls-tree", tip).splitlines() + [f"100644 blob {oid}\tr-000099.json"]
            tree = subprocess.run(["git", "mktree"], cwd=work, input="\n".join(entries) + "\n", text=True,
                                  capture_output=True).stdout.strip()
            git(work, "push", "-q", str(hub), f"{git(work, 'commit-tree', tree, '-p', tip, '-m', 'r')}:"
                                              "refs/autoresearch-swarm/bob/log")

    monkeypatch.setattr(swarm_mod.Swarm, "fetch", racing_fetch)
    Driver(load_cfg(bob), "t", ScriptedAgent(), limits=Limits(max_experiments=1)).run()
    rows = assert_consistent(bob, "t")
    assert raced and len(fetches) >= 2  # the lost race made bob fetch again
    assert set(hub_records(hub, "bob")) == {e.id for e in rows} | {99}


def test_init_refuses_a_name_already_on_the_hub_and_a_hub_that_is_not_there(swarm):
    tmp, origin, hub = swarm
    alice = join(tmp, origin, hub, "alice")
    assert run(alice, IDLE, 1, tmp / "alice.log").wait(timeout=120) == 0
    other = tmp / "other"
    git(tmp, "clone", "-q", str(origin), str(other))
    r = cli("swarm", "init", str(hub), "--name", "alice", cwd=other)
    assert r.returncode == 1 and "alice already publishes" in r.stderr and "--rejoin" in r.stderr
    assert not (other / ".autoresearch" / "swarm.toml").exists()
    assert cli("swarm", "init", str(hub), "--name", "alice", "--rejoin", cwd=other).returncode == 0
    r = cli("swarm", "init", str(tmp / "nowhere.git"), cwd=other)
    assert r.returncode == 1 and "does not answer as a git remote" in r.stderr and "git init --bare" in r.stderr
    r = cli("swarm", "init", "../hub.git", "--name", "zed", cwd=other)  # a relative path is stored absolute
    assert r.returncode == 0 and str(hub) in (other / ".autoresearch" / "swarm.toml").read_text()


def test_an_unreachable_hub_is_noted_and_the_research_goes_on(swarm):
    import shutil

    tmp, origin, hub = swarm
    bob = join(tmp, origin, hub, "bob")
    shutil.rmtree(hub)
    assert run(bob, IMPROVE, 1, tmp / "bob.log").wait(timeout=120) == 0
    rows = assert_consistent(bob, "t")
    assert [e.metric for e in rows if e.status == "keep"] == [4.5, 0.5]
    led = ledger_of(bob)
    try:
        events = [e["message"] for e in led.events("t") if e["kind"] == "swarm"]
    finally:
        led.close()
    assert any("the hub could not be reached" in m for m in events), events
    r = cli("swarm", "status", cwd=bob)
    assert r.returncode == 0 and "hub unreachable" in r.stdout


def test_a_claim_with_a_symlink_is_refused(swarm):
    """An editable path turned into a symlink (to the protected evaluator) is not a plain file: banned."""
    tmp, origin, hub = swarm
    start = git(origin, "rev-parse", "HEAD")
    alice = join(tmp, origin, hub, "alice")
    assert run(alice, IDLE, 1, tmp / "alice.log").wait(timeout=120) == 0
    work = tmp / "forge-eve"
    git(tmp, "clone", "-q", str(origin), str(work))
    (work / "train.py").unlink()
    (work / "train.py").symlink_to("prepare.py")
    git(work, "commit", "-qam", "a link")
    link = git(work, "rev-parse", "HEAD")
    forge(tmp, origin, hub, "eve", [record("eve", 1, link, 0.1, start)], best="")
    git(work, "push", "-q", "-f", str(hub), f"{link}:refs/autoresearch-swarm/eve/best/{CLASS}")
    bob = join(tmp, origin, hub, "bob")
    assert run(bob, IDLE, 1, tmp / "bob.log").wait(timeout=120) == 0
    why = [(n["status"], n["reason"]) for n in notes_of(bob) if n["peer"] == "eve"]
    assert len(why) == 1 and why[0][0] == "banned" and "not plain files: train.py" in why[0][1], why
    assert not [e for e in rows_of(bob, "t") if e.agent == "swarm"]


def test_a_participant_with_several_workers_adopts_from_a_researchers_thread(swarm):
    """With two workers the swarm is asked from a researcher's thread (next_candidate's contract) while the
    main thread records rows and publishes: alice's improvement is adopted once, after re-measuring, and
    every finished row reaches the hub."""
    tmp, origin, hub = swarm
    alice = join(tmp, origin, hub, "alice")
    assert run(alice, IMPROVE, 1, tmp / "alice.log").wait(timeout=120) == 0
    origin_id = f"alice#{[e for e in rows_of(alice, 't') if e.kind != 'baseline'][0].id}"
    bob = join(tmp, origin, hub, "bob")
    p = cli_popen("run", "--tag", "t", "--agent", "command", "--agent-command", IDLE, "--max-experiments", "3",
                  "--workers", "2", "--no-live", cwd=bob, log=tmp / "bob.log")
    assert p.wait(timeout=120) == 0, (tmp / "bob.log").read_text()
    rows = assert_consistent(bob, "t")
    adopted = [e for e in rows if e.agent == "swarm"]
    assert [(e.evidence["origin"], e.status, e.metric) for e in adopted] == [(origin_id, "keep", 0.5)], \
        [(e.description, e.status) for e in rows]
    assert "X = 1.0" in git(bob, "show", "autoresearch/t:train.py")
    assert [n["status"] for n in notes_of(bob) if n["peer"] == "alice"] == ["held"]
    assert set(hub_records(hub, "bob")) == {e.id for e in rows if e.status != "running"}


def test_next_candidate_is_one_call_at_a_time_while_rows_are_recorded(swarm, monkeypatch):
    """Two proposer threads ask at once (the sync made slow) while the main thread publishes rows and
    reads the hints: alice's claim becomes exactly one experiment (a second ask waits, and does not queue a
    claim being measured again), and nothing raises."""
    import threading

    from autoresearch import swarm as swarm_mod
    from autoresearch.driver import Driver

    from conftest import ScriptedAgent, load_cfg

    tmp, origin, hub = swarm
    alice = join(tmp, origin, hub, "alice")
    assert run(alice, IMPROVE, 1, tmp / "alice.log").wait(timeout=120) == 0
    bob = tmp / "bob"
    git(tmp, "clone", "-q", str(origin), str(bob))
    assert run(bob, IDLE, 1, tmp / "bob.log").wait(timeout=120) == 0  # alone: a baseline and one row
    assert cli("swarm", "init", str(hub), "--name", "bob", "--sync", "0", "--hardware", CLASS, cwd=bob).returncode == 0
    driver = Driver(load_cfg(bob), "t", ScriptedAgent())  # not run: the test is the driver, its threads ask
    opened = driver.session.open()  # the task (start, protected digests) the peers are compared with
    opened.__enter__()
    sw = driver.session.swarm
    before = rows_of(bob, "t")
    real_fetch = swarm_mod.Swarm.fetch

    def slow_fetch(self) -> None:
        real_fetch(self)
        time.sleep(0.5)

    monkeypatch.setattr(swarm_mod.Swarm, "fetch", slow_fetch)
    got, errors = [], []

    def ask() -> None:
        try:
            got.append(sw.next_candidate())
        except Exception as e:  # noqa: BLE001 - the assertion below shows it
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        sw.recorded(before[-1])  # publishes (one push at a time with the syncs)
        sw.in_flight([("something else", None)])
        sw.hints()
    for t in threads:
        t.join()
    opened.__exit__(None, None, None)
    assert not errors, errors
    made = [e for e in got if e is not None]
    assert len(made) == 1 and made[0].evidence["origin"].startswith("alice#"), got
    assert [e.agent for e in rows_of(bob, "t")] == [e.agent for e in before] + ["swarm"]
    assert set(hub_records(hub, "bob")) == {e.id for e in before}


def test_in_flight_elsewhere_reaches_the_researchers(swarm):
    """alice (two workers) is measuring a change; her flight ref on the hub names it, so bob's researcher
    sees it under "In flight elsewhere" before it is finished; once it is, it shows as kept elsewhere (and
    no longer in flight)."""
    from autoresearch.driver import Driver, Limits
    from autoresearch.swarm import FLIGHT_MAX, HINTS_CHARS

    from conftest import ScriptedAgent, load_cfg

    tmp = swarm[0]
    ctl = tmp / "ctl.json"
    write_control(ctl, alice_sleep=15)
    origin = make_project(tmp / "origin2", control=ctl)
    hub = tmp / "hub2.git"
    git(tmp, "init", "-q", "--bare", str(hub))
    alice = join(tmp, origin, hub, "alice")
    nap = ("sed -i 's/^X = .*/X = 1.0/' train.py && echo 'time.sleep(float(ctl.get(\"alice_sleep\", 0)))' >> train.py"
           " && echo 'X = 1.0 and a nap' > \"$AUTORESEARCH_DESCRIPTION_FILE\"")
    proc = cli_popen("run", "--tag", "t", "--agent", "command", "--agent-command", nap, "--max-experiments", "2",
                     "--workers", "2", "--no-live", cwd=alice, log=tmp / "alice.log")
    try:
        def flying() -> list:
            sha = hub_refs(hub).get("refs/autoresearch-swarm/alice/flight")
            if not sha:
                return []
            assert git(hub, "ls-tree", "--name-only", sha) == "flight.json"  # one file, no history
            assert not git(hub, "rev-list", "--parents", "-n", "1", sha).split()[1:]
            data = json.loads(git(hub, "cat-file", "blob", f"{sha}:flight.json"))
            assert data["participant"] == "alice" and len(data["rows"]) <= FLIGHT_MAX
            return [r["description"] for r in data["rows"]]
        wait_until(lambda: "X = 1.0 and a nap" in flying(), timeout=60, what="alice's flight on the hub")
        bob = join(tmp, origin, hub, "bob")
        agent = ScriptedAgent()
        Driver(load_cfg(bob), "t", agent, limits=Limits(max_experiments=1)).run()
        assert proc.poll() is None, "alice finished too early for the test to mean anything"
        ctx = agent.contexts[0]
        assert "In flight elsewhere" in ctx.swarm and "- alice: X = 1.0 and a nap" in ctx.swarm, ctx.swarm
        assert ctx.swarm in ctx.render() and len(ctx.swarm) <= HINTS_CHARS
        # `swarm status --json` and the HTML report (as last fetched) show it too
        assert cli("report", "--html", cwd=bob).returncode == 0
        assert ["alice", "X = 1.0 and a nap"] in table((bob / "report.html").read_text(), "swarm-flight")
        st = json.loads(cli("swarm", "status", "--json", cwd=bob).stdout)
        flights = {p["name"]: [r["description"] for r in p["in_flight"]] for p in st["participants"]}
        assert "X = 1.0 and a nap" in flights["alice"] or proc.poll() is not None
        assert proc.wait(timeout=120) == 0, (tmp / "alice.log").read_text()
    finally:
        kill_group(proc)
    write_control(ctl)  # bob adopts alice's code: no nap for him
    agent = ScriptedAgent()
    Driver(load_cfg(bob), "t", agent, limits=Limits(max_experiments=2)).run()
    text = agent.contexts[-1].swarm
    assert "Kept elsewhere" in text and "X = 1.0 and a nap (keep" in text, text
    assert "- alice: X = 1.0 and a nap" not in text  # finished: no longer in flight
    kept = [f"alice#{e.id}" for e in rows_of(alice, "t") if e.status == "keep" and e.kind != "baseline"]
    assert [e.evidence["origin"] for e in rows_of(bob, "t") if e.agent == "swarm" and e.status == "keep"] == kept


def test_in_flight_is_bounded_and_a_malformed_flight_refuses_the_peer(swarm):
    """in_flight keeps FLIGHT_MAX one-line rows; a flight ref that is not one well-formed flight.json (here:
    JSON of another participant) refuses its publisher like a malformed record: nothing of it is used."""
    from autoresearch import swarm as swarm_mod
    from autoresearch.driver import Driver, Limits

    from conftest import ScriptedAgent, load_cfg

    tmp, origin, hub = swarm
    alice = join(tmp, origin, hub, "alice")
    assert run(alice, IDLE, 1, tmp / "alice.log").wait(timeout=120) == 0
    work = tmp / "forge-flight"
    git(tmp, "clone", "-q", str(origin), str(work))
    bad = json.dumps({"v": 1, "participant": "bob", "at": time.time(), "rows": [{"description": "x", "commit": None}]})
    oid = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=work, input=bad, text=True,
                         capture_output=True).stdout.strip()
    tree = subprocess.run(["git", "mktree"], cwd=work, input=f"100644 blob {oid}\tflight.json\n", text=True,
                          capture_output=True).stdout.strip()
    git(work, "push", "-q", "-f", str(hub), f"{git(work, 'commit-tree', tree, '-m', 'f')}:"
                                          "refs/autoresearch-swarm/alice/flight")
    bob = join(tmp, origin, hub, "bob")
    agent = ScriptedAgent()
    loop = Driver(load_cfg(bob), "t", agent, limits=Limits(max_experiments=1))
    loop.run()
    why = [(n["status"], n["reason"]) for n in notes_of(bob) if n["peer"] == "alice"]
    assert len(why) == 1 and why[0][0] == "refused" and "flight record is malformed" in why[0][1], why
    assert "alice" not in agent.contexts[0].swarm
    loop.session.swarm.in_flight([(f"idea {i} " + "x\n" * 200, None) for i in range(50)])
    assert len(loop.session.swarm.flight) == swarm_mod.FLIGHT_MAX
    assert all("\n" not in r["description"] and len(r["description"]) <= 160 for r in loop.session.swarm.flight)


def test_a_peer_flooding_false_claims_is_no_longer_re_measured(tmp_path):
    """Each false claim costs a re-measure; past REFUTES_ALLOWED + 2 x held refuted claims a peer is not heard."""
    from autoresearch.ledger import Ledger
    from autoresearch.swarm import REFUTES_ALLOWED, over_refuted

    led = Ledger(tmp_path / "ledger.db")
    try:
        for i in range(REFUTES_ALLOWED):
            led.swarm_note("t", "mallory", "refuted", f"claim {i} refuted", commit=f"{i:040d}")
        assert not over_refuted(led.swarm_notes("t", peer="mallory")), "a few refuted claims are noise, not a ban"
        led.swarm_note("t", "mallory", "refuted", "one more", commit="f" * 40)
        assert over_refuted(led.swarm_notes("t", peer="mallory"))
        led.swarm_note("t", "mallory", "held", "a real one", commit="e" * 40)
        assert not over_refuted(led.swarm_notes("t", peer="mallory")), "claims that held buy trust back"
        assert not over_refuted(led.swarm_notes("t", peer="alice"))
    finally:
        led.close()


def test_a_claim_is_measured_only_when_it_beats_the_incumbent_by_the_margin(tmp_path):
    """Swarm.worth: with run-to-run noise measured (pooled sd 0.2 here), a claim must beat the local
    incumbent by MARGIN_SIGMA sds to be worth an experiment; without a noise estimate, any gain."""
    from types import SimpleNamespace

    from autoresearch.ledger import Experiment, Ledger
    from autoresearch.swarm import MARGIN_SIGMA, Swarm

    from conftest import load_cfg

    cfg = load_cfg(make_project(tmp_path / "p"))
    led = Ledger(tmp_path / "ledger.db")
    try:
        me = SimpleNamespace(cfg=cfg, ledger=led, tag="t")
        assert Swarm.worth(me, 0.99, 1.0) and not Swarm.worth(me, 1.01, 1.0)  # no noise known: any gain
        for commit, runs in (("a" * 40, [1.0, 1.2, 0.8]), ("b" * 40, [2.0, 2.2, 1.8])):
            exp = Experiment(tag="t", parent=None, commit=commit, description=commit[:1], kind="candidate")
            led.begin(exp)
            for seed, value in enumerate(runs):
                led.add_measurement(exp.id, commit, seed, value, {}, 1.0, "ok")
        assert MARGIN_SIGMA > 0.5
        assert not Swarm.worth(me, 1.0 - (MARGIN_SIGMA - 0.25) * 0.2, 1.0)  # within the margin: likely luck
        assert Swarm.worth(me, 1.0 - (MARGIN_SIGMA + 0.25) * 0.2, 1.0)  # beyond it: worth measuring here
        assert not Swarm.worth(me, 1.5, 1.0)  # worse
    finally:
        led.close()
