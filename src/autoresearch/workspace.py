"""The git side of a run: its branch, its worktrees, commits, and the ratchet's moves.

Guarantees:
- A run works on branch `autoresearch/<tag>` and in worktrees of its own under
  `.autoresearch/worktrees/<tag>/`, detached; the user's checkout is never touched.
- The branch only ever points at the incumbent (the latest kept commit). It is moved
  with compare-and-swap (`git update-ref <ref> <new> <old>`), never by a blind reset, so
  two writers can never silently overwrite each other.
- Every experiment's commit stays reachable under `refs/autoresearch/<tag>/<id>`, so its
  diff can always be shown, even after the branch went back to the parent.
- Each commit's tree is the parent's tree plus the editable files changed; nothing else.
- Plain subprocess around the `git` command line; each worktree has its own index, so
  concurrent workers never contend for `index.lock`.
- A worktree handed out by `worktree()` is exactly its commit: reset, then `git clean -ffdx`
  (ignored files and nested repositories too), every time, so nothing a run wrote (a saved
  model to warm-start from, a planted module) reaches the next run. `evaluation_worktree()`
  is a second such checkout per run worktree (`<name>-eval`): the evaluation never runs
  where the run ran.
- `rebase()` replays one experiment's change on a newer best (a cherry-pick in worktree
  "rebase", committed like any change) or names the conflicting files; `bundle()` packs a
  commit for a node with no shared filesystem under a temporary ref outside the pins.

Not covered: repositories with submodules inside the editable set.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional

from .errors import WorkspaceError

HARNESS_OUTPUTS = (".autoresearch/", "results.tsv", "progress.png", "report.md", "report.html",
                   # temp files of an atomic write interrupted by SIGKILL
                   ".results.tsv.*.tmp", ".progress.png.*.tmp", ".report.md.*.tmp", ".report.html.*.tmp")
CLEAN = ("-ffdxq",)  # ignored files (a saved model, a cache) and nested repositories go too
STEERING_FILES = ("program.md", "ideas.md")  # read live from the checkout; may be edited mid-run


class GitError(WorkspaceError):
    pass


_IDENTITY: dict[str, set[str]] = {}  # folder -> configured user.* keys


class Git:
    """Runs git in one directory."""

    def __init__(self, cwd: Path):
        self.cwd = Path(cwd)
        self.env = dict(os.environ)
        self.env.setdefault("GIT_TERMINAL_PROMPT", "0")
        # Commits must work on a machine with no git identity configured.
        for var, value in (("GIT_AUTHOR_NAME", "autoresearch"), ("GIT_AUTHOR_EMAIL", "autoresearch@localhost"),
                           ("GIT_COMMITTER_NAME", "autoresearch"), ("GIT_COMMITTER_EMAIL", "autoresearch@localhost")):
            if var not in self.env and ("user.email" if var.endswith("EMAIL") else "user.name") not in self._identity():
                self.env[var] = value

    def _identity(self) -> set[str]:
        """The user.* keys git has configured here; asked once per folder (a Git is made for every call site)."""
        key = str(self.cwd)
        if key not in _IDENTITY:
            r = subprocess.run(["git", "config", "--get-regexp", r"^user\.(name|email)$"], cwd=self.cwd,
                               capture_output=True, text=True)
            _IDENTITY[key] = {ln.split()[0] for ln in r.stdout.splitlines() if len(ln.split()) > 1}
        return _IDENTITY[key]

    def __call__(self, *args: str, input: Optional[str] = None, check: bool = True, strip: bool = True) -> str:
        r = subprocess.run(["git", *args], cwd=self.cwd, input=input, capture_output=True, text=True, env=self.env)
        if check and r.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed in {self.cwd}: {r.stderr.strip() or r.stdout.strip()}")
        return r.stdout.strip() if strip else r.stdout

    def ok(self, *args: str) -> bool:
        r = subprocess.run(["git", *args], cwd=self.cwd, capture_output=True, text=True, env=self.env)
        return r.returncode == 0


def find_root(start: Path) -> Path:
    r = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True)
    if r.returncode != 0:
        raise WorkspaceError(f"{start} is not in a git repository: run `git init` there (or `autoresearch init --here`)")
    return Path(r.stdout.strip())


def default_tag() -> str:
    return time.strftime("%b%d").lower()  # like the original: mar5, nov25


class Workspace:
    """The branch and worktrees of one tag in the repository at `root`."""

    def __init__(self, root: Path, tag: str):
        self.root = Path(root).resolve()  # the research project (may be a subfolder of the repository)
        self.tag = tag
        self.top = find_root(self.root).resolve()
        self.prefix = self.root.relative_to(self.top).as_posix() if self.root != self.top else ""
        self.git = Git(self.top)
        self.branch = f"autoresearch/{tag}"
        self.ref = f"refs/heads/{self.branch}"
        self.home = self.root / ".autoresearch"
        self.trees = self.home / "worktrees" / tag

    # -- setup ----------------------------------------------------------------------
    def prepare(self, *, allow_dirty: Iterable[str] = STEERING_FILES) -> bool:
        """Make sure the branch exists; returns True if it was created now (a fresh run)."""
        if not self.git.ok("rev-parse", "--verify", "HEAD"):
            raise WorkspaceError(f"{self.root} has no commit yet: commit your project files first (git add -A && git commit)")
        if not valid_tag(self.tag):
            raise WorkspaceError(f"tag {self.tag!r} is not a valid branch name part: use letters, digits, '-', '_'")
        self.ignore_outputs()
        dirty = [p for p in self.dirty_tracked() if p not in allow_dirty]
        if dirty:
            shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
            raise WorkspaceError(
                f"uncommitted changes to tracked files ({shown}): commit or stash them first, "
                "so the run starts from a known state"
            )
        if self.git.ok("rev-parse", "--verify", "--quiet", self.ref):
            return False
        self.git("update-ref", self.ref, self.git("rev-parse", "HEAD"), "")
        return True

    def ignore_outputs(self) -> None:
        """Keep the harness's files out of `git status` without touching tracked files."""
        exclude = Path(self.git("rev-parse", "--git-common-dir"))
        if not exclude.is_absolute():
            exclude = self.top / exclude
        exclude = exclude / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        have = exclude.read_text().splitlines() if exclude.exists() else []
        base = f"/{self.prefix}/" if self.prefix else "/"
        missing = [f"{base}{p}" for p in HARNESS_OUTPUTS if f"{base}{p}" not in have]
        if missing:
            with open(exclude, "a") as f:
                f.write("\n# autoresearch outputs\n" + "\n".join(missing) + "\n")

    def dirty_tracked(self) -> list[str]:
        out = self.git("status", "--porcelain", "--untracked-files=no", strip=False)
        return [self._rel(line[3:]) for line in out.splitlines() if line.strip()]

    def worktree(self, name: str, at: Optional[str] = None) -> Path:
        """A detached worktree of this tag, clean and at `at` (default: tip); returns the project folder in it."""
        path = self.trees / name
        sha = at or self.tip()
        if (path / ".git").exists():
            try:
                self._reset_top(path, sha)
                return path / self.prefix if self.prefix else path
            except GitError:  # a stale index.lock or a half-made checkout left by a killed harness
                self.git("worktree", "remove", "--force", str(path), check=False)
        # Our own scratch space (the caller holds the tag's lock): whatever is left there is rebuilt.
        shutil.rmtree(path, ignore_errors=True)
        self.trees.mkdir(parents=True, exist_ok=True)
        self.git("worktree", "prune")
        self.git("worktree", "add", "--force", "--detach", str(path), sha)
        return path / self.prefix if self.prefix else path

    def evaluation_worktree(self, wt: Path, sha: str) -> Path:
        """A fresh checkout of `sha` beside run worktree `wt` (named `<name>-eval`), for the evaluation:
        what git holds, nothing the run wrote; the run's own worktree is left as it is."""
        return self.worktree(f"{self.top_of(wt).name}-eval", at=sha)

    def top_of(self, wt: Path) -> Path:
        """The worktree's top folder for a project folder inside it."""
        return wt.parents[len(Path(self.prefix).parts) - 1] if self.prefix else wt

    _top_of = top_of

    def _full(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _rel(self, path: str) -> str:
        """Repository path -> project path ('../x' style for paths outside the project)."""
        if not self.prefix:
            return path
        if path.startswith(self.prefix + "/"):
            return path[len(self.prefix) + 1:]
        return "../" + path

    # -- reading --------------------------------------------------------------------
    def tip(self) -> str:
        return self.git("rev-parse", self.ref)

    def head_of(self, wt: Path) -> str:
        return Git(wt)("rev-parse", "HEAD")

    def exists(self, sha: str) -> bool:
        return self.git.ok("cat-file", "-e", f"{sha}^{{commit}}")

    def changed_paths(self, wt: Path) -> list[str]:
        """Tracked files modified or deleted, and untracked files not ignored, in `wt` (project paths)."""
        out = Git(self._top_of(wt))("status", "--porcelain", "--untracked-files=all", "-z", strip=False)
        paths = []
        entries = out.split("\0")
        i = 0
        while i < len(entries):
            e = entries[i]
            if not e:
                i += 1
                continue
            code, path = e[:2], e[3:]
            paths.append(path)
            if "R" in code or "C" in code:
                i += 1  # the rename's source follows
                paths.append(entries[i])
            i += 1
        return sorted({self._rel(p) for p in paths})

    def diff(self, a: Optional[str], b: str) -> str:
        if not a:
            return self.git("show", "--format=", b)
        return self.git("diff", a, b, "--", self.prefix or ".")

    def file_at(self, sha: str, path: str) -> Optional[str]:
        r = subprocess.run(["git", "show", f"{sha}:{self._full(path)}"], cwd=self.top, capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else None

    # -- writing --------------------------------------------------------------------
    def commit(self, wt: Path, paths: list[str], message: str, parent: str) -> str:
        """Commit `paths` of `wt` on top of `parent` (the worktree's HEAD moves; no branch does)."""
        g = Git(self._top_of(wt))
        g("add", "-A", "--", *[self._full(p) for p in paths])
        tree = g("write-tree")
        if tree == g("rev-parse", f"{parent}^{{tree}}"):
            raise NothingChanged("the change is empty once committed")
        sha = g("commit-tree", tree, "-p", parent, "-F", "-", input=message.strip() + "\n")
        g("update-ref", "--no-deref", "HEAD", sha)
        return sha

    def uncommit(self, wt: Path, base: str) -> None:
        """Turn commits made in `wt` since `base` (by an agent running git itself) back into plain changes."""
        g = Git(self._top_of(wt))
        if g("rev-parse", "HEAD") != base:
            g("reset", "-q", "--mixed", base)

    def advance(self, new: str, expected_old: str) -> None:
        """Move the branch from `expected_old` to `new` atomically, or raise if it moved meanwhile."""
        try:
            self.git("update-ref", self.ref, new, expected_old)
        except GitError as e:
            raise WorkspaceError(
                f"branch {self.branch} is no longer at {expected_old[:7]} (someone moved it): {e}"
            ) from None

    def clear_stale_locks(self) -> list[str]:
        """Remove the lock files a killed `git update-ref` left on this tag's refs; returns them.

        Only the holder of the tag's lock may call this: no one else writes these refs."""
        common = Path(self.git("rev-parse", "--git-common-dir"))
        common = common if common.is_absolute() else self.top / common
        candidates = [common / "refs" / "heads" / "autoresearch" / f"{self.tag}.lock"]
        pins = common / "refs" / "autoresearch" / self.tag
        if pins.is_dir():
            candidates += sorted(pins.glob("*.lock"))
        removed = []
        for lock in candidates:
            if lock.is_file():
                lock.unlink()
                removed.append(str(lock.relative_to(common)))
        return removed

    def pin(self, exp_id: int, sha: str) -> None:
        self.git("update-ref", f"refs/autoresearch/{self.tag}/{exp_id}", sha)

    def rebase(self, commit: str, onto: str, message: str) -> str:
        """The change `commit` made to its parent, cherry-picked onto `onto` as a new commit (in worktree
        "rebase"); raises RebaseConflict naming the files, or NothingChanged if `onto` already has it."""
        wt = self.worktree("rebase", at=onto)
        g = Git(self._top_of(wt))
        if not g.ok("cherry-pick", "--no-commit", commit):
            files = [self._rel(p) for p in g("diff", "--name-only", "--diff-filter=U", check=False).splitlines()]
            self.reset(wt, onto)  # also clears the cherry-pick state
            raise RebaseConflict(files or ["?"])
        return self.commit(wt, self.changed_paths(wt), message, onto)

    def bundle(self, commit: str, exclude: Optional[str] = None) -> bytes:
        """A git bundle of `commit` (and its history, less what `exclude` has): code for a node with no
        shared filesystem. Its one ref is `refs/autoresearch-bundle/<commit>`."""
        ref = f"refs/autoresearch-bundle/{commit}"  # outside refs/autoresearch/<tag>/: not a pin
        self.git("update-ref", ref, commit)
        try:
            args = ["git", "bundle", "create", "-", ref] + ([f"^{exclude}"] if exclude and exclude != commit else [])
            r = subprocess.run(args, cwd=self.top, capture_output=True, env=self.git.env)
            if r.returncode != 0:
                raise GitError(f"git bundle create failed in {self.top}: {r.stderr.decode(errors='replace').strip()}")
            return r.stdout
        finally:
            self.git("update-ref", "-d", ref, check=False)

    def reset(self, wt: Path, sha: str) -> None:
        """Make worktree `wt` exactly `sha` (detached): our own scratch space, not a branch."""
        self._reset_top(self._top_of(wt), sha)

    def _reset_top(self, top: Path, sha: str) -> None:
        g = Git(top)
        g("reset", "--hard", "-q", sha)
        g("clean", *CLEAN)

    def restore(self, wt: Path, paths: Iterable[str], sha: str) -> None:
        """Put `paths` back as they are in `sha` (deleting those that do not exist there)."""
        g = Git(self._top_of(wt))
        for p in paths:
            if g.ok("cat-file", "-e", f"{sha}:{self._full(p)}"):
                g("checkout", sha, "--", self._full(p))
            else:
                (wt / p).unlink(missing_ok=True)

    def digests(self, wt: Path, globs: list[str]) -> dict[str, str]:
        """sha256 of every file under `wt` matching `globs` (the protected set)."""
        from .config import _matches, tracked_or_present

        out = {}
        for rel in tracked_or_present(wt):
            if _matches(rel, globs):
                out[rel] = hashlib.sha256((wt / rel).read_bytes()).hexdigest()
        return out

    def remove_worktrees(self) -> None:
        for path in sorted(self.trees.glob("*")) if self.trees.exists() else []:
            self.git("worktree", "remove", "--force", str(path), check=False)
        self.git("worktree", "prune", check=False)


class NothingChanged(WorkspaceError):
    pass


class RebaseConflict(WorkspaceError):
    def __init__(self, files: list[str]):
        super().__init__(f"the change conflicts in {', '.join(files)}")
        self.files = files


def valid_tag(tag: str) -> bool:
    return bool(tag) and all(c.isalnum() or c in "-_." for c in tag) and not tag.startswith((".", "-"))
