"""The package as PyPI and a user of the sdist meet it."""

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later


def _project():
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]


def test_every_classifier_is_on_the_official_list():
    trove_classifiers = pytest.importorskip("trove_classifiers")
    classifiers = _project()["classifiers"]
    unknown = [c for c in classifiers if c not in trove_classifiers.classifiers]
    assert unknown == []
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    minimum = re.fullmatch(r">=3\.(\d+)", _project()["requires-python"])
    versions = {
        int(c.rsplit(".", 1)[1])
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert versions and min(versions) == int(minimum.group(1))


def test_project_urls_are_absolute():
    urls = _project()["urls"]
    assert {"Homepage", "Documentation", "Repository", "Issues"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())


def test_backend_extras_are_ranges_not_pins():
    extras = _project()["optional-dependencies"]
    for backend in ("tensorflow", "jax", "torch"):
        for requirement in extras[backend]:
            assert "==" not in requirement, requirement
            assert ">=" in requirement, requirement


def test_long_description_is_safe_on_pypi():
    readme = (ROOT / "README.md").read_text()
    first_paragraph = readme.split("\n\n")[1]
    assert not first_paragraph.startswith(("```", "make "))
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    links += re.findall(r"<(https?://[^>]+)>", readme)
    assert links
    relative = [link for link in links if not link.startswith("https://")]
    assert relative == []


# What `make` and the tools write into a clone; none of it goes into a
# distribution.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".keras-alt",
    ".*_cache",
    ".hypothesis",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    "site",
    "docs-screenshots",
    "demo-output",
    "bench-output",
)


@pytest.fixture(scope="module")
def distributions(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    # Built from a copy: the build writes into the tree it builds (`build/`,
    # the egg-info), and the suites of other backends may be building too.
    tree = tmp_path_factory.mktemp("tree") / "keras-tether"
    shutil.copytree(ROOT, tree, ignore=_NOT_SOURCE)
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out)],
        cwd=tree,
        check=True,
        capture_output=True,
    )
    return sorted(out.iterdir())


def test_twine_check_strict_passes(distributions):
    pytest.importorskip("twine")
    assert sorted(path.suffix for path in distributions) == [".gz", ".whl"]
    completed = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, distributions)],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_sdist_carries_what_pytest_needs(distributions):
    (sdist,) = [path for path in distributions if path.name.endswith(".tar.gz")]
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = {
        "tests/conftest.py",
        "tests/layer_conformance.py",
        "pyproject.toml",
        "CHANGELOG.md",
    }
    needed |= {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")}
    needed |= {str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.py")}
    for folder in ("benchmarks", "demo"):
        needed |= {str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*.py")}
    docs = [*(ROOT / "docs").rglob("*.md"), *(ROOT / "docs").rglob("*.py")]
    needed |= {
        str(path.relative_to(ROOT))
        for path in docs
        if "generated" not in path.relative_to(ROOT).parts
    }
    assert "docs/index.md" in needed
    assert needed - names == set()
    assert not any(name.startswith("docs/generated/") for name in names)


def test_wheel_holds_the_library_only(distributions):
    (wheel,) = [path for path in distributions if path.suffix == ".whl"]
    with zipfile.ZipFile(wheel) as archive:
        packages = {name.split("/", 1)[0] for name in archive.namelist()}
        modules = [name for name in archive.namelist() if name.endswith(".py")]
    assert {name for name in packages if not name.endswith(".dist-info")} == {
        "keras_tether"
    }
    assert modules and not [name for name in modules if "bench" in name]
    assert not [name for name in modules if "demo" in name]
