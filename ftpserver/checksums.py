"""Remembered MD5s of stored files, in a small SQLite database.

Each row keys a file's MD5 by its path and by what changes when its bytes
change: size, mtime_ns and inode. A file replaced or touched behind the
server's back no longer matches its row and is hashed again; a lost or
corrupt database costs only time. One connection, guarded by a lock, serves
every session; `find()` lets an upload discover a file it need not send.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

__all__ = ["ChecksumCache"]

log = logging.getLogger("ftpserver.checksums")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checksums (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    md5 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checksums_by_md5 ON checksums (md5, size);
"""


class ChecksumCache:
    def __init__(self, database: Path) -> None:
        self.database = database
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        self.database.parent.mkdir(parents=True, exist_ok=True)
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
        db.executescript(_SCHEMA)
        return db

    def lookup(self, path: Path, st: os.stat_result) -> str | None:
        """The remembered MD5 of `path` if the file is unchanged since, else None."""
        with self._lock:
            rows = self._query(
                "SELECT md5 FROM checksums WHERE path=? AND size=? AND mtime_ns=? AND inode=?",
                (str(path), st.st_size, st.st_mtime_ns, st.st_ino),
            )
        return rows[0][0] if rows else None

    def record(self, path: Path, st: os.stat_result, md5: str) -> None:
        with self._lock:
            self._query(
                "INSERT OR REPLACE INTO checksums (path, size, mtime_ns, inode, md5) VALUES (?, ?, ?, ?, ?)",
                (str(path), st.st_size, st.st_mtime_ns, st.st_ino, md5),
            )

    def forget(self, path: Path) -> None:
        with self._lock:
            self._query("DELETE FROM checksums WHERE path=?", (str(path),))

    def find(self, md5: str, size: int, under: Path) -> list[Path]:
        """Paths below `under` remembered with this MD5 and size. The files may have
        changed since: the caller checks each with `lookup()` before trusting it."""
        with self._lock:
            rows = self._query("SELECT path FROM checksums WHERE md5=? AND size=?", (md5, size))
        return [Path(text) for (text,) in rows if under in Path(text).parents]

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        """Run a statement; a cache failure is logged and ignored, never fatal."""
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            log.warning("checksum cache error (ignored): %s", exc)
            return []

    def close(self) -> None:
        with self._lock:
            self._db.close()
