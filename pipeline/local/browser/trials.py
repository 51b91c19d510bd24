"""The tuning job on the run page: a chart of the objective per trial and the trials table.

Shows the run's `TuningJob` (pipeline/local/tuning_jobs.py: an ml v1 Job or a Vertex AI
HyperparameterTuningJob, so both platforms' runs show alike); trials are shown by id, since
the service's order is not a documented promise.
"""
from __future__ import annotations

import math
from datetime import datetime
from html import escape
from typing import Any

from pipeline.local.browser.graph import duration_text
from pipeline.local.tuning_jobs import Trial, TuningJob, best_trial

BEST_BAR, OTHER_BAR, FAILED_MARK = "#1a73e8", "#aecbfa", "#9aa0a6"
CHART_W, CHART_H, PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 560, 210, 58, 12, 26, 34


def tuning_section(job: TuningJob | None, note: str) -> str:
    """Heading, goal and best trial, the chart, the table (or why there is nothing)."""
    title = "<h2>Hyperparameter tuning</h2>"
    if job is None:
        return f'{title}<p class="empty" id="no-trials">{escape(note)}</p>'
    minimize = job.goal == "MINIMIZE"
    trials = sorted(job.trials, key=_trial_order)
    best = best_trial(trials, minimize)
    best_text = (f" \u00b7 best trial {escape(best.trial_id)}: <b>{best.objective:.4f}</b>"
                 if best else "")
    caption = (f'<p class="meta" id="tuning-goal">Job <code>{escape(job.name)}</code> '
               f"{escape(job.state)} \u00b7 goal <b>{escape(job.goal)}</b> "
               f"{escape(job.metric)} ({'lower' if minimize else 'higher'} is better) \u00b7 "
               f"{len(trials)} trials{best_text}</p>")
    if job.error:
        caption += f'<div class="message">{escape(job.error)}</div>'
    if not trials:
        return f'{title}{caption}<p class="empty" id="no-trials">No trials yet.</p>'
    return title + caption + chart(trials, best, job.metric, job.goal) + _table(trials, best)


def chart(trials: list[Trial], best: Trial | None, tag: str, goal: str) -> str:
    """Bars of the objective per trial on a zoomed axis; the best bar highlighted."""
    values = [t.objective for t in trials if t.objective is not None]
    if not values:
        return '<p class="empty">No trial has reported the metric yet.</p>'
    low, high = min(values), max(values)
    pad = (high - low) * 0.25 or max(abs(high) * 0.02, 0.01)
    low, high = (max(low - pad, 0.0) if low >= 0 else low - pad), high + pad
    decimals = max(2, min(6, 1 - math.floor(math.log10(high - low))))
    plot_w, plot_h = CHART_W - PAD_LEFT - PAD_RIGHT, CHART_H - PAD_TOP - PAD_BOTTOM
    base = PAD_TOP + plot_h

    def y(value: float) -> float:
        return PAD_TOP + plot_h * (high - value) / (high - low)

    parts = [f'<svg class="chart" id="trial-chart" xmlns="http://www.w3.org/2000/svg" '
             f'width="{CHART_W}" height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" '
             f'role="img" aria-label="{escape(tag)} per trial">',
             f'<text x="{PAD_LEFT}" y="14">{escape(tag)} per trial ({escape(goal)})</text>']
    for index in range(4):
        value = low + (high - low) * index / 3
        parts.append(f'<line class="gridline" x1="{PAD_LEFT}" x2="{CHART_W - PAD_RIGHT}" '
                     f'y1="{y(value):.1f}" y2="{y(value):.1f}"/><text x="{PAD_LEFT - 6}" '
                     f'y="{y(value) + 4:.1f}" text-anchor="end">{value:.{decimals}f}</text>')
    slot = plot_w / len(trials)
    bar = min(46.0, slot * 0.62)
    for index, trial in enumerate(trials):
        centre = PAD_LEFT + slot * (index + 0.5)
        trial_id = escape(trial.trial_id or str(index + 1))
        value = trial.objective
        if value is None:
            parts.append(f'<text x="{centre:.1f}" y="{base - 6:.1f}" text-anchor="middle" '
                         f'fill="{FAILED_MARK}" class="no-metric">\u00d7 '
                         f"{escape(trial.state.lower())}</text>")
        else:
            is_best = trial is best
            fill = BEST_BAR if is_best else OTHER_BAR
            parts.append(f'<rect class="bar{" best" if is_best else ""}" id="bar-{trial_id}" '
                         f'x="{centre - bar / 2:.1f}" y="{y(value):.1f}" width="{bar:.1f}" '
                         f'height="{base - y(value):.1f}" fill="{fill}">'
                         f"<title>trial {trial_id}: {value:.6g}</title></rect>"
                         f'<text x="{centre:.1f}" y="{y(value) - 4:.1f}" text-anchor="middle">'
                         f"{value:.{decimals}f}{' best' if is_best else ''}</text>")
        parts.append(f'<text x="{centre:.1f}" y="{base + 15:.1f}" text-anchor="middle">'
                     f"{trial_id}</text>")
    parts.append(f'<line class="axis" x1="{PAD_LEFT}" x2="{CHART_W - PAD_RIGHT}" y1="{base}" '
                 f'y2="{base}"/><text x="{PAD_LEFT + plot_w / 2:.1f}" y="{CHART_H - 3}" '
                 'text-anchor="middle">trial</text></svg>')
    return "".join(parts)


def _table(trials: list[Trial], best: Trial | None) -> str:
    names = sorted({name for t in trials for name in t.parameters})
    head = "".join(f'<th class="num">{escape(name)}</th>' for name in names)
    rows = []
    for trial in trials:
        cells = "".join(f'<td class="num">{escape(_short(trial.parameters.get(name, "")))}</td>'
                        for name in names)
        best_class = ' class="best"' if trial is best else ""
        value = "" if trial.objective is None else f"{trial.objective:.4f}"
        rows.append(f'<tr id="trial-{escape(trial.trial_id)}"{best_class}>'
                    f"<td>{escape(trial.trial_id)}</td>{cells}"
                    f'<td class="num">{value}</td><td>{escape(trial.state)}</td>'
                    f'<td class="num">{_duration(trial)}</td></tr>')
    return (f'<table id="trials"><thead><tr><th>Trial</th>{head}<th class="num">Objective</th>'
            f'<th>State</th><th class="num">Duration</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _trial_order(trial: Trial) -> tuple:
    return (0, int(trial.trial_id), "") if trial.trial_id.isdigit() else (1, 0, trial.trial_id)


def _short(value: Any) -> str:
    """A hyperparameter as text, long floats cut to 6 significant digits."""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number.is_integer() or len(text) <= 8 else f"{number:.6g}"


def _duration(trial: Trial) -> str:
    try:
        start, end = (datetime.fromisoformat(text.replace("Z", "+00:00"))
                      for text in (trial.start, trial.end))
    except ValueError:
        return ""
    return duration_text((end - start).total_seconds())
