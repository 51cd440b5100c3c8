"""What `make bench` reports: the table, the notes, report.md and a chart."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

from benchmarks.schema import BASELINE_KINDS

QUICK_NOTE = (
    "Smoke test: tiny models, few rounds; it shows that every scenario runs. "
    "Ratios are indicative only; no target is judged."
)
CHART = "ratios.png"
REPORT = "report.md"

# The terminal is assumed this wide; the benchmark names wrap to fit.
TABLE_WIDTH = 120
TABLE_HEADER = (
    "backend",
    "benchmark: ours vs baseline",
    "ours ms",
    "base ms",
    "ours/base",
    "target",
    "met",
)
TABLE_LEGEND = (
    "ours/base: median over the timed rounds of ours' step time divided by the "
    "baseline's in the same round (below 1: ours is faster). The ms columns are "
    "each model's own median step time, so their quotient can differ from it when "
    "the machine's speed varies between rounds. target: the largest ours/base "
    "that meets it."
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Renders result rows as an aligned text table, `TABLE_WIDTH` wide at most.

    A long benchmark name wraps onto the next lines of its row; a legend above
    the table says what the ratio is.
    """
    cells = []
    for row in rows:
        target = row["target"]
        cells.append(
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
    widths = [
        max(len(line[i]) for line in [TABLE_HEADER, *cells])
        for i in range(len(TABLE_HEADER))
    ]
    separators = 3 * (len(TABLE_HEADER) - 1)
    others = sum(widths) - widths[1] + separators
    widths[1] = max(len(TABLE_HEADER[1]), min(widths[1], TABLE_WIDTH - others))
    numeric = {2, 3, 4}

    def render(line, header=False):
        return " | ".join(
            cell.rjust(width) if i in numeric and not header else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    text = textwrap.wrap(TABLE_LEGEND, TABLE_WIDTH)
    text += [render(TABLE_HEADER, header=True), "-+-".join("-" * w for w in widths)]
    for line in cells:
        name, *more = textwrap.wrap(line[1], widths[1], break_on_hyphens=False)
        text.append(render((line[0], name, *line[2:])))
        text += [render(("", part, "", "", "", "", "")) for part in more]
    return "\n".join(text)


def _verdict(row: dict[str, Any]) -> str:
    if row.get("indicative"):
        return "indicative"
    if row["met"] is None:
        return "-"
    return "yes" if row["met"] else "NO"


def notes(results: dict[str, Any]) -> list[str]:
    """Lines per backend on the parameters that tying saves and peak memory."""
    lines = []
    for backend, result in results.items():
        for comparison in result["comparisons"]:
            peaks = [
                f"{model['label']} {model['peak_mb']:.0f} MiB"
                for model in comparison.get("models", {}).values()
                if model.get("peak_mb") is not None
            ]
            if peaks:
                lines.append(
                    f"{backend}: {comparison['name']}, rise of the peak resident "
                    f"memory: {', '.join(peaks)}"
                )
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


# The chart is about as wide as the docs column (730 px), so that it is shown
# nearly unscaled; its benchmark labels wrap at this many characters.
LABEL_WIDTH = 40


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
        labels.setdefault(key, "\n".join(textwrap.wrap(label, LABEL_WIDTH)))
    keys = list(labels)
    backends = list(dict.fromkeys(row["backend"] for row in rows))
    height = 0.8 / len(backends)
    # Each benchmark takes as much room as its wrapped label or its bars.
    lines = sum(max(label.count("\n") + 1, len(backends)) for label in labels.values())
    figure, axes = pyplot.subplots(figsize=(8.0, 0.22 * lines + 0.3 * len(keys) + 2))
    for index, backend in enumerate(backends):
        mine = [row for row in rows if row["backend"] == backend]
        positions = [
            keys.index((row["benchmark"], row["ours"], row["baseline"]))
            + index * height
            for row in mine
        ]
        # Bars grow from 1 (as fast as the baseline) to the ratio, on a log
        # axis: 2x slower and 2x faster are as long.
        ratios = [row["ratio"] for row in mine]
        axes.barh(
            positions,
            [ratio - 1.0 for ratio in ratios],
            height,
            left=1.0,
            label=backend,
        )
    axes.set_xscale("log")
    ratios = [row["ratio"] for row in rows]
    low, high = min(min(ratios), 1.0), max(max(ratios), 1.0)
    axes.set_xlim(low / 1.25, high * 1.25)
    axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    axes.grid(axis="x", which="both", linewidth=0.3)
    middle = (len(backends) - 1) * height / 2
    axes.set_yticks([n + middle for n in range(len(keys))], list(labels.values()))
    axes.tick_params(axis="y", labelsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("ours / baseline step time, log scale (below 1: ours is faster)")
    title = "keras-tether: step-time ratios per backend"
    if any(row.get("indicative") for row in rows):
        title += " (smoke test: indicative only)"
    # The legend sits between the title and the plot, where it hides no bar.
    axes.set_title(title, pad=28)
    axes.legend(
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(backends),
        frameon=False,
    )
    figure.tight_layout()
    # bbox_inches="tight" grows the image to whatever the labels need.
    figure.savefig(path, dpi=100, bbox_inches="tight")
    pyplot.close(figure)
    return True
