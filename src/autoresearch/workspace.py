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
  `commit_files()` builds it from bytes the harness read (blobs by `hash-object --no-filters`,
  a temporary index, `commit-tree`): no git command runs in a folder an agent wrote.
- Plain subprocess around the `git` command line; each worktree has its own index, so
  concurrent workers never contend for `index.lock`.
- Git that runs nobody's code: every harness git command is built by `git_command()` (run by
  `run_git()` and `Git`; nothing else in the package runs git). It reads no system or global
  config, and switches off hooks, fsmonitor, filter and merge drivers, textconv and external
  diffs, pager, editor, gpg and credential prompts, so what an agent writes into `.git/config`,
  `.git/hooks` or `.git/info/attributes` (or what `~/.gitconfig` names) never runs inside the
  harness. The user's identity, safe.directory entries and init.defaultBranch are passed on.
- A worktree handed out by `worktree()` is exactly its commit: its `.git` file written afresh
  from the repository's side (a run can write it, and pointed elsewhere the reset would miss its
  folder), reset, then `git clean -ffdx` (ignored files and nested repositories too), every time,
  so nothing a run wrote (a saved model to warm-start from, a planted module) reaches the next run. `evaluation_worktree()`
  is a second such checkout per run worktree (`<name>-eval`): the evaluation never runs
  where the run ran.
- `rebase()` replays one experiment's change on a newer best (a cherry-pick in worktree
  "rebase", committed like any change) or names the conflicting files; `bundle()` packs a
  commit for a node with no shared filesystem under a temporary ref outside the pins.

Not covered: repositories with submodules inside the editable set. Git LFS: the lfs filter
never runs, so LFS files are pointers in the harness's worktrees. The drivers to switch off are
read from `.git/config` just before each command: a driver added in the microseconds between that
read and git's own is not switched off (the state guard reports the change afterwards).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from .errors import WorkspaceError
from .globs import matches
from .layout import HOME, Layout

HARNESS_OUTPUTS = (f"{HOME}/", "results.tsv", "progress.png", "report.md", "report.html",
                   # temp files of an atomic write interrupted by SIGKILL
                   ".results.tsv.*.tmp", ".progress.png.*.tmp", ".report.md.*.tmp", ".report.html.*.tmp")
CLEAN = ("-ffdxq",)  # ignored files (a saved model, a cache) and nested repositories go too
STEERING_FILES = ("program.md", "ideas.md")  # read live from the checkout; may be edited mid-run


WALK_MAX_DEPTH = 64  # folders below the project: a run can nest thousands (free), paths outgrow PATH_MAX


def tracked_or_present(root: Path) -> list[str]:
    """Project files as relative posix paths (skipping .git and the harness's own folder), never
    through a link to a folder, at most WALK_MAX_DEPTH folders down. Walked with a stack: a run can
    nest folders thousands deep, and os.walk (recursive on 3.11) raised RecursionError."""
    out = []
    stack = [(Path(root), 0)]
    while stack:
        here, depth = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue
        for entry in entries:
            try:
                is_dir, is_link = entry.is_dir(), entry.is_symlink()
            except OSError:
                continue
            if is_dir:  # a link to a folder is neither walked nor a file (as os.walk had it)
                if not is_link and depth < WALK_MAX_DEPTH and entry.name not in (".git", HOME, "__pycache__", ".venv",
                                                                 "node_modules"):
                    stack.append((Path(entry.path), depth + 1))
            else:
                out.append(Path(entry.path).relative_to(root).as_posix())
    return sorted(out)


class GitError(WorkspaceError):
    pass


# -- git that runs nobody's code ------------------------------------------------------------
HARDENED = True  # tests switch this off for the control of the attacks it stops

# Settings every harness git command runs with. `-c` is the command-line scope: it beats the
# repository's .git/config (which an unsandboxed agent can write), and git hands it on to the git
# processes it starts itself (GIT_CONFIG_PARAMETERS).
_SAFE_CONFIG = (
    "core.hooksPath=/dev/null",  # no hook runs: git finds no /dev/null/<hook>
    "core.fsmonitor=false", "core.untrackedCache=false",  # no fsmonitor program
    "core.pager=cat", "core.editor=:", "sequence.editor=:", "core.askPass=", "credential.helper=",
    "commit.gpgSign=false", "tag.gpgSign=false", "log.showSignature=false",  # no gpg
    "color.ui=never", "gc.auto=0", "maintenance.auto=false",
    "core.alternateRefsCommand=",  # `launch --pull` fetches: no program for an alternate's refs (runs `sh -c ''`)
)
REPOINT_WORKTREES = True  # tests switch this off for the control of the redirected `.git` file
_DIFFERS = ("diff", "show", "log", "format-patch")  # commands that make diffs: no external diff, no textconv
# What a repository's own config may name as a program, per driver; each found is switched off.
_DRIVER_OFF = {"filter": ("clean=", "smudge=", "process=", "required=false"),
               # the built-in text merge, as a driver line (a merge driver must name a program)
               "merge": ("driver=git merge-file --marker-size=%L %A %O %B",)}
_DRIVERS: dict[str, tuple[tuple, list[str]]] = {}  # config files -> (their stat, the -c overrides they need)
_USER: dict[str, dict[str, list[str]]] = {}  # folder -> the user's identity and safe.directory values


def git_env(base: Optional[dict] = None) -> dict[str, str]:
    """The environment of every harness git command: no system or global config (the user's
    `~/.gitconfig` may name hooks, filters or an fsmonitor; what the harness needs of it is passed
    explicitly), no prompts, no pager, no editor."""
    env = dict(os.environ if base is None else base)
    if not HARDENED:
        env.setdefault("GIT_TERMINAL_PROMPT", "0")
        return env
    for var in ("GIT_EXTERNAL_DIFF", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_PROXY_COMMAND"):
        env.pop(var, None)
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="",
               SSH_ASKPASS="", GIT_PAGER="cat", GIT_EDITOR=":", GIT_SEQUENCE_EDITOR=":")
    return env


def git_command(args: Iterable[str], cwd: Path) -> list[str]:
    """The argv of a harness git command run in `cwd`: `git`, the safe settings (above), the
    repository's filter and merge drivers switched off, the user's safe.directory entries, and
    `--no-ext-diff --no-textconv` for commands that make diffs."""
    args = list(args)
    if not HARDENED:
        return ["git", *args]
    flags = [f for c in _SAFE_CONFIG for f in ("-c", c)]
    for value in _user_config(cwd)["safe.directory"]:
        flags += ["-c", f"safe.directory={value}"]
    if args and args[0] == "init" and _user_config(cwd)["init.defaultbranch"]:
        flags += ["-c", f"init.defaultBranch={_user_config(cwd)['init.defaultbranch'][-1]}"]
    for c in _driver_overrides(cwd):
        flags += ["-c", c]
    if args and args[0] in _DIFFERS:
        args = [args[0], "--no-ext-diff", "--no-textconv", *args[1:]]
    return ["git", *flags, *args]


def _user_config(cwd: Path) -> dict[str, list[str]]:
    """The user's identity (as git sees it in `cwd`), and the safe.directory entries and
    init.defaultBranch of their global and system config (never the repository's: git ignores
    safe.directory there, and so do we). Reading
    config runs no program; asked once per folder."""
    key = str(cwd)
    if key not in _USER:
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
        out: dict[str, list[str]] = {"user.name": [], "user.email": [], "safe.directory": [], "init.defaultbranch": []}
        for scope, pattern in (([], r"^user\.(name|email)$"), (["--system"], r"^(safe\.directory|init\.defaultbranch)$"),
                               (["--global"], r"^(safe\.directory|init\.defaultbranch)$")):
            r = subprocess.run(["git", "config", *scope, "--null", "--get-regexp", pattern], cwd=cwd,
                               capture_output=True, text=True, env=env)
            for entry in r.stdout.split("\0"):
                name, _, value = entry.partition("\n")
                if name.lower() in out:
                    out[name.lower()].append(value)
        _USER[key] = out
    return _USER[key]


def _driver_overrides(cwd: Path) -> list[str]:
    """`-c` settings that switch off every filter and merge driver the repository's config names.

    Re-read whenever the repository's config files (the common `config`, and the worktree's
    `config.worktree`) change: a stat each per call. A config that includes other files is re-read
    every time, since an included file may change unseen."""
    files = _config_files(cwd)
    key = tuple(_stat(f) for f in files)
    cached = _DRIVERS.get(str(files)) if files else None
    if cached is not None and cached[0] == key:
        return cached[1]
    r = subprocess.run(["git", "config", "--null", "--name-only", "--get-regexp", r"^(filter|merge|include|includeif)\."],
                       cwd=cwd, capture_output=True, text=True, env=git_env())
    names = [n for n in r.stdout.split("\0") if n]
    out: list[str] = []
    for section, offs in _DRIVER_OFF.items():
        drivers = sorted({n.split(".", 1)[1].rsplit(".", 1)[0] for n in names
                          if n.lower().startswith(section + ".") and n.count(".") >= 2})
        out += [f"{section}.{d}.{off}" for d in drivers for off in offs]
    if files and not any(n.lower().startswith("include") for n in names):
        _DRIVERS[str(files)] = (key, out)
    return out


def _config_files(cwd: Path) -> list[Path]:
    """The config files of the repository `cwd` is in, found without running git: the common
    directory's `config` and `config.worktree`, and this worktree's own `config.worktree`."""
    for d in (Path(cwd), *Path(cwd).parents):
        dot = d / ".git"
        if dot.is_dir():
            gitdir = dot
        elif dot.is_file():
            text = dot.read_text(errors="replace").strip()
            if not text.startswith("gitdir:"):
                return []
            gitdir = (d / text[len("gitdir:"):].strip()).resolve()
        else:
            continue
        common = gitdir
        if (gitdir / "commondir").is_file():
            common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
        return [common / "config", common / "config.worktree", gitdir / "config.worktree"]
    return []


def _stat(path: Path) -> Optional[tuple]:
    try:
        st = path.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
    except OSError:
        return None


def run_git(args: Iterable[str], cwd: Path, *, env: Optional[dict] = None, **kw) -> subprocess.CompletedProcess:
    """subprocess.run of a harness git command (see git_command); `kw` as for subprocess.run."""
    return subprocess.run(git_command(args, Path(cwd)), cwd=cwd, env=env if env is not None else git_env(), **kw)


class Git:
    """Runs git in one directory (hardened: see git_command)."""

    def __init__(self, cwd: Path):
        self.cwd = Path(cwd)
        self.env = git_env()
        # Commits must work on a machine with no git identity configured; the user's identity is read
        # from their config and passed on, since the harness's git commands do not read ~/.gitconfig.
        user = _user_config(self.cwd)
        for var, key, value in (("GIT_AUTHOR_NAME", "user.name", "autoresearch"),
                                ("GIT_AUTHOR_EMAIL", "user.email", "autoresearch@localhost"),
                                ("GIT_COMMITTER_NAME", "user.name", "autoresearch"),
                                ("GIT_COMMITTER_EMAIL", "user.email", "autoresearch@localhost")):
            if var not in self.env:
                self.env[var] = user[key][-1] if user[key] else value

    def __call__(self, *args: str, input: Optional[str] = None, check: bool = True, strip: bool = True) -> str:
        r = run_git(args, self.cwd, input=input, capture_output=True, text=True, env=self.env)
        if check and r.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed in {self.cwd}: {r.stderr.strip() or r.stdout.strip()}")
        return r.stdout.strip() if strip else r.stdout

    def ok(self, *args: str) -> bool:
        return run_git(args, self.cwd, capture_output=True, text=True, env=self.env).returncode == 0


def find_root(start: Path) -> Path:
    r = run_git(["rev-parse", "--show-toplevel"], start, capture_output=True, text=True)
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
        self.layout = Layout(self.root)
        self.home = self.layout.home
        self.trees = self.layout.worktrees(tag)
        self.refs_lock = threading.RLock()
        self._known: Optional[dict[str, str]] = None  # the tag's refs as the harness set them: see watch()
        self._found: list[str] = []  # refs its own moves found moved by someone else, not yet reported

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
        return [self.project_path(line[3:]) for line in out.splitlines() if line.strip()]

    def worktree(self, name: str, at: Optional[str] = None) -> Path:
        """A detached worktree of this tag, clean and at `at` (default: tip); returns the project folder in it."""
        path = self.trees / name
        sha = at or self.tip()
        if (path / ".git").exists() or (path / ".git").is_symlink():
            try:
                if REPOINT_WORKTREES:
                    self._repoint(path)
                self._reset_top(path, sha)
                return path / self.prefix if self.prefix else path
            except GitError:  # a stale index.lock or a half-made checkout left by a killed harness
                self.git("worktree", "remove", "--force", str(path), check=False)
        # Our own scratch space (the caller holds the tag's lock): whatever is left there is rebuilt.
        remove_tree(path)
        self.trees.mkdir(parents=True, exist_ok=True)
        self.git("worktree", "prune")
        self.git("worktree", "add", "--force", "--detach", str(path), sha)
        return path / self.prefix if self.prefix else path

    def _repoint(self, path: Path) -> None:
        """Write worktree `path`'s `.git` file afresh, naming its own entry in the repository's git directory.

        A run can write everything in its worktree, that file included: pointed at a git directory of
        the run's making (its `core.worktree` elsewhere, the real objects as alternates), the reset and
        clean below would happen in another folder and leave the run's files (a model to warm-start
        from, code that was never committed) for the next run. The entry is found from the repository's
        side (`worktrees/*/gitdir`, out of every run's reach); none found is a GitError (rebuilt)."""
        common = Path(self.git("rev-parse", "--git-common-dir"))
        common = common if common.is_absolute() else (self.top / common).resolve()
        dot = path / ".git"
        for admin in sorted((common / "worktrees").glob("*")):
            try:
                named = Path((admin / "gitdir").read_text().strip())
            except OSError:
                continue
            if named.name == ".git" and named.parent.resolve() == path.resolve():  # never through a planted link
                remove_tree(dot)
                dot.write_text(f"gitdir: {admin}\n")
                return
        raise GitError(f"{path} is not a worktree of this repository any more")

    def evaluation_worktree(self, wt: Path, sha: str) -> Path:
        """A fresh checkout of `sha` beside run worktree `wt` (named `<name>-eval`), for the evaluation:
        what git holds, nothing the run wrote; the run's own worktree is left as it is."""
        return self.worktree(f"{self.top_of(wt).name}-eval", at=sha)

    def top_of(self, wt: Path) -> Path:
        """The worktree's top folder for a project folder inside it."""
        return wt.parents[len(Path(self.prefix).parts) - 1] if self.prefix else wt

    def repo_path(self, path: str) -> str:
        """Project path -> repository path (the project may be a subfolder of the repository)."""
        return f"{self.prefix}/{path}" if self.prefix else path

    def project_path(self, path: str) -> str:
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
        out = Git(self.top_of(wt))("status", "--porcelain", "--untracked-files=all", "-z", strip=False)
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
        return sorted({self.project_path(p) for p in paths})

    def diff(self, a: Optional[str], b: str) -> str:
        if not a:
            return self.git("show", "--format=", b)
        return self.git("diff", a, b, "--", self.prefix or ".")

    def file_at(self, sha: str, path: str) -> Optional[str]:
        r = run_git(["cat-file", "blob", f"{sha}:{self.repo_path(path)}"], self.top, capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else None

    # -- writing --------------------------------------------------------------------
    def commit(self, wt: Path, paths: list[str], message: str, parent: str) -> str:
        """Commit `paths` of `wt` on top of `parent` (the worktree's HEAD moves; no branch does)."""
        g = Git(self.top_of(wt))
        g("add", "-A", "--", *[self.repo_path(p) for p in paths])
        tree = g("write-tree")
        if tree == g("rev-parse", f"{parent}^{{tree}}"):
            raise NothingChanged("the change is empty once committed")
        sha = g("commit-tree", tree, "-p", parent, "-F", "-", input=message.strip() + "\n")
        g("update-ref", "--no-deref", "HEAD", sha)
        return sha

    def commit_files(self, parent: str, changes: "dict[str, Optional[tuple[bytes, bool]]]", message: str,
                     base: Optional[str] = None) -> str:
        """A commit of `base`'s tree (default: `parent`'s) with `changes` applied, whose parent is `parent`.

        `changes` maps a project path to (bytes, executable) or None (deleted). Nothing runs in a
        folder an agent wrote: blobs are made from the bytes (`hash-object --no-filters`, so no
        attribute or filter of the agent's applies), the tree is built in a temporary index, and
        no ref or worktree moves. A changed file keeps its mode at the base (a new one is 100644,
        or 100755 when executable). Raises NothingChanged when the tree is `parent`'s."""
        base = base or parent
        with tempfile.TemporaryDirectory(prefix="autoresearch-index-") as tmp:
            g = Git(self.top)
            g.env = dict(g.env, GIT_INDEX_FILE=str(Path(tmp) / "index"))
            g("read-tree", base)
            modes = self.modes(base, list(changes))
            info, removed = [], []
            for rel, change in sorted(changes.items()):
                full = self.repo_path(rel)
                if change is None:
                    removed.append(full)
                    continue
                data, executable = change
                blob = self.git_bytes("hash-object", "-w", "--no-filters", "--stdin", data=data).decode().strip()
                mode = modes.get(rel) or ("100755" if executable else "100644")
                if mode not in ("100644", "100755"):  # a tracked symlink or submodule replaced by a file
                    mode = "100755" if executable else "100644"
                info.append(f"{mode} {blob}\t{full}")
            if info:  # NUL-terminated: a name holding a newline must not add a line of its own
                g("update-index", "--add", "-z", "--index-info", input="\0".join(info) + "\0")
            if removed:
                g("update-index", "--force-remove", "-z", "--stdin", input="\0".join(removed) + "\0")
            tree = g("write-tree")
        if tree == self.git("rev-parse", f"{parent}^{{tree}}"):
            raise NothingChanged("the change is empty once committed")
        return self.git("commit-tree", tree, "-p", parent, "-F", "-", input=message.strip() + "\n")

    def modes(self, sha: str, paths: list[str]) -> dict[str, str]:
        """Project path -> git mode at `sha`, for those of `paths` that exist there."""
        if not paths:
            return {}
        out = self.git_bytes("ls-tree", "-z", "--full-tree", sha, "--", *[self.repo_path(p) for p in paths])
        found = {}
        for entry in out.split(b"\0"):
            if entry:
                meta, _, name = entry.partition(b"\t")
                found[self.project_path(name.decode("utf-8", "surrogateescape"))] = meta.split()[0].decode()
        return found

    def tree_entries(self, sha: str) -> list[tuple[str, str, str]]:
        """(mode, object id, project path) of every file of the project at `sha` (`ls-tree -r`)."""
        args = ["ls-tree", "-r", "-z", "--full-tree", sha] + (["--", self.prefix] if self.prefix else [])
        out = []
        for entry in self.git_bytes(*args).split(b"\0"):
            if entry:
                meta, _, name = entry.partition(b"\t")
                mode, _, oid = meta.decode().split()
                out.append((mode, oid, self.project_path(name.decode("utf-8", "surrogateescape"))))
        return out

    def changed_between(self, a: str, b: str) -> list[str]:
        """Project paths whose content or mode differs between commits `a` and `b`."""
        out = self.git_bytes("diff-tree", "-r", "-z", "--no-renames", "--name-only", a, b,
                             *(["--", self.prefix] if self.prefix else []))
        return [self.project_path(p.decode("utf-8", "surrogateescape")) for p in out.split(b"\0") if p]

    def blobs(self, oids: list[str]) -> dict[str, bytes]:
        """The content of each blob in `oids` (one `cat-file --batch`)."""
        if not oids:
            return {}
        raw = self.git_bytes("cat-file", "--batch", data=("\n".join(oids) + "\n").encode())
        out, i = {}, 0
        for oid in oids:
            nl = raw.index(b"\n", i)
            header = raw[i:nl].split()
            size = int(header[2])
            out[oid] = raw[nl + 1:nl + 1 + size]
            i = nl + 1 + size + 1
        return out

    def git_bytes(self, *args: str, data: Optional[bytes] = None) -> bytes:
        """git in the repository's top folder, bytes in and out (paths with any characters, binary blobs)."""
        r = subprocess.run(git_command(args, self.top), cwd=self.top, input=data, capture_output=True,
                           env=self.git.env)
        if r.returncode != 0:
            why = r.stderr.decode(errors="replace").strip()
            raise GitError(f"git {' '.join(args[:3])} failed in {self.top}: {why}")
        return r.stdout

    def advance(self, new: str, expected_old: str) -> None:
        """Move the branch from `expected_old` to `new` atomically, or raise if it moved meanwhile.

        While watched, a branch that is not where the harness last set it (and that was
        `expected_old`) was moved by someone else: it is moved from wherever it is, and the
        next put_back() reports it."""
        with self.refs_lock:
            if self._known is not None and self._known.get(self.ref) == expected_old:
                now = self.git("rev-parse", "--verify", "--quiet", self.ref, check=False)
                if now != expected_old:
                    self._found.append(f"{self.branch} was moved from {expected_old[:7]} to {(now or 'nothing')[:7]} "
                                       "(restored)")
                    expected_old = now
            try:
                self.git("update-ref", self.ref, new, expected_old)
            except GitError as e:
                raise WorkspaceError(
                    f"branch {self.branch} is no longer at {expected_old[:7]} (someone moved it): {e}"
                ) from None
            if self._known is not None:
                self._known[self.ref] = new

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
        with self.refs_lock:
            self.git("update-ref", f"refs/autoresearch/{self.tag}/{exp_id}", sha)
            if self._known is not None:
                self._known[f"refs/autoresearch/{self.tag}/{exp_id}"] = sha

    # -- the harness's own refs ------------------------------------------------------------
    def watch(self) -> None:
        """Remember the branch and the pins as they are now (the caller holds the tag's lock): from here
        on only advance() and pin() change them, and put_back() undoes anything else."""
        with self.refs_lock:
            self._known, self._found = self._refs(), []

    def watching(self) -> bool:
        return self._known is not None

    def expected_tip(self) -> str:
        """Where the harness last set the branch (while watched), else where it is."""
        with self.refs_lock:
            known = self._known.get(self.ref) if self._known is not None else None
        return known or self.tip()

    def put_back(self) -> list[str]:
        """Undo what anything but advance() and pin() did to the tag's refs since watch(); returns what was
        found, one line each ([] when unwatched). The branch is restored by compare-and-swap."""
        with self.refs_lock:
            if self._known is None:
                return []
            found, self._found = self._found, []
            now = self._refs()
            for ref in sorted(set(self._known) | set(now)):
                old, new = self._known.get(ref), now.get(ref)
                if old == new:
                    continue
                if old is None:
                    self.git("update-ref", "-d", ref, new, check=False)
                else:
                    self.git("update-ref", ref, old, *([new] if new else []), check=False)
                found.append(f"{ref.replace('refs/heads/', '')} was moved from {(old or 'nothing')[:7]} to "
                             f"{(new or 'nothing')[:7]} (restored)")
            return found

    def _refs(self) -> dict[str, str]:
        # strict: a failed listing read as "no refs" would report every ref as moved
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)", f"refs/autoresearch/{self.tag}/",
                       self.ref)
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def rebase(self, commit: str, onto: str, message: str) -> str:
        """The change `commit` made to its parent, cherry-picked onto `onto` as a new commit (in worktree
        "rebase"); raises RebaseConflict naming the files, or NothingChanged if `onto` already has it."""
        wt = self.worktree("rebase", at=onto)
        g = Git(self.top_of(wt))
        if not g.ok("cherry-pick", "--no-commit", commit):
            files = [self.project_path(p) for p in g("diff", "--name-only", "--diff-filter=U", check=False).splitlines()]
            self.reset(wt, onto)  # also clears the cherry-pick state
            raise RebaseConflict(files or ["?"])
        return self.commit(wt, self.changed_paths(wt), message, onto)

    def bundle(self, commit: str, exclude: Optional[str] = None) -> bytes:
        """A git bundle of `commit` (and its history, less what `exclude` has): code for a node with no
        shared filesystem. Its one ref is `refs/autoresearch-bundle/<commit>`."""
        ref = f"refs/autoresearch-bundle/{commit}"  # outside refs/autoresearch/<tag>/: not a pin
        self.git("update-ref", ref, commit)
        try:
            args = ["bundle", "create", "-", ref] + ([f"^{exclude}"] if exclude and exclude != commit else [])
            r = run_git(args, self.top, capture_output=True, env=self.git.env)
            if r.returncode != 0:
                raise GitError(f"git bundle create failed in {self.top}: {r.stderr.decode(errors='replace').strip()}")
            return r.stdout
        finally:
            self.git("update-ref", "-d", ref, check=False)

    def reset(self, wt: Path, sha: str) -> None:
        """Make worktree `wt` exactly `sha` (detached): our own scratch space, not a branch."""
        self._reset_top(self.top_of(wt), sha)

    def _reset_top(self, top: Path, sha: str) -> None:
        g = Git(top)
        g("reset", "--hard", "-q", sha)
        g("clean", *CLEAN)

    def restore(self, wt: Path, paths: Iterable[str], sha: str) -> None:
        """Put `paths` back as they are in `sha` (deleting those that do not exist there)."""
        g = Git(self.top_of(wt))
        for p in paths:
            if g.ok("cat-file", "-e", f"{sha}:{self.repo_path(p)}"):
                g("checkout", sha, "--", self.repo_path(p))
            else:
                (wt / p).unlink(missing_ok=True)

    def digests(self, wt: Path, globs: list[str]) -> dict[str, str]:
        """sha256 of every file under `wt` matching `globs` (the protected set)."""
        out = {}
        for rel in tracked_or_present(wt):
            if matches(rel, globs):
                out[rel] = _file_digest(wt / rel)
        return out

    def remove_worktrees(self) -> None:
        for path in sorted(self.trees.glob("*")) if self.trees.exists() else []:
            self.git("worktree", "remove", "--force", str(path), check=False)
            if path.is_dir() and not (path / ".git").exists():  # a plain proposal folder (proposal.py)
                remove_tree(path)
        self.git("worktree", "prune", check=False)


class NothingChanged(WorkspaceError):
    pass


class RebaseConflict(WorkspaceError):
    def __init__(self, files: list[str]):
        super().__init__(f"the change conflicts in {', '.join(files)}")
        self.files = files


def _file_digest(path: Path) -> str:
    """sha256 of a regular file's bytes, read without following a link or opening anything else: a run
    can put a fifo (an open that never returns) or a link to /dev/zero (a read that never ends) where a
    protected file was. Those, and what cannot be opened, get a digest naming what they are."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return "link:" + os.readlink(path)
        if not stat.S_ISREG(st.st_mode):
            return f"special:{stat.S_IFMT(st.st_mode)}"
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        return f"unreadable:{e.errno}"
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def remove_tree(path: Path) -> None:
    """Remove `path` and everything below it, however deep; a link is removed, never followed.

    A run or an agent can nest folders thousands deep for free (relative mkdirs); shutil.rmtree
    recurses in Python (3.11) and raised RecursionError, which killed the session. `rm -rf` walks
    any depth; where there is no `rm` (or it left something) the tree is flattened level by level
    (flatten_remove: no recursion, no long paths). What still cannot be removed (e.g. no permission)
    stays: the caller sees it exists."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if shutil.which("rm"):
        subprocess.run(["rm", "-rf", "--", str(path)], capture_output=True)
    if os.path.lexists(path):
        try:
            flatten_remove(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except OSError:
            pass


def flatten_remove(root: Path) -> None:
    """Remove folder `root` without recursion and without paths longer than two levels below it: each
    subfolder's entries are moved up into `root` under fresh names, then the emptied subfolder is removed,
    until `root` is empty. O(entries) renames; any depth. Raises OSError for what cannot be removed."""
    fresh = 0
    while True:
        entries = list(os.scandir(root))
        if not entries:
            break
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
                continue
            for inner in list(os.scandir(entry.path)):
                target = os.path.join(root, f".rm-{fresh}")
                while os.path.lexists(target):  # a name the tree itself holds
                    fresh += 1
                    target = os.path.join(root, f".rm-{fresh}")
                os.rename(inner.path, target)
            os.rmdir(entry.path)
    os.rmdir(root)


def valid_tag(tag: str) -> bool:
    return bool(tag) and all(c.isalnum() or c in "-_." for c in tag) and not tag.startswith((".", "-"))
