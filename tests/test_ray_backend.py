"""``polytask suite --backend ray`` on a real two-node Ray cluster of this machine: every
replication stored once, the same metrics as the joblib backend, and a second run that computes
nothing."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from conftest import stored_replications
from polytask.cli import main
from polytask.experiments import _replicate
from polytask.experiments._store import Store

ray = pytest.importorskip("ray", reason="the ray backend needs the 'ray' extra")
Cluster = pytest.importorskip("ray.cluster_utils").Cluster

REPLICATIONS = 3
# about a minute: starting two nodes and importing torch in each node's worker
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    """A head node and a worker node of one CPU each, not connected to this process."""
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if ray.is_initialized():  # a run that failed before its own ray.shutdown()
            ray.shutdown()
        cluster.shutdown()


# one torch thread per replication (cores // jobs), which a node of one CPU can schedule
JOBS = _replicate.available_cores()


def _suite(tmp_path, out, backend, jobs=JOBS):
    return [
        "suite",
        "--datasets",
        "hetero,phase",
        "--methods",
        "mean,uw",
        "--references",
        "",
        "--budget",
        "1",
        "--replications",
        str(REPLICATIONS),
        "--jobs",
        str(jobs),
        "--backend",
        backend,
        "--data-dir",
        str(tmp_path),
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
    ]


def _configs(store: Store) -> list[str]:
    configs = store.configs()
    assert len(configs) == 2, configs  # hetero and phase
    return sorted(configs["config_hash"])


def test_a_suite_on_a_ray_cluster_equals_joblib_and_resumes_without_work(
    tmp_path, monkeypatch, cluster, capsys
):
    """Replications run as Ray tasks on both nodes of a cluster reached through RAY_ADDRESS are
    each stored once, with metrics and leaderboard bit-identical to the joblib backend's; the
    same command run again computes nothing."""
    joblib_out, ray_out = tmp_path / "joblib", tmp_path / "ray"
    assert main(_suite(tmp_path, joblib_out, "joblib")) == 0

    # a spy around the replication, pickled by value (a local function) into the Ray workers:
    # it notes the node it ran on and the nodes alive then, and returns the result untouched
    traces = tmp_path / "traces"
    traces.mkdir()
    real = _replicate.run_replication

    def traced(experiment, replication, seed, threads):
        import ray

        alive = sum(node["Alive"] for node in ray.nodes())
        node = ray.get_runtime_context().get_node_id()
        (traces / f"{replication}-{time.monotonic_ns()}").write_text(f"{node} {alive}")
        return real(experiment, replication, seed, threads)

    monkeypatch.setattr(_replicate, "run_replication", traced)
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    if JOBS > 1:  # tasks of more CPUs than a node has would wait forever: refused, clearly
        assert main(_suite(tmp_path, tmp_path / "too-wide", "ray", jobs=1)) == 2
        error = capsys.readouterr().err
        assert "reserves as many CPUs, but the largest node of the Ray cluster has 1" in error
        assert not ray.is_initialized()
    connections = []
    real_init = ray.init

    def counted_init(*args, **kwargs):
        connections.append(kwargs.get("address"))
        return real_init(*args, **kwargs)

    monkeypatch.setattr(ray, "init", counted_init)
    assert not ray.is_initialized()
    assert main(_suite(tmp_path, ray_out, "ray")) == 0
    assert not ray.is_initialized(), "the run should disconnect from the cluster it joined"
    # one connection for the whole suite, not one per data set or batch of replications
    assert connections == [cluster.address]

    store_path = ray_out / "results.sqlite"
    store = Store(store_path)
    keys = _configs(store)
    assert stored_replications(store_path) == 2 * REPLICATIONS
    for key in keys:
        assert store.finished(key) == set(range(REPLICATIONS))
        assert store.claimed(key) == {}  # every claim ended with its replication
    for name in ("leaderboard.md", "leaderboard.html", "datasets.csv", "ranks.csv"):
        assert (ray_out / name).is_file(), name

    # each replication ran once, as a Ray task, on a cluster of two live nodes, using both
    runs = sorted(p.name.split("-")[0] for p in traces.iterdir())
    assert runs == sorted(2 * [str(i) for i in range(REPLICATIONS)])
    noted = [p.read_text().split() for p in traces.iterdir()]
    assert {alive for _, alive in noted} == {"2"}
    worker = next(iter(cluster.worker_nodes)).node_id
    assert {node for node, _ in noted} == {cluster.head_node.node_id, worker}

    # same configurations, seeds and metrics as the joblib backend, to the last bit
    joblib_store = Store(joblib_out / "results.sqlite")
    assert _configs(joblib_store) == keys
    for key in keys:
        pd.testing.assert_frame_equal(store.frame(key), joblib_store.frame(key), check_exact=True)
        ray_threads = {r["versions"]["torch_threads"] for r in store.replications(key)}
        joblib_threads = {r["versions"]["torch_threads"] for r in joblib_store.replications(key)}
        assert ray_threads == joblib_threads
    for name in ("datasets.csv", "ranks.csv", "relative_rmse.csv"):
        assert (ray_out / name).read_text() == (joblib_out / name).read_text(), name

    # the same command again: nothing to compute, nothing rewritten, no connection made
    finished = {k: {r["replication"]: r["seconds"] for r in store.replications(k)} for k in keys}
    started = time.perf_counter()
    assert main(_suite(tmp_path, ray_out, "ray")) == 0
    seconds = time.perf_counter() - started
    assert stored_replications(store_path) == 2 * REPLICATIONS
    assert {k: {r["replication"]: r["seconds"] for r in store.replications(k)} for k in keys} == (
        finished
    )
    assert len(list(traces.iterdir())) == 2 * REPLICATIONS  # no Ray task ran
    assert connections == [cluster.address]
    assert seconds < 10, f"a run with nothing to compute took {seconds:.1f} s"
