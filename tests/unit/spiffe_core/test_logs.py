"""The log formats of the CA and the agent (spiffe_core.logs): text or one JSON object per line, and
the libraries' chatter held back."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from spiffe_core.logs import CHATTY_LOGGERS, JsonFormatter, LogFormat, LogLevel, configure_logging, quiet_grpc_core


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("ca.rotator", logging.WARNING, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_line_has_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(_record("pruned %s authority %s", "x509", "ab12"))
    document = json.loads(line)
    assert document["level"] == "warning"
    assert document["logger"] == "ca.rotator"
    assert document["message"] == "pruned x509 authority ab12"
    assert document["time"].endswith("+00:00")
    assert "fields" not in document


def test_json_line_carries_structured_fields() -> None:
    line = JsonFormatter().format(_record("audit #1", fields={"action": "agent.attest", "detail": {"count": 1}}))
    assert json.loads(line)["fields"] == {"action": "agent.attest", "detail": {"count": 1}}


def test_a_multi_line_message_and_its_traceback_stay_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("first\nsecond")
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    document = json.loads(line)
    assert document["message"] == "first\nsecond"
    assert "ValueError: boom" in document["exception"]


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger and the chatty ones, restored after the test."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in CHATTY_LOGGERS})
    yield root
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def configured(root: logging.Logger, level: LogLevel, log_format: LogFormat) -> io.StringIO:
    """``configure_logging``, with the stderr handler it installs writing to a buffer instead."""
    configure_logging(level, log_format)
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    return stream


def test_configure_json_writes_one_object_per_record(root_logger: logging.Logger) -> None:
    stream = configured(root_logger, "info", "json")
    logging.getLogger("sds.manager").info("signing %d X509-SVIDs", 3)
    logging.getLogger("sds.manager").debug("not at info")
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["signing 3 X509-SVIDs"]


def test_configure_text_keeps_the_classic_line(root_logger: logging.Logger) -> None:
    stream = configured(root_logger, "warning", "text")
    logging.getLogger("ca.sync").warning("lost the datastore")
    assert stream.getvalue().rstrip().endswith("WARNING ca.sync: lost the datastore")


def test_grpc_and_http_client_chatter_is_held_at_warning_even_at_debug(root_logger: logging.Logger) -> None:
    configure_logging("debug", "text")
    for name in ("grpc._cython.cygrpc", "absl", "httpx", "httpcore.http11", "hpack.hpack"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    assert logging.getLogger("ca.node_api").isEnabledFor(logging.DEBUG)


def test_grpc_core_is_silenced_unless_the_user_asked_for_its_output() -> None:
    environ: dict[str, str] = {}
    quiet_grpc_core(environ)
    assert environ == {"GRPC_VERBOSITY": "NONE", "GRPC_TRACE": ""}
    chosen = {"GRPC_VERBOSITY": "DEBUG", "GRPC_TRACE": "handshaker"}
    quiet_grpc_core(chosen)
    assert chosen == {"GRPC_VERBOSITY": "DEBUG", "GRPC_TRACE": "handshaker"}
