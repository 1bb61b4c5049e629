"""A researcher: one agent of the team, proposing one change at a time in a folder of its own.

    propose   the agent edits a plain copy of the best (or of a crashed change, to repair it),
              in its own folder (proposal.py), in its sandbox; its context holds the history,
              the experiments in flight and what the other researchers are working on now
    check     only editable files changed (no link, no special file, not program.md), and something did
    commit    one commit per experiment, from the bytes the harness read; its message the description

Guarantees:
- Every call ends in exactly one of: None (nothing to record: a stop arrived before anything was
  spent, or the agent said it has nothing left and spent nothing), a finished row (`crash`,
  `violation`, `discard`, `interrupted`: recorded here), or a committed, pinned `running` row for
  the driver to run. An agent that raises is data (`crash`), never a harness failure.
- Researchers never share a folder: researcher n works in `worktrees/<tag>/propose` (n = 1) or
  `propose-<n>`, so several propose at once without touching each other's files.
- What the guard finds while a researcher proposes is charged to its proposal (RunSession.window).
- A researcher stops alone: its agent saying it is done (`Proposal.stop`) or its own cost cap
  (`max_usd`/`max_tokens` of its `[[agents]]` entry) sets `done`; the others go on.

Not covered: how many propose at once and when (driver.py); whether a change is kept (winners.py).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Optional

from . import clean, figures, standings
from .agents.base import Agent, Proposal
from .agents.context import Context, read_files
from .ledger import Experiment
from .proposal import ProposalFolder
from .session import RunSession
from .states import Kind, Status
from .workspace import GitError, NothingChanged


class Researcher:
    """One member of the team: an agent, its label (backend, model, index), its weight and its folder."""

    def __init__(self, session: RunSession, agent: Agent, *, label: str = "", index: int = 1, weight: float = 1.0,
                 cfg=None, own_caps: bool = False):
        """`cfg`: its own settings (an `[[agents]]` entry's model, caps, timeout); `own_caps`: its max_usd and
        max_tokens bound it alone (an `[[agents]]` entry), else they are the team's (the driver's)."""
        self.session, self.agent, self.index, self.weight, self.own_caps = session, agent, index, weight, own_caps
        self.cfg = cfg or session.cfg
        model = self.cfg.agent.model
        self.label = label or f"{getattr(agent, 'name', '?')}{':' + model if model else ''}#{index}"
        self.folder = ProposalFolder(session.ws, "propose" if index == 1 else f"propose-{index}")
        self.done = ""  # why this researcher proposes no more ("" while it does)
        self.hung = False  # given up on after no answer past its timeout
        self.proposals = 0
        self.busy = False

    @property
    def name(self) -> str:
        return getattr(self.agent, "name", "?")

    def propose(self, repair_of: Optional[Experiment] = None, *, running: Optional[list[str]] = None,
                others: Optional[list[str]] = None, exclusive: bool = True) -> Optional[Experiment]:
        """Ask the agent for a change; return a committed, `running` experiment, a finished row, or None."""
        s = self.session
        parent = s.ws.expected_tip()  # where the harness set the branch, whoever moved it since
        start = repair_of.commit if repair_of else parent
        wt = self.folder.prepare(start)  # a plain folder: no way into the repository (proposal.py)
        ctx = self.context(wt, repair_of, running or [], others or [])
        s.report("proposing", repair=repair_of is not None, researcher=self.label)
        t0 = time.monotonic()
        self.proposals += 1
        with s.window(self) as tampered, s.guard_for_agent(exclusive) as tripwire:
            try:
                proposal = self.agent.propose(ctx, wt)
            except Exception as e:  # an agent backend failing is data, not a harness failure
                proposal = Proposal("", error=f"{type(e).__name__}: {e}")
        tampered[:0] = tripwire
        if proposal.latency_s is None:
            proposal.latency_s = time.monotonic() - t0
        exp = s.new_experiment(parent, proposal.description or "(no description)",
                               kind=Kind.REPAIR if repair_of else Kind.CANDIDATE, proposal=proposal, agent=self.name,
                               researcher=self.label)
        exp.repair_of = repair_of.id if repair_of else None
        spent = bool(proposal.meta.get("llm_calls") or proposal.cost_usd or proposal.tokens_in)
        if s.stop_requested:
            # the agent's spending is data even when the change never runs
            return self.unrun(exp, Status.INTERRUPTED, "stopped before it ran", proposal) if spent else None
        if tampered:
            return self.unrun(exp, Status.VIOLATION, f"the agent touched the harness's state: {'; '.join(tampered)}",
                                  proposal)
        if proposal.stop and not proposal.error:  # out of ideas: this researcher stops, not a failed experiment
            self.done = f"the agent {self.label} stopped: {proposal.stop}"
            s.report("note", message=self.done)
            return self.unrun(exp, Status.INTERRUPTED, self.done, proposal) if spent else None
        if proposal.error:
            why = clean.one_line(proposal.error, clean.REASON_CHARS)
            return self.unrun(exp, Status.CRASH, f"agent failed: {why}", proposal)
        change = self.folder.changes()  # walked with lstat, compared with what the folder held
        if problems := change.problems(s.cfg):
            exp.patch = change.patch()  # kept as evidence of what was tried
            shown = clean.one_line("; ".join(problems), clean.REASON_CHARS)  # file names are the agent's text too
            return self.unrun(exp, Status.VIOLATION, f"{shown} (refused before running)", proposal)
        if not change.paths:
            return self.unrun(exp, Status.DISCARD, "the agent changed nothing", proposal)
        try:  # from the bytes the harness read: no git runs in the folder the agent wrote
            exp.commit = s.ws.commit_files(parent, change.files, s.commit_message(exp), base=start)
        except NothingChanged:
            return self.unrun(exp, Status.DISCARD, "the change is empty once committed", proposal)
        except GitError as e:  # what the agent made (a path, a file) can make git fail: its failure, not ours
            return self.unrun(exp, Status.CRASH, f"git could not commit the change: "
                                                f"{clean.one_line(e, clean.REASON_CHARS)}", proposal)
        exp.patch = s.ws.diff(parent, exp.commit)
        twin = same_code(s, exp)  # identical code already measured: these runs add to its runs
        s.ledger.begin(exp)
        if twin is not None:
            s.ledger.event(s.tag, "same code", f"#{exp.id} is the same code as #{twin.id} ({twin.status}, tree "
                           f"equal, same parent): measured as {twin.short} again on seed {exp.seed}; the runs of "
                           "both count together", exp.id)
        s.log_calls(exp, proposal)
        s.ws.pin(exp.id, exp.commit)
        s.count += 1
        return exp

    def unrun(self, exp: Experiment, status: Status, reason: str, proposal: Optional[Proposal] = None) -> Experiment:
        """A proposal that ends here, recorded; what follows a record (results.tsv, the reporter, the tracker,
        the swarm) is left to the driver's thread, which does it once for every row."""
        return self.session.finish_unrun(exp, status, reason, proposal, record=False)

    def context(self, wt: Path, repair_of: Optional[Experiment], running: list[str], others: list[str]) -> Context:
        s, root = self.session, self.session.cfg.root
        s.control.note_steering()  # program.md / ideas.md edited mid-run: noted in the ledger
        read = lambda name: (root / name).read_text(encoding="utf-8") if (root / name).exists() else ""  # noqa: E731
        history = s.ledger.experiments(s.tag)
        return Context(
            cfg=self.cfg, tag=s.tag, program=read("program.md"), ideas=read("ideas.md"),
            files=read_files(wt, s.cfg.experiment.editable, s.cfg.experiment.protected),
            readonly=read_files(wt, s.cfg.experiment.protected),
            tracked=frozenset(self.folder.manifest), sandbox=s.sandbox(),
            history=history, incumbent=s.ledger.incumbent(s.tag), repair=repair_of,
            running=running + [f"(another researcher is working on a change right now: {o})" for o in others],
            figure=figures.improvement(s.ledger, s.tag, figures.Spec.from_config(s.cfg)),
            swarm=self.swarm_hints(),
            call=f"{len(history):05d}" + (f"-{self.index}" if self.index > 1 else ""),  # unique among calls at once
        )

    def swarm_hints(self) -> str:
        s = self.session
        if s.swarm is None:
            return ""
        with s.swarm_lock:  # the swarm is shared by every researcher's thread
            return s.swarm.hints()

    def cap_reached(self) -> str:
        """This researcher's own cost cap (its [[agents]] entry's max_usd / max_tokens), if reached."""
        a = self.cfg.agent
        if not self.own_caps or not (a.max_usd or a.max_tokens):
            return ""  # the team's shared cap is the driver's (agent.max_usd over all rows)
        usd, tokens = standings.spent(self.session.ledger.experiments(self.session.tag), self.label)
        if a.max_usd and usd >= a.max_usd:
            return f"{self.label}: agent cost ${usd:.2f} reached its max_usd ${a.max_usd:.2f}"
        if a.max_tokens and tokens >= a.max_tokens:
            return f"{self.label}: agent tokens {tokens} reached its max_tokens {a.max_tokens}"
        return ""


def same_code(s: RunSession, exp: Experiment) -> Optional[Experiment]:
    """The judged experiment whose commit has exactly `exp`'s tree on the same parent, if any.

    Then `exp` measures that commit again on a seed it has not used, instead of a fresh commit:
    the policy finds the runs of one commit together (measurements are keyed by commit), so
    evidence about identical code accumulates instead of being judged from scratch each time
    the agent proposes it. Keyed on git's tree id: descriptions and whitespace in messages differ.
    """
    tree = s.ws.git("rev-parse", f"{exp.commit}^{{tree}}")
    for e in reversed(s.ledger.experiments(s.tag)):
        if (e.parent == exp.parent and e.commit and e.status in (Status.KEEP, Status.DISCARD) and e.metric is not None
                and (e.commit == exp.commit or s.ws.git("rev-parse", f"{e.commit}^{{tree}}") == tree)):
            used = {m["seed"] for m in s.ledger.measurements(commit=e.commit)}
            exp.commit, exp.seed = e.commit, next(x for x in itertools.count(exp.seed) if x not in used)
            exp.evidence = {"same_code_as": e.id}
            return e
    return None
