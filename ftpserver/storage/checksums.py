"""Remembered MD5s of stored files, in a small SQLite database.

Each row keys a file's MD5 by its physical path below the storage root
(`alice/docs/a.pdf`) and by what changes when its bytes change: size,
mtime_ns and inode. A file replaced or touched behind the server's back no
longer matches its row and is hashed again; a lost or corrupt database costs
only time. One connection, guarded by a lock, serves every session.

`find()` lets an upload discover a file it need not send. It is indexed by
(md5, size, path), and a home is a range of paths, so the lookup reads only
rows of that home and stays flat however many other users hold the same bytes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ChecksumCache"]

log = logging.getLogger("ftpserver.checksums")

SCHEMA_VERSION = 2
_SCHEMA = """
DROP TABLE IF EXISTS checksums;
CREATE TABLE checksums (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    md5 TEXT NOT NULL
);
CREATE INDEX checksums_by_home ON checksums (md5, size, path);
PRAGMA user_version = 2;
"""
LOOKUP_BATCH = 256  # lookups of a listing under one hold of the lock (about 3 ms)
FIND_LIMIT = 16  # candidates an instant upload tries before it gives up and receives the bytes


class ChecksumCache:
    def __init__(self, database: Path | str) -> None:
        self.database = Path(database)
        self._lock = threading.Lock()
        self._db = self._open()
        self.stats = {"hit": 0, "miss": 0}  # lookups, for metrics

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
        except sqlite3.DatabaseError:
            log.warning("checksum cache %s is unreadable; starting a new one", self.database)
            self.database.unlink(missing_ok=True)
            db = self._connect()
        return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.database, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            db.executescript(_SCHEMA)  # rows of an older layout are only a cache: drop them
        return db

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        """The remembered MD5 of the file at `path` if it is unchanged since, else None."""
        return self.lookup_many([(path, st)])[0]

    def lookup_many(self, files: list[tuple[str, os.stat_result]]) -> list[str | None]:
        """`lookup()` of each (path, stat) (a listing's files), `LOOKUP_BATCH` under each hold
        of the lock: a folder of a million files does not stop everyone else's lookups."""
        found: list[str | None] = []
        for start in range(0, len(files), LOOKUP_BATCH):
            with self._lock:
                for path, st in files[start : start + LOOKUP_BATCH]:
                    rows = self._query(
                        "SELECT md5 FROM checksums WHERE path=? AND size=? AND mtime_ns=? AND inode=?",
                        (path, st.st_size, st.st_mtime_ns, st.st_ino),
                    )
                    self.stats["hit" if rows else "miss"] += 1
                    found.append(rows[0][0] if rows else None)
        return found

    def record(self, path: str, st: os.stat_result, md5: str) -> None:
        self.record_many([(path, st, md5)])

    def record_many(self, rows: Iterable[tuple[str, os.stat_result, str]]) -> None:
        """Remember each (path, stat, md5), in one transaction (a group commit's files)."""
        values = [(path, st.st_size, st.st_mtime_ns, st.st_ino, md5) for path, st, md5 in rows]
        if not values:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO checksums (path, size, mtime_ns, inode, md5)"
                        " VALUES (?, ?, ?, ?, ?)",
                        values,
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, UnicodeError) as exc:  # UnicodeError: a name that is not UTF-8
                log.warning("checksum cache error (ignored): %s", exc)

    def forget(self, path: str) -> None:
        with self._lock:
            self._query("DELETE FROM checksums WHERE path=?", (path,))

    def forget_below(self, path: str) -> None:
        """Forget `path` and everything below it."""
        with self._lock:
            self._query(
                "DELETE FROM checksums WHERE path=? OR (path > ? AND path < ?)",
                (path, path + "/", path + "0"),
            )

    def move(self, old: str, new: str) -> None:
        """`old` (a file, or a directory and all below it) is now called `new`."""
        with self._lock:
            below = (old, old + "/", old + "0")
            self._query(
                "DELETE FROM checksums WHERE path=? OR (path > ? AND path < ?)", (new, new + "/", new + "0")
            )
            self._query(
                "UPDATE checksums SET path = ? || substr(path, ?) WHERE path=? OR (path > ? AND path < ?)",
                (new, len(old) + 1, *below),
            )

    def find(self, md5: str, size: int, home: str) -> list[str]:
        """Paths in `home` (a path below the root, "" for the root itself) remembered with
        this MD5 and size. The files may have changed since: check each with `lookup()`."""
        if home:  # every path below `home/` sorts between `home/` and `home0` ('0' follows '/')
            sql = "SELECT path FROM checksums WHERE md5=? AND size=? AND path > ? AND path < ? LIMIT ?"
            args: tuple = (md5, size, home + "/", home + "0", FIND_LIMIT)
        else:
            sql, args = "SELECT path FROM checksums WHERE md5=? AND size=? LIMIT ?", (md5, size, FIND_LIMIT)
        with self._lock:
            return [text for (text,) in self._query(sql, args)]

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        """Run a statement; a cache failure is logged and ignored, never fatal."""
        try:
            return self._db.execute(sql, args).fetchall()
        except (sqlite3.Error, UnicodeError) as exc:  # UnicodeError: a name that is not UTF-8
            log.warning("checksum cache error (ignored): %s", exc)
            return []

    def close(self) -> None:
        with self._lock:
            self._db.close()
