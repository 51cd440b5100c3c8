"""Tests of the `keras-tether` command as a user runs it: a process of its own."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

import keras_tether
from keras_tether import _cli

BACKEND = keras.backend.backend()
SOURCE = str(Path(keras_tether.__file__).resolve().parents[1])
HEAVY = ("keras", "tensorflow", "jax", "torch")

# What pip writes as the `keras-tether` script, and a report, at exit, of the
# heavy modules the process imported.
SCRIPT = textwrap.dedent(
    f"""
    import atexit
    import json
    import os
    import re
    import sys

    def report():
        with open(os.environ["IMPORTED_OUT"], "w") as file:
            json.dump([name for name in {HEAVY!r} if name in sys.modules], file)

    atexit.register(report)

    from keras_tether._cli import main

    if __name__ == "__main__":
        sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
        sys.exit(main())
    """
)


@pytest.fixture
def command(tmp_path):
    """Runs `keras-tether ARGS` as a process: (exit code, stdout, stderr, heavy)."""
    script = tmp_path / "bin" / "keras-tether"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    imported = tmp_path / "imported.json"

    def run(*args, cwd=None):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")]),
            "KERAS_BACKEND": BACKEND,
            "IMPORTED_OUT": str(imported),
        }
        completed = subprocess.run(
            [sys.executable, str(script), *args],
            env=env,
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        heavy = json.loads(imported.read_text())
        return completed.returncode, completed.stdout, completed.stderr, heavy

    return run


@pytest.mark.parametrize(
    "args, code",
    [
        (["--help"], 0),
        (["inspect", "--help"], 0),
        (["--version"], 0),
        ([], 2),
        (["inspect"], 2),
        (["bench"], 2),
    ],
)
def test_answers_help_version_and_bad_arguments(command, args, code):
    exit_code, out, err, _ = command(*args)
    assert exit_code == code, err
    assert "usage: keras-tether" in out + err or out.startswith("keras-tether ")


@pytest.mark.parametrize("argv", [["keras-tether", "--help"], ["x", "--version"]])
def test_importing_the_library_does_no_command_line_work(argv):
    # Whatever the process's arguments, an import prints nothing and returns.
    code = (
        f"import sys; sys.argv = {argv!r}; import keras_tether; "
        "print('imported', keras_tether.__version__)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "KERAS_BACKEND": BACKEND},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == f"imported {keras_tether.__version__}\n"
    assert "usage:" not in completed.stderr


def test_help_documents_the_exit_codes(command):
    _, out, _, _ = command("--help")
    text = " ".join(out.split())
    for code in ("0 success", "2 bad arguments"):
        assert code in text


def test_version_names_the_backend_keras_will_use(command):
    _, out, _, _ = command("--version")
    assert out.strip() == (
        f"keras-tether {keras_tether.__version__} "
        f"(keras {keras.__version__}, backend {BACKEND})"
    )


TRANSFORM_MODULE = """
import keras
from keras_tether import ties

@ties.register_transform("cli_test_negated_transpose")
def negated_transpose(weight):
    return -keras.ops.transpose(weight)
"""


@pytest.fixture
def custom_transform_model(tmp_path):
    """A model whose tie uses a transform that a module of the user registers."""
    (tmp_path / "user_transforms.py").write_text(TRANSFORM_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        import user_transforms  # noqa: F401
    finally:
        sys.path.remove(str(tmp_path))
    inputs = keras.Input(shape=(6,))
    source = keras.layers.Dense(4, name="cli_source")
    tied = keras_tether.TiedDense(
        source, transform="cli_test_negated_transpose", name="cli_tied"
    )
    model = keras.Model(inputs, tied(source(inputs)))
    path = tmp_path / "custom.keras"
    model.save(path)
    return path


def test_inspect_imports_the_users_module_first(command, custom_transform_model):
    path = custom_transform_model
    code, _, err, heavy = command("inspect", str(path), "--json")
    assert code == 2
    assert "cannot read model" in err and "transform" in err
    assert BACKEND in heavy

    code, out, err, heavy = command(
        "inspect", str(path), "--json", "--import", "user_transforms"
    )
    assert code == 0, err
    (tie,) = json.loads(out)["ties"]
    assert tie["transform"] == "cli_test_negated_transpose"
    assert tie["layer"] == "cli_tied" and tie["source"] == "cli_source"
    assert "keras" in heavy


def test_inspect_import_is_repeatable_and_reports_a_missing_module(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "first_module.py").write_text("import sys\nsys.first_imported = 1\n")
    argv = ["inspect", "missing.keras", "--import", "first_module"]
    assert _cli.main([*argv, "--import", "no_such_module_here"]) == 2
    assert sys.modules["first_module"]
    err = capsys.readouterr().err
    assert "cannot import module 'no_such_module_here'" in err
    assert "ModuleNotFoundError" in err
    monkeypatch.delitem(sys.modules, "first_module")
