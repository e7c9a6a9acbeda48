"""A small asyncio client for BIRD's control socket (what ``birdc`` speaks).

BIRD answers each command with lines ``CODE-text`` (more follows), `` text`` (continues the
previous code) and a last ``CODE text``. Codes ``0xxx`` are success, ``1xxx``/``2xxx`` table
rows and headings, ``8xxx`` run-time errors and ``9xxx`` parse errors. ``configure``
answers ``0003 Reconfigured`` (or ``0004 Reconfiguration in progress``) on success and
``8002 <file>:<line>:<col> <message>`` when the config is refused.

Errors: a socket that cannot be reached or that stops answering raises
:class:`~policies.errors.AdapterUnavailable` (retryable); a reply with an error code is
returned as a :class:`Reply` for the caller to judge.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from policies.errors import AdapterUnavailable

OK_CONFIGURE = ("0003", "0004")


@dataclass(frozen=True, slots=True)
class Reply:
    code: str  # the code of the last line
    lines: tuple[str, ...]  # text of every line, codes stripped
    codes: tuple[str, ...]  # the code each line carried

    @property
    def ok(self) -> bool:
        return self.code[:1] == "0"

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def errors(self) -> str:
        """The lines that carry error codes (8xxx/9xxx), or the whole text."""
        bad = [t for c, t in zip(self.codes, self.lines, strict=True) if c[:1] in ("8", "9")]
        return "; ".join(bad) if bad else self.text


async def command(socket: Path, cmd: str, *, limit_s: float = 10.0) -> Reply:
    """Send one command on a fresh connection and collect the whole reply within ``limit_s``."""
    try:
        async with asyncio.timeout(limit_s):
            return await _command(socket, cmd)
    except TimeoutError:
        raise AdapterUnavailable(
            f"BIRD control socket {socket}: no complete answer to {cmd!r} within {limit_s:g}s"
        ) from None
    except OSError as exc:
        raise AdapterUnavailable(
            f"BIRD control socket {socket} unreachable: {exc.strerror or exc}"
        ) from None


async def _command(socket: Path, cmd: str) -> Reply:
    reader, writer = await asyncio.open_unix_connection(str(socket), limit=1 << 20)
    try:
        hello = await _read_reply(reader)
        if hello.code != "0001":
            raise AdapterUnavailable(f"BIRD control socket {socket} greeted with {hello.text!r}")
        writer.write(cmd.encode() + b"\n")
        await writer.drain()
        return await _read_reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    lines: list[str] = []
    codes: list[str] = []
    code = ""
    while True:
        raw = await reader.readline()
        if not raw:
            raise AdapterUnavailable("BIRD closed the control connection mid-reply")
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith(" "):
            lines.append(line[1:])
            codes.append(code)
            continue
        code, sep, text = line[:4], line[4:5], line[5:]
        lines.append(text)
        codes.append(code)
        if sep == " ":
            return Reply(code, tuple(lines), tuple(codes))
