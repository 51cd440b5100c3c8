"""Tests of the `keras-tether` command line, `inspect` and the backend choice."""

import importlib.util
import json
import os
import sys
import zipfile

import keras
import numpy as np
import pytest

import keras_tether
from keras_tether import _backend_choice, _cli
from keras_tether._cli import _inspect
from keras_tether.layers import DenseTranspose, WeightedAverage

# Logits set by hand, so the expected weights are a NumPy softmax of them.
MIX_LOGITS = np.array([0.1, -0.4, 1.2], dtype="float32")
PER_FEATURE_LOGITS = np.array(
    [[0.0, 1.0, -2.0, 0.5], [0.3, -1.0, 0.0, 2.5]], dtype="float32"
)


def _softmax(logits, axis):
    exponentials = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return exponentials / exponentials.sum(axis=axis, keepdims=True)


def _model():
    """Input(6) -> encoder -> nested per-feature mix -> 3-way mix -> decoder."""
    branch_inputs = keras.Input(shape=(4,))
    branch_outputs = [
        keras.layers.Dense(4, name=f"branch_{name}")(branch_inputs)
        for name in ("a", "b")
    ]
    per_feature = WeightedAverage(feature_axis=-1, name="per_feature_mix")
    nested = keras.Model(branch_inputs, per_feature(branch_outputs), name="nested")

    inputs = keras.Input(shape=(6,))
    encoder = keras.layers.Dense(4, activation="relu", name="encoder")
    hidden = nested(encoder(inputs))
    heads = [keras.layers.Dense(4, name=f"head_{i}")(hidden) for i in range(3)]
    mix = WeightedAverage(name="mix")
    outputs = DenseTranspose(encoder, name="decoder")(mix(heads))
    model = keras.Model(inputs, outputs, name="tied_with_mixtures")
    mix.logits.assign(MIX_LOGITS)
    per_feature.logits.assign(PER_FEATURE_LOGITS)
    return model


# Every variable of `_model`, by shape; the encoder kernel appears once.
OWN_SHAPES = [
    (6, 4),  # encoder kernel, shared with the decoder
    (4,),  # encoder bias
    (4, 4),  # branch_a kernel
    (4,),
    (4, 4),  # branch_b kernel
    (4,),
    (2, 4),  # per_feature_mix logits
    (4, 4),  # head_0 kernel
    (4,),
    (4, 4),
    (4,),
    (4, 4),
    (4,),
    (3,),  # mix logits
    (6,),  # decoder bias
]
EXPECTED_TOTAL = int(sum(np.prod(shape) for shape in OWN_SHAPES))
ENCODER_KERNEL = 6 * 4


@pytest.fixture
def saved_model(tmp_path):
    path = tmp_path / "model.keras"
    _model().save(path)
    return str(path)


def test_inspect_file_reports_mixtures_ties_and_params(saved_model):
    report = _inspect.inspect_file(saved_model)

    assert set(report) == {"mixtures", "ties", "params"}
    assert report["params"] == {
        "total": EXPECTED_TOTAL,
        "if_untied": EXPECTED_TOTAL + ENCODER_KERNEL,
        "saved_by_ties": ENCODER_KERNEL,
    }

    mixtures = {mixture["layer"]: mixture for mixture in report["mixtures"]}
    assert set(mixtures) == {"mix", "per_feature_mix"}
    mix = mixtures["mix"]
    assert mix["class"] == "WeightedAverage"
    assert mix["simplex"] == "softmax"
    assert mix["inputs"] == 3
    assert mix["shape"] == [3]
    np.testing.assert_allclose(mix["weights"], _softmax(MIX_LOGITS, 0), atol=6e-5)
    assert mix["weights"] == [round(w, 4) for w in mix["weights"]]
    per_feature = mixtures["per_feature_mix"]
    assert per_feature["inputs"] == 2
    assert per_feature["shape"] == [2, 4]
    np.testing.assert_allclose(
        per_feature["weights"], _softmax(PER_FEATURE_LOGITS, 0), atol=6e-5
    )

    assert report["ties"] == [
        {
            "layer": "decoder",
            "layer_class": "DenseTranspose",
            "source": "encoder",
            "source_class": "Dense",
            "variables": ["encoder/kernel"],
            "shapes": [[6, 4]],
            "transform": "transpose",
            "source_in_model": True,
            "pending": False,
        }
    ]


def test_main_inspect_json(saved_model, capsys):
    assert _cli.main(["inspect", saved_model, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert list(report) == ["mixtures", "ties", "params"]
    assert report["params"]["total"] == EXPECTED_TOTAL
    assert report["params"]["if_untied"] == EXPECTED_TOTAL + ENCODER_KERNEL
    assert report == _inspect.inspect_file(saved_model)


def test_main_inspect_text(saved_model, capsys):
    assert _cli.main(["inspect", saved_model]) == 0
    out = capsys.readouterr().out
    weights = ", ".join(f"{w:.4f}" for w in _softmax(MIX_LOGITS, 0))
    assert f"weights: [{weights}]" in out
    mean = ", ".join(f"{w:.4f}" for w in _softmax(PER_FEATURE_LOGITS, 0).mean(-1))
    assert f"per-feature weights, shape (2, 4); mean over features: [{mean}]" in out
    assert "decoder (DenseTranspose) -> encoder (Dense)  transform=transpose" in out
    assert "encoder/kernel  shape (6, 4)" in out
    assert f"counting each shared variable once:  {EXPECTED_TOTAL:,}" in out
    untied = EXPECTED_TOTAL + ENCODER_KERNEL
    assert f"if every tie were a separate copy:   {untied:,}" in out
    share = f"{ENCODER_KERNEL / untied:.1%}"
    assert f"saved by ties:                       {ENCODER_KERNEL:,} ({share})" in out


def test_describe_counts_every_user_of_a_shared_kernel():
    # Two layers tied to one encoder: untied, each would hold its own copy.
    inputs = keras.Input(shape=(5,))
    encoder = keras.layers.Dense(3, name="encoder")
    hidden = encoder(inputs)
    first = DenseTranspose(encoder, use_bias=False, name="first")(hidden)
    second = DenseTranspose(encoder, use_bias=False, name="second")(hidden)
    model = keras.Model(inputs, [first, second])

    report = _inspect.describe_model(model)

    total = 5 * 3 + 3
    assert report["mixtures"] == []
    assert [tie["layer"] for tie in report["ties"]] == ["first", "second"]
    assert report["params"] == {
        "total": total,
        "if_untied": total + 2 * 5 * 3,
        "saved_by_ties": 2 * 5 * 3,
    }


def test_describe_saves_nothing_when_the_source_is_outside_the_model():
    # The source's kernel is used only by the tied layer: one copy either way.
    outside = keras.layers.Dense(3)
    outside.build((None, 5))
    model = keras.Sequential(
        [keras.Input(shape=(3,)), DenseTranspose(outside, name="decoder")]
    )

    report = _inspect.describe_model(model)

    total = 5 * 3 + 5
    assert report["ties"][0]["source_in_model"] is False
    assert report["params"] == {"total": total, "if_untied": total, "saved_by_ties": 0}
    assert "none" in _inspect.format_report(report).split("Ties")[0]


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(2048))


def _text(path):
    path.write_text("model = 'not really'\n")


def _foreign_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "a zip archive, but no Keras model in it")


def _truncated(path):
    # A real model cut in half: the zip index at the end is gone.
    source = path.with_name("whole.keras")
    _model().save(source)
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make",
    [None, _random_bytes, _text, _foreign_zip, _truncated],
    ids=["missing", "random-bytes", "text", "foreign-zip", "truncated"],
)
def test_main_inspect_unreadable_file_gives_one_line_and_exit_2(tmp_path, capsys, make):
    path = tmp_path / "broken.keras"
    if make is not None:
        make(path)

    assert _cli.main(["inspect", str(path)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"keras-tether: cannot read model '{path}': ")
    assert "Traceback" not in captured.err


def test_main_inspect_folder(tmp_path, capsys):
    assert _cli.main(["inspect", str(tmp_path)]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("it is a folder, expected a .keras file")
    )


def test_main_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"keras-tether {keras_tether.__version__} ")
    assert f"backend {keras.backend.backend()}" in out


def test_main_without_command_prints_help_and_fails(capsys):
    assert _cli.main([]) == 2
    err = capsys.readouterr().err
    assert "inspect" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench"],
        ["demo"],
        ["inspect"],
    ],
)
def test_main_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage: keras-tether" in capsys.readouterr().err


def test_demo_command_dispatches_to_the_demo(monkeypatch, tmp_path):
    from demo import __main__ as demo_command
    from demo import experiments

    calls = []

    def run(out_dir, epochs):
        calls.append((out_dir, epochs))
        return 7

    monkeypatch.setattr(experiments, "run", run)
    assert demo_command.main(["--out", str(tmp_path), "--epochs", "3"]) == 7
    assert demo_command.main([]) == 7
    assert calls == [(str(tmp_path), 3), ("demo-output", None)]


@pytest.fixture
def no_backend_chosen(monkeypatch, tmp_path):
    """A machine where nothing names a backend; returns a find_spec switch."""
    monkeypatch.delitem(sys.modules, "keras")
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    real_find_spec = importlib.util.find_spec
    installed = set()

    def find_spec(name, *args, **kwargs):
        if name in ("tensorflow", "jax", "torch"):
            return object() if name in installed else None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return installed


def _write_config(folder, backend):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keras.json").write_text(json.dumps({"backend": backend}))


@pytest.mark.parametrize(
    "installed, expected",
    [({"jax", "torch"}, "jax"), ({"torch"}, "torch"), (set(), None)],
)
def test_choose_backend_without_tensorflow(no_backend_chosen, installed, expected):
    no_backend_chosen.update(installed)
    assert _backend_choice.choose_backend() == expected
    assert os.environ.get("KERAS_BACKEND") == expected


def test_choose_backend_keeps_keras_default_when_tensorflow_is_installed(
    no_backend_chosen,
):
    no_backend_chosen.update({"tensorflow", "jax"})
    assert _backend_choice.choose_backend() is None
    assert "KERAS_BACKEND" not in os.environ


def test_choose_backend_keeps_the_environment_variable(no_backend_chosen, monkeypatch):
    no_backend_chosen.add("jax")
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert _backend_choice.choose_backend() is None
    assert os.environ["KERAS_BACKEND"] == "torch"


def test_choose_backend_keeps_a_backend_named_in_keras_home(
    no_backend_chosen, tmp_path
):
    no_backend_chosen.add("jax")
    _write_config(tmp_path / "keras-home", "torch")
    assert _backend_choice.choose_backend() is None
    assert "KERAS_BACKEND" not in os.environ


def test_choose_backend_reads_the_home_folder(no_backend_chosen, monkeypatch, tmp_path):
    no_backend_chosen.add("jax")
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    _write_config(tmp_path / ".keras", "torch")
    assert _backend_choice.configured_backend() == "torch"
    assert _backend_choice.choose_backend() is None


def test_choose_backend_overrides_the_tensorflow_that_keras_wrote(
    no_backend_chosen, tmp_path
):
    # Keras writes keras.json naming TensorFlow on its first import, whatever
    # KERAS_BACKEND said; without TensorFlow that file must not block the choice.
    no_backend_chosen.add("torch")
    _write_config(tmp_path / "keras-home", "tensorflow")
    assert _backend_choice.choose_backend() == "torch"


def test_choose_backend_does_nothing_once_keras_is_imported(
    no_backend_chosen, monkeypatch
):
    no_backend_chosen.add("jax")
    monkeypatch.setitem(sys.modules, "keras", keras)
    assert _backend_choice.choose_backend() is None
    assert "KERAS_BACKEND" not in os.environ


def test_main_inspect_flags_a_pending_tie(tmp_path, capsys):
    encoder = keras.layers.Dense(3, name="encoder")
    encoder_model = keras.Sequential([keras.Input((5,)), encoder])
    decoder_model = keras.Sequential(
        [keras.Input((3,)), DenseTranspose(encoder, name="decoder")]
    )
    assert encoder_model.built
    path = str(tmp_path / "decoder.keras")
    decoder_model.save(path)  # the encoder stays behind: the tie is pending
    assert _cli.main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "decoder (DenseTranspose) -> encoder (Dense)" in out
    assert "PENDING: not bound to its source" in out
    assert _cli.main(["inspect", path, "--json"]) == 0
    (tie,) = json.loads(capsys.readouterr().out)["ties"]
    assert tie["pending"] is True and tie["variables"] == []


def test_inspect_lists_a_gated_average_with_its_mean_gates(tmp_path, capsys):
    from keras_tether.layers import GatedAverage

    inputs = keras.Input(shape=(4,))
    branches = [keras.layers.Dense(2)(inputs) for _ in range(3)]
    gate = GatedAverage(simplex="sparsemax", name="gate")
    model = keras.Model(inputs, gate([inputs, branches]))
    mean_gates = np.array([0.5, 0.125, 0.375], dtype="float32")
    gate.mean_gates.assign(mean_gates)
    path = str(tmp_path / "gated.keras")
    model.save(path)

    (mixture,) = _inspect.inspect_file(path)["mixtures"]
    assert mixture == {
        "layer": "gate",
        "class": "GatedAverage",
        "simplex": "sparsemax",
        "inputs": 3,
        "shape": [3],
        "weights": [0.5, 0.125, 0.375],
    }
    assert _cli.main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "gate  GatedAverage  simplex=sparsemax  inputs=3" in out
    assert "mean gates: [0.5000, 0.1250, 0.3750]" in out
