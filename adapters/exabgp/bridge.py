"""The program ExaBGP runs as its ``process``: commands in from Sluice, acks back out.

    process sluice {
        run VENV/bin/python -m adapters.exabgp.bridge --socket SOCK --state-file FILE;
        encoder text;
    }
    neighbor ... { api { processes [ sluice ]; neighbor-changes; } }

ExaBGP writes to the bridge's stdin (acks ``done``/``error``/``shutdown``, the output of
``show`` commands, ``neighbor X up|down`` with ``neighbor-changes``) and reads API commands
from its stdout. ExaBGP answers commands in order, so the bridge keeps a FIFO of the
commands it wrote and hands each ack to the caller that sent that command. The ack
feature must be on (ExaBGP's default): without it every command times out.

Callers reach the bridge over a unix socket (one JSON object per line each way) and, with
``--http HOST:PORT``, over HTTP (default port 5000, optional bearer token from
``SLUICE_EXABGP_BRIDGE_TOKEN`` or ``--token-file``):

* ``{"commands": [...]}`` / ``POST /commands`` -> ``{"ok": true, "results": [{"command",
  "ack": "done"|"error"|"shutdown"|"timeout", "output": [...]}]}``;
* ``{"op": "routes"}`` / ``GET /routes`` -> the announce commands ExaBGP has acknowledged
  and not seen withdrawn since this bridge started;
* ``{"op": "adj-rib-out"}`` / ``GET /adj-rib-out`` -> ``show adj-rib out extensive``;
* ``{"op": "status"}`` / ``GET /status`` -> neighbour states, start time, counters;
* ``{"op": "neighbors", "after": N, "wait": S}`` -> the neighbour states and their change
  counter, answered as soon as the counter differs from ``N`` (or after ``S`` seconds):
  how the adapter watches sessions without polling;
* ``POST /`` with a form field ``command`` (the common ExaBGP HTTP-bridge shape) ->
  the ack as plain text.

Restarts: ExaBGP starts a new bridge when it (re)starts and respawns it if it dies. When
ExaBGP itself restarted, its RIB is empty and so is the new bridge's route list: read-back
tells the truth and the orchestrator re-announces. When only the bridge was respawned,
ExaBGP still holds its routes: with ``--state-file`` the new bridge takes over the list its
predecessor saved, but only if the file names the same ExaBGP process (pid and start
time), never after an ExaBGP restart. ``adj-rib-out`` shows ExaBGP's own view for a
check. The bridge exits when its stdin closes or ExaBGP sends SIGTERM, removing its socket,
so it never outlives its ExaBGP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from adapters.exabgp.httpserver import HttpRequest, HttpResponse, serve_http
from adapters.exabgp.render import route_entries

ACKS = frozenset({"done", "error", "shutdown"})
_IN_ORDER = re.compile(
    r"^(neighbor [^\s,]+(, neighbor [^\s,]+)* )?(announce|withdraw) (route|flow route|attributes) "
    r"|^show adj-rib (in|out)\b|^show neighbor summary$"
)


def in_order(command: str) -> bool:
    """Whether ExaBGP answers ``command`` from its in-order scheduler."""
    return _IN_ORDER.match(command) is not None


def exabgp_identity(pid: int) -> str:
    """``pid:start-time`` of a process, so a reused pid is not taken for the same ExaBGP."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        start = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{pid}:{start}"


_NEIGHBOR_STATE = re.compile(r"^neighbor (\S+) (up|down|connected)\b")
HTTP_PORT = 5000
TOKEN_ENV = "SLUICE_EXABGP_BRIDGE_TOKEN"  # noqa: S105 - the variable's name, not a token


@dataclass(slots=True)
class Pending:
    command: str
    future: asyncio.Future[str]
    output: list[str] = field(default_factory=list)


class Bridge:
    """The FIFO of commands written to ExaBGP and the state their acks imply."""

    def __init__(
        self,
        writer: asyncio.StreamWriter | Any,
        ack_timeout: float = 30.0,
        state_file: Path | None = None,
        owner: str = "",
    ) -> None:
        self._writer = writer
        self.ack_timeout = ack_timeout
        self.state_file = state_file
        self.owner = owner
        self.pending: deque[Pending] = deque()
        self.routes: dict[str, str] = {}
        self.neighbors: dict[str, str] = {}
        self.neighbor_version = 0  # counts neighbour state changes, for "neighbors" watchers
        self._neighbor_changed = asyncio.Event()
        self.started_at = time.time()
        self.acks = {"done": 0, "error": 0, "shutdown": 0, "timeout": 0}
        self.shutting_down = False
        self._lock = asyncio.Lock()
        self._dirty = False  # routes changed since the state file was written

    # ---------------------------------------------------------- from ExaBGP

    def feed(self, line: str) -> None:
        """One line from ExaBGP's side."""
        text = line.strip()
        if not text:
            return
        if text in ACKS:
            self._ack(text)
            return
        m = _NEIGHBOR_STATE.match(text)
        if m:  # no show output line reads "neighbor X up|down|connected"
            self._set_neighbor(m.group(1), m.group(2))
            return
        if self.pending:
            self.pending[0].output.append(text)

    def _ack(self, ack: str) -> None:
        if ack == "shutdown":
            self.shutting_down = True
        if not self.pending:
            return
        item = self.pending.popleft()
        self.acks[ack] += 1
        if ack == "done":
            entries = route_entries(item.command)
            if entries is not None:
                op, routes = entries
                for key, announce in routes:
                    if op == "announce":
                        self.routes[key] = announce
                        self._dirty = True
                    else:
                        self._dirty = self.routes.pop(key, None) is not None or self._dirty
        if not item.future.done():
            item.future.set_result(ack)

    def closed(self) -> None:
        """ExaBGP closed our stdin: nothing pending will ever be answered."""
        self.shutting_down = True
        self._neighbor_changed.set()  # watchers hear it at once and let go of this bridge
        while self.pending:
            item = self.pending.popleft()
            if not item.future.done():
                item.future.set_result("shutdown")

    # ---------------------------------------------------------- to ExaBGP

    async def submit(self, commands: list[str]) -> list[dict[str, Any]]:
        """Write ``commands`` in order and wait for their acks.

        ExaBGP answers ``announce``/``withdraw``/``show adj-rib`` commands from its
        scheduler, in order, so those are written back to back. A command it does not
        recognise is answered at once, possibly ahead of acks still due, so such a
        command is written alone once everything before it was answered. Batches from
        different callers do not interleave.
        """
        clean = [c.strip() for c in commands]
        if any(not c or "\n" in c or "\r" in c for c in clean):
            raise ValueError("each command must be one non-empty line")
        if self.shutting_down:
            return [{"command": c, "ack": "shutdown", "output": []} for c in clean]
        loop = asyncio.get_running_loop()
        results: list[dict[str, Any]] = []
        async with self._lock:
            start = 0
            while start < len(clean):
                end = start
                while end < len(clean) and in_order(clean[end]):
                    end += 1
                group = clean[start : max(end, start + 1)]
                items = [Pending(c, loop.create_future()) for c in group]
                self.pending.extend(items)
                self._writer.write("".join(c + "\n" for c in group).encode())
                await self._writer.drain()
                deadline = loop.time() + self.ack_timeout + len(group) / 2000
                for item in items:
                    results.append(await self._wait(item, deadline))
                start += len(group)
        self._save()
        return results

    async def _wait(self, item: Pending, deadline: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            ack = await asyncio.wait_for(
                asyncio.shield(item.future), max(0.0, deadline - loop.time())
            )
        except TimeoutError:
            # the entry stays queued so a late ack still lines up with its command
            ack = "timeout"
            self.acks["timeout"] += 1
        return {"command": item.command, "ack": ack, "output": list(item.output)}

    # ---------------------------------------------------------- state file

    def _save(self) -> None:
        if self.state_file is None or not self._dirty:
            return
        self._dirty = False
        data = {"exabgp": self.owner, "routes": self.routes}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state_file)

    def load(self) -> bool:
        """Take over the routes of the bridge this ExaBGP ran before us (a respawn)."""
        if self.state_file is None or not self.state_file.is_file():
            return False
        try:
            data = json.loads(self.state_file.read_text())
        except ValueError:
            return False
        if not isinstance(data, dict) or data.get("exabgp") != self.owner:
            return False  # another ExaBGP (it restarted): its RIB started empty
        routes = data.get("routes")
        if isinstance(routes, dict):
            self.routes = {str(k): str(v) for k, v in routes.items()}
        return True

    async def refresh_neighbors(self) -> None:
        """Learn the sessions already up (``neighbor-changes`` only reports changes: a
        respawned bridge would otherwise know none)."""
        (result,) = await self.submit(["show neighbor summary"])
        for line in result["output"]:
            parts = line.split()
            if len(parts) >= 4 and parts[0] != "Peer" and parts[0] not in self.neighbors:
                self._set_neighbor(parts[0], "up" if parts[3] == "established" else "down")

    def _set_neighbor(self, peer: str, state: str) -> None:
        if self.neighbors.get(peer) == state:
            return
        self.neighbors[peer] = state
        self.neighbor_version += 1
        self._neighbor_changed.set()
        self._neighbor_changed = asyncio.Event()

    async def neighbors_after(self, version: int, wait: float) -> dict[str, Any]:
        """The neighbour states once they differ from ``version`` (or after ``wait`` s)."""
        if self.neighbor_version == version and not self.shutting_down:
            event = self._neighbor_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(0.0, min(wait, 60.0)))
        return {
            "ok": True,
            "version": self.neighbor_version,
            "neighbors": dict(self.neighbors),
            "shutting_down": self.shutting_down,
        }

    def status(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "neighbors": dict(self.neighbors),
            "pending": len(self.pending),
            "routes": len(self.routes),
            "acks": dict(self.acks),
            "shutting_down": self.shutting_down,
        }

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request (unix socket JSON line or HTTP body)."""
        op = request.get("op", "commands")
        if op == "commands":
            commands = request.get("commands")
            if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
                return _error("invalid_parameter", "commands must be a list of strings")
            try:
                return {"ok": True, "results": await self.submit(commands)}
            except ValueError as exc:
                return _error("invalid_parameter", str(exc))
        if op == "routes":
            return {
                "ok": True,
                "started_at": self.started_at,
                "routes": sorted(self.routes.values()),
            }
        if op == "adj-rib-out":
            (result,) = await self.submit(["show adj-rib out extensive"])
            return {"ok": result["ack"] == "done", "ack": result["ack"], "lines": result["output"]}
        if op == "status":
            return self.status()
        if op == "neighbors":  # a long poll: answers when a neighbour changed state
            after, wait = request.get("after", -1), request.get("wait", 0)
            if not isinstance(after, int) or not isinstance(wait, int | float):
                return _error("invalid_parameter", "after must be an integer, wait a number")
            return await self.neighbors_after(after, float(wait))
        return _error("invalid_parameter", f"unknown op {op!r}")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


# ---------------------------------------------------------------- transports


async def serve_unix(bridge: Bridge, path: Path) -> asyncio.Server:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                request = _decode(line)
                if request is None:
                    reply = _error("invalid_request", "each request is one JSON object per line")
                else:
                    reply = await bridge.handle(request)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    _clear_socket(path)
    server = await asyncio.start_unix_server(client, path=str(path), limit=64 * 1024 * 1024)
    os.chmod(path, 0o660)  # noqa: PTH101 - one call at start-up
    return server


def _clear_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a socket left by the bridge ExaBGP ran before us


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        request = json.loads(line)
    except ValueError:
        return None
    return request if isinstance(request, dict) else None


def http_handler(bridge: Bridge, token: str | None) -> Any:
    async def handle(req: HttpRequest) -> HttpResponse:
        if token is not None:
            given = req.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return HttpResponse.json(401, _error("unauthorized", "missing or wrong token"))
        if req.method == "GET" and req.path in ("/routes", "/status", "/adj-rib-out"):
            return HttpResponse.json(200, await bridge.handle({"op": req.path[1:]}))
        if req.method == "POST" and req.path == "/commands":
            try:
                body = json.loads(req.body or b"{}")
            except ValueError:
                return HttpResponse.json(400, _error("invalid_request", "body is not JSON"))
            if not isinstance(body, dict):
                return HttpResponse.json(400, _error("invalid_request", "body must be an object"))
            reply = await bridge.handle({"op": "commands", "commands": body.get("commands")})
            return HttpResponse.json(200 if reply["ok"] else 400, reply)
        if req.method == "POST" and req.path == "/":
            form = parse_qs(req.body.decode(errors="replace"))
            command = (form.get("command") or [""])[0]
            if not command.strip():
                return HttpResponse.text(400, "error: form field 'command' is required\n")
            try:
                (result,) = await bridge.submit([command])
            except ValueError as exc:
                return HttpResponse.text(400, f"error: {exc}\n")
            return HttpResponse.text(200, "\n".join([*result["output"], result["ack"]]) + "\n")
        return HttpResponse.json(404, _error("not_found", f"no route {req.method} {req.path}"))

    return handle


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    # ExaBGP reads commands from our stdout: take it for that alone, and send anything
    # else that might print (libraries, tracebacks) to stderr.
    out_fd = os.dup(sys.stdout.fileno())
    sys.stdout = sys.stderr
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    state = Path(args.state_file) if args.state_file else None
    bridge = Bridge(writer, args.ack_timeout, state, exabgp_identity(os.getppid()))
    resumed = bridge.load()

    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    servers: list[asyncio.Server] = []
    if args.socket:
        servers.append(await serve_unix(bridge, Path(args.socket)))
    if args.http:
        host, port = http_address(args.http)
        token = _token(args)
        servers.append(
            await serve_http(http_handler(bridge, token), host or "127.0.0.1", int(port))
        )
    print(
        f"sluice exabgp bridge {os.getpid()} ready"
        + (f", resumed {len(bridge.routes)} routes" if resumed else ""),
        file=sys.stderr,
        flush=True,
    )

    async def pump() -> None:
        while line := await reader.readline():
            bridge.feed(line.decode(errors="replace"))

    task = asyncio.create_task(pump())
    refresh = asyncio.create_task(bridge.refresh_neighbors())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        refresh.cancel()
        bridge.closed()
        for server in servers:
            server.close()
        if args.socket:
            _remove(args.socket)
    return 0


def http_address(text: str) -> tuple[str, int]:
    """``HOST``, ``:PORT``, ``HOST:PORT`` or ``[V6]:PORT`` (default 127.0.0.1 and 5000)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    return host or "127.0.0.1", int(port) if port else HTTP_PORT


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink()


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        return Path(args.token_file).read_text().strip() or None
    return os.environ.get(TOKEN_ENV) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sluice's ExaBGP process bridge")
    parser.add_argument("--socket", help="unix socket path for the Sluice adapter")
    parser.add_argument(
        "--http",
        nargs="?",
        const=f"127.0.0.1:{HTTP_PORT}",
        help=f"[HOST][:PORT] for the HTTP listener (alone: 127.0.0.1:{HTTP_PORT})",
    )
    parser.add_argument("--token-file", help=f"bearer token for HTTP (else ${TOKEN_ENV})")
    parser.add_argument("--ack-timeout", type=float, default=30.0)
    parser.add_argument(
        "--state-file",
        help="keep acknowledged routes here so a bridge ExaBGP respawns can resume them",
    )
    args = parser.parse_args(argv)
    if not args.socket and not args.http:
        parser.error("give --socket PATH and/or --http HOST:PORT")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
