"""The `mutate` agent: an honest non-LLM baseline that perturbs numeric constants."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import make_project

from autoresearch.agents.context import Context, read_files
from autoresearch.agents.mutate import (BASE_STEP, RESTART_AFTER, Constant, MutateAgent, adaptive_step,
                                        find_constants, perturb)
from autoresearch.config import load
from autoresearch.ledger import Experiment

TRAIN = '''\
"""Hyper-parameters at the top, like the original."""
import os

LEARNING_RATE = 0.02
MOMENTUM = 0.9
HIDDEN = 128
BATCH_SIZE = 1_024
WEIGHT_DECAY = 1e-4
BETA2: float = 0.95
SEED = 42
seed_offset = 7
RANDOM_SEED = 3
ZERO = 0
NAME = "spiral"
VERSION = 2

def train():
    lr = 0.5  # indented: not a module-level constant
    return lr
'''


@pytest.fixture
def root(tmp_path):
    return make_project(tmp_path / "p", files={"train.py": TRAIN})


def ctx_for(root: Path, history=(), tag: str = "m") -> Context:
    cfg = load(root)
    hist = list(history)
    keeps = [e for e in hist if e.status == "keep"]
    return Context(cfg=cfg, tag=tag, program="", files=read_files(root, cfg.experiment.editable),
                   readonly={}, history=hist, incumbent=keeps[-1] if keeps else None)


def row(status: str, description: str = "x", kind: str = "candidate", i: int = 0) -> Experiment:
    return Experiment(tag="m", parent="p", commit=f"c{i}", description=description, kind=kind, status=status,
                      metric=1.0 if status in ("keep", "discard") else None, id=i)


def constants(root: Path) -> dict[str, Constant]:
    cfg = load(root)
    return {c.name: c for c in find_constants(root, read_files(root, cfg.experiment.editable))}


def values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if " = " in line and not line.startswith((" ", "#", '"')):
            name, _, value = line.partition(" = ")
            out[name.split(":")[0].strip()] = value.split("#")[0].strip()
    return out


def test_finds_module_level_constants_but_never_seeds(root):
    found = constants(root)
    assert set(found) == {"LEARNING_RATE", "MOMENTUM", "HIDDEN", "BATCH_SIZE", "WEIGHT_DECAY", "BETA2"}
    assert found["HIDDEN"].is_int and found["BATCH_SIZE"].is_int and found["BATCH_SIZE"].value == 1024
    assert not found["WEIGHT_DECAY"].is_int and found["WEIGHT_DECAY"].value == 1e-4
    assert not found["MOMENTUM"].is_int


def test_finds_key_value_lines_in_config_files(tmp_path):
    root = make_project(tmp_path / "p", files={"conf.yaml": "lr: 0.01\nlayers: 4\nrandom_seed: 1\nname: x\n"})
    (root / "autoresearch.toml").write_text((root / "autoresearch.toml").read_text()
                                            .replace('editable = ["train.py"]', 'editable = ["conf.yaml"]'))
    found = constants(root)
    assert set(found) == {"lr", "layers"}


def test_proposals_change_one_constant_and_never_a_seed(root):
    agent = MutateAgent(load(root))
    history = [row("keep", "baseline", kind="baseline", i=1)]
    original = values(TRAIN)
    for i in range(40):
        ctx = ctx_for(root, history)
        p = agent.propose(ctx, root)
        assert not p.error, p.error
        now = values((root / "train.py").read_text())
        for name in ("SEED", "seed_offset", "RANDOM_SEED", "ZERO", "NAME", "VERSION"):
            assert now[name] == original[name], name
        assert "lr = 0.5" in (root / "train.py").read_text()
        changed = [k for k in now if now[k] != original[k]]
        if not p.description.startswith("restart:"):
            assert len(changed) == 1 and p.description.startswith(changed[0] + " "), (changed, p.description)
        history.append(row("discard", p.description, i=i + 2))
        (root / "train.py").write_text(TRAIN)  # the loop resets the worktree to the incumbent


def test_never_repeats_a_description(root):
    agent = MutateAgent(load(root))
    history = [row("keep", "baseline", kind="baseline", i=1)]
    seen = set()
    for i in range(60):
        p = agent.propose(ctx_for(root, history), root)
        assert not p.error
        key = " ".join(p.description.lower().split())
        assert key not in seen, f"repeated: {p.description}"
        seen.add(key)
        history.append(row("discard" if i % 3 else "crash", p.description, i=i + 2))
        (root / "train.py").write_text(TRAIN)


def test_ints_stay_ints_and_momentum_stays_below_one():
    rng = random.Random(0)
    hidden = Constant("train.py", 0, "HIDDEN", "128", True)
    small = Constant("train.py", 0, "LAYERS", "2", True)
    momentum = Constant("train.py", 0, "MOMENTUM", "0.9", False)
    beta = Constant("train.py", 0, "BETA2", "0.999", False)
    frac = Constant("train.py", 0, "WARMDOWN", "0.2", False)
    for _ in range(500):
        for c in (hidden, small):
            new = perturb(c, rng, 1.5)
            assert new.lstrip("-").isdigit() and int(new) >= 1 and new != c.text
        for c in (momentum, beta):
            assert 0 < float(perturb(c, rng, 1.5)) < 1
        assert 0 < float(perturb(frac, rng, 1.5)) < 1
    assert float(perturb(Constant("t", 0, "WD", "1e-4", False), rng, 0.3)) > 0
    for _ in range(200):  # tiny steps near 1 must not round up to 1.0
        assert float(perturb(Constant("t", 0, "BETA2", "0.99995", False), rng, 0.01)) < 1


def test_adaptive_step_shrinks_after_misses_and_grows_after_keeps(root):
    base = [row("keep", "baseline", kind="baseline", i=1)]
    fresh = adaptive_step(ctx_for(root, base))
    assert fresh == BASE_STEP
    misses = [adaptive_step(ctx_for(root, base + [row("discard", f"d{i}", i=i) for i in range(n)]))
              for n in (1, 3, 6, 10)]
    assert misses == sorted(misses, reverse=True) and misses[-1] < fresh / 2
    wins = adaptive_step(ctx_for(root, base + [row("keep", f"k{i}", i=i) for i in range(5)]))
    assert wins > fresh


def test_random_restart_after_a_long_dry_spell(root):
    agent = MutateAgent(load(root))
    history = [row("keep", "baseline", kind="baseline", i=1)] + \
        [row("discard", f"d{i}", i=i + 2) for i in range(RESTART_AFTER)]
    p = agent.propose(ctx_for(root, history), root)
    assert p.description.startswith("restart: ") and p.description.count("->") >= 2
    changed = [k for k, v in values((root / "train.py").read_text()).items() if values(TRAIN)[k] != v]
    assert len(changed) >= 2


def test_same_history_same_proposal(root, tmp_path):
    other = make_project(tmp_path / "q", files={"train.py": TRAIN})
    history = [row("keep", "baseline", kind="baseline", i=1), row("discard", "x", i=2)]
    a = MutateAgent(load(root)).propose(ctx_for(root, history), root)
    b = MutateAgent(load(other)).propose(ctx_for(other, history), other)
    assert a.description == b.description  # stateless: a resume proposes as the first session would
    assert (root / "train.py").read_text() == (other / "train.py").read_text()


def test_no_constants_is_a_stop_reason_not_an_exception(tmp_path):
    """Nothing to change is said as a stop reason (issue 13: was an `error`, recorded as a crash)."""
    root = make_project(tmp_path / "p", files={"train.py": "print('score: 1')\n"})
    p = MutateAgent(load(root)).propose(ctx_for(root), root)
    assert not p.error and "no module-level `NAME = number`" in p.stop


LOCALS = '''\
"""A module whose docstring shows an example:
x = 1
"""
LR = 0.01


def step(v):
    x = 1
    use_length = 4
    return v * x * use_length
'''

ONLY_LOCALS = '''\
def render(text):
    use_length = 1
    return text * use_length
'''


def test_only_module_level_constants_are_touched(tmp_path):
    """The README's promise: module-level `NAME = number`, never a function's local variable nor a
    docstring line. Before, a file with no module-level constant had its locals perturbed
    (`use_length = 1 -> 4`: a null change that a noisy run kept), and the docstring's `x = 1` matched."""
    root = make_project(tmp_path / "p", files={"train.py": LOCALS, "helpers.py": ONLY_LOCALS})
    toml = (root / "autoresearch.toml").read_text()
    (root / "autoresearch.toml").write_text(toml.replace('editable = ["train.py"]',
                                                         'editable = ["train.py", "helpers.py"]'))
    assert [(c.path, c.name, c.line) for c in constants(root).values()] == [("train.py", "LR", 3)]
    agent = MutateAgent(load(root))
    history = [row("keep", "baseline", kind="baseline", i=1)]
    for i in range(30):
        p = agent.propose(ctx_for(root, history), root)
        assert not p.error and not p.stop, (p.error, p.stop)
        assert p.description.removeprefix("restart: ").startswith("LR 0.01 -> "), p.description
        text = (root / "train.py").read_text()
        assert text.replace(text.splitlines()[3], "LR = 0.01") == LOCALS  # only that line changed
        assert (root / "helpers.py").read_text() == ONLY_LOCALS
        history.append(row("discard", p.description, i=i + 2))
        (root / "train.py").write_text(LOCALS)


def test_no_module_level_constant_is_a_stop_not_a_crash(tmp_path):
    root = make_project(tmp_path / "p", files={"train.py": ONLY_LOCALS})
    p = MutateAgent(load(root)).propose(ctx_for(root, [row("keep", "baseline", kind="baseline", i=1)]), root)
    assert not p.error and "no module-level `NAME = number`" in p.stop and "train.py" in p.stop
    assert (root / "train.py").read_text() == ONLY_LOCALS


def test_exhausted_nearby_changes_restart_boldly_then_stop(tmp_path):
    """When every nearby change was tried the next proposal is a bold restart; when those are used up
    too, the agent says so as a stop reason (never an error, which the loop records as a crash)."""
    root = make_project(tmp_path / "p", files={"train.py": "N = 1\nprint('score: 1.0')\n"})
    agent = MutateAgent(load(root))
    history = [row("keep", "baseline", kind="baseline", i=1), row("discard", "N 1 -> 2", i=2),
               row("discard", "N 1 -> 3", i=3)]
    p = agent.propose(ctx_for(root, history), root)
    assert p.description.startswith("restart: N 1 -> ") and "every nearby change" in p.rationale
    (root / "train.py").write_text("N = 1\nprint('score: 1.0')\n")
    tried = history + [row("discard", f"{pre}N 1 -> {k}", i=10 + k) for pre in ("", "restart: ")
                       for k in range(2, 5000)]
    p = agent.propose(ctx_for(root, tried), root)
    assert not p.error and not p.description and "run out of new changes" in p.stop


def test_loop_stops_when_mutate_runs_out_of_ideas(tmp_path):
    """End to end: mutate on a file with one small integer runs out; the run stops with that reason
    and records no crash, no row without a description. Control: the same stop as an `error` (what
    mutate returned before) makes `crash` rows with "(no description)"."""
    from autoresearch.agents.base import Proposal
    from autoresearch.driver import Driver, Limits

    from conftest import rows_of

    train = "N = 1\nprint('score: 1.0')\n"
    root = make_project(tmp_path / "p", files={"train.py": train})
    out = Driver(load(root), "m", MutateAgent(load(root)), limits=Limits(max_experiments=200)).run()
    rows = rows_of(root, "m")
    assert "run out of new changes" in out.stop_reason, out.stop_reason
    assert 1 < len(rows) < 200 and all(e.status in ("keep", "discard") for e in rows), \
        [(e.status, e.description) for e in rows]
    assert all(e.description and e.description != "(no description)" for e in rows)

    class AsError(MutateAgent):  # the control: running out reported the old way
        def propose(self, ctx, workdir):
            p = super().propose(ctx, workdir)
            return Proposal("", error=p.stop) if p.stop else p

    root2 = make_project(tmp_path / "q", files={"train.py": train})
    out2 = Driver(load(root2), "m", AsError(load(root2)), limits=Limits(max_experiments=len(rows) + 2)).run()
    assert ("crash", "(no description)") in [(e.status, e.description) for e in rows_of(root2, "m")]
    assert "run out" not in out2.stop_reason


def test_scheduler_drains_and_stops_when_mutate_runs_out_of_ideas(tmp_path):
    """With two workers the stop is a drain: what is in flight finishes and is recorded, nothing crashes."""
    from conftest import assert_consistent, rows_of

    from autoresearch.driver import Driver, Limits

    root = make_project(tmp_path / "p", files={"train.py": "N = 1\nprint('score: 1.0')\n"},
                        extra_toml="[engine]\nworkers = 2\n")
    out = Driver(load(root), "m", MutateAgent(load(root)), limits=Limits(max_experiments=200)).run()
    rows = rows_of(root, "m")
    assert "run out of new changes" in out.stop_reason, out.stop_reason
    assert 1 < len(rows) < 200 and all(e.status in ("keep", "discard") for e in rows), \
        [(e.status, e.reason) for e in rows]
    assert_consistent(root, "m")
