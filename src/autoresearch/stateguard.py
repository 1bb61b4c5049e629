"""The state guard: the harness's own state is put back if anything but the harness changes it.

What is guarded: the branch tip and the experiment pins (refs/autoresearch/<tag>/*), the
tag's ledger rows and their measurements, results.tsv, the protected files (and
autoresearch.toml) of the user's checkout, and what in git's directory names programs for
plain git to run (config, config.worktree, each worktree's config.worktree, hooks/,
info/attributes: a hook or filter planted there runs nothing inside the harness, whose git
ignores them, but would run in the user's own next `git commit`). Rows and refs are compared
with what the harness itself wrote (the session's own record: `Ledger.put_back()`,
`Workspace.put_back()`), so this holds in concurrent mode too, where other threads of the
harness add rows and move the branch while an agent works: a row the harness never wrote, a
finished row edited, a branch not where the harness last set it are all found and put back.
results.tsv, the checkout's files and git's directory are compared with a snapshot taken when
the guard is made (before an agent proposes, before a run starts). `check()` restores what
changed and returns what it found; the caller records that experiment as a `violation`.

Not covered: a ledger *file* deleted or replaced is reported, not rebuilt (the seal chain,
ledger.py, reports edits made between sessions). With `engine.workers > 1` the tripwire on
hidden data is not armed (evaluations read it meanwhile). Process agents run confined where
bubblewrap works (Sandbox.wrap_agent: none of this is mounted for them); in-process agents
and unconfined ones are what this guard is for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from .config import CONFIG_NAME
from .globs import matches
from .integrity import Tripwire
from .layout import Layout
from .ledger import Ledger
from .sandbox import resolve_paths
from .workspace import tracked_or_present

WATCH_GIT_DIR = True  # tests switch this off for the control of the attacks it catches
GIT_DIR_FILES = ("config", "config.worktree", "info/attributes")  # and everything under hooks/


class StateGuard:
    """One guarded window: rows and refs against the session's own record, results.tsv and the
    checkout's protected files against a snapshot taken when the guard is made."""

    MAX_FILE = 2 << 20

    def __init__(self, cfg, ws, ledger: Union[Ledger, Path], tag: str, *, exclusive: Optional[bool] = None,
                 agent: bool = False):
        """`ledger`: the session's Ledger (a path: one of the guard's own). `agent`: an agent is about to
        propose: also watch hidden data and the evaluation's secret (nothing of the harness reads them
        meanwhile; with concurrent workers, evaluations might). The caller holds the tag's lock: if no
        session record exists yet, the guard starts one (rows and refs as they are now)."""
        self.cfg, self.ws, self.tag = cfg, ws, tag
        self.ledger = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        self.db_path = self.ledger.path
        self.tsv = cfg.root / "results.tsv"
        self.exclusive = cfg.engine.workers <= 1 if exclusive is None else exclusive
        if not self.ledger.watching(tag):
            self.ledger.watch(tag)
        if not ws.watching():
            ws.watch()
        self.db_id = _inode(self.db_path)
        self.tsv_bytes = self.tsv.read_bytes() if self.tsv.exists() else None
        self.files = self._checkout_files()
        self.gitdir = self._git_dir()
        self.git_files = self._git_files()
        self.wire = Tripwire(self._watched() if agent and self.exclusive else []).__enter__()

    def expect_tsv(self) -> None:
        """The harness has just written results.tsv: these bytes are what it should hold from now on."""
        self.tsv_bytes = self.tsv.read_bytes() if self.tsv.exists() else None

    def hidden_paths(self) -> list[Path]:
        """What an agent working alone must not open: hidden data and the evaluation's secret."""
        return self._watched()

    def _watched(self) -> list[Path]:
        env = dict(os.environ) | self.cfg.experiment.env
        secret = Layout(self.cfg.root).eval_secret
        return resolve_paths(self.cfg.experiment.hidden, self.cfg.root, env) + ([secret] if secret.exists() else [])

    def check(self) -> list[str]:
        """What changed since the snapshot (each one put back where possible)."""
        self.wire.__exit__(None, None, None)
        found = [f"opened hidden data: {p}" for p in self.wire.hits]
        found += self.ws.put_back()
        found += self.ledger.put_back(self.tag)
        if _inode(self.db_path) != self.db_id:
            found.append(f"the ledger file {self.db_path} was deleted or replaced")
        if self.tsv_bytes is not None and (not self.tsv.exists() or self.tsv.read_bytes() != self.tsv_bytes):
            _write(self.tsv, self.tsv_bytes)
            found.append("results.tsv was rewritten (restored)")
        found += self._check_git_files()
        for rel, data in self.files.items():
            p = self.cfg.root / rel
            now = p.read_bytes() if p.exists() else None
            if now != data:
                if data is not None:
                    _write(p, data)
                found.append(f"{rel} in the checkout was changed (restored)")
        return found

    # -- git's own directory
    def _git_dir(self) -> Optional[Path]:
        common = Path(self.ws.git("rev-parse", "--git-common-dir", check=False) or ".git")
        return (common if common.is_absolute() else self.ws.top / common).resolve()

    def _git_files(self) -> dict[str, tuple[bytes, int]]:
        """(content, mode) of git's files that name programs (see the module docstring)."""
        if not WATCH_GIT_DIR or self.gitdir is None:
            return {}
        paths = [self.gitdir / rel for rel in GIT_DIR_FILES]
        hooks = self.gitdir / "hooks"
        paths += sorted(p for p in hooks.rglob("*") if not p.is_dir()) if hooks.is_dir() else []
        paths += sorted(self.gitdir.glob("worktrees/*/config.worktree"))  # each worktree's own config
        out = {}
        for p in paths:
            try:
                out[p.relative_to(self.gitdir).as_posix()] = (p.read_bytes(), p.stat().st_mode & 0o7777)
            except OSError:  # absent (or a dangling link: then it is reported when it changes)
                continue
        return out

    def _check_git_files(self) -> list[str]:
        if not WATCH_GIT_DIR or self.gitdir is None:
            return []
        now, found = self._git_files(), []
        for rel in sorted(set(self.git_files) | set(now)):
            if self.git_files.get(rel) == now.get(rel):
                continue
            p = self.gitdir / rel
            if rel in self.git_files:
                data, mode = self.git_files[rel]
                _write(p, data)
                os.chmod(p, mode)
                found.append(f".git/{rel} was {'changed' if rel in now else 'deleted'} (restored)")
            else:
                p.unlink(missing_ok=True)
                found.append(f".git/{rel} was added (removed)")
        return found

    # -- the user's checkout
    def _checkout_files(self) -> dict[str, Optional[bytes]]:
        out = {}
        for rel in tracked_or_present(self.cfg.root):
            if rel == CONFIG_NAME or matches(rel, self.cfg.experiment.protected):
                p = self.cfg.root / rel
                if p.stat().st_size <= self.MAX_FILE:
                    out[rel] = p.read_bytes()
        return out


def _inode(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = path.stat()
        return st.st_dev, st.st_ino
    except OSError:
        return None


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.restore")
    tmp.write_bytes(data)
    os.replace(tmp, path)


