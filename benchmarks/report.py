"""Figures, the one table, targets, and the JSON file.

A `Figure` is one metric of one workload on one peer, with a value per
repetition; the table shows its median and min-max and, for throughputs
(MiB/s), its median as a ratio to each machine limit measured in the run.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

LIMIT_WORKLOAD = "machine limit"
LIMITS = {"md5": "MD5, one core", "copy": "loopback copy", "hash+write": "loopback + hash + write + fsync"}
THROUGHPUT = "MiB/s"


@dataclass
class Figure:
    workload: str
    peer: str
    metric: str
    values: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def low(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def high(self) -> float | None:
        return max(self.values) if self.values else None


@dataclass
class Target:
    name: str
    met: bool | None  # None: not measured in this run
    detail: str


class Results:
    """Every figure of the run, in the order first added."""

    def __init__(self) -> None:
        self.figures: dict[tuple[str, str, str], Figure] = {}
        self.notes: list[str] = []
        self.retried = 0  # repetitions run again because other processes were busy

    def figure(self, workload: str, peer: str, metric: str) -> Figure:
        key = (workload, peer, metric)
        if key not in self.figures:
            self.figures[key] = Figure(workload, peer, metric)
        return self.figures[key]

    def add(self, workload: str, peer: str, metric: str, value: float) -> None:
        self.figure(workload, peer, metric).values.append(value)

    def fail(self, workload: str, peer: str, metric: str, error: str) -> None:
        self.figure(workload, peer, metric).errors.append(error)

    def median(self, workload: str, peer: str, metric: str) -> float | None:
        figure = self.figures.get((workload, peer, metric))
        return figure.median if figure else None

    def limit(self, key: str) -> float | None:
        return self.median(LIMIT_WORKLOAD, "-", f"{LIMITS[key]} ({THROUGHPUT})")

    def ratios(self, figure: Figure) -> dict[str, float]:
        """The figure's median over each machine limit, for throughputs only."""
        if not figure.metric.endswith(f"({THROUGHPUT})") or figure.median is None:
            return {}
        limits = {key: self.limit(key) for key in LIMITS}
        return {key: figure.median / limit for key, limit in limits.items() if limit}


# -- the table --------------------------------------------------------------------


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e6:
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def table_rows(results: Results) -> list[list[str]]:
    header = ["workload", "peer", "metric", "median", "min-max", *(f"÷{key}" for key in LIMITS)]
    rows = [header]
    order: dict[str, int] = {}
    for figure in results.figures.values():
        order.setdefault(figure.workload, len(order))
    for figure in sorted(results.figures.values(), key=lambda f: order[f.workload]):
        ratios = results.ratios(figure)
        spread = f"{number(figure.low)}-{number(figure.high)}" if figure.values else "-"
        median = number(figure.median) if figure.values else "failed"
        if figure.errors:
            median += f" ({len(figure.errors)} failed)"
        ratio_cells = [f"{ratios[key]:.2f}" if key in ratios else "" for key in LIMITS]
        rows.append([figure.workload, figure.peer, figure.metric, median, spread, *ratio_cells])
    return rows


def render_table(rows: list[list[str]], markdown: bool = False) -> str:
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    numeric = range(3, len(widths))

    def line(row: list[str]) -> str:
        cells = [
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return ("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells).rstrip()

    rule = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i in numeric else "-" * (w + 2) for i, w in enumerate(widths))
        + "|"
    )
    lines = [line(rows[0]), rule if markdown else "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in rows[1:]]
    return "\n".join(lines)


def render_targets(targets: list[Target]) -> str:
    marks = {True: "MET    ", False: "NOT MET", None: "n/a    "}
    return "\n".join(f"  [{marks[t.met]}] {t.name}: {t.detail}" for t in targets)


# -- JSON -------------------------------------------------------------------------


def write_json(path: Path, results: Results, targets: list[Target], meta: dict) -> None:
    figures = []
    for figure in results.figures.values():
        entry = asdict(figure)
        entry.update(median=figure.median, min=figure.low, max=figure.high, ratios=results.ratios(figure))
        figures.append(entry)
    document = {
        **meta,
        "limits_mib_s": {key: results.limit(key) for key in LIMITS},
        "figures": figures,
        "targets": [asdict(target) for target in targets],
        "notes": results.notes,
        "repetitions_retried": results.retried,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
