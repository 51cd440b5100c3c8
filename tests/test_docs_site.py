"""The documentation site: every page's code runs, and its navigation is whole."""

import importlib.util
import re
from pathlib import Path

import keras
import pytest
from test_docs_render import python_blocks

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Pages that `make docs` writes from the demo and the benchmark: no code.
GENERATED = DOCS / "generated"


def _pages():
    return sorted(
        path
        for path in DOCS.rglob("*.md")
        if GENERATED not in path.parents and "_hooks" not in path.parts
    )


def _python_blocks(text):
    # The blocks as they render, so that a block with a broken fence is not run
    # as something else.
    return python_blocks(text)


def test_the_home_page_links_every_page_of_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text()
    listed = re.findall(r"^\s+- [^:]+: (\S+\.md)\s*$", config, flags=re.MULTILINE)
    home = (DOCS / "index.md").read_text()
    linked = set(re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", home))
    missing = [page for page in listed if page != "index.md" and page not in linked]
    assert not missing, f"docs/index.md does not link to {missing}"


def test_every_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r"^\s+- [^:]+: (\S+\.md)\s*$", config, flags=re.MULTILINE))
    pages = {str(path.relative_to(DOCS)) for path in _pages()}
    assert pages, "no documentation pages found"
    assert pages - listed == set()
    assert {"index.md", "mixing.md", "ties.md", "api.md"} <= listed


@pytest.mark.parametrize("page", _pages(), ids=lambda path: path.name)
def test_python_blocks_run_top_to_bottom(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block may write files
    namespace = {"__name__": f"docs_{page.stem}"}
    for index, block in enumerate(_python_blocks(page.read_text())):
        try:
            exec(compile(block, f"{page.name} block {index}", "exec"), namespace)
        except Exception as error:  # name the failing block
            raise AssertionError(
                f"{page.name} block {index} failed: {error!r}"
            ) from error
    keras.backend.clear_session()


def _doctest_fences():
    path = DOCS / "_hooks" / "doctest_fences.py"
    if importlib.util.find_spec("griffe") is None:
        pytest.skip("griffe, of the 'docs' extra, is not installed")
    spec = importlib.util.spec_from_file_location("doctest_fences", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docstring_examples_become_code_blocks():
    fences = _doctest_fences()
    text = "Summary.\n\nExample:\n\n>>> x = [1, 2]\n>>> x\n[1, 2]\n\nAfter."
    assert fences.fence_doctests(text).splitlines() == [
        "Summary.",
        "",
        "Example:",
        "",
        "```pycon",
        ">>> x = [1, 2]",
        ">>> x",
        "[1, 2]",
        "```",
        "",
        "After.",
    ]
