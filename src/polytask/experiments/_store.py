"""A resumable results store: one row per finished replication, in an SQLite file (sqlite3,
no extra needed) or any database SQLAlchemy reaches (PostgreSQL, to share one store between
machines), with claims so that processes filling one store never compute a replication twice."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
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
CREATE TABLE IF NOT EXISTS claims (
    config_hash TEXT NOT NULL,
    replication INTEGER NOT NULL,
    owner       TEXT NOT NULL,
    heartbeat   REAL NOT NULL,
    expires     REAL NOT NULL,
    PRIMARY KEY (config_hash, replication)
);
"""


def _schema(dialect: str) -> list[str]:
    """The schema's statements; PostgreSQL's REAL and INTEGER are 4 bytes, too small for
    timestamps and the 32-bit unsigned seeds."""
    schema = _SCHEMA
    if dialect == "postgresql":
        schema = schema.replace(" REAL ", " DOUBLE PRECISION ").replace(" INTEGER ", " BIGINT ")
    return [s.strip() for s in schema.split(";") if s.strip()]


_SQLITE_HEADER = b"SQLite format 3\x00"
_TABLES = {"configs", "replications"}
# an SQLite URL without options is the file the sqlite3 module opens (no SQLAlchemy needed)
_SQLITE_URL = re.compile(r"^sqlite(\+pysqlite)?:///(?P<path>[^?]+)$")
_URL = re.compile(r"^[a-z][a-z0-9+]*://")
_SCHEMA_LOCK = 7041736  # the advisory lock key that serialises schema creation

_INSERT_CONFIG = (
    "INSERT INTO configs VALUES (:config_hash, :experiment, :config, :created)"
    " ON CONFLICT DO NOTHING"
)
_INSERT_REPLICATION = (
    "INSERT INTO replications VALUES (:config_hash, :replication, :seed, :versions, :seconds,"
    " :finished, :metrics, :histories) ON CONFLICT DO NOTHING"
)
# A claim takes a free row, or the row of an expired claim or of the owner's own claim; a live
# claim of another owner is left alone (PostgreSQL re-checks the WHERE on the row it locked).
_CLAIM = (
    "INSERT INTO claims VALUES (:config_hash, :replication, :owner, :now, :expires)"
    " ON CONFLICT (config_hash, replication) DO UPDATE"
    " SET owner = excluded.owner, heartbeat = excluded.heartbeat, expires = excluded.expires"
    " WHERE claims.expires <= :now OR claims.owner = excluded.owner"
)
_RELEASE = "DELETE FROM claims WHERE config_hash = :config_hash AND replication = :replication"


class _Transaction:
    """One transaction, through sqlite3 or SQLAlchemy: both take ``:name`` parameters."""

    def __init__(self, connection: Any, sqlalchemy: bool) -> None:
        self._connection = connection
        self._sqlalchemy = sqlalchemy

    def run(self, sql: str, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> None:
        """Execute a statement; once per parameter dict when given a list (none: empty list)."""
        if isinstance(params, list) and not params:
            return
        if self._sqlalchemy:
            from sqlalchemy import text

            self._connection.execute(text(sql), params or {})
        elif isinstance(params, list):
            self._connection.executemany(sql, params)
        else:
            self._connection.execute(sql, params or {})

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """The rows a query returns."""
        if self._sqlalchemy:
            from sqlalchemy import text

            return [tuple(r) for r in self._connection.execute(text(sql), params or {})]
        return self._connection.execute(sql, params or {}).fetchall()


class Store:
    """Finished replications, each committed in its own transaction.

    A replication is written whole or not at all (an atomic commit), so killing the process at
    any moment loses at most the replications still running and never leaves a half-written
    row. Configurations are kept apart by their hash: the same store can hold several
    experiments or settings. Several processes, on several machines with a PostgreSQL store,
    may fill one store at once: writes are idempotent (a second copy of a row is ignored) and
    :meth:`claim` reserves replications so that no two processes compute the same one.

    Parameters
    ----------
    path
        The SQLite file, or an SQLAlchemy URL: ``postgresql+psycopg2://user@host/db`` (the
        ``postgres`` extra) or ``sqlite:///path`` (the file itself, opened as a path is).
        A file opened for writing is created when missing (an empty file is taken as a new
        store); a file that is not a polytask store is refused, never overwritten. A database
        gets the store's tables when it lacks them.
    read_only
        Open an existing store without ever writing to it (SQLite's ``mode=ro``, PostgreSQL's
        read-only transactions): reports use this. A missing, empty or foreign file, or a
        database without the store's tables, is refused.
    first
        Read only replications ``0 .. first - 1`` of each configuration (``None``: all of them),
        so that a report covers the replications that were asked for, not every one stored.

    Attributes
    ----------
    path
        The file (a :class:`~pathlib.Path`), or for a database its URL with the password
        hidden (for messages).
    url
        The database's full URL; ``None`` for a file.

    Raises
    ------
    FileNotFoundError
        ``read_only`` and no file at ``path``.
    ValueError
        ``path`` is a folder, an empty file (read-only), not an SQLite database, an SQLite
        database of something else, or its folder cannot be created; a database URL that
        cannot be reached, or (read-only) a database without the store's tables.
    ImportError
        A database URL without SQLAlchemy or the database's driver installed.

    Examples
    --------
    >>> import tempfile, os
    >>> store = Store(os.path.join(tempfile.mkdtemp(), "results.sqlite"))
    >>> store.register("abc", "hetero", {"n": 10})
    >>> store.finished("abc")
    set()
    >>> store.claim("abc", [0, 1, 2], owner="me", lease_seconds=60)
    [0, 1, 2]
    >>> store.claim("abc", [1, 2, 3], owner="you", lease_seconds=60)  # 1 and 2 are mine
    [3]
    """

    def __init__(
        self, path: str | Path, *, read_only: bool = False, first: int | None = None
    ) -> None:
        self.read_only = read_only
        if first is not None and first < 1:
            raise ValueError(f"first must be a positive number of replications, got {first}")
        self.first = first
        self.url: str | None = None
        self._engine: Any = None
        if isinstance(path, str) and (match := _SQLITE_URL.match(path)):
            path = match["path"]
        elif isinstance(path, str) and _URL.match(path):
            self.url = path
            self._open_database()
            return
        self.path: Path | str = Path(path)
        if read_only:
            self._check_existing()
        else:
            self._create()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, read_only={self.read_only}, first={self.first})"

    # --- an SQLite file, through the sqlite3 module --------------------------------------

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

    # --- a database, through SQLAlchemy ---------------------------------------------------

    def _open_database(self) -> None:
        try:
            import sqlalchemy
            from sqlalchemy.exc import ArgumentError, NoSuchModuleError
        except ImportError as error:
            raise ImportError(
                "a store given by a database URL needs SQLAlchemy and the database's driver: "
                "pip install 'polytask[postgres]'"
            ) from error
        try:
            url = sqlalchemy.make_url(self.url)
            self.path = url.render_as_string(hide_password=True)
            self._engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        except (ArgumentError, NoSuchModuleError, ValueError) as error:
            raise ValueError(f"cannot use the store URL {self.url!r}: {error}") from None
        try:
            with self._engine.connect() as connection:
                tables = set(sqlalchemy.inspect(connection).get_table_names())
            if self.read_only and not _TABLES.issubset(tables):
                found = ", ".join(sorted(tables)) or "none"
                raise ValueError(
                    f"the database {self.path} holds no polytask store "
                    f"(tables: {found}; expected configs and replications)"
                )
            if not self.read_only:
                with self._transaction() as db:
                    if self._engine.dialect.name == "postgresql":
                        # concurrent CREATE TABLE IF NOT EXISTS can collide in PostgreSQL
                        db.rows(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
                    for statement in _schema(self._engine.dialect.name):
                        db.run(statement)
        except sqlalchemy.exc.OperationalError as error:
            raise ValueError(f"cannot reach the store {self.path}: {error.orig}") from None

    # --- one interface for both -----------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[_Transaction]:
        """A transaction: committed on success, rolled back on error."""
        if self._engine is None:
            with self._connect() as db:
                yield _Transaction(db, sqlalchemy=False)
            return
        with self._engine.begin() as connection:
            db = _Transaction(connection, sqlalchemy=True)
            if self.read_only:
                dialect = self._engine.dialect.name
                if dialect == "postgresql":
                    db.run("SET TRANSACTION READ ONLY")
                elif dialect == "sqlite":
                    db.run("PRAGMA query_only = ON")
            yield db

    def _now(self, db: _Transaction) -> float:
        """Seconds since the epoch by the database server's clock where there is one, so that
        the leases of processes on machines with skewed clocks compare right."""
        if self._engine is not None and self._engine.dialect.name == "postgresql":
            sql = "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
            return float(db.rows(sql)[0][0])
        return time.time()

    def _writable(self, action: str) -> None:
        if self.read_only:
            raise ValueError(f"cannot {action}: the store {self.path} was opened read-only")

    def _limit(self, column: str = "replication") -> tuple[str, dict[str, int]]:
        """The SQL condition (and its parameter) that keeps the first replications only."""
        return (
            ("", {}) if self.first is None else (f" AND {column} < :first", {"first": self.first})
        )

    def register(self, config_hash: str, experiment: str, config: dict[str, Any]) -> None:
        """Record a configuration (idempotent)."""
        self._writable("register a configuration")
        row = {
            "config_hash": config_hash,
            "experiment": experiment,
            "config": json.dumps(config, sort_keys=True),
            "created": time.time(),
        }
        with self._transaction() as db:
            db.run(_INSERT_CONFIG, row)

    def finished(self, config_hash: str) -> set[int]:
        """Replication numbers already stored for a configuration."""
        condition, limit = self._limit()
        with self._transaction() as db:
            rows = db.rows(
                f"SELECT replication FROM replications WHERE config_hash = :h{condition}",
                {"h": config_hash, **limit},
            )
        return {row[0] for row in rows}

    def add(self, config_hash: str, result: dict[str, Any]) -> None:
        """Commit one finished replication (a second copy of the same one is ignored) and end
        its claim, in one transaction."""
        self._writable("add a replication")
        row = {
            "config_hash": config_hash,
            "replication": result["replication"],
            "seed": result["seed"],
            "versions": json.dumps(result["versions"], sort_keys=True),
            "seconds": result["seconds"],
            "finished": time.time(),
            "metrics": json.dumps(result["metrics"]),
            "histories": json.dumps(result["histories"]),
        }
        with self._transaction() as db:
            db.run(_INSERT_REPLICATION, row)
            db.run(_RELEASE, {"config_hash": config_hash, "replication": result["replication"]})

    def claim(
        self,
        config_hash: str,
        replications: Sequence[int],
        owner: str,
        lease_seconds: float,
        *,
        limit: int | None = None,
    ) -> list[int]:
        """Reserve unfinished ``replications`` that no other live owner holds.

        A claim lasts ``lease_seconds`` unless :meth:`renew` extends it: a process killed
        while it held claims loses them after its lease, and another process takes them over.
        Claims that ``owner`` already holds are renewed. One transaction; a replication that
        another process finished meanwhile is never returned.

        Parameters
        ----------
        config_hash
            The configuration.
        replications
            The replications wanted; claimed in increasing order.
        owner
            Who claims: unique to one process (e.g. host, pid and a random part).
        lease_seconds
            How long the claims last without :meth:`renew`.
        limit
            Claim at most this many (``None``: every one it can).

        Returns
        -------
        list of int
            The replications now claimed by ``owner``, in increasing order.

        Examples
        --------
        >>> import tempfile, os
        >>> store = Store(os.path.join(tempfile.mkdtemp(), "results.sqlite"))
        >>> store.claim("abc", [2, 1, 0], owner="me", lease_seconds=60, limit=2)
        [0, 1]
        >>> store.claim("abc", [0, 1, 2, 3], owner="you", lease_seconds=60)
        [2, 3]
        >>> store.release("abc", "me")
        >>> store.claim("abc", [0, 1], owner="you", lease_seconds=60)
        [0, 1]
        """
        self._writable("claim replications")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        key = {"h": config_hash}
        with self._transaction() as db:
            now = self._now(db)
            # A first look skips what is finished or held by others (no row written for them);
            # the claim statement decides, row by row in increasing order (one lock order for
            # all claimers: no deadlock).
            busy = self._done(db, config_hash) | {
                row[0]
                for row in db.rows(
                    "SELECT replication FROM claims WHERE config_hash = :h"
                    " AND owner <> :o AND expires > :now",
                    key | {"o": owner, "now": now},
                )
            }
            got: list[int] = []
            for i in sorted(set(replications) - busy):
                if limit is not None and len(got) >= limit:
                    break
                row = {"config_hash": config_hash, "replication": i, "owner": owner}
                db.run(_CLAIM, row | {"now": now, "expires": now + lease_seconds})
                holder = db.rows(
                    "SELECT owner FROM claims WHERE config_hash = :h AND replication = :r",
                    key | {"r": i},
                )
                if holder == [(owner,)]:
                    got.append(i)
            # Read again after the claims are written: a replication added (its claim ended in
            # the same transaction) before a claim took its row is seen here and given back.
            done = self._done(db, config_hash) & set(got)
            db.run(_RELEASE, [{"config_hash": config_hash, "replication": i} for i in sorted(done)])
        return [i for i in got if i not in done]

    def _done(self, db: _Transaction, config_hash: str) -> set[int]:
        rows = db.rows(
            "SELECT replication FROM replications WHERE config_hash = :h", {"h": config_hash}
        )
        return {row[0] for row in rows}

    def _held(self, db: _Transaction, config_hash: str, owner: str) -> set[int]:
        rows = db.rows(
            "SELECT replication FROM claims WHERE config_hash = :h AND owner = :o",
            {"h": config_hash, "o": owner},
        )
        return {row[0] for row in rows}

    def renew(self, config_hash: str, owner: str, lease_seconds: float) -> list[int]:
        """Extend ``owner``'s claims by ``lease_seconds`` from now; return those it still holds
        (a claim that expired and was taken over is lost)."""
        self._writable("renew claims")
        with self._transaction() as db:
            now = self._now(db)
            held = sorted(self._held(db, config_hash, owner))
            db.run(  # row by row in increasing order, as claims lock them
                "UPDATE claims SET heartbeat = :now, expires = :expires"
                " WHERE config_hash = :h AND replication = :r AND owner = :o",
                [
                    {"h": config_hash, "r": r, "o": owner, "now": now}
                    | {"expires": now + lease_seconds}
                    for r in held
                ],
            )
        return held

    def release(
        self, config_hash: str, owner: str, replications: Sequence[int] | None = None
    ) -> None:
        """End ``owner``'s claims on ``replications`` (``None``: all of its claims)."""
        self._writable("release claims")
        with self._transaction() as db:
            mine = self._held(db, config_hash, owner)
            ended = mine if replications is None else mine & set(replications)
            db.run(
                _RELEASE + " AND owner = :owner",
                [
                    {"config_hash": config_hash, "replication": i, "owner": owner}
                    for i in sorted(ended)
                ],
            )

    def claimed(self, config_hash: str) -> dict[int, str]:
        """The live (unexpired) claims of a configuration: replication -> owner."""
        with self._transaction() as db:
            rows = db.rows(
                "SELECT replication, owner FROM claims WHERE config_hash = :h AND expires > :now",
                {"h": config_hash, "now": self._now(db)},
            )
        return {row[0]: row[1] for row in sorted(rows)}

    def configs(self) -> pd.DataFrame:
        """One row per stored configuration with its number of replications."""
        condition, limit = self._limit("r.replication")
        with self._transaction() as db:
            rows = db.rows(
                "SELECT c.config_hash, c.experiment, c.config, COUNT(r.replication) AS replications"
                " FROM configs c LEFT JOIN replications r"
                f" ON r.config_hash = c.config_hash{condition}"
                " GROUP BY c.config_hash ORDER BY c.created",
                limit,
            )
        columns = ["config_hash", "experiment", "config", "replications"]
        return pd.DataFrame(rows, columns=columns)

    def config(self, config_hash: str) -> dict[str, Any]:
        """The configuration recorded under ``config_hash``."""
        with self._transaction() as db:
            rows = db.rows("SELECT config FROM configs WHERE config_hash = :h", {"h": config_hash})
        if not rows:
            raise KeyError(f"no configuration {config_hash!r} in {self.path}")
        return json.loads(rows[0][0])

    def replications(self, config_hash: str) -> list[dict[str, Any]]:
        """The stored replications of a configuration, in replication order."""
        condition, limit = self._limit()
        with self._transaction() as db:
            rows = db.rows(
                "SELECT replication, seed, versions, seconds, metrics, histories"
                f" FROM replications WHERE config_hash = :h{condition} ORDER BY replication",
                {"h": config_hash, **limit},
            )
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

    def close(self) -> None:
        """Close the database connections (nothing to do for a file: each call opens its own)."""
        if self._engine is not None:
            self._engine.dispose()


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
