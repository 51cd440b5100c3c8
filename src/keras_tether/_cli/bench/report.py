"""What `keras-tether bench` prints: the table of rows and the notes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
                "-" if row["met"] is None else ("yes" if row["met"] else "NO"),
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
