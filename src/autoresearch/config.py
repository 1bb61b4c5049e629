"""autoresearch.toml -> a typed, validated Config.

Guarantees:
- Every key has a default that works, except what only the project can say (the run
  command when there is nothing to infer it from).
- Unknown sections and keys, wrong types, impossible values, missing files and globs
  that match nothing raise ConfigError naming the key, what is wrong, and the fix
  (with a close-match suggestion for typos).
- Zero config: a folder with the original three files (prepare.py, train.py,
  program.md) and no toml gets the original's settings.
- `Config.snapshot()` is the resolved config as plain data; the ledger stores it with
  every run so a result can always be explained.
- A team (`[[agents]]`, `Config.team`): each entry is checked as [agent] is, every key it leaves
  out being [agent]'s; `parallel` is [agent]'s alone. A CLI override of the agent's name, model or
  command replaces the team by [agent] (agents/team.py turns either into researchers).

Not covered here: whether the run command actually works (the judge finds out).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .bounds import check as check_bounds_settings
from .errors import ConfigError
from .globs import matches
from .sandbox import PACKAGE_PREFIX, check_package_pattern
from .sandbox import check_config as check_sandbox_setting
from .workspace import tracked_or_present

CONFIG_NAME = "autoresearch.toml"
ORIGINAL_FILES = ("prepare.py", "train.py", "program.md")


@dataclass
class ExperimentConfig:
    run: str = ""
    budget_s: float = 300.0
    timeout_s: Optional[float] = None  # default: 2 x budget + 60
    grace_s: float = 5.0
    editable: list[str] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    seed: int = 42
    checks: str = ""
    checks_timeout_s: float = 600.0
    checks_retries: int = 1  # a failing check is run again this many times before `checks_failed` (flaky tests)
    env: dict[str, str] = field(default_factory=dict)
    env_allow: list[str] = field(default_factory=list)
    sandbox: str = "auto"  # auto | bwrap | none
    network: bool = False
    hidden: list[str] = field(default_factory=list)  # data the run must not read; the evaluation may
    data: list[str] = field(default_factory=list)  # data outside the project the run may read, never change
    overhead_s: Optional[float] = None  # wall time allowed beyond budget_s; past it the run is a violation
    setup: str = ""  # run once per session before the first run, unsandboxed (e.g. build the data cache)
    setup_timeout_s: float = 3600.0
    log_max_mb: float = 32.0  # each log (run, evaluation, setup, checks) keeps its first and last half of this


@dataclass
class MetricConfig:
    name: str = "val_bpb"
    direction: str = "min"
    pattern: str = ""
    record: list[str] = field(default_factory=list)
    memory: str = "peak_vram_mb"
    floor: Optional[float] = None
    noise: str = "absolute"  # relative: run-to-run noise grows with the value (timings); judged on log scale
    bounds: dict[str, list[str]] = field(default_factory=dict)  # constraints on recorded metrics; guards.py
    command: str = ""  # the evaluation: when set, the metric comes only from its output (see judge.py)
    timeout_s: float = 600.0  # the evaluation's own timeout


@dataclass
class AgentConfig:
    name: str = "auto"  # auto: a configured agent, else an API key in the env, else a CLI on PATH, else mutate
    command: str = ""
    timeout_s: float = 900.0
    repair_attempts: int = 2
    seed: int = 0
    model: str = ""
    base_url: str = ""
    api_key_env: str = ""
    temperature: float = 0.7
    max_output_tokens: int = 8192
    max_usd: float = 0.0
    max_tokens: int = 0
    context_tokens: int = 60000
    allowed_tools: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    prices: dict[str, list[float]] = field(default_factory=dict)
    executable: str = ""  # coding-agent CLIs: the program to run (default: found on PATH)
    max_retries: int = 4  # API agents: retries of one request on 429/5xx/timeouts
    max_reasks: int = 2  # API agents: replies sent back to the model when an edit does not apply
    request_timeout_s: float = 300.0  # API agents: one HTTP request
    network: Any = "auto"  # "auto" | true | false: may a process agent reach the network (see network_for)
    parallel: Any = "auto"  # int >= 1 | "auto": researchers proposing at once ([agent] only; see agents/team.py)

    def network_for(self, default: bool) -> bool:
        """`network` resolved: "auto" is the backend's `default` (API and CLI agents yes, command and mutate no)."""
        return default if self.network == "auto" else bool(self.network)


@dataclass
class PolicyConfig:  # see policy.py, policy_confirm.py and docs/policy.md
    name: str = "auto"  # auto: confirm where noise is measured (calibration_runs >= 2), else greedy
    margin: float = 0.0
    alpha: float = 0.05
    calibration_runs: int = 3
    max_runs: int = 4
    too_good_sigma: float = 8.0
    paired: str = "auto"  # confirm: judge against the incumbent re-run side by side (auto: for relative noise)


@dataclass
class StopConfig:
    max_experiments: int = 0  # 0 = no limit
    max_hours: float = 0.0
    target: Optional[float] = None
    max_consecutive_failures: int = 0


@dataclass
class EngineConfig:  # see engines/ and docs/scale.md
    name: str = "local"  # local | ray | a plugin's name (entry-point group autoresearch.engines)
    workers: int = 1  # experiments at once
    gpus: list[str] = field(default_factory=list)  # local: GPU ids, one per worker (round-robin)
    address: str = ""  # ray: a cluster's address ("auto": the one on this node); "": start a local instance
    proposals_ahead: Optional[int] = None  # ready beyond free slots; None: workers // 4 (>= 1), 0 for 1 local worker
    hardware: str = ""  # the hardware class results are compared within (default: GPU model or CPU)
    reference: str = ""  # two-tier: a win screened on another class is confirmed on this class
    num_cpus: float = 1.0  # ray: CPUs one experiment reserves
    num_gpus: Optional[float] = None  # ray: GPUs one experiment reserves (None: 1 if the cluster has GPUs)
    resources: dict[str, float] = field(default_factory=dict)  # ray: custom resources one experiment reserves
    cache: str = ""  # where each node keeps the project's code and logs (default ~/.cache/autoresearch)


@dataclass
class TrackingConfig:
    mlflow_uri: str = ""  # empty: no MLflow tracking; see tracking.py
    experiment: str = "{project}/{tag}"  # the MLflow experiment of a tag
    artifact_location: str = ""  # default: .autoresearch/mlflow-artifacts for local stores


@dataclass
class TeamEntry:
    """One `[[agents]]` entry: an [agent] table (each key it leaves out is [agent]'s) and its share."""

    agent: AgentConfig
    weight: float = 1.0  # its share of the proposals, relative to the other entries'
    count: int = 1  # researchers made from this entry


TEAM_KEYS = ("weight", "count")  # what an [[agents]] entry has beyond [agent]'s keys
TEAM_ONLY_IN_AGENT = ("parallel",)  # [agent] keys an entry may not set: they belong to the team
TEAM_OVERRIDES = ("name", "model", "command")  # a CLI value for one of these replaces the team by [agent]


SECTIONS: dict[str, type] = {
    "experiment": ExperimentConfig,
    "metric": MetricConfig,
    "agent": AgentConfig,
    "policy": PolicyConfig,
    "stop": StopConfig,
    "engine": EngineConfig,
    "tracking": TrackingConfig,
}

CHOICES = {
    ("metric", "direction"): ("min", "max"),
    ("metric", "noise"): ("absolute", "relative"),
    ("policy", "name"): ("auto", "greedy", "threshold", "confirm"),
    ("policy", "paired"): ("auto", "always", "never"),
    ("experiment", "sandbox"): ("auto", "bwrap", "none"),
}


@dataclass
class Config:
    root: Path
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    team: list[TeamEntry] = field(default_factory=list)  # [[agents]]; empty: the team is [agent] itself
    source: str = "defaults"  # the toml path, or "zero-config"

    @property
    def timeout_s(self) -> float:
        t = self.experiment.timeout_s
        return float(t) if t is not None else 2 * self.experiment.budget_s + 60

    @property
    def program_path(self) -> Path:
        return self.root / "program.md"

    def lower_is_better(self) -> bool:
        return self.metric.direction == "min"

    def is_editable(self, path: str) -> bool:
        return matches(path, self.experiment.editable) and not self.is_protected(path)

    def is_protected(self, path: str) -> bool:
        return matches(path, self.experiment.protected) or path == CONFIG_NAME

    def snapshot(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS} | {
            "agents": [dataclasses.asdict(e.agent) | {"weight": e.weight, "count": e.count} for e in self.team],
            "timeout_s_resolved": self.timeout_s,
            "source": self.source,
        }


def load(root: str | os.PathLike, overrides: Optional[dict[str, dict[str, Any]]] = None) -> Config:
    """Load and validate the project at `root`; `overrides` are CLI values per section."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ConfigError(f"project folder {root} does not exist: create it or pass the right path")
    path = root / CONFIG_NAME
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML ({e}): fix the syntax at that line") from None
        source = str(path)
    elif all((root / f).exists() for f in ORIGINAL_FILES):
        raw = _zero_config()
        source = "zero-config"
    else:
        raise ConfigError(
            f"no {CONFIG_NAME} in {root}: run `autoresearch init --here` to write one, "
            f"or `autoresearch init DIR --template quickstart` to start from a template"
        )
    team = raw.pop("agents", None)
    for section, values in (overrides or {}).items():
        values = {k: v for k, v in values.items() if v is not None}
        raw.setdefault(section, {}).update(values)
        if section == "agent" and any(k in TEAM_OVERRIDES for k in values):
            team = None  # --agent/--model/--agent-command: the run is that one agent, not the configured team
    cfg = Config(root=root, source=source)
    for section, values in raw.items():
        if section not in SECTIONS:
            known = [*SECTIONS, "agents"]
            raise ConfigError(f"unknown section [{section}] in {CONFIG_NAME}{_suggest(section, known)}")
        if not isinstance(values, dict):
            raise ConfigError(f"`{section}` must be a table ([{section}]), got {type(values).__name__}")
        setattr(cfg, section, _build(section, SECTIONS[section], values))
    if team is not None:
        cfg.team = _build_team(team, raw.get("agent") or {})
    _check(cfg)
    return cfg


def _zero_config() -> dict[str, dict[str, Any]]:
    # The original: `uv run train.py`, 5 minute budget, killed past 10 minutes.
    return {
        "experiment": {
            "run": f"{_python()} train.py",
            "budget_s": 300,
            "timeout_s": 600,
            "editable": ["train.py"],
            "protected": ["prepare.py"],
        },
        "metric": {"name": "val_bpb", "direction": "min", "record": ["peak_vram_mb"], "memory": "peak_vram_mb"},
        "policy": {"name": "greedy"},  # the original's rule: one run each, strictly better
    }


def _python() -> str:
    return "python3" if not sys.executable else sys.executable


def _build(section: str, cls: type, values: dict[str, Any]):
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key `{section}.{key}`{_suggest(key, known)}")
        if cls is AgentConfig and key == "network":
            if value not in ("auto", True, False):
                raise ConfigError(f"`{section}.network` must be \"auto\", true or false, got {value!r}: write "
                                  "network = true to let the agent reach the network, false to cut it off")
            kwargs[key] = value
            continue
        if cls is AgentConfig and key == "parallel":
            if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"`{section}.parallel` must be a whole number >= 1 or \"auto\", got {value!r}: "
                                  "write e.g. parallel = 4 (researchers proposing at once), or \"auto\" to size it "
                                  "from the proposal latency, the budget and the workers")
            kwargs[key] = value
            continue
        kwargs[key] = _coerce(f"{section}.{key}", hints[key], value)
        choices = CHOICES.get((section, key))
        if choices and kwargs[key] not in choices:
            raise ConfigError(
                f"`{section}.{key}` must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
    return cls(**kwargs)


def _build_team(team: Any, agent: dict[str, Any]) -> list[TeamEntry]:
    """`[[agents]]` as TeamEntry's: each is [agent] (the raw table, already valid) updated with its own keys."""
    if isinstance(team, dict) or not isinstance(team, list) or not all(isinstance(t, dict) for t in team):
        raise ConfigError("`agents` must be an array of tables: write one [[agents]] (two brackets) per entry, "
                          "e.g. [[agents]] then name = \"codex\" on the next line")
    if not team:
        raise ConfigError("`agents` is empty: add [[agents]] entries, or remove it to run [agent] alone")
    known = {f.name for f in dataclasses.fields(AgentConfig)} - set(TEAM_ONLY_IN_AGENT) | set(TEAM_KEYS)
    out = []
    for i, values in enumerate(team, 1):
        where = f"agents[{i}]"  # entries counted from 1, in file order
        for key in values:
            if key in TEAM_ONLY_IN_AGENT:
                raise ConfigError(f"`{where}.{key}` is the team's, not an entry's: set {key} once in [agent]")
            if key not in known:
                raise ConfigError(f"unknown key `{where}.{key}` (the {_ordinal(i)} [[agents]] entry)"
                                  f"{_suggest(key, known)}")
        weight = values.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
            raise ConfigError(f"`{where}.weight` must be a positive number, got {weight!r}: its share of the "
                              "proposals, e.g. weight = 2 for twice the others' (default 1)")
        count = _coerce(f"{where}.count", int, values.get("count", 1))
        if count < 1:
            raise ConfigError(f"`{where}.count` must be at least 1 (got {count}): the researchers made from this "
                              "entry; remove the entry to have none")
        own = {k: v for k, v in values.items() if k not in TEAM_KEYS}
        out.append(TeamEntry(_build(where, AgentConfig, {**agent, **own}), float(weight), count))
    return out


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _coerce(key: str, typ: Any, value: Any) -> Any:
    origin = get_origin(typ)
    if origin is Optional or (origin is not None and type(None) in get_args(typ)):
        inner = [a for a in get_args(typ) if a is not type(None)][0]
        return None if value is None else _coerce(key, inner, value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{key}` must be a number, got {value!r}: write e.g. {key.split('.')[-1]} = 300")
        return float(value)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{key}` must be a whole number, got {value!r}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{key}` must be true or false, got {value!r}")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{key}` must be a string, got {value!r}: put it in quotes")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [value]  # a lone glob is a list of one: forgiving, not ambiguous
        if not isinstance(value, list):
            raise ConfigError(f"`{key}` must be a list, got {value!r}: write e.g. [\"train.py\"]")
        (inner,) = get_args(typ)
        return [_coerce(f"{key}[{i}]", inner, v) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}` must be a table, got {value!r}")
        _, inner = get_args(typ)
        return {str(k): _coerce(f"{key}.{k}", inner, v) for k, v in value.items()}
    raise AssertionError(f"config type {typ} for {key} not handled")  # harness bug


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f": did you mean `{close[0]}`?" if close else f": known ones are {', '.join(sorted(options))}"


def _check(cfg: Config) -> None:
    e, m = cfg.experiment, cfg.metric
    if not e.run.strip():
        raise ConfigError("`experiment.run` is empty: set the command that runs one experiment, e.g. run = \"python train.py\"")
    if e.budget_s <= 0:
        raise ConfigError(f"`experiment.budget_s` must be positive (got {e.budget_s:g}): e.g. budget_s = 300")
    if e.timeout_s is not None and e.timeout_s <= e.budget_s:
        raise ConfigError(
            f"`experiment.timeout_s` must be greater than `experiment.budget_s` (got {e.timeout_s:g} <= {e.budget_s:g}): "
            "raise timeout_s or lower budget_s"
        )
    if e.grace_s < 0:
        raise ConfigError(f"`experiment.grace_s` must be >= 0 (got {e.grace_s:g})")
    if e.overhead_s is not None and e.overhead_s < 0:
        raise ConfigError(f"`experiment.overhead_s` must be >= 0 (got {e.overhead_s:g}): the seconds a run may take "
                          "beyond budget_s for start-up and saving")
    if not e.log_max_mb >= 1:
        raise ConfigError(f"`experiment.log_max_mb` must be at least 1 (got {e.log_max_mb:g}): the MiB a log keeps "
                          "(its first and last halves), e.g. log_max_mb = 32")
    if m.timeout_s <= 0:
        raise ConfigError(f"`metric.timeout_s` must be positive (got {m.timeout_s:g})")
    check_sandbox_setting(e.sandbox)
    for key in ("hidden", "data"):
        for pat in getattr(e, key):
            if pat.startswith(PACKAGE_PREFIX) and (why := check_package_pattern(pat)):
                raise ConfigError(f"`experiment.{key}` entry {pat!r}: {why}")
    if not e.editable:
        raise ConfigError("`experiment.editable` is empty: list the files an agent may change, e.g. editable = [\"train.py\"]")
    if not m.name.strip():
        raise ConfigError("`metric.name` is empty: name the metric the run prints, e.g. name = \"val_bpb\"")
    if m.pattern:
        import re

        try:
            rx = re.compile(m.pattern)
        except re.error as err:
            raise ConfigError(f"`metric.pattern` is not a valid regular expression ({err})") from None
        if rx.groups < 1:
            raise ConfigError("`metric.pattern` needs one capture group around the number, e.g. 'loss=([0-9.]+)'")
    _check_agent(cfg.agent, "agent")
    for i, entry in enumerate(cfg.team, 1):
        _check_agent(entry.agent, f"agents[{i}]")
    size = sum(e.count for e in cfg.team)
    if cfg.team and cfg.agent.parallel != "auto" and cfg.agent.parallel > size:
        raise ConfigError(f"`agent.parallel` is {cfg.agent.parallel} but [[agents]] makes {size} researcher(s), and "
                          "each proposes one change at a time: raise an entry's `count`, or lower parallel")
    if cfg.engine.workers < 1:
        raise ConfigError(f"`engine.workers` must be at least 1 (got {cfg.engine.workers})")
    if cfg.engine.proposals_ahead is not None and cfg.engine.proposals_ahead < 0:
        raise ConfigError(f"`engine.proposals_ahead` must be >= 0 (got {cfg.engine.proposals_ahead})")
    confirm = cfg.policy.name == "confirm" or (cfg.policy.name == "auto" and cfg.policy.calibration_runs >= 2)
    if confirm and cfg.policy.max_runs < 2:
        raise ConfigError(f"`policy.max_runs` must be at least 2 for the confirm policy (got {cfg.policy.max_runs}): "
                          "it is the most runs one candidate gets, the first included")
    if cfg.policy.calibration_runs < 1:
        raise ConfigError(f"`policy.calibration_runs` must be at least 1 (got {cfg.policy.calibration_runs}): "
                          "e.g. calibration_runs = 3 to measure the noise on three seeds")
    if cfg.policy.too_good_sigma <= 0:
        raise ConfigError(f"`policy.too_good_sigma` must be positive (got {cfg.policy.too_good_sigma:g})")
    if not (0 < cfg.policy.alpha < 0.5):
        raise ConfigError(f"`policy.alpha` must be between 0 and 0.5 (got {cfg.policy.alpha:g})")
    _check_tracking(cfg.tracking)
    check_bounds_settings(cfg)  # metric.bounds, experiment.checks_timeout_s
    files = tracked_or_present(cfg.root)
    _refuse_unmatched(cfg, files)
    for key in ("editable", "protected"):
        for g in getattr(e, key):
            if not any(matches(f, [g]) for f in files):
                raise ConfigError(
                    f"`experiment.{key}` glob {g!r} matches no file in {cfg.root}: fix the pattern or create the file"
                )
    both = [f for f in files if matches(f, e.editable) and matches(f, e.protected)]
    if both:
        raise ConfigError(
            f"{both[0]} is both editable and protected: remove it from `experiment.editable` or `experiment.protected`"
        )
    if not cfg.program_path.exists():
        raise ConfigError(f"program.md is missing in {cfg.root}: write the research direction there in plain English")


def _check_agent(a: AgentConfig, where: str) -> None:
    """The checks of one agent table: [agent] (`where` = "agent") or an [[agents]] entry ("agents[2]")."""
    if a.repair_attempts < 0:
        raise ConfigError(f"`{where}.repair_attempts` must be >= 0")
    for model, pair in a.prices.items():
        if len(pair) != 2 or min(pair) < 0:
            raise ConfigError(f"`{where}.prices.{model}` must be [usd_per_M_input, usd_per_M_output], got {pair}: "
                              f"e.g. prices = {{ \"{model}\" = [3.0, 15.0] }}")
    if a.max_retries < 0 or a.max_reasks < 0:
        raise ConfigError(f"`{where}.max_retries` and `{where}.max_reasks` must be >= 0")
    if a.request_timeout_s <= 0:
        raise ConfigError(f"`{where}.request_timeout_s` must be positive (got {a.request_timeout_s:g})")


def _refuse_unmatched(cfg: Config, files: list[str]) -> None:
    """A pattern that matches no file is a mistake (a typo, a path not from the project folder): refused,
    naming the pattern and, when one exists, the pattern that was probably meant."""
    for key in ("editable", "protected"):
        for g in getattr(cfg.experiment, key):
            if not matching_files(g, files):
                raise ConfigError(f"`experiment.{key}` pattern {g!r} matches no file in {cfg.root}"
                                  f"{unmatched_hint(g, files)}; fix the pattern in {CONFIG_NAME}, or create the file")


def _check_tracking(t: "TrackingConfig") -> None:
    import re

    uri = t.mlflow_uri.strip()
    if uri and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        raise ConfigError(f"`tracking.mlflow_uri` must be an MLflow tracking URI, got {uri!r}: "
                          "e.g. mlflow_uri = \"sqlite:///.autoresearch/mlflow.db\" or \"http://127.0.0.1:5000\"")
    try:
        name = t.experiment.format(tag="TAG", project="PROJECT")
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"`tracking.experiment` {t.experiment!r} has an unknown placeholder ({err}): "
                          "use only {project} and {tag}") from None
    if "TAG" not in name:
        raise ConfigError(f"`tracking.experiment` {t.experiment!r} must contain {{tag}}, so each run's tag gets "
                          "its own MLflow experiment: e.g. experiment = \"{project}/{tag}\"")


def matching_files(pattern: str, files: list[str]) -> list[str]:
    """The files (project paths, posix) that one editable/protected pattern matches; the one matcher."""
    return [f for f in files if matches(f, [pattern])]


def suggest_pattern(pattern: str, files: list[str]) -> str:
    """For a pattern that matches none of `files`: a close one that does, or ''.

    Tried in order: the pattern below a folder (`mistune/*.py` -> `src/mistune/*.py`: patterns start
    at the project folder), then its folder or file name with a typo fixed (`src/mistun/*.py`)."""
    pattern = pattern.strip().lstrip("/")
    folders = sorted({f.rsplit("/", i)[0] for f in files for i in range(1, f.count("/") + 1)},
                     key=lambda d: (d.count("/"), d))
    for d in folders[:200]:
        if matching_files(f"{d}/{pattern}", files):
            return f"{d}/{pattern}"
    head, _, tail = pattern.rpartition("/")
    if head:
        for close in difflib.get_close_matches(head, folders, n=3):
            if matching_files(f"{close}/{tail}", files):
                return f"{close}/{tail}"
    close = difflib.get_close_matches(pattern, files, n=1)
    return close[0] if close else ""


def unmatched_hint(pattern: str, files: list[str]) -> str:
    """`: did you mean '...'?` (saying why when it is the pattern below a folder) for a pattern that
    matches none of `files`; '' when nothing close matches."""
    hint = suggest_pattern(pattern, files)
    if not hint:
        return ""
    below = hint.endswith("/" + pattern.strip().lstrip("/"))
    return f": did you mean {hint!r}?" + (" (patterns start at the project folder)" if below else "")


def describe_patterns(editable: list[str], protected: list[str], files: list[str], shown: int = 4) -> list[str]:
    """One line per pattern: the files it matches (the first `shown`, then a count)."""
    lines = []
    for key, patterns in (("editable", editable), ("protected", protected)):
        for g in patterns:
            hits = matching_files(g, files)
            if not hits:
                lines.append(f"{key:9} {g!r} matches no file")
                continue
            more = f" (+{len(hits) - shown} more)" if len(hits) > shown else ""
            what = f"{len(hits)} files: " if len(hits) > 1 else ""
            lines.append(f"{key:9} {g!r} matches {what}{', '.join(hits[:shown])}{more}")
    lines.append(f"{'protected':9} {CONFIG_NAME} (always)")
    return lines
