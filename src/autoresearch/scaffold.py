"""`autoresearch init`: make a research project from a bundled template.

Guarantees: never overwrites a file; the project ends up committed in git (a new
repository, or the one DIR already belongs to), so `autoresearch run` can start at once.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from .errors import AutoresearchError
from .workspace import Git


def templates() -> list[str]:
    root = resources.files("autoresearch") / "templates"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def template_files(name: str) -> dict[str, bytes]:
    root = resources.files("autoresearch") / "templates" / name
    if not root.is_dir():
        raise AutoresearchError(f"unknown template `{name}`: choose one of {', '.join(templates())}")
    out: dict[str, bytes] = {}

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            if child.name in ("__pycache__",) or child.name.endswith(".pyc"):
                continue
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
            else:
                out[rel] = child.read_bytes()

    walk(root, "")
    return out


def init_project(directory: Path, template: str) -> list[str]:
    """Write `template` into `directory` and commit it; returns the files written."""
    files = template_files(template)
    directory = Path(directory).resolve()
    clash = [rel for rel in files if (directory / rel).exists()]
    if clash:
        raise AutoresearchError(
            f"{directory} already has {', '.join(clash[:4])}: refusing to overwrite; choose an empty folder"
        )
    directory.mkdir(parents=True, exist_ok=True)
    git = Git(directory)
    inside = git.ok("rev-parse", "--is-inside-work-tree")
    if not inside:
        git("init", "-q")
    for rel, data in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if rel.endswith((".py", ".sh")) and data.startswith(b"#!"):
            shutil.copymode(__file__, target)
    git("add", "--", *files)
    git("commit", "-q", "-m", f"autoresearch: start from the {template} template", "--", *files)
    return sorted(files)
