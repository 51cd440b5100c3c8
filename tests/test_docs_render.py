"""The README and every documentation page render as written.

Each page is parsed with a CommonMark renderer (markdown-it-py, the parser
behind PyPI's own rendering rules), and the tokens are compared with the
source lines, so that a missing or stray fence, which turns prose into code
and code into prose without any error, fails here:

- every fenced block closes on a fence line of its own, and every fence line
  of the source is the opening or closing line of a block;
- every fenced block names its language, so a closing fence read as an opening
  one (it has no language) is caught even when the blocks pair up again;
- every heading line of the source is a heading, preceded by a blank line, and
  no code block holds a Markdown heading or list;
- no block is an indented code block (they appear by accident: use a fence);
- no line of prose reads as a Python statement (an example with no fence);
- every ```python block parses.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Written by `make docs` from the demo and the benchmark, not kept in the tree.
GENERATED = DOCS / "generated"

FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING_LINE = re.compile(r"^ {0,3}#{1,6} \S")
# A Markdown heading or bullet at the start of a line inside a code block:
# prose a stray fence swallowed. (`# ` alone is a comment in Python and shell.)
SWALLOWED_LINE = re.compile(r"^(#{2,6} \S|[-*+] [A-Z`*\[])")
# A line of prose that reads as Python: code whose opening fence is missing.
CODE_IN_PROSE = re.compile(
    r"^(from [\w.]+ import \w|import \w+$|\w[\w.]* = \S|print\()"
)
# Languages whose lines legitimately look like Markdown.
MARKDOWN_LIKE = {"markdown", "md", "yaml", "yml", "diff"}


def pages() -> list[Path]:
    found = [ROOT / "README.md"]
    found += sorted(
        path
        for path in DOCS.rglob("*.md")
        if GENERATED not in path.parents and "_hooks" not in path.parts
    )
    return found


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def parse(text: str):
    return MarkdownIt("commonmark").enable("table").parse(text)


def render_problems(text: str) -> list[str]:
    """What renders differently from how the source reads, line by line."""
    lines = text.splitlines()
    tokens = parse(text)
    problems = []
    fence_lines = set()
    heading_lines = set()
    for token in tokens:
        if token.type == "heading_open":
            heading_lines.add(token.map[0])
        if token.type == "inline" and token.map and token.level <= 1:
            for number in range(*token.map):
                if CODE_IN_PROSE.match(lines[number]):
                    problems.append(
                        f"line {number + 1}: code rendered as prose (no opening "
                        f"fence?): {lines[number][:60]!r}"
                    )
        if token.type == "code_block":
            start = token.map[0] + 1
            problems.append(f"line {start}: indented code block (use a fence)")
        if token.type != "fence":
            continue
        start, end = token.map  # the block's source lines, [start, end)
        opening = lines[start].strip()
        closing = lines[end - 1].strip() if end - 1 > start else ""
        marker = token.markup
        fence_lines.add(start)
        if (
            end - 1 > start
            and closing.startswith(marker)
            and set(closing) == {marker[0]}
        ):
            fence_lines.add(end - 1)
        else:
            problems.append(
                f"line {start + 1}: the fence {opening!r} never closes "
                "(the block runs to the end of the page)"
            )
        language = token.info.split()[0] if token.info.strip() else ""
        if not language:
            problems.append(
                f"line {start + 1}: a fence with no language; if it should close "
                "the block above, that block opened too early or never opened"
            )
        if language == "python":
            try:
                ast.parse(token.content)
            except SyntaxError as error:
                problems.append(
                    f"line {start + 1}: the python block does not parse: "
                    f"{error.msg} at its line {error.lineno}"
                )
        if language not in MARKDOWN_LIKE:
            for offset, line in enumerate(token.content.splitlines()):
                if SWALLOWED_LINE.match(line):
                    problems.append(
                        f"line {start + 2 + offset}: Markdown inside a code block: "
                        f"{line[:60]!r}"
                    )
    for number, line in enumerate(lines):
        fence = FENCE_LINE.match(line)
        if fence and number not in fence_lines and not _nested(tokens, number, fence):
            problems.append(
                f"line {number + 1}: the fence {line.strip()!r} opens or closes "
                "no block (it is inside another one)"
            )
        if HEADING_LINE.match(line) and not _inside_code(tokens, number):
            if number not in heading_lines:
                problems.append(f"line {number + 1}: {line!r} is not a heading")
            elif number > 0 and lines[number - 1].strip():
                problems.append(
                    f"line {number + 1}: no blank line before the heading {line!r}"
                )
    return problems


def _nested(tokens, number: int, fence: re.Match) -> bool:
    """Whether a fence line is content of a block with a longer fence.

    A block in a block (a page that shows Markdown) opens with more backticks
    than the inner fences. A fence as long as its block's that did not close
    the block has a language after it: it was meant to open a new block.
    """
    run = fence.group(1)
    return any(
        token.type == "fence"
        and token.map[0] < number < token.map[1] - 1
        and (token.markup[0] != run[0] or len(run) < len(token.markup))
        for token in tokens
    )


def _inside_code(tokens, number: int) -> bool:
    return any(
        token.type in ("fence", "code_block") and token.map[0] <= number < token.map[1]
        for token in tokens
    )


def python_blocks(text: str) -> list[str]:
    """The ```python blocks as a reader sees them, in order."""
    return [
        token.content
        for token in parse(text)
        if token.type == "fence" and token.info.split()[:1] == ["python"]
    ]


@pytest.mark.parametrize("page", pages(), ids=_name)
def test_page_renders_as_written(page):
    problems = render_problems(page.read_text())
    assert not problems, f"{_name(page)} renders wrongly:\n" + "\n".join(problems)


def test_pages_are_found():
    names = {_name(page) for page in pages()}
    assert {"README.md", "docs/index.md", "docs/mixing.md"} <= names


# The check itself: each kind of breakage it exists for is caught.


def test_catches_an_unclosed_fence():
    text = "# Title\n\n```python\nx = 1\n\n## Next\n\nProse.\n"
    problems = render_problems(text)
    assert any("never closes" in problem for problem in problems)
    assert "line 6: Markdown inside a code block: '## Next'" in problems


def test_catches_a_missing_opening_fence():
    # The example renders as prose; its closing fence opens a block that
    # swallows the bullets and the next heading, up to the next fence.
    text = (
        "## Constraints\n\nIntro.\n\nimport keras\nx = 1\n```\n\n"
        "- A bullet.\n\n## Recording\n\n```python\ny = 2\n```\n"
    )
    problems = render_problems(text)
    assert any("a fence with no language" in problem for problem in problems)
    assert "line 11: Markdown inside a code block: '## Recording'" in problems
    assert "line 9: Markdown inside a code block: '- A bullet.'" in problems
    assert any("'```python' opens or closes no block" in p for p in problems)
    assert any("code rendered as prose" in problem for problem in problems)


def test_catches_a_heading_run_into_a_paragraph():
    text = "Some prose.\n## Heading\n\nMore.\n"
    problems = render_problems(text)
    assert problems == ["line 2: no blank line before the heading '## Heading'"]


def test_catches_a_python_block_that_does_not_parse():
    text = "```python\nmodel = keras.Model(\n```\n"
    assert any("does not parse" in p for p in render_problems(text))


def test_catches_an_indented_code_block():
    text = "Prose.\n\n    x = 1\n"
    assert render_problems(text) == ["line 3: indented code block (use a fence)"]


def test_accepts_a_well_formed_page():
    text = (
        "# Title\n\nProse with `code`.\n\n```python\n# a comment\nx = 1\n```\n\n"
        "## Section\n\n- a list\n- of items\n\n```bash\npip install x  # why\n```\n"
        "\n````markdown\n```python\ny = 2\n```\n````\n"
    )
    assert render_problems(text) == []
    assert python_blocks(text) == ["# a comment\nx = 1\n"]


def test_catches_a_heading_swallowed_by_html():
    text = "<div>\n## Inside\n</div>\n"
    assert render_problems(text) == ["line 2: '## Inside' is not a heading"]
