"""A team of researchers: `[agent] parallel` and `[[agents]]` in the config, and agents/team.py's members().

Every validation error names the key (an entry counted from 1) and the fix; members() gives each
researcher its label, its own config (inherited from [agent], `auto` resolved per entry) and weight;
the CLI's --agent/--model replaces a declared team by one entry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_project

from autoresearch import agents
from autoresearch.agents.team import describe, label, members
from autoresearch.config import load
from autoresearch.errors import ConfigError

GOOD = """\
[experiment]
run = "python train.py"
budget_s = 1
editable = ["train.py"]
protected = ["prepare.py"]
"""

TEAM = GOOD + """
[agent]
name = "mutate"
max_usd = 5.0
timeout_s = 100
parallel = 4

[[agents]]
name = "claude-code"
model = "sonnet"
count = 2
max_usd = 20.0

[[agents]]
name = "codex"
weight = 0.5

[[agents]]
weight = 2
"""


def project_with(tmp_path: Path, toml: str) -> Path:
    return make_project(tmp_path / "p", toml=toml, commit=False)


def error_of(tmp_path: Path, toml: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(project_with(tmp_path, toml))
    return str(e.value)


# -- the config ---------------------------------------------------------------------------------------
def test_parallel_defaults_to_auto_and_takes_a_whole_number(tmp_path):
    assert load(project_with(tmp_path, GOOD)).agent.parallel == "auto"
    cfg = load(project_with(tmp_path / "b", GOOD + "[agent]\nparallel = 3\n"))
    assert cfg.agent.parallel == 3 and cfg.team == []
    assert cfg.snapshot()["agent"]["parallel"] == 3 and cfg.snapshot()["agents"] == []


@pytest.mark.parametrize("value", ["0", "-2", "2.5", "true", '"many"', '"Auto"'])
def test_parallel_refuses_anything_but_a_positive_whole_number_or_auto(tmp_path, value):
    msg = error_of(tmp_path, GOOD + f"[agent]\nparallel = {value}\n")
    assert "`agent.parallel`" in msg and 'or "auto"' in msg and "parallel = 4" in msg


def test_a_team_inherits_agent_keys_and_keeps_its_own(tmp_path):
    cfg = load(project_with(tmp_path, TEAM))
    assert [(e.agent.name, e.agent.model, e.weight, e.count) for e in cfg.team] == [
        ("claude-code", "sonnet", 1.0, 2), ("codex", "", 0.5, 1), ("mutate", "", 2.0, 1)]
    assert [e.agent.max_usd for e in cfg.team] == [20.0, 5.0, 5.0]  # an entry's own cap, else [agent]'s
    assert all(e.agent.timeout_s == 100 for e in cfg.team)
    assert isinstance(cfg.team[2].weight, float)
    snap = cfg.snapshot()["agents"]  # the session's record says who the team was
    assert [(a["name"], a["model"], a["weight"], a["count"], a["max_usd"]) for a in snap] == [
        ("claude-code", "sonnet", 1.0, 2, 20.0), ("codex", "", 0.5, 1, 5.0), ("mutate", "", 2.0, 1, 5.0)]


def test_an_unknown_key_in_an_entry_names_the_entry_and_suggests(tmp_path):
    msg = error_of(tmp_path, GOOD + '[[agents]]\nname = "mutate"\n[[agents]]\nname = "codex"\nwieght = 2\n')
    assert "`agents[2].wieght`" in msg and "2nd [[agents]] entry" in msg and "did you mean `weight`?" in msg
    msg = error_of(tmp_path, GOOD + '[[agents]]\nmodle = "x"\n')
    assert "`agents[1].modle`" in msg and "did you mean `model`?" in msg


def test_parallel_belongs_to_agent_not_to_an_entry(tmp_path):
    msg = error_of(tmp_path, GOOD + "[[agents]]\nparallel = 2\n")
    assert "`agents[1].parallel`" in msg and "set parallel once in [agent]" in msg


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", '"heavy"', "true"])
def test_weight_must_be_a_positive_number(tmp_path, value):
    msg = error_of(tmp_path, GOOD + f"[[agents]]\nweight = {value}\n")
    assert "`agents[1].weight`" in msg and ("positive" in msg or "number" in msg)


@pytest.mark.parametrize("value", ["0", "-3", "1.5", '"two"'])
def test_count_must_be_a_whole_number_of_at_least_one(tmp_path, value):
    msg = error_of(tmp_path, GOOD + f"[[agents]]\ncount = {value}\n")
    assert "`agents[1].count`" in msg and ("at least 1" in msg or "whole number" in msg)


def test_an_entry_is_checked_like_agent(tmp_path):
    msg = error_of(tmp_path, GOOD + '[[agents]]\nname = "mutate"\n[[agents]]\nmodel = 3\n')
    assert "`agents[2].model`" in msg and "string" in msg
    msg = error_of(tmp_path, GOOD + "[[agents]]\nrepair_attempts = -1\n")
    assert "`agents[1].repair_attempts`" in msg
    msg = error_of(tmp_path, GOOD + '[[agents]]\nprices = { "m" = [1.0] }\n')
    assert "`agents[1].prices.m`" in msg and "[3.0, 15.0]" in msg
    msg = error_of(tmp_path, GOOD + '[[agents]]\nnetwork = "sometimes"\n')
    assert "`agents[1].network`" in msg


def test_agents_must_be_an_array_of_tables(tmp_path):
    msg = error_of(tmp_path, GOOD + '[agents]\nname = "codex"\n')
    assert "`agents` must be an array of tables" in msg and "[[agents]]" in msg
    msg = error_of(tmp_path, "agents = []\n" + GOOD)
    assert "`agents` is empty" in msg


def test_parallel_beyond_the_team_is_refused(tmp_path):
    msg = error_of(tmp_path, GOOD + '[agent]\nparallel = 5\n[[agents]]\nname = "mutate"\ncount = 4\n')
    assert "`agent.parallel` is 5" in msg and "4 researcher(s)" in msg and "count" in msg
    cfg = load(project_with(tmp_path / "ok", GOOD + '[agent]\nparallel = 4\n[[agents]]\nname = "mutate"\ncount = 4\n'))
    assert cfg.agent.parallel == 4


def test_a_typo_of_the_section_suggests_agents(tmp_path):
    msg = error_of(tmp_path, GOOD + "[[agnets]]\nname = 'x'\n")
    assert "agnets" in msg and "agents" in msg


# -- members() ----------------------------------------------------------------------------------------
def test_members_labels_inheritance_count_and_weight(tmp_path):
    cfg = load(project_with(tmp_path, TEAM))
    team = members(cfg)
    assert [m.label for m in team] == ["claude-code:sonnet#1", "claude-code:sonnet#2", "codex#3", "mutate#4"]
    assert [m.weight for m in team] == [1.0, 1.0, 0.5, 2.0]
    assert [m.cfg.agent.max_usd for m in team] == [20.0, 20.0, 5.0, 5.0]
    assert [m.cfg.agent.name for m in team] == [m.backend for m in team] == ["claude-code"] * 2 + ["codex", "mutate"]
    assert all(m.cfg.experiment.run == "python train.py" and m.cfg.root == cfg.root for m in team)
    team[0].cfg.agent.max_usd = 99.0  # each researcher has its own copy of the config
    team[0].cfg.experiment.budget_s = 7.0
    assert team[1].cfg.agent.max_usd == 20.0 and cfg.team[0].agent.max_usd == 20.0
    assert cfg.experiment.budget_s == 1.0 and team[1].cfg.experiment.budget_s == 1.0
    assert [d["label"] for d in describe(team)] == [m.label for m in team]
    assert describe(team)[0] | {"reason": ""} == {"label": "claude-code:sonnet#1", "backend": "claude-code",
                                                 "model": "sonnet", "weight": 1.0, "reason": ""}


def test_a_member_builds_its_agent(tmp_path):
    cfg = load(project_with(tmp_path, GOOD + '[[agents]]\nname = "mutate"\nseed = 3\n[[agents]]\nname = "mutate"\n'
                                             'seed = 9\n'))
    team = members(cfg)
    built = [agents.create(m.cfg.agent.name, m.cfg) for m in team]
    assert [type(a).__name__ for a in built] == ["MutateAgent", "MutateAgent"]
    assert [m.cfg.agent.seed for m in team] == [3, 9]


def test_without_agents_the_team_is_agent_replicated_to_parallel(tmp_path):
    cfg = load(project_with(tmp_path, GOOD + '[agent]\nname = "codex"\nmodel = "gpt-5"\nparallel = 3\n'))
    assert [m.label for m in members(cfg)] == ["codex:gpt-5#1"]  # parallel not given: one
    team = members(cfg, parallel=3)
    assert [m.label for m in team] == ["codex:gpt-5#1", "codex:gpt-5#2", "codex:gpt-5#3"]
    assert all(m.weight == 1.0 and m.cfg.agent.model == "gpt-5" for m in team)
    assert len({id(m.cfg) for m in team}) == 3
    with pytest.raises(ValueError):
        members(cfg, parallel=0)


def test_a_declared_team_is_not_replicated(tmp_path):
    cfg = load(project_with(tmp_path, TEAM))
    assert [m.label for m in members(cfg, parallel=4)] == [m.label for m in members(cfg)]


def test_auto_is_resolved_per_entry(tmp_path, monkeypatch):
    # One entry names its backend; the other says `auto`, which select.choose() resolves: with no key and
    # no CLI on PATH that is `mutate`, with a `codex` on PATH it is codex.
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    cfg = load(project_with(tmp_path, GOOD + '[[agents]]\nname = "codex"\n[[agents]]\nmodel = "m1"\n'))
    team = members(cfg)
    assert [m.label for m in team] == ["codex#1", "mutate:m1#2"] and "offline baseline" in team[1].reason
    assert cfg.team[1].agent.name == "auto"  # resolved on the member's copy, not in cfg
    fake = bin_dir / "codex"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    team = members(cfg)
    assert [m.label for m in team] == ["codex#1", "codex:m1#2"] and str(fake) in team[1].reason


def test_cli_agent_or_model_replaces_the_team_by_one_entry(tmp_path):
    root = project_with(tmp_path, TEAM)
    for override in ({"name": "mutate"}, {"model": "opus"}, {"command": "true"}):
        cfg = load(root, {"agent": {"name": None, "model": None, "command": None} | override})
        assert cfg.team == [] and cfg.snapshot()["agents"] == []
        assert len(members(cfg)) == 1 and cfg.agent.parallel == 4
    cfg = load(root, {"agent": {"name": "mutate"}})
    assert [m.label for m in members(cfg, parallel=2)] == ["mutate#1", "mutate#2"]
    cfg = load(root, {"agent": {"name": None, "model": None}})  # no value given: the team stands
    assert len(cfg.team) == 3


def test_label():
    assert label("claude-code", "sonnet", 1) == "claude-code:sonnet#1" and label("mutate", "", 3) == "mutate#3"


def test_the_documented_team_loads_as_documented(tmp_path):
    # docs/agents.md's example team is a config that loads, and its researchers are named as the page says.
    doc = (Path(__file__).resolve().parents[1] / "docs" / "agents.md").read_text()
    section = doc[doc.index("## A team of researchers"):]
    example = section[section.index("```toml\n") + 8:section.index("```\n", section.index("```toml\n") + 8)]
    cfg = load(project_with(tmp_path, GOOD + example))
    assert [m.label for m in members(cfg)] == ["claude-code:sonnet#1", "claude-code:sonnet#2", "codex#3", "mutate#4"]
    assert [m.weight for m in members(cfg)] == [1.0, 1.0, 1.0, 0.5] and cfg.agent.parallel == 4
    assert [m.cfg.agent.max_usd for m in members(cfg)] == [20.0, 20.0, 10.0, 10.0]
    for label in ("claude-code:sonnet#1", "codex#3", "mutate#4"):
        assert label in section
