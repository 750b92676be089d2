"""The command line, end to end on a small heteroscedastic run."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from polytask.cli import main


def test_run_hetero_writes_the_whole_report(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(
        [
            "run",
            "hetero",
            "--n",
            "1200",
            "--max-epochs",
            "4",
            "--seed",
            "3",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = pd.read_csv(out / "results.csv")
    assert list(table["task"]) == [f"task{i}" for i in range(5)]
    ratio = table["test mse (mse)"] / table["test mse (geometric)"]
    pd.testing.assert_series_equal(ratio, table["ratio mse/geometric"], check_names=False)
    assert (table["test mse (mse)"] > 0).all()
    assert "| ratio mse/geometric |" in (out / "results.md").read_text()
    for name in ("training_curves.png", "task_losses.png", "predictions.png"):
        assert (out / name).stat().st_size > 10_000, name
    for method in ("mse", "geometric"):
        history = pd.read_csv(out / f"history_{method}.csv")
        assert list(history["epoch"]) == [1, 2, 3, 4]
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3 and config["n"] == 1200 and len(config["config_hash"]) == 12
    printed = capsys.readouterr().out
    assert "ratio mse/geometric" in printed and str(out) in printed


def test_same_seed_same_report(tmp_path):
    args = ["run", "phase", "--n", "600", "--max-epochs", "2", "--quiet", "--device", "cpu"]
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
    first, second = (pd.read_csv(tmp_path / n / "results.csv") for n in ("a", "b"))
    pd.testing.assert_frame_equal(first, second)


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    code = main(["run", "hetero", "--methods", "mse,nope", "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


SCRIPT = Path(sys.prefix) / "bin" / "polytask"


@pytest.mark.skipif(not SCRIPT.exists(), reason="package not installed as a console script")
def test_console_script_lists_experiments():
    exe = str(SCRIPT)
    listing = subprocess.run([exe, "list"], capture_output=True, text=True, check=True).stdout
    assert "hetero" in listing and "phase" in listing


@pytest.mark.slow
def test_default_hetero_experiment_learns_every_task(tmp_path):
    """The full-size default run (as `make demo`): every task's test MSE against the noiseless
    curve ends far below the variance of sin(2 pi x) (0.5), for both losses."""
    assert main(["run", "hetero", "--quiet", "--device", "cpu", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    assert (table["test mse (mse)"] < 0.05).all()
    assert (table["test mse (geometric)"] < 0.05).all()
