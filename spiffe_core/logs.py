"""How the CA and the agent write their logs (docs/observability.md "Logs"): one record per line on
stderr, as text or — ``log_format = "json"`` — as one JSON object, so a log shipper reads fields, not
prose; and without the chatter of the libraries underneath.

gRPC's C core prints its own lines (handshake failures, bind errors) unless ``GRPC_VERBOSITY`` says
otherwise, and must be told before ``grpc`` is imported (:func:`quiet_grpc_core`, first thing in each
CLI). Python loggers of gRPC, absl and the HTTP clients are held at WARNING even when our own level is
``debug``: their debug output is protocol detail (and, for HTTP clients, headers), never what an
operator needs, and a debug log must not become the place a bearer token leaks to.

Structured fields travel in a record's ``fields`` attribute (``log.info(..., extra={"fields": {...}})``):
the JSON form puts them under ``"fields"``; the text form has them in the message already.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers of libraries whose INFO/DEBUG lines are protocol chatter; only their warnings get through.
CHATTY_LOGGERS = ("grpc", "absl", "httpx", "httpcore", "hpack", "urllib3")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``,
    ``message``, then ``fields`` (a record's structured ``fields`` extra) and ``exception`` when there
    are any. Newlines inside values are escaped, so a record is always exactly one line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping) and fields:
            document["fields"] = dict(fields)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=False, default=str)


def configure_logging(level: LogLevel, log_format: LogFormat) -> None:
    """Send every record at ``level`` or above to stderr in ``log_format``, replacing whatever
    handlers the root logger had; hold :data:`CHATTY_LOGGERS` at WARNING."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_grpc_core(environ: MutableMapping[str, str]) -> None:
    """Keep gRPC's C core from printing its own log lines (handshake failures, bind errors) on stderr:
    every failure the user should see is reported once, in our words. Must run before grpc is imported;
    a GRPC_VERBOSITY or GRPC_TRACE the user set is kept, for debugging."""
    environ.setdefault("GRPC_VERBOSITY", "NONE")
    environ.setdefault("GRPC_TRACE", "")
