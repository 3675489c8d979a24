"""Stored responses (`store: true`), in SQLite under settings.data_dir, so that a
conversation continues by `previous_response_id` across restarts.

Each row keeps the response object as answered and the whole conversation it answered
(chat-format messages, instructions excluded: they are not carried over), so a
continuation needs one read, not a walk along the chain.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    response TEXT NOT NULL,
    messages TEXT NOT NULL
)
"""


@dataclass
class Stored:
    response: dict[str, Any]
    messages: list[dict[str, Any]]  # the conversation's input (chat format)


class ResponseStore:
    """One SQLite file; opened on first use (the data directory is made then)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
            conn.commit()
            self._conn = conn
        return self._conn

    def _put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        with self._lock:
            db = self._db()
            db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                (
                    response["id"],
                    int(response.get("created_at") or time.time()),
                    json.dumps(response, ensure_ascii=False),
                    json.dumps(messages, ensure_ascii=False),
                ),
            )
            db.commit()

    def _get(self, response_id: str) -> Stored | None:
        with self._lock:
            row = (
                self._db()
                .execute("SELECT response, messages FROM responses WHERE id = ?", (response_id,))
                .fetchone()
            )
        if row is None:
            return None
        return Stored(json.loads(row[0]), json.loads(row[1]))

    def _delete(self, response_id: str) -> bool:
        with self._lock:
            db = self._db()
            deleted = db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount
            db.commit()
        return deleted > 0

    # Off the event loop: a write waits for the disk.
    async def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._put, response, messages)

    async def get(self, response_id: str) -> Stored | None:
        return await asyncio.to_thread(self._get, response_id)

    async def delete(self, response_id: str) -> bool:
        return await asyncio.to_thread(self._delete, response_id)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
