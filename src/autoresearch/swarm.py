"""The swarm: independent runs on many machines share one research frontier over a git remote.

What it owns:
- Participant settings, outside the tracked (protected) autoresearch.toml: `.autoresearch/swarm.toml`
  (`hub`: any git URL or path; `name`: default user@host; `sync_s`; `hardware`: the class this
  participant's numbers belong to, default `engine.hardware`, else the machine's), written by
  `autoresearch swarm init <hub> [--name NAME]`.
- Publishing. A participant writes only under `refs/autoresearch-swarm/<name>/`: `log`, a commit
  chain whose first commit adds `task.json` (the shared starting commit and the protected files'
  digests) and each later commit adds exactly one record `r-<id>.json` (one finished experiment:
  commit, parent, description, status, metric, evidence, hardware class, agent, cost);
  `best/<class>`, its incumbent's commit; and `flight`, one commit holding `flight.json` (what its
  researchers are measuring right now: `in_flight()`, at most FLIGHT_MAX one-line rows), rewritten
  when it changes, no history. One `git push --atomic` with `--force-with-lease` on every ref it
  moves updates them together or not at all; a lost race is fetched and retried. A participant killed
  mid-push leaves the hub at its previous state (git's ref update is atomic) and publishes what is
  missing at its next sync: records are keyed by ledger id, so nothing is lost or duplicated.
- Sync and adopt, never trust. Every `sync_s`, where a proposal is asked for (the driver asks
  `next_candidate()`, from any thread: see its contract), the hub's swarm refs are fetched into
  `refs/autoresearch-swarm-seen/`.
  Each peer's log is checked before anything of it is used: a chain of single-parent commits each
  adding one parseable record that names the peer itself (a copy of another participant's records
  is refused), the same task (else ignored with a warning), and an append-only history (a log that
  no longer contains the tip seen before was rewritten: refused). A peer's `best/<class>` of the
  local class that claims to beat the local incumbent becomes a candidate only if it descends from
  the shared start, changes something, and touches only editable, unprotected files (a protected
  file touched: the peer is refused from then on), and brings something the local best lacks.
  Claims are measured best first. Where the local best has changes the peer's commit lacks, the
  peer's whole change cherry-picked onto today's local best (`merge alice#17: ...`) is measured
  first; if it is not kept, the peer's code as it is (its files, on the local best: `adopt
  alice#17: ...`) is measured next, so what measures best is kept; where the two are the same code
  (or the cherry-pick conflicts) only the adopt. Each is a new commit (agent `swarm`, evidence
  `origin`) judged by the local judge, policy and sandbox like any other. A claim the local best
  has since overtaken, or whose change it already holds (a peer that adopted ours), is dropped:
  benchmarks/swarm.py measured what each re-measure costs.
  Other hardware classes are hints in the researchers' context, never ranked or adopted.
- Reputation, in the ledger (table `swarm`, Ledger.swarm_note): per peer and commit, `held`
  (re-measured and kept), `refuted` (re-measured, not kept: never adopted again), `refused` (a
  record or claim that fails a check, with its reason), `banned` (a claim touching what a proposal
  may not: the peer is skipped from then on), `ignored` (another task).
- Seeing it: `hints()` is the researchers' context section (kept, in flight and failed elsewhere,
  other classes as hints; each section capped, the whole bounded); `status()` / `render()` are
  `autoresearch swarm status [--json]` (participants, each one's best per class and when, what
  each has in flight, the frontier per class without refused or refuted claims, reputation, who
  adopted which idea); report_html shows the same, with the ledger's side.

Not covered: a hub that lets anyone write any ref (a plain bare repository) cannot stop a participant
from writing into another's namespace; what it can do there is caught only as a rewritten history
(against the tip seen before) or as records that fail the checks, and in any case a claim is only
kept after local measurement. Hints from other classes, and what a peer says it has in flight, are
shown as claimed, not verified. A peer can make the local repository fetch large objects: there is
no quota.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import clean
from . import policy as policies
from . import stats
from .errors import AutoresearchError, ConfigError
from .layout import Layout
from .noise import pooled_noise
from .proposal import PROGRAM
from .session import hardware
from .states import Kind, Status
from .workspace import GitError, NothingChanged, RebaseConflict, run_git

if TYPE_CHECKING:
    from .ledger import Experiment
    from .session import RunSession

NS = "refs/autoresearch-swarm"  # on the hub: <name>/log, <name>/best/<class>
SEEN = "refs/autoresearch-swarm-seen"  # the local mirror of the hub's swarm refs
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
RECORD_FIELDS = {"participant": str, "id": int, "commit": (str, type(None)), "parent": (str, type(None)),
                 "description": str, "status": str, "kind": str, "hardware": str}
PUSH_TRIES = 5
VERIFY = True  # tests switch this off for the controls of the checks on a peer's records and claims
MAX_RECORD_BYTES = 64 * 1024  # a record is a few hundred bytes; a huge one is refused unread
HINTS_CHARS = 2500  # the swarm's section of the researchers' context
FLIGHT_MAX = 16  # experiments in flight published (and read) per participant
MAX_FLIGHT_BYTES = 16 * 1024  # the flight record: FLIGHT_MAX one-line descriptions
FLIGHT_STALE_S = 24 * 3600  # a flight record older than this is a participant that stopped: not shown


REFUTES_ALLOWED = 3  # refuted claims a peer may have beyond twice its held ones before it is no longer heard
# A claim is measured here only when it beats the local incumbent by this many noise sds (the tag's pooled
# run-to-run sd; no margin without one). benchmarks/swarm.py: a claim that beats by less is mostly a
# lucky first run, or a gain too small to confirm; measuring it cost an experiment and was refuted
# about half the time. Waiting until the peer's lead is worth measuring takes several of its gains in
# one re-measure: the swarm of 4 reached the best isolated level in 0.57 (no margin), 0.54 (1 sd),
# 0.53 (1.5), 0.49 (2.5) of the budget (24 tasks), its adoption latency 2 -> 4 of a peer's experiments.
MARGIN_SIGMA = 2.5


def over_refuted(notes: list[dict[str, Any]]) -> bool:
    """A flood of false claims costs every peer one re-measure each (benchmarks/swarm.py: one participant lying
    every round took ~79% of four honest ones' experiments, and the policy's error rate let ~1% of the lies in).
    A peer whose refuted claims exceed REFUTES_ALLOWED + 2 x its held ones is no longer re-measured."""
    held = sum(1 for n in notes if n["status"] == "held")
    refuted = sum(1 for n in notes if n["status"] == "refuted")
    return refuted > REFUTES_ALLOWED + 2 * held


@dataclass
class Settings:
    hub: str
    name: str
    sync_s: float = 60.0
    hardware: str = ""


def default_name() -> str:
    raw = f"{getpass.getuser()}@{socket.gethostname().split('.')[0]}"
    return re.sub(r"[^A-Za-z0-9._@-]", "-", raw)[:64]


def class_ref(hardware: str) -> str:
    """A hardware class as one ref component."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", hardware or "unknown").strip(".") or "unknown"


def init(root: Path, hub: str, name: str = "", sync_s: float = 60.0, hardware: str = "",
         rejoin: bool = False) -> Settings:
    """Write `.autoresearch/swarm.toml` (join or create a swarm at `hub`); the hub must answer `ls-remote`.
    A name that already publishes there is refused unless `rejoin` (this checkout continues it): two
    checkouts writing one namespace would each take the other's records for its own."""
    name = name or default_name()
    if Path(root, hub).exists():  # a local path: absolute, so git finds it from any folder
        hub = str(Path(root, hub).resolve())
    if not NAME_RE.match(name):
        raise ConfigError(f"swarm name {name!r}: use letters, digits, '.', '_', '@', '-' (at most 64)")
    r = run_git(["ls-remote", hub, f"{NS}/*"], Path(root), capture_output=True, text=True)
    if r.returncode != 0:
        raise AutoresearchError(f"the hub {hub!r} does not answer as a git remote: {r.stderr.strip()}; create it "
                                f"first, e.g. `git init --bare {hub}` or an empty GitHub repository")
    taken = {line.split("\t")[1].split("/")[2] for line in r.stdout.splitlines() if "\t" in line}
    if name in taken and not rejoin:
        raise ConfigError(f"{name} already publishes on the hub {hub}: choose another --name, or pass --rejoin if "
                          f"this checkout continues {name}'s run")
    path = Layout(root).swarm_settings
    path.parent.mkdir(parents=True, exist_ok=True)
    s = Settings(hub, name, sync_s, hardware)
    path.write_text(f"hub = {json.dumps(hub)}\nname = {json.dumps(name)}\nsync_s = {sync_s:g}\n"
                    + (f"hardware = {json.dumps(hardware)}\n" if hardware else ""), encoding="utf-8")
    return s


def load(root: Path) -> Optional[Settings]:
    """The participant's settings, or None when this project is not in a swarm."""
    path = Layout(root).swarm_settings
    if not path.exists():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}; fix it or run `autoresearch swarm init <hub>` again") from e
    unknown = set(data) - {"hub", "name", "sync_s", "hardware"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: hub, name, sync_s, hardware)")
    if not isinstance(data.get("hub"), str) or not data["hub"]:
        raise ConfigError(f"{path}: `hub` must be a git URL or path: run `autoresearch swarm init <hub>`")
    name = data.get("name") or default_name()
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{path}: `name` {name!r}: use letters, digits, '.', '_', '@', '-'")
    sync_s = data.get("sync_s", 60.0)
    if not isinstance(sync_s, (int, float)) or sync_s < 0:
        raise ConfigError(f"{path}: `sync_s` must be a number of seconds >= 0")
    hardware = data.get("hardware", "")
    if not isinstance(hardware, str):
        raise ConfigError(f"{path}: `hardware` must be a string")
    return Settings(data["hub"], name, float(sync_s), hardware)


def attach(loop: "RunSession") -> Optional["Swarm"]:
    settings = load(loop.cfg.root)
    return Swarm(loop, settings) if settings else None


@dataclass
class Peer:
    """One other participant as read from the hub (only when every check passed)."""

    name: str
    tip: str
    task: dict[str, Any]
    records: list[dict[str, Any]]
    best: dict[str, str]  # hardware class ref -> commit
    flight: dict[str, Any] = field(default_factory=dict)  # its flight record (read_flight), {} when none


class Refused(Exception):
    """A peer's published state fails a check: nothing of it is used."""


class Swarm:
    """One participant: publishes its ledger, reads the others, and turns their claims into candidates."""

    def __init__(self, loop: "RunSession", settings: Settings):
        self.loop, self.s = loop, settings
        self.ws, self.ledger, self.tag, self.cfg = loop.ws, loop.ledger, loop.tag, loop.cfg
        self.hardware = settings.hardware or self.cfg.engine.hardware or hardware()
        self.last_sync = float("-inf")
        self.pending: deque[dict[str, Any]] = deque()  # claims to measure, best first (consider, candidate)
        self.peers: dict[str, Peer] = {}  # the peers read at the last sync that passed every check
        self.cache: dict[str, Peer] = {}  # each peer's chain as last read (read_peer continues from it)
        self.warned: set[str] = set()
        self.held_here: set[tuple[str, str]] = set()  # (peer commit, local best) whose change the best holds
        self.tried: dict[int, dict[str, Any]] = {}  # experiment id -> the claim it measures (recorded())
        self.flight: list[dict[str, Any]] = []  # this participant's experiments in flight (in_flight)
        self.flight_pushed: Optional[list[dict[str, Any]]] = None  # the rows the hub has (None: not known)
        # Threads (the contract is next_candidate's docstring): `lock` guards the state above, held briefly;
        # `io` serialises what reads and moves the hub's refs and their local mirror (fetch, publish: a
        # sync's and recorded()'s would otherwise race their own leases); `asking` makes next_candidate
        # one call at a time.
        self.lock = threading.RLock()
        self.io = threading.RLock()
        self.asking = threading.Lock()

    # -- the git side ------------------------------------------------------------------
    def git(self, *args: str, check: bool = True, input: Optional[str] = None, strip: bool = True) -> str:
        return self.ws.git(*args, check=check, input=input, strip=strip)

    def fetch(self) -> None:
        r = run_git(["fetch", "--quiet", "--no-tags", "--prune", self.s.hub, f"+{NS}/*:{SEEN}/*"], self.ws.top,
                    capture_output=True, text=True, env=self.ws.git.env)
        if r.returncode != 0:
            raise GitError(f"git fetch from the hub {self.s.hub} failed: {r.stderr.strip()}")

    def seen(self) -> dict[str, str]:
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)", f"{SEEN}/")
        return {ref[len(SEEN) + 1:]: sha for ref, _, sha in (line.partition(" ") for line in out.splitlines())}

    # -- the task ------------------------------------------------------------------------
    def start(self) -> Optional[str]:
        base = next((e for e in self.ledger.experiments(self.tag) if e.kind == Kind.BASELINE and e.commit), None)
        return base.commit if base else None

    def task(self) -> Optional[dict[str, Any]]:
        start = self.start()
        if start is None:
            return None
        return {"start": start, "protected": dict(sorted(self.loop.digests.items()))}

    # -- publishing ------------------------------------------------------------------------
    def record(self, e: "Experiment") -> dict[str, Any]:
        ev = {k: v for k, v in (e.evidence or {}).items() if len(json.dumps(v, default=str)) < 400}
        return {"v": 1, "participant": self.s.name, "id": e.id, "commit": e.commit, "parent": e.parent,
                "description": e.description, "status": e.status, "reason": clean.one_line(e.reason, 300),
                "kind": e.kind, "metric": e.metric,
                "evidence": json.loads(json.dumps(ev, default=str)), "hardware": self.hardware, "agent": e.agent,
                "cost_usd": e.cost_usd, "at": e.ended_at, "origin": (e.evidence or {}).get("origin", "")}

    def blob(self, data: dict[str, Any]) -> str:
        raw = json.dumps(data, sort_keys=True).encode()
        return self.ws.git_bytes("hash-object", "-w", "--no-filters", "--stdin", data=raw).decode().strip()

    def append(self, tip: Optional[str], name: str, data: dict[str, Any]) -> str:
        """A commit on `tip` whose tree is tip's plus one file `name`."""
        entries = self.git("ls-tree", tip).splitlines() if tip else []
        entries.append(f"100644 blob {self.blob(data)}\t{name}")
        tree = self.git("mktree", input="\n".join(entries) + "\n")
        return self.git("commit-tree", tree, *(["-p", tip] if tip else []), "-m", f"{self.s.name}: {name}")

    def publish(self) -> int:
        """Push what the hub lacks of this participant's finished rows, its best, and its experiments in
        flight (when they changed); returns records pushed. One push at a time (self.io)."""
        task = self.task()
        if task is None:
            return 0
        with self.io:
            return self.push(task)

    def push(self, task: dict[str, Any]) -> int:
        me = self.s.name
        logref, bestref = f"{NS}/{me}/log", f"{NS}/{me}/best/{class_ref(self.hardware)}"
        flightref = f"{NS}/{me}/flight"
        for attempt in range(PUSH_TRIES):
            seen = self.seen()
            old_log = seen.get(f"{me}/log")
            old_best = seen.get(f"{me}/best/{class_ref(self.hardware)}")
            old_flight = seen.get(f"{me}/flight")
            have = set(self.git("ls-tree", "--name-only", old_log).splitlines()) if old_log else set()
            tip = old_log
            if "task.json" not in have:
                tip = self.append(tip, "task.json", task)
            n = 0
            for e in self.ledger.experiments(self.tag):
                if e.status != Status.RUNNING and e.id is not None and f"r-{e.id:06d}.json" not in have:
                    tip, n = self.append(tip, f"r-{e.id:06d}.json", self.record(e)), n + 1
            inc = self.ledger.incumbent(self.tag)
            best = inc.commit if inc is not None else None
            refs = []
            if tip != old_log:
                refs.append((tip, logref, old_log))
            if best and best != old_best:
                refs.append((best, bestref, old_best))
            with self.lock:
                rows = list(self.flight)
            if rows != self.flight_pushed and (rows or old_flight):  # one ref, rewritten: no history kept
                data = {"v": 1, "participant": me, "hardware": self.hardware, "at": time.time(), "rows": rows}
                refs.append((self.append(None, "flight.json", data), flightref, old_flight))
            if not refs:
                return 0
            leases = [f"--force-with-lease={ref}:{old or ''}" for _, ref, old in refs]
            r = run_git(["push", "--quiet", "--atomic", "--no-verify", *leases, self.s.hub,
                         *[f"{sha}:{ref}" for sha, ref, _ in refs]], self.ws.top, capture_output=True, text=True,
                        env=self.ws.git.env)
            if r.returncode == 0:
                for sha, ref, _ in refs:
                    self.git("update-ref", SEEN + ref[len(NS):], sha)
                self.flight_pushed = rows
                return n
            time.sleep(0.2 * (attempt + 1))  # lost a race (or the hub is busy): look again and retry
            self.fetch()
        raise GitError(f"could not push to the hub {self.s.hub} after {PUSH_TRIES} tries: {r.stderr.strip()}")

    def in_flight(self, rows: list[Any]) -> None:
        """What this participant's researchers are measuring right now (experiments begun, not finished),
        published under its namespace at the next sync or publish as one rewritten ref (`<name>/flight`),
        so the other participants' researchers do not start the same idea. `rows`: experiments, dicts or
        (description, commit) pairs; the first FLIGHT_MAX are kept, descriptions as one clean line; a row
        with the experiment's ledger id stops showing once that id's record is published.
        Cheap and safe from any thread: it only replaces a list (the driver calls it when its set changes)."""
        out = []
        for row in rows[:FLIGHT_MAX]:
            if isinstance(row, tuple):
                (desc, commit), rid = row, None
            elif isinstance(row, dict):
                desc, commit, rid = row.get("description", ""), row.get("commit"), row.get("id")
            else:
                desc, commit, rid = row.description, row.commit, row.id
            out.append({"description": clean.one_line(str(desc), 160), "commit": commit or None,
                        "id": rid if isinstance(rid, int) else None})
        with self.lock:
            self.flight = out

    # -- reading peers ---------------------------------------------------------------------
    def read_peer(self, name: str, refs: dict[str, str]) -> Peer:
        """Peer `name`'s log and bests, checked; raises Refused naming the first problem.

        The chain is read with one `git log --raw` (each commit's added file) and one `cat-file --batch`;
        a log that extends the one read before is read from there on only (its older part is checked)."""
        tip = refs.get(f"{name}/log")
        if not tip:
            raise Refused("no log")
        seen_tip = self.ledger.swarm_seen(self.tag, name)
        if VERIFY and seen_tip and seen_tip != tip and not self.ws.git.ok("merge-base", "--is-ancestor", seen_tip, tip):
            raise Refused(f"its log was rewritten: the record chain seen before ({seen_tip[:7]}) is no longer in it")
        best = {ref.split("/best/", 1)[1]: sha for ref, sha in refs.items() if ref.startswith(f"{name}/best/")}
        known = self.cache.get(name)
        if known is not None and known.tip == tip:
            return Peer(name, tip, known.task, known.records, best)
        extends = known is not None and self.ws.git.ok("merge-base", "--is-ancestor", known.tip, tip)
        task: Optional[dict[str, Any]] = known.task if extends else None
        records: list[dict[str, Any]] = list(known.records) if extends else []
        span = f"{known.tip}..{tip}" if extends else tip
        out = self.git("log", "--reverse", "--root", "--raw", "--no-abbrev", "--no-renames", "--format=%x01%H %P",
                       span, strip=False)
        steps = []
        for chunk in out.split("\x01")[1:]:
            head, *raw = [line for line in chunk.splitlines() if line.strip()]
            commit, *parents = head.split()
            if len(parents) != (0 if task is None and not steps else 1):
                raise Refused(f"log commit {commit[:7]} has {len(parents)} parents: not an append-only chain")
            if len(raw) != 1 or not raw[0].startswith(":") or raw[0].split("\t")[0].split()[-1] != "A":
                raise Refused(f"log commit {commit[:7]} does not add exactly one record (changes: {len(raw)})")
            meta, _, fname = raw[0].partition("\t")
            steps.append((commit, fname, meta.split()[3]))
        sizes = self.git("cat-file", "--batch-check=%(objectname) %(objectsize)",
                         input="".join(f"{oid}\n" for _, _, oid in steps)).splitlines() if steps else []
        if any(int(line.split()[1]) > MAX_RECORD_BYTES for line in sizes):
            raise Refused(f"a record is larger than {MAX_RECORD_BYTES} bytes")
        blobs = self.ws.blobs([oid for _, _, oid in steps])
        for commit, fname, oid in steps:
            try:
                data = json.loads(blobs[oid])
            except ValueError:
                raise Refused(f"record {fname} is not JSON")
            if task is None:
                if fname != "task.json" or not isinstance(data, dict) or not isinstance(data.get("start"), str):
                    raise Refused(f"the log does not start with a task record (found {fname})")
                task = data
                continue
            problem = bad_record(fname, data, name) if VERIFY else ""
            if problem:
                raise Refused(problem)
            records.append(data)
        ids = [r["id"] for r in records]
        if len(ids) != len(set(ids)):
            raise Refused("two records with the same id")
        if task is None:
            raise Refused("the log has no task record")
        peer = Peer(name, tip, task, records, best)
        self.cache[name] = peer
        return peer

    def sync(self) -> None:
        """Fetch, publish what is missing, and read every peer (queueing the claims worth measuring, best first)."""
        self.last_sync = time.monotonic()
        try:
            with self.io:
                self.fetch()
                self.publish()
        except GitError as e:  # the hub is someone else's machine: its failure is noted, the loop goes on
            self.note("hub", f"the hub could not be reached: {clean.one_line(e, 300)}")
            return
        refs = self.seen()
        names = sorted({ref.split("/", 1)[0] for ref in refs} - {self.s.name})
        mine = self.task()
        peers: dict[str, Peer] = {}
        found: list[dict[str, Any]] = []
        for name in names:
            if self.banned(name):
                continue
            try:
                peer = self.read_peer(name, refs)
                peer.flight = read_flight(self.ws, refs.get(f"{name}/flight"), name)
            except Refused as why:
                self.refuse(name, "", f"{name}'s records refused: {why}; nothing of its state is used")
                continue
            if mine is not None and peer.task != mine:
                if name not in self.warned:
                    self.warned.add(name)
                    self.ledger.swarm_note(self.tag, name, "ignored", f"{name} runs another task (its start or "
                                           "protected files differ): ignored", commit=peer.task.get("start", ""))
                    self.loop.report("note", message=f"swarm: {name} runs another task: ignored")
                continue
            self.ledger.swarm_seen(self.tag, name, peer.tip)
            item = self.consider(peer)
            if item is not None:
                found.append(item)
            if not self.banned(name):  # a peer refused for its claim shows nothing to the researchers either
                peers[name] = peer
        # The best claim first: merged onto the local best it brings the most, and it makes the lesser
        # claims that it holds (a peer that adopted it) or beats nothing to measure (candidate drops them).
        found.sort(key=lambda item: item["claim"], reverse=not self.cfg.lower_is_better())
        with self.lock:
            self.peers = peers
            self.pending.extend(found)

    def consider(self, peer: Peer) -> Optional[dict[str, Any]]:
        """`peer`'s best of the local class as a claim to measure, if it claims to beat the local incumbent,
        brings something the local best lacks and passes the checks; else None (refusals are noted)."""
        commit = peer.best.get(class_ref(self.hardware))
        inc, start = self.ledger.incumbent(self.tag), self.start()
        if not commit or inc is None or inc.metric is None or start is None:
            return None
        claim = next((r for r in reversed(peer.records) if r["commit"] == commit and r["status"] == Status.KEEP), None)
        if claim is None:
            return self.refuse(peer.name, commit, f"{peer.name}'s best {commit[:7]} has no kept record claiming it")
        if class_ref(claim["hardware"]) != class_ref(self.hardware) or \
                not isinstance(claim.get("metric"), (int, float)):
            return self.refuse(peer.name, commit, f"{peer.name}'s best {commit[:7]} is claimed on another class "
                                                  f"({claim['hardware']!r}) or without a metric")
        if not self.worth(claim["metric"], inc.metric):
            return None
        with self.lock:
            queued = any(c["commit"] == commit for c in [*self.pending, *self.tried.values()]) or \
                (commit, inc.commit) in self.held_here
        if queued or self.ledger.swarm_notes(self.tag, peer=peer.name, commit=commit):
            return None  # judged (held, refuted, refused), queued, being measured or held here: never twice
        if over_refuted(self.ledger.swarm_notes(self.tag, peer=peer.name)):
            return self.refuse(peer.name, commit, f"{peer.name} has more refuted claims than its held ones allow "
                                                  f"(over {REFUTES_ALLOWED} + 2 x held): its claims are no longer "
                                                  "re-measured here")
        origin = f"{peer.name}#{claim['id']}"
        changed = self.ws.changed_between(start, commit)
        item = {"peer": peer.name, "commit": commit, "origin": origin, "claim": claim["metric"],
                "description": clean.one_line(claim["description"], 120), "files": changed}
        if not VERIFY:
            return item
        if not self.ws.git.ok("merge-base", "--is-ancestor", start, commit):
            return self.refuse(peer.name, commit, f"{origin} ({commit[:7]}) does not descend from the shared start")
        if not changed:
            return self.refuse(peer.name, commit, f"{origin} claims {self.cfg.metric.name} {claim['metric']:g} for "
                                                  f"the unchanged start {start[:7]}: a claim with no change")
        # the rules a proposal obeys (proposal.py): editable, not protected, not program.md, plain files only
        modes = {p: m for m, _, p in self.ws.tree_entries(commit) if p in changed}
        bad = [p for p in changed if self.cfg.is_protected(p) or not self.cfg.is_editable(p) or p == PROGRAM
               or modes.get(p, "100644") not in ("100644", "100755")]
        if bad:
            return self.refuse(peer.name, commit, f"{origin} ({commit[:7]}) changes files outside the editable set, "
                                                  f"protected, or not plain files: {', '.join(bad[:5])}: peer refused",
                               ban=True)
        return item

    def worth(self, claim: float, incumbent: float) -> bool:
        """Whether a claimed metric beats the local incumbent's by MARGIN_SIGMA noise sds (on the policy's
        scale: log for relative noise), so that measuring it here is worth an experiment."""
        lower = self.cfg.lower_is_better()
        scale = stats.Scale.of(self.cfg.metric.noise)
        if not policies.better(claim, incumbent, lower):
            return False
        if scale.relative and min(claim, incumbent) <= 0:
            return True
        sd, _ = pooled_noise(self.ledger, self.tag, scale)
        gap = abs(scale.judged(incumbent) - scale.judged(claim))
        return gap > MARGIN_SIGMA * (sd or 0.0)

    def merged_tree(self, item: dict[str, Any], onto: str, start: str) -> Optional[str]:
        """The tree of the peer's whole change (start -> its commit) cherry-picked onto `onto`; "" when it
        conflicts there; None when it changes nothing there (`onto` holds the change already)."""
        squashed = self.git("commit-tree", f"{item['commit']}^{{tree}}", "-p", start, "-m", item["origin"])
        try:
            return self.git("rev-parse", self.ws.rebase(squashed, onto, f"merge {item['origin']}") + "^{tree}")
        except NothingChanged:
            return None
        except RebaseConflict as c:
            self.ledger.event(self.tag, "swarm", f"{item['origin']} conflicts with the local best in "
                                                 f"{', '.join(c.files)}: only adopting it is tried")
            return ""

    def refuse(self, peer: str, commit: str, reason: str, ban: bool = False) -> None:
        if any(n["reason"] == reason for n in self.ledger.swarm_notes(self.tag, peer=peer)):
            return None
        self.ledger.swarm_note(self.tag, peer, "banned" if ban else "refused", reason, commit=commit)
        self.loop.report("note", message=f"swarm: {reason}")

    def banned(self, peer: str) -> bool:
        return any(n["status"] == "banned" for n in self.ledger.swarm_notes(self.tag, peer=peer))

    def note(self, peer: str, reason: str) -> None:
        self.ledger.event(self.tag, "swarm", reason)
        self.loop.report("note", message=f"swarm: {reason}")

    # -- the driver's hooks ---------------------------------------------------------------------
    def next_candidate(self) -> Optional["Experiment"]:
        """A committed, running experiment measuring a peer's claim, or None (then a researcher proposes).

        The contract with the driver (the swarm is one more researcher): call it where a proposal is
        asked for, from any thread (the proposer's included), one call at a time (a second concurrent
        call waits for the first); other threads may meanwhile record rows, call `recorded()`,
        `in_flight()` and `hints()`. The experiment returned is begun in the ledger, pinned and counted
        (RunSession.count), its parent the incumbent when it was made; the driver runs, judges and records it
        like any proposal (and rebases it like any winner if the branch moved since), then calls
        `recorded()`. The hub is synced here, at most every `sync_s` and only when nothing is queued;
        the wait is a fetch and a push."""
        with self.asking:
            with self.lock:
                due = not self.pending and time.monotonic() - self.last_sync >= self.s.sync_s
            if due:
                self.sync()
            while True:
                with self.lock:
                    if not self.pending:
                        return None
                    item = self.pending.popleft()
                exp = self.candidate(item)
                if exp is not None:
                    return exp

    def candidate(self, item: dict[str, Any]) -> Optional["Experiment"]:
        """The claim `item` as an experiment on today's local best, or None when there is nothing to measure.

        Where the local best has changes the peer's commit lacks, the peer's change cherry-picked onto the
        local best (`merge`) is measured first: it is what can beat both. If it is not kept, the peer's
        code as it is (`adopt`: its versions of the files it changed, on the local best) is measured next
        (recorded() queues it), so what measures best is kept. Where both are the same code, or the
        cherry-pick conflicts, only the adopt. A claim the local best now beats, or whose change it holds
        (a peer that adopted ours, or a merge kept since), is dropped."""
        loop, inc, start = self.loop, self.ledger.incumbent(self.tag), self.start()
        if inc is None or start is None:
            return None
        fallback = item.get("after_merge")  # the merge of this claim was not kept: its code as it is
        if fallback is None and (inc.metric is None or not self.worth(item["claim"], inc.metric)):
            return None  # the local best moved past it (or close to it) since it was queued
        message = f"{item['origin']} ({item['commit'][:7]}) on {self.tag}"
        entries = {p: (oid, mode) for mode, oid, p in self.ws.tree_entries(item["commit"])}
        data = self.ws.blobs([entries[p][0] for p in item["files"] if p in entries])
        changes = {p: ((data[entries[p][0]], entries[p][1] == "100755") if p in entries else None)
                   for p in item["files"]}
        kind, desc = "adopt", f"adopt {item['origin']}: {item['description']}"
        try:
            adopted = self.ws.commit_files(inc.commit, changes, f"{desc}\n\nautoresearch: adopt of {message}",
                                           base=start)
        except NothingChanged:
            adopted = None  # the local best has the peer's files as they are
        commit = adopted
        if fallback is None:
            merged = self.merged_tree(item, inc.commit, start)
            if merged is None or adopted is None:  # the local best holds the peer's change already
                with self.lock:
                    self.held_here.add((item["commit"], inc.commit))
                return None
            if merged and merged != self.git("rev-parse", f"{adopted}^{{tree}}"):
                kind, desc = "merge", f"merge {item['origin']}: {item['description']}"
                commit = self.git("commit-tree", merged, "-p", inc.commit,
                                  input=f"{desc}\n\nautoresearch: merge of {message}\n")
        if commit is None:  # after a merge that was not kept, the local best has the peer's files: judged
            self.ledger.swarm_note(self.tag, item["peer"], "refuted", fallback["reason"], commit=item["commit"],
                                   claim=item["claim"], experiment_id=fallback["id"])
            return None
        exp = loop.new_experiment(inc.commit, desc, kind=Kind.CANDIDATE)
        exp.agent, exp.commit = "swarm", commit
        exp.patch = self.ws.diff(inc.commit, exp.commit)
        exp.evidence = {"origin": item["origin"],
                        "swarm": {"kind": kind, "peer": item["peer"], "commit": item["commit"], "claim": item["claim"]}}
        self.ledger.begin(exp)
        with self.lock:
            self.tried[exp.id] = item  # recorded() finds the claim again
        self.ws.pin(exp.id, exp.commit)
        loop.count += 1
        return exp

    def recorded(self, exp: "Experiment") -> None:
        """After a row is final (any thread): a re-measured claim updates the peer's reputation (a merge not
        kept first has the peer's code measured as it is); then publish (best effort)."""
        sw = (exp.evidence or {}).get("swarm")
        item, again = None, (exp.evidence or {}).get("rebased_as")  # rebased (winners.py): judged there
        if isinstance(sw, dict):
            with self.lock:
                item = self.tried.pop(exp.id, None)  # no longer being measured (interrupted: queued again later)
                if again is not None and item is not None:
                    self.tried[again] = item
        if isinstance(sw, dict) and sw.get("kind") in ("adopt", "merge") and exp.status != Status.INTERRUPTED \
                and again is None:
            held = exp.status == Status.KEEP
            measured = exp.metric if exp.metric is not None else exp.status
            reason = (f"{exp.evidence['origin']} claimed {sw['claim']:g}; re-measured here as #{exp.id}"
                      f"{' (merged onto the local best)' if sw['kind'] == 'merge' else ''}: {measured} "
                      f"({exp.status}: {exp.reason})")
            if sw["kind"] == "merge" and not held and item is not None:
                with self.lock:  # next: its code as it is, before any other claim
                    self.pending.appendleft(dict(item, after_merge={"id": exp.id, "reason": reason}))
            else:
                self.ledger.swarm_note(self.tag, sw["peer"], "held" if held else "refuted", reason,
                                       commit=sw["commit"], claim=sw["claim"], experiment_id=exp.id)
        if self.task() is None:
            return
        try:
            self.publish()
        except GitError as e:
            self.note("hub", f"publishing failed (retried at the next sync): {clean.one_line(e, 300)}")

    def hints(self) -> str:
        """The swarm's section of the researchers' context: kept, in flight and failed elsewhere, other
        classes as hints; each section capped, the whole at HINTS_CHARS. Safe from any thread."""
        with self.lock:
            peers = list(self.peers.values())
        kept, failed, other, flying = [], [], [], []
        now = time.time()
        for peer in peers:
            for r in peer.records[-40:]:
                line = f"- {peer.name}#{r['id']}: {clean.one_line(r['description'], 100)} ({r['status']}" + \
                       (f", {r['metric']:g}" if isinstance(r.get("metric"), (int, float)) else "") + ")"
                if class_ref(r["hardware"]) != class_ref(self.hardware):
                    other.append(line + f" [class {r['hardware']}: a hint, not comparable]")
                elif r["status"] == Status.KEEP and r["kind"] != Kind.BASELINE:
                    kept.append(line)
                elif r["status"] != Status.KEEP:
                    failed.append(line)
            if peer.flight and now - peer.flight.get("at", 0) < FLIGHT_STALE_S:
                flying += [f"- {peer.name}: {clean.one_line(row['description'], 100)}"
                           for row in unfinished(peer.flight["rows"], peer.records)]
        if not (kept or failed or other or flying):
            return ""
        parts = ["# The swarm (other participants; their numbers are claims until measured here)"]
        for title, lines, most in (("Kept elsewhere", kept, 12), ("In flight elsewhere (being measured now: "
                                                                  "do not start the same)", flying, 10),
                                   ("Failed elsewhere (do not repeat)", failed, 15),
                                   ("Other hardware classes", other, 8)):
            if lines:
                parts.append(f"{title}:\n" + "\n".join(lines[-most:]))
        text = "\n".join(parts)
        return text if len(text) <= HINTS_CHARS else text[:HINTS_CHARS - 20] + "\n[... cut]"


def read_flight(ws: Any, sha: Optional[str], peer: str) -> dict[str, Any]:
    """Peer `peer`'s flight record at commit `sha` ({} when it has none), checked: one commit holding only
    flight.json, at most MAX_FLIGHT_BYTES, naming the peer, with up to FLIGHT_MAX rows of one-line text.
    Raises Refused naming the problem."""
    if not sha:
        return {}
    lines = ws.git("ls-tree", "--full-tree", sha).splitlines() if ws.git.ok("cat-file", "-e", f"{sha}^{{commit}}") \
        else []
    entry = lines[0].replace("\t", " ").split() if len(lines) == 1 else []
    if entry[:2] != ["100644", "blob"] or entry[3:] != ["flight.json"]:
        raise Refused("its flight ref is not one commit holding flight.json")
    if int(ws.git("cat-file", "-s", entry[2])) > MAX_FLIGHT_BYTES:
        raise Refused(f"its flight record is larger than {MAX_FLIGHT_BYTES} bytes")
    try:
        data = json.loads(ws.blobs([entry[2]])[entry[2]])
    except ValueError:
        raise Refused("its flight record is not JSON")
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or data.get("participant") != peer or not isinstance(data.get("at"), (int, float)) \
            or not all(isinstance(r, dict) and isinstance(r.get("description"), str)
                       and isinstance(r.get("commit"), (str, type(None)))
                       and isinstance(r.get("id"), (int, type(None))) for r in rows):
        raise Refused("its flight record is malformed (participant, at, rows of description, commit and id)")
    return {"at": float(data["at"]), "rows": [{"description": clean.one_line(r["description"], 160),
                                               "commit": r.get("commit"), "id": r.get("id")}
                                              for r in rows[:FLIGHT_MAX]]}


def unfinished(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flight rows whose experiment has no published record yet (by id; rows without one, by commit)."""
    ids = {r["id"] for r in records}
    commits = {r["commit"] for r in records if r.get("commit")}
    return [row for row in rows
            if (row["id"] not in ids if row.get("id") is not None else row.get("commit") not in commits)]


def bad_record(fname: str, data: Any, peer: str) -> str:
    """Why record `fname` of `peer` is unusable, or ""."""
    if not isinstance(data, dict):
        return f"record {fname} is not an object"
    for key, types in RECORD_FIELDS.items():
        if not isinstance(data.get(key), types):
            return f"record {fname}: field {key!r} missing or of the wrong type"
    if data["participant"] != peer:
        return (f"record {fname} was written by {data['participant']!r}, published under {peer!r}: a copy of "
                "another participant's records")
    if fname != f"r-{data['id']:06d}.json":
        return f"record {fname} carries id {data['id']}"
    metric = data.get("metric")
    if metric is not None and (not isinstance(metric, (int, float)) or metric != metric or abs(metric) == float("inf")):
        return f"record {fname}: metric {metric!r} is not a finite number"
    return ""


# -- seeing the swarm ---------------------------------------------------------------------------
def status(root: Path, tag: str, ledger: Any, fetch: bool = True) -> dict[str, Any]:
    """What `autoresearch swarm status` shows: participants, classes, bests, in flight, frontier, reputation,
    spread. `fetch`: read the hub first (else as last fetched: `fetched` is False, as when it is unreachable)."""
    from .workspace import Workspace

    s = load(root)
    if s is None:
        raise ConfigError(f"{root} is not in a swarm: run `autoresearch swarm init <hub>` first")
    ws = Workspace(root, tag)
    fetched = fetch and run_git(["fetch", "--quiet", "--no-tags", "--prune", s.hub, f"+{NS}/*:{SEEN}/*"], ws.top,
                                capture_output=True, text=True, env=ws.git.env).returncode == 0
    out = ws.git("for-each-ref", "--format=%(refname) %(objectname)", f"{SEEN}/")
    refs = {ref[len(SEEN) + 1:]: sha for ref, _, sha in (line.partition(" ") for line in out.splitlines())}
    notes = ledger.swarm_notes(tag)
    participants, frontier, spread, found = [], {}, {}, {}
    for name in sorted({ref.split("/", 1)[0] for ref in refs}):
        entry: dict[str, Any] = {"name": name, "me": name == s.name, "bests": {}, "records": 0}
        log = refs.get(f"{name}/log")
        records = []
        if log:
            for line in ws.git("ls-tree", log).splitlines():
                meta, _, fname = line.partition("\t")
                if fname.startswith("r-"):
                    try:
                        data = json.loads(ws.blobs([meta.split()[2]])[meta.split()[2]])
                    except ValueError:
                        continue
                    if isinstance(data, dict) and not bad_record(fname, data, name):
                        records.append(data)
        entry["records"] = len(records)
        for x in records:
            found[f"{name}#{x['id']}"] = x
        try:
            flight = read_flight(ws, refs.get(f"{name}/flight"), name)
        except Refused:
            flight = {}
        entry["in_flight"] = unfinished(flight["rows"], records) if flight and \
            time.time() - flight["at"] < FLIGHT_STALE_S else []
        refused = [n for n in notes if n["peer"] == name and n["status"] in ("refused", "banned", "ignored")]
        for ref, sha in refs.items():
            if ref.startswith(f"{name}/best/"):
                klass = ref.split("/best/", 1)[1]
                claim = next((x for x in reversed(records) if x["commit"] == sha and x["status"] == Status.KEEP), None)
                b = {"commit": sha, "metric": claim and claim.get("metric"), "at": claim and claim.get("at"),
                     "id": claim and claim["id"]}
                entry["bests"][klass] = b
                refuted = any(n["peer"] == name and n["commit"] == sha and n["status"] == "refuted" for n in notes)
                held = name == s.name or any(n["peer"] == name and n["commit"] == sha and n["status"] == "held"
                                             for n in notes)
                if claim and not refused and not refuted and isinstance(b["metric"], (int, float)):
                    # claims as published; `verified`: measured here (or our own)
                    frontier.setdefault(klass, []).append({"participant": name, "verified": held, **b})
        for x in records:
            if x.get("origin") and x["status"] == Status.KEEP:
                spread.setdefault(x["origin"], []).append({"adopted_by": name, "id": x["id"], "at": x.get("at")})
        mine = [n for n in notes if n["peer"] == name]
        entry["reputation"] = {k: sum(1 for n in mine if n["status"] == k)
                               for k in ("held", "refuted", "refused", "banned", "ignored")}
        entry["reasons"] = [n["reason"] for n in mine if n["status"] not in ("held",)][-10:]
        participants.append(entry)
    for klass, rows in frontier.items():
        rows.sort(key=lambda b: b["metric"], reverse=not _lower(root))
    ideas = []
    for k, v in sorted(spread.items()):
        first = found.get(k, {})
        ideas.append({"idea": k, "found_by": k.split("#")[0], "description": first.get("description", ""),
                      "found_at": first.get("at"), "metric": first.get("metric"),
                      "adopted": sorted(v, key=lambda a: a.get("at") or 0)})
    return {"name": s.name, "hub": s.hub, "fetched": fetched, "participants": participants, "frontier": frontier,
            "spread": ideas}


def _lower(root: Path) -> bool:
    from .config import load as load_config

    return load_config(root).lower_is_better()


def render(st: dict[str, Any]) -> str:
    stale = "" if st["fetched"] else " [hub unreachable: as last seen]"
    lines = [f"swarm at {st['hub']} (you are {st['name']}){stale}"]
    for p in st["participants"]:
        rep = ", ".join(f"{k} {v}" for k, v in p["reputation"].items() if v) or "no claims judged here"
        lines.append(f"  {p['name']}{' (you)' if p['me'] else ''}: {p['records']} records; reputation: {rep}")
        for klass, b in sorted(p["bests"].items()):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(b["at"])) if b.get("at") else "?"
            lines.append(f"    best on {klass}: {b['commit'][:7]} {b['metric']} at {when}")
        for row in p.get("in_flight", [])[:5]:
            lines.append(f"    in flight: {row['description']}")
        for why in p["reasons"][-3:]:
            lines.append(f"    - {why}")
    for klass, rows in sorted(st["frontier"].items()):
        lines.append(f"frontier on {klass}: " + ", ".join(
            f"{b['participant']} {b['metric']:g}{'' if b['verified'] else ' (claimed)'}" for b in rows[:5]))
    for s in st["spread"]:
        lines.append(f"idea {s['idea']}: adopted by " + ", ".join(a["adopted_by"] for a in s["adopted"]))
    return "\n".join(lines)
