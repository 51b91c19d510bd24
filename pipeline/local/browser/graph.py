"""The run's DAG as inline SVG: rows by longest path, sub-DAG steps framed below their parent.

A simple layered (Sugiyama-style) drawing: each step gets a row (the longest dependency path
to it; a sub-DAG such as `condition-1` takes one row for itself and then the rows of its
inner steps), long edges pass through narrow placeholder slots so they bend around the
steps in between, rows are ordered and placed by the barycentre of their neighbours.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from pipeline.local import records, roles
from pipeline.local.records import StepRecord

NODE_W, NODE_H, ROW_H, GAP, SLOT_W, MARGIN, FRAME_PAD = 184, 44, 76, 28, 14, 14, 10
# status -> (fill, text colour); anything unknown is drawn as Pending.
STATUS_COLOURS: dict[str, tuple[str, str]] = {
    records.SUCCEEDED: ("#1e8e3e", "#ffffff"),
    records.FAILED: ("#d93025", "#ffffff"),
    records.RUNNING: ("#f9ab00", "#202124"),
    records.SKIPPED: ("#9aa0a6", "#ffffff"),
    records.OMITTED: ("#9aa0a6", "#ffffff"),
    records.PENDING: ("#ffffff", "#202124"),
}


# role (pipeline/local/roles.py: what the step runs) -> the colour of its node's left band.
ROLE_COLOURS: dict[str, str] = {
    roles.QUERY: "#795548",
    roles.TUNING: "#8e24aa",
    roles.TRAINING: "#00897b",
    roles.EVALUATION: "#ef6c00",
    roles.DEPLOY: "#3949ab",  # not the best trial's bar colour (trials.BEST_BAR)
}
ROLE_BAND = 7


def seconds(start: str, duration_s: float | None, status: str) -> float | None:
    """The recorded duration, or the time elapsed so far for a running step or run."""
    if duration_s is not None:
        return duration_s
    if status == records.RUNNING and start:
        began = datetime.fromisoformat(start.replace("Z", "+00:00"))
        return max(0.0, (datetime.now(UTC) - began).total_seconds())
    return None


def duration_text(value: float | None) -> str:
    """`0.4 s`, `12 s`, `3 min 05 s`, `1 h 02 min`; empty when unknown."""
    if value is None:
        return ""
    if value < 10:
        return f"{value:.1f} s"
    whole = round(value)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def status_class(status: str) -> str:
    """CSS class of a status, e.g. `status-succeeded`."""
    return "status-" + (status.lower() if status in STATUS_COLOURS else "pending")


@dataclass(frozen=True)
class Layout:
    """Where everything goes: node centres (x) and row tops (y), edge points, frame boxes."""

    nodes: dict[str, tuple[float, float]]
    edges: list[tuple[str, str, list[tuple[float, float]], bool]]  # from, to, points, nested
    frames: dict[str, tuple[float, float, float, float]]  # group step -> x, y, width, height
    width: float
    height: float


def rows(steps: Mapping[str, StepRecord]) -> dict[str, int]:
    """Row of each step: longest path among its siblings, inner steps after their sub-DAG."""
    children: dict[str, list[str]] = defaultdict(list)
    for name in sorted(steps):
        parent = steps[name].parent
        children[parent if parent in steps else ""].append(name)
    relative: dict[str, int] = {}
    span: dict[str, int] = {}

    def place(name: str, siblings: set[str], visiting: set[str]) -> int:
        if name not in relative:
            visiting.add(name)
            deps = [d for d in steps[name].dependencies if d in siblings and d not in visiting]
            relative[name] = max((place(d, siblings, visiting) + span[d] for d in deps),
                                 default=0)
            span[name] = 1 + depth(name)
            visiting.discard(name)
        return relative[name]

    def depth(group: str) -> int:
        members = set(children.get(group, ()))
        return max((place(name, members, set()) + span[name] for name in members), default=0)

    depth("")
    absolute: dict[str, int] = {}

    def assign(group: str, base: int) -> None:
        for name in children.get(group, ()):
            absolute[name] = base + relative[name]
            assign(name, absolute[name] + 1)

    assign("", 0)
    return absolute


def layout(steps: Mapping[str, StepRecord]) -> Layout:
    """Place the steps: rows, then order and x by barycentre, long edges through slots."""
    row_of = rows(steps)
    count = max(row_of.values(), default=-1) + 1
    members: list[list[str]] = [[] for _ in range(count)]
    width = {name: NODE_W for name in steps}
    chains: list[tuple[str, str, list[str], bool]] = []
    preds: dict[str, list[str]] = defaultdict(list)
    succs: dict[str, list[str]] = defaultdict(list)
    for name in sorted(steps, key=lambda n: (row_of[n], n)):
        members[row_of[name]].append(name)
    for name, step in sorted(steps.items()):
        sources = [(d, False) for d in step.dependencies if d in steps
                   and steps[d].parent == step.parent and row_of[d] < row_of[name]]
        if step.parent in steps and not any(d in steps and steps[d].parent == step.parent
                                            for d in step.dependencies):
            sources.append((step.parent, True))
        for source, nested in sources:
            path = [source]
            for row in range(row_of[source] + 1, row_of[name]):
                slot = f"\0{source}\0{name}\0{row}"
                members[row].append(slot)
                width[slot] = SLOT_W
                path.append(slot)
            path.append(name)
            for a, b in zip(path, path[1:], strict=False):
                preds[b].append(a)
                succs[a].append(b)
            chains.append((source, name, path, nested))
    x = _place(members, width, preds, succs)
    left = min((x[n] - width[n] / 2 for row in members for n in row), default=0.0)
    shift = MARGIN + FRAME_PAD - left
    x = {name: value + shift for name, value in x.items()}
    nodes = {name: (x[name], MARGIN + row_of[name] * ROW_H) for name in steps}
    edges = []
    for source, target, path, nested in chains:
        points = [(x[source], nodes[source][1] + NODE_H)]
        for slot in path[1:-1]:
            top = MARGIN + int(slot.rsplit("\0", 1)[1]) * ROW_H
            points += [(x[slot], top), (x[slot], top + NODE_H)]
        points.append((x[target], nodes[target][1]))
        edges.append((source, target, points, nested))
    frames = {group: _frame(group, steps, nodes) for group in steps
              if any(s.parent == group for s in steps.values())}
    right = max((x[n] + width[n] / 2 for row in members for n in row), default=0.0)
    return Layout(nodes, edges, frames, right + MARGIN + FRAME_PAD, count * ROW_H + MARGIN)


def _place(members: list[list[str]], width: dict[str, float], preds: dict[str, list[str]],
           succs: dict[str, list[str]]) -> dict[str, float]:
    """Order each row and set x: a few sweeps pulling every slot towards its neighbours."""
    x: dict[str, float] = {}
    for row in members:
        _spread(row, [0.0] * len(row), width, x)
    sweeps = [(members[1:], preds), (members[-2::-1], succs), (members[1:], preds)]
    for order, neighbours in sweeps:
        for row in order:
            wanted = [sum(x[n] for n in neighbours[name]) / len(neighbours[name])
                      if neighbours[name] else x[name] for name in row]
            ranked = sorted(zip(wanted, row, strict=True), key=lambda item: item[0])
            row[:] = [name for _, name in ranked]
            _spread(row, [value for value, _ in ranked], width, x)
    return x


def _spread(row: list[str], wanted: list[float], width: dict[str, float],
            x: dict[str, float]) -> None:
    """Put the row's slots near their wanted x, in order, without overlap, same mean."""
    placed: list[float] = []
    for index, name in enumerate(row):
        value = wanted[index]
        if placed:
            previous = row[index - 1]
            value = max(value, placed[-1] + (width[previous] + width[name]) / 2 + GAP)
        placed.append(value)
    shift = (sum(wanted) - sum(placed)) / len(row) if row else 0.0
    for name, value in zip(row, placed, strict=True):
        x[name] = value + shift


def _frame(group: str, steps: Mapping[str, StepRecord],
           nodes: Mapping[str, tuple[float, float]]) -> tuple[float, float, float, float]:
    inside = [group]
    for name in inside:
        inside += [child for child, step in steps.items() if step.parent == name]
    left = min(nodes[n][0] for n in inside) - NODE_W / 2 - FRAME_PAD
    right = max(nodes[n][0] for n in inside) + NODE_W / 2 + FRAME_PAD
    top = min(nodes[n][1] for n in inside) - FRAME_PAD
    bottom = max(nodes[n][1] for n in inside) + NODE_H + FRAME_PAD
    return left, top, right - left, bottom - top


def render(steps: Mapping[str, StepRecord]) -> str:
    """The graph as an `<svg>` element; each node is `<g id="node-NAME" class="node status-X">`."""
    if not steps:
        return '<p class="empty">No steps recorded.</p>'
    plan = layout(steps)
    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" role="img" '
             f'aria-label="pipeline graph" width="{plan.width:.0f}" height="{plan.height:.0f}" '
             f'viewBox="0 0 {plan.width:.0f} {plan.height:.0f}">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#80868b"/>'
             '</marker></defs>']
    for group, (left, top, wide, high) in plan.frames.items():
        parts.append(f'<rect class="frame" id="frame-{escape(group)}" x="{left:.1f}" '
                     f'y="{top:.1f}" width="{wide:.1f}" height="{high:.1f}" rx="10"/>')
    for source, target, points, nested in plan.edges:
        parts.append(f'<path class="edge{" nested" if nested else ""}" '
                     f'data-from="{escape(source)}" data-to="{escape(target)}" '
                     f'd="{_curve(points)}" marker-end="url(#arrow)"/>')
    for name, (centre, top) in plan.nodes.items():
        parts.append(_node(steps[name], centre, top))
    parts.append("</svg>")
    return "".join(parts)


def _curve(points: list[tuple[float, float]]) -> str:
    """Vertical S-curves between consecutive points, straight runs through slots."""
    path = f"M{points[0][0]:.1f},{points[0][1]:.1f}"
    for index, (x2, y2) in enumerate(points[1:], start=1):
        x1, y1 = points[index - 1]
        if x1 == x2:
            path += f" L{x2:.1f},{y2:.1f}"
        else:
            middle = (y1 + y2) / 2
            path += f" C{x1:.1f},{middle:.1f} {x2:.1f},{middle:.1f} {x2:.1f},{y2:.1f}"
    return path


def _node(step: StepRecord, centre: float, top: float) -> str:
    """A step's box: its status colour, its role (the component it runs) as a coloured band
    and the first word of its detail line."""
    fill, ink = STATUS_COLOURS.get(step.status, STATUS_COLOURS[records.PENDING])
    label = step.name if len(step.name) <= 24 else step.name[:23] + "\u2026"
    status = step.status if step.status in STATUS_COLOURS else records.PENDING
    role = step.role if step.role in ROLE_COLOURS else ""
    detail = " \u00b7 ".join(part for part in (
        role, status, duration_text(seconds(step.start, step.duration_s, step.status))) if part)
    ran = f" ({step.component or 'its own program'})" if role else ""
    band = (f'<rect class="role" width="{ROLE_BAND}" height="{NODE_H}" rx="3" '
            f'fill="{ROLE_COLOURS[role]}"/>' if role else "")
    role_class = f" role-{role}" if role else ""
    return (f'<g id="node-{escape(step.name)}" class="node {status_class(step.status)}'
            f'{role_class}" transform="translate({centre - NODE_W / 2:.1f},{top:.1f})">'
            f"<title>{escape(step.name)}: {escape(step.status)}"
            f"{escape(f' - {role}{ran}' if role else '')}</title>"
            f'<rect width="{NODE_W}" height="{NODE_H}" rx="7" fill="{fill}"/>{band}'
            f'<text x="{NODE_W / 2}" y="18" fill="{ink}" class="name">{escape(label)}</text>'
            f'<text x="{NODE_W / 2}" y="35" fill="{ink}" class="detail">{escape(detail)}</text>'
            "</g>")
