"""Structured logging: plain text by default, one JSON object per line with ``VISIONJOBS_LOG_JSON=1``.

Log calls pass context with ``extra={"job_id": ..., "phase": ...}``; the JSON formatter lifts those
fields to the top level. Per-image events are logged at DEBUG only.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Optional

CONTEXT_FIELDS = ("job_id", "phase", "image_id", "topic", "partition", "offset", "reason", "role")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def logging_config(json_logs: bool, level: str = "info") -> Optional[dict]:
    """A dictConfig for Faust's ``logging_config`` setting (None: keep Faust's default format)."""
    if not json_logs:
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "visionjobs.logs.JsonFormatter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"handlers": ["console"], "level": level.upper()},
    }
