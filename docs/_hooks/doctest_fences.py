"""A griffe extension that shows docstring examples as code on the docs site.

The docstrings follow Keras' style: `Example:` and then, unindented,
`>>>` lines with their output. Markdown would read those lines as nested
quotes; this fences each run of them as a `pycon` code block.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """Wraps every run of `>>>` lines and their output in a code fence."""
    lines = text.splitlines()
    fenced: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.lstrip().startswith(">>>"):
            fenced.append(line)
            index += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        fenced.append(f"{indent}```pycon")
        while index < len(lines) and lines[index].strip():
            fenced.append(lines[index])
            index += 1
        fenced.append(f"{indent}```")
    return "\n".join(fenced)


class DoctestFences(griffe.Extension):
    """Fences the doctest examples of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
