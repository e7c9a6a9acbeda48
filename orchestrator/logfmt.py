"""The service log's formatter: one event, one line, whatever a message contains.

Names, reasons and labels come from API callers and policy files. Validation refuses
control characters in names, but a message can carry text from anywhere (an adapter's
error, a policy file); :class:`OneLineFormatter` escapes control characters and line
separators in the formatted message (``\\n`` becomes the two characters ``\\`` ``n``), so
no input can forge a log line. A traceback keeps its lines, each indented under the line
of its event.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def escape(text: str) -> str:
    r"""``text`` with control characters and line separators escaped (``\n``, ``\x1b``)."""

    def one(match: re.Match[str]) -> str:
        char = match.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")

    return _CONTROL.sub(one, text)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging API)
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802
        text = super().formatException(ei)
        return "\n".join("    " + escape(line) for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "\n".join("    " + escape(line) for line in stack_info.splitlines())


@contextmanager
def configured(level: str) -> Iterator[None]:
    """The service's logging while the block runs; the root logger's handlers, its level
    and APScheduler's level as they were afterwards.

    ``sluice serve`` run in-process (tests drive it through typer's runner, whose stderr
    is closed after each call) would otherwise leave a handler on a closed stream, and
    every later log line would print ``--- Logging error ---``.
    """
    root = logging.getLogger()
    sched = logging.getLogger("apscheduler")
    saved = (list(root.handlers), root.level, sched.level)
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    root.handlers = [handler]
    root.setLevel(level.upper())
    # APScheduler logs every run of our sub-second jobs at INFO; its warnings still show
    sched.setLevel(max(logging.WARNING, root.level))
    try:
        yield
    finally:
        handler.flush()
        root.handlers = saved[0]
        root.setLevel(saved[1])
        sched.setLevel(saved[2])


def configure(level: str) -> None:
    """The service's logging: one handler on stderr with :class:`OneLineFormatter`."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
