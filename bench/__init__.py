"""Benchmarks of the local mode (`make bench`): shared row type, statistics and formatting."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MISSING = "—"


def stats(values: list[float], digits: int = 3) -> dict:
    """Median, min and max of repeated measurements (and the values, for the JSON)."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "values": [round(v, digits) for v in values]}


def format_stat(value: dict | float | str | None, digits: int = 2) -> str:
    """`median [min-max]` for repeated measurements, a plain number, or text as is."""
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return (f"{value['median']:.{digits}f} "
                f"[{value['min']:.{digits}f}-{value['max']:.{digits}f}]")
    return f"{value:.{digits}f}"


def median(value: dict | float | None) -> float | None:
    """The median of a stats dict, or the number itself."""
    return value["median"] if isinstance(value, dict) else value


@dataclass
class Row:
    """One line of the results table; `ours`/`baseline` are stats dicts, numbers or text."""

    benchmark: str
    metric: str
    ours: dict | float | str | None = None
    baseline: dict | float | str | None = None
    target: str = MISSING
    met: bool | None = None
    digits: int = 2
    notes: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """ours / baseline (medians) when both are numbers."""
        ours, baseline = median(self.ours), median(self.baseline)
        if isinstance(ours, int | float) and isinstance(baseline, int | float) and baseline:
            return round(ours / baseline, 3)
        return None

    def cells(self) -> list[str]:
        """The table cells: benchmark, metric, ours, baseline, ratio, target, met?."""
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else MISSING
        met = MISSING if self.met is None else ("yes" if self.met else "NO")
        return [self.benchmark, self.metric, format_stat(self.ours, self.digits),
                format_stat(self.baseline, self.digits), ratio, self.target, met]

    def as_dict(self) -> dict:
        """The row for the JSON results, ratio included."""
        return {**asdict(self), "ratio": self.ratio}
