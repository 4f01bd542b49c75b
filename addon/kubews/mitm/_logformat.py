"""`k8s_ws_log_format`: where the addon's own log lines go (interface §2).

- `text` (the default): to mitmproxy's event log, like any addon's (the "k8s_ws" logger
  propagates to the handlers mitmproxy installs on the root logger);
- `json`: instead, to standard error, one JSON object per line: `level`, `time` (RFC 3339, UTC),
  `message` (the text line), and the fields `_report` attaches to the record under `k8s_ws`
  (`rule`, `host`, `path`, `actions`, `token`, `status`, `protocol`, `hint`, where they apply).

Only the addon's lines change; mitmproxy's own stay where mitmproxy puts them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from .. import printable

FORMATS = ("text", "json")

#: The attribute of a log record that holds its fields (logging's `extra={"k8s_ws": {...}}`).
FIELDS = "k8s_ws"


def json_line(record: logging.LogRecord) -> str:
    fields = {
        "level": record.levelname.lower(),
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "message": record.getMessage(),
        **getattr(record, FIELDS, {}),
    }
    return json.dumps(_printable(fields), ensure_ascii=False)


def _printable(value):
    # A path or protocol may hold bytes that are not UTF-8: written as \xNN, never a lone surrogate.
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    return value


class _JsonLines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr  # looked up on each line: whatever standard error is now
            stream.write(json_line(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class LogFormat:
    """Switches the "k8s_ws" logger between mitmproxy's event log and JSON lines."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._handler = _JsonLines(logging.INFO)

    def use(self, log_format: str) -> None:
        if log_format == "json":
            if self._handler not in self._logger.handlers:
                self._logger.addHandler(self._handler)
            self._logger.propagate = False
            self._logger.setLevel(logging.INFO)
        else:
            self.reset()

    def reset(self) -> None:
        """Back to mitmproxy's event log (text), as in `done`."""
        self._logger.removeHandler(self._handler)
        self._logger.propagate = True
        self._logger.setLevel(logging.NOTSET)
