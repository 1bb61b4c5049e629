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

from .agents.base import Proposal
from .clean import REASON_CHARS, one_line
from .config import Config
from .errors import WorkspaceError
from .ledger import Experiment
from .loop import Loop
from .proposal import read_change, refused_kinds
from .session import TagLock
from .workspace import STEERING_FILES, Git, GitError, NothingChanged, default_tag


class _HandAgent:
    name = "tool"

    def propose(self, ctx, workdir):  # pragma: no cover - never called: the change is already made
        raise AssertionError("tool mode takes the change from the checkout")


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
    loop = Loop(cfg, tag, _HandAgent(), reporter=reporter)  # type: ignore[arg-type]
    ws = loop.ws
    checkout = cfg.root
    with TagLock(cfg.root, tag):
        ws.ignore_outputs()
        loop.session = loop.ledger.start_session(tag, cfg.snapshot(), note="tool mode")
        from .session import reconcile

        reconcile(loop.ledger, ws, cfg.metric.name, loop.tsv)
        loop.start_commit = ws.tip()
        loop.digests = ws.digests(ws.worktree("run0", at=loop.start_commit), cfg.experiment.protected)
        if loop.ledger.incumbent(tag) is None:
            base = loop.baseline()
            if base.status != "keep":
                return _verdict(loop, base)
        parent = ws.tip()
        if Git(checkout)("rev-parse", "HEAD") != parent:
            raise WorkspaceError(f"the checkout's HEAD is not the tip of autoresearch/{tag}: run `git switch autoresearch/{tag}`")
        changed = [p for p in ws.changed_paths(checkout) if p not in STEERING_FILES]
        tracked = set(ws.dirty_tracked())
        changed = [p for p in changed if p in tracked or cfg.is_editable(p)]  # ignore the user's unrelated junk
        exp = loop.new_experiment(parent, description, kind="candidate", proposal=Proposal(description))
        exp.agent = "tool"
        loop.control.note_steering()  # program.md / ideas.md changed since the last call: recorded
        refused = refused_kinds(checkout, changed)
        outside = [p for p in changed if not cfg.is_editable(p)]
        if outside or refused:
            exp.patch = Git(checkout)("diff", "HEAD", check=False)
            bad = sorted(set(outside) | {p for p, _ in refused})
            ws.restore(checkout, bad, parent)
            why = [f"{one_line(p)} is {what}" for p, what in refused] + \
                ([f"changed files outside `experiment.editable`: {', '.join(map(one_line, outside))}"] if outside else [])
            return _verdict(loop, loop.finish_unrun(exp, "violation", f"{'; '.join(why)} (put back as they were)"))
        if not changed:
            return _verdict(loop, loop.finish_unrun(exp, "discard", "no change to the editable files"))
        try:
            exp.commit = ws.commit_files(parent, read_change(checkout, changed), loop.commit_message(exp))
        except NothingChanged:
            return _verdict(loop, loop.finish_unrun(exp, "discard", "the change is empty once committed"))
        except GitError as e:  # what the agent made can make git fail: recorded, the checkout put back
            ws.restore(checkout, changed, parent)
            Git(checkout)("reset", "-q", "--", *changed, check=False)
            return _verdict(loop, loop.finish_unrun(exp, "crash", f"git could not commit the change: "
                                                                  f"{one_line(e, REASON_CHARS)}"))
        exp.patch = ws.diff(parent, exp.commit)
        loop.ledger.begin(exp)
        ws.pin(exp.id, exp.commit)
        try:
            exp = loop.trial(exp)  # keep: the branch advances to exp.commit, which the checkout already holds
        finally:
            if exp.status != "keep":
                ws.restore(checkout, changed, parent)
            Git(checkout)("reset", "-q", "--", *changed, check=False)  # the index follows HEAD (kept or not)
            loop.ledger.end_session(loop.session)
        return _verdict(loop, exp)


def _verdict(loop: Loop, exp: Experiment) -> dict[str, Any]:
    from . import figures

    inc = loop.ledger.incumbent(loop.tag)
    fig = figures.improvement(loop.ledger, loop.tag, figures.Spec.from_config(loop.cfg))  # as `status` shows it
    return {
        "id": exp.id, "status": exp.status, "metric": exp.metric, "reason": exp.reason, "commit": exp.commit,
        "parent": exp.parent, "description": exp.description, "unverified": exp.unverified,
        "best_metric": fig.best_mean if fig.best_mean is not None else (inc.metric if inc else None),
        "best_runs": fig.best_runs, "improvement": fig.text(),
        "best_commit": inc.commit if inc else None, "log": exp.log_path,
        "log_tail": "\n".join(exp.log_tail.splitlines()[-20:]) if exp.status == "crash" else "",
    }
