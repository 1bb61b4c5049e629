"""Finalize a run: a clean branch with one commit per surviving improvement, and a PR summary.

Definitions:
- starting point: the commit of the tag's baseline row (the code before any experiment).
- best: the tag's incumbent (its latest keep), which `autoresearch/<tag>` points at.
- A kept change k (status `keep`, not the baseline) is *undone* when its patch no longer
  contributes to best's tree, which is decided with git alone:
  (a) k's commit is not an ancestor of best: the branch was moved back past it (e.g. a keep
      superseded when a re-measurement moved the incumbent back to an earlier commit); or
  (b) reverting k's own diff (k.parent -> k.commit) on best merges cleanly and leaves best's
      tree unchanged: later keeps already reverted it. A revert that conflicts means k's lines
      are still there, changed further, so k survives.
- The survivors are cherry-picked onto the starting point in ledger order, one commit each.
  If one no longer applies because it was built on an undone change, that change is taken
  back in (it does contribute, through the later one) and the replay starts again.

Guarantees:
- The new branch's tip has exactly best's tree; this is checked before the branch is made
  (if the lean replay cannot reach it, every ancestor keep is kept instead, which always can).
- Nothing else changes: autoresearch/<tag>, the user's checkout and the ledger stay as they
  are. The work happens in a temporary worktree that is removed afterwards. An existing
  branch of the same name is refused unless `force`.
- A tag whose ledger record fails its seal chain (edited outside autoresearch) is refused,
  naming the rows (ledger.py): a branch made of forged keeps would look like any other.
- Each commit message carries the description, the metric with its delta against the
  incumbent it beat and against the baseline, the policy's evidence, and the experiment's id
  and original commit; its author date is when the experiment ended.
- Kept changes measured while a protection was off (their row's `unverified`) are said to
  be unverified, in their commit message and in the summary ("N of the kept changes ...").
- The Markdown summary (for a pull request) is returned and written to
  `.autoresearch/finalize/<tag>.md` unless another path is given. Its headline is the
  improvement figure of figures.py (`confirm`'s when it ran), as `status` prints it.
- An improvement that `autoresearch confirm` refuted (its fresh runs' interval includes no
  improvement) is never claimed: finalize refuses, and with `force` it makes the branch with a
  summary that says, first, that the improvement was refuted.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from . import figures
from .errors import AutoresearchError
from .layout import Layout
from .ledger import Experiment, Ledger
from .policy import resolve
from .states import Kind, Status
from .workspace import Git, Workspace, run_git


class FinalizeError(AutoresearchError):
    pass


@dataclass
class Finalized:
    tag: str
    branch: str
    base: Experiment
    best: Experiment
    tip: str
    commits: list[tuple[Experiment, str]] = field(default_factory=list)  # (experiment, its new commit)
    dropped: list[tuple[Experiment, str]] = field(default_factory=list)  # (experiment, why)
    summary: str = ""
    summary_path: Optional[Path] = None

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.tag, "branch": self.branch, "base": self.base.commit, "best": self.best.commit,
                "tip": self.tip, "summary_path": str(self.summary_path) if self.summary_path else None,
                "commits": [{"id": e.id, "original": e.commit, "commit": sha, "description": e.description,
                             "metric": e.metric} for e, sha in self.commits],
                "dropped": [{"id": e.id, "commit": e.commit, "why": why} for e, why in self.dropped]}


def finalize(root: Path, tag: str, ledger: Ledger, *, branch: Optional[str] = None,
             summary_path: Optional[Path] = None, force: bool = False) -> Finalized:
    ledger.require_intact(tag)  # a branch made of forged keeps would look like any other
    rows = ledger.experiments(tag)
    base = next((e for e in rows if e.kind == Kind.BASELINE and e.status == Status.KEEP and e.commit), None)
    best = ledger.incumbent(tag)
    if base is None or best is None:
        raise FinalizeError(f"tag `{tag}` has no measured baseline: run `autoresearch run --tag {tag}` first")
    kept, seen = [], {base.commit}
    for e in rows:  # a commit kept twice (e.g. re-measured) is one change, made by its first keep
        if e.status == Status.KEEP and e.kind != Kind.BASELINE and e.commit and e.commit not in seen:
            kept.append(e)
            seen.add(e.commit)
    if not kept:
        raise FinalizeError(f"nothing to finalize on `{tag}`: no change was kept yet (see `autoresearch status`)")
    ws = Workspace(root, tag)
    branch = branch or f"autoresearch/{tag}-final"
    if not ws.git.ok("check-ref-format", "--branch", branch) or branch == ws.branch:
        raise FinalizeError(f"`{branch}` cannot be the finalized branch: pick another name with --branch")
    if ws.git.ok("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}") and not force:
        raise FinalizeError(f"branch {branch} already exists: pass --branch NAME, or --force to replace it")
    meta = _run_meta(ledger, tag)
    meta["figure"] = fig = figures.improvement(ledger, tag, figures.Spec.from_snapshot(meta["config"]), rows)
    if fig.refuted and not force:
        raise FinalizeError(f"`autoresearch confirm` refuted the improvement of #{best.id}: {fig.text()}. No branch "
                            "was made; pass --force to make it anyway (its summary then says the improvement was "
                            "refuted), or keep the loop running")
    tmp = Path(tempfile.mkdtemp(prefix="autoresearch-finalize-"))
    wt = tmp / "wt"
    ws.git("worktree", "add", "--detach", str(wt), best.commit)
    try:
        g = Git(wt)
        dropped = {e.id: why for e in kept if (why := _undone(ws, g, e, best))}
        survivors = [e for e in kept if e.id not in dropped]
        commits = _replay(g, base, survivors, kept, dropped, rows, meta, tag)
        tip = commits[-1][1] if commits else base.commit
        if _tree(g, tip) != _tree(g, best.commit):  # lean replay fell short: keep every ancestor keep
            dropped = {i: why for i, why in dropped.items() if why.startswith("not on")}
            survivors = [e for e in kept if e.id not in dropped]
            commits = _replay(g, base, survivors, kept, dropped, rows, meta, tag)
            tip = commits[-1][1] if commits else base.commit
        if _tree(g, tip) != _tree(g, best.commit):
            raise FinalizeError(f"replaying the kept changes did not reproduce {best.commit[:7]}'s tree "
                                "(a harness bug): no branch was made")
    finally:
        ws.git("worktree", "remove", "--force", str(wt), check=False)
        ws.git("worktree", "prune", check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    ws.git("update-ref", f"refs/heads/{branch}", tip, *([] if force else [""]))
    out = Finalized(tag, branch, base, best, tip, commits,
                    [(e, dropped[e.id]) for e in kept if e.id in dropped])
    out.summary = pr_summary(out, rows, meta)
    out.summary_path = Path(summary_path) if summary_path else Layout(root).summary(tag)
    out.summary_path.parent.mkdir(parents=True, exist_ok=True)
    out.summary_path.write_text(out.summary, encoding="utf-8")
    return out


# -- which keeps survive ------------------------------------------------------------------------
def _undone(ws: Workspace, g: Git, e: Experiment, best: Experiment) -> str:
    """Why `e` no longer contributes to best's tree, or "" if it does."""
    if not ws.git.ok("merge-base", "--is-ancestor", e.commit, best.commit):
        return "not on the best commit's history: the branch was moved back past it"
    g("reset", "-q", "--hard", best.commit)
    reverted = g.ok("revert", "--no-commit", e.commit)
    unchanged = reverted and g.ok("diff", "--cached", "--quiet", best.commit)
    g("revert", "--quit", check=False)
    g("reset", "-q", "--hard", best.commit)
    return "undone by later kept changes: its patch no longer contributes to the best commit" if unchanged else ""


def _replay(g: Git, base: Experiment, survivors: list[Experiment], kept: list[Experiment],
            dropped: dict[int, str], rows: list[Experiment], meta: dict[str, Any],
            tag: str) -> list[tuple[Experiment, str]]:
    """Cherry-pick `survivors` onto the starting point; takes undone keeps back in where they are needed."""
    survivors = list(survivors)
    while True:
        g("reset", "-q", "--hard", base.commit)
        tip, commits, failed = base.commit, [], None
        for e in survivors:
            if not g.ok("cherry-pick", "--no-commit", e.commit):
                failed = e
                break
            tree = g("write-tree")
            if tree == _tree(g, tip):
                continue  # nothing left of it here: only possible when it re-did an undone change
            env = {"GIT_AUTHOR_DATE": f"@{int(e.ended_at or e.started_at or time.time())} +0000"}
            tip = _commit_tree(g, tree, tip, commit_message(e, rows, meta, tag), env)
            g("reset", "-q", "--soft", tip)
            commits.append((e, tip))
        g("cherry-pick", "--quit", check=False)
        if failed is None:
            return commits
        g("reset", "-q", "--hard", base.commit)
        taken = {k.id for k in survivors}
        needed = [k for k in kept if k.id in dropped and k.id < failed.id and not dropped[k.id].startswith("not on")
                  and k.id not in taken]
        if not needed:  # cannot happen for ancestor keeps replayed whole; let the caller's check decide
            return commits
        survivors = sorted(survivors + [needed[-1]], key=lambda k: k.id)
        dropped.pop(needed[-1].id)


def _tree(g: Git, commit: str) -> str:
    return g("rev-parse", f"{commit}^{{tree}}")


def _commit_tree(g: Git, tree: str, parent: str, message: str, env: dict[str, str]) -> str:
    r = run_git(["commit-tree", tree, "-p", parent, "-F", "-"], g.cwd, input=message, capture_output=True,
                text=True, env=g.env | env)
    if r.returncode != 0:
        raise FinalizeError(f"git commit-tree failed: {r.stderr.strip()}")
    return r.stdout.strip()


# -- words ----------------------------------------------------------------------------------------
def _run_meta(ledger: Ledger, tag: str) -> dict[str, Any]:
    """The metric, direction, policy and run command the run used (its stored config)."""
    sessions = ledger.sessions(tag)
    cfg = sessions[-1]["config"] if sessions else {}
    metric, policy = cfg.get("metric", {}), cfg.get("policy", {})
    policy_name = resolve(SimpleNamespace(policy=SimpleNamespace(**policy))) if "name" in policy else "?"
    return {"metric": metric.get("name", "metric"), "lower": metric.get("direction", "min") == "min",
            "policy": policy_name, "run": cfg.get("experiment", {}).get("run", ""),
            "budget_s": cfg.get("experiment", {}).get("budget_s"), "command": metric.get("command") or "",
            "config": cfg}


def _beaten(e: Experiment, rows: list[Experiment]) -> Optional[Experiment]:
    """The incumbent `e` was compared with: the keep whose commit is e's parent."""
    return next((k for k in reversed(rows) if k.status == Status.KEEP and k.commit == e.parent and k.id < e.id), None)


def _num(v: Optional[float]) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.6g}"


def _signed(v: float) -> str:
    return f"{v:+.6g}"


def deltas(e: Experiment, rows: list[Experiment]) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """(delta vs the incumbent it beat, delta vs the baseline, percent vs the baseline)."""
    base = next((k for k in rows if k.kind == Kind.BASELINE and k.metric is not None), None)
    prev = _beaten(e, rows)
    d_prev = e.metric - prev.metric if e.metric is not None and prev and prev.metric is not None else None
    d_base = e.metric - base.metric if e.metric is not None and base and base.metric is not None else None
    pct = d_base / abs(base.metric) * 100 if d_base is not None and base.metric else None
    return d_prev, d_base, pct


def commit_message(e: Experiment, rows: list[Experiment], meta: dict[str, Any], tag: str) -> str:
    d_prev, d_base, pct = deltas(e, rows)
    prev = _beaten(e, rows)
    line = f"{meta['metric']} {_num(e.metric)}"
    if d_prev is not None:
        line += f" ({_signed(d_prev)} vs #{prev.id}, the incumbent it beat"
        line += f"; {_signed(d_base)}, {pct:+.2f}% vs the baseline)" if d_base is not None and pct is not None else ")"
    body = [e.description.strip() or f"experiment #{e.id}", "", line]
    if e.evidence:
        body.append(f"evidence ({meta['policy']}): {figures.evidence_text(e.evidence, _fmt(meta))}")
    if e.unverified:
        body.append(f"unverified: {e.unverified}")
    body.append(f"autoresearch: experiment #{e.id} on autoresearch/{tag}, originally {e.commit}")
    return "\n".join(body) + "\n"


def _fmt(meta: dict[str, Any]) -> Any:
    fig = meta.get("figure")
    return fig.fmt if fig is not None else figures.Format()


def pr_summary(f: Finalized, rows: list[Experiment], meta: dict[str, Any]) -> str:
    name, lower = meta["metric"], meta["lower"]
    fig: Optional[figures.Figure] = meta.get("figure")
    g = _fmt(meta)
    if fig is not None and fig.refuted:
        head = (f"## autoresearch/{f.tag}: no confirmed improvement of {name} — `autoresearch confirm` refuted it "
                "(finalized with --force)")
    else:
        base_m, best_m = (fig.base_mean, fig.best_mean) if fig is not None else (f.base.metric, f.best.metric)
        head = f"## autoresearch/{f.tag}: {name} {g(base_m)} → {g(best_m)}"
        if base_m is not None and best_m is not None and base_m:
            head += f" ({(best_m - base_m) / abs(base_m) * 100:+.2f}%, {'lower' if lower else 'higher'} is better)"
    if fig is not None:
        head += f"\n\n{'**Refuted.** ' if fig.refuted else ''}Improvement: {fig.text()}"
    counts: dict[str, int] = {}
    for e in rows:
        counts[e.status] = counts.get(e.status, 0) + 1
    budget = f" under a fixed budget of {meta['budget_s']:g}s each" if meta.get("budget_s") else ""
    tally = ", ".join(f"{k} {v}" for k, v in counts.items())
    kept = (f"{len(f.commits)} change(s) the loop kept, from {len(rows)} experiments ({tally}),"
            if fig is not None and fig.refuted else f"{len(f.commits)} improvement(s) from {len(rows)} experiments "
                                                     f"({tally}),")
    out = [head, "",
           f"{kept} measured{budget} and kept by the `{meta['policy']}` policy. One commit per change, in the order they"
           f" were found, on top of the starting point `{f.base.commit[:7]}`."
           + (" The figures below are the loop's runs, which `confirm`'s fresh runs did not bear out."
              if fig is not None and fig.refuted else ""), "",
           f"| # | change | {name} | Δ vs incumbent | Δ vs baseline | evidence | commit |",
           "|---:|---|---:|---:|---:|---|---|"]
    for e, sha in f.commits:  # numbered by ledger id, as `results`, `diff N` and the reports number them
        d_prev, d_base, pct = deltas(e, rows)
        vs_base = f"{_signed(d_base)} ({pct:+.2f}%)" if d_base is not None and pct is not None else "-"
        vs_prev = _signed(d_prev) if d_prev is not None else "-"
        out.append(f"| {e.id} | {_cell(e.description)} | {_num(e.metric)} | {vs_prev} | {vs_base}"
                   f" | {_cell(figures.evidence_text(e.evidence, g)) or '-'} | `{sha[:7]}` (was `{e.short}`) |")
    unverified = [e for e, _ in f.commits if e.unverified]
    if unverified:
        why = "; ".join(sorted({e.unverified for e in unverified}))
        out += ["", f"**{len(unverified)} of the kept changes were measured without the sandbox: unverified** ({why}; "
                    f"experiments {', '.join(f'#{e.id}' for e in unverified)}). A run could have tampered with its own "
                    "result: re-measure them with the sandbox on (`autoresearch confirm`) before trusting them."]
    if f.dropped:
        out += ["", "Kept during the run but left out, because they do not contribute to the best code:"]
        out += [f"- #{e.id} {_cell(e.description)} — {why}" for e, why in f.dropped]
    wall = sum(e.wall_s for e in rows if e.wall_s is not None)
    cost = sum(e.cost_usd or 0.0 for e in rows)
    tokens = sum((e.tokens_in or 0) + (e.tokens_out or 0) for e in rows)
    starts = [e.started_at for e in rows if e.started_at]
    elapsed = max(e.ended_at or e.started_at for e in rows if e.started_at) - min(starts) if starts else 0.0
    out += ["", f"Elapsed {figures.duration(elapsed)}, of which the experiments' own runs {figures.duration(wall)}; "
                f"agent cost ${cost:.2f} ({tokens:,} tokens).",
            f"The tip of `{f.branch}` has exactly the tree of the best commit `{f.best.commit[:7]}` "
            f"(autoresearch/{f.tag}, #{f.best.id})."]
    if meta.get("run") and meta.get("command"):  # the metric comes from the protected evaluation
        out.append(f"Reproduce: `git checkout {f.branch} && {meta['run']} && {meta['command']}` (the evaluation "
                   f"command prints `{name}`).")
    elif meta.get("run"):
        out.append(f"Reproduce: `git checkout {f.branch} && {meta['run']}` (prints `{name}`).")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")

