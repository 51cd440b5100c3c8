import contextlib
import io
import json
import struct
import sys

import keras
import numpy as np
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
    deep = results["deep_ensemble"]
    for scores in deep["test_scores"].values():
        for value in scores.values():
            assert f"{value:.3f}" in report
    for value in deep["training_seconds"].values():
        assert f"{value:.2f}" in report
    for value in deep["epoch_seconds"].values():
        assert f"{value:.3f}" in report
    assert f"{deep['to_models_max_logit_difference']:.2g}" in report
    assert "](mixture_weights.png)" in report
    assert "](reconstructions.png)" in report
    assert "](ensemble_times.png)" in report


def test_progress_is_a_line_per_phase_then_the_tables(demo_run):
    _, _, printed, results = demo_run
    lines = printed.splitlines()
    training = [line for line in lines if line.strip().startswith("training")]
    assert len(training) == 6
    assert all(" done in " in line for line in training)
    # Keras' per-batch progress bars would print steps and ETAs.
    assert not any("/step" in line or "ETA" in line for line in lines)
    assert f"{results['test_accuracy']['weighted']:.3f}" in printed
    assert "| autoencoder" in printed
    assert "| ensemble" in printed
    assert "| predictor" in printed
    assert "| training" in printed


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


def test_deep_ensemble_parameter_count(demo_run):
    # One member: Conv2D 1 -> 16 (3x3 kernel and bias), batch normalization
    # of 16 channels (4 variables), and Dense from 16 x 4 x 4 to 10.
    member = (3 * 3 * 16 + 16) + 4 * 16 + (16 * 4 * 4 * 10 + 10)
    deep = demo_run[3]["deep_ensemble"]
    assert deep["members"] == 8
    assert deep["parameters"] == 8 * member


def test_deep_ensemble_scores_are_sane(demo_run):
    deep = demo_run[3]["deep_ensemble"]
    assert deep["epochs"] == EPOCHS
    scores = deep["test_scores"]
    assert sorted(scores) == ["ensemble", "member_0", "member_mean", "separate"]
    members = deep["member_test_scores"]
    assert len(members) == 8
    assert scores["member_0"] == members[0]
    for key in ("accuracy", "nll", "ece"):
        mean = np.mean([member[key] for member in members])
        assert scores["member_mean"][key] == pytest.approx(mean)
    for predictor in [*scores.values(), *members]:
        assert 0.0 <= predictor["accuracy"] <= 1.0
        assert 0.0 <= predictor["ece"] <= 1.0
        assert predictor["nll"] > 0.0
    # Ten classes: chance is 0.1, and two epochs already learn much more.
    assert scores["ensemble"]["accuracy"] > 0.5
    assert scores["separate"]["accuracy"] > 0.5
    # Jensen: -log of a mean of probabilities is at most the mean of the
    # -logs, image by image, so the ensemble's NLL is at most the members'.
    assert scores["ensemble"]["nll"] <= scores["member_mean"]["nll"]


def test_deep_ensemble_members_come_back_as_models(demo_run):
    # `to_models()` members against the ensemble's own member outputs.
    deep = demo_run[3]["deep_ensemble"]
    assert deep["to_models_max_logit_difference"] < 1e-5


def test_deep_ensemble_times_are_recorded(demo_run):
    deep = demo_run[3]["deep_ensemble"]
    for form in ("ensemble", "separate"):
        assert deep["training_seconds"][form] > 0
        assert 0 < deep["epoch_seconds"][form] < deep["training_seconds"][form]


def test_expected_calibration_error_of_a_hand_worked_example():
    probabilities = np.array(
        [
            [0.95, 0.03, 0.02],  # confidence 0.95 (bin 10), right
            [0.85, 0.10, 0.05],  # 0.85 (bin 9), wrong
            [0.05, 0.14, 0.81],  # 0.81 (bin 9), right
            [0.15, 0.75, 0.10],  # 0.75 (bin 8), right
            [0.20, 0.35, 0.45],  # 0.45 (bin 5), right
        ]
    )
    labels = np.array([0, 1, 2, 1, 2])
    # Bin 9 holds two predictions: accuracy 1/2, mean confidence 0.83.
    expected = (abs(1 - 0.95) + 2 * abs(0.5 - 0.83) + abs(1 - 0.75) + abs(1 - 0.45)) / 5
    assert expected == pytest.approx(0.302)
    error = _demo._expected_calibration_error(probabilities, labels)
    assert error == pytest.approx(expected, abs=1e-12)


def test_expected_calibration_error_bins_close_on_the_right():
    # 0.5 falls in (0.4, 0.5] and 0.6 in (0.5, 0.6], 1.0 in the last bin;
    # bins closed on the left would put 0.5 with 0.6 and give 0.05.
    probabilities = np.array([[0.5, 0.5], [0.6, 0.4], [1.0, 0.0]])
    labels = np.array([0, 1, 0])
    error = _demo._expected_calibration_error(probabilities, labels)
    assert error == pytest.approx((0.5 + 0.6 + 0.0) / 3, abs=1e-12)
    # Confident and always right: perfectly calibrated.
    perfect = _demo._expected_calibration_error(np.eye(3), np.arange(3))
    assert perfect == 0.0


def test_mean_of_member_probabilities_in_log_space():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=5.0, size=(6, 4, 10))
    log_probabilities = _demo._log_probabilities(logits)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.exp(log_probabilities), probabilities, atol=1e-12)
    mean = _demo._mean_probabilities(log_probabilities)
    np.testing.assert_allclose(np.exp(mean), probabilities.mean(axis=1), atol=1e-12)


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
