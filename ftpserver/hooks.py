"""Event hooks: run a command or POST a JSON body when something happens.

The config's `hooks` list names, for each hook, the events it wants
(`upload`, `download`, `delete`, `mkdir`, `login_failed`, `ban`) and what to
do: `command`, an argument list run without a shell, with the event's fields
in `SOCKFTP_*` environment variables; and/or `url`, which receives the
fields as a JSON POST. Hooks run on one worker thread of their own, fed by a
bounded queue: a session only puts the event on the queue and goes on. A hook
slower than its `timeout` is killed (command) or abandoned (URL) and logged;
a full queue drops the event with a warning and counts it. Nothing a hook
does can fail or slow a transfer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import threading
import urllib.request
from dataclasses import dataclass

__all__ = ["EVENTS", "Hook", "Hooks"]

log = logging.getLogger("ftpserver.hooks")

EVENTS = ("upload", "download", "delete", "rename", "mkdir", "login_failed", "ban")
QUEUE_SIZE = 1000


@dataclass(frozen=True)
class Hook:
    events: tuple[str, ...]
    command: tuple[str, ...] = ()
    url: str | None = None
    timeout: float = 10.0


class Hooks:
    """The configured hooks and the thread that runs them; `emit()` never blocks."""

    def __init__(self, hooks: tuple[Hook, ...]) -> None:
        self.hooks = hooks
        self.events = frozenset(event for hook in hooks for event in hook.events)  # wanted by some hook
        self.dropped = 0
        self._queue: queue.Queue[dict | None] = queue.Queue(QUEUE_SIZE)
        self._worker: threading.Thread | None = None
        if hooks:
            self._worker = threading.Thread(target=self._run, name="hooks", daemon=True)
            self._worker.start()

    def emit(self, event: str, **fields: object) -> None:
        """Queue `event` for the hooks that want it (fields: user, path, size, md5, address)."""
        if event not in self.events:
            return
        try:
            self._queue.put_nowait({"event": event, **fields})
        except queue.Full:
            self.dropped += 1
            log.warning("hook queue full: %s event dropped (%d dropped so far)", event, self.dropped)

    def close(self, wait: float = 5.0) -> None:
        """Run what is queued (for up to `wait` seconds), then stop the worker."""
        if self._worker is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=wait)
            self._worker.join(wait)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            for hook in self.hooks:
                if item["event"] in hook.events:
                    self._call(hook, item)

    def _call(self, hook: Hook, item: dict) -> None:
        if hook.command:
            env = {**os.environ, **{f"SOCKFTP_{k.upper()}": str(v) for k, v in item.items() if v is not None}}
            try:
                done = subprocess.run(
                    hook.command, env=env, timeout=hook.timeout, stdin=subprocess.DEVNULL, capture_output=True
                )
            except subprocess.TimeoutExpired:
                log.warning("hook %s for %s killed after %gs", hook.command[0], item["event"], hook.timeout)
            except OSError as exc:
                log.warning("hook %s for %s could not run: %s", hook.command[0], item["event"], exc)
            else:
                if done.returncode:
                    log.warning(
                        "hook %s for %s exited with %d", hook.command[0], item["event"], done.returncode
                    )
        if hook.url:
            request = urllib.request.Request(
                hook.url, json.dumps(item).encode(), {"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=hook.timeout) as answer:
                    answer.read(1024)
            except (OSError, ValueError) as exc:
                log.warning("hook POST %s for %s failed: %s", hook.url, item["event"], exc)
