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


_SQLITE_HEADER = b"SQLite format 3\x00"
_TABLES = {"configs", "replications"}


class Store:
    """Finished replications, each committed in its own transaction.

    A replication is written whole or not at all (SQLite's atomic commit, write-ahead log), so
    killing the process at any moment loses at most the replications still running and never
    leaves a half-written row. Configurations are kept apart by their hash: the same store can
    hold several experiments or settings.

    Parameters
    ----------
    path
        The SQLite file. Opened for writing, it is created when missing (an empty file is taken
        as a new store); a file that is not a polytask store is refused, never overwritten.
    read_only
        Open an existing store without ever writing to it (SQLite's ``mode=ro``): reports use
        this. A missing, empty or foreign file is refused.
    first
        Read only replications ``0 .. first - 1`` of each configuration (``None``: all of them),
        so that a report covers the replications that were asked for, not every one stored.

    Raises
    ------
    FileNotFoundError
        ``read_only`` and no file at ``path``.
    ValueError
        ``path`` is a folder, an empty file (read-only), not an SQLite database, an SQLite
        database of something else, or its folder cannot be created.

    Examples
    --------
    >>> import tempfile, os
    >>> store = Store(os.path.join(tempfile.mkdtemp(), "results.sqlite"))
    >>> store.register("abc", "hetero", {"n": 10})
    >>> store.finished("abc")
    set()
    """

    def __init__(
        self, path: str | Path, *, read_only: bool = False, first: int | None = None
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if first is not None and first < 1:
            raise ValueError(f"first must be a positive number of replications, got {first}")
        self.first = first
        if read_only:
            self._check_existing()
        else:
            self._create()

    def _create(self) -> None:
        if self.path.is_dir():
            raise ValueError(f"the store {self.path} is a folder; give the path of a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"cannot create the folder of the store {self.path}: {error.strerror or error}"
            ) from None
        if self.path.exists() and self.path.stat().st_size > 0:
            self._check_existing()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _check_existing(self) -> None:
        """Refuse anything but an existing polytask store, without writing to it."""
        if not self.path.exists():
            raise FileNotFoundError(f"no store at {self.path}")
        if self.path.is_dir():
            raise ValueError(f"the store {self.path} is a folder, not a polytask store")
        with self.path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
        if not header:
            raise ValueError(f"{self.path} is empty, not a polytask store")
        if header != _SQLITE_HEADER:
            raise ValueError(f"{self.path} is not a polytask store (not an SQLite database)")
        try:
            with self._connect(read_only=True) as db:
                rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                tables = {row[0] for row in rows}
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path} is not a readable SQLite database: {error}") from None
        if not _TABLES.issubset(tables):
            found = ", ".join(sorted(tables)) or "none"
            raise ValueError(
                f"{self.path} is an SQLite database but not a polytask store "
                f"(tables: {found}; expected configs and replications)"
            )

    @contextmanager
    def _connect(self, read_only: bool | None = None) -> Iterator[sqlite3.Connection]:
        if read_only is None:
            read_only = self.read_only
        if read_only:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            db = sqlite3.connect(uri, uri=True, timeout=30)
        else:
            db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # commits on success, rolls back on error
                yield db
        finally:
            db.close()

    def _writable(self, action: str) -> None:
        if self.read_only:
            raise ValueError(f"cannot {action}: the store {self.path} was opened read-only")

    def _limit(self, column: str = "replication") -> tuple[str, tuple[int, ...]]:
        """The SQL condition (and its parameter) that keeps the first replications only."""
        return ("", ()) if self.first is None else (f" AND {column} < ?", (self.first,))

    def register(self, config_hash: str, experiment: str, config: dict[str, Any]) -> None:
        """Record a configuration (idempotent)."""
        self._writable("register a configuration")
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO configs VALUES (?, ?, ?, ?)",
                (config_hash, experiment, json.dumps(config, sort_keys=True), time.time()),
            )

    def finished(self, config_hash: str) -> set[int]:
        """Replication numbers already stored for a configuration."""
        condition, limit = self._limit()
        with self._connect() as db:
            rows = db.execute(
                f"SELECT replication FROM replications WHERE config_hash = ?{condition}",
                (config_hash, *limit),
            )
            return {row[0] for row in rows}

    def add(self, config_hash: str, result: dict[str, Any]) -> None:
        """Commit one finished replication (a second copy of the same one is ignored)."""
        self._writable("add a replication")
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
        condition, limit = self._limit("r.replication")
        with self._connect() as db:
            return pd.read_sql_query(
                "SELECT c.config_hash, c.experiment, c.config, COUNT(r.replication) AS replications"
                " FROM configs c LEFT JOIN replications r"
                f" ON r.config_hash = c.config_hash{condition}"
                " GROUP BY c.config_hash ORDER BY c.created",
                db,
                params=limit,
            )

    def config(self, config_hash: str) -> dict[str, Any]:
        """The configuration recorded under ``config_hash``."""
        with self._connect() as db:
            row = db.execute(
                "SELECT config FROM configs WHERE config_hash = ?", (config_hash,)
            ).fetchone()
        if row is None:
            raise KeyError(f"no configuration {config_hash!r} in {self.path}")
        return json.loads(row[0])

    def replications(self, config_hash: str) -> list[dict[str, Any]]:
        """The stored replications of a configuration, in replication order."""
        condition, limit = self._limit()
        with self._connect() as db:
            rows = db.execute(
                "SELECT replication, seed, versions, seconds, metrics, histories"
                f" FROM replications WHERE config_hash = ?{condition} ORDER BY replication",
                (config_hash, *limit),
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
