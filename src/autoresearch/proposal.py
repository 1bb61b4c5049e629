"""The agent's proposal folder: a plain copy of one commit, and exactly what the agent changed in it.

An agent works in `.autoresearch/worktrees/<tag>/propose`: a PLAIN folder holding the
project's files at the start commit, with no `.git` file or folder and so no way into the
repository (no refs, hooks, config or objects to reach through it). It is filled from git's
own objects (`ls-tree` + `cat-file --batch`: the bytes git holds, no filters), and a manifest
records what it held: path -> (git mode, blob id, lstat signature).

After the agent, `changes()` walks the folder with lstat only (it never follows a link or
runs git there) and compares it with the manifest: added, modified and deleted paths, their
bytes read by the harness. A file whose lstat signature (size, mtime, ctime, inode, mode) is
unchanged is unchanged: ctime cannot be set back by an unprivileged writer. `problems()`
turns what a proposal may not contain into reasons for a `violation`, found before anything
runs: a symlink, a non-regular file (fifo, socket, device), a nested `.git`, a path outside
`experiment.editable` (globs.py), a change to `program.md` (the user's research direction), a
name that is not UTF-8, a file over MAX_FILE_BYTES or a folder deeper than
MAX_DEPTH (both refused unread: the harness holds a change in memory).
`ideas.md` stays the human's: an agent's edit of it is dropped, never committed (its own notes
go to the notebook, agents/notebook.py). New files that the commit's .gitignore files ignore,
and `__pycache__/` folders, are dropped too (not changes, as `git status` would say).

`prepare(commit)` makes the folder exactly `commit` again, incrementally: only paths the agent
touched or that differ between the two commits are rewritten, so a proposal costs a walk and
two or three git calls, not a checkout.

Guarantees: the folder is the harness's scratch space (the tag's lock is held); after
`prepare()` it holds exactly the commit's project files; `changes()` reads nothing through a
link. Not covered: gitignore negations (`!pattern`) when deciding what new files are ignored
(a negated file is dropped, not committed); files of the repository outside the project
folder (they are not in the proposal folder at all); submodules (an empty folder).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .globs import matches
from .workspace import remove_tree

PROGRAM = "program.md"
HUMAN_NOTES = "ideas.md"
ALWAYS_IGNORED = ("**/__pycache__/",)
MAX_DEPTH = 64  # folders; deeper is refused unwalked (paths past PATH_MAX cannot even be named)
MAX_FILE_BYTES = 32 << 20  # a proposal is code: a larger file is refused unread (the harness holds changes in memory)


@dataclass(frozen=True)
class Entry:
    mode: str  # git mode: 100644, 100755, 120000 (symlink), 160000 (submodule)
    oid: str  # git blob id


@dataclass
class Changes:
    """What the agent did to the folder, relative to the manifest (project paths)."""

    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, what it is): never allowed
    dropped: list[str] = field(default_factory=list)  # ignored new files, ideas.md: not changes
    files: dict[str, Optional[tuple[bytes, bool]]] = field(default_factory=dict)  # commit_files' input
    old: dict[str, bytes] = field(default_factory=dict)  # content before, for the patch

    @property
    def paths(self) -> list[str]:
        return sorted(set(self.added) | set(self.modified) | set(self.deleted))

    def problems(self, cfg) -> list[str]:
        """Why this change may not run (empty: it may)."""
        out = [f"{p} is {what}" for p, what in self.refused]  # the loop cleans names (clean.one_line)
        if PROGRAM in self.paths:
            out.append(f"{PROGRAM} changed: the research direction is the user's")
        outside = [p for p in self.paths if p != PROGRAM and not cfg.is_editable(p)]
        if outside:
            out.append(f"changed files outside `experiment.editable`: {', '.join(outside[:5])}"
                       + (f" and {len(outside) - 5} more" if len(outside) > 5 else ""))
        return out

    def patch(self, limit: int = 200_000) -> str:
        """A unified diff of the text files changed (evidence for a refused proposal), capped."""
        import difflib

        parts = []
        for p in self.paths:
            new = self.files.get(p)
            a = self.old.get(p, b"").decode("utf-8", "replace").splitlines(keepends=True)
            b = (new[0] if new else b"").decode("utf-8", "replace").splitlines(keepends=True)
            name = shown(p)  # the patch is stored as it is: no byte that is not UTF-8, no control character
            parts.append("".join(difflib.unified_diff(a, b, f"a/{name}", f"b/{name}")) or f"Binary or mode change: {name}\n")
        for p, what in self.refused:
            parts.append(f"refused: {shown(p)} ({what})\n")
        text = "".join(parts)
        return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters]\n"


class ProposalFolder:
    """The plain folder one tag's agent edits (see the module docstring)."""

    def __init__(self, ws, name: str = "propose"):
        self.ws = ws
        self.path = ws.trees / name
        self.commit: Optional[str] = None
        self.manifest: dict[str, Entry] = {}
        self.sigs: dict[str, tuple] = {}
        self.ignore: list[str] = list(ALWAYS_IGNORED)

    # -- filling ------------------------------------------------------------------------
    def prepare(self, commit: str) -> Path:
        """Make the folder hold exactly `commit`'s project files; returns the folder."""
        if self.commit is None or not self.path.is_dir() or self.path.is_symlink():
            self._fill(commit)
        else:
            self._restore(commit)
        return self.path

    def _fill(self, commit: str) -> None:
        if self.path.is_symlink() or self.path.is_file():
            self.path.unlink()
        remove_tree(self.path)  # whatever depth an agent nested there
        self.ws.git("worktree", "prune", check=False)  # a git worktree of an older version lived here
        self.path.mkdir(parents=True)
        entries = {rel: Entry(mode, oid) for mode, oid, rel in self.ws.tree_entries(commit)}
        self.manifest, self.sigs = {}, {}
        self._write(entries, list(entries))
        self._set(commit, entries)

    def _restore(self, commit: str) -> None:
        touched = self._scan(read=False)
        dirty = set(touched.paths) | {p for p, _ in touched.refused} | set(touched.dropped)
        between = set(self.ws.changed_between(self.commit, commit)) if commit != self.commit else set()
        entries = self.manifest if not between else \
            {rel: Entry(mode, oid) for mode, oid, rel in self.ws.tree_entries(commit)}
        for rel in sorted(dirty | between, key=lambda p: -p.count("/")):
            _remove(self.path, rel)
        self._write(entries, sorted(p for p in dirty | between if p in entries))
        self._set(commit, entries)

    def _set(self, commit: str, entries: dict[str, Entry]) -> None:
        self.commit, self.manifest = commit, dict(entries)
        self.ignore = list(ALWAYS_IGNORED) + self._ignore_rules()

    def _write(self, entries: dict[str, Entry], paths: list[str]) -> None:
        blobs = self.ws.blobs(sorted({entries[p].oid for p in paths if entries[p].mode != "160000"}))
        for rel in paths:
            e = entries[rel]
            target = self.path / rel
            _make_parents(self.path, rel)
            if e.mode == "160000":
                target.mkdir(exist_ok=True)
            elif e.mode == "120000":
                os.symlink(blobs[e.oid], target)
            else:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                             0o755 if e.mode == "100755" else 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(blobs[e.oid])
                os.chmod(target, 0o755 if e.mode == "100755" else 0o644)  # whatever the umask
            self.sigs[rel] = _sig(os.lstat(target))

    def _ignore_rules(self) -> list[str]:
        """The commit's .gitignore patterns, as anchored globs (negations are skipped)."""
        files = {rel: e.oid for rel, e in self.manifest.items() if rel.split("/")[-1] == ".gitignore"}
        blobs = self.ws.blobs(sorted(set(files.values())))
        out: list[str] = []
        for rel, oid in sorted(files.items()):
            data = blobs[oid]
            base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
            for line in data.decode("utf-8", "replace").splitlines():
                pat = line.rstrip()
                if not pat or pat.startswith(("#", "!")):
                    continue
                anchored = "/" in pat.rstrip("/")
                out.append(base + (pat.lstrip("/") if anchored else "**/" + pat))
        return out

    # -- reading ------------------------------------------------------------------------
    def changes(self) -> Changes:
        """What the agent changed since `prepare()` (see the module docstring)."""
        return self._scan(read=True)

    def _scan(self, read: bool) -> Changes:
        c = Changes()
        seen: set[str] = set()
        submodules = {rel for rel, e in self.manifest.items() if e.mode == "160000"}
        stack = [("", 0)]
        while stack:
            d, depth = stack.pop()
            try:
                it = list(os.scandir(self.path / d if d else self.path))
            except OSError:
                continue
            for entry in it:
                rel = f"{d}{entry.name}"
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as e:
                    seen.add(rel)
                    c.refused.append((rel, f"unreadable by the harness ({e.strerror})"))
                    continue
                if not _utf8_name(entry.name):
                    seen.add(rel)
                    c.refused.append((rel, "a name that is not UTF-8 (it cannot be stored)"))
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if entry.name == ".git":
                        c.refused.append((rel, "a nested .git (a repository inside the proposal)"))
                    elif rel in submodules:
                        seen.add(rel)
                    elif depth >= MAX_DEPTH:  # a project is not this deep; its paths would outgrow PATH_MAX
                        c.refused.append((rel, f"a folder nested deeper than {MAX_DEPTH}"))
                    else:
                        stack.append((rel + "/", depth + 1))
                    continue
                seen.add(rel)
                old = self.manifest.get(rel)
                if stat.S_ISLNK(st.st_mode):
                    if old is None or old.mode != "120000" or self.sigs.get(rel) != _sig(st):
                        if not (old is not None and old.mode == "120000"
                                and _blob_id(os.readlink(self.path / rel).encode()) == old.oid):
                            c.refused.append((rel, "a symlink"))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    c.refused.append((rel, "not a regular file (a fifo, socket or device)"))
                    continue
                if entry.name == ".git":
                    c.refused.append((rel, "a nested .git (a link into a repository)"))
                    continue
                if old is not None and old.mode != "120000" and self.sigs.get(rel) == _sig(st):
                    continue  # untouched: same inode, size, mtime and ctime as written
                if old is None and rel != HUMAN_NOTES and matches(rel, self.ignore):
                    c.dropped.append(rel)  # never read: an ignored model or dataset may be large
                    continue
                if st.st_size > MAX_FILE_BYTES:  # never read: a sparse file costs the agent nothing
                    c.refused.append((rel, f"larger than {MAX_FILE_BYTES >> 20} MiB ({st.st_size} bytes)"))
                    continue
                executable = bool(st.st_mode & stat.S_IXUSR)
                try:
                    data = _read(self.path / rel) if (read or old is not None) else b""
                except OSError as e:  # e.g. its mode set to 000 by the agent
                    c.refused.append((rel, f"unreadable by the harness ({e.strerror})"))
                    continue
                if old is not None and old.mode in ("100644", "100755") and _blob_id(data) == old.oid \
                        and (old.mode == "100755") == executable:
                    self.sigs[rel] = _sig(st)  # rewritten with the same bytes: unchanged
                    continue
                if rel == HUMAN_NOTES or (old is None and matches(rel, self.ignore)):
                    c.dropped.append(rel)
                    continue
                (c.modified if old is not None else c.added).append(rel)
                c.files[rel] = (data, executable)
        for rel, e in self.manifest.items():
            if rel not in seen:
                if rel == HUMAN_NOTES:
                    c.dropped.append(rel)
                    continue
                c.deleted.append(rel)
                c.files[rel] = None
        if read:
            old_blobs = self.ws.blobs(sorted({self.manifest[p].oid for p in c.modified + c.deleted
                                              if self.manifest[p].mode in ("100644", "100755")}))
            c.old = {p: old_blobs[self.manifest[p].oid] for p in c.modified + c.deleted
                     if self.manifest[p].oid in old_blobs}
        c.added.sort(), c.modified.sort(), c.deleted.sort(), c.refused.sort()
        return c


def refused_kinds(folder: Path, paths: list[str]) -> list[tuple[str, str]]:
    """(path, what it is) for each of `paths` under `folder` that no proposal may contain: a symlink
    (on the path or at it), a non-regular file, a nested `.git`. For tool mode, whose changes are
    found by `git status` in the user's checkout rather than by a manifest walk."""
    out = []
    for rel in paths:
        cur, what = Path(folder), ""
        for i, part in enumerate(rel.split("/")):
            cur = cur / part
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                break
            if part == ".git":
                what = "a nested .git"
            elif stat.S_ISLNK(st.st_mode):
                what = "a symlink"
            elif i == rel.count("/") and not stat.S_ISREG(st.st_mode):
                what = "not a regular file (a fifo, socket or device)"
            if what:
                break
        if what:
            out.append((rel, what))
    return out


def read_change(folder: Path, paths: list[str]) -> dict[str, Optional[tuple[bytes, bool]]]:
    """`Workspace.commit_files`' input for `paths` under `folder`: (bytes, executable) or None (gone).
    Call refused_kinds() first: this reads regular files only, never through a link."""
    out: dict[str, Optional[tuple[bytes, bool]]] = {}
    for rel in paths:
        try:
            st = os.lstat(Path(folder) / rel)
        except FileNotFoundError:
            out[rel] = None
            continue
        out[rel] = (_read(Path(folder) / rel), bool(st.st_mode & stat.S_IXUSR))
    return out


def _utf8_name(name: str) -> bool:
    """A file name a proposal may hold: UTF-8 (a byte that is not cannot be stored in the ledger). Control
    characters are allowed in names (git stores them; every git input is NUL-separated, every view cleans)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(rel: str) -> str:
    """A path as text that can be stored and shown: bytes that are not UTF-8 and control characters escaped."""
    raw = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if 32 <= ord(ch) != 127 else f"\\x{ord(ch):02x}" for ch in raw)


def _sig(st: os.stat_result) -> tuple:
    return (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)  # bounded even if something still writes it after its lstat
    if len(data) > MAX_FILE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES >> 20} MiB")
    return data


def _remove(root: Path, rel: str) -> None:
    """Remove whatever is at `rel` under `root` (file, link, folder), never through a link: when a
    folder above it is not a real folder, there is nothing of ours below it to remove."""
    cur = root
    for part in rel.split("/")[:-1]:
        cur = cur / part
        try:
            if not stat.S_ISDIR(os.lstat(cur).st_mode):
                return
        except FileNotFoundError:
            return
    path = root / rel
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_tree(path)
    else:
        os.unlink(path)


def _make_parents(root: Path, rel: str) -> None:
    """Create the folders above `rel`, replacing anything in their way that is not a real folder."""
    cur = root
    for part in rel.split("/")[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
            if stat.S_ISDIR(st.st_mode):
                continue
            os.unlink(cur)  # a file or a link where a folder belongs
        except FileNotFoundError:
            pass
        os.mkdir(cur)
