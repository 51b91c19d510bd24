"""Evaluation on the run page: metric against threshold, KFP metrics, confusion matrix.

Reads the evaluate step's `mlpipeline-metrics` (KFP v1 metrics JSON) and
`mlpipeline-ui-metadata` outputs (KFP v1 UI metadata: `confusion_matrix`, `table`).
"""
from __future__ import annotations

import csv
import io
from html import escape
from pathlib import Path

from pipeline.local.summary import RunSummary
from pipeline.schema import CLASS_NAMES

# Heat-map classes by the cell's share of its true class: heat-0 is an empty cell, heat-N
# holds shares up to HEAT_BOUNDS[N-1], heat-6 the rest (colours in templates/style.css).
HEAT_BOUNDS = (0.05, 0.2, 0.4, 0.6, 0.8)
HEAT_LABELS = ("0", "\u22645%", "\u226420%", "\u226440%", "\u226460%", "\u226480%", ">80%")


def verdict(summary: RunSummary) -> str:
    """Metric against threshold as the pipeline's condition decides it (strictly greater)."""
    if summary.metric_value is None:
        return ""
    if summary.threshold is None:
        return '<span class="empty">no evaluation_metric_threshold parameter</span>'
    if summary.metric_value > summary.threshold:
        return (f"&gt; threshold {summary.threshold:g} "
                '<span class="badge passed" id="verdict">passed</span>')
    return (f"\u2264 threshold {summary.threshold:g} "
            '<span class="badge not-passed" id="verdict">not passed</span>')


def evaluation_section(summary: RunSummary | None, metrics: list[dict],
                       ui_outputs: list[dict], running: bool = False) -> str:
    """The metric verdict, all metrics, then each UI output of the evaluate step."""
    parts = ["<h2>Evaluation</h2>"]
    if summary and summary.metric_value is not None:
        parts.append(f'<p id="metric-vs-threshold">{escape(summary.metric_name or "metric")} '
                     f"<b>{summary.metric_value:.4f}</b> {verdict(summary)}</p>")
    elif running:
        parts.append('<p class="empty" id="not-evaluated">Not evaluated yet.</p>')
    else:
        reason = summary.not_evaluated_reason if summary else ""
        parts.append(f'<p class="empty" id="not-evaluated">Not evaluated'
                     f'{": " + escape(reason) if reason else "."}</p>')
    if metrics:
        parts.append(_metrics_table(metrics, summary.metric_name if summary else None))
    for output in ui_outputs:
        kind = output.get("type")
        if kind == "confusion_matrix":
            parts.append(confusion_matrix(output))
        elif kind == "table":
            parts.append(f"<details><summary>UI metadata table</summary>{_table(output)}"
                         "</details>")
        else:
            parts.append(f'<p class="empty">UI output of type {escape(str(kind))} is not '
                         "shown here.</p>")
    return "".join(parts)


def _metrics_table(metrics: list[dict], selected: str | None) -> str:
    rows = []
    for metric in metrics:
        name, value = str(metric.get("name", "")), metric.get("numberValue")
        try:
            number = float(value)
        except (TypeError, ValueError):
            text = escape(str(value))
        else:
            text = (f"{number * 100:.2f}%" if metric.get("format") == "PERCENTAGE"
                    else f"{number:.4f}")
        mark = ' class="best"' if name == selected else ""
        rows.append(f'<tr id="metric-{escape(name)}"{mark}><td>{escape(name)}</td>'
                    f'<td class="num">{text}</td></tr>')
    return (f'<table id="metrics"><thead><tr><th>mlpipeline metric</th><th class="num">Value'
            f'</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _source(output: dict) -> str | None:
    """The output's CSV text: inline, or a local file; None when not readable here."""
    source = str(output.get("source", ""))
    if output.get("storage") == "inline":
        return source
    path = Path(source)
    return path.read_text(errors="replace") if "://" not in source and path.is_file() else None


def _class(label: str, index: int) -> tuple[int, str]:
    """(class id, class name) of a matrix label: a class name, a class id, or anything."""
    if label in CLASS_NAMES:
        return CLASS_NAMES.index(label), label
    if label.isdigit() and int(label) < len(CLASS_NAMES):
        return int(label), CLASS_NAMES[int(label)]
    return index, label


def confusion_matrix(output: dict) -> str:
    """The matrix as an HTML heat map: rows true class, columns predicted, by row share."""
    text = _source(output)
    if text is None:
        return (f'<p class="empty">Confusion matrix stored at {escape(str(output.get("source")))}'
                " is not readable here.</p>")
    names = [str(item.get("name")) for item in output.get("schema") or []]
    columns = [names.index(n) if n in names else i
               for i, n in enumerate(("target", "predicted", "count"))]
    counts: dict[tuple[str, str], int] = {}
    seen: list[str] = []
    for row in csv.reader(io.StringIO(text)):
        try:
            target, predicted = row[columns[0]].strip(), row[columns[1]].strip()
            count = int(float(row[columns[2]]))
        except (IndexError, ValueError):
            continue
        counts[target, predicted] = counts.get((target, predicted), 0) + count
        seen += [label for label in (target, predicted) if label not in seen]
    labels = [str(label) for label in output.get("labels") or seen]
    classes = [_class(label, index) for index, label in enumerate(labels)]
    head = "".join(f'<th class="cls" title="{escape(name)}">{number}</th>'
                   for number, name in classes)
    rows = []
    for target, (number, name) in zip(labels, classes, strict=True):
        total = sum(counts.get((target, other), 0) for other in labels)
        cells = []
        for predicted, (guess, guess_name) in zip(labels, classes, strict=True):
            count = counts.get((target, predicted), 0)
            share = count / total if total else 0.0
            level = 0 if count == 0 else 1 + sum(share > bound for bound in HEAT_BOUNDS)
            cells.append(f'<td id="cm-{number}-{guess}" class="heat-{level}" '
                         f'title="true {escape(name)}, predicted {escape(guess_name)}: {count} '
                         f'({share:.1%} of true {escape(name)})">{count}</td>')
        rows.append(f'<tr><th>{number} {escape(name)}</th>{"".join(cells)}'
                    f'<td class="num">{total}</td></tr>')
    legend = "".join(f'<span><i class="heat-{level}"></i>{escape(label)}</span>'
                     for level, label in enumerate(HEAT_LABELS))
    return ('<h2 style="margin-top:14px">Confusion matrix</h2>'
            f'<table class="confusion" id="confusion-matrix"><thead><tr><th>true \\ predicted'
            f'</th>{head}<th class="num">total</th></tr></thead><tbody>{"".join(rows)}'
            f'</tbody></table><div class="legend">share of the true class: {legend}</div>')


def _table(output: dict) -> str:
    text = _source(output)
    if text is None:
        return '<p class="empty">Table not readable here.</p>'
    header = "".join(f"<th>{escape(str(name))}</th>" for name in output.get("header") or [])
    rows = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>"
                   for row in csv.reader(io.StringIO(text)) if row)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"
