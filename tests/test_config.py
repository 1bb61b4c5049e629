"""Config: strict, typed, and every error names the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PREPARE, PROGRAM, TRAIN, make_project

from autoresearch.config import CONFIG_NAME, load
from autoresearch.errors import ConfigError

GOOD = """\
[experiment]
run = "python train.py"
budget_s = 1
editable = ["train.py"]
protected = ["prepare.py"]
"""


def project_with(tmp_path: Path, toml: str) -> Path:
    return make_project(tmp_path / "p", toml=toml, commit=False)


def error_of(tmp_path: Path, toml: str) -> str:
    root = project_with(tmp_path, toml)
    with pytest.raises(ConfigError) as e:
        load(root)
    return str(e.value)


def test_good_config_resolves_defaults(tmp_path):
    cfg = load(project_with(tmp_path, GOOD))
    assert cfg.experiment.run == "python train.py"
    assert cfg.experiment.budget_s == 1.0 and isinstance(cfg.experiment.budget_s, float)
    assert cfg.timeout_s == 2 * 1 + 60  # default: 2 x budget + 60
    assert cfg.metric.name == "val_bpb" and cfg.lower_is_better()
    assert cfg.is_editable("train.py") and not cfg.is_editable("prepare.py")
    assert cfg.is_protected("prepare.py") and cfg.is_protected(CONFIG_NAME)
    snap = cfg.snapshot()
    assert snap["experiment"]["editable"] == ["train.py"] and snap["timeout_s_resolved"] == 62


def test_unknown_key_names_it_and_suggests(tmp_path):
    msg = error_of(tmp_path, GOOD + "budjet_s = 3\n")
    assert "experiment.budjet_s" in msg and "budget_s" in msg and "did you mean" in msg


def test_unknown_key_in_metric_section(tmp_path):
    msg = error_of(tmp_path, GOOD + '[metric]\nname = "score"\ndirecton = "min"\n')
    assert "`metric.directon`" in msg and "did you mean `direction`?" in msg


def test_unknown_section(tmp_path):
    msg = error_of(tmp_path, GOOD + "[experimnet]\nrun = 'x'\n")
    assert "[experimnet]" in msg and "experiment" in msg


def test_wrong_type(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("budget_s = 1", 'budget_s = "five minutes"'))
    assert "experiment.budget_s" in msg and "number" in msg
    msg = error_of(tmp_path, GOOD + "[agent]\nrepair_attempts = 1.5\n")
    assert "agent.repair_attempts" in msg and "whole number" in msg
    msg = error_of(tmp_path, GOOD + "[experiment.x]\n")  # a table where a value belongs
    assert "experiment" in msg


def test_bool_is_not_a_number(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("budget_s = 1", "budget_s = true"))
    assert "experiment.budget_s" in msg


def test_bad_choice(tmp_path):
    msg = error_of(tmp_path, GOOD + '[metric]\ndirection = "down"\n')
    assert "metric.direction" in msg and "'min'" in msg and "'max'" in msg


def test_timeout_must_exceed_budget(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("budget_s = 1", "budget_s = 300\ntimeout_s = 60"))
    assert "experiment.timeout_s" in msg and "experiment.budget_s" in msg and "60" in msg and "300" in msg
    assert "raise timeout_s" in msg
    error_of(tmp_path, GOOD.replace("budget_s = 1", "budget_s = 60\ntimeout_s = 60"))  # equal is wrong too


def test_glob_matching_nothing(tmp_path):
    msg = error_of(tmp_path, GOOD.replace('protected = ["prepare.py"]', 'protected = ["data/*.bin"]'))
    assert "experiment.protected" in msg and "data/*.bin" in msg and "matches no file" in msg
    msg = error_of(tmp_path, GOOD.replace('editable = ["train.py"]', 'editable = ["trian.py"]'))
    assert "experiment.editable" in msg and "trian.py" in msg


def test_missing_run(tmp_path):
    msg = error_of(tmp_path, GOOD.replace('run = "python train.py"\n', ""))
    assert "experiment.run" in msg and "python train.py" in msg


def test_bad_toml(tmp_path):
    msg = error_of(tmp_path, GOOD + "budget_s = = 3\n")
    assert CONFIG_NAME in msg and "not valid TOML" in msg and "line" in msg


def test_editable_and_protected_overlap(tmp_path):
    msg = error_of(tmp_path, GOOD.replace('protected = ["prepare.py"]', 'protected = ["*.py"]'))
    assert "both editable and protected" in msg


def test_bad_pattern(tmp_path):
    assert "metric.pattern" in error_of(tmp_path, GOOD + '[metric]\npattern = "loss=(["\n')
    assert "capture group" in error_of(tmp_path, GOOD + '[metric]\npattern = "loss=[0-9.]+"\n')


def test_missing_program_md(tmp_path):
    root = make_project(tmp_path / "p", toml=GOOD, files={"program.md": None}, commit=False)
    assert "program.md" in str(pytest.raises(ConfigError, load, root).value)


def test_no_config_and_not_the_original_layout(tmp_path):
    root = make_project(tmp_path / "p", files={"autoresearch.toml": None, "prepare.py": None}, commit=False)
    msg = str(pytest.raises(ConfigError, load, root).value)
    assert "autoresearch init" in msg


def test_overrides_from_the_cli(tmp_path):
    cfg = load(project_with(tmp_path, GOOD), {"agent": {"name": "command", "command": "true", "model": None},
                                              "experiment": {"budget_s": 5}})
    assert cfg.agent.name == "command" and cfg.agent.command == "true" and cfg.agent.model == ""
    assert cfg.experiment.budget_s == 5.0


def test_lone_glob_string_is_a_list(tmp_path):
    cfg = load(project_with(tmp_path, GOOD.replace('editable = ["train.py"]', 'editable = "train.py"')))
    assert cfg.experiment.editable == ["train.py"]


def test_zero_config_on_the_original_three_files(tmp_path):
    root = tmp_path / "orig"
    root.mkdir()
    for name, text in (("train.py", TRAIN), ("prepare.py", PREPARE), ("program.md", PROGRAM)):
        (root / name).write_text(text)
    cfg = load(root)
    assert cfg.source == "zero-config"
    assert cfg.experiment.editable == ["train.py"] and cfg.experiment.protected == ["prepare.py"]
    assert cfg.metric.name == "val_bpb" and cfg.metric.direction == "min"
    assert cfg.metric.memory == "peak_vram_mb"
    assert cfg.experiment.budget_s == 300 and cfg.timeout_s == 600
    assert cfg.experiment.run.endswith("train.py")


def test_agent_network_is_auto_true_or_false(tmp_path):
    msg = error_of(tmp_path / "a", GOOD + '[agent]\nnetwork = "yes"\n')
    assert "`agent.network`" in msg and "'yes'" in msg and "network = true" in msg
    cfg = load(project_with(tmp_path / "b", GOOD))
    assert cfg.agent.network == "auto" and cfg.agent.network_for(True) and not cfg.agent.network_for(False)
    cfg = load(project_with(tmp_path / "c", GOOD + "[agent]\nnetwork = false\n"))
    assert not cfg.agent.network_for(True)
    cfg = load(project_with(tmp_path / "d", GOOD + "[agent]\nnetwork = true\n"))
    assert cfg.agent.network_for(False) and cfg.snapshot()["agent"]["network"] is True


def test_globs_are_anchored_at_the_project_root(tmp_path):
    toml = GOOD.replace('editable = ["train.py"]', 'editable = ["train.py", "src/**/*.py"]')
    root = make_project(tmp_path / "p", toml=toml,
                        files={"sub/train.py": "X = 1\n", "src/a.py": "A = 1\n"}, commit=False)
    cfg = load(root)
    assert cfg.is_editable("train.py") and not cfg.is_editable("sub/train.py") and cfg.is_editable("src/a.py")


def test_log_max_mb_defaults_to_32_and_must_be_at_least_1(tmp_path):
    assert load(project_with(tmp_path, GOOD)).experiment.log_max_mb == 32
    msg = error_of(tmp_path / "small", GOOD.replace("budget_s = 1\n", "budget_s = 1\nlog_max_mb = 0.5\n"))
    assert "experiment.log_max_mb" in msg and "at least 1" in msg
    msg = error_of(tmp_path / "text", GOOD.replace("budget_s = 1\n", "budget_s = 1\nlog_max_mb = \"big\"\n"))
    assert "log_max_mb" in msg
