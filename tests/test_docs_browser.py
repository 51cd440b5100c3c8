"""The documentation's browser check finds what runs off the right edge.

Runs `.ci/browse_docs.py` on a small hand-written site in headless Chromium;
skipped where Chromium is not installed (`make chromium` installs it).
"""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _browse_docs():
    spec = importlib.util.spec_from_file_location(
        "browse_docs", ROOT / ".ci" / "browse_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAGE = """<!doctype html>
<html><head><title>{title} - keras-tether</title>
<style>body {{ margin: 0 }} .md-content {{ width: 700px }}</style></head>
<body><nav>{nav}</nav><div class="md-content"><article class="md-content__inner">
<h1>{title}</h1>{body}</article></div></body></html>
"""
NAMES = ["one", "two", "three", "four", "five"]


def _site(folder: Path, body_of_two: str) -> None:
    nav = "".join(
        f'<a class="md-nav__link" href="/{name}/">{name}</a>' for name in NAMES
    )
    (folder / "index.html").write_text(PAGE.format(title="Home", nav=nav, body=""))
    for name in NAMES:
        (folder / name).mkdir()
        body = body_of_two if name == "two" else "<p>Short.</p>"
        page = PAGE.format(title=name, nav=nav, body=body)
        (folder / name / "index.html").write_text(page)


@pytest.fixture(scope="module")
def browse_docs():
    module = _browse_docs()
    chromium = module.find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed")
    return module, chromium


def test_a_wide_element_fails_the_check(browse_docs, tmp_path):
    module, chromium = browse_docs
    site = tmp_path / "site"
    site.mkdir()
    _site(site, '<div style="width: 1500px">a wide box</div>')
    problems = module.check(str(site), chromium, str(tmp_path / "shots"))
    assert len(problems) == 2, problems
    assert "/two/: the page scrolls sideways at 1280 px" in problems[0]
    assert "/two/: 1 elements run off the text's column" in problems[1]
    assert "a wide box" in problems[1]
    shots = sorted(path.name for path in (tmp_path / "shots").iterdir())
    assert shots == sorted(["index.png", *(f"{name}.png" for name in NAMES)])
    assert (tmp_path / "shots" / "two.png").read_bytes().startswith(b"\x89PNG")


def test_a_wide_block_that_scrolls_in_its_box_passes(browse_docs, tmp_path):
    module, chromium = browse_docs
    site = tmp_path / "site"
    site.mkdir()
    wide = "x" * 400
    _site(site, f'<pre style="overflow-x: auto"><code>{wide}</code></pre>')
    assert module.check(str(site), chromium, str(tmp_path / "shots")) == []
