"""Many replications of an experiment, in parallel, resumable through the store."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import secrets
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .._processes import alive
from ._store import Store, tidy
from ._synthetic import SyntheticExperiment, hash_config

Backend = Literal["joblib", "ray"]

_PACKAGE = Path(__file__).resolve().parents[1]  # the polytask package folder
_CODE_PACKAGES = ("polytask", "torch", "torchjd", "numpy")
SEEDING = "numpy.random.SeedSequence(base_seed).spawn"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def source_hash() -> str:
    """SHA-256 (16 hex digits) of every ``.py`` file of the polytask package, names included.

    It identifies the code that ran, edits not yet committed included, in a checkout as in an
    installed package.
    """
    digest = hashlib.sha256()
    for file in sorted(_PACKAGE.rglob("*.py")):
        digest.update(file.relative_to(_PACKAGE).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def git_commit() -> str:
    """The git commit of the polytask source (``+dirty`` with local edits), or ``"unavailable"``.

    ``"unavailable"`` when git is missing or the package is not tracked in a git checkout (an
    installed package); :func:`source_hash` identifies the code in every case.
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(_PACKAGE), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "__init__.py") is None:
        return "unavailable"  # not a checkout that tracks polytask (e.g. site-packages)
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return "unavailable"
    dirty = git("status", "--porcelain", "--", ".")
    return commit + ("+dirty" if dirty else "")


def code_identity() -> dict[str, str]:
    """What makes results of the same configuration comparable: versions and the source hash.

    It is part of the configuration hash (:func:`config_hash`), so replications made by other
    code (another torch, torchjd, numpy or polytask version, or an edited polytask source) are
    stored apart from, and never mixed with, the ones of this code.
    """
    return {**{name: _version(name) for name in _CODE_PACKAGES}, "polytask_source": source_hash()}


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the results, and the code's identity."""
    return {"python": platform.python_version(), **code_identity(), "polytask_commit": git_commit()}


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. under ``taskset``), else
    ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def replication_seed(base: int, replication: int) -> int:
    """Seed of replication ``replication``: child ``replication`` of ``SeedSequence(base)``.

    The same as ``SeedSequence(base).spawn(n)[replication]`` for any ``n > replication``, so
    replication ``i`` keeps its seed however many replications are asked for, and two base
    seeds draw unrelated streams (``base + i`` made base seeds 0 and 1 share 99 of 100 seeds).

    Examples
    --------
    >>> import numpy as np
    >>> child = np.random.SeedSequence(7).spawn(3)[2]
    >>> replication_seed(7, 2) == int(child.generate_state(1)[0])
    True
    """
    if base < 0 or replication < 0:
        raise ValueError(
            f"the base seed and replication number must be non-negative, got {base}, {replication}"
        )
    child = np.random.SeedSequence(base, spawn_key=(replication,))
    return int(child.generate_state(1)[0])


def replication_config(experiment: SyntheticExperiment, seed: int) -> dict[str, Any]:
    """What identifies a set of replications: configuration, base seed, seeding and code."""
    return {
        "experiment": experiment.name,
        "base_seed": seed,
        **experiment.config(),
        "seeding": SEEDING,
        "code": code_identity(),
    }


def config_hash(experiment: SyntheticExperiment, seed: int) -> str:
    """The key of a set of replications in the store (the code that runs them included)."""
    return hash_config(replication_config(experiment, seed))


def run_replication(
    experiment: SyntheticExperiment, replication: int, seed: int, threads: int
) -> dict[str, Any]:
    """One replication in a worker: fresh data from ``seed``, every method, test metrics."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    result = experiment.run(seed, quiet=True)
    return {
        "replication": replication,
        "seed": seed,
        # results are bit-identical for the same seed and the same torch thread count
        "versions": {**versions(), "torch_threads": threads},
        "seconds": time.perf_counter() - started,
        "metrics": result.metrics,
        "histories": {method: h.to_dict() for method, h in result.histories.items()},
    }


def _joblib(jobs: int, calls: list[tuple]) -> Iterator[dict[str, Any]]:
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=jobs, return_as="generator_unordered")
    parent = os.getpid()
    yield from parallel(delayed(_in_worker)(parent, *call) for call in calls)


def _in_worker(parent: int, *call: Any) -> dict[str, Any]:
    """:func:`run_replication` in a joblib worker that ends when ``parent`` is gone."""
    watch_parent(parent)
    return run_replication(*call)


_watched: set[int] = set()


def watch_parent(parent: int, interval: float = 0.5) -> None:
    """End this process soon after ``parent``, the process that started it, is gone.

    A worker left behind by a killed ``polytask compare --jobs N`` would otherwise run its
    replication to the end (and then idle for minutes), holding its memory. A daemon thread polls
    ``os.getppid()`` every ``interval`` seconds and exits the process when it no longer names
    ``parent`` (an orphan is adopted by another process); a worker whose parent is already
    gone when it gets its first task (killed during the worker's start-up) exits at once.
    Nothing happens in ``parent`` itself (``jobs=1`` runs there); one thread per process at
    most.
    """
    if parent == os.getpid() or parent in _watched:
        return
    if parent != os.getppid():  # the parent died while this worker was still starting up
        os._exit(1)
    _watched.add(parent)
    threading.Thread(
        target=_watchdog, args=(parent, interval), name="polytask-watch-parent", daemon=True
    ).start()


def _watchdog(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)  # the parent is gone: nobody will read this worker's result


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            "--backend ray needs the 'ray' extra: pip install 'polytask[ray]'"
        ) from error
    return ray


_ray_sessions: list[dict[str, bool]] = []  # the open ray_session()s, outermost first


@contextmanager
def ray_session() -> Iterator[None]:
    """One Ray connection for everything run inside: the first batch of replications connects
    (to the cluster of ``RAY_ADDRESS`` when set, else to a local Ray), the end of the outermost
    session disconnects, and a connection made by the caller is left alone. A suite holds one
    session across its data sets, so no batch starts Ray (or a Ray job, whose workers import
    torch again) anew, and a run with nothing left to compute never connects."""
    _ray_sessions.append({"connected": False})
    try:
        yield
    finally:
        if _ray_sessions.pop()["connected"]:
            _import_ray().shutdown()


def _refuse_infeasible_tasks(ray: Any, threads: int, jobs: int) -> None:
    """A task that reserves more CPUs than any node has would wait forever: refuse it. A
    cluster with no CPU at all yet (an autoscaler's, whose head takes no work) is left to
    scale up."""
    largest = max(
        (node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0
    )
    if 0 < largest < threads:
        raise ValueError(
            f"each replication runs {threads} torch threads (--jobs {jobs} on this machine's "
            f"{available_cores()} cores) and reserves as many CPUs, but the largest node of the "
            f"Ray cluster has {largest:g}: Ray would never schedule it; raise --jobs so that "
            "cores // jobs fits a node"
        )


def _ray(jobs: int, calls: list[tuple]) -> Iterator[dict[str, Any]]:
    """Each call a Ray task that reserves as many CPUs as the torch threads it runs (so a node
    is never oversubscribed); inside a :func:`ray_session`."""
    ray = _import_ray()
    threads = calls[0][3] if calls else 1
    with ray_session():
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            options = {} if address else {"num_cpus": jobs * threads}
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **options)
            _ray_sessions[0]["connected"] = True  # the outermost session disconnects
        _refuse_infeasible_tasks(ray, threads, jobs)
        remote = ray.remote(num_cpus=threads)(run_replication)
        pending = [remote.remote(*call) for call in calls]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])


def replicate(
    experiment: SyntheticExperiment,
    replications: int = 10,
    *,
    seed: int = 0,
    jobs: int = 1,
    backend: Backend = "joblib",
    store: str | Path | Store | None = None,
    quiet: bool = False,
    lease: float = 60.0,
    wait: float | None = None,
) -> pd.DataFrame:
    """Run ``replications`` replications of ``experiment``; return tidy test metrics.

    Replication ``i`` draws its data, initial weights and shuffling from
    :func:`replication_seed` ``(seed, i)`` (child ``i`` of ``numpy.random.SeedSequence(seed)``)
    and fits every method of the experiment on the same data and split. With a ``store``, each
    finished replication is committed at once; calling again with the same experiment and seed
    runs only the missing replications. Several processes (on several machines with a
    PostgreSQL store) may fill one store at once: each claims a few missing replications at a
    time (:meth:`Store.claim`), so no two compute the same one, and waits at the end for the
    ones the others are still running.

    The store keys replications by :func:`config_hash`, which covers the code
    (:func:`code_identity`: the polytask, torch, torchjd and numpy versions and a hash of the
    polytask source). Replications of the same configuration made by other code are never
    resumed or mixed with this code's: they stay in the store under their own hash, this run
    starts its own set, and a ``UserWarning`` names what differs.

    Parameters
    ----------
    experiment
        What to replicate (its ``methods`` and ``baseline`` included).
    replications
        How many replications the result should hold.
    seed
        Base seed.
    jobs
        Parallel workers; each limits torch to ``cores // jobs`` threads (the cores this
        process may use: under ``taskset -c 0`` one thread). A joblib worker ends when this
        process does (:func:`watch_parent`), even after a ``kill -9``.
    backend
        ``"joblib"`` (local processes) or ``"ray"`` (Ray tasks; connects to ``RAY_ADDRESS``
        when set, else starts a local Ray, once for the whole call). On a cluster ``jobs``
        is how many replications are in flight at once, each reserving and using ``cores //
        jobs`` CPUs (this machine's cores).
    store
        A :class:`Store`, the path of its SQLite file or its database URL; ``None`` keeps
        results in memory only.
    quiet
        No progress bar.
    lease
        Seconds that this process's claims on replications last: a thread renews them every
        ``lease / 3`` seconds while they run, so the replications of a process killed
        meanwhile are taken over by another process after at most ``lease`` seconds.
    wait
        Seconds to wait, with nothing left to claim, for the replications other processes
        hold (``None``: as long as they keep their claims alive).

    Returns
    -------
    pandas.DataFrame
        One row per replication, method and task: ``replication, seed, method, task`` and one
        column per metric; replications ``0 .. replications - 1`` only, even when the store
        holds more.

    Raises
    ------
    CodeChangedError
        A worker ran other code than this process (the source was edited during the run).
    TimeoutError
        Replications still held by other processes after ``wait`` seconds (the finished ones
        are stored; calling again collects the others).

    Examples
    --------
    >>> experiment = SyntheticExperiment("hetero", n=200, n_tasks=2, max_epochs=2)
    >>> frame = replicate(experiment, 2, quiet=True)
    >>> len(frame)  # 2 replications x 2 methods x 2 tasks
    8
    """
    if replications < 1 or jobs < 1:
        raise ValueError(f"replications and jobs must be positive, got {replications}, {jobs}")
    if lease <= 0 or (wait is not None and wait < 0):
        raise ValueError(f"lease must be positive and wait non-negative, got {lease}, {wait}")
    if backend not in ("joblib", "ray"):
        raise ValueError(f"backend must be 'joblib' or 'ray', got {backend!r}")
    if store is not None and not isinstance(store, Store):
        store = Store(store)
    config = replication_config(experiment, seed)
    key = hash_config(config)
    done: set[int] = set()
    results: list[dict[str, Any]] = []
    if store is not None:
        _warn_other_code(store, key, config)
        store.register(key, experiment.name, config)
        done = store.finished(key)
    threads = max(1, available_cores() // jobs)
    execute = _joblib if backend == "joblib" else _ray

    def run(numbers: list[int]) -> Iterator[dict[str, Any]]:
        calls = [(experiment, i, replication_seed(seed, i), threads) for i in numbers]
        for result in execute(jobs, calls):
            _check_same_code(result, config["code"])
            yield result

    missing = [i for i in range(replications) if i not in done]
    if missing:
        outer_threads = torch.get_num_threads()
        session = ray_session() if backend == "ray" else nullcontext()
        try:
            with session, _progress(quiet) as progress:
                bar = progress.add_task(
                    f"{experiment.name} x{len(experiment.methods)} methods",
                    total=replications,
                    completed=replications - len(missing),
                )
                if store is None:
                    for result in run(missing):
                        results.append(result)
                        progress.advance(bar)
                else:
                    _fill(
                        store,
                        key,
                        replications,
                        run,
                        # a batch ends when its slowest replication does: several per worker
                        # keep the workers busy, a few leave work for other processes
                        batch=4 * jobs,
                        lease=lease,
                        wait=wait,
                        done=lambda count: progress.update(bar, completed=count),
                    )
        finally:
            torch.set_num_threads(outer_threads)  # jobs=1 runs in this process
    if store is not None:
        results = [r for r in store.replications(key) if r["replication"] < replications]
    results.sort(key=lambda r: r["replication"])
    return tidy(results)


def _owner() -> str:
    """A claim owner unique to this process (and to this call: two calls in one process
    never take each other's claims for their own)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _fill(
    store: Store,
    key: str,
    replications: int,
    run: Callable[[list[int]], Iterator[dict[str, Any]]],
    *,
    batch: int,
    lease: float,
    wait: float | None,
    done: Callable[[int], Any],
) -> None:
    """Run and store the missing replications ``0 .. replications - 1`` of ``key``, ``batch``
    claimed at a time, alongside any other process that fills the same store."""
    owner = _owner()
    poll = min(5.0, lease / 4)
    waiting_since: float | None = None
    while True:
        finished = store.finished(key)
        missing = [i for i in range(replications) if i not in finished]
        done(replications - len(missing))
        if not missing:
            return
        mine = store.claim(key, missing, owner, lease, limit=batch)
        if mine:
            waiting_since = None
            with _renewing(store, key, owner, lease):
                try:
                    for result in run(mine):
                        store.add(key, result)  # ends its claim in the same transaction
                        finished.add(result["replication"])
                        done(len(finished & set(range(replications))))
                finally:
                    store.release(key, owner)  # the claims of a batch that failed
            continue
        if _release_dead(store, key):
            continue
        # everything missing is held by other live processes: wait for them to finish or die
        waiting_since = waiting_since or time.monotonic()
        if wait is not None and time.monotonic() - waiting_since > wait:
            held = store.claimed(key)
            others = ", ".join(f"{i} ({held.get(i, 'expired')})" for i in missing)
            raise TimeoutError(
                f"replications still running in other processes after {wait:g} s: {others}; "
                "the finished ones are stored, call again to collect the others"
            )
        time.sleep(poll)


def _release_dead(store: Store, key: str) -> bool:
    """End the claims of processes of this machine that are gone (killed), rather than wait
    for their leases to expire; True when there were some. A pid that was reused since looks
    alive: its claims then expire with their lease."""
    host = socket.gethostname()
    dead = set()
    for owner in set(store.claimed(key).values()):
        name, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if name == host and pid.isdigit() and not alive(int(pid)):
            dead.add(owner)
    for owner in sorted(dead):
        store.release(key, owner)
    return bool(dead)


@contextmanager
def _renewing(store: Store, key: str, owner: str, lease: float) -> Iterator[None]:
    """Renew ``owner``'s claims every ``lease / 3`` seconds while the block runs; a renewal
    that fails twice in a row (the lease may then lapse, and another process may compute the
    same replications: stored once all the same) is said once, in a ``RuntimeWarning``."""
    stop = threading.Event()

    def beat() -> None:
        failures, said = 0, False
        while not stop.wait(lease / 3):
            try:
                store.renew(key, owner, lease)
                failures = 0
            except Exception as error:  # a passing database error: the next beat retries
                failures += 1
                if failures >= 2 and not said:
                    said = True
                    warnings.warn(
                        f"cannot renew the claims on replications of {key} ({error}); another "
                        "process may take them over and compute them too (each is stored once)",
                        RuntimeWarning,
                        stacklevel=1,
                    )

    thread = threading.Thread(target=beat, name="polytask-renew-claims", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    names = sorted(set(old) | set(new))
    return ", ".join(
        f"{n} {old.get(n, 'unrecorded')} -> {new.get(n, 'unrecorded')}"
        for n in names
        if old.get(n) != new.get(n)
    )


def _warn_other_code(store: Store, key: str, config: dict[str, Any]) -> None:
    """Say when the store holds this configuration's replications made by other code."""
    same = {k: v for k, v in config.items() if k != "code"}
    for row in store.configs().itertuples():
        stored = json.loads(row.config)
        if row.config_hash == key or row.replications == 0:
            continue
        if {k: v for k, v in stored.items() if k != "code"} == same:
            warnings.warn(
                f"{store.path} holds {row.replications} replications of this configuration "
                f"made by other code ({_differences(stored.get('code', {}), config['code'])}); "
                f"they stay apart under {row.config_hash}, this code's go under {key}",
                UserWarning,
                stacklevel=3,
            )


class CodeChangedError(RuntimeError):
    """A worker ran other code than the process that started the replications."""


def _check_same_code(result: dict[str, Any], code: dict[str, str]) -> None:
    """Refuse a replication that a worker ran with other code than this process started with."""
    ran = {name: result["versions"].get(name) for name in code}
    if ran != code:
        raise CodeChangedError(
            f"replication {result['replication']} ran with other code than this run started "
            f"with ({_differences(code, ran)}): was polytask edited or upgraded during the run? "
            "It is not stored; run again"
        )


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("replications"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=quiet,
    )
