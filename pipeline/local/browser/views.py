"""HTML of the run browser: the runs list, one run's page, the error page.

Server-rendered from `templates/layout.html` (string.Template; jinja2 is not a dependency).
Every value taken from a record goes through `html.escape`: step messages, parameters and
job fields can hold anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from pipeline.local import records
from pipeline.local.browser import graph
from pipeline.local.browser.evaluation import evaluation_section, verdict
from pipeline.local.browser.trials import tuning_section
from pipeline.local.records import RunRecord
from pipeline.local.summary import RunSummary
from pipeline.local.tuning_jobs import TuningJob

TEMPLATES = Path(__file__).with_name("templates")
_LAYOUT = Template((TEMPLATES / "layout.html").read_text())
_STYLE = (TEMPLATES / "style.css").read_text()
REFRESH = '<meta http-equiv="refresh" content="2">\n'


@dataclass
class RunView:
    """Everything the run page shows, gathered from the run folder and the jobs folder."""

    record: RunRecord
    summary: RunSummary | None
    job: TuningJob | None = None
    job_note: str = ""
    metrics: list[dict] = field(default_factory=list)
    ui_outputs: list[dict] = field(default_factory=list)
    endpoint: dict | None = None  # the Vertex AI Endpoint the run deployed to, as it is now
    endpoint_note: str = ""


def e(value: Any) -> str:
    """HTML-escaped text of any value."""
    return escape(str(value))


def page(title: str, body: str, refresh: bool = False) -> str:
    """A whole HTML document; `refresh` reloads it every 2 s (a run still running)."""
    return _LAYOUT.substitute(title=e(title), body=body, style=_STYLE,
                              refresh=REFRESH if refresh else "")


def error_page(title: str, message: str) -> str:
    """A not-found or unreadable-record page with a way back."""
    return page(title, f'<nav class="crumbs"><a href="/">Runs</a></nav><h1>{e(title)}</h1>'
                       f'<section><p>{e(message)}</p><p><a href="/">Back to the runs</a></p>'
                       "</section>")


def timestamp(text: str, time_only: bool = False) -> str:
    """A record's UTC timestamp for people: `2026-11-26 06:50:00` or `06:50:00`."""
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return e(text)
    full = f"{moment:%Y-%m-%d %H:%M:%S}"
    return f'<span title="{full} UTC">{moment:%H:%M:%S}</span>' if time_only else full


def badge(status: str) -> str:
    """A status as a coloured pill."""
    return f'<span class="badge {graph.status_class(status)}">{e(status)}</span>'


def run_duration(record: RunRecord) -> str:
    """The run's duration (so far, while running)."""
    return graph.duration_text(graph.seconds(record.start, record.duration_s, record.status))


def runs_page(runs: list[tuple[RunRecord, RunSummary | None]], root: Path) -> str:
    """The runs list, newest first, or how to start a first run."""
    if not runs:
        body = ('<h1>Pipeline runs</h1><section class="empty-state"><p>No runs yet in '
                f"<code>{e(root)}</code>.</p><p>Start one with <code>make run-local</code>: it "
                "compiles the pipeline and runs it on this machine; the run shows up here "
                "while it runs.</p></section>")
        return page("Pipeline runs", body)
    rows = "".join(_run_row(record, summary) for record, summary in runs)
    body = ("<h1>Pipeline runs</h1><section><table class=\"runs\"><thead><tr><th>Run</th>"
            "<th>Status</th><th>Started (UTC)</th><th class=\"num\">Duration</th>"
            "<th>Metric</th><th>Deployed</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")
    running = any(record.status == records.RUNNING for record, _ in runs)
    return page("Pipeline runs", body, refresh=running)


def _run_row(record: RunRecord, summary: RunSummary | None) -> str:
    metric = deployed = '<span class="empty">\u2014</span>'
    if summary and summary.metric_value is not None:
        metric = f"{e(summary.metric_name or 'metric')} {summary.metric_value:.4f}"
    if summary and (summary.deployed_version or summary.deployed_endpoint):
        deployed = f"<code>{e(summary.deployed_version or summary.deployed_endpoint)}</code>"
    elif summary and record.status != records.RUNNING:
        deployed = f'no <span class="empty">({e(summary.not_deployed_reason)})</span>'
    link = f"/runs/{quote(record.run_id)}"
    return (f'<tr id="run-{e(record.run_id)}"><td class="nowrap"><a href="{e(link)}">'
            f"{e(record.run_id)}</a></td><td>{badge(record.status)}</td>"
            f'<td class="nowrap">{timestamp(record.start)}</td><td class="num nowrap">'
            f'{run_duration(record)}</td><td class="nowrap">{metric}</td><td>{deployed}</td></tr>')


def run_page(view: RunView) -> str:
    """One run: summary cards, graph, steps, tuning trials, evaluation, parameters."""
    record = view.record
    message = f'<div class="message">{e(record.message)}</div>' if record.message else ""
    head = (f'<nav class="crumbs"><a href="/">Runs</a> / {e(record.run_id)}</nav>'
            f"<h1>{e(record.run_id)} {badge(record.status)}</h1>"
            f'<p class="meta">{e(record.pipeline)} \u00b7 started {timestamp(record.start)} UTC'
            f" \u00b7 duration {run_duration(record) or 'unknown'} \u00b7 "
            f'<a href="/runs/{e(quote(record.run_id))}.json">record as JSON</a></p>{message}')
    legend = "".join(f'<span><i style="background:{fill}"></i>{e(status)}</span>'
                     for status, (fill, _) in graph.STATUS_COLOURS.items())
    present = {step.role for step in record.steps.values()}
    legend += "".join(f'<span class="legend-role"><i style="background:{colour}"></i>{e(role)}'
                      "</span>" for role, colour in graph.ROLE_COLOURS.items() if role in present)
    evaluation = evaluation_section(view.summary, view.metrics, view.ui_outputs,
                                    running=record.status == records.RUNNING)
    body = (head + _cards(view) + '<div class="grid">'
            f'<section id="graph"><h2>Pipeline graph</h2>{graph.render(record.steps)}'
            f'<div class="legend">{legend}</div></section>'
            f'<section id="steps"><h2>Steps</h2>{_steps_table(record)}</section>'
            f'<section id="tuning">{tuning_section(view.job, view.job_note)}</section>'
            f'<section id="evaluation">{evaluation}</section>'
            f'<section id="parameters" class="wide"><h2>Parameters</h2>{_parameters(record)}'
            "</section></div>")
    return page(f"Run {record.run_id}", body, refresh=record.status == records.RUNNING)


def _cards(view: RunView) -> str:
    summary, record = view.summary, view.record
    best = evaluation = deployment = '<span class="empty">\u2014</span>'
    if summary and summary.best_trial:
        value = summary.best_trial.get("metric_value")
        params = ", ".join(f"{e(name)}={e(text)}" for name, text in summary.best_trial.items()
                           if name != "metric_value")
        best = f'<div class="big">{e(_number(value))}</div><div>{params}</div>'
    if summary and summary.metric_value is not None:
        evaluation = f'<div class="big">{e(summary.metric_name or "metric")} ' \
                     f"{summary.metric_value:.4f}</div><div>{verdict(summary)}</div>"
    if summary and summary.deployed_version:
        deployment = (f'<div class="big">Deployed</div><div id="deployed-version">'
                      f"<code>{e(summary.deployed_version)}</code></div>")
    elif summary and summary.deployed_endpoint:
        deployment = _endpoint_card(view, summary.deployed_endpoint, summary.deployed_model_id)
    elif record.status == records.RUNNING:
        deployment = '<div class="big">Not yet</div><div>the run is still running</div>'
    elif summary:
        deployment = (f'<div class="big">Not deployed</div><div id="not-deployed-reason">'
                      f"{e(summary.not_deployed_reason)}</div>")
    return (f'<div class="cards"><div class="card" id="card-best"><h2>Best trial</h2>{best}</div>'
            f'<div class="card" id="card-evaluation"><h2>Evaluation</h2>{evaluation}</div>'
            f'<div class="card" id="card-deployment"><h2>Deployment</h2>{deployment}</div></div>')


def _endpoint_card(view: RunView, endpoint: str, deployed_id: str | None) -> str:
    """A Vertex AI deployment: the endpoint, the deployed model, its share of the traffic."""
    card = (f'<div class="big">Deployed</div><div id="deployed-endpoint">endpoint '
            f"<code>{e(endpoint)}</code></div>")
    deployed = next((item for item in (view.endpoint or {}).get("deployedModels", [])
                     if item.get("id") == deployed_id), None)
    if deployed is None:
        why = view.endpoint_note or f"deployed model {deployed_id} is no longer on it"
        return card + f'<div id="deployed-model" class="empty">{e(why)}</div>'
    share = (view.endpoint or {}).get("trafficSplit", {}).get(deployed_id, 0)
    return card + (f'<div id="deployed-model">deployed model <code>{e(deployed_id)}</code> '
                   f"({e(deployed.get('displayName', ''))}, model "
                   f"<code>{e(deployed.get('model', ''))}</code>) \u00b7 {e(share)}% of the "
                   f"traffic</div>")


def _steps_table(record: RunRecord) -> str:
    plan = graph.layout(record.steps)
    order = sorted(record.steps, key=lambda name: (plan.nodes[name][1], plan.nodes[name][0]))
    rows = []
    for name in order:
        step = record.steps[name]
        label = e(name) + (f' <span class="empty">in {e(step.parent)}</span>'
                           if step.parent else "")
        step_path = quote(name, safe="")  # a loop item may hold a slash
        link = (f'<a href="/runs/{e(quote(record.run_id))}/steps/{e(step_path)}/log">log</a>'
                if step.log else "")
        duration = graph.duration_text(graph.seconds(step.start, step.duration_s, step.status))
        rows.append(f'<tr id="step-{e(name)}"><td class="step">{label}</td>'
                    f"<td>{badge(step.status)}</td><td>{timestamp(step.start, time_only=True)}"
                    f'</td><td class="num">{duration}</td><td class="num">{step.attempts}</td>'
                    f"<td>{link}</td></tr>")
        if step.message:
            tone = " failed" if step.status == records.FAILED else ""
            rows.append(f'<tr class="message-row"><td colspan="6" class="msg{tone}">'
                        f"{e(step.message)}</td></tr>")
    return ('<table class="steps"><thead><tr><th>Step</th><th>Status</th><th>Started</th>'
            '<th class="num">Duration</th><th class="num" title="attempts">Tries</th><th></th>'
            "</tr></thead>"
            f'<tbody>{"".join(rows)}</tbody></table>')


def _parameters(record: RunRecord) -> str:
    if not record.parameters:
        return '<p class="empty">No parameters recorded.</p>'
    rows = "".join(f'<tr><th>{e(name)}</th><td><code>{e(value)}</code></td></tr>'
                   for name, value in record.parameters.items())
    return f"<table>{rows}</table>"


def _number(text: str | None) -> str:
    try:
        return f"{float(text):.4f}"
    except (TypeError, ValueError):
        return text or ""
