"""The documentation runs: README code blocks, docstring examples, examples/."""

import ast
import doctest
import importlib
import pkgutil
import re
import sys
from pathlib import Path

import pytest
from test_docs_render import python_blocks

import keras_tether

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(text):
    # The blocks as they render, so that a block with a broken fence is not run
    # as something else.
    return python_blocks(text)


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the blocks may write files, such as a CSV
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 6
    namespace = {"__name__": "readme"}
    for index, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md block {index}", "exec"), namespace)
        except Exception as error:  # name the failing block
            raise AssertionError(f"README block {index} failed: {error!r}") from error


def _modules():
    names = ["keras_tether"]
    for info in pkgutil.walk_packages(keras_tether.__path__, "keras_tether."):
        # The command line has no public API, and its `__main__` modules run it.
        if info.name.startswith("keras_tether._cli") or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


def _public_modules():
    """The modules that define a name of the public API."""
    namespaces = [
        keras_tether,
        keras_tether.layers,
        keras_tether.simplex,
        keras_tether.parametrize,
        keras_tether.ties,
        keras_tether.callbacks,
        keras_tether.regularizers,
    ]
    defined = set()
    for namespace in namespaces:
        for name in namespace.__all__:
            module = getattr(getattr(namespace, name), "__module__", None)
            if module is not None and module.startswith("keras_tether"):
                defined.add(module)
    return defined


def test_public_modules_are_all_doctested():
    public = _public_modules()
    assert "keras_tether.callbacks._mixture_weights_history" in public
    assert public <= set(_modules())


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    for test in finder.find(module, name):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} doctest failures in {name}"
    if name in _public_modules():
        assert results.attempted > 0, f"{name} defines public names, no examples"


def test_every_public_layer_has_a_running_example():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in keras_tether.layers.__all__:
        obj = getattr(keras_tether.layers, name)
        examples = [t for t in finder.find(obj, name) if t.examples]
        assert examples, f"{name} has no docstring example"


def _load_example(name):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_seed_mixing_example_runs():
    example = _load_example("seed_mixing")
    _, before, after = example.main(epochs=2, samples=64, num_branches=7)
    assert before.shape == after.shape == (7,)
    assert abs(float(after.sum()) - 1.0) < 1e-5
    assert not (before == after).all()


def test_tied_dense_transpose_example_runs():
    from keras_tether import ties

    example = _load_example("tied_dense_transpose")
    model, loaded = example.main(epochs=1, samples=64, input_dim=12, units=5)
    assert model.count_params() == loaded.count_params() == 12 * 5 + 5 + 12
    assert example.kernels_tied(loaded)
    assert [tie.uses for tie in ties.list_ties(loaded)] == [("forward", "reverse")]


def test_mixture_of_experts_example_runs():
    example = _load_example("mixture_of_experts")
    model, table, mse = example.main(epochs=1, samples=256)
    assert table.shape == (4, 4)
    assert all(abs(row.sum() - 1.0) < 1e-6 for row in table)
    assert mse == mse and mse < float("inf")  # finite
    assert model.get_layer("moe").num_experts == 4


def test_routing_page_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for index, block in enumerate(
        _python_blocks((ROOT / "docs/routing.md").read_text())
    ):
        try:
            exec(compile(block, f"docs/routing.md block {index}", "exec"), {})
        except Exception as error:
            raise AssertionError(
                f"docs/routing.md block {index} failed: {error!r}"
            ) from error


# What each extra of pyproject.toml brings that an example may import.
EXTRA_MODULES = {"demo": {"sklearn", "matplotlib"}, "hub": {"keras_hub"}}
# Importable with any install: the library, its dependencies, the backends.
BASE_MODULES = {"keras_tether", "keras", "numpy", "jax", "torch", "tensorflow"}


def _readme_example_table():
    """{example file: extras} from the README's table of examples."""
    rows = re.findall(
        r"^\| \[`(\w+\.py)`\]\([^)]*\) \|.*\| `keras-tether\[BACKEND((?:,\w+)*)\]` \|$",
        (ROOT / "README.md").read_text(),
        flags=re.MULTILINE,
    )
    return {name: [e for e in extras.split(",") if e] for name, extras in rows}


def _top_level_imports(tree):
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_readme_gives_each_example_the_extras_it_needs():
    table = _readme_example_table()
    files = sorted(path.name for path in (ROOT / "examples").glob("*.py"))
    assert sorted(table) == files, "the README's table of examples is not whole"
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    config = (ROOT / "pyproject.toml").read_text()
    declared = set(re.findall(r"^(\w+) = \[", config, flags=re.MULTILINE))
    assert set(EXTRA_MODULES) <= declared
    for name, extras in table.items():
        tree = ast.parse((ROOT / "examples" / name).read_text())
        docstring = ast.get_docstring(tree)
        stated = re.search(
            r'^Install: pip install "keras-tether\[BACKEND((?:,\w+)*)\]"',
            docstring,
            flags=re.MULTILINE,
        )
        assert stated, f"examples/{name} does not say what to install"
        assert [e for e in stated.group(1).split(",") if e] == extras, name
        allowed = BASE_MODULES | stdlib
        for extra in extras:
            allowed |= EXTRA_MODULES[extra]
        needed = _top_level_imports(tree) - allowed
        assert not needed, f"examples/{name} imports {needed}, not in {extras}"


def test_the_extras_check_sees_an_import():
    tree = ast.parse("import keras\nfrom sklearn.datasets import load_digits\n")
    assert _top_level_imports(tree) - BASE_MODULES == {"sklearn"}
