"""The HTML report: one self-contained file (inline CSS, inline SVG, a little vanilla JS, nothing
fetched from the network), made from the session's `Report` (formats/jsonreport.py).

Built for big suites: the table's rows are plain HTML written here (so the page reads without
JS), the per-test timelines travel once as compact JSON, and a chart is drawn only when its row
is opened (or, for the few violations, when the page loads). Sorting and filtering move or hide
existing rows; nothing is re-rendered.
"""

from __future__ import annotations

import html
import json
from typing import Any

from ..config.units import GIB, MIB, human_bytes
from ..formats.baseline import amount, seen_text, speed_text
from ..formats.jsonreport import Report
from ..model.records import UsageRecord
from ..model.timeline import Points
from . import leaks as leak_text
from . import markdown, text

#: Rows of the table laid out at once (the rest after "show all", or found by the filter).
PAGE_ROWS = 500


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _script_json(value: object) -> str:
    """JSON that cannot end the <script> element it sits in."""
    return (
        json.dumps(value, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


# -- data for the charts ------------------------------------------------------------------------


def chart_data(record: UsageRecord) -> dict[str, Any]:
    """What one test's charts need, compact: MiB, GiB and seconds, rounded."""
    budget = record.budget
    data: dict[str, Any] = {
        "lm": budget.mem_mb,
        "lc": budget.cpu_s,
        "lg": budget.gpu_gb,
        "va": record.violation_at_s,
        "vr": None if record.violation is None else record.violation.resource,
    }
    for growth in () if record.regression is None else record.regression.growths:
        # The baseline's range and what is allowed, drawn on the test's own chart.
        scale = {"mem": MIB, "cpu": 1.0}.get(growth.resource)
        if scale is not None:
            data["b" + growth.resource[0]] = [
                round(value / scale, 3)
                for value in (growth.before_min, growth.before, growth.allowed)
            ]
    leaks = record.leaks
    if leaks is not None and leaks.readings:
        # Leak hunting: own memory after each round, the warm-up rounds apart, the allowance.
        data["r"] = [round(reading.own_memory_bytes / MIB, 3) for reading in leaks.readings]
        data["rw"] = leaks.warmup_rounds
        data["rv"] = leak_text.verdict_word(leaks)
        if leaks.allowance_bytes is not None:
            data["ra"] = round(leaks.allowance_bytes / MIB, 3)
    points = Points.of(record.timeline)
    if points is not None:
        data["t"] = [round(value, 3) for value in points.t_s]
        data["m"] = [round(value / MIB, 2) for value in points.mem_bytes]
        data["c"] = [round(value, 3) for value in points.cpu_s]
        if points.gpu_bytes is not None:
            data["g"] = [
                None if value is None else round(value / GIB, 4) for value in points.gpu_bytes
            ]
    return data


# -- page parts ---------------------------------------------------------------------------------


def _header(report: Report) -> str:
    verdict = markdown.verdict(report, marks=False).removeprefix("### taichi-limits: ")
    failing = report.failing or not report.complete
    rows = "".join(
        f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>"
        for key, value in sorted(report.environment.items())
    )
    baseline = report.baseline
    compared = ""
    if baseline is not None:
        compared = (
            f"<p>Compared with the baseline <code>{_e(baseline.path)}</code>, "
            f"tolerance <code>{_e(baseline.tolerance)}</code>.</p>"
        )
        compared += "".join(
            f'<p class="warn" role="note"><strong>Warning:</strong> {_e(line)}</p>'
            for line in baseline.environment_warnings
        )
        speeds = report.speeds()
        if speeds is not None:
            compared += f"<p><strong>Machine speed:</strong> {_e(speed_text(*speeds))}.</p>"
    return (
        f"<header><h1>taichi-limits report</h1>"
        f'<p id="verdict" class="verdict {"bad" if failing else "good"}">{_e(verdict)}</p>'
        f'<p class="when">Written {_e(report.created_at)}; pytest exit status '
        f"{_e(report.exit_status)}.</p>{_source(report)}{compared}"
        f'<details><summary>Environment</summary><dl class="env">{rows}</dl></details>'
        f"</header>"
    )


def _source(report: Report) -> str:
    """The commit, branch and command line of the run, those that are known."""
    source = report.source
    parts = [
        f"<dt>{name}</dt><dd><code>{_e(value)}</code></dd>"
        for name, value in (
            ("Commit", source.commit),
            ("Branch", source.branch),
            ("Command", source.command),
        )
        if value
    ]
    return f'<dl class="source">{"".join(parts)}</dl>' if parts else ""


def _violations(report: Report, index: dict[str, int]) -> str:
    found = report.violations
    if not found:
        return ""
    parts = [f'<section id="violations"><h2>Budget violations ({len(found)})</h2>']
    for record in found:
        assert record.violation is not None
        parts.append(
            f'<article class="violation"><h3>{_e(record.nodeid)}</h3>'
            f'<div class="charts" data-i="{index[record.nodeid]}"></div>'
            f"<pre>{_e(text.violation_report(record.violation, record))}</pre></article>"
        )
    parts.append("</section>")
    return "".join(parts)


def _failures(report: Report) -> str:
    """Failed, erroring or crashed tests that are no budget violation, each with its reason."""
    found = report.failed_otherwise()
    if not found:
        return ""
    rows = "".join(
        f'<tr><td class="id">{_e(record.nodeid)}</td>'
        f'<td><span class="o {_e(record.outcome)}">{_e(record.outcome)}</span>'
        f"{'' if record.started else ' (not started)'}</td>"
        f'<td class="why">{_e(record.reason or "—")}</td></tr>'
        for record in found
    )
    return (
        f'<section id="failures"><h2>Failures that are not budget violations ({len(found)})'
        '</h2><div class="scroll"><table><thead><tr><th>Test</th><th>Outcome</th>'
        f"<th>Reason</th></tr></thead><tbody>{rows}</tbody></table></div></section>"
    )


def _leaks(report: Report) -> str:
    """Leak hunting: the tests that leaked (or whose rounds were not judged), each with what grew
    per round and its cause; the others counted. Their per-round charts are beside each test's
    timeline."""
    hunted = [record for record in report.records if record.leaks is not None]
    if not hunted:
        return ""
    rows = []
    for record in hunted:
        leaks = record.leaks
        assert leaks is not None
        if leaks.judged and not leaks.leaking:
            continue
        rows.append(
            f'<tr><td class="id">{_e(record.nodeid)}</td><td>{_e(leak_text.verdict_word(leaks))}'
            f"</td><td>{_e(leak_text.summary(leaks) or leak_text.own_growth(leaks))}</td>"
            f'<td class="why">{_e("; ".join(leaks.causes) or leaks.note or "—")}</td></tr>'
        )
    leaking = sum(1 for record in hunted if record.leaks is not None and record.leaks.leaking)
    table = (
        '<div class="scroll"><table><thead><tr><th>Test</th><th>Verdict</th>'
        f"<th>Grew per round</th><th>Cause</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></div>"
        if rows
        else ""
    )
    clean = len(hunted) - len(rows)
    return (
        f'<section id="leaks"><h2>Leak hunting ({leaking} of {len(hunted)} tests leaked)</h2>'
        f"{table}{f'<p>No leak in {clean} of them.</p>' if clean else ''}</section>"
    )


def _bars(before: float, after: float, allowed: float) -> str:
    """Two horizontal bars, before and after, and a mark at "allowed up to", scaled to the
    largest of the three."""
    top = max(before, after, allowed, 1e-12)
    width_before, width_after = 140 * before / top, 140 * after / top
    mark = 140 * allowed / top
    return (
        f'<svg class="bars" width="150" height="26" role="img" '
        f'aria-label="before, after and allowed up to"><rect x="0" y="2" height="9" '
        f'width="{width_before:.1f}" class="before"/><rect x="0" y="15" height="9" '
        f'width="{width_after:.1f}" class="after"/><line class="allowed" x1="{mark:.1f}" '
        f'x2="{mark:.1f}" y1="0" y2="26"/></svg>'
    )


_LEGEND = (
    '<p class="legend"><span class="key before"></span> before: the baseline\'s largest figure '
    '(its range where it saw several runs) <span class="key after"></span> after: this run '
    '<span class="key allowed"></span> allowed up to: before plus the tolerance. On a test\'s '
    "chart the grey band is the baseline's range and the orange dashes what is allowed.</p>"
)


def _regressions(report: Report, index: dict[str, int]) -> str:
    if report.baseline is None:
        return ""
    grown = report.regressions
    if not grown:
        return (
            '<section id="regressions"><h2>Regressions</h2><p>No test grew beyond the '
            "tolerance.</p></section>"
        )
    rows = []
    for record, growth in report.exceeded_growths():
        kind = growth.kind
        percent = growth.growth_percent
        assert record.regression is not None
        rows.append(
            f'<tr><td class="id">{_e(record.nodeid)}</td>'
            f"<td>{_e(growth.words)}</td>"
            f'<td class="n">{_e(seen_text(growth))}</td>'
            f'<td class="n">{_e(amount(growth.after, kind))}</td>'
            f'<td class="n">{_e(amount(growth.allowed, kind))}</td>'
            f'<td class="n">{_e(amount(growth.growth, kind, signed=True))}'
            f"{'' if percent is None else f' ({percent:+.1f}%)'}</td>"
            f"<td>{_bars(growth.before, growth.after, growth.allowed)}</td>"
            f"<td>{_e(growth.resource)}={_e(growth.tolerance)}"
            f"{' (warning only)' if record.regression.warn_only else ''}</td></tr>"
        )
    charts = "".join(
        f'<article class="grown"><h3>{_e(record.nodeid)}</h3>'
        f'<div class="charts" data-i="{index[record.nodeid]}"></div></article>'
        for record in grown
    )
    return (
        f'<section id="regressions"><h2>Regressions against the baseline ({len(grown)})</h2>'
        '<div class="scroll"><table><thead><tr><th>Test</th><th>Resource</th>'
        "<th>Before</th><th>After</th><th>Allowed up to</th><th>Growth</th>"
        f"<th>Before / after</th><th>Tolerance</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        f'</table></div>{_LEGEND}<p class="todo"><strong>What to do:</strong> '
        f"{markdown.what_to_do(report.baseline.path, lambda c: f'<code>{_e(c)}</code>', _e)}"
        f"</p>{charts}</section>"
    )


def _row(record: UsageRecord, position: int) -> str:
    hidden = " hidden" if position >= PAGE_ROWS else ""
    outcome = record.outcome
    use = record.budget_use()
    use_max = max(use.values()) if use else -1.0
    memory = float(record.own_memory_bytes)
    cpu, wall = record.cpu_s, record.wall_s
    gpu = record.gpu_peak_bytes
    flags = " ".join(
        flag
        for flag, on in (
            ("violation", record.violation is not None),
            ("regression", record.regression is not None),
            ("not-started", not record.started),
        )
        if on
    )
    use_text = "—" if not use else f"{100 * use_max:.0f}%"
    use_title = ", ".join(f"{key} {100 * value:.0f}%" for key, value in sorted(use.items()))
    badges = "".join(f' <span class="badge {flag}">{flag}</span>' for flag in flags.split())
    return (
        f'<tr{hidden} data-i="{position}" data-o="{_e(outcome)}" data-f="{flags}" '
        f'data-k="{memory:.0f} {cpu:.4f} {wall:.4f} {-1 if gpu is None else gpu} '
        f'{use_max:.4f}">'
        f'<td class="id">{_e(record.nodeid)}{badges}</td>'
        f'<td><span class="o {_e(outcome)}">{_e(outcome)}</span></td>'
        f'<td class="n">{human_bytes(memory)}</td><td class="n">{cpu:.2f} s</td>'
        f'<td class="n">{wall:.2f} s</td>'
        f'<td class="n">{"—" if gpu is None else human_bytes(float(gpu))}</td>'
        f'<td class="n" title="{_e(use_title)}">{use_text}</td>'
        f'<td><button type="button" class="show" aria-expanded="false">chart</button></td>'
        f"</tr>"
    )


def _table(records: tuple[UsageRecord, ...]) -> str:
    headers = [
        ("Test", "s"),
        ("Outcome", "s"),
        ("Own memory", "n0"),
        ("CPU", "n1"),
        ("Wall", "n2"),
        ("GPU", "n3"),
        ("Budget use", "n4"),
    ]
    head = "".join(
        f'<th aria-sort="none"><button type="button" data-sort="{key}" '
        f'data-col="{column}">{name}</button></th>'
        for column, (name, key) in enumerate(headers)
    )
    outcomes = sorted({record.outcome for record in records})
    options = "".join(f'<option value="{_e(o)}">{_e(o)}</option>' for o in outcomes)
    body = "".join(_row(record, position) for position, record in enumerate(records))
    return (
        f'<section id="tests"><h2>All supervised tests ({len(records)})</h2>'
        '<div class="filters"><label>Filter <input id="filter" type="search" '
        'placeholder="part of a test id" autocomplete="off"></label> '
        '<label>Show <select id="show"><option value="">all outcomes</option>'
        '<option value="violation">violations</option>'
        f'<option value="regression">regressions</option>{options}</select></label> '
        '<span id="count" aria-live="polite"></span> '
        '<button type="button" id="more" hidden>show all</button></div>'
        f'<div class="scroll"><table id="table"><thead><tr>{head}<th>Timeline</th></tr>'
        f"</thead><tbody>{body}</tbody></table></div></section>"
    )


_CSS = """
:root{--fg:#1b1b1b;--muted:#4a4a4a;--bg:#fff;--line:#d0d0d0;--bad:#b00020;--good:#1b5e20;
--warn:#7a4b00;--mem:#0b57d0;--cpu:#8a4500;--gpu:#6a1b9a;--lim:#b00020}
*{box-sizing:border-box}body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg);margin:0 auto;padding:12px 16px;max-width:1400px}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.2em 0 .4em}
h3{font-size:1em;margin:.3em 0;word-break:break-all}
.verdict{font-weight:600;font-size:1.1em;padding:.4em .6em;border-left:6px solid}
.verdict.bad{color:var(--bad);border-color:var(--bad);background:#fdecee}
.verdict.good{color:var(--good);border-color:var(--good);background:#e8f5e9}
.warn{color:var(--warn);background:#fff4e0;padding:.3em .6em}.when{color:var(--muted)}
dl.env{display:grid;grid-template-columns:max-content 1fr;gap:0 1em}dd{margin:0}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
td.n,th:nth-child(n+3){text-align:right}td.id{word-break:break-all;min-width:14em}
th button{font:inherit;font-weight:600;background:none;border:0;padding:0;cursor:pointer;
color:inherit}th[aria-sort=ascending] button::after{content:" ▲"}
th[aria-sort=descending] button::after{content:" ▼"}
.o{font-weight:600}.o.failed,.o.error{color:var(--bad)}.o.passed{color:var(--good)}
.badge{font-size:.75em;border:1px solid;border-radius:3px;padding:0 3px;white-space:nowrap}
.badge.violation{color:var(--bad)}.badge.regression{color:var(--warn)}
.filters{display:flex;flex-wrap:wrap;gap:.5em 1.2em;align-items:center;margin:.4em 0}
input,select,button.show{font:inherit;padding:2px 6px}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:13px;white-space:pre}
article.violation{border-top:2px solid var(--bad);margin:1em 0}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{width:340px;max-width:100%}
.chart svg{width:100%;height:auto;display:block}.chart p{margin:0;font-size:13px;color:var(--muted)}
svg .mem{stroke:var(--mem)}svg .cpu{stroke:var(--cpu)}svg .gpu{stroke:var(--gpu)}
svg .lim{stroke:var(--lim);stroke-dasharray:6 4}svg .vio{stroke:var(--bad);stroke-width:2}
svg text{font:11px system-ui,sans-serif;fill:var(--muted)}svg text.viot{fill:var(--bad)}
svg .axis{stroke:#888}svg .round{fill:var(--mem)}
svg.bars .before{fill:#8c8c8c}svg.bars .after{fill:var(--warn)}
tr.detail td{background:#fafafa}
@media (max-width:700px){body{padding:8px}
/* A phone: each table row is the test id on a line of its own, then the figures in equal
   columns under their headers, so no table is wider than the screen and every button in it is
   on the screen; long ids, tolerances and stacks wrap. */
table,thead,tbody{display:block}tr{display:flex;flex-wrap:wrap;border-bottom:1px solid var(--line)}
tr[hidden]{display:none}th,td{flex:1 1 0;min-width:0;border:0;padding:3px 2px;
overflow-wrap:anywhere}th:first-child,td:first-child,td[colspan]{flex-basis:100%;text-align:left}
table{font-size:13px}th{font-size:12px}td.id{min-width:0}
#table th:nth-child(5),#table td:nth-child(5),#table th:nth-child(6),#table td:nth-child(6){
display:none}
svg.bars{zoom:.4}pre{white-space:pre-wrap;overflow-wrap:anywhere}
dl.env{grid-template-columns:max-content minmax(0,1fr)}dd{overflow-wrap:anywhere}}
"""

#: The failures list, the regression view's legend and ranges, the run's source: kept apart from
#: the page's layout above (the two change for different reasons).
_RECORDS_CSS = """
.badge.not-started{color:var(--bad)}
#failures th,#failures td{text-align:left}td.why{word-break:break-word}
dl.source{display:grid;grid-template-columns:max-content 1fr;gap:0 1em;margin:.3em 0}
dl.source code{word-break:break-all}
svg.bars .allowed{stroke:var(--fg);stroke-width:2}svg .band{fill:#8c8c8c;fill-opacity:.25}
svg .allow{stroke:var(--warn);stroke-dasharray:3 3}
.legend,.todo{font-size:13px;color:var(--muted)}.legend .key{display:inline-block;width:14px;
height:9px;vertical-align:middle}.key.before{background:#8c8c8c}.key.after{background:var(--warn)}
.key.allowed{width:2px;height:14px;background:var(--fg)}article.grown{margin:.6em 0}
"""

_JS = r"""
(function(){
"use strict";
var DATA=JSON.parse(document.getElementById("data").textContent),PAGE=__PAGE_ROWS__;
function f(v,d){return (Math.round(v*Math.pow(10,d))/Math.pow(10,d)).toString();}
function chart(title,unit,t,ys,cls,limit,va,vr,mine,band){
  var W=340,H=130,L=44,R=8,T=18,B=22,ok=[];
  for(var i=0;i<t.length;i++){if(ys[i]!==null&&ys[i]!==undefined){ok.push(i);}}
  if(!ok.length){return '<div class="chart"><p>'+title+': no samples</p></div>';}
  var tmax=Math.max(t[t.length-1],va===null?0:va,1e-3),ymax=0;
  ok.forEach(function(i){ymax=Math.max(ymax,ys[i]);});
  if(band){ymax=Math.max(ymax,band[2]);}
  var far=limit!==null&&limit>3*ymax&&ymax>0;
  if(limit!==null&&!far){ymax=Math.max(ymax,limit);}
  ymax=ymax>0?ymax*1.08:1;
  function X(v){return (L+(W-L-R)*v/tmax).toFixed(1);}
  function Y(v){return (T+(H-T-B)*(1-v/ymax)).toFixed(1);}
  var pts=ok.map(function(i){return X(t[i])+","+Y(ys[i]);}).join(" ");
  if(ok.length===1){pts=X(0)+","+Y(ys[ok[0]])+" "+pts;}
  var s='<svg viewBox="0 0 '+W+' '+H+'" role="img" aria-label="'+title+' over time">';
  s+='<text x="'+L+'" y="12">'+title+' ('+unit+')</text>';
  s+='<line class="axis" x1="'+L+'" y1="'+(H-B)+'" x2="'+(W-R)+'" y2="'+(H-B)+'"/>';
  s+='<line class="axis" x1="'+L+'" y1="'+T+'" x2="'+L+'" y2="'+(H-B)+'"/>';
  s+='<text x="2" y="'+(T+8)+'">'+f(ymax,ymax<10?2:0)+'</text><text x="2" y="'+(H-B)+'">0</text>';
  s+='<text x="'+L+'" y="'+(H-6)+'">0 s</text>';
  s+='<text x="'+(W-R-40)+'" y="'+(H-6)+'">'+f(tmax,2)+' s</text>';
  if(far){s+='<text x="'+(W-R-150)+'" y="12">limit '+limit+' '+unit+', above</text>';}
  else if(limit!==null){
    s+='<line class="lim" x1="'+L+'" x2="'+(W-R)+'" y1="'+Y(limit)+'" y2="'+Y(limit)+'">';
    s+='<title>limit '+limit+' '+unit+'</title></line>';
  }
  if(band){
    var hi=parseFloat(Y(band[1])),lo=parseFloat(Y(band[0]));
    s+='<rect class="band" x="'+L+'" width="'+(W-L-R)+'" y="'+hi+'" height="'+
      Math.max(1,lo-hi)+'"><title>baseline '+band[0]+'..'+band[1]+' '+unit+'</title></rect>';
    s+='<line class="allow" x1="'+L+'" x2="'+(W-R)+'" y1="'+Y(band[2])+'" y2="'+Y(band[2])+'">';
    s+='<title>allowed up to '+band[2]+' '+unit+'</title></line>';
  }
  s+='<polyline class="'+cls+'" fill="none" stroke-width="1.8" points="'+pts+'"/>';
  if(va!==null){
    s+='<line class="vio" x1="'+X(va)+'" x2="'+X(va)+'" y1="'+T+'" y2="'+(H-B)+'">';
    s+='<title>violation at '+f(va,2)+' s</title></line>';
    s+='<text class="viot" text-anchor="end" x="'+(Math.max(+X(va)-3,L+70))+'" y="'+(H-B-4)+'">';
    s+=(vr===mine?'violation':vr+' over')+'</text>';
  }
  return '<div class="chart">'+s+'</svg></div>';
}
function rounds(d){
  /* Leak hunting: own memory after each round; warm-up rounds left of the dashed line; the
     growth the allowance lets through, from the last warm-up round on, as a dotted line. */
  var W=340,H=130,L=44,R=8,T=18,B=22,n=d.r.length,ymax=0,w0=Math.max(0,(d.rw||0)-1);
  var top=d.ra===undefined?null:d.r[w0]+d.ra*(n-1-w0);
  d.r.forEach(function(v){ymax=Math.max(ymax,v);});
  if(top!==null){ymax=Math.max(ymax,top);}
  ymax=ymax>0?ymax*1.08:1;
  function X(i){return (L+(W-L-R)*(n>1?i/(n-1):0.5)).toFixed(1);}
  function Y(v){return (T+(H-T-B)*(1-v/ymax)).toFixed(1);}
  var s='<svg viewBox="0 0 '+W+' '+H+'" role="img" aria-label="own memory after each round">';
  s+='<text x="'+L+'" y="12">own memory per round (MiB): '+d.rv+'</text>';
  s+='<line class="axis" x1="'+L+'" y1="'+(H-B)+'" x2="'+(W-R)+'" y2="'+(H-B)+'"/>';
  s+='<line class="axis" x1="'+L+'" y1="'+T+'" x2="'+L+'" y2="'+(H-B)+'"/>';
  s+='<text x="2" y="'+(T+8)+'">'+f(ymax,ymax<10?2:0)+'</text><text x="2" y="'+(H-B)+'">0</text>';
  s+='<text x="'+L+'" y="'+(H-6)+'">round 1</text>';
  s+='<text x="'+(W-R-50)+'" y="'+(H-6)+'">round '+n+'</text>';
  if(d.rw>0&&d.rw<n){
    var w=((+X(d.rw-1))+(+X(d.rw)))/2;
    s+='<line class="lim" x1="'+w+'" x2="'+w+'" y1="'+T+'" y2="'+(H-B)+'">';
    s+='<title>warm-up rounds before this line, measured rounds after</title></line>';
  }
  if(top!==null&&n>1){
    s+='<line class="allow" x1="'+X(w0)+'" y1="'+Y(d.r[w0])+'" x2="'+X(n-1)+'" y2="'+Y(top)+'">';
    s+='<title>growth the allowance lets through: '+d.ra+' MiB per round</title></line>';
  }
  var pts=d.r.map(function(v,i){return X(i)+","+Y(v);}).join(" ");
  s+='<polyline class="mem" fill="none" stroke-width="1.8" points="'+pts+'"/>';
  d.r.forEach(function(v,i){
    s+='<circle class="round" cx="'+X(i)+'" cy="'+Y(v)+'" r="2.5"><title>round '+(i+1)+': '+
      v+' MiB</title></circle>';
  });
  return '<div class="chart">'+s+'</svg></div>';
}
function charts(d){
  var r=d.r?rounds(d):"";
  if(!d.t){
    return '<div class="chart"><p>No timeline: the test ended before the first sample, or '+
      'the report was written without timelines.</p></div>'+r;
  }
  var va=d.va===undefined?null:d.va,s="";
  s+=chart("own memory","MiB",d.t,d.m,"mem",d.lm,va,d.vr,"mem_mb",d.bm);
  s+=chart("CPU time","s",d.t,d.c,"cpu",d.lc,va,d.vr,"cpu_s",d.bc);
  if(d.g){s+=chart("GPU memory","GiB",d.t,d.g,"gpu",d.lg,va,d.vr,"gpu_gb");}
  return s+r;
}
document.querySelectorAll(".charts[data-i]").forEach(function(el){
  el.innerHTML=charts(DATA[+el.getAttribute("data-i")]);
});
var table=document.getElementById("table");
if(!table){return;}
var tbody=table.tBodies[0],rows=Array.prototype.slice.call(tbody.rows),limit=PAGE;
rows.forEach(function(tr){
  tr._id=tr.cells[0].firstChild.textContent.trim();tr._lid=tr._id.toLowerCase();
});
tbody.addEventListener("click",function(ev){
  var b=ev.target.closest("button.show");if(!b){return;}
  var tr=b.closest("tr"),next=tr.nextElementSibling;
  if(next&&next.classList.contains("detail")){
    next.remove();b.setAttribute("aria-expanded","false");return;
  }
  var d=document.createElement("tr");d.className="detail";
  d.innerHTML='<td colspan="8"><div class="charts">'+charts(DATA[+tr.getAttribute("data-i")])+
    '</div></td>';
  tr.after(d);b.setAttribute("aria-expanded","true");
});
function key(tr,k){
  if(k==="s0"){return tr._id;}
  if(k==="s1"){return tr.getAttribute("data-o");}
  return parseFloat(tr.getAttribute("data-k").split(" ")[+k.slice(1)]);
}
table.tHead.addEventListener("click",function(ev){
  var b=ev.target.closest("button[data-sort]");if(!b){return;}
  var th=b.parentNode,dir=th.getAttribute("aria-sort")==="ascending"?-1:1;
  var k=b.getAttribute("data-sort");
  if(k==="s"){k="s"+b.getAttribute("data-col");}
  table.querySelectorAll("th").forEach(function(h){
    if(h.hasAttribute("aria-sort")){h.setAttribute("aria-sort","none");}
  });
  th.setAttribute("aria-sort",dir===1?"ascending":"descending");
  tbody.querySelectorAll("tr.detail").forEach(function(d){d.remove();});
  tbody.querySelectorAll("button.show").forEach(function(x){
    x.setAttribute("aria-expanded","false");
  });
  var keyed=rows.map(function(tr){return [key(tr,k),tr];});
  keyed.sort(function(a,b){return a[0]<b[0]?-dir:a[0]>b[0]?dir:0;});
  rows=keyed.map(function(p){return p[1];});
  var frag=document.createDocumentFragment();rows.forEach(function(tr){frag.appendChild(tr);});
  tbody.appendChild(frag);filter();
});
var input=document.getElementById("filter"),show=document.getElementById("show");
var count=document.getElementById("count"),more=document.getElementById("more");
/* Only the first PAGE matching rows are laid out: a table of thousands of shown rows makes every
   click slow. "show all" lifts that. */
function filter(){
  var q=input.value.toLowerCase(),o=show.value,n=0;
  tbody.querySelectorAll("tr.detail").forEach(function(d){d.remove();});
  rows.forEach(function(tr){
    var ok=(!q||tr._lid.indexOf(q)>=0)&&
      (!o||tr.getAttribute("data-o")===o||
       (" "+tr.getAttribute("data-f")+" ").indexOf(" "+o+" ")>=0);
    if(ok){n++;}
    tr.hidden=!ok||n>limit;
  });
  count.textContent=n+" of "+rows.length+" match"+(n>limit?"; the first "+limit+" shown":"");
  more.hidden=n<=limit;
}
more.addEventListener("click",function(){limit=Infinity;filter();});
input.addEventListener("input",filter);show.addEventListener("change",filter);filter();
})();
"""


def render(report: Report) -> str:
    """The whole page."""
    records = report.records  # sorted by node id
    index = {record.nodeid: position for position, record in enumerate(records)}
    data = [chart_data(record) for record in records]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>taichi-limits report</title><style>{_CSS}{_RECORDS_CSS}</style></head><body>"
        f"{_header(report)}<main>{_violations(report, index)}{_leaks(report)}{_failures(report)}"
        f"{_regressions(report, index)}{_table(records)}</main>"
        f'<script type="application/json" id="data">{_script_json(data)}</script>'
        f"<script>{_JS.replace('__PAGE_ROWS__', str(PAGE_ROWS))}</script>"
        "<noscript><style>#table tr[hidden]{display:table-row}</style></noscript>"
        "</body></html>\n"
    )
