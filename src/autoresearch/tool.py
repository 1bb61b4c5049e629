"""Tool mode: one experiment from the uncommitted change in the user's checkout.

For a coding agent that drives its own loop (the original's way): it edits the editable
files in place and calls `autoresearch experiment -m "what I tried"`. The harness then
does everything the loop would — check, commit, run (in its own worktree), judge,
decide, record — and every rule still holds:
- a change to a file outside `experiment.editable`, a symlink, a non-regular file or a nested
  `.git` is refused (`violation`) and undone, as a proposal's would be (proposal.py); the
  commit is made from the bytes the harness reads, by git plumbing (no `git add` of them);
- the checkout cannot be sandboxed (the coding agent is the user's own process), and
  program.md in it may be the human's edit as well as the agent's: a change to it is recorded
  (a `steering` event with its digest and first changed line), not refused;
- keep: the branch advances by compare-and-swap to the new commit, which matches the
  checkout, so the change stays; otherwise the changed files are put back as they were
  at the parent, so the checkout is clean for the next try;
- the first call on a tag measures the baseline first;
- the `-m` text is cleaned like any agent's description (clean.one_line): one line, no
  control characters or escape sequences, capped.
The checkout must be on `autoresearch/<tag>`; from any other branch one is created at
HEAD and checked out, carrying the uncommitted change along.
"""

from __future__ import annotations

from typing import Any, Optional

from . import figures
from .agents.base import Proposal
from .clean import REASON_CHARS, one_line
from .config import Config
from .driver import Driver, local_engine
from .errors import WorkspaceError
from .ledger import Experiment
from .proposal import read_change, refused_kinds
from .states import Kind, Status
from .session import RunSession
from .workspace import STEERING_FILES, Git, GitError, NothingChanged, default_tag


def current_tag(cfg: Config, tag: Optional[str]) -> str:
    git = Git(cfg.root)
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch.startswith("autoresearch/"):
        here = branch.split("/", 1)[1]
        if tag and tag != here:
            raise WorkspaceError(f"the checkout is on {branch}, not autoresearch/{tag}: switch branch or drop --tag")
        return here
    tag = tag or default_tag()
    if branch == "HEAD":
        raise WorkspaceError("the checkout is on a detached HEAD: check out a branch first")
    if git.ok("rev-parse", "--verify", "--quiet", f"refs/heads/autoresearch/{tag}"):
        git("switch", "-q", f"autoresearch/{tag}")  # carries the uncommitted change, or refuses clearly
    else:
        git("switch", "-q", "-c", f"autoresearch/{tag}")
    return tag


def experiment(cfg: Config, description: str, tag: Optional[str] = None, reporter=None) -> dict[str, Any]:
    tag = current_tag(cfg, tag)
    session = RunSession(cfg, tag, reporter=reporter, note="tool mode")
    checkout = cfg.root
    with session.open(checkout_may_differ=True):
        driver = Driver(cfg, tag, session=session, engine=local_engine(cfg))  # no researchers: the user's change
        driver.start()
        try:
            if session.ledger.incumbent(tag) is None:
                base = driver.settle([driver.baseline_row()])[0]
                if base.status != Status.KEEP:
                    return _verdict(session, base)
            return _verdict(session, _try(session, driver, description, checkout))
        finally:
            driver.shutdown(None)


def _try(session: RunSession, driver: Driver, description: str, checkout) -> Experiment:
    """Check, commit, run and decide the checkout's uncommitted change; the checkout ends clean or kept."""
    cfg, ws, tag = session.cfg, session.ws, session.tag
    parent = ws.tip()
    if Git(checkout)("rev-parse", "HEAD") != parent:
        raise WorkspaceError(f"the checkout's HEAD is not the tip of autoresearch/{tag}: run `git switch autoresearch/{tag}`")
    changed = [p for p in ws.changed_paths(checkout) if p not in STEERING_FILES]
    tracked = set(ws.dirty_tracked())
    changed = [p for p in changed if p in tracked or cfg.is_editable(p)]  # ignore the user's unrelated junk
    exp = session.new_experiment(parent, description, kind=Kind.CANDIDATE, proposal=Proposal(description), agent="tool",
                                 researcher="tool")
    session.control.note_steering()  # program.md / ideas.md changed since the last call: recorded
    refused = refused_kinds(checkout, changed)
    outside = [p for p in changed if not cfg.is_editable(p)]
    if outside or refused:
        exp.patch = Git(checkout)("diff", "HEAD", check=False)
        bad = sorted(set(outside) | {p for p, _ in refused})
        ws.restore(checkout, bad, parent)
        why = [f"{one_line(p)} is {what}" for p, what in refused] + \
            ([f"changed files outside `experiment.editable`: {', '.join(map(one_line, outside))}"] if outside else [])
        return session.finish_unrun(exp, Status.VIOLATION, f"{'; '.join(why)} (put back as they were)")
    if not changed:
        return session.finish_unrun(exp, Status.DISCARD, "no change to the editable files")
    try:
        exp.commit = ws.commit_files(parent, read_change(checkout, changed), session.commit_message(exp))
    except NothingChanged:
        return session.finish_unrun(exp, Status.DISCARD, "the change is empty once committed")
    except GitError as e:  # what the agent made can make git fail: recorded, the checkout put back
        ws.restore(checkout, changed, parent)
        Git(checkout)("reset", "-q", "--", *changed, check=False)
        return session.finish_unrun(exp, Status.CRASH, f"git could not commit the change: {one_line(e, REASON_CHARS)}")
    exp.patch = ws.diff(parent, exp.commit)
    session.ledger.begin(exp)
    ws.pin(exp.id, exp.commit)
    session.count += 1
    try:
        exp = driver.settle([exp])[0]  # keep: the branch advances to exp.commit, which the checkout already holds
    finally:
        if exp.status != Status.KEEP:
            ws.restore(checkout, changed, parent)
        Git(checkout)("reset", "-q", "--", *changed, check=False)  # the index follows HEAD (kept or not)
    return exp


def _verdict(session: RunSession, exp: Experiment) -> dict[str, Any]:
    inc = session.ledger.incumbent(session.tag)
    fig = figures.improvement(session.ledger, session.tag, figures.Spec.from_config(session.cfg))  # as `status` shows it
    return {
        "id": exp.id, "status": exp.status, "metric": exp.metric, "reason": exp.reason, "commit": exp.commit,
        "parent": exp.parent, "description": exp.description, "unverified": exp.unverified,
        "best_metric": fig.best_mean if fig.best_mean is not None else (inc.metric if inc else None),
        "best_runs": fig.best_runs, "improvement": fig.text(),
        "best_commit": inc.commit if inc else None, "log": exp.log_path,
        "log_tail": "\n".join(exp.log_tail.splitlines()[-20:]) if exp.status == Status.CRASH else "",
    }
