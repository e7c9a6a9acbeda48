"""A base for small, real HTTP servers that stand in for vendor APIs in tests.

Each vendor fake (Radware DefenseFlow, F5 BIG-IP, a webhook receiver, Cloudflare, the
scrubbing providers) is a subclass of :class:`FakeVendorServer`: real TCP HTTP/1.1 on
loopback (``127.0.0.1``, port 0 so the OS picks a free one), served by a
:class:`http.server.ThreadingHTTPServer` in a background thread of the test process. An
adapter under test talks to it exactly as it talks to the device: same paths, same
bodies, same auth headers.

Writing a fake::

    class AcmeServer(FakeVendorServer):
        vendor = "acme"

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.rules: dict[str, dict[str, Any]] = {}     # vendor state, in memory
            self.sessions = Sessions(ttl=600)

        @route("POST", r"/api/login")
        def login(self, req: Request, params: dict[str, str]) -> Response:
            body = req.json_object()
            if body.get("password") != "secret":
                raise HttpError(401, {"message": "bad credentials"})
            return Response(200, {"token": self.sessions.issue(body["user"])})

        @route("PUT", r"/api/rules/(?P<rule_id>[^/]+)")
        def put_rule(self, req: Request, params: dict[str, str]) -> Response:
            self.sessions.require(req.bearer())             # raises HttpError(401)
            self.rules[params["rule_id"]] = req.json_object()
            return Response(200, {"ok": True})

Handlers run one at a time under ``self.lock`` (so vendor state needs no locking of its
own) and receive the parsed :class:`Request` and the named groups of their path pattern.
A handler returns a :class:`Response` or raises :class:`HttpError`; an unknown path is a
404 and a known path with another method a 405, both as JSON.

Using one in a test (a context manager; ``start()``/``stop()`` also exist)::

    with AcmeServer() as srv:                 # listening once the block starts
        adapter = make_adapter(endpoint=srv.url)
        ...
        req = srv.journal.last()              # method, path, query, headers, json body
        assert (req.method, req.path) == ("PUT", "/api/rules/r1")
        srv.faults.add(Fault.answer(503, {"message": "busy"}), times=2)
        srv.faults.add(Fault.delay(2.0))       # the next request answers after 2 s
        srv.faults.add(Fault.malformed())      # 200 with a body that is not JSON
        srv.faults.add(Fault.drop(), path=r"/api/rules/.*")   # close without answering

The **journal** (:class:`Journal`) records every request, including those answered by a
fault (``Recorded.fault`` names it), with headers lower-cased. **Faults** are consumed
first in, first out by the next requests that match their optional method and path
filters; a fault with ``times=N`` answers N requests. A delay fault with ``then_status``
unset sleeps and then lets the handler answer normally (the client has usually timed out
by then). Stopping the server interrupts pending delays, so a test never waits on them.

:class:`Sessions` is an auth helper for token- or cookie-based logins (issue, check,
expire all to simulate a session timeout); :meth:`Request.basic_auth` and
:meth:`Request.bearer` read the usual headers.

Each vendor module is runnable on its own for manual trials (``python -m
labs.vendors.radware --port 8443``) through :func:`serve_main`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

# ---------------------------------------------------------------- requests and responses


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the fake received it; also what the journal records."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # names lower-cased
    raw: bytes
    body: Any = None  # parsed JSON, or None when the body is empty or not JSON
    fault: str | None = None  # the fault that answered it, if any
    at: float = 0.0  # time.monotonic() when it arrived

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, or an ``HttpError(400)`` saying why not."""
        if not isinstance(self.body, dict):
            raise HttpError(400, {"message": "request body must be a JSON object"})
        return self.body

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def bearer(self) -> str | None:
        value = self.header("authorization") or ""
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def basic_auth(self) -> tuple[str, str] | None:
        value = self.header("authorization") or ""
        scheme, _, blob = value.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(blob.strip()).decode().partition(":")
        except ValueError:
            return None
        return (user, password) if sep else None

    def cookies(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in (self.header("cookie") or "").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                out[name] = value
        return out


@dataclass(slots=True)
class Response:
    """What a handler answers: ``body`` is sent as JSON unless ``raw`` is given."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


class HttpError(Exception):
    """Raised by a handler to answer ``status`` with a JSON ``body``."""

    def __init__(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None):
        super().__init__(f"HTTP {status}")
        self.response = Response(status, body, dict(headers or {}))


Handler = Callable[[Any, Request, dict[str, str]], Response]
H = TypeVar("H", bound=Handler)


def route(method: str, pattern: str) -> Callable[[H], H]:
    """Declare a handler method for ``method`` and a full-match path regex."""

    def mark(fn: H) -> H:
        routes: list[tuple[str, str]] = getattr(fn, "_vendor_routes", [])
        routes.append((method.upper(), pattern))
        fn._vendor_routes = routes  # type: ignore[attr-defined]
        return fn

    return mark


# ---------------------------------------------------------------- journal


class Journal:
    """Every request received, in order; thread-safe."""

    def __init__(self) -> None:
        self._items: list[Request] = []
        self._lock = threading.Lock()

    def add(self, req: Request) -> None:
        with self._lock:
            self._items.append(req)

    def all(self) -> list[Request]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def last(self) -> Request:
        items = self.all()
        if not items:
            raise AssertionError("the fake server received no request")
        return items[-1]

    def find(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """Requests with this method and whose path fully matches the ``path`` regex."""
        return [
            r
            for r in self.all()
            if (method is None or r.method == method.upper())
            and (path is None or re.fullmatch(path, r.path))
        ]

    def summary(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request, for compact assertions."""
        return [(r.method, r.path) for r in self.all()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# ---------------------------------------------------------------- faults


@dataclass(frozen=True, slots=True)
class Fault:
    """One way to misbehave; build with the class methods."""

    kind: str  # "status", "delay", "malformed", "drop"
    status: int = 200
    body: Any = None
    raw: bytes | None = None
    seconds: float = 0.0
    then_status: int | None = None

    @classmethod
    def answer(cls, status: int, body: Any = None) -> Fault:
        """Answer ``status`` with the JSON ``body`` instead of the handler."""
        return cls("status", status=status, body=body)

    @classmethod
    def delay(cls, seconds: float, then_status: int | None = None, body: Any = None) -> Fault:
        return cls("delay", seconds=seconds, then_status=then_status, body=body)

    @classmethod
    def malformed(cls, status: int = 200, raw: bytes = b'{"ok": tru') -> Fault:
        return cls("malformed", status=status, raw=raw)

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    def label(self) -> str:
        if self.kind == "status":
            return f"status {self.status}"
        if self.kind == "delay":
            return f"delay {self.seconds}s"
        return self.kind


@dataclass(slots=True)
class _Armed:
    fault: Fault
    remaining: int
    method: str | None
    path: str | None


class Faults:
    """A FIFO of armed faults; each request takes the first one that matches it."""

    def __init__(self) -> None:
        self._armed: list[_Armed] = []
        self._lock = threading.Lock()

    def add(
        self, fault: Fault, *, times: int = 1, method: str | None = None, path: str | None = None
    ) -> None:
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._armed.append(_Armed(fault, times, method and method.upper(), path))

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def pending(self) -> int:
        with self._lock:
            return sum(a.remaining for a in self._armed)

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for armed in self._armed:
                if armed.method not in (None, method):
                    continue
                if armed.path is not None and not re.fullmatch(armed.path, path):
                    continue
                armed.remaining -= 1
                if armed.remaining == 0:
                    self._armed.remove(armed)
                return armed.fault
        return None


# ---------------------------------------------------------------- auth helper


class Sessions:
    """Tokens (or session cookies) with an expiry, as vendor login endpoints issue them."""

    def __init__(self, ttl: float = 1200.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        self.issued = 0

    def issue(self, user: str, ttl: float | None = None) -> str:
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (user, self._clock() + (self.ttl if ttl is None else ttl))
        self.issued += 1
        return token

    def user(self, token: str | None) -> str | None:
        """The user a live token belongs to, else None (expired tokens are forgotten)."""
        if token is None or token not in self._tokens:
            return None
        user, expires = self._tokens[token]
        if self._clock() >= expires:
            del self._tokens[token]
            return None
        return user

    def require(self, token: str | None, body: Any = None) -> str:
        """The token's user, or ``HttpError(401, body)``."""
        user = self.user(token)
        if user is None:
            raise HttpError(401, body if body is not None else {"message": "unauthorized"})
        return user

    def set_ttl(self, token: str, ttl: float) -> bool:
        """Give a live token ``ttl`` more seconds from now (token refresh/extend)."""
        user = self.user(token)
        if user is None:
            return False
        self._tokens[token] = (user, self._clock() + ttl)
        return True

    def revoke(self, token: str) -> bool:
        return self._tokens.pop(token, None) is not None

    def expire_all(self) -> None:
        """Forget every token, as a device does when its sessions time out."""
        self._tokens.clear()

    def live(self) -> int:
        now = self._clock()
        return sum(1 for _, exp in self._tokens.values() if exp > now)


# ---------------------------------------------------------------- the server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default 5 drops connections under 100 concurrent clients
    fake: FakeVendorServer


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as written, no 40 ms stalls
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return  # the journal is the log; keep test output quiet

    def _serve(self) -> None:
        self.server.fake._dispatch(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve  # noqa: N815


class FakeVendorServer:
    """Base class of every fake vendor API; see the module docstring."""

    vendor: ClassVar[str] = "vendor"
    _routes: ClassVar[list[tuple[str, re.Pattern[str], str]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: list[tuple[str, re.Pattern[str], str]] = []
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                for method, pattern in getattr(attr, "_vendor_routes", []):
                    found.append((method, re.compile(pattern), name))
        cls._routes = found

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.journal = Journal()
        self.faults = Faults()
        self.lock = threading.RLock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` once started."""
        if self._httpd is None:
            raise RuntimeError(f"{self.vendor} fake server is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self.port), _RequestHandler)
        httpd.fake = self
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{self.vendor}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a delay fault
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until interrupted (standalone use)."""
        self.start()
        try:
            while not self._stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # -- request handling

    def _read(self, h: _RequestHandler) -> Request:
        split = urlsplit(h.path)
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length > 0 else b""
        body: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        headers = {k.lower(): v for k, v in h.headers.items()}
        return Request(
            method=h.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            raw=raw,
            body=body,
            at=time.monotonic(),
        )

    def _dispatch(self, h: _RequestHandler) -> None:
        req = self._read(h)
        fault = self.faults.take(req.method, req.path)
        self.journal.add(
            req if fault is None else Request(**{**_fields(req), "fault": fault.label()})
        )
        if fault is not None:
            if fault.kind == "drop":
                h.close_connection = True
                with contextlib.suppress(OSError):
                    h.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.kind == "delay":
                if self._stopping.wait(fault.seconds):
                    h.close_connection = True
                    return
                if fault.then_status is not None:
                    self._send(h, Response(fault.then_status, fault.body))
                    return
            elif fault.kind == "status":
                self._send(h, Response(fault.status, fault.body))
                return
            elif fault.kind == "malformed":
                self._send(
                    h,
                    Response(
                        fault.status, raw=fault.raw, headers={"Content-Type": "application/json"}
                    ),
                )
                return
        self._send(h, self.handle(req))

    def handle(self, req: Request) -> Response:
        """Route ``req`` to its handler (overridable for catch-all fakes)."""
        allowed: list[str] = []
        for method, pattern, name in self._routes:
            m = pattern.fullmatch(req.path)
            if m is None:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            try:
                with self.lock:
                    resp: Response = getattr(self, name)(req, m.groupdict())
            except HttpError as err:
                return err.response
            return resp
        if allowed:
            return Response(
                405, {"message": f"method {req.method} not allowed"}, {"Allow": ", ".join(allowed)}
            )
        return Response(404, {"message": f"no such resource: {req.path}"})

    def _send(self, h: _RequestHandler, resp: Response) -> None:
        if resp.raw is not None:
            payload = resp.raw
        elif resp.body is None:
            payload = b""
        else:
            payload = json.dumps(resp.body).encode()
        try:
            h.send_response(resp.status)
            headers = dict(resp.headers)
            if payload and not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
            for name, value in headers.items():
                h.send_header(name, value)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if payload and h.command != "HEAD":
                h.wfile.write(payload)
            h.wfile.flush()
        except OSError:
            h.close_connection = True  # the client went away (it timed out); nothing to do


def _fields(req: Request) -> dict[str, Any]:
    return {name: getattr(req, name) for name in Request.__dataclass_fields__}


# ---------------------------------------------------------------- standalone


S = TypeVar("S", bound=FakeVendorServer)


def serve_main(
    factory: Callable[[str, int], S], argv: list[str] | None = None, banner: str = ""
) -> None:
    """``python -m labs.vendors.<vendor> [--host H] [--port P]``: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Run a fake vendor API for manual trials.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = factory(args.host, args.port)
    server.start()
    print(f"fake {server.vendor} API listening on {server.url}", flush=True)
    if banner:
        print(banner, flush=True)
    server.serve_forever()
