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


def configure(level: str) -> None:
    """The service's logging: one handler on stderr with :class:`OneLineFormatter`."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
