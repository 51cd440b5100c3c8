import contextlib
import io
import json
import struct
import sys

import keras
import pytest

from demo import experiments as _demo
from demo import progress as _progress

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPOCHS = 2


def _torch_threads():
    if keras.backend.backend() != "torch":
        return None
    import torch

    return torch.get_num_threads()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Runs the demo once, with few epochs, for every test of its output."""
    out_dir = tmp_path_factory.mktemp("demo") / "output"
    printed = io.StringIO()
    threads = _torch_threads()
    with contextlib.redirect_stdout(printed):
        exit_code = _demo.run(str(out_dir), epochs=EPOCHS)
    # The demo trains torch on one thread, and must leave the count as it was.
    assert _torch_threads() == threads
    keras.backend.clear_session()
    results = json.loads((out_dir / "results.json").read_text())
    return exit_code, out_dir, printed.getvalue(), results


def test_demo_succeeds_and_writes_every_file(demo_run):
    exit_code, out_dir, _, _ = demo_run
    assert exit_code == 0
    assert sorted(path.name for path in out_dir.iterdir()) == [
        "ensemble_times.png",
        "mixture_weights.png",
        "reconstructions.png",
        "report.md",
        "results.json",
    ]


@pytest.mark.parametrize(
    "name", ["mixture_weights.png", "reconstructions.png", "ensemble_times.png"]
)
def test_plots_are_png_images(demo_run, name):
    data = (demo_run[1] / name).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


def test_report_states_the_numbers(demo_run):
    _, out_dir, _, results = demo_run
    report = (out_dir / "report.md").read_text()
    for value in results["test_accuracy"].values():
        assert f"{value:.3f}" in report
    for value in results["mixture_weights"].values():
        assert f"{value:.3f}" in report
    for value in results["parameters"].values():
        assert str(value) in report
    for value in results["test_reconstruction_mse"].values():
        assert f"{value:.4f}" in report
    ensemble = results["ensemble"]
    for value in ensemble["test_accuracy"].values():
        assert f"{value:.3f}" in report
    for key in ("first_step_seconds", "first_epoch_seconds"):
        for value in ensemble[key].values():
            assert f"{value:.2f}" in report
    for value in ensemble["epoch_seconds"].values():
        assert f"{value:.3f}" in report
    assert f"{ensemble['prediction_agreement']:.1%}" in report
    assert "](mixture_weights.png)" in report
    assert "](reconstructions.png)" in report
    assert "](ensemble_times.png)" in report


def test_progress_is_a_line_per_phase_then_the_tables(demo_run):
    _, _, printed, results = demo_run
    lines = printed.splitlines()
    training = [line for line in lines if line.strip().startswith("training")]
    assert len(training) == 4
    assert all(" done in " in line for line in training)
    # Keras' per-batch progress bars would print steps and ETAs.
    assert not any("/step" in line or "ETA" in line for line in lines)
    assert f"{results['test_accuracy']['weighted']:.3f}" in printed
    assert "| autoencoder" in printed
    assert "| ensemble" in printed


def test_parameter_counts(demo_run):
    parameters = demo_run[3]["parameters"]
    encoder_kernels = 64 * 32 + 32 * 8
    biases = 32 + 8 + 32 + 64
    assert parameters == {
        "tied": encoder_kernels + biases,
        "untied": 2 * encoder_kernels + biases,
    }


def test_noise_branch_gets_the_smallest_weight(demo_run):
    results = demo_run[3]
    weights = results["mixture_weights"]
    assert abs(sum(weights.values()) - 1.0) < 1e-5
    assert weights["noise"] < weights["left"]
    assert weights["noise"] < weights["right"]
    record = results["mixture_weights_over_epochs"]
    assert len(record) == EPOCHS + 1
    assert record[0] == pytest.approx([1 / 3] * 3, abs=1e-6)
    assert record[-1] == pytest.approx(
        [weights["left"], weights["right"], weights["noise"]]
    )


def test_lone_branches_learn_only_from_the_image(demo_run):
    accuracy = demo_run[3]["test_accuracy"]
    assert accuracy["noise"] < 0.3
    assert accuracy["left"] > accuracy["noise"] + 0.2
    assert accuracy["right"] > accuracy["noise"] + 0.2


def test_ensemble_parameter_counts(demo_run):
    # 16 branches of 64 -> 32 -> 10 with biases, and 16 mixture logits.
    branch = 64 * 32 + 32 + 32 * 10 + 10
    expected = 16 * branch + 16
    assert demo_run[3]["ensemble"]["parameters"] == {
        "separate": expected,
        "stacked": expected,
    }


def test_separate_and_stacked_ensembles_agree(demo_run):
    # Same weights, same batches, same math: only float rounding differs
    # (one stacked product against sixteen small ones), and training for
    # two epochs keeps it far below what would change a prediction.
    ensemble = demo_run[3]["ensemble"]
    accuracy = ensemble["test_accuracy"]
    assert accuracy["separate"] > 0.5
    assert abs(accuracy["separate"] - accuracy["stacked"]) <= 1 / 450
    assert ensemble["prediction_agreement"] >= 0.99
    assert ensemble["max_logit_difference"] < 1e-3


def test_ensemble_times_are_recorded(demo_run):
    ensemble = demo_run[3]["ensemble"]
    assert ensemble["branches"] == 16
    assert ensemble["epochs"] == EPOCHS
    for form in ("separate", "stacked"):
        first_step = ensemble["first_step_seconds"][form]
        first_epoch = ensemble["first_epoch_seconds"][form]
        assert 0 < first_step <= first_epoch
        assert ensemble["epoch_seconds"][form] > 0
    # Whole batches of 64 of the 1347 training images.
    assert ensemble["training_images"] == 1344


def test_one_epoch_reports_no_later_epoch():
    # With a single epoch there is no epoch after the compiling one to time.
    results = _demo._Results(mixing_epochs=1, autoencoder_epochs=1, ensemble_epochs=1)
    results.ensemble_accuracy = {"separate": 0.5, "stacked": 0.5}
    results.first_step_seconds = {"separate": 2.0, "stacked": 1.0}
    results.first_epoch_seconds = {"separate": 2.5, "stacked": 1.2}
    results.epoch_seconds = {"separate": None, "stacked": None}
    rows = _demo._stacking_table(results).splitlines()[2:]
    assert [row.rstrip(" |").endswith("| -") for row in rows] == [True, True]


@pytest.mark.parametrize("epochs", [0, -3, 2.5, True])
def test_invalid_epochs_exit_with_code_2(tmp_path, capsys, epochs):
    assert _demo.run(str(tmp_path / "unused"), epochs=epochs) == 2
    assert f"epochs={epochs!r}" in capsys.readouterr().err
    assert not (tmp_path / "unused").exists()


def test_missing_demo_extra_exits_with_code_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert _demo.run(str(tmp_path / "unused")) == 1
    message = capsys.readouterr().err
    assert "matplotlib" in message
    assert "pip install 'keras-tether[demo]'" in message
    assert not (tmp_path / "unused").exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _render(written):
    """The line a terminal shows after `written`, backspaces applied."""
    line, cursor = [], 0
    for char in written:
        if char == "\b":
            cursor = max(0, cursor - 1)
            continue
        if cursor < len(line):
            line[cursor] = char
        else:
            line.append(char)
        cursor += 1
    return "".join(line).rstrip()


def test_counter_updates_in_place_then_leaves_the_line_as_it_was():
    terminal = _Terminal()
    terminal.write("training ...")
    counter = _progress.Counter("epochs", 12, stream=terminal)
    for done in (1, 9, 10):
        counter.update(done)
        shown = _render(terminal.getvalue())
        assert shown == f"training ... [{done}/12 epochs]"
    counter.close()
    assert _render(terminal.getvalue()) == "training ..."


def test_counter_is_silent_off_a_terminal():
    stream = io.StringIO()
    counter = _progress.Counter("epochs", 3, stream=stream)
    counter.update(1)
    counter.close()
    assert stream.getvalue() == ""
