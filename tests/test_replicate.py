"""Replications: the resumable store, kill safety, parallel backends, the compare command."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import polytask as pt
from conftest import stored_replications
from polytask.cli import main
from polytask.experiments import Store, SyntheticExperiment, _replicate, config_hash, replicate

TINY = SyntheticExperiment(
    "hetero", n=400, n_tasks=2, depth=2, width=16, max_epochs=3, device="cpu"
)


def _spawned(base, n):
    return [int(c.generate_state(1)[0]) for c in np.random.SeedSequence(base).spawn(n)]


def test_replicate_returns_one_row_per_replication_method_and_task(tmp_path):
    frame = replicate(TINY, 3, seed=10, quiet=True, store=tmp_path / "s.sqlite")
    assert len(frame) == 3 * 2 * 2
    assert frame.groupby("replication")["seed"].first().tolist() == _spawned(10, 3)
    assert set(frame.columns) >= {"replication", "seed", "method", "task", "mse", "mae"}
    assert not frame.duplicated(["replication", "method", "task"]).any()
    # growing N runs only the new replications; the first three come back unchanged
    more = replicate(TINY, 5, seed=10, quiet=True, store=tmp_path / "s.sqlite")
    pd.testing.assert_frame_equal(more[more["replication"] < 3].reset_index(drop=True), frame)
    assert len(more) == 5 * 4


def test_same_seed_reproduces_a_replication_exactly():
    first = pt.experiments.run_replication(TINY, 0, 42, threads=1)
    second = pt.experiments.run_replication(TINY, 0, 42, threads=1)
    assert first["metrics"] == second["metrics"]
    assert (
        first["histories"]["mse"]["records"][-1]["train_loss"]
        == (second["histories"]["mse"]["records"][-1]["train_loss"])
    )


def test_store_keeps_configurations_apart(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    other = SyntheticExperiment(
        "phase", n=400, n_tasks=2, depth=2, width=16, max_epochs=2, device="cpu"
    )
    replicate(TINY, 2, quiet=True, store=store)
    replicate(other, 1, quiet=True, store=store)
    replicate(TINY, 1, seed=5, quiet=True, store=store)  # another base seed: another set
    configs = store.configs().set_index("config_hash")["replications"]
    assert configs.to_dict() == {
        config_hash(TINY, 0): 2,
        config_hash(other, 0): 1,
        config_hash(TINY, 5): 1,
    }
    stored = store.replications(config_hash(TINY, 0))[0]
    assert stored["versions"]["torch"] and stored["seconds"] > 0
    assert stored["histories"]["geometric"]["records"]


def test_only_the_test_set_is_evaluated_once_per_fit(monkeypatch):
    """Early stopping reads the stop set; the test set is read once per method, at the end."""
    seen = []
    real = pt.experiments._synthetic.evaluate

    def spy(model, tasks, data, **kwargs):
        seen.append(len(data))
        return real(model, tasks, data, **kwargs)

    monkeypatch.setattr(pt.experiments._synthetic, "evaluate", spy)
    TINY.run(0, quiet=True)
    assert seen == [200, 200]  # the test half of 400 rows, once for each of the two methods


COMMAND = [
    sys.executable,
    "-m",
    "polytask.cli",
    "compare",
    "hetero",
    "--n",
    "1500",
    "--tasks",
    "2",
    "--max-epochs",
    "6",
    "--replications",
    "8",
    "--jobs",
    "1",
    "--quiet",
    "--device",
    "cpu",
]


def test_a_killed_compare_resumes_to_exactly_n_replications(tmp_path):
    store = tmp_path / "killed" / "results.sqlite"
    args = [*COMMAND, "--out", str(tmp_path / "killed")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while stored_replications(store) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = stored_replications(store)
    assert 2 <= interrupted_at < 8, "the kill should land mid-run"
    subprocess.run(args, check=True, capture_output=True)
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT replication FROM replications ORDER BY replication").fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [r[0] for r in rows] == list(range(8))
    fresh = tmp_path / "fresh"
    subprocess.run([*COMMAND, "--out", str(fresh)], check=True, capture_output=True)
    key = config_hash(
        SyntheticExperiment("hetero", n=1500, n_tasks=2, max_epochs=6, device="cpu"), 0
    )
    resumed = Store(store).frame(key)
    uninterrupted = Store(fresh / "results.sqlite").frame(key)
    assert len(resumed) == 8 * 2 * 2
    pd.testing.assert_frame_equal(resumed, uninterrupted)
    assert (tmp_path / "killed" / "report.html").exists()


def test_compare_and_report_commands(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "phase",
            "--n",
            "400",
            "--tasks",
            "2",
            "--max-epochs",
            "2",
            "--replications",
            "3",
            "--jobs",
            "2",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--methods",
            "mse,geometric,uw",
        ]
    )
    assert code == 0
    text = (out / "report.md").read_text()
    assert "replications**: 3" in text and "lower is better" in text and "above 1" in text
    assert "| geometric | task0 | 3 |" in text and "| uw | task1 | 3 |" in text
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    per_task = pd.read_csv(out / "statistics_per_task.csv")
    assert set(per_task["method"]) == {"geometric", "uw"}
    assert (out / "ratios.png").stat().st_size > 10_000
    (out / "report.md").unlink()
    assert main(["report", str(out / "results.sqlite")]) == 0
    assert (out / "report.md").read_text() == text
    assert main(["report", str(tmp_path / "missing.sqlite")]) == 2
    assert "no store at" in capsys.readouterr().err


def test_ray_backend_matches_joblib(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'polytask[ray]')")
    joblib_frame = replicate(TINY, 3, jobs=2, backend="joblib", quiet=True)
    ray_frame = replicate(TINY, 3, jobs=2, backend="ray", quiet=True, store=tmp_path / "ray.sqlite")
    pd.testing.assert_frame_equal(ray_frame, joblib_frame)


def test_a_diverging_method_is_scored_not_fatal(monkeypatch):
    """A NaN in one fit keeps that fit's best weights and history; the run goes on."""
    real_fit = pt.Trainer.fit

    def fragile_fit(self, model, tasks, train, stop):
        if type(self.objective).__name__ == "GeometricMean":
            history = pt.training.History(tuple(t.name for t in tasks))
            raise pt.NonFiniteLossError("epoch 1: the training loss of task 'task0' ...", history)
        return real_fit(self, model, tasks, train, stop)

    monkeypatch.setattr(pt.Trainer, "fit", fragile_fit)
    with pytest.warns(RuntimeWarning, match="geometric, seed 0: epoch 1"):
        result = TINY.run(0, quiet=True)
    assert set(result.metrics) == {"mse", "geometric"}
    assert len(result.histories["geometric"]) == 0


def _stub_replication(experiment, replication, seed, threads):
    """What run_replication returns, without training."""
    return {
        "replication": replication,
        "seed": seed,
        "versions": {**_replicate.versions(), "torch_threads": threads},
        "seconds": 0.0,
        "metrics": {"mse": {"task0": {"mse": 1.0}}, "geometric": {"task0": {"mse": 1.0}}},
        "histories": {},
    }


def test_replication_seeds_are_spawned_from_the_base_seed(monkeypatch):
    """Child i of SeedSequence(base): base seeds 0 and 1 share no seed (base + i shared 99 of
    100), and replication i keeps its seed whatever the number of replications."""
    monkeypatch.setattr(_replicate, "run_replication", _stub_replication)

    def seeds(base, n):
        frame = replicate(TINY, n, seed=base, quiet=True)
        return frame.groupby("replication")["seed"].first().tolist()

    first, second = seeds(0, 100), seeds(1, 100)
    assert first == _spawned(0, 100) and second == _spawned(1, 100)
    assert len(set(first) & set(second)) == 0
    assert len(set(first)) == 100
    assert seeds(0, 7) == first[:7]
    assert _replicate.replication_seed(0, 42) == first[42]


def _fake_version(monkeypatch, package, version):
    real = _replicate.metadata.version
    monkeypatch.setattr(
        _replicate.metadata, "version", lambda name: version if name == package else real(name)
    )


def test_other_package_versions_are_stored_apart_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(_replicate, "run_replication", _stub_replication)
    store = Store(tmp_path / "s.sqlite")
    replicate(TINY, 3, quiet=True, store=store)
    before = config_hash(TINY, 0)
    config = store.config(before)
    assert config["code"]["torch"] == _replicate.metadata.version("torch")
    assert len(config["code"]["polytask_source"]) == 16
    for package in ("torch", "torchjd", "polytask"):
        with monkeypatch.context() as patch:
            _fake_version(patch, package, "0.0.1")
            assert config_hash(TINY, 0) != before, package
    _fake_version(monkeypatch, "torchjd", "0.0.1")
    with pytest.warns(UserWarning, match=r"holds 3 replications of this configuration made by"):
        frame = replicate(TINY, 2, quiet=True, store=store)
    after = config_hash(TINY, 0)
    assert after != before and len(frame) == 2 * 2
    assert len(store.replications(before)) == 3  # kept apart, untouched
    assert [r["versions"]["torchjd"] for r in store.replications(after)] == ["0.0.1"] * 2


def test_the_code_is_part_of_the_configuration(tmp_path, monkeypatch):
    """An edited polytask source is another configuration; each replication records its code."""
    monkeypatch.setattr(_replicate, "run_replication", _stub_replication)
    store = Store(tmp_path / "s.sqlite")
    replicate(TINY, 1, quiet=True, store=store)
    stored = store.replications(config_hash(TINY, 0))[0]["versions"]
    assert stored["polytask_source"] == _replicate.source_hash()
    assert stored["polytask_commit"]  # a commit, commit+dirty, or "unavailable"
    before = config_hash(TINY, 0)
    monkeypatch.setattr(_replicate, "source_hash", lambda: "0123456789abcdef")
    assert config_hash(TINY, 0) != before
    with pytest.warns(UserWarning, match=r"polytask_source [0-9a-f]{16} -> 0123456789abcdef"):
        replicate(TINY, 1, quiet=True, store=store)


def test_source_hash_follows_every_python_file(tmp_path, monkeypatch):
    package = tmp_path / "polytask"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (package / "sub" / "m.py").write_text("y = 2\n")
    monkeypatch.setattr(_replicate, "_PACKAGE", package)
    compute = _replicate.source_hash.__wrapped__
    first = compute()
    (package / "sub" / "m.py").write_text("y = 3\n")
    assert compute() != first
    (package / "notes.txt").write_text("not code")
    assert compute() == compute()


def test_a_worker_that_ran_other_code_is_refused(tmp_path, monkeypatch):
    def edited(*call):
        result = _stub_replication(*call)
        result["versions"]["polytask_source"] = "ffffffffffffffff"
        return result

    monkeypatch.setattr(_replicate, "run_replication", edited)
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(RuntimeError, match="ran with other code than this run started with"):
        replicate(TINY, 2, quiet=True, store=store)
    assert store.finished(config_hash(TINY, 0)) == set()


def test_compare_reports_the_replications_asked_for(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "phase", "--n", "300", "--tasks", "2", "--max-epochs", "1"]
    args += ["--quiet", "--device", "cpu", "--out", str(out)]
    assert main([*args, "--replications", "3"]) == 0
    capsys.readouterr()
    assert main([*args, "--replications", "2"]) == 0
    printed = capsys.readouterr().out
    assert "replications**: 2" in (out / "report.md").read_text()
    assert sorted(pd.read_csv(out / "replications.csv")["replication"].unique()) == [0, 1]
    assert "the store holds 3 replications of this configuration" in printed
    assert "uses the first 2 (--replications 3 reports them all)" in printed
    assert main(["report", str(out / "results.sqlite"), "--replications", "1"]) == 0
    assert "replications**: 1" in (out / "report.md").read_text()


def _children(pid):
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid):
    """Running (not gone, not a zombie waiting for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads Linux's /proc")
def test_killed_compare_takes_its_workers_down(tmp_path):
    """kill -9 of `compare --jobs 2` mid-replication: its joblib workers end within seconds."""
    command = [*COMMAND[:4], "hetero", "--n", "4000", "--tasks", "2", "--max-epochs", "400"]
    command += ["--patience", "400", "--replications", "4", "--jobs", "2", "--quiet"]
    command += ["--device", "cpu", "--out", str(tmp_path / "o")]
    log = tmp_path / "stderr.txt"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            workers = [p for p in _children(process.pid) if "popen_loky" in _cmdline(p)]
            # each worker busy with its replication, well past its imports
            if len(workers) == 2 and min(_cpu_seconds(p) for p in workers) > 3:
                break
            time.sleep(0.2)
        assert process.poll() is None and len(workers) == 2, log.read_text()
        descendants = _children(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in descendants if _alive(p)], "workers outlived their parent"
    finally:
        process.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_ray_task_no_node_can_schedule_is_refused():
    """Checked against the cluster's live nodes (a fake of ``ray.nodes()``): more threads than
    the largest node's CPUs is refused; a cluster without CPUs yet (an autoscaler's) waits."""
    from polytask.experiments._replicate import _refuse_infeasible_tasks

    class FakeRay:
        def __init__(self, cpus):
            self.cpus = cpus

        def nodes(self):
            dead = {"Alive": False, "Resources": {"CPU": 64.0}}
            return [dead, *({"Alive": True, "Resources": {"CPU": c}} for c in self.cpus)]

    with pytest.raises(ValueError, match="the largest node of the Ray cluster has 2: Ray would"):
        _refuse_infeasible_tasks(FakeRay([1.0, 2.0]), threads=4, jobs=1)
    _refuse_infeasible_tasks(FakeRay([1.0, 4.0]), threads=4, jobs=1)  # one node fits
    _refuse_infeasible_tasks(FakeRay([0.0]), threads=4, jobs=1)  # nothing yet: may scale up
