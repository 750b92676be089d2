"""A resumable results store in SQLite: one row per finished replication."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

_SCHEMA = """
CREATE TABLE IF NOT EXISTS configs (
    config_hash TEXT PRIMARY KEY,
    experiment  TEXT NOT NULL,
    config      TEXT NOT NULL,
    created     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS replications (
    config_hash TEXT NOT NULL REFERENCES configs(config_hash),
    replication INTEGER NOT NULL,
    seed        INTEGER NOT NULL,
    versions    TEXT NOT NULL,
    seconds     REAL NOT NULL,
    finished    REAL NOT NULL,
    metrics     TEXT NOT NULL,
    histories   TEXT NOT NULL,
    PRIMARY KEY (config_hash, replication)
);
"""


class Store:
    """Finished replications, each committed in its own transaction.

    A replication is written whole or not at all (SQLite's atomic commit, write-ahead log), so
    killing the process at any moment loses at most the replications still running and never
    leaves a half-written row. Configurations are kept apart by their hash: the same store can
    hold several experiments or settings.

    Examples
    --------
    >>> import tempfile, os
    >>> store = Store(os.path.join(tempfile.mkdtemp(), "results.sqlite"))
    >>> store.register("abc", "hetero", {"n": 10})
    >>> store.finished("abc")
    set()
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # commits on success, rolls back on error
                yield db
        finally:
            db.close()

    def register(self, config_hash: str, experiment: str, config: dict[str, Any]) -> None:
        """Record a configuration (idempotent)."""
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO configs VALUES (?, ?, ?, ?)",
                (config_hash, experiment, json.dumps(config, sort_keys=True), time.time()),
            )

    def finished(self, config_hash: str) -> set[int]:
        """Replication numbers already stored for a configuration."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT replication FROM replications WHERE config_hash = ?", (config_hash,)
            )
            return {row[0] for row in rows}

    def add(self, config_hash: str, result: dict[str, Any]) -> None:
        """Commit one finished replication (a second copy of the same one is ignored)."""
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO replications VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    config_hash,
                    result["replication"],
                    result["seed"],
                    json.dumps(result["versions"], sort_keys=True),
                    result["seconds"],
                    time.time(),
                    json.dumps(result["metrics"]),
                    json.dumps(result["histories"]),
                ),
            )

    def configs(self) -> pd.DataFrame:
        """One row per stored configuration with its number of replications."""
        with self._connect() as db:
            return pd.read_sql_query(
                "SELECT c.config_hash, c.experiment, c.config, COUNT(r.replication) AS replications"
                " FROM configs c LEFT JOIN replications r USING (config_hash)"
                " GROUP BY c.config_hash ORDER BY c.created",
                db,
            )

    def config(self, config_hash: str) -> dict[str, Any]:
        with self._connect() as db:
            row = db.execute(
                "SELECT config FROM configs WHERE config_hash = ?", (config_hash,)
            ).fetchone()
        if row is None:
            raise KeyError(f"no configuration {config_hash!r} in {self.path}")
        return json.loads(row[0])

    def replications(self, config_hash: str) -> list[dict[str, Any]]:
        """The stored replications of a configuration, in replication order."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT replication, seed, versions, seconds, metrics, histories"
                " FROM replications WHERE config_hash = ? ORDER BY replication",
                (config_hash,),
            ).fetchall()
        return [
            {
                "replication": r[0],
                "seed": r[1],
                "versions": json.loads(r[2]),
                "seconds": r[3],
                "metrics": json.loads(r[4]),
                "histories": json.loads(r[5]),
            }
            for r in rows
        ]

    def frame(self, config_hash: str) -> pd.DataFrame:
        """Tidy metrics: one row per replication, method and task, one column per metric."""
        return tidy(self.replications(config_hash))


def tidy(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (replication, method, task) with a column per metric."""
    rows = [
        {
            "replication": r["replication"],
            "seed": r["seed"],
            "method": method,
            "task": task,
            **values,
        }
        for r in results
        for method, tasks in r["metrics"].items()
        for task, values in tasks.items()
    ]
    return pd.DataFrame(rows)
