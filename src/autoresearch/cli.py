"""The command line: parses, calls, prints. Errors become one-line messages here only.

Verbs: init, run, experiment, status, results, diff, report, watch, pause, resume,
finalize, confirm, launch, ledger (verify | accept). Each reading verb has
`--json` for machines. Exit codes: 0 success (a run stopped by Ctrl-C included),
1 a user-fixable error (the message says the fix), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from . import __version__
from .config import Config, load
from .errors import AutoresearchError
from .cli_results import (cmd_diff, cmd_ledger, cmd_report, cmd_results, cmd_status, cmd_watch, open_ledger, pick_tag,
                          print_json, project_root, write_report)
from .layout import Layout
from .ledger import Ledger


def main(argv: Optional[list[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except AutoresearchError as e:
        print(f"autoresearch: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("autoresearch: interrupted", file=sys.stderr)
        return 0


def _swarm(args) -> int:
    from . import swarm

    root = project_root(args)
    if args.action == "init":
        if not args.hub:
            raise AutoresearchError("swarm init needs the hub: `autoresearch swarm init <git URL or path>`")
        s = swarm.init(root, args.hub, args.name, args.sync, args.hardware, rejoin=args.rejoin)
        print(f"joined the swarm at {s.hub} as {s.name} (settings: {Layout(root).swarm_settings}); `autoresearch run` "
              "now shares its results and adopts the others' after measuring them here")
        return 0
    ledger = open_ledger(root)
    st = swarm.status(root, pick_tag(ledger, args.tag), ledger)
    if args.json:
        print_json(st)
    else:
        print(swarm.render(st))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoresearch", description="A research loop owned by the harness.")
    p.add_argument("--version", action="version", version=f"autoresearch {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    def cmd(name: str, func, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        sp.add_argument("-C", "--project", default=".", help="the research project folder (default: here)")
        return sp

    sp = cmd("init", _init, "make a research project from a template, or (--here) from the repository you are in")
    sp.add_argument("directory", nargs="?", help="folder to create (or an empty one)")
    sp.add_argument("--template", help="quickstart | gpt | perf | prompt | blank (default: quickstart)")
    sp.add_argument("--here", action="store_true", help="write autoresearch.toml for this git repository, checked "
                    "by running the command once; missing flags are asked for on a terminal")
    sp.add_argument("--run", help="--here: the command of one experiment")
    sp.add_argument("--editable", action="append", default=[], help="--here: a glob the agent may change (repeat)")
    sp.add_argument("--protected", action="append", default=[], help="--here: a glob never changed (repeat)")
    sp.add_argument("--metric", help="--here: the metric the run prints as `name: value`")
    sp.add_argument("--direction", help="--here: min or max")
    sp.add_argument("--budget", type=float, help="--here: seconds per experiment (default 300)")
    sp.add_argument("--checks", help="--here: a guard command that must pass before a keep (e.g. the tests)")

    sp = cmd("run", _run, "run the research loop (Ctrl-C stops cleanly; run again to resume)")
    sp.add_argument("--tag", help="the run's name; branch autoresearch/<tag> (default: today, e.g. nov25)")
    sp.add_argument("--agent", help="agent backend (overrides agent.name)")
    sp.add_argument("--agent-command", help="shell command for --agent command")
    sp.add_argument("--model", help="model name for API agents")
    sp.add_argument("--policy", help="auto | greedy | threshold | confirm")
    sp.add_argument("--max-experiments", type=int, help="stop after this many experiments (baseline excluded)")
    sp.add_argument("--max-hours", type=float, help="stop after this many hours")
    sp.add_argument("--target", type=float, help="stop once the best metric reaches this value")
    sp.add_argument("--budget", type=float, help="override experiment.budget_s")
    sp.add_argument("--no-live", action="store_true", help="plain lines instead of the live view")
    sp.add_argument("--workers", type=int, help="experiments at once (overrides engine.workers)")
    sp.add_argument("--engine", help="local | ray (overrides engine.name)")
    sp.add_argument("--address", help="a Ray cluster's address, or auto (overrides engine.address)")

    sp = cmd("experiment", _experiment, "tool mode: judge the uncommitted change to the editable files")
    sp.add_argument("-m", "--message", required=True, help="what this change tries")
    sp.add_argument("--tag")
    sp.add_argument("--json", action="store_true")

    sp = cmd("status", cmd_status, "best result, counts, keep rate, cost, time")
    sp.add_argument("--tag")
    sp.add_argument("--json", action="store_true")

    sp = cmd("ledger", cmd_ledger, "verify: check the ledger's seal chain (names rows changed outside autoresearch); "
                                     "accept: seal a tag's rows as they are now, your decision after a break")
    sp.add_argument("action", choices=("verify", "accept"))
    sp.add_argument("--tag")
    sp.add_argument("--json", action="store_true")

    sp = cmd("results", cmd_results, "every experiment of a run")
    sp.add_argument("--tag")
    fmt = sp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--tsv", action="store_true")

    sp = cmd("diff", cmd_diff, "the change an experiment made")
    sp.add_argument("id", type=int)
    sp.add_argument("--tag", help="the run the experiment belongs to (default: any)")

    sp = cmd("report", cmd_report, "write progress.png and report.md (or one self-contained report.html)")
    sp.add_argument("--tag")
    sp.add_argument("--out", help="folder to write to (default: the project folder)")
    sp.add_argument("--html", action="store_true", help="write report.html: chart, filterable table, kept diffs")

    sp = cmd("watch", cmd_watch, "follow a running loop from another terminal (read-only; Ctrl-C leaves)")
    sp.add_argument("--tag")
    sp.add_argument("--plain", action="store_true", help="plain lines instead of the live view")
    sp.add_argument("--once", action="store_true", help="print one snapshot and exit")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between looks at the ledger (default 1)")

    for name, func, help in (("pause", _pause, "pause a loop once the experiment in flight is recorded"),
                             ("resume", _resume, "let a paused loop go on")):
        sp = cmd(name, func, help)
        sp.add_argument("--tag")

    sp = cmd("finalize", _finalize, "make a clean branch with one commit per surviving improvement, and a PR summary")
    sp.add_argument("--tag")
    sp.add_argument("--branch", help="the branch to create (default: autoresearch/<tag>-final)")
    sp.add_argument("--summary", help="where to write the summary (default: .autoresearch/finalize/<tag>.md)")
    sp.add_argument("--force", action="store_true", help="replace the branch if it exists, and finalize even an "
                    "improvement `confirm` refuted (the summary then says so)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("confirm", _confirm, "re-run the starting point and the best on fresh seeds: the improvement with "
                                  "a confidence interval")
    sp.add_argument("--tag")
    sp.add_argument("--runs", type=int, default=5, help="fresh runs of each (default: 5)")
    sp.add_argument("--json", action="store_true")

    sp = cmd("swarm", _swarm, "init: join (or start) a swarm whose hub is a git remote; status: participants, "
                              "bests per hardware class, frontier, reputation, how ideas spread")
    sp.add_argument("action", choices=("init", "status"))
    sp.add_argument("hub", nargs="?", help="init: a git URL or path (e.g. a bare repository, git@github.com:o/r.git)")
    sp.add_argument("--name", default="", help="init: this participant's name on the hub (default: user@host)")
    sp.add_argument("--sync", type=float, default=60.0, help="init: seconds between syncs (default 60)")
    sp.add_argument("--hardware", default="", help="init: the hardware class (default: engine.hardware or the machine)")
    sp.add_argument("--rejoin", action="store_true", help="init: continue a name that already publishes on the hub")
    sp.add_argument("--tag")
    sp.add_argument("--json", action="store_true")

    sp = cmd("launch", _launch, "write (and with --up run) a SkyPilot task: the loop on N GPU nodes with Ray")
    sp.add_argument("--tag", help="the run's name (default: today)")
    sp.add_argument("--nodes", type=int, default=2, help="nodes to bring up (default 2)")
    sp.add_argument("--gpus", default="H100:1", help="accelerators per node, SkyPilot style (default H100:1; "
                                                     "'' for CPU nodes)")
    sp.add_argument("--cloud", default="", help="a cloud or kubernetes (default: SkyPilot picks)")
    sp.add_argument("--spot", action="store_true", help="use spot instances")
    sp.add_argument("--workers", type=int, help="experiments at once (default: nodes x GPUs per node)")
    sp.add_argument("--max-hours", type=float)
    sp.add_argument("--max-experiments", type=int)
    sp.add_argument("--agent", default="", help="agent backend on the cluster (default: the project's)")
    sp.add_argument("--secret", action="append", default=[], metavar="NAME",
                    help="an environment variable the agent needs (e.g. ANTHROPIC_API_KEY); repeatable")
    sp.add_argument("--install", help="what the nodes pip-install (default: autoresearch[ray] of this version)")
    sp.add_argument("--cluster", default="", help="cluster name (default: autoresearch-<tag>)")
    sp.add_argument("--out", help="where to write the task file (default: .autoresearch/launch/<tag>.sky.yaml)")
    sp.add_argument("--up", action="store_true", help="run `sky launch`, then copy the results back")
    sp.add_argument("--down", action="store_true", help="with --up: tear the cluster down afterwards")
    sp.add_argument("--pull", action="store_true", help="only copy a cluster's results back")
    return p


def _init(args) -> int:
    from .scaffold import init_project

    if args.here:
        return _init_here(args)
    here_only = [f"--{k}" for k in ("run", "metric", "direction", "budget", "checks", "editable", "protected")
                 if getattr(args, k) not in (None, [])]
    if here_only:
        raise AutoresearchError(f"{', '.join(here_only)} only go with --here: add --here, or drop them")
    args.template = args.template or "quickstart"
    directory = Path(args.directory or args.project)
    files = init_project(directory, args.template)
    print(f"autoresearch: made a {args.template} project in {directory.resolve()} ({', '.join(files)})")
    print(f"next: cd {directory} && autoresearch run")
    return 0


def _init_here(args) -> int:
    from .setup_here import Answers, init_here, tty_ask

    if args.directory or args.template:
        raise AutoresearchError("--here sets up the repository you are in: drop DIRECTORY/--template "
                                "(or use -C to point at the project folder)")
    answers = Answers(run=args.run, editable=args.editable, protected=args.protected, metric=args.metric,
                      direction=args.direction, budget=args.budget, checks=args.checks)
    done = init_here(project_root(args), answers, ask=tty_ask if sys.stdin.isatty() else None)
    print(f"autoresearch: wrote and committed {', '.join(done.files)} ({done.commit[:7]})")
    print("next: autoresearch run")
    return 0


def _run(args) -> int:
    from . import agents
    from .live import make_reporter
    from .driver import Driver, Limits
    from .workspace import default_tag

    root = project_root(args)
    overrides = {
        "agent": {"name": args.agent, "command": args.agent_command, "model": args.model},
        "policy": {"name": args.policy},
        "experiment": {"budget_s": args.budget},
        "engine": {"workers": args.workers, "name": args.engine, "address": args.address},
    }
    if args.budget is not None:
        # A --budget past the configured timeout_s moves the timeout with it (the default: 2 x budget + 60);
        # decided before validation, which would otherwise refuse timeout_s <= budget_s.
        base = load(root, {k: v for k, v in overrides.items() if k != "experiment"})
        if base.experiment.timeout_s is not None and base.experiment.timeout_s <= args.budget:
            overrides["experiment"]["timeout_s"] = 2 * args.budget + 60
    cfg = load(root, overrides)
    tag = args.tag or default_tag()
    choice = agents.choose(cfg)  # agent.name = "auto": configured, else a key, else a CLI, else mutate
    cfg.agent.name = choice.name  # the run's config snapshot records the agent actually used
    limits = Limits(
        max_experiments=args.max_experiments if args.max_experiments is not None else cfg.stop.max_experiments,
        max_hours=args.max_hours if args.max_hours is not None else cfg.stop.max_hours,
        target=args.target if args.target is not None else cfg.stop.target,
        max_consecutive_failures=cfg.stop.max_consecutive_failures,
    )
    reporter = make_reporter(cfg.metric.name, cfg.experiment.budget_s, tag, live=False if args.no_live else None)
    driver = Driver.from_config(cfg, tag, limits=limits, reporter=reporter)  # the team: [[agents]] or [agent]
    who = (f"agent {choice.name} ({choice.reason})" if not cfg.team else
           f"team {', '.join(r.label for r in driver.team)}")
    print(f"autoresearch: tag {tag}, {who}, parallel {cfg.agent.parallel}, policy {_policy_name(cfg)}, "
          f"budget {cfg.experiment.budget_s:g}s (config: {cfg.source})", flush=True)
    from .config import describe_patterns
    from .workspace import tracked_or_present

    for line in describe_patterns(cfg.experiment.editable, cfg.experiment.protected, tracked_or_present(root)):
        print(f"autoresearch: {line}", flush=True)  # what the agent may change, and what never changes
    t0 = time.monotonic()
    try:
        outcome = driver.run()
    finally:
        if hasattr(reporter, "close"):
            reporter.close()
    write_report(root, cfg, tag)
    inc = outcome.incumbent
    from . import figures

    fig = figures.improvement(Ledger(Layout(root).ledger), tag, figures.Spec.from_config(cfg))
    best = (f"{fig.fmt(fig.best_mean)} ({figures.runs_text(fig.best_runs)}) at {inc.commit[:7]} (#{inc.id})"
            if inc and fig.best_mean is not None else "none")
    if inc and inc.unverified:
        best += f", UNVERIFIED ({inc.unverified})"
    print(f"autoresearch: stopped ({outcome.stop_reason}) after {outcome.experiments} experiments in "
          f"{figures.duration(time.monotonic() - t0)}; best {cfg.metric.name} {best}; branch autoresearch/{tag}")
    if fig.base_mean is not None:
        print(f"autoresearch: improvement: {fig.text()}")
    return 0


def _experiment(args) -> int:
    from .tool import experiment

    cfg = load(project_root(args))
    verdict = experiment(cfg, args.message, tag=args.tag)
    if args.json:
        print_json(verdict)
    else:
        m = verdict["metric"]
        best = verdict["best_metric"]
        print(f"#{verdict['id']} {verdict['status']}: {cfg.metric.name}={m if m is not None else '-'} "
              f"(best {f'{best:.6g}' if best is not None else '-'}) {verdict['reason']}"
              + (f" [unverified: {verdict['unverified']}]" if verdict["unverified"] else ""))
        print(f"improvement: {verdict['improvement']}")
    return 0


def _pause(args) -> int:
    from . import control
    from .watch import snapshot

    root = project_root(args)
    tag = _control_tag(root, args.tag)
    control.pause(root, tag)
    s = snapshot(root, tag) if _has_tag(root, tag) else None
    if s is not None and s.alive:
        flight = f"#{s.running[-1].id} (in flight)" if s.running else "the experiment being proposed"
        print(f"autoresearch: pause requested on {tag}: the loop finishes {flight}, records it, then waits; "
              f"`autoresearch resume --tag {tag}` continues")
    else:
        print(f"autoresearch: {tag} is paused; no loop is running on it now, so the next "
              f"`autoresearch run --tag {tag}` waits until `autoresearch resume --tag {tag}`")
    return 0


def _resume(args) -> int:
    from . import control

    root = project_root(args)
    tag = _control_tag(root, args.tag)
    print(f"autoresearch: resumed {tag}" if control.resume(root, tag) else f"autoresearch: {tag} was not paused")
    return 0


def _control_tag(root: Path, tag: Optional[str]) -> str:
    from .workspace import valid_tag

    if tag:  # a tag with no run yet may be paused before it starts
        if not valid_tag(tag):
            raise AutoresearchError(f"tag {tag!r} is not a valid tag: use letters, digits, '-', '_'")
        return tag
    return pick_tag(open_ledger(root), None)


def _has_tag(root: Path, tag: str) -> bool:
    path = Layout(root).ledger
    if not path.exists():
        return False
    ledger = Ledger(path)
    try:
        return tag in ledger.tags()
    finally:
        ledger.close()


def _finalize(args) -> int:
    from .finalize import finalize

    root = project_root(args)
    ledger = open_ledger(root)
    tag = pick_tag(ledger, args.tag)
    done = finalize(root, tag, ledger, branch=args.branch, force=args.force,
                    summary_path=Path(args.summary).resolve() if args.summary else None)
    if args.json:
        print_json(done.to_json())
        return 0
    print(done.summary)
    print(f"autoresearch: branch {done.branch} at {done.tip[:7]}: {len(done.commits)} commit(s) on "
          f"{done.base.commit[:7]}, {len(done.dropped)} undone keep(s) left out; summary in {done.summary_path}")
    return 0


def _confirm(args) -> int:
    from .confirm import confirm, render
    from .live import make_reporter

    root = project_root(args)
    tag = pick_tag(open_ledger(root), args.tag)
    cfg = load(root)
    reporter = None if args.json else make_reporter(cfg.metric.name, cfg.experiment.budget_s, tag, live=False)
    try:
        out = confirm(cfg, tag, runs=args.runs, reporter=reporter)
    finally:
        if hasattr(reporter, "close"):
            reporter.close()
    if args.json:
        print_json(out)
    else:
        print(render(out))
    return 0


def _policy_name(cfg: Config) -> str:
    from .policy import resolve

    name = resolve(cfg)
    return name if name == cfg.policy.name else f"{name} ({cfg.policy.name})"


def _launch(args) -> int:
    from .launch import LaunchSpec, pull, up, write_task
    from .workspace import default_tag

    root = project_root(args)
    spec = LaunchSpec(tag=args.tag or default_tag(), nodes=args.nodes, accelerators=args.gpus, cloud=args.cloud,
                      spot=args.spot, workers=args.workers, max_hours=args.max_hours,
                      max_experiments=args.max_experiments, agent=args.agent, secrets=args.secret,
                      cluster=args.cluster)
    if args.install:
        spec.install = args.install
    if args.pull:
        print(f"autoresearch: results of {spec.cluster_name} in {pull(root, spec)}")
        return 0
    task = write_task(root, spec, Path(args.out) if args.out else None)
    print(f"autoresearch: wrote {task}")
    if not args.up:
        print(f"next: sky launch -c {spec.cluster_name} {task}" + "".join(f" --secret {n}" for n in spec.secrets)
              + f"   (or: autoresearch launch --up --tag {spec.tag})")
        return 0
    dest = up(root, spec, task, down=args.down)
    print(f"autoresearch: results of {spec.cluster_name} in {dest}; branch autoresearch/{spec.tag}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
