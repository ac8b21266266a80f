"""Durable queue and history in one SQLite table (WAL).

A prompt row moves ``pending`` → ``running`` → ``done``. Pending rows survive a restart and run
after it; a row found ``running`` at startup belonged to a process that died: it is marked failed
(an ``execution_error`` explains why) or, if configured, re-queued — never silently lost.
History (``done`` rows) is bounded by count and age; pruning deletes rows, and output files only
when ``prune_outputs`` is set.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .jsontext import dumps

log = logging.getLogger("loom.server")

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    number REAL NOT NULL,
    state TEXT NOT NULL,            -- pending | running | done
    outcome TEXT,                   -- success | error | interrupted | crashed
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    client_id TEXT,
    create_time INTEGER NOT NULL,
    start_time INTEGER,
    end_time INTEGER,
    done_seq INTEGER,
    result TEXT                     -- {outputs, status, meta, loom}
);
CREATE INDEX IF NOT EXISTS prompts_queue ON prompts(state, number, seq);
CREATE INDEX IF NOT EXISTS prompts_done ON prompts(done_seq);
CREATE INDEX IF NOT EXISTS prompts_end ON prompts(end_time);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class BaseInUse(RuntimeError):
    """Another live server holds this queue database."""


class BaseLock:
    """An exclusive OS lock on ``<database>.lock``, held for a server's life.

    Two servers on one queue would both run it and mark each other's running prompt failed. The
    lock is ``flock`` (``msvcrt.locking`` on Windows): the OS releases it when the process dies,
    even by kill -9, so a crash never leaves a stale lock behind. The file holds the owner's pid,
    for the message only.
    """

    def __init__(self, db_path: str | Path):
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "BaseLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd)
        except OSError:
            try:
                owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise BaseInUse(f"another Loom server (pid {owner}) is using the queue database "
                            f"{self.path.with_suffix('')}; stop it first, or give this one another --base or --db")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock

    @property
    def held(self) -> bool:
        return self._fd is not None


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Item:
    seq: int
    id: str
    number: float
    state: str
    outcome: str | None
    prompt_json: str
    extra_data: dict
    outputs_to_execute: list
    client_id: str | None
    create_time: int
    start_time: int | None
    end_time: int | None
    result: dict | None

    @property
    def prompt(self) -> dict:
        return json.loads(self.prompt_json)

    @property
    def number_out(self) -> int | float:
        n = self.number
        return int(n) if float(n).is_integer() else n

    def queue_tuple(self) -> list:
        """ComfyUI's positional queue item ``[number, prompt_id, prompt, extra_data, outputs]``."""
        return [self.number_out, self.id, self.prompt, self.extra_data, self.outputs_to_execute]


_COLS = ("seq, id, number, state, outcome, prompt, extra_data, outputs_to_execute, client_id, create_time, "
         "start_time, end_time, result")


def _item(row) -> Item:
    return Item(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), json.loads(row[7]), row[8],
                row[9], row[10], row[11], json.loads(row[12]) if row[12] else None)


class Store:
    def __init__(self, path: str | Path, *, max_items: int = 10_000, max_age_s: float = 30 * 86400.0,
                 on_prune_outputs: Callable[[dict], None] | None = None):
        self.path = Path(path)
        self.max_items = max(1, int(max_items))
        self.max_age_s = float(max_age_s)
        self.on_prune_outputs = on_prune_outputs
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._done_count = self._db.execute("SELECT COUNT(*) FROM prompts WHERE state='done'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- helpers -------------------------------------------------------------------------------
    def _counter(self, name: str) -> int:
        """Atomically increment and return a persistent counter (call with the lock held, in a txn)."""
        self._db.execute("INSERT INTO counters(name, value) VALUES (?, 0) ON CONFLICT(name) DO UPDATE "
                         "SET value = value + 1", (name,))
        return self._db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()[0]

    def _rows(self, sql: str, args: Iterable = ()) -> list[Item]:
        with self._lock:
            return [_item(r) for r in self._db.execute(f"SELECT {_COLS} FROM prompts {sql}", tuple(args))]

    # -- recovery --------------------------------------------------------------------------------
    def recover(self, requeue: bool = False) -> list[str]:
        """Deal with rows a dead process left ``running``; returns their ids."""
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM prompts WHERE state='running'")]
            for pid in ids:
                if requeue:
                    self._db.execute("UPDATE prompts SET state='pending', start_time=NULL WHERE id=?", (pid,))
                else:
                    ts = now_ms()
                    err = {"prompt_id": pid, "node_id": None, "node_type": None, "executed": [],
                           "exception_message": "the server stopped while this prompt was running\n",
                           "exception_type": "ServerRestarted", "traceback": [], "current_inputs": {},
                           "current_outputs": [], "timestamp": ts}
                    result = {"outputs": {}, "meta": {}, "status": {"status_str": "error", "completed": False,
                                                                    "messages": [["execution_error", err]]},
                              "loom": {"nodes": {}, "error": err}}
                    self._finish_locked(pid, "crashed", result, ts)
            return ids

    # -- queue -----------------------------------------------------------------------------------
    def add(self, prompt_id: str, prompt_json: str, extra_data: dict, outputs: list, *,
            number: float | None = None, front: bool = False, client_id: str | None = None) -> float:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if number is None:
                    n = float(self._counter("number"))
                    number = -n if front else n
                self._db.execute(
                    "INSERT INTO prompts(id, number, state, prompt, extra_data, outputs_to_execute, client_id, "
                    "create_time) VALUES (?,?,?,?,?,?,?,?)",
                    (prompt_id, float(number), "pending", prompt_json, dumps(extra_data), dumps(outputs), client_id,
                     int(extra_data.get("create_time") or now_ms())))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return number

    def exists(self, prompt_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM prompts WHERE id=?", (prompt_id,)).fetchone() is not None

    def take_next(self) -> Item | None:
        """Pop the lowest-numbered pending prompt and mark it running."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(f"SELECT {_COLS} FROM prompts WHERE state='pending' "
                                       "ORDER BY number, seq LIMIT 1").fetchone()
                if row is None:
                    self._db.execute("COMMIT")
                    return None
                ts = now_ms()
                self._db.execute("UPDATE prompts SET state='running', start_time=? WHERE seq=?", (ts, row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        item = _item(row)
        item.state, item.start_time = "running", ts
        return item

    def pending_ids(self, limit: int) -> list[str]:
        """Ids of the first ``limit`` pending prompts in queue order, left pending (a pool's scheduling window)."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM prompts WHERE state='pending' ORDER BY number, "
                                                   "seq LIMIT ?", (max(0, int(limit)),))]

    def take(self, prompt_id: str) -> Item | None:
        """Mark one pending prompt running and return it (None if it is no longer pending)."""
        with self._lock:
            ts = now_ms()
            n = self._db.execute("UPDATE prompts SET state='running', start_time=? WHERE id=? AND state='pending'",
                                 (ts, prompt_id)).rowcount
        if not n:
            return None
        return self.get(prompt_id)

    def requeue(self, prompt_id: str) -> bool:
        """Put a running prompt back at its place in the queue (its worker was lost)."""
        with self._lock:
            return self._db.execute("UPDATE prompts SET state='pending', start_time=NULL WHERE id=? AND "
                                    "state='running'", (prompt_id,)).rowcount > 0

    def pending(self) -> list[Item]:
        return self._rows("WHERE state='pending' ORDER BY number, seq")

    def running(self) -> list[Item]:
        return self._rows("WHERE state='running' ORDER BY seq")

    def remaining(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM prompts WHERE state IN ('pending','running')").fetchone()[0]

    def delete_pending(self, ids: list[str] | None = None) -> int:
        """Delete pending prompts (all when ``ids`` is None); running ones are untouched."""
        with self._lock:
            if ids is None:
                return self._db.execute("DELETE FROM prompts WHERE state='pending'").rowcount
            n = 0
            for pid in ids:
                n += self._db.execute("DELETE FROM prompts WHERE state='pending' AND id=?", (str(pid),)).rowcount
            return n

    # -- completion and history ------------------------------------------------------------------
    def finish(self, prompt_id: str, outcome: str, result: dict) -> bool:
        """Record a prompt's result. A row that recovery marked ``crashed`` meanwhile (it had no way to
        know the prompt was still running) gets the real result. Returns False, and logs an error, only
        when the row is gone altogether (another process deleted it): never silently."""
        text = dumps(result)  # a 10k-node entry is megabytes: encode it outside the lock
        with self._lock:
            ok = self._finish_locked(prompt_id, outcome, text, now_ms(), replace_crashed=True)
            self.prune()
        if not ok:
            log.error("prompt %s finished (%s) but its queue row no longer exists; result not recorded: %s",
                      prompt_id, outcome, text[:2000])
        return ok

    def _finish_locked(self, prompt_id: str, outcome: str, result: dict | str, ts: int,
                       replace_crashed: bool = False) -> bool:
        if not isinstance(result, str):
            result = dumps(result)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            done = self._counter("done")
            n = self._db.execute("UPDATE prompts SET state='done', outcome=?, end_time=?, done_seq=?, result=? "
                                 "WHERE id=? AND state!='done'", (outcome, ts, done, result, prompt_id)).rowcount
            self._done_count += n
            if n == 0 and replace_crashed:  # already counted as done: replace the "crashed" guess
                n = self._db.execute("UPDATE prompts SET outcome=?, end_time=?, result=? WHERE id=? AND "
                                     "state='done' AND outcome='crashed'", (outcome, ts, result, prompt_id)).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return n > 0

    def prune(self) -> int:
        """Apply the count and age bounds to history; returns the number of rows removed. Cheap enough
        to run after every prompt: both checks use indexes and a maintained row count."""
        with self._lock:
            removed = 0
            cutoff = now_ms() - int(self.max_age_s * 1000)
            if self._db.execute("SELECT 1 FROM prompts WHERE end_time < ? AND state='done' LIMIT 1",
                                (cutoff,)).fetchone():
                removed += self._delete("state='done' AND end_time < ?", (cutoff,))
            excess = self._done_count - self.max_items
            if excess > 0:
                removed += self._delete("seq IN (SELECT seq FROM prompts WHERE state='done' ORDER BY done_seq "
                                        "LIMIT ?)", (excess,))
            return removed

    def _delete(self, where: str, args: tuple) -> int:
        if self.on_prune_outputs is not None:
            for (res,) in self._db.execute(f"SELECT result FROM prompts WHERE {where}", args):
                try:
                    self.on_prune_outputs((json.loads(res) or {}).get("outputs") or {})
                except Exception:
                    pass
        n = self._db.execute(f"DELETE FROM prompts WHERE {where}", args).rowcount
        self._done_count -= n
        return n

    def history(self, max_items: int | None = None, offset: int = 0) -> list[Item]:
        """Finished prompts, oldest first; ``max_items`` selects the newest N (after skipping ``offset``
        newest ones), like ComfyUI."""
        lim = -1 if max_items is None else max(0, int(max_items))
        rows = self._rows("WHERE state='done' ORDER BY done_seq DESC LIMIT ? OFFSET ?", (lim, max(0, int(offset))))
        rows.reverse()
        return rows

    def get(self, prompt_id: str) -> Item | None:
        rows = self._rows("WHERE id=?", (prompt_id,))
        return rows[0] if rows else None

    def delete_history(self, ids: list[str] | None = None) -> int:
        with self._lock:
            if ids is None:
                n = self._db.execute("DELETE FROM prompts WHERE state='done'").rowcount
            else:
                n = 0
                for pid in ids:
                    n += self._db.execute("DELETE FROM prompts WHERE state='done' AND id=?", (str(pid),)).rowcount
            self._done_count -= n
            return n

    # -- jobs ------------------------------------------------------------------------------------
    def jobs(self, states: set[str], outcomes: set[str] | None, limit: int, offset: int, newest_first: bool = True,
             sort_by: str = "created_at") -> tuple[list[Item], int]:
        """Rows whose state is in ``states`` (pending/running) or which are done with an outcome in
        ``outcomes``; returns (page, total)."""
        conds, args = [], []
        qs = [s for s in states if s in ("pending", "running")]
        if qs:
            conds.append(f"state IN ({','.join('?' * len(qs))})")
            args += qs
        if outcomes:
            conds.append(f"(state='done' AND outcome IN ({','.join('?' * len(outcomes))}))")
            args += sorted(outcomes)
        if not conds:
            return [], 0
        where = "WHERE " + " OR ".join(conds)
        order = "DESC" if newest_first else "ASC"
        if sort_by == "execution_duration":
            key = f"(COALESCE(end_time, 0) - COALESCE(start_time, 0)) {order}, seq {order}"
        else:
            key = f"create_time {order}, seq {order}"
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM prompts {where}", args).fetchone()[0]
        return self._rows(f"{where} ORDER BY {key} LIMIT ? OFFSET ?", args + [max(0, limit), max(0, offset)]), total
