"""The swarm: independent runs on many machines share one research frontier over a git remote.

What it owns:
- Participant settings, outside the tracked (protected) autoresearch.toml: `.autoresearch/swarm.toml`
  (`hub`: any git URL or path; `name`: default user@host; `sync_s`; `hardware`: the class this
  participant's numbers belong to, default `engine.hardware`, else the machine's), written by
  `autoresearch swarm init <hub> [--name NAME]`.
- Publishing. A participant writes only under `refs/autoresearch-swarm/<name>/`: `log`, a commit
  chain whose first commit adds `task.json` (the shared starting commit and the protected files'
  digests) and each later commit adds exactly one record `r-<id>.json` (one finished experiment:
  commit, parent, description, status, metric, evidence, hardware class, agent, cost); and
  `best/<class>`, its incumbent's commit. One `git push --atomic` with `--force-with-lease` on both
  refs moves them together or not at all; a lost race is fetched and retried. A participant killed
  mid-push leaves the hub at its previous state (git's ref update is atomic) and publishes what is
  missing at its next sync: records are keyed by ledger id, so nothing is lost or duplicated.
- Sync and adopt, never trust. Every `sync_s`, between experiments (Loop.propose asks
  `next_candidate()`), the hub's swarm refs are fetched into `refs/autoresearch-swarm-seen/`.
  Each peer's log is checked before anything of it is used: a chain of single-parent commits each
  adding one parseable record that names the peer itself (a copy of another participant's records
  is refused), the same task (else ignored with a warning), and an append-only history (a log that
  no longer contains the tip seen before was rewritten: refused). A peer's `best/<class>` of the
  local class that claims to beat the local incumbent becomes a candidate only if it descends from
  the shared start, changes something, and touches only editable, unprotected files (a protected
  file touched: the peer is refused from then on). The candidate is the peer's code as a new
  commit on the local incumbent (agent `swarm`, description `adopt alice#17: ...`, evidence
  `origin`), judged by the local judge, policy and sandbox like any other; where the local best
  differs from the start, the peer's whole change cherry-picked onto the local best (as it was when
  the claim was read) is tried next (`merge alice#17: ...`), so what measures best is kept.
  Other hardware classes are hints in the researchers' context, never ranked or adopted.
- Reputation, in the ledger (table `swarm`, Ledger.swarm_note): per peer and commit, `held`
  (re-measured and kept), `refuted` (re-measured, not kept: never adopted again), `refused` (a
  record or claim that fails a check, with its reason), `banned` (a claim touching what a proposal
  may not: the peer is skipped from then on), `ignored` (another task).
- Seeing it: `hints()` is the researchers' context section (kept and failed elsewhere, other
  classes as hints; bounded); `status()` / `render()` are `autoresearch swarm status [--json]`
  (participants, each one's best per class and when, the frontier per class without refused or
  refuted claims, reputation, who adopted which idea); report_html shows the ledger's side.

Not covered: a hub that lets anyone write any ref (a plain bare repository) cannot stop a participant
from writing into another's namespace; what it can do there is caught only as a rewritten history
(against the tip seen before) or as records that fail the checks, and in any case a claim is only
kept after local measurement. Hints from other classes are shown as claimed, not verified. The
concurrent scheduler publishes its records but does not adopt (sequential loop only). Nothing in
flight is published (only finished rows). A peer can make the local repository fetch large objects:
there is no quota.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import time
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import clean
from . import policy as policies
from .errors import AutoresearchError, ConfigError
from .layout import Layout
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


REFUTES_ALLOWED = 3  # refuted claims a peer may have beyond twice its held ones before it is no longer heard


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


class Refused(Exception):
    """A peer's published state fails a check: nothing of it is used."""


class Swarm:
    """One participant: publishes its ledger, reads the others, and turns their claims into candidates."""

    def __init__(self, loop: "RunSession", settings: Settings):
        self.loop, self.s = loop, settings
        self.ws, self.ledger, self.tag, self.cfg = loop.ws, loop.ledger, loop.tag, loop.cfg
        self.hardware = settings.hardware or self.cfg.engine.hardware or hardware()
        self.last_sync = float("-inf")
        self.pending: deque[tuple[str, dict[str, Any]]] = deque()  # (kind, claim) candidates to make
        self.peers: dict[str, Peer] = {}  # the peers read at the last sync that passed every check
        self.cache: dict[str, Peer] = {}  # each peer's chain as last read (read_peer continues from it)
        self.warned: set[str] = set()

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
        """Push what the hub lacks of this participant's finished rows, and its best; returns records pushed."""
        task = self.task()
        if task is None:
            return 0
        logref, bestref = f"{NS}/{self.s.name}/log", f"{NS}/{self.s.name}/best/{class_ref(self.hardware)}"
        for attempt in range(PUSH_TRIES):
            seen = self.seen()
            old_log = seen.get(f"{self.s.name}/log")
            old_best = seen.get(f"{self.s.name}/best/{class_ref(self.hardware)}")
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
            if not refs:
                return 0
            leases = [f"--force-with-lease={ref}:{old or ''}" for _, ref, old in refs]
            r = run_git(["push", "--quiet", "--atomic", "--no-verify", *leases, self.s.hub,
                         *[f"{sha}:{ref}" for sha, ref, _ in refs]], self.ws.top, capture_output=True, text=True,
                        env=self.ws.git.env)
            if r.returncode == 0:
                for sha, ref, _ in refs:
                    self.git("update-ref", SEEN + ref[len(NS):], sha)
                return n
            time.sleep(0.2 * (attempt + 1))  # lost a race (or the hub is busy): look again and retry
            self.fetch()
        raise GitError(f"could not push to the hub {self.s.hub} after {PUSH_TRIES} tries: {r.stderr.strip()}")

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
        """Fetch, publish what is missing, and read every peer (queueing the claims worth measuring)."""
        self.last_sync = time.monotonic()
        try:
            self.fetch()
            self.publish()
        except GitError as e:  # the hub is someone else's machine: its failure is noted, the loop goes on
            self.note("hub", f"the hub could not be reached: {clean.one_line(e, 300)}")
            return
        refs = self.seen()
        names = sorted({ref.split("/", 1)[0] for ref in refs} - {self.s.name})
        mine = self.task()
        self.peers = {}
        for name in names:
            if self.banned(name):
                continue
            try:
                peer = self.read_peer(name, refs)
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
            self.consider(peer)
            if not self.banned(name):  # a peer refused for its claim shows nothing to the researchers either
                self.peers[name] = peer

    def consider(self, peer: Peer) -> None:
        """Queue `peer`'s best of the local class if it claims to beat the local incumbent and passes the checks."""
        commit = peer.best.get(class_ref(self.hardware))
        inc, start = self.ledger.incumbent(self.tag), self.start()
        if not commit or inc is None or inc.metric is None or start is None:
            return
        claim = next((r for r in reversed(peer.records) if r["commit"] == commit and r["status"] == Status.KEEP), None)
        if claim is None:
            return self.refuse(peer.name, commit, f"{peer.name}'s best {commit[:7]} has no kept record claiming it")
        if class_ref(claim["hardware"]) != class_ref(self.hardware) or \
                not isinstance(claim.get("metric"), (int, float)):
            return self.refuse(peer.name, commit, f"{peer.name}'s best {commit[:7]} is claimed on another class "
                                                  f"({claim['hardware']!r}) or without a metric")
        if not policies.better(claim["metric"], inc.metric, self.cfg.lower_is_better()):
            return
        if self.ledger.swarm_notes(self.tag, peer=peer.name, commit=commit) or \
                any(c.get("commit") == commit for _, c in self.pending):
            return  # judged (held, refuted, refused) or queued already: never twice
        if over_refuted(self.ledger.swarm_notes(self.tag, peer=peer.name)):
            return self.refuse(peer.name, commit, f"{peer.name} has more refuted claims than its held ones allow "
                                                  f"(over {REFUTES_ALLOWED} + 2 x held): its claims are no longer "
                                                  "re-measured here")
        origin = f"{peer.name}#{claim['id']}"
        changed = self.ws.changed_between(start, commit)
        if not VERIFY:
            return self.queue(peer, commit, origin, claim, changed, inc.commit, start)
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
        self.queue(peer, commit, origin, claim, changed, inc.commit, start)

    def queue(self, peer: Peer, commit: str, origin: str, claim: dict[str, Any], changed: list[str], inc: str,
              start: str) -> None:
        item = {"peer": peer.name, "commit": commit, "origin": origin, "claim": claim["metric"],
                "description": clean.one_line(claim["description"], 120), "files": changed}
        self.pending.append(("adopt", item))
        if inc != start:  # the local best has changes of its own: also try both together
            merged = self.merged_tree(item, inc, start)
            if merged:
                self.pending.append(("merge", dict(item, tree=merged)))

    def merged_tree(self, item: dict[str, Any], onto: str, start: str) -> str:
        """The tree of the peer's whole change (start -> its commit) cherry-picked onto `onto`, or ""."""
        squashed = self.git("commit-tree", f"{item['commit']}^{{tree}}", "-p", start, "-m", item["origin"])
        try:
            return self.git("rev-parse", self.ws.rebase(squashed, onto, f"merge {item['origin']}") + "^{tree}")
        except NothingChanged:
            return ""
        except RebaseConflict as c:
            self.ledger.event(self.tag, "swarm", f"{item['origin']} conflicts with the local best in "
                                                 f"{', '.join(c.files)}: only adopting it is tried")
            return ""

    def refuse(self, peer: str, commit: str, reason: str, ban: bool = False) -> None:
        if any(n["reason"] == reason for n in self.ledger.swarm_notes(self.tag, peer=peer)):
            return
        self.ledger.swarm_note(self.tag, peer, "banned" if ban else "refused", reason, commit=commit)
        self.loop.report("note", message=f"swarm: {reason}")

    def banned(self, peer: str) -> bool:
        return any(n["status"] == "banned" for n in self.ledger.swarm_notes(self.tag, peer=peer))

    def note(self, peer: str, reason: str) -> None:
        self.ledger.event(self.tag, "swarm", reason)
        self.loop.report("note", message=f"swarm: {reason}")

    # -- the loop's hooks ---------------------------------------------------------------------
    def next_candidate(self) -> Optional["Experiment"]:
        """A committed, running experiment adopting a peer's claim, or None (then the agent proposes)."""
        if not self.pending and time.monotonic() - self.last_sync >= self.s.sync_s:
            self.sync()
        while self.pending:
            kind, item = self.pending.popleft()
            exp = self.candidate(kind, item)
            if exp is not None:
                return exp
        return None

    def candidate(self, kind: str, item: dict[str, Any]) -> Optional["Experiment"]:
        loop, inc, start = self.loop, self.ledger.incumbent(self.tag), self.start()
        if inc is None or start is None:
            return None
        desc = f"{'adopt' if kind == 'adopt' else 'merge'} {item['origin']}: {item['description']}"
        exp = loop.new_experiment(inc.commit, desc, kind=Kind.CANDIDATE)
        exp.agent = "swarm"
        message = f"{desc}\n\nautoresearch: {kind} of {item['origin']} ({item['commit'][:7]}) on {self.tag}"
        try:
            if kind == "adopt":  # the peer's code: its editable files as they are at its commit, on the local best
                entries = {p: (oid, mode) for mode, oid, p in self.ws.tree_entries(item["commit"])}
                data = self.ws.blobs([entries[p][0] for p in item["files"] if p in entries])
                changes = {p: ((data[entries[p][0]], entries[p][1] == "100755") if p in entries else None)
                           for p in item["files"]}
                exp.commit = self.ws.commit_files(inc.commit, changes, message, base=start)
            else:  # its change cherry-picked onto the local best as it was (merged_tree), on today's best
                if item["tree"] == self.git("rev-parse", f"{inc.commit}^{{tree}}"):
                    return None
                exp.commit = self.git("commit-tree", item["tree"], "-p", inc.commit, input=message + "\n")
        except NothingChanged:
            return None  # the local best has this code already
        exp.patch = self.ws.diff(inc.commit, exp.commit)
        exp.evidence = {"origin": item["origin"],
                        "swarm": {"kind": kind, "peer": item["peer"], "commit": item["commit"], "claim": item["claim"]}}
        self.ledger.begin(exp)
        self.ws.pin(exp.id, exp.commit)
        loop.count += 1
        return exp

    def recorded(self, exp: "Experiment") -> None:
        """After a row is final: a re-measured claim updates the peer's reputation; then publish (best effort)."""
        sw = (exp.evidence or {}).get("swarm")
        if isinstance(sw, dict) and sw.get("kind") == "adopt" and exp.status != Status.INTERRUPTED:
            held = exp.status == Status.KEEP
            reason = (f"{exp.evidence['origin']} claimed {sw['claim']:g}; re-measured here as #{exp.id}: "
                      f"{exp.metric if exp.metric is not None else exp.status} ({exp.status}: {exp.reason})")
            self.ledger.swarm_note(self.tag, sw["peer"], "held" if held else "refuted", reason, commit=sw["commit"],
                                   claim=sw["claim"], experiment_id=exp.id)
        if self.task() is None:
            return
        try:
            self.publish()
        except GitError as e:
            self.note("hub", f"publishing failed (retried at the next sync): {clean.one_line(e, 300)}")

    def hints(self) -> str:
        """The swarm's section of the researchers' context: kept and failed elsewhere, bounded."""
        kept, failed, other = [], [], []
        for peer in self.peers.values():
            for r in peer.records[-40:]:
                line = f"- {peer.name}#{r['id']}: {clean.one_line(r['description'], 100)} ({r['status']}" + \
                       (f", {r['metric']:g}" if isinstance(r.get("metric"), (int, float)) else "") + ")"
                if class_ref(r["hardware"]) != class_ref(self.hardware):
                    other.append(line + f" [class {r['hardware']}: a hint, not comparable]")
                elif r["status"] == Status.KEEP and r["kind"] != Kind.BASELINE:
                    kept.append(line)
                elif r["status"] != Status.KEEP:
                    failed.append(line)
        if not (kept or failed or other):
            return ""
        parts = ["# The swarm (other participants; their numbers are claims until measured here)"]
        for title, lines in (("Kept elsewhere", kept), ("Failed elsewhere (do not repeat)", failed),
                             ("Other hardware classes", other)):
            if lines:
                parts.append(f"{title}:\n" + "\n".join(lines[-15:]))
        text = "\n".join(parts)
        return text if len(text) <= HINTS_CHARS else text[:HINTS_CHARS - 20] + "\n[... cut]"


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
def status(root: Path, tag: str, ledger: Any) -> dict[str, Any]:
    """What `autoresearch swarm status` shows: participants, classes, bests, frontier, reputation, spread."""
    from .workspace import Workspace

    s = load(root)
    if s is None:
        raise ConfigError(f"{root} is not in a swarm: run `autoresearch swarm init <hub>` first")
    ws = Workspace(root, tag)
    r = run_git(["fetch", "--quiet", "--no-tags", "--prune", s.hub, f"+{NS}/*:{SEEN}/*"], ws.top,
                capture_output=True, text=True, env=ws.git.env)
    fetched = r.returncode == 0
    out = ws.git("for-each-ref", "--format=%(refname) %(objectname)", f"{SEEN}/")
    refs = {ref[len(SEEN) + 1:]: sha for ref, _, sha in (line.partition(" ") for line in out.splitlines())}
    notes = ledger.swarm_notes(tag)
    participants, frontier, spread = [], {}, {}
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
    return {"name": s.name, "hub": s.hub, "fetched": fetched, "participants": participants, "frontier": frontier,
            "spread": [{"idea": k, "found_by": k.split("#")[0], "adopted": v} for k, v in sorted(spread.items())]}


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
        for why in p["reasons"][-3:]:
            lines.append(f"    - {why}")
    for klass, rows in sorted(st["frontier"].items()):
        lines.append(f"frontier on {klass}: " + ", ".join(
            f"{b['participant']} {b['metric']:g}{'' if b['verified'] else ' (claimed)'}" for b in rows[:5]))
    for s in st["spread"]:
        lines.append(f"idea {s['idea']}: adopted by " + ", ".join(a["adopted_by"] for a in s["adopted"]))
    return "\n".join(lines)
