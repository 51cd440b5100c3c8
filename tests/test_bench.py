"""Tests of the benchmarks (`make bench`): their method, report and JSON.

Speed is not tested here; `make bench` measures it. These tests run the
benchmark in `--smoke` mode on the backend under test and check that it
reports what it claims to measure.
"""

import contextlib
import importlib.util
import io
import json
import math
import statistics
import sys

import keras
import numpy as np
import pytest

from benchmarks import __main__ as bench_command
from benchmarks import _args, report, runner, schema, timing
from benchmarks.scenarios import ties as tie_scenarios

BACKEND = keras.backend.backend()
ROUNDS = 2

# Every row of a run, with its baseline's kind and its target (the largest
# ratio ours / baseline that meets it), as the project set them.
EXPECTED_ROWS = [
    ("stress", "WeightedAverage", "hand-written loop", "hand-written-ops", 1.10),
    (
        "stress",
        "WeightedAverage",
        "hand-written stack+tensordot",
        "hand-written-ops",
        1.10,
    ),
    ("stress", "WeightedAverage", "seed formula", "seed-formula", 1.00),
    ("stress", "WeightedAverage", "Add", "keras-layers", None),
    ("stress forward", "WeightedAverage", "Add", "keras-layers", None),
    ("seed scenario", "WeightedAverage", "Add", "keras-layers", 1.05),
    *(
        (
            f"list parity N={inputs}",
            "WeightedAverage",
            "hand-written loop",
            "hand-written-ops",
            1.10,
        )
        for inputs in (2, 3, 8, 16)
    ),
    *(
        (
            "stacked parity N=8",
            "WeightedAverage(branch_axis=1)",
            baseline,
            "hand-written-ops",
            1.10,
        )
        for baseline in ("hand-written sum(w * x)", "hand-written einsum")
    ),
    (
        "list mixing first fit N=4",
        "WeightedAverage over 4 inputs",
        "keras Average over 4 inputs",
        "keras-layers",
        3.0,
    ),
    (
        "tied autoencoder",
        "tied (ReversibleDense)",
        "untied (Dense)",
        "keras-layers",
        1.05,
    ),
    (
        "tied conv autoencoder",
        "tied (ReversibleConv2D)",
        "untied (Conv2D, Conv2DTranspose)",
        "keras-layers",
        1.05,
    ),
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A quick benchmark of this backend, in-process: (exit code, JSON, stdout)."""
    path = tmp_path_factory.mktemp("bench") / "result.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = runner.main(
            [
                "--backend",
                BACKEND,
                "--smoke",
                "--rounds",
                str(ROUNDS),
                "--out",
                str(path),
            ]
        )
    with open(path) as file:
        return code, json.load(file), stdout.getvalue()


def test_quick_run_succeeds_and_records_its_settings(quick_run):
    code, result, _ = quick_run
    assert code == 0
    assert result["backend"] == BACKEND
    assert result["settings"]["quick"] is True
    assert result["settings"]["rounds"] == ROUNDS
    assert result["settings"]["warmup"] >= 1
    environment = result["environment"]
    assert environment["versions"]["keras"] == keras.__version__
    assert environment["cpu_count"] >= 1
    assert isinstance(environment["thread_variables"], dict)


def test_quick_run_reports_every_comparison(quick_run):
    _, result, _ = quick_run
    # Other scenario modules add their own rows; these are this file's.
    rows = [
        (r["benchmark"], r["ours"], r["baseline"], r["baseline_kind"], r["target"])
        for r in result["rows"]
        if r["scenario"] in ("mixing", "ties")
    ]
    assert rows == EXPECTED_ROWS


STACKED = "ParallelDense x2 + WeightedAverage(branch_axis=1)"
ENSEMBLE = "Ensemble(Sequential MLP) + WeightedAverage(branch_axis=1)"
_TRAINING = "parametrized Dense training step"
_INFERENCE = "parametrized Dense inference step"
PARAMETRIZE_ROWS = [
    (_TRAINING, "Parametrized Positive", "Dense"),
    (_TRAINING, "Parametrized WeightNorm", "Dense"),
    (_TRAINING, "Parametrized Orthogonal", "Dense"),
    (_TRAINING, "Parametrized SpectralNorm", "Dense"),
    (_TRAINING, "Parametrized Orthogonal (QR)", "Dense"),
    (_TRAINING, "Parametrized Positive", "Dense + NonNeg constraint"),
    (_TRAINING, "Parametrized WeightNorm", "Dense + UnitNorm constraint"),
    (_TRAINING, "Parametrized Orthogonal", "Dense + orthogonal projection (SVD)"),
    (_TRAINING, "Parametrized SpectralNorm", "keras SpectralNormalization"),
    (_TRAINING, "Parametrized Orthogonal", "Parametrized Orthogonal (QR)"),
    (_TRAINING, "Parametrized Orthogonal on a batch of 1", "Dense"),
    (_INFERENCE, "Parametrized Orthogonal", "Dense"),
    (
        _INFERENCE,
        "Parametrized Orthogonal",
        "Parametrized Orthogonal, removed and baked",
    ),
    (_INFERENCE, "Parametrized Positive", "Dense"),
    (_INFERENCE, "Parametrized Positive", "Parametrized Positive, removed and baked"),
    (_INFERENCE, "Parametrized WeightNorm", "Dense"),
    (
        _INFERENCE,
        "Parametrized WeightNorm",
        "Parametrized WeightNorm, removed and baked",
    ),
    (
        _INFERENCE,
        "Tied orthogonal autoencoder, cached",
        "Tied orthogonal autoencoder",
    ),
]
PARAMETRIZE_TARGETS = [1.3, 1.3, 3.0] + [None] * 15
# The rows the other scenario modules add, with their targets.
OTHER_ROWS = {
    "parallel": [
        row
        for n in (2, 3, 4, 5)
        for row in (
            (
                f"parallel N={n} training",
                STACKED,
                f"{n} x (Dense, Dense) + WeightedAverage",
                1.0,
            ),
            (
                f"parallel N={n} training",
                STACKED,
                f"Dense({8 * n}, relu) + Dense(4), the same products unstacked",
                None,
            ),
            (
                f"parallel N={n} predict",
                STACKED,
                f"{n} x (Dense, Dense) + WeightedAverage",
                1.0,
            ),
        )
    ]
    + [
        (
            "per-branch product N=4 training",
            "ParallelDense(per_branch_inputs=True)",
            baseline,
            None,
        )
        for baseline in (
            "4 x Dense on 4 inputs",
            'keras.ops.einsum("bni,nio->bno") by hand',
        )
    ]
    + [
        (
            f"first fit N={n}",
            f"WeightedAverage over {n} inputs",
            f"keras Average over {n} inputs",
            3.0,
        )
        for n in (2, 3, 4)
    ],
    "routing": [
        (
            "mixture of experts",
            "MixtureOfExperts E=16 sparse",
            "MixtureOfExperts E=16 dense",
            0.5,
        ),
        ("gated seed scenario", "GatedAverage", "WeightedAverage", None),
    ]
    + (
        [
            (
                "MoE block E=4 k=2",
                "dropless E=4 k=2 train",
                "keras_hub E=4 k=2 train",
                1.0,
            ),
            (
                "MoE block E=4 k=2",
                "dense E=4 k=2 train",
                "keras_hub E=4 k=2 train",
                None,
            ),
            (
                "MoE block E=4 k=2",
                "dropless E=4 k=2 forward",
                "keras_hub E=4 k=2 forward",
                None,
            ),
            (
                "Qwen3-MoE backbone E=4 k=2 forward",
                "Qwen3MoeBackbone forward, sparsified",
                "Qwen3MoeBackbone forward",
                0.6,
            ),
        ]
        if importlib.util.find_spec("keras_hub") is not None
        else []
    ),
    "ensemble": [
        row
        for n in (2, 3, 4, 5)
        for step in ("training", "predict")
        for row in (
            (
                f"ensemble N={n} {step}",
                ENSEMBLE,
                f"{n} x Sequential MLP + WeightedAverage",
                1.0,
            ),
            (f"ensemble N={n} {step}", ENSEMBLE, STACKED, None),
            (
                f"ensemble N={n} {step}",
                ENSEMBLE,
                f"Dense({8 * n}, relu) + Dense(4), the same products unstacked",
                None,
            ),
        )
    ]
    + [
        (
            "ensemble of 2 CNNs training",
            "Ensemble of 2 CNNs",
            "2 separate CNNs",
            pytest.approx(2 / 3),
        ),
        (
            "ensemble of 2 CNNs training",
            "Ensemble of 2 CNNs",
            "one CNN on 2x the batch",
            None,
        ),
    ],
    "parametrize": [
        (*row, target)
        for row, target in zip(PARAMETRIZE_ROWS, PARAMETRIZE_TARGETS, strict=True)
    ],
}


@pytest.mark.parametrize("scenario", sorted(OTHER_ROWS))
def test_quick_run_reports_every_other_scenarios_rows(quick_run, scenario):
    _, result, _ = quick_run
    rows = [
        (r["benchmark"], r["ours"], r["baseline"], r["target"])
        for r in result["rows"]
        if r["scenario"] == scenario
    ]
    assert rows == OTHER_ROWS[scenario]


def test_quick_mode_is_labelled_indicative_and_judges_no_target(quick_run):
    _, result, stdout = quick_run
    assert all(row["indicative"] is True for row in result["rows"])
    assert all(row["met"] is None for row in result["rows"])
    assert stdout.startswith(report.QUICK_NOTE)
    table = stdout.split("\n", 1)[1]
    verdicts = [line.rsplit("|", 1)[1].strip() for line in _table_rows(table)]
    assert verdicts == ["indicative"] * len(result["rows"])
    assert max(len(line) for line in stdout.splitlines()) <= report.TABLE_WIDTH


def _table_rows(table):
    """The first line of each row of `format_table`'s table."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line and set(line) <= set("-+"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if not line.startswith(" "):  # not the wrapped rest of a long name
            rows.append(line)
    return rows


def test_quick_run_numbers_are_positive_and_consistent(quick_run):
    _, result, _ = quick_run
    comparisons = {c["name"]: c for c in result["comparisons"]}
    labels = {
        c["name"]: {m["label"]: m for m in c["models"].values()}
        for c in result["comparisons"]
    }
    for row in result["rows"]:
        assert row["backend"] == BACKEND
        for key in ("ours_ms", "baseline_ms", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        models = labels[row["benchmark"]]
        ours = np.array(models[row["ours"]]["round_ms"])
        baseline = np.array(models[row["baseline"]]["round_ms"])
        # A first fit runs once per round in fresh processes, and once in a
        # quick run.
        rounds = 1 if "first fit" in row["benchmark"] else ROUNDS
        assert len(ours) == len(baseline) == rounds
        assert np.all(ours > 0) and np.all(baseline > 0)
        assert row["ours_ms"] == pytest.approx(np.median(ours))
        assert row["baseline_ms"] == pytest.approx(np.median(baseline))
        # The ratio is the median of the per-round ratios.
        assert row["ratio"] == pytest.approx(np.median(ours / baseline))
    for comparison in comparisons.values():
        assert comparison["steps_per_round"] >= 1


def test_quick_run_records_the_peak_memory_of_each_first_fit(quick_run):
    _, result, _ = quick_run
    first_fits = [c for c in result["comparisons"] if c["name"].startswith("first fit")]
    assert [c["branches"] for c in first_fits] == [2, 3, 4]
    for comparison in first_fits:
        for model in comparison["models"].values():
            assert len(model["round_peak_mb"]) == 1
            assert math.isfinite(model["peak_mb"]) and model["peak_mb"] >= 0


def test_quick_run_records_the_peak_memory_of_the_moe_training_steps(quick_run):
    pytest.importorskip("keras_hub", reason="keras-hub is not installed")
    _, result, _ = quick_run
    (block,) = [c for c in result["comparisons"] if c["name"] == "MoE block E=4 k=2"]
    for key in ("train_dropless", "train_keras_hub"):
        model = block["models"][key]
        # A training step of any model allocates (its gradients at least).
        assert math.isfinite(model["peak_mb"]) and model["peak_mb"] > 0
        assert model["device_peak_mb"] is None or model["device_peak_mb"] > 0


def test_a_failed_moe_memory_process_raises_with_its_message():
    from benchmarks.scenarios import routing

    with pytest.raises(RuntimeError, match="Received: model='dense'"):
        routing.step_memory(BACKEND, ("dense",), 4, 2, quick=True)


def test_notes_name_each_models_peak_memory():
    model = {"label": "dropless E=8 k=2 train", "peak_mb": 12.4}
    results = {
        "jax": {
            "comparisons": [
                {"name": "MoE block E=8 k=2", "models": {"train_dropless": model}},
                {"name": "no memory", "models": {"a": {"label": "a"}}},
            ]
        }
    }
    assert report.notes(results) == [
        "jax: MoE block E=8 k=2, rise of the peak resident memory: "
        "dropless E=8 k=2 train 12 MiB"
    ]


def test_a_first_fit_reports_its_own_peak_not_its_parents():
    # Linux carries ru_maxrss across exec: a child of a process that once
    # held more memory than the child ever will would report no rise.
    from benchmarks.scenarios import _first_fit

    held = np.ones(2**29 // 8)  # 512 MiB, touched, so resident
    result = _first_fit.measure(BACKEND, 16, "weighted", quick=False)
    assert held.sum() == held.size
    # Sixteen branches of 64 -> 64 -> 10 and their first step take tens of
    # MiB on every backend (torch's eager step least).
    assert result["peak_mb"] > 5
    assert result["seconds"] > 0


def test_a_failed_first_fit_process_raises_with_its_message():
    from benchmarks.scenarios import _first_fit

    with pytest.raises(RuntimeError, match="'median'.*Received: mixer='median'"):
        _first_fit.measure(BACKEND, 2, "median", quick=True)


def test_quick_run_counts_the_autoencoder_parameters(quick_run):
    _, result, _ = quick_run
    (autoencoder,) = [
        c for c in result["comparisons"] if c["name"] == "tied autoencoder"
    ]
    sizes = [
        tie_scenarios.QUICK.autoencoder_input,
        *tie_scenarios.QUICK.autoencoder_units,
    ]
    kernels = sum(a * b for a, b in zip(sizes, sizes[1:], strict=False))
    encoder_biases = sum(sizes[1:])
    decoder_biases = sum(sizes[:-1])
    assert autoencoder["kernel_params"] == {"tied": kernels, "untied": 2 * kernels}
    biases = encoder_biases + decoder_biases
    assert autoencoder["total_params"] == {
        "tied": kernels + biases,
        "untied": 2 * kernels + biases,
    }


def test_quick_run_prints_a_table(quick_run):
    _, result, stdout = quick_run
    lines = stdout.strip().splitlines()[1:]  # after the smoke-test note
    header_at = next(i for i, line in enumerate(lines) if line.startswith("backend"))
    header = [cell.strip() for cell in lines[header_at].split("|")]
    assert header == list(report.TABLE_HEADER)
    body = _table_rows("\n".join(lines))
    assert len(body) == len(result["rows"])
    for line, row in zip(body, result["rows"], strict=True):
        cells = [cell.strip() for cell in line.split("|")]
        assert cells[0] == BACKEND
        label = f"{row['benchmark']}: {row['ours']} vs {row['baseline']}"
        assert label.startswith(cells[1])
        assert float(cells[4]) == pytest.approx(row["ratio"], abs=5e-4)


class _FakeModel:
    jit_compile = False


def test_time_candidates_rotates_the_order_every_round():
    log = []
    candidates = [
        timing.Candidate(
            key, key.upper(), _FakeModel(), lambda key=key: log.append(key)
        )
        for key in ("a", "b", "c")
    ]
    budget = runner.budget(quick=True, rounds=4, warmup=2)
    measured = timing.time_candidates(candidates, budget)

    steps = measured["steps_per_round"]
    assert 1 <= steps <= budget.max_steps_per_round
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]
    blocks = [log[i] for i in range(6, len(log), steps)]
    assert blocks == list("abcbcacababc")
    assert len(log) == 6 + 4 * 3 * steps
    for key in "abc":
        model = measured["models"][key]
        assert model["label"] == key.upper()
        assert len(model["round_ms"]) == 4
        assert model["median_ms"] == statistics.median(model["round_ms"])


def test_ratio_is_the_median_of_round_ratios_not_of_medians():
    timing = {
        "models": {
            "ours": {"label": "Ours", "median_ms": 4.0, "round_ms": [2.0, 4.0, 9.0]},
            "base": {"label": "Base", "median_ms": 1.0, "round_ms": [1.0, 1.0, 3.0]},
        }
    }
    row = schema.make_row(
        "toy", timing, "ours", "base", baseline_kind="keras-layers", target=3.5
    )
    # Per-round ratios 2, 4 and 3: their median is 3, the ratio of medians 4.
    assert row["round_ratios"] == [2.0, 4.0, 3.0]
    assert row["ratio"] == 3.0
    assert row["met"] is True
    other = schema.make_row(
        "toy", timing, "ours", "base", baseline_kind="keras-layers", target=2.5
    )
    assert other["met"] is False


def test_format_table_marks_targets():
    rows = [
        {
            "backend": "jax",
            "benchmark": "stress",
            "ours": "A",
            "baseline": "B",
            "ours_ms": 2.0,
            "baseline_ms": 1.0,
            "ratio": 2.0,
            "target": 1.1,
            "met": False,
        },
        {
            "backend": "jax",
            "benchmark": "stress",
            "ours": "C",
            "baseline": "B",
            "ours_ms": 1.0,
            "baseline_ms": 1.0,
            "ratio": 1.0,
            "target": None,
            "met": None,
        },
    ]
    table = report.format_table(rows)
    first, second = _table_rows(table)
    assert [cell.strip() for cell in first.split("|")][-2:] == ["<= 1.10", "NO"]
    assert [cell.strip() for cell in second.split("|")][-2:] == ["-", "-"]
    assert "ours/base: median over the timed rounds" in table


def test_format_table_wraps_long_names_within_the_width():
    name = "parallel training step, 256 branches of Dense(64) on 64 features"
    row = {
        "backend": "tensorflow",
        "benchmark": name,
        "ours": "ParallelDense + WeightedAverage(branch_axis=1)",
        "baseline": "256 separate Dense layers + WeightedAverage",
        "ours_ms": 1234.5,
        "baseline_ms": 2345.6,
        "ratio": 0.526,
        "target": 1.0,
        "met": True,
    }
    lines = report.format_table([row]).splitlines()
    assert max(len(line) for line in lines) <= report.TABLE_WIDTH
    (first,) = _table_rows("\n".join(lines))
    cells = [cell.strip() for cell in first.split("|")]
    assert cells[0] == "tensorflow" and cells[4:] == ["0.526", "<= 1.00", "yes"]
    at = lines.index(first)
    wrapped = " ".join(line.split("|")[1].strip() for line in lines[at:])
    assert wrapped == f"{name}: {row['ours']} vs {row['baseline']}"


def test_main_refuses_a_backend_keras_is_not_using(capsys):
    other = next(name for name in _args.BACKENDS if name != BACKEND)
    assert runner.main(["--backend", other, "--smoke"]) == 2
    err = capsys.readouterr().err
    assert f"KERAS_BACKEND={other}" in err


def test_cli_bench_runs_each_backend_in_a_subprocess(
    quick_run, monkeypatch, tmp_path, capsys
):
    _, result, _ = quick_run
    calls = []

    def popen(command, env, **kwargs):
        calls.append((command, env["KERAS_BACKEND"]))
        out = command[command.index("--out") + 1]
        with open(out, "w") as file:
            json.dump(result, file)
        progress = f"make bench: {BACKEND}: 1/4 mixing: stress\n"
        return _Process(0, stderr="TensorFlow noise\n" + progress)

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    out = tmp_path / "new" / "folder" / "bench.json"
    argv = ["--backends", BACKEND, "--smoke", "--rounds", "2"]
    assert bench_command.main([*argv, "--out", str(out)]) == 0

    (command, env_backend), *others = calls
    assert others == []
    assert env_backend == BACKEND
    assert command[:3] == [sys.executable, "-m", "benchmarks.backend"]
    assert command[command.index("--backend") + 1] == BACKEND
    assert "--smoke" in command
    assert command[command.index("--rounds") + 1] == "2"
    combined = json.loads(out.read_text())
    assert combined["rows"] == result["rows"]
    assert combined["results"] == {BACKEND: result}
    assert combined["failures"] == {}
    assert combined["settings"]["rounds"] == 2
    assert "environment" in combined
    printed = capsys.readouterr()
    assert "ours/base" in printed.out
    assert "tied autoencoder kernels" in printed.out
    # The measuring process's progress is passed on, its other lines are not.
    assert f"make bench: {BACKEND}: 1/4 mixing: stress" in printed.err
    assert "TensorFlow noise" not in printed.err
    assert printed.out.startswith(report.QUICK_NOTE)

    # Beside the JSON: report.md with every row, and the chart it shows.
    markdown = (out.parent / "report.md").read_text()
    assert report.QUICK_NOTE in markdown
    assert "![Ratios per backend](ratios.png)" in markdown
    table = [line for line in markdown.splitlines() if line.startswith(f"| {BACKEND}")]
    assert len(table) == len(result["rows"])
    for line, row in zip(table, result["rows"], strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1:5] == [
            row["benchmark"],
            row["ours"],
            row["baseline"],
            row["baseline_kind"],
        ]
        assert float(cells[7]) == pytest.approx(row["ratio"], abs=5e-4)
        assert cells[9] == "indicative"
    chart = (out.parent / "ratios.png").read_bytes()
    assert chart.startswith(b"\x89PNG\r\n\x1a\n") and len(chart) > 10_000


def test_cli_bench_reports_a_failed_backend(monkeypatch, tmp_path, capsys):
    def popen(command, env, **kwargs):
        return _Process(1, stderr="lots of noise\nImportError: no backend here\n\n")

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    out = tmp_path / "bench.json"
    assert bench_command.main(["--backends", BACKEND, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{BACKEND} failed: exit code 1: ImportError: no backend here" in err
    combined = json.loads(out.read_text())
    assert combined["rows"] == []
    assert combined["failures"] == {
        BACKEND: "exit code 1: ImportError: no backend here"
    }


class _Process:
    """What the runner uses of `subprocess.Popen`."""

    def __init__(self, returncode, stderr=""):
        self.returncode = returncode
        self.stderr = io.StringIO(stderr)

    def wait(self):
        return self.returncode


def test_every_row_follows_the_one_row_schema(quick_run):
    jsonschema = pytest.importorskip("jsonschema")
    _, result, _ = quick_run
    validator = jsonschema.Draft202012Validator(schema.ROW_SCHEMA)
    validator.check_schema(schema.ROW_SCHEMA)
    assert result["rows"]
    for row in result["rows"]:
        validator.validate(row)
    assert {row["scenario"] for row in result["rows"]} >= {"mixing", "ties"}
    # A row that breaks the schema is caught: the check can fail.
    broken = {**result["rows"][0], "ratio": -1.0}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_make_row_refuses_an_unknown_baseline_kind():
    timing = {
        "models": {
            "a": {"label": "A", "median_ms": 1.0, "round_ms": [1.0]},
            "b": {"label": "B", "median_ms": 1.0, "round_ms": [1.0]},
        }
    }
    with pytest.raises(ValueError, match="baseline_kind"):
        schema.make_row("toy", timing, "a", "b", baseline_kind="other", target=None)


def test_scenarios_option_runs_only_the_named_modules(tmp_path):
    path = tmp_path / "ties.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = runner.main(
            ["--smoke", "--rounds", "1", "--scenarios", "ties", "--out", str(path)]
        )
    assert code == 0
    result = json.loads(path.read_text())
    assert result["settings"]["scenarios"] == ["ties"]
    assert result["rows"]
    assert {row["scenario"] for row in result["rows"]} == {"ties"}


def test_cli_bench_passes_the_scenarios_on(quick_run, monkeypatch, tmp_path):
    _, result, _ = quick_run
    commands = []

    def popen(command, env, **kwargs):
        commands.append(command)
        with open(command[command.index("--out") + 1], "w") as file:
            json.dump(result, file)
        return _Process(0)

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    argv = ["--backends", BACKEND, "--smoke", "--scenarios", "ties,mixing"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert bench_command.main([*argv, "--out", str(tmp_path / "b.json")]) == 0
    (command,) = commands
    assert command[command.index("--scenarios") + 1] == "ties,mixing"
    combined = json.loads((tmp_path / "b.json").read_text())
    assert combined["settings"]["scenarios"] == ["ties", "mixing"]


@pytest.mark.parametrize("text", ["nope", "ties,nope", ","])
def test_scenarios_option_refuses_unknown_names(text, capsys):
    with pytest.raises(SystemExit) as raised:
        bench_command.main(["--scenarios", text])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "--scenarios" in err
    assert "expected a comma-separated list of mixing, ties" in err
