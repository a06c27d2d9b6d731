"""Log lines as JSON objects, one per line, for `log_format: json`.

Every record gives `time` (UTC, ISO 8601), `level`, `logger` and `message`;
the server's event lines add their fields (`event`, `peer`, `user`, `op`,
`path`, `bytes`, `seconds`, `result`, `kept`) as they pass them in `extra`.
"""

from __future__ import annotations

import datetime
import json
import logging

__all__ = ["FIELDS", "JsonFormatter"]

FIELDS = ("event", "peer", "user", "op", "path", "bytes", "seconds", "result", "kept", "source")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        data: dict[str, object] = {
            "time": moment.isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({key: getattr(record, key) for key in FIELDS if hasattr(record, key)})
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)
