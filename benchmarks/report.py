"""What `make bench` reports: the table, the notes, report.md and a chart."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from benchmarks.schema import BASELINE_KINDS

QUICK_NOTE = (
    "Quick mode: tiny models and few rounds. It shows that every scenario "
    "runs; its ratios are indicative only, and no target is judged."
)
CHART = "ratios.png"
REPORT = "report.md"

TABLE_HEADER = (
    "backend",
    "benchmark",
    "ours (ms/step)",
    "baseline (ms/step)",
    "ratio",
    "target",
    "met",
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Renders result rows as an aligned text table."""
    lines = [TABLE_HEADER]
    for row in rows:
        target = row["target"]
        lines.append(
            (
                row["backend"],
                f"{row['benchmark']}: {row['ours']} vs {row['baseline']}",
                f"{row['ours_ms']:.3f}",
                f"{row['baseline_ms']:.3f}",
                f"{row['ratio']:.3f}",
                "-" if target is None else f"<= {target:.2f}",
                _verdict(row),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_HEADER))]
    numeric = {2, 3, 4}
    text = []
    for number, line in enumerate(lines):
        cells = [
            cell.rjust(width) if i in numeric and number else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        text.append(" | ".join(cells).rstrip())
        if number == 0:
            text.append("-+-".join("-" * width for width in widths))
    return "\n".join(text)


def _verdict(row: dict[str, Any]) -> str:
    if row.get("indicative"):
        return "indicative"
    if row["met"] is None:
        return "-"
    return "yes" if row["met"] else "NO"


def notes(results: dict[str, Any]) -> list[str]:
    """One line per backend on the parameters that tying saves."""
    lines = []
    for backend, result in results.items():
        for comparison in result["comparisons"]:
            params = comparison.get("kernel_params")
            if params:
                lines.append(
                    f"{backend}: tied autoencoder kernels {params['tied']:,} "
                    f"parameters vs {params['untied']:,} untied "
                    f"(total {comparison['total_params']['tied']:,} vs "
                    f"{comparison['total_params']['untied']:,})"
                )
    return lines


def write_report(combined: dict[str, Any], folder: str) -> list[str]:
    """Writes `report.md` and, with matplotlib, the chart of ratios to `folder`.

    Args:
        combined: The JSON that `runner.run_all` writes.
        folder: String, the folder to write to, created if missing.

    Returns:
        The paths written.
    """
    os.makedirs(folder, exist_ok=True)
    rows = combined["rows"]
    written = []
    chart = os.path.join(folder, CHART)
    has_chart = bool(rows) and _plot_ratios(rows, chart)
    if has_chart:
        written.append(chart)
    path = os.path.join(folder, REPORT)
    with open(path, "w") as file:
        file.write(_markdown(combined, has_chart))
    written.insert(0, path)
    return written


def _markdown(combined: dict[str, Any], has_chart: bool) -> str:
    settings = combined["settings"]
    lines = ["# keras-tether benchmark", ""]
    if settings["quick"]:
        lines += [f"**{QUICK_NOTE}**", ""]
    lines += [
        "Each ratio is ours / baseline: the median over timed rounds of the "
        "per-round ratio of step times, all models of a comparison timed in "
        "the same run, in rotating order, after warm-up. Below 1, ours is "
        "faster. A target is the largest ratio that meets it.",
        "",
        "Baselines, as a user would otherwise write them:",
        "",
    ]
    lines += [f"- *{kind}*: {meaning}" for kind, meaning in BASELINE_KINDS.items()]
    lines += ["", f"Rounds: {settings['rounds']}, warm-up steps: {settings['warmup']}."]
    if has_chart:
        lines += ["", f"![Ratios per backend]({CHART})"]
    lines += [
        "",
        "| backend | benchmark | ours | baseline | baseline kind | ours ms/step "
        "| baseline ms/step | ratio | target | met |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in combined["rows"]:
        target = "-" if row["target"] is None else f"<= {row['target']:.2f}"
        lines.append(
            f"| {row['backend']} | {row['benchmark']} | {row['ours']} "
            f"| {row['baseline']} | {row['baseline_kind']} | {row['ours_ms']:.3f} "
            f"| {row['baseline_ms']:.3f} | {row['ratio']:.3f} | {target} "
            f"| {_verdict(row)} |"
        )
    failures = combined.get("failures") or {}
    if failures:
        lines += ["", "Failed backends:", ""]
        lines += [f"- {backend}: {reason}" for backend, reason in failures.items()]
    environment = combined["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in environment["versions"].items())
    lines += [
        "",
        f"Machine: {environment['platform']}, {environment['usable_cpus']} usable "
        f"CPUs, Python {environment['python']}; {versions}.",
        "",
    ]
    return "\n".join(lines)


def _plot_ratios(rows: Sequence[dict[str, Any]], path: str) -> bool:
    try:  # matplotlib comes with the optional 'demo' extra
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return False
    labels: dict[tuple[str, str, str], str] = {}
    for row in rows:
        key = (row["benchmark"], row["ours"], row["baseline"])
        label = f"{row['benchmark']}: {row['ours']} vs {row['baseline']}"
        if row["target"] is not None:
            label += f" (target <= {row['target']:.2f})"
        labels.setdefault(key, label)
    keys = list(labels)
    backends = list(dict.fromkeys(row["backend"] for row in rows))
    height = 0.8 / len(backends)
    size = (12, 0.4 * len(keys) * len(backends) + 1.8)
    figure, axes = pyplot.subplots(figsize=size)
    for index, backend in enumerate(backends):
        mine = [row for row in rows if row["backend"] == backend]
        positions = [
            keys.index((row["benchmark"], row["ours"], row["baseline"]))
            + index * height
            for row in mine
        ]
        axes.barh(positions, [row["ratio"] for row in mine], height, label=backend)
    axes.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    middle = (len(backends) - 1) * height / 2
    axes.set_yticks([n + middle for n in range(len(keys))], list(labels.values()))
    axes.invert_yaxis()
    axes.set_xlabel("ours / baseline step time (below 1: ours is faster)")
    title = "keras-tether: step-time ratios per backend"
    if any(row.get("indicative") for row in rows):
        title += "\nquick mode: indicative only"
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return True
