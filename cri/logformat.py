"""crispd's log lines: text for people, or one JSON object per line for log shippers (`--log-format json`)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """{"time": RFC 3339 UTC with microseconds, "level", "logger", "msg"}, plus "error" with the traceback when
    the record carries one; keys and order stay the same from line to line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # HTTP/2's debug chatter (hpack: lines per header of every call) drowns crisp's; grpc's is crispd doctor's
    for chatty in ("grpc", "h2", "hpack"):
        logging.getLogger(chatty).setLevel(max(logging.INFO, root.level))
    # urllib3 logs every connection and request of every pull at DEBUG
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
