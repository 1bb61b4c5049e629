"""The state guard: the harness's own state is put back if anything but the harness changes it.

What is guarded: the branch tip and the experiment pins (refs/autoresearch/<tag>/*), the
tag's ledger rows and their measurements, results.tsv, the protected files (and
autoresearch.toml) of the user's checkout, and what in git's directory names programs for
plain git to run (config, config.worktree, each worktree's config.worktree, hooks/,
info/attributes: a hook or filter planted there runs nothing inside the harness, whose git
ignores them, but would run in the user's own next `git commit`). A `StateGuard` takes a
snapshot when made —
before an agent proposes, before a run starts — and `check()` compares, restores what
changed, and returns what it found; the loop records that experiment as a `violation`.
The ledger is read and repaired through a connection of its own (the ledger promises
process safety: WAL and a busy timeout).

Not covered: it assumes its session is the only writer of its tag while it watches (true
for the sequential loop); with `engine.workers > 1` it only checks that finished rows
and the pins that existed never change, so a forged new row goes unseen there. A ledger
*file* deleted or replaced is reported, not rebuilt. Process agents run confined where
bubblewrap works (Sandbox.wrap_agent: none of this is mounted for them); in-process agents
and unconfined ones are what this guard is for.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Optional

from .integrity import Tripwire
from .sandbox import resolve_paths

WATCH_GIT_DIR = True  # tests switch this off for the control of the attacks it catches
GIT_DIR_FILES = ("config", "config.worktree", "info/attributes")  # and everything under hooks/


class StateGuard:
    """Snapshot of branch, pins, ledger rows, results.tsv and the checkout's protected files."""

    MAX_FILE = 2 << 20

    def __init__(self, cfg, ws, ledger_path: Path, tag: str, *, exclusive: Optional[bool] = None,
                 agent: bool = False):
        """`agent`: an agent is about to propose: also watch hidden data and the evaluation's secret
        (nothing of the harness reads them meanwhile; with concurrent workers, evaluations might)."""
        self.cfg, self.ws, self.tag = cfg, ws, tag
        self.db_path = Path(ledger_path)
        self.tsv = cfg.root / "results.tsv"
        self.exclusive = cfg.engine.workers <= 1 if exclusive is None else exclusive
        self.refs = self._refs()
        self.rows = self._rows()
        self.db_id = _inode(self.db_path)
        self.tsv_bytes = self.tsv.read_bytes() if self.tsv.exists() else None
        self.files = self._checkout_files()
        self.gitdir = self._git_dir()
        self.git_files = self._git_files()
        self.wire = Tripwire(self._watched() if agent and self.exclusive else []).__enter__()

    def _watched(self) -> list[Path]:
        env = dict(os.environ) | self.cfg.experiment.env
        secret = self.cfg.root / ".autoresearch" / "eval_secret"
        return resolve_paths(self.cfg.experiment.hidden, self.cfg.root, env) + ([secret] if secret.exists() else [])

    def check(self) -> list[str]:
        """What changed since the snapshot (each one put back where possible)."""
        self.wire.__exit__(None, None, None)
        found = [f"opened hidden data: {p}" for p in self.wire.hits]
        found += self._check_refs()
        found += self._check_rows()
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

    # -- refs
    def _refs(self) -> dict[str, str]:
        out = self.ws.git("for-each-ref", "--format=%(refname) %(objectname)", f"refs/autoresearch/{self.tag}/",
                          self.ws.ref, check=False)
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def _check_refs(self) -> list[str]:
        now, found = self._refs(), []
        for ref in sorted(set(self.refs) | set(now)):
            old, new = self.refs.get(ref), now.get(ref)
            if old == new or (ref == self.ws.ref and not self.exclusive) or (old is None and not self.exclusive):
                continue
            if old is None:
                self.ws.git("update-ref", "-d", ref, check=False)
            else:
                self.ws.git("update-ref", ref, old, check=False)
            found.append(f"{ref.replace('refs/heads/', '')} was moved from {(old or 'nothing')[:7]} to "
                         f"{(new or 'nothing')[:7]} (restored)")
        return found

    # -- ledger rows
    def _rows(self) -> dict[str, dict[int, tuple]]:
        if not self.db_path.exists():
            self.exp_cols, self.m_cols = [], []
            return {"experiments": {}, "measurements": {}}
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            exps = db.execute("SELECT * FROM experiments WHERE tag = ?", (self.tag,))
            self.exp_cols = [d[0] for d in exps.description]
            experiments = {r[0]: r for r in exps.fetchall()}
            ms = db.execute("SELECT m.* FROM measurements m JOIN experiments e ON e.id = m.experiment_id "
                            "WHERE e.tag = ?", (self.tag,))
            self.m_cols = [d[0] for d in ms.description]
            measurements = {r[0]: r for r in ms.fetchall()}
        except sqlite3.OperationalError:  # no schema yet
            experiments, measurements, self.exp_cols, self.m_cols = {}, {}, [], []
        finally:
            db.close()
        return {"experiments": experiments, "measurements": measurements}

    def _check_rows(self) -> list[str]:
        before, now = self.rows, self._rows()
        status_col = self.exp_cols.index("status") if "status" in self.exp_cols else None
        bad: dict[str, list[int]] = {"experiments": [], "measurements": []}
        for table in bad:
            old, new = before[table], now[table]
            for rid in set(old) | set(new):
                if old.get(rid) == new.get(rid):
                    continue
                was = old.get(rid)
                if not self.exclusive:  # only finished rows are known never to change
                    if was is None or (table == "experiments" and was[status_col] == "running"):
                        continue
                bad[table].append(rid)
        if not any(bad.values()):
            return []
        db = sqlite3.connect(str(self.db_path), timeout=30)
        try:
            with db:
                for table, cols in (("experiments", self.exp_cols), ("measurements", self.m_cols)):
                    for rid in bad[table]:
                        row = before[table].get(rid)
                        db.execute(f"DELETE FROM {table} WHERE id = ?", (rid,))
                        if row is not None:
                            marks = ", ".join("?" for _ in cols)
                            names = ", ".join(f'"{c}"' for c in cols)
                            db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", row)
        finally:
            db.close()
        ids = sorted(bad["experiments"])
        ids = (", ".join(f"#{i}" for i in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")) \
            or "measurements"
        return [f"the ledger was edited ({ids}) (restored)"]

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
        from .config import CONFIG_NAME, tracked_or_present
        from .globs import matches

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


