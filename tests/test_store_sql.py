"""The store on a real PostgreSQL server: the same rows as SQLite, idempotent writes, claims,
and several processes filling one store (or one Optuna study) without computing twice."""

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from polytask.experiments import Store, SyntheticExperiment, config_hash, replicate

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _unavailable(reason: str) -> None:
    """Skip, except under CI, where a missing server is a failure, never a silent skip."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL 15 cluster on a unix socket in a temporary folder: yields the
    folder (the socket's host); stopped and removed afterwards, also on failure."""
    for module in ("sqlalchemy", "psycopg2"):
        try:
            __import__(module)
        except ImportError:
            _unavailable(f"{module} is not installed (pip install 'polytask[postgres]')")
    if not (PG_BIN / "initdb").exists():
        _unavailable(f"no PostgreSQL 15 server programs in {PG_BIN}")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("no postgres user to run the server as")
    if os.geteuid() == user.pw_uid:
        as_postgres: list[str] = []
    elif os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]  # initdb refuses to run as root
    else:
        _unavailable("the server must run as the postgres user: run the tests as root or it")
    folder = Path(tempfile.mkdtemp(prefix="polytask-pg-"))
    data = folder / "data"

    def pg(program: str, *args: str) -> None:
        subprocess.run(
            [*as_postgres, str(PG_BIN / program), *args], check=True, capture_output=True
        )

    try:
        os.chown(folder, user.pw_uid, user.pw_gid)
        pg("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        # no TCP port (nothing to collide with other test runs), no fsync (throwaway data)
        options = f"-k {folder} -c listen_addresses='' -F"
        pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
        try:
            yield folder
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    except subprocess.CalledProcessError as error:
        log = folder / "log"
        detail = log.read_text()[-2000:] if log.exists() else error.stderr.decode()[-2000:]
        pytest.fail(f"the PostgreSQL test server failed ({error.cmd[-1]}): {detail}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def url(postgres, request):
    """A fresh database on the test server (one per test)."""
    import sqlalchemy

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    admin = sqlalchemy.create_engine(
        f"postgresql+psycopg2://postgres@/postgres?host={postgres}", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return f"postgresql+psycopg2://postgres@/{name}?host={postgres}"


def _result(replication: int) -> dict:
    return {
        "replication": replication,
        "seed": 4_000_000_000 + replication,  # seeds are unsigned 32-bit: beyond INTEGER
        "versions": {"torch": "x"},
        "seconds": 0.123456789,
        "metrics": {"mse": {"task0": {"mse": replication / 3}}},
        "histories": {"mse": {"records": [1.5]}},
    }


def _fill(store: Store) -> None:
    store.register("abc", "hetero", {"baseline": "mse", "n": 200})
    store.register("abc", "hetero", {"ignored": True})  # idempotent: the first one stays
    store.register("def", "homo", {"baseline": "mse"})
    for i in (3, 0, 1, 4, 2):
        store.add("abc", _result(i))
    store.add("abc", {**_result(1), "seconds": 99.0})  # a second copy is ignored


def test_postgres_store_gives_the_rows_sqlite_gives(url, tmp_path):
    lite, pg = Store(tmp_path / "s.sqlite"), Store(url)
    _fill(lite)
    _fill(pg)
    assert pg.finished("abc") == lite.finished("abc") == {0, 1, 2, 3, 4}
    assert pg.replications("abc") == lite.replications("abc")
    assert pg.replications("abc")[1]["seconds"] == 0.123456789  # double precision
    assert pg.config("abc") == lite.config("abc") == {"baseline": "mse", "n": 200}
    assert pg.configs().equals(lite.configs())
    assert pg.configs()["replications"].tolist() == [5, 0]
    assert pg.frame("abc").equals(lite.frame("abc"))
    view, lite_view = Store(url, read_only=True, first=3), Store(lite.path, read_only=True, first=3)
    assert view.finished("abc") == lite_view.finished("abc") == {0, 1, 2}
    assert view.replications("abc") == lite_view.replications("abc")
    assert view.configs().equals(lite_view.configs())
    with pytest.raises(KeyError, match="no configuration 'zzz'"):
        pg.config("zzz")
    for store in (view, Store(url, read_only=True)):
        with pytest.raises(ValueError, match="opened read-only"):
            store.add("abc", _result(7))
        with pytest.raises(ValueError, match="opened read-only"):
            store.claim("abc", [7], "me", 60)
    assert Store(url).finished("abc") == {0, 1, 2, 3, 4}  # a second opening keeps the data


def test_postgres_claims_behave_as_sqlite_claims(url, tmp_path):
    for store in (Store(tmp_path / "s.sqlite"), Store(url)):
        store.register("abc", "hetero", {})
        store.add("abc", _result(0))
        assert store.claim("abc", [0, 1, 2, 3], "a", 60, limit=2) == [1, 2]  # 0 is finished
        assert store.claim("abc", [1, 2, 3, 4], "b", 60) == [3, 4]
        assert store.claimed("abc") == {1: "a", 2: "a", 3: "b", 4: "b"}
        assert store.renew("abc", "a", 60) == [1, 2]
        store.add("abc", _result(1))  # ends the claim on 1
        assert store.claimed("abc") == {2: "a", 3: "b", 4: "b"}
        store.release("abc", "b", [3])
        assert store.claim("abc", [1, 2, 3], "c", 60) == [3]
        # a killed owner stops renewing: its claims expire and are taken over
        assert store.claim("abc", [5], "gone", 0.2) == [5]
        assert store.claim("abc", [5], "c", 60) == []
        time.sleep(0.3)
        assert store.renew("abc", "c", 60) == [3]
        assert store.claim("abc", [5], "c", 60) == [5]
        assert store.renew("abc", "gone", 60) == []


def test_a_database_without_a_store_is_refused_read_only(url, postgres):
    with pytest.raises(ValueError, match=r"holds no polytask store \(tables: none"):
        Store(url, read_only=True)
    missing = f"postgresql+psycopg2://postgres:secret@/nosuchdb?host={postgres}"
    with pytest.raises(ValueError, match="cannot reach the store") as error:
        Store(missing)
    assert "secret" not in str(error.value)  # the password is never shown


def test_sqlite_urls_are_the_file(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(f"sqlite:///{path}").register("abc", "hetero", {"n": 1})
    assert Store(path, read_only=True).config("abc") == {"n": 1}
    assert Store(f"sqlite:///{path}", read_only=True).path == path


# --- replicate and the claims of others (SQLite: no server needed) -----------------------

TINY = SyntheticExperiment("hetero", n=200, n_tasks=2, max_epochs=2, device="cpu")


def test_replicate_waits_for_a_claim_of_another_machine_until_it_expires(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    key = config_hash(TINY, 0)
    started = time.monotonic()
    store.claim(key, [1], "elsewhere:1:x", lease_seconds=5)  # never renewed: a killed process
    frame = replicate(TINY, 2, store=store, quiet=True, lease=1)
    assert time.monotonic() - started >= 5  # replication 1 waited for the lease to end
    assert frame["replication"].tolist() == _every(2)
    assert store.claimed(key) == {}


def test_replicate_takes_over_at_once_the_claims_of_a_dead_process_of_this_machine(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    key = config_hash(TINY, 0)
    dead = subprocess.Popen(["true"])
    dead.wait()
    store.claim(key, [0], f"{socket.gethostname()}:{dead.pid}:x", lease_seconds=600)
    frame = replicate(TINY, 1, store=store, quiet=True, wait=0)
    assert frame["replication"].tolist() == _every(1)


def test_replicate_gives_up_waiting_for_live_claims_after_wait_seconds(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    key = config_hash(TINY, 0)
    store.claim(key, [0], "elsewhere:1:x", lease_seconds=600)
    with pytest.raises(TimeoutError, match=r"after 0.5 s: 0 \(elsewhere:1:x\); the finished"):
        replicate(TINY, 1, store=store, quiet=True, wait=0.5, lease=2)
    assert store.finished(key) == set()


# --- several processes on one store -----------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, os, sys
    from polytask.experiments import SyntheticExperiment, _replicate, replicate

    url, n, log, out, lease = sys.argv[1:]
    # other code edited meanwhile (the checkout is shared) must not split the processes apart
    _replicate.source_hash = lambda: "fixed"
    run = _replicate.run_replication

    def logged(experiment, replication, seed, threads):
        with open(log, "a") as file:
            file.write(f"start {os.getpid()} {replication}\\n")
        result = run(experiment, replication, seed, threads)
        with open(log, "a") as file:
            file.write(f"end {os.getpid()} {replication}\\n")
        return result

    _replicate.run_replication = logged  # jobs=1 runs in this process
    experiment = SyntheticExperiment("hetero", n=200, n_tasks=2, max_epochs=2, device="cpu")
    frame = replicate(experiment, int(n), store=url, quiet=True, lease=float(lease))
    with open(out, "w") as file:
        json.dump(frame["replication"].tolist(), file)
    """
)


def _start(tmp_path: Path, url: str, n: int, name: str, lease: float = 30) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [str(script), url, str(n), str(tmp_path / "log"), str(tmp_path / f"{name}.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args, str(lease)], env=env, stderr=subprocess.PIPE)


def _log(tmp_path: Path) -> list[tuple[str, int, int]]:
    path = tmp_path / "log"
    text = path.read_text() if path.exists() else ""
    lines = text.split("\n")[:-1]  # a line still being written has no newline yet
    return [(e, int(p), int(r)) for e, p, r in (line.split() for line in lines)]


def _stored(url: str) -> list[int]:
    store = Store(url, read_only=True)
    (key,) = store.configs()["config_hash"]
    return [r["replication"] for r in store.replications(key)]


def _finish(process: subprocess.Popen) -> None:
    _, error = process.communicate(timeout=300)
    assert process.returncode == 0, error.decode()[-3000:]


def _returned(tmp_path: Path, name: str) -> list[int]:
    """The replication column of the frame a process returned, sorted."""
    return sorted(json.loads((tmp_path / f"{name}.json").read_text()))


def _every(n: int) -> list[int]:
    """Each replication once: four rows each (2 methods x 2 tasks)."""
    return sorted(list(range(n)) * 4)


def test_two_processes_fill_one_store_computing_each_replication_once(url, tmp_path):
    n = 4
    first, second = _start(tmp_path, url, n, "a"), _start(tmp_path, url, n, "b")
    _finish(first)
    _finish(second)
    assert _stored(url) == list(range(n))
    ended = [r for event, _, r in _log(tmp_path) if event == "end"]
    started = [r for event, _, r in _log(tmp_path) if event == "start"]
    assert sorted(ended) == sorted(started) == list(range(n))  # nobody computed one twice
    assert _returned(tmp_path, "a") == _returned(tmp_path, "b") == _every(n)


@pytest.mark.slow
def test_a_killed_process_is_taken_over_and_every_replication_stored_once(url, tmp_path):
    n = 5
    killed = _start(tmp_path, url, n, "killed", lease=4)
    deadline = time.monotonic() + 120
    # kill it mid-replication: one finished and the next started
    while time.monotonic() < deadline and killed.poll() is None:
        events = [event for event, _, _ in _log(tmp_path)]
        if "end" in events and events[-1] == "start":
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed.stderr.close()
    stored = _stored(url)
    assert 1 <= len(stored) < n, "the kill should land mid-run"
    # the claim of the killed process is still live: a process on another machine waits for
    # its lease to expire, one on this machine sees the pid is gone; both take it over
    assert Store(url).claimed(Store(url).configs()["config_hash"][0])
    started = time.monotonic()
    rerun = _start(tmp_path, url, n, "rerun", lease=4)
    _finish(rerun)
    assert _stored(url) == list(range(n))
    assert _returned(tmp_path, "rerun") == _every(n)
    rerun_pid = rerun.pid
    redone = [r for event, pid, r in _log(tmp_path) if event == "end" and pid == rerun_pid]
    assert sorted(redone) == sorted(set(range(n)) - set(stored))
    assert time.monotonic() - started < 120


TUNER = textwrap.dedent(
    """
    import sys
    from polytask.experiments import SyntheticExperiment, tune

    url, trials, heartbeat, epochs = sys.argv[1:]
    experiment = SyntheticExperiment("hetero", n=200, n_tasks=2, max_epochs=int(epochs),
                                     device="cpu")
    tune(experiment, "grid", trials=int(trials), resolution=6, storage=url, study_name="s",
         prune=False, heartbeat=int(heartbeat))
    """
)


def _tuner(script, url, trials, heartbeat=60, epochs=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(script), url, str(trials), str(heartbeat), str(epochs)]
    return subprocess.Popen(args, env=env, stderr=subprocess.PIPE)


def _grid_points(optuna, url):
    study = optuna.load_study(study_name="s", storage=url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return [t.params["point"] for t in complete]


@pytest.mark.slow
def test_two_processes_share_one_optuna_study_on_postgres(url, tmp_path):
    optuna = pytest.importorskip("optuna")
    script = tmp_path / "tuner.py"
    script.write_text(TUNER)
    trials = 5
    processes = [_tuner(script, url, trials) for _ in range(2)]
    for process in processes:
        _finish(process)
    points = _grid_points(optuna, url)
    assert len(points) == len(set(points)), f"a grid point ran twice: {sorted(points)}"
    assert len(points) == trials  # no overshoot by the trials running in the other process


@pytest.mark.slow
def test_a_killed_tuner_leaves_every_trial_exactly_once(url, tmp_path):
    optuna = pytest.importorskip("optuna")
    script = tmp_path / "tuner.py"
    script.write_text(TUNER)
    trials = 6
    killed = _tuner(script, url, trials, heartbeat=1, epochs=8)
    other = _tuner(script, url, trials, heartbeat=1, epochs=8)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and killed.poll() is None:
        try:
            study = optuna.load_study(study_name="s", storage=url)
        except KeyError:  # not created yet
            time.sleep(0.1)
            continue
        states = [t.state for t in study.get_trials(deepcopy=False)]
        if optuna.trial.TrialState.COMPLETE in states and states[-1].name == "RUNNING":
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed.stderr.close()
    _finish(other)  # waits out the dead trial's heartbeat and runs what is left
    points = _grid_points(optuna, url)
    assert len(points) == len(set(points)), f"a grid point ran twice: {sorted(points)}"
    assert len(points) == trials


def test_compare_and_report_take_a_database_url(url, tmp_path, capsys):
    from polytask.cli import main

    args = [
        "compare",
        "hetero",
        "--n",
        "300",
        "--tasks",
        "2",
        "--max-epochs",
        "2",
        "--replications",
        "2",
        "--quiet",
        "--device",
        "cpu",
        "--store",
        url,
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # resumes: nothing to run
    stored = Store(url)
    key = stored.configs()["config_hash"].iloc[0]
    assert sorted(stored.finished(key)) == [0, 1]
    assert main(["report", url]) == 2  # a database has no folder to write beside
    assert "needs --out" in capsys.readouterr().err
    assert main(["report", url, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").exists()


def test_a_failing_lease_renewal_is_said_once(tmp_path):
    """Renewals that keep failing warn once (the claims may lapse), instead of passing unseen."""
    import warnings

    from polytask.experiments._replicate import _renewing

    class Failing:
        calls = 0

        def renew(self, *args):
            Failing.calls += 1
            raise OSError("database gone")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _renewing(Failing(), "abc", "me", lease=0.03):
            time.sleep(0.3)
    said = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert Failing.calls >= 3
    assert len(said) == 1 and "cannot renew the claims" in str(said[0].message)
