"""The HTML report: one self-contained file to look at a run in a browser, or to share.

Contents, top to bottom: the summary figures (report.summary() and figures.py's improvement
figure, so they agree with `status` and report.md) with the cost and time totals; the progress
chart (report.progress_png() inlined as a base64 PNG); the researchers (standings.py, as `status`
shows them); the table of every experiment with status filters; each kept change with its delta,
evidence and diff; the run's notes (steering edits, pauses, tracking errors).
Rows made while a protection was off are marked unverified, with a banner above the figures.

Guarantees:
- Self-contained: CSS, JS and the chart are inline; nothing is fetched, so it opens offline
  and from an e-mail attachment. Every text from the ledger is HTML-escaped.
- The filters need JS; without it every row is shown. A URL hash `#status=keep,crash`
  opens the page filtered. After the script has run, `<html data-ready="1">`, the table's
  `data-visible` holds the number of rows shown and the chart's `data-loaded` its pixel
  width, so a headless browser can check the page (see tests/test_report_html.py).
- A pure view of the rows and events it is given, written atomically like report.py's files.
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from . import __version__
from . import figures, standings
from .ledger import Experiment
from .report import progress_png, summary, unverified_note
from .states import Kind, Status

MAX_DIFF_LINES = 300
MAX_EVENTS = 60
STATUS_COLOURS = {Status.KEEP: "#1e8e3e", Status.DISCARD: "#80868b", Status.CRASH: "#d93025",
                  Status.TIMEOUT: "#e8710a", Status.VIOLATION: "#9334e6", Status.CHECKS_FAILED: "#b08900",
                  Status.INTERRUPTED: "#9aa0a6", Status.RUNNING: "#1a73e8"}
_ORDER = list(STATUS_COLOURS)

CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif;color:#202124;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:28px 24px 60px}
h1{font-size:24px;margin:0 0 2px}
h2{font-size:18px;margin:34px 0 12px}
.sub{color:#5f6368;margin:0 0 20px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px}
.card{background:#fff;border:1px solid #e3e5e8;border-radius:10px;padding:12px 14px}
.card .k{color:#5f6368;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:20px;font-weight:600;margin-top:2px;font-variant-numeric:tabular-nums}
.card .n{color:#5f6368;font-size:12px}
.good{color:#1e8e3e}
.bad{color:#d93025}
.unverified{color:#b06000;font-weight:600}
p.unverified{background:#fef7e0;border:1px solid #f9ab00;border-radius:6px;padding:8px 12px}
figure{margin:0;background:#fff;border:1px solid #e3e5e8;border-radius:10px;padding:10px}
figure img{width:100%;height:auto;display:block}
.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin-bottom:10px}
.chip{border:1px solid #dadce0;background:#fff;border-radius:16px;padding:4px 12px;cursor:pointer;
font:inherit;color:#3c4043}
.chip .c{color:#5f6368;margin-left:4px}
.chip.on{background:#e8f0fe;border-color:#1a73e8;color:#174ea6}
.count{color:#5f6368;margin-left:auto}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid #e3e5e8;border-radius:10px;overflow:hidden}
th,td{padding:6px 10px;text-align:left;border-bottom:1px solid #eef0f2;vertical-align:top}
th{background:#f1f3f4;font-weight:600;font-size:12px;color:#3c4043}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr[hidden]{display:none}
tr.keep td{background:#f3fbf5}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;color:#fff;white-space:nowrap}
.why{color:#5f6368;font-size:12px}
.change{background:#fff;border:1px solid #e3e5e8;border-left:4px solid #1e8e3e;border-radius:10px;
padding:12px 16px;margin-bottom:14px}
.change h3{margin:0 0 6px;font-size:15px}
.facts{display:flex;flex-wrap:wrap;gap:6px 18px;color:#3c4043;font-size:13px}
.facts b{font-variant-numeric:tabular-nums}
details{margin-top:8px}
summary{cursor:pointer;color:#1a73e8}
pre.diff{background:#fbfbfc;border:1px solid #eceef1;border-radius:6px;padding:8px 10px;overflow:auto;
max-height:420px;margin:6px 0 0}
.add{color:#137333;background:#e6f4ea;display:block}
.del{color:#a50e0e;background:#fce8e6;display:block}
.hunk{color:#5f6368;display:block}
.meta{color:#80868b;display:block}
ul.events{background:#fff;border:1px solid #e3e5e8;border-radius:10px;padding:10px 16px 10px 34px;margin:0}
ul.events li{margin:3px 0}
ul.events .t{color:#5f6368;font-variant-numeric:tabular-nums}
footer{color:#80868b;font-size:12px;margin-top:40px}
"""

JS = """
(function () {
  var table = document.getElementById('experiments');
  var rows = Array.prototype.slice.call(table.querySelectorAll('tbody tr'));
  var chips = Array.prototype.slice.call(document.querySelectorAll('.chip[data-status]'));
  var statuses = chips.map(function (c) { return c.getAttribute('data-status'); });
  var active = {};
  function all() { statuses.forEach(function (s) { active[s] = true; }); }
  function apply() {
    var shown = 0;
    rows.forEach(function (r) { var on = !!active[r.getAttribute('data-status')]; r.hidden = !on; if (on) shown++; });
    chips.forEach(function (c) {
      var on = !!active[c.getAttribute('data-status')];
      c.classList.toggle('on', on); c.setAttribute('aria-pressed', on ? 'true' : 'false');
    });
    table.setAttribute('data-visible', String(shown));
    document.getElementById('count').textContent = 'showing ' + shown + ' of ' + rows.length;
  }
  chips.forEach(function (c) {
    c.addEventListener('click', function () {
      var s = c.getAttribute('data-status');
      var everything = statuses.every(function (x) { return active[x]; });
      if (everything) { active = {}; active[s] = true; } else { active[s] = !active[s]; }
      if (!statuses.some(function (x) { return active[x]; })) all();
      apply();
    });
  });
  document.getElementById('show-all').addEventListener('click', function () { all(); apply(); });
  all();
  var m = /status=([\\w,]+)/.exec(decodeURIComponent(location.hash || ''));
  if (m) {
    var wanted = m[1].split(',').filter(function (s) { return statuses.indexOf(s) >= 0; });
    if (wanted.length) { active = {}; wanted.forEach(function (s) { active[s] = true; }); }
  }
  apply();
  var img = document.getElementById('chart');
  function mark() { img.setAttribute('data-loaded', String(img.naturalWidth)); }
  if (img) { if (img.complete) mark(); else img.addEventListener('load', mark); }
  document.documentElement.setAttribute('data-ready', '1');
})();
"""


def report_html(rows: Sequence[Experiment], path: str | os.PathLike, metric_name: str, lower_is_better: bool,
                tag: str = "", events: Sequence[dict[str, Any]] = (), project: str = "",
                figure: Optional[figures.Figure] = None, swarm: Sequence[dict[str, Any]] = (),
                researchers: Optional[standings.Standings] = None,
                swarm_status: Optional[dict[str, Any]] = None) -> Path:
    """Write the self-contained HTML report to `path` and return it.

    `figure`: the improvement figure (figures.py); without one, the rows alone give it. `swarm`: the
    ledger's verdicts on peers (Ledger.swarm_notes), shown with the rows adopted from them; `swarm_status`:
    the hub's side as `autoresearch swarm status --json` has it (swarm.status): the frontier per hardware
    class, what each participant has in flight, and how each kept idea spread. `researchers`: the
    per-researcher figures (standings.py); without them, the rows alone give them (each row's metric once,
    no noise: effects in metric units)."""
    rows, path = list(rows), Path(path)
    figure = figure or figures.from_runs(rows, {}, None, 0, figures.Spec(metric_name, lower_is_better))
    researchers = researchers or standings.compute(rows, {}, None, 0, figures.Spec(metric_name, lower_is_better))
    s = summary(rows, lower_is_better, figure)
    scale = max([abs(m) for e in rows if (m := _metric(e)) is not None] or [1.0])
    # One number format per report: the figure's (to a tenth of the measured noise), else by magnitude.
    f = figure.fmt if figure.fmt.decimals is not None else (lambda v: _fmt(v, scale))  # noqa: E731
    title = f"autoresearch · {tag}" if tag else "autoresearch report"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f"<p class=sub>{_e(project + ' · ' if project else '')}{_e(metric_name)}, "
        f"{'lower' if lower_is_better else 'higher'} is better · generated {_e(time.strftime('%Y-%m-%d %H:%M'))}</p>",
        f"<p class=unverified id=unverified>{_e(unverified_note(s))}</p>" if s["unverified"] else "",
        _cards(rows, s, metric_name, f, figure),
        "<h2>Progress</h2>", _chart(rows, metric_name, lower_is_better, tag),
        _researchers(researchers),
        "<h2>Experiments</h2>", _table(rows, metric_name, lower_is_better, f),
        "<h2>Kept changes</h2>", _kept(rows, metric_name, f),
        _swarm(rows, swarm, swarm_status),
        _events(events),
        f"<footer>Generated by autoresearch {_e(__version__)} from the ledger (.autoresearch/ledger.db), the source of "
        "truth; regenerate with <code>autoresearch report --html</code>.</footer>",
        f"</main><script>{JS}</script></body></html>",
    ]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_text("\n".join(p for p in parts if p), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- sections ---------------------------------------------------------------------------------------
def _cards(rows: list[Experiment], s: dict[str, Any], name: str, f: Any, figure: figures.Figure) -> str:
    started = [e.started_at for e in rows if e.started_at]
    ended = [e.ended_at or e.started_at for e in rows if e.started_at]
    elapsed = (max(ended) - min(started)) if started else 0.0
    c = s["counts"]
    other = s["n"] - c.get(Status.KEEP, 0) - c.get(Status.DISCARD, 0) - c.get(Status.RUNNING, 0)
    counts = f"{c.get('keep', 0)} kept · {c.get('discard', 0)} discarded · {other} failed" + (
        f" · {c['running']} running" if c.get(Status.RUNNING) else "")
    cards = [("Experiments", str(s["n"]), counts)]
    if s["keep_rate"] is not None:
        cards.append(("Kept", f"{s['kept']} / {s['judged']}", f"keep rate {s['keep_rate'] * 100:.0f}%"))
    g = figure.fmt
    if figure.base_mean is not None:
        cards.append((f"Baseline {name}", g(figure.base_mean),
                      f"the unchanged starting point, {figures.runs_text(figure.base_runs)}"))
    if figure.best_mean is not None:
        cards.append((f"Best {name}", g(figure.best_mean), f"#{s['best_id']} · {(s['best_commit'] or '')[:7]}, "
                                                           f"{figures.runs_text(figure.best_runs)}"))
    if figure.improvement is not None and figure.base_mean is not None:
        pct = f"{figure.change_pct:+.2f}%" if figure.change_pct is not None else g.signed(figure.improvement)
        cls = "bad" if figure.refuted or figure.improvement < 0 else "good" if figure.improvement > 0 else ""
        cards.append(("Improvement", f"<span class={cls}>{_e(pct)}</span>", figure.text()))
    cards.append(("Experiment time", figures.duration(s["wall_s_total"]), f"{figures.duration(elapsed)} elapsed"))
    tokens = s["tokens_in_total"] + s["tokens_out_total"]
    cards.append(("Agent cost", f"${s['cost_usd_total']:.2f}", f"{tokens:,} tokens"))
    body = "".join(f"<div class=card><div class=k>{_e(k)}</div><div class=v>{v if v.startswith('<span') else _e(v)}"
                   f"</div><div class=n>{_e(n)}</div></div>" for k, v, n in cards)
    return f"<section class=cards id=totals>{body}</section>"


def _researchers(team: standings.Standings) -> str:
    """Who proposed what, kept what, at what cost: standings.py's figures, one row per researcher and the total."""
    if not team.researchers:
        return ""
    unit = "σ" if team.noise_measured else "metric units"
    head = ("<tr><th>researcher</th><th class=num>proposals</th><th class=num>keeps</th><th class=num>keep rate</th>"
            f"<th class=num>effect per keep ({unit})</th><th class=num>failed</th><th class=num>median latency</th>"
            "<th class=num>tokens</th><th class=num>cost</th><th class=num>$ per keep</th></tr>")
    body = []
    for s in team.researchers + [team.total]:
        effect = s.effect_sigma if team.noise_measured else s.effect
        cells = [str(s.proposals), str(s.keeps), f"{s.keep_rate:.0%}" if s.keep_rate is not None else "–",
                 (f"{effect:+.2g}" if team.noise_measured else figures.Format().signed(effect))
                 if effect is not None else "–",
                 str(s.failed), figures.duration(s.latency_s) if s.latency_s is not None else "–", f"{s.tokens:,}",
                 f"${s.cost_usd:.2f}", f"${s.usd_per_keep:.2f}" if s.usd_per_keep is not None else "–"]
        name = f"<b>{_e(s.researcher)}</b>" if s is team.total else f"<code>{_e(s.researcher)}</code>"
        body.append(f"<tr data-researcher='{_e(s.researcher)}'><td>{name}</td>"
                    + "".join(f"<td class=num>{_e(c)}</td>" for c in cells) + "</tr>")
    return (f"<h2>Researchers</h2><table id=researchers>{head}{''.join(body)}</table>"
            "<p class=why>failed: crash, timeout, violation or checks failed. Effect per keep: the mean gain of a "
            "keep over the incumbent it was judged against. $ per keep: the researcher's agent cost over its keeps."
            "</p>")


def _chart(rows: list[Experiment], name: str, lower: bool, tag: str) -> str:
    with tempfile.TemporaryDirectory(prefix="autoresearch-chart-") as tmp:
        png = progress_png(rows, Path(tmp) / "progress.png", name, lower, title=f"autoresearch/{tag}" if tag else "")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f"<figure><img id=chart alt='progress: {_e(name)} per experiment, kept ones highlighted' "
            f"src='data:image/png;base64,{data}'></figure>")


def _table(rows: list[Experiment], name: str, lower: bool, f: Any) -> str:
    present = sorted({e.status for e in rows}, key=lambda st: _ORDER.index(st) if st in _ORDER else len(_ORDER))
    chips = "".join(f"<button type=button class='chip on' data-status='{_e(st)}'>{_e(st.replace('_', ' '))}"
                    f"<span class=c>{sum(e.status == st for e in rows)}</span></button>" for st in present)
    head = (f"<div class=filters><button type=button class=chip id=show-all>all</button>{chips}"
            f"<span class=count id=count>showing {len(rows)} of {len(rows)}</span></div>")
    out = [head, f"<table id=experiments data-visible='{len(rows)}'><thead><tr><th class=num>#</th>"
           f"<th>commit</th><th>status</th><th class=num>{_e(name)}</th>"
           "<th class=num>Δ incumbent</th>"
           "<th class=num>time</th><th class=num>cost</th><th>description and reason</th></tr></thead><tbody>"]
    incumbent: Optional[float] = None
    for e in rows:
        m = _metric(e)
        delta = _signed(m - incumbent, f) if m is not None and incumbent is not None and e.kind != Kind.BASELINE else ""
        why = f"<div class=why>{_e(_short(e.reason))}</div>" if e.reason else ""
        colour = STATUS_COLOURS.get(e.status, "#5f6368")
        unverified = f"<div class=unverified>unverified: {_e(e.unverified)}</div>" if e.unverified else ""
        out.append(f"<tr class='{_e(e.status)}' data-status='{_e(e.status)}'><td class=num>{e.id}</td>"
                   f"<td><code>{_e(e.short or '-')}</code></td>"
                   f"<td><span class=badge style='background:{colour}'>{_e(e.status.replace('_', ' '))}</span></td>"
                   f"<td class=num>{f(m) if m is not None else '–'}</td><td class=num>{delta}</td>"
                   f"<td class=num>{figures.duration(e.wall_s) if e.wall_s is not None else '–'}</td>"
                   f"<td class=num>{f'${e.cost_usd:.2f}' if e.cost_usd else ''}</td>"
                   f"<td>{_e(e.description)}{why}{unverified}</td></tr>")
        if e.status == Status.KEEP and m is not None:
            incumbent = m
    out.append("</tbody></table>")
    return "".join(out)


def _kept(rows: list[Experiment], name: str, f: Any) -> str:
    base = next((e for e in rows if e.kind == Kind.BASELINE and _metric(e) is not None), None)
    kept = [e for e in rows if e.status == Status.KEEP and e.kind != Kind.BASELINE]
    if not kept:
        return "<p>No change was kept yet.</p>"
    lines = sum(len(e.patch.splitlines()) for e in kept)
    out, prev = [], _metric(base) if base else None
    for e in kept:
        m = _metric(e)
        facts = [f"{_e(name)} <b>{f(m) if m is not None else '–'}</b>"]
        if m is not None and prev is not None:
            facts.append(f"Δ previous <b>{_signed(m - prev, f)}</b>")
        if m is not None and base is not None and _metric(base):
            d = m - _metric(base)
            facts.append(f"Δ baseline <b>{_signed(d, f)}</b> ({d / abs(_metric(base)) * 100:+.2f}%)")
        ev = figures.evidence_text(e.evidence, f)
        facts.append(f"evidence: {_e(ev) if ev else '–'}")
        facts.append(f"<code>{_e(e.short)}</code>")
        if e.unverified:
            facts.append(f"<span class=unverified>unverified: {_e(e.unverified)}</span>")
        opened = " open" if lines <= 400 else ""
        out.append(f"<article class=change id=keep-{e.id}><h3>#{e.id} {_e(e.description)}</h3>"
                   f"<div class=facts>{''.join(f'<span>{x}</span>' for x in facts)}</div>"
                   f"<details{opened}><summary>diff</summary>{_diff(e.patch, e.id)}</details></article>")
        prev = m if m is not None else prev
    return "".join(out)


def _diff(patch: str, exp_id: Optional[int]) -> str:
    lines = (patch or "").splitlines()
    shown = []
    for ln in lines[:MAX_DIFF_LINES]:
        cls = ("meta" if ln.startswith(("diff ", "index ", "+++", "---", "new file", "deleted file")) else
               "add" if ln.startswith("+") else "del" if ln.startswith("-") else "hunk" if ln.startswith("@@") else "")
        shown.append(f"<span class={cls}>{_e(ln)}</span>" if cls else _e(ln) + "\n")
    if len(lines) > MAX_DIFF_LINES:
        shown.append(f"<span class=meta>… {len(lines) - MAX_DIFF_LINES} more lines: autoresearch diff {exp_id}</span>")
    return f"<pre class=diff>{''.join(shown) or '(no diff recorded)'}</pre>"


def _swarm(rows: list[Experiment], notes: Sequence[dict[str, Any]], st: Optional[dict[str, Any]] = None) -> str:
    """The swarm view. The hub's side (`st`, swarm.status): the frontier per hardware class (claims as
    published; `verified`: measured here or this participant's own), what each participant has in flight,
    and how each kept idea spread (who found it and when, who adopted it and when). The ledger's side:
    what was adopted from whom, and each peer's reputation here (with the last reason)."""
    adopted = [e for e in rows if (e.evidence or {}).get("origin")]
    if not (adopted or notes or st):
        return ""
    peers: dict[str, dict[str, Any]] = {}
    for n in notes:
        p = peers.setdefault(n["peer"], {"counts": {}, "reasons": []})
        p["counts"][n["status"]] = p["counts"].get(n["status"], 0) + 1
        p["reasons"].append(n["reason"])
    rep = "".join(f"<tr><td>{_e(name)}</td><td>{_e(', '.join(f'{k} {v}' for k, v in sorted(p['counts'].items())))}"
                  f"</td><td>{_e(_short(p['reasons'][-1], 300))}</td></tr>" for name, p in sorted(peers.items()))
    adopt = "".join(f"<tr><td>#{e.id}</td><td>{_e(e.evidence['origin'])}</td><td>{_e(e.status)}</td>"
                    f"<td>{_e(_short(e.description))}</td></tr>" for e in adopted)
    hub = _swarm_hub(st) if st else ""
    return ("<h2>The swarm</h2><section id=swarm>" + hub
            + (f"<h3>Adopted here</h3><table id=swarm-adopted><tr><th>row</th><th>origin</th><th>status</th>"
               f"<th>change</th></tr>{adopt}</table>" if adopt else "")
            + (f"<h3>Reputation here</h3><table id=swarm-reputation><tr><th>peer</th><th>reputation here</th>"
               f"<th>last reason</th></tr>{rep}</table>" if rep else "") + "</section>")


def _when(at: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at)) if isinstance(at, (int, float)) and at > 0 else "?"


def _swarm_hub(st: dict[str, Any]) -> str:
    """The hub's side of the swarm view (see _swarm)."""
    head = (f"<p class=sub id=swarm-hub>hub {_e(st.get('hub', ''))} · you are {_e(st.get('name', ''))}"
            f"{'' if st.get('fetched') else ' · as last fetched'}</p>")
    front = ""
    for klass, bests in sorted(st.get("frontier", {}).items()):
        for i, b in enumerate(bests, 1):
            metric = f"{b['metric']:g}" if isinstance(b.get("metric"), (int, float)) else "?"
            front += (f"<tr data-class='{_e(klass)}'><td>{_e(klass)}</td><td>{i}</td><td>{_e(b['participant'])}</td>"
                      f"<td>{_e(metric)}</td><td>{'verified here' if b.get('verified') else 'claimed'}</td>"
                      f"<td><code>{_e(str(b.get('commit'))[:7])}</code></td><td>{_e(_when(b.get('at')))}</td></tr>")
    flying = "".join(f"<tr><td>{_e(p['name'])}</td><td>{_e(_short(row['description']))}</td></tr>"
                     for p in st.get("participants", []) for row in p.get("in_flight", []))
    spread = "".join(
        f"<tr data-idea='{_e(s['idea'])}'><td>{_e(s['idea'])}</td>"
        f"<td>{_e(_short(s.get('description', ''), 100))}</td>"
        f"<td>{_e(s['found_by'])}</td><td>{_e(_when(s.get('found_at')))}</td><td>"
        + ", ".join(f"{_e(a['adopted_by'])} (#{_e(a['id'])}, {_e(_when(a.get('at')))})" for a in s["adopted"])
        + "</td></tr>" for s in st.get("spread", []))
    return (head
            + (f"<h3>Frontier per hardware class</h3><table id=swarm-frontier><tr><th>class</th><th>rank</th>"
               f"<th>participant</th><th>metric</th><th></th><th>commit</th><th>when</th></tr>{front}</table>"
               if front else "")
            + (f"<h3>How each kept idea spread</h3><table id=swarm-spread><tr><th>idea</th><th>change</th>"
               f"<th>found by</th><th>found</th><th>adopted by (row, when)</th></tr>{spread}</table>" if spread else "")
            + (f"<h3>In flight (as last published)</h3><table id=swarm-flight><tr><th>participant</th>"
               f"<th>experiment</th></tr>"
               f"{flying}</table>" if flying else ""))


def _events(events: Sequence[dict[str, Any]]) -> str:
    events = list(events)[-MAX_EVENTS:]
    if not events:
        return ""
    items = "".join(f"<li><span class=t>{_e(time.strftime('%m-%d %H:%M', time.localtime(ev.get('created_at') or 0)))}"
                    f"</span> <b>{_e(ev.get('kind') or '')}</b> {_e(ev.get('message') or '')}</li>" for ev in events)
    return f"<h2>Notes from the run</h2><ul class=events id=events>{items}</ul>"


# -- helpers ----------------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _metric(e: Experiment) -> Optional[float]:
    return float(e.metric) if e.metric is not None and math.isfinite(e.metric) else None


def _fmt(v: float, scale: float) -> str:
    return f"{v:.6f}" if scale < 10 else f"{v:.3f}" if scale < 1000 else f"{v:.1f}"


def _signed(v: float, f: Any) -> str:
    text = f(v)
    return text if text.startswith("-") else "+" + text


def _short(text: str, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
