"""The reading verbs of the command line: status, results, diff, report, watch, ledger verify.

They only read the ledger (and write report files); none of them changes a run (`ledger
accept`, the user's decision on a broken seal chain, is the one that writes, and says so). Shared
helpers for finding the project, its ledger and a tag live here too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from .config import Config, load
from .errors import AutoresearchError
from .layout import Layout
from .ledger import Experiment, Ledger


def project_root(args) -> Path:
    root = Path(args.project).resolve()
    if not root.is_dir():
        raise AutoresearchError(f"{root} is not a folder: pass an existing project with -C")
    return root


def open_ledger(root: Path) -> Ledger:
    path = Layout(root).ledger
    if not path.exists():
        raise AutoresearchError(f"no runs yet in {root}: start one with `autoresearch run`")
    return Ledger(path)


def pick_tag(ledger: Ledger, tag: Optional[str]) -> str:
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


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, default=str))


def write_report(root: Path, cfg: Config, tag: str, out: Optional[Path] = None) -> list[Path]:
    from . import figures
    from .report import progress_png, report_md

    ledger = Ledger(Layout(root).ledger)
    rows = ledger.experiments(tag)
    out = out or root
    lower = cfg.lower_is_better()
    spec = figures.Spec.from_config(cfg)
    return [progress_png(rows, out / "progress.png", cfg.metric.name, lower, title=f"autoresearch/{tag}"),
            report_md(rows, out / "report.md", cfg.metric.name, lower, tag=tag,
                      figure=figures.improvement(ledger, tag, spec, rows), noise=figures.noise(ledger, tag, spec, rows))]


def cmd_status(args) -> int:
    from . import figures
    from .report import summary, unverified_note

    root = project_root(args)
    ledger = open_ledger(root)
    tag = pick_tag(ledger, args.tag)
    rows = ledger.experiments(tag)
    cfg = _cfg_quiet(root)
    spec = figures.Spec.of(ledger, tag, cfg)
    fig = figures.improvement(ledger, tag, spec, rows)  # the one figure every view shows
    noise = figures.noise(ledger, tag, spec, rows)
    s = summary(rows, spec.lower, fig)
    inc = ledger.incumbent(tag)
    first = min((e.started_at for e in rows if e.started_at), default=None)
    last = max((e.ended_at or e.started_at for e in rows if e.started_at), default=None)

    out = {"tag": tag, "best_commit": inc.commit if inc else None, "best_metric": inc.metric if inc else None,
           "best_mean": fig.best_mean, "best_runs": fig.best_runs if inc else None,
           "best_id": inc.id if inc else None, "best_description": inc.description if inc else None,
           "counts": ledger.counts(tag), "experiments": len(rows), "keep_rate": s.get("keep_rate"),
           "baseline_metric": fig.base_mean, "baseline_runs": fig.base_runs, "improvement": fig.improvement,
           "improvement_figure": fig.to_json(), "noise": noise.to_json(),
           "elapsed_s": (last - first) if first and last else 0.0, "experiment_s": s.get("wall_s_total"),
           "cost_usd": s.get("cost_usd_total"), "tokens_in": s.get("tokens_in_total"),
           "tokens_out": s.get("tokens_out_total"), "metric": spec.name,
           "unverified": s["unverified"], "unverified_kept": s["unverified_kept"],
           "unverified_reasons": s["unverified_reasons"], "best_unverified": inc.unverified if inc else None}
    from .workers import worker_stats

    out["workers"] = worker_stats(ledger, tag)  # what ran where, utilisation, runs per hour (workers.py)
    from . import standings

    team = standings.of(ledger, tag, spec, rows, noise)  # who proposed what, kept what, at what cost (standings.py)
    out |= team.to_json()
    breaks = [b for b in ledger.integrity if b.tag in (tag, None)]  # checked when the ledger was opened
    out["ledger_integrity"] = {"ok": not breaks, "breaks": [b.to_json() for b in breaks]}
    if args.json:
        print_json(out)
        return 0
    name = out["metric"] or "metric"
    print(f"tag {tag}: {len(rows)} experiments, " + ", ".join(f"{k} {v}" for k, v in sorted(out["counts"].items())))
    if breaks:
        print(f"LEDGER CHANGED OUTSIDE AUTORESEARCH: {'; '.join(b.message for b in breaks[:5])}"
              f"{f'; and {len(breaks) - 5} more' if len(breaks) > 5 else ''}. The figures below may be forged; "
              f"`autoresearch run` refuses to go on until `autoresearch ledger accept --tag {tag}`")
    if inc:
        print(f"best {name} {fig.fmt(fig.best_mean)} ({figures.runs_text(fig.best_runs)}) at "
              f"{(inc.commit or '-')[:7]} (#{inc.id}: {inc.description})" + (" [unverified]" if inc.unverified else ""))
    if note := unverified_note(s):
        print(note)
    print(f"improvement: {fig.text()}")
    print(noise.text(fig.fmt))
    rate = out["keep_rate"]
    print(f"keep rate {rate:.0%}" if rate is not None else "keep rate -",
          f"| elapsed {figures.duration(out['elapsed_s'])}, runs {figures.duration(out['experiment_s'])} "
          f"| agent cost ${out['cost_usd'] or 0:.2f} ({(out['tokens_in'] or 0) + (out['tokens_out'] or 0)} tokens)")
    for line in team.lines():
        print(line)
    for w in out["workers"] if len(out["workers"]) > 1 or any(w["now"] for w in out["workers"]) else []:
        print(f"worker {w['worker']} ({w['hardware'] or '?'}): {w['runs']} runs, busy {w['utilisation']:.0%}, "
              f"{w['per_hour']:g}/h" + (f", now {'; '.join(w['now'])}" if w["now"] else ""))
    return 0


def cmd_results(args) -> int:
    from .ledger import write_tsv

    root = project_root(args)
    ledger = open_ledger(root)
    tag = pick_tag(ledger, args.tag)
    rows = ledger.experiments(tag)
    cfg = _cfg_quiet(root)
    name = cfg.metric.name if cfg else "metric"
    if args.json:
        print_json([_row_json(e) for e in rows])
    elif args.tsv:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            write_tsv(Path(tmp) / "r.tsv", rows, name)
            sys.stdout.write((Path(tmp) / "r.tsv").read_text())
    else:
        from . import figures

        spec = figures.Spec.of(ledger, tag, cfg)
        fig = figures.improvement(ledger, tag, spec, rows)
        f = fig.fmt
        print(f"{'#':>4}  {'commit':7}  {'status':13} {name:>12}  {'time':>7}  {'description':40}  reason")
        for e in rows:
            wall = f"{e.wall_s:.1f}s" if e.wall_s is not None else "-"
            status = e.status + ("*" if e.unverified else "")
            desc = " ".join(e.description.split())
            desc = desc if len(desc) <= 40 else desc[:39] + "…"
            print(f"{e.id:>4}  {e.short or '-':7}  {status:13} {f(e.metric):>12}  {wall:>7}  {desc:40}  "
                  f"{' '.join((e.reason or '').split())[:100]}")
        print(f"improvement: {fig.text()}")
        reasons = sorted({e.unverified for e in rows if e.unverified})
        if reasons:  # the legend of the `*`, last: what the figure above stands on
            print(f"* unverified: measured without the sandbox ({'; '.join(reasons)})")
    return 0


def _row_json(e: Experiment) -> dict[str, Any]:
    from .standings import researcher_of

    d = e.to_json()
    d["researcher"] = researcher_of(e)  # as status names it: rows from before teams by their agent
    d.pop("patch", None)
    d.pop("log_tail", None)
    return d


def cmd_diff(args) -> int:
    root = project_root(args)
    ledger = open_ledger(root)
    tag = pick_tag(ledger, args.tag) if getattr(args, "tag", None) else None  # an unknown tag names the known ones
    exp = ledger.get(args.id)
    if exp is None or (tag is not None and exp.tag != tag):
        where = f" in tag `{tag}`" if tag else ""
        elsewhere = f" (#{exp.id} is in tag `{exp.tag}`: use --tag {exp.tag})" if exp is not None else ""
        raise AutoresearchError(f"no experiment #{args.id}{where}{elsewhere}: see "
                                f"`autoresearch results{f' --tag {tag}' if tag else ''}` for the ids")
    print(f"# #{exp.id} {exp.status}: {exp.description}", file=sys.stderr)
    sys.stdout.write(exp.patch if exp.patch.endswith("\n") or not exp.patch else exp.patch + "\n")
    return 0


def cmd_report(args) -> int:
    root = project_root(args)
    ledger = open_ledger(root)
    tag = pick_tag(ledger, args.tag)
    cfg = load(root)
    out = Path(args.out).resolve() if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    if args.html:
        from .report_html import report_html

        from . import figures, standings

        from . import swarm

        rows = ledger.experiments(tag)
        spec = figures.Spec.from_config(cfg)
        fig = figures.improvement(ledger, tag, spec, rows)
        # the hub's side as last fetched (the run syncs it): a report never waits on someone else's machine
        hub = swarm.status(root, tag, ledger, fetch=False) if swarm.load(root) is not None else None
        print(report_html(rows, (out or root) / "report.html", cfg.metric.name, cfg.lower_is_better(), tag=tag,
                          events=ledger.events(tag), project=root.name, figure=fig, swarm=ledger.swarm_notes(tag),
                          researchers=standings.of(ledger, tag, spec, rows), swarm_status=hub))
        return 0
    for p in write_report(root, cfg, tag, out):
        print(p)
    return 0


def cmd_watch(args) -> int:
    from .watch import watch

    return watch(project_root(args), args.tag, plain=True if args.plain else None, once=args.once, interval=args.interval)


def cmd_ledger(args) -> int:
    """`ledger verify`: the seal chain's breaks (exit 1 if any); `ledger accept`: seal the rows as they are now."""
    root = project_root(args)
    ledger = open_ledger(root)
    if args.action == "verify":
        breaks = ledger.verify(args.tag)
        if args.json:
            print_json({"ok": not breaks, "breaks": [b.to_json() for b in breaks]})
        else:
            for b in breaks:
                print(f"{b.tag or '-'}\t{b.kind}\t{b.table}\t{','.join(str(i) for i in b.ids)}\t{b.message}")
            print(f"autoresearch: ledger {'intact' if not breaks else f'changed outside autoresearch ({len(breaks)} breaks)'}"
                  + (f" for tag {args.tag}" if args.tag else ""), file=sys.stderr)
        return 1 if breaks else 0
    if not args.tag:
        raise AutoresearchError("`ledger accept` needs --tag: it seals that tag's rows as they are now")
    accepted = ledger.accept(args.tag)
    if args.json:
        print_json({"accepted": [b.to_json() for b in accepted]})
    else:
        for b in accepted:
            print(f"accepted: {b.message}")
        print(f"autoresearch: {len(accepted)} break(s) of {args.tag} sealed as they are now (recorded as an event)"
              if accepted else f"autoresearch: nothing to accept: the ledger of {args.tag} is intact", file=sys.stderr)
    return 0
