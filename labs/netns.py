"""Network namespaces, veth links and tracked daemon processes for real-peer labs.

A :class:`Lab` owns everything it creates and removes all of it in :meth:`Lab.close`
(also when used as a context manager and the body raises):

* namespaces, named ``sl<id>-<name>`` where ``<id>`` is a random 6-hex-digit suffix, so
  two labs (two engineers, two test runs) never collide;
* veth links between two namespaces (each end named ``sv<id><n><a|b>``, 15 characters at
  most) with IPv4 and IPv6 addresses (IPv6 without duplicate address detection, so the
  addresses are usable at once);
* processes started with :meth:`Lab.spawn` in their own process group (killed as a
  group: SIGTERM, then SIGKILL after a grace period); then every process still inside one
  of the lab's namespaces (``ip netns pids``) is killed too, which catches daemons that
  forked away;
* a work directory (``lab.workdir``) for configs, sockets, pid and log files.

Usage::

    with Lab() as lab:
        a, b = lab.namespace("speaker"), lab.namespace("bird")
        link = lab.link(a, b)                   # 192.0.2.1/30 <-> 192.0.2.2/30 + IPv6
        proc = lab.spawn(b, ["bird", "-f", ...], name="bird")
        lab.run(a, ["ip", "route"])             # a one-shot command inside a namespace

A lab that must outlive its process (``labs.cli up``) writes its state with
:meth:`Lab.save_state`; :func:`destroy_from_state` tears it down from another process.

Everything here raises :class:`LabError` (a :class:`~policies.errors.SluiceError`).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from policies.errors import SluiceError

GRACE_S = 3.0
CREATED: set[str] = set()  # every namespace this process created (tests check none is left)


class LabError(SluiceError):
    """A lab could not be built, a daemon did not come up, or a wait timed out."""

    code = "lab_error"


@dataclass(frozen=True, slots=True)
class Namespace:
    """One network namespace of a lab: ``name`` as given, ``netns`` as the kernel knows it."""

    name: str
    netns: str


@dataclass(frozen=True, slots=True)
class Link:
    """A veth pair between namespaces ``a`` and ``b`` with their interface addresses.

    ``v4``/``v6`` hold the interface addresses with prefix length (``192.0.2.1/30``);
    ``a_v4``/``b_v4``/``a_v6``/``b_v6`` give the bare addresses.
    """

    a: Namespace
    b: Namespace
    a_if: str
    b_if: str
    v4: tuple[str, str] | None
    v6: tuple[str, str] | None

    def _addr(self, pair: tuple[str, str] | None, i: int) -> str:
        if pair is None:
            raise LabError(f"link {self.a_if}-{self.b_if} has no such address family")
        return str(ipaddress.ip_interface(pair[i]).ip)

    @property
    def a_v4(self) -> str:
        return self._addr(self.v4, 0)

    @property
    def b_v4(self) -> str:
        return self._addr(self.v4, 1)

    @property
    def a_v6(self) -> str:
        return self._addr(self.v6, 0)

    @property
    def b_v6(self) -> str:
        return self._addr(self.v6, 1)


@dataclass(slots=True)
class Process:
    """A process the lab started; ``log`` collects its stdout and stderr."""

    name: str
    ns: Namespace
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = GRACE_S) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; reap the process."""
        _kill_group(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _kill_group(self.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace_s)
        # a daemon's own children may outlive the leader; the group kill reaches them
        _kill_group(self.popen.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_for(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    diagnose: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until true; after ``timeout`` raise :class:`LabError` naming ``what``.

    An exception from ``predicate`` (e.g. "the daemon exited") ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            extra = f"\n{diagnose()}" if diagnose is not None else ""
            raise LabError(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")


def netns_pids(netns: str) -> list[int]:
    """Pids of the processes inside namespace ``netns`` (empty when it does not exist)."""
    res = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    )
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def list_netns() -> list[str]:
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def _purge_netns(netns: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = netns_pids(netns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + GRACE_S
        while netns_pids(netns) and time.monotonic() < deadline:
            time.sleep(0.05)
    if netns in list_netns():
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


@dataclass
class Lab:
    """Namespaces, links and processes, all removed by :meth:`close`.

    ``prefix`` starts every namespace name; ``workdir`` is created (mode 0755, so daemons
    that drop privileges can reach their own sub-directories) unless given.
    """

    prefix: str = "sl"
    lab_id: str = field(default_factory=lambda: secrets.token_hex(3))
    workdir: Path | None = None
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    _owns_workdir: bool = False
    _closed: bool = False

    def __post_init__(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"sluice-lab-{self.lab_id}-"))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        atexit.register(self.close)

    @property
    def dir(self) -> Path:
        if self.workdir is None:
            raise LabError("the lab has no work directory")
        return self.workdir

    def path(self, *parts: str) -> Path:
        """A path in the work directory (parents created)."""
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # ------------------------------------------------------------ building

    def namespace(self, name: str) -> Namespace:
        """Create namespace ``name`` (loopback up); the same name twice is an error."""
        if name in self.namespaces:
            raise LabError(f"namespace {name!r} already exists in lab {self.lab_id}")
        ns = Namespace(name, f"{self.prefix}{self.lab_id}-{name}")
        _ip("netns", "add", ns.netns)
        CREATED.add(ns.netns)
        self.namespaces[name] = ns
        _ip("-n", ns.netns, "link", "set", "lo", "up")
        return ns

    def link(
        self,
        a: Namespace,
        b: Namespace,
        v4: tuple[str, str] | None = ("192.0.2.1/30", "192.0.2.2/30"),
        v6: tuple[str, str] | None = ("2001:db8::1/64", "2001:db8::2/64"),
    ) -> Link:
        """A veth pair from ``a`` to ``b``, both ends up, with the given addresses."""
        n = len(self.links)
        a_if, b_if = f"sv{self.lab_id}{n}a", f"sv{self.lab_id}{n}b"
        _ip("link", "add", a_if, "type", "veth", "peer", "name", b_if)
        try:
            _ip("link", "set", a_if, "netns", a.netns)
            _ip("link", "set", b_if, "netns", b.netns)
        except LabError:
            subprocess.run(["ip", "link", "del", a_if], capture_output=True, check=False)
            raise
        for ns, ifname, i in ((a, a_if, 0), (b, b_if, 1)):
            if v4 is not None:
                _ip("-n", ns.netns, "addr", "add", v4[i], "dev", ifname)
            if v6 is not None:
                _ip("-n", ns.netns, "-6", "addr", "add", v6[i], "dev", ifname, "nodad")
            _ip("-n", ns.netns, "link", "set", ifname, "up")
        link = Link(a, b, a_if, b_if, v4, v6)
        self.links.append(link)
        return link

    # ------------------------------------------------------------ processes

    def spawn(
        self,
        ns: Namespace,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Process:
        """Start ``argv`` inside ``ns`` in its own process group; output goes to ``name.log``."""
        log = self.path("logs", f"{name}.log")
        with log.open("ab") as fh:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns.netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        proc = Process(name, ns, list(argv), popen, log)
        self.processes.append(proc)
        return proc

    def run(
        self, ns: Namespace, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside ``ns`` and return its result."""
        res = subprocess.run(
            ["ip", "netns", "exec", ns.netns, *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise LabError(f"{' '.join(argv)} in {ns.name}: {res.stderr.strip()}")
        return res

    # ------------------------------------------------------------ teardown

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` in :meth:`close`, after the processes and namespaces are gone."""
        self.cleanups.append(fn)

    def close(self) -> None:
        """Kill every process, delete every namespace, remove the work directory."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for proc in reversed(self.processes):
            proc.stop()
        for ns in self.namespaces.values():
            _purge_netns(ns.netns)
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ state for the CLI

    def state(self) -> dict[str, Any]:
        return {
            "lab_id": self.lab_id,
            "workdir": str(self.workdir),
            "owns_workdir": self._owns_workdir,
            "namespaces": [ns.netns for ns in self.namespaces.values()],
            "pids": [p.pid for p in self.processes],
        }

    def save_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.state(), indent=2))

    def detach(self) -> None:
        """Forget the lab without tearing it down (its processes keep running)."""
        self._closed = True
        atexit.unregister(self.close)


def destroy_from_state(state: Mapping[str, Any]) -> None:
    """Tear down a lab recorded by :meth:`Lab.save_state`, from any process.

    Every lab process runs inside one of the lab's namespaces, so purging the namespaces
    (``ip netns pids`` + kill, then ``ip netns del``) ends them all; recorded pids are not
    signalled directly (they may have been reused since).
    """
    for netns in state.get("namespaces", []):
        _purge_netns(str(netns))
    if state.get("owns_workdir") and state.get("workdir"):
        shutil.rmtree(str(state["workdir"]), ignore_errors=True)
