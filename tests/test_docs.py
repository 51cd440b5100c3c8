"""The documentation runs: README code blocks, docstring examples, examples/."""

import doctest
import importlib
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import keras_tether

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


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
    example = _load_example("tied_dense_transpose")
    model, loaded = example.main(epochs=1, samples=64, input_dim=12, units=5)
    assert model.count_params() == loaded.count_params() == 12 * 5 + 5 + 12
    assert example.kernels_tied(loaded)
    assert loaded.get_layer("decoder").source is loaded.get_layer("encoder")


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
