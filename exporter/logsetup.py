"""Logging in logfmt or JSON, one line per event, with the event's fields as keys.

Values (server errors naming roles and databases, target names, ...) go through the rules of
`escaping`: a value can neither add a field nor start a line, nor reach a terminal raw.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from exporter.escaping import json_text, logfmt_key, logfmt_value

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
    if record.exc_info and record.exc_info[1] is not None:
        out["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
    return out


class LogfmtFormatter(logging.Formatter):
    """key=value pairs, quoted where needed: the Prometheus ecosystem's default."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{logfmt_key(k)}={logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json_text(_fields(record))


def setup_logging(level: str, fmt: str) -> None:
    """Send all logs to stderr in `fmt` (logfmt or json) at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
