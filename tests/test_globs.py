"""The editable/protected pattern matcher: gitignore-style, anchored at the project root."""

from __future__ import annotations

import pytest

from autoresearch.globs import matches


@pytest.mark.parametrize("pattern,path,hit", [
    ("train.py", "train.py", True),
    ("train.py", "sub/train.py", False),  # anchored: fnmatch + Path.match said yes here
    ("/train.py", "train.py", True),
    ("./train.py", "train.py", True),
    ("*.py", "a.py", True),
    ("*.py", "src/a.py", False),  # `*` never crosses `/`
    ("src/*.py", "src/a.py", True),
    ("src/*.py", "src/sub/a.py", False),
    ("src/**/*.py", "src/a.py", True),  # `**/` is zero or more folders
    ("src/**/*.py", "src/x/y/a.py", True),
    ("src/**/*.py", "lib/src/a.py", False),
    ("**/train.py", "train.py", True),
    ("**/train.py", "a/b/train.py", True),
    ("data/**", "data/x.csv", True),
    ("data/**", "data/a/b.csv", True),
    ("data/**", "data", False),
    ("data/**", "database/x", False),
    ("data/", "data/x.csv", True),  # a trailing `/`: the folder and everything below
    ("data/", "data/a/b.csv", True),
    ("data/", "data", False),
    ("lib", "lib/a.py", True),  # a name matching a folder covers what is below (as gitignore)
    ("tr?in.py", "train.py", True),
    ("tr?in.py", "tr/in.py", False),
    ("[ab].py", "a.py", True),
    ("[ab].py", "c.py", False),
    ("[!ab].py", "c.py", True),
    ("[!ab].py", "a.py", False),
    ("x[/]y", "x/y", False),  # a class never matches `/`
    ("a**b.py", "axxb.py", True),  # other runs of stars are plain stars
    ("a**b.py", "ax/b.py", False),
    (r"\*.py", "*.py", True),
    (r"\*.py", "a.py", False),
    ("train.py", "train.pyc", False),
    ("*.md", "program.md", True),
])
def test_matches(pattern, path, hit):
    assert matches(path, [pattern]) is hit, (pattern, path)


def test_any_of_several_patterns():
    assert matches("src/a.py", ["train.py", "src/*.py"])
    assert not matches("sub/train.py", ["train.py", "src/*.py"])
    assert not matches("x.py", [])
