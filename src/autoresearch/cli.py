"""The command line: parses, calls, prints. Errors become one-line messages here only.

Verbs: init, run, experiment, status, results, diff, report. Each reading verb has
`--json` for machines. Exit codes: 0 success (a run stopped by Ctrl-C included),
1 a user-fixable error (the message says the fix), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .config import Config, load
from .errors import AutoresearchError
from .ledger import Experiment, Ledger


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoresearch", description="A research loop owned by the harness.")
    p.add_argument("--version", action="version", version=f"autoresearch {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    def cmd(name: str, func, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        sp.add_argument("-C", "--project", default=".", help="the research project folder (default: here)")
        return sp

    sp = cmd("init", _init, "make a research project from a template")
    sp.add_argument("directory", nargs="?", help="folder to create (or an empty one)")
    sp.add_argument("--template", default="quickstart", help="quickstart | gpt | blank (default: quickstart)")

    sp = cmd("run", _run, "run the research loop (Ctrl-C stops cleanly; run again to resume)")
    sp.add_argument("--tag", help="the run's name; branch autoresearch/<tag> (default: today, e.g. nov25)")
    sp.add_argument("--agent", help="agent backend (overrides agent.name)")
    sp.add_argument("--agent-command", help="shell command for --agent command")
    sp.add_argument("--model", help="model name for API agents")
    sp.add_argument("--policy", help="greedy | threshold | confirm")
    sp.add_argument("--max-experiments", type=int, help="stop after this many experiments (baseline excluded)")
    sp.add_argument("--max-hours", type=float, help="stop after this many hours")
    sp.add_argument("--target", type=float, help="stop once the best metric reaches this value")
    sp.add_argument("--budget", type=float, help="override experiment.budget_s")
    sp.add_argument("--no-live", action="store_true", help="plain lines instead of the live view")

    sp = cmd("experiment", _experiment, "tool mode: judge the uncommitted change to the editable files")
    sp.add_argument("-m", "--message", required=True, help="what this change tries")
    sp.add_argument("--tag")
    sp.add_argument("--json", action="store_true")

    sp = cmd("status", _status, "best result, counts, keep rate, cost, time")
    sp.add_argument("--tag")
    sp.add_argument("--json", action="store_true")

    sp = cmd("results", _results, "every experiment of a run")
    sp.add_argument("--tag")
    fmt = sp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--tsv", action="store_true")

    sp = cmd("diff", _diff, "the change an experiment made")
    sp.add_argument("id", type=int)

    sp = cmd("report", _report, "write progress.png and report.md")
    sp.add_argument("--tag")
    sp.add_argument("--out", help="folder to write to (default: the project folder)")
    return p


# -- helpers --------------------------------------------------------------------------
def _root(args) -> Path:
    root = Path(args.project).resolve()
    if not root.is_dir():
        raise AutoresearchError(f"{root} is not a folder: pass an existing project with -C")
    return root


def _ledger(root: Path) -> Ledger:
    path = root / ".autoresearch" / "ledger.db"
    if not path.exists():
        raise AutoresearchError(f"no runs yet in {root}: start one with `autoresearch run`")
    return Ledger(path)


def _tag(ledger: Ledger, tag: Optional[str]) -> str:
    tags = ledger.tags()
    if tag:
        if tag not in tags:
            raise AutoresearchError(f"no run tagged `{tag}`: known tags are {', '.join(tags) or '(none)'}")
        return tag
    if not tags:
        raise AutoresearchError("the ledger has no experiments yet: start with `autoresearch run`")
    return tags[-1]


def _cfg_quiet(root: Path) -> Optional[Config]:
    try:
        return load(root)
    except AutoresearchError:
        return None


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, default=str))


# -- verbs ------------------------------------------------------------------------------
def _init(args) -> int:
    from .scaffold import init_project

    directory = Path(args.directory or args.project)
    files = init_project(directory, args.template)
    print(f"autoresearch: made a {args.template} project in {directory.resolve()} ({', '.join(files)})")
    print(f"next: cd {directory} && autoresearch run")
    return 0


def _run(args) -> int:
    from . import agents
    from .live import make_reporter
    from .loop import Limits, Loop
    from .workspace import default_tag

    root = _root(args)
    overrides = {
        "agent": {"name": args.agent, "command": args.agent_command, "model": args.model},
        "policy": {"name": args.policy},
        "experiment": {"budget_s": args.budget},
    }
    cfg = load(root, overrides)
    if args.budget is not None and cfg.experiment.timeout_s is not None and cfg.experiment.timeout_s <= args.budget:
        cfg.experiment.timeout_s = None  # the default (2 x budget + 60) follows the new budget
    tag = args.tag or default_tag()
    agent = agents.create(cfg.agent.name, cfg)
    limits = Limits(
        max_experiments=args.max_experiments if args.max_experiments is not None else cfg.stop.max_experiments,
        max_hours=args.max_hours if args.max_hours is not None else cfg.stop.max_hours,
        target=args.target if args.target is not None else cfg.stop.target,
        max_consecutive_failures=cfg.stop.max_consecutive_failures,
    )
    reporter = make_reporter(cfg.metric.name, cfg.experiment.budget_s, tag, live=False if args.no_live else None)
    print(f"autoresearch: tag {tag}, agent {agent.name}, policy {cfg.policy.name}, budget {cfg.experiment.budget_s:g}s "
          f"(config: {cfg.source})", flush=True)
    t0 = time.monotonic()
    try:
        outcome = Loop(cfg, tag, agent, limits=limits, reporter=reporter).run()
    finally:
        if hasattr(reporter, "close"):
            reporter.close()
    _write_report(root, cfg, tag)
    inc = outcome.incumbent
    best = f"{inc.metric:.6f} at {inc.commit[:7]} (#{inc.id})" if inc and inc.metric is not None else "none"
    print(f"autoresearch: stopped ({outcome.stop_reason}) after {outcome.experiments} experiments in "
          f"{(time.monotonic() - t0) / 60:.1f} min; best {cfg.metric.name} {best}; branch autoresearch/{tag}")
    return 0


def _write_report(root: Path, cfg: Config, tag: str, out: Optional[Path] = None) -> list[Path]:
    from .report import progress_png, report_md

    ledger = Ledger(root / ".autoresearch" / "ledger.db")
    rows = ledger.experiments(tag)
    out = out or root
    lower = cfg.lower_is_better()
    return [progress_png(rows, out / "progress.png", cfg.metric.name, lower, title=f"autoresearch/{tag}"),
            report_md(rows, out / "report.md", cfg.metric.name, lower, tag=tag)]


def _experiment(args) -> int:
    from .tool import experiment

    cfg = load(_root(args))
    verdict = experiment(cfg, args.message, tag=args.tag)
    if args.json:
        _print_json(verdict)
    else:
        m = verdict["metric"]
        print(f"#{verdict['id']} {verdict['status']}: {cfg.metric.name}={m if m is not None else '-'} "
              f"(best {verdict['best_metric']}) {verdict['reason']}")
    return 0


def _status(args) -> int:
    from .report import summary

    root = _root(args)
    ledger = _ledger(root)
    tag = _tag(ledger, args.tag)
    rows = ledger.experiments(tag)
    cfg = _cfg_quiet(root)
    lower = cfg.lower_is_better() if cfg else True
    s = summary(rows, lower)
    inc = ledger.incumbent(tag)
    first = min((e.started_at for e in rows if e.started_at), default=None)
    last = max((e.ended_at or e.started_at for e in rows if e.started_at), default=None)
    out = {"tag": tag, "best_commit": inc.commit if inc else None, "best_metric": inc.metric if inc else None,
           "best_id": inc.id if inc else None, "best_description": inc.description if inc else None,
           "counts": ledger.counts(tag), "experiments": len(rows), "keep_rate": s.get("keep_rate"),
           "baseline_metric": s.get("baseline_metric"), "improvement": s.get("improvement"),
           "elapsed_s": (last - first) if first and last else 0.0, "experiment_s": s.get("wall_s_total"),
           "cost_usd": s.get("cost_usd_total"), "tokens_in": s.get("tokens_in_total"),
           "tokens_out": s.get("tokens_out_total"), "metric": cfg.metric.name if cfg else None}
    if args.json:
        _print_json(out)
        return 0
    name = out["metric"] or "metric"
    print(f"tag {tag}: {len(rows)} experiments, " + ", ".join(f"{k} {v}" for k, v in sorted(out["counts"].items())))
    if inc:
        print(f"best {name} {inc.metric:.6f} at {inc.commit[:7]} (#{inc.id}: {inc.description})")
    if out["baseline_metric"] is not None and out["improvement"] is not None:
        print(f"baseline {out['baseline_metric']:.6f}, improvement {out['improvement']:.6f}")
    rate = out["keep_rate"]
    print(f"keep rate {rate:.0%}" if rate is not None else "keep rate -",
          f"| time {out['elapsed_s'] / 60:.1f} min | agent cost ${out['cost_usd'] or 0:.2f} "
          f"({(out['tokens_in'] or 0) + (out['tokens_out'] or 0)} tokens)")
    return 0


def _results(args) -> int:
    from .ledger import write_tsv

    root = _root(args)
    ledger = _ledger(root)
    tag = _tag(ledger, args.tag)
    rows = ledger.experiments(tag)
    cfg = _cfg_quiet(root)
    name = cfg.metric.name if cfg else "metric"
    if args.json:
        _print_json([_row_json(e) for e in rows])
    elif args.tsv:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            write_tsv(Path(tmp) / "r.tsv", rows, name)
            sys.stdout.write((Path(tmp) / "r.tsv").read_text())
    else:
        print(f"{'id':>4}  {'commit':7}  {'status':12} {name:>12}  {'time':>7}  description")
        for e in rows:
            val = f"{e.metric:.6f}" if e.metric is not None else "-"
            wall = f"{e.wall_s:.1f}s" if e.wall_s is not None else "-"
            print(f"{e.id:>4}  {e.short or '-':7}  {e.status:12} {val:>12}  {wall:>7}  {e.description}")
    return 0


def _row_json(e: Experiment) -> dict[str, Any]:
    d = e.to_json()
    d.pop("patch", None)
    d.pop("log_tail", None)
    return d


def _diff(args) -> int:
    root = _root(args)
    ledger = _ledger(root)
    exp = ledger.get(args.id)
    if exp is None:
        raise AutoresearchError(f"no experiment #{args.id}: see `autoresearch results` for the ids")
    print(f"# #{exp.id} {exp.status}: {exp.description}", file=sys.stderr)
    sys.stdout.write(exp.patch if exp.patch.endswith("\n") or not exp.patch else exp.patch + "\n")
    return 0


def _report(args) -> int:
    root = _root(args)
    ledger = _ledger(root)
    tag = _tag(ledger, args.tag)
    cfg = load(root)
    out = Path(args.out).resolve() if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for p in _write_report(root, cfg, tag, out):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
