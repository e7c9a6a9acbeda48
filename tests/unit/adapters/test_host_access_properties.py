"""Property: no generated adapter setting makes the service run a program or touch a file
or socket outside the directories its configuration allows.

Hypothesis builds adapter configs for every adapter type that names something on the
host, from hostile values (paths outside, through a symlink, with ``..``, relative,
system files, unix endpoints, program settings) mixed with legitimate ones. Each config
is created through a registry with a sandbox :class:`HostAccess`; what builds is then
driven (announce, active, check, withdraw, close) while a Python audit hook records every
file opened, renamed or removed, every unix socket connected and every program started.

* every path recorded inside the sandbox resolves inside its ``allowed`` directory, and
  nothing outside the sandbox is touched that a setting named;
* the only program started is the one the service configuration names;
* every path-like setting of a built adapter resolves inside ``allowed`` (this covers what
  the audit hook cannot see: gRPC's and OpenSSL's own opens in C).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.access import HostAccess
from adapters.base import Adapter, AdapterConfig, Registry, RuleRef
from policies.errors import AdapterError, SluiceError
from policies.intents import build_intent

# ---------------------------------------------------------------- the audit hook

_RECORDING: list[list[tuple[str, str]]] = []  # a stack: events go to the innermost list
_HOOKED = False


def _path_of(value: Any) -> str | None:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return None


EXEC_EVENTS = ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _RECORDING:
        return
    out = _RECORDING[-1]
    if event == "open" and args and (p := _path_of(args[0])) is not None:
        out.append(("open", p))
    elif event in ("os.rename", "os.replace") and len(args) >= 2:
        out.extend(("open", p) for p in map(_path_of, args[:2]) if p is not None)
    elif event in ("os.remove", "os.unlink", "os.mkdir", "os.symlink", "os.truncate") and args:
        if (p := _path_of(args[0])) is not None:
            out.append(("open", p))
    elif event == "socket.connect" and len(args) >= 2 and (p := _path_of(args[1])) is not None:
        out.append(("connect", p))
    elif (event == "subprocess.Popen" and args) or (
        event in ("os.exec", "os.posix_spawn", "os.spawn", "os.system") and args
    ):
        out.append(("exec", str(args[0])))


def _install_hook() -> None:
    global _HOOKED  # noqa: PLW0603  # an audit hook cannot be removed: add it once per process
    if not _HOOKED:
        sys.addaudithook(_hook)
        _HOOKED = True


# ---------------------------------------------------------------- the sandbox


class Sandbox:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self.allowed = self.root / "allowed"
        self.outside = self.root / "outside"
        (self.allowed / "sub").mkdir(parents=True, exist_ok=True)
        self.outside.mkdir(exist_ok=True)
        (self.outside / "secret").write_text("secret\n")
        (self.allowed / "plain.txt").write_text("not a state file\n")
        for name, target in (("out", self.outside), ("etc", Path("/etc"))):
            link = self.allowed / name
            if not link.is_symlink():
                link.symlink_to(target)
        self.vtysh = str(self.root / "no-such-vtysh")  # the service's program: never exists
        self.access = HostAccess(allowed_dirs=(self.allowed,), programs={"vtysh": self.vtysh})

    def paths(self) -> st.SearchStrategy[str]:
        a, o = str(self.allowed), str(self.outside)
        names = st.sampled_from(["x.conf", "state.jsonl", "bird.ctl", "sock", "plain.txt"])
        return st.one_of(
            names.map(lambda n: f"{a}/{n}"),
            names.map(lambda n: f"{a}/sub/{n}"),
            st.just(a + "/sub"),
            st.just(a),
            names.map(lambda n: f"{o}/{n}"),
            st.just(f"{o}/secret"),
            names.map(lambda n: f"{a}/out/{n}"),  # through a symlink
            st.just(f"{a}/etc/passwd"),
            names.map(lambda n: f"{a}/../outside/{n}"),
            names.map(lambda n: f"{a}/sub/../../outside/{n}"),
            st.sampled_from(["/etc/passwd", "/etc/shadow", "/bin/sh", "/root/.ssh/id_rsa"]),
            st.sampled_from(["relative.conf", "./x", "../x", "", "~/x"]),
        )


def _inside(path: str, base: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(base)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with tempfile.TemporaryDirectory(prefix="sluice-prop-") as root:
        yield Sandbox(Path(root))


# ---------------------------------------------------------------- configs


def configs(box: Sandbox) -> st.SearchStrategy[AdapterConfig]:
    path = box.paths()
    unix = path.map(lambda p: f"unix://{p}")
    program = st.dictionaries(
        st.sampled_from(["vtysh", "birdc", "gobgp", "exabgp", "command", "program", "binary"]),
        st.sampled_from(["/bin/sh", "/usr/bin/env", box.vtysh, "sh"]),
        max_size=1,
    )

    def cfg(adapter_type: str, endpoint: st.SearchStrategy[str], **fields: Any) -> Any:
        return st.builds(
            lambda ep, conf, prog: AdapterConfig(
                name="prop", adapter_type=adapter_type, endpoint=ep, config={**conf, **prog}
            ),
            endpoint,
            st.fixed_dictionaries({}, optional=fields),
            program,
        )

    none = st.just("")
    timeout = st.just(0.5)
    return st.one_of(
        cfg("fake", none, state_file=path),
        cfg("log", none, path=path),
        cfg("bird2", st.one_of(none, unix), socket=path, include_file=path, timeout_s=timeout),
        cfg(
            "frr",
            none,
            asn=st.just(65001),
            vty_socket_dir=path,
            pathspace=st.just("r1"),
            timeout_s=timeout,
        ),
        cfg("exabgp", unix, timeout=timeout),
        cfg("gobgp", unix, timeout=timeout),
        st.builds(
            lambda ca: AdapterConfig(
                name="prop",
                adapter_type="f5",
                endpoint="https://f5.example.net",
                auth_token="pw",
                config={"username": "u", "ca_file": ca},
            ),
            path,
        ),
    )


def setting_paths(adapter: Adapter) -> list[str]:
    """Every path-like value of the adapter's validated settings."""
    data = adapter.settings.model_dump(mode="python")  # type: ignore[attr-defined]
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, Path):
            out.append(str(value))
        elif (
            key == "endpoint"
            and isinstance(value, str)
            and value.startswith("unix://")
            # bird2 and frr only read their endpoint as a default for socket/vty_socket_dir
            and "socket" not in data
            and "vty_socket_dir" not in data
        ):
            out.append(value.removeprefix("unix://"))
    return out


async def drive(adapter: Adapter) -> None:
    ref = RuleRef(1, build_intent({"kind": "blackhole", "prefix": "203.0.113.9/32"}))
    for call in (
        lambda: adapter.announce([ref]),
        adapter.active,
        adapter.check,
        lambda: adapter.withdraw([ref]),
    ):
        # refusing or failing is fine; reaching outside is not
        with contextlib.suppress(SluiceError, OSError, TimeoutError):
            await asyncio.wait_for(call(), 10)
    await adapter.close()


def run_checked(box: Sandbox, config: AdapterConfig) -> tuple[bool, list[tuple[str, str]]]:
    """Create and drive ``config`` under the audit hook; assert nothing reached outside.

    Returns whether the adapter was built, and what the hook recorded.
    """
    _install_hook()
    events: list[tuple[str, str]] = []
    _RECORDING.append(events)
    try:
        try:
            adapter = Registry(access=box.access).create(config)
        except AdapterError:
            adapter = None
        if adapter is not None:
            for p in setting_paths(adapter):
                assert _inside(p, box.allowed), (config, p)
            asyncio.run(drive(adapter))
    finally:
        _RECORDING.pop()
    named = {v for v in config.config.values() if isinstance(v, str)}
    named |= {config.endpoint.removeprefix("unix://")}
    for kind, path in events:
        if kind == "exec":
            assert path == box.vtysh, (config, path)
            continue
        full = str(Path.cwd() / path)  # (an absolute path stays itself)
        if _inside(full, box.root):
            assert _inside(full, box.allowed), (config, kind, path)
        else:
            assert path not in named, (config, kind, path)
    return adapter is not None, events


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_setting_reaches_outside_the_allowed_directories(
    sandbox: Sandbox, data: st.DataObject
) -> None:
    run_checked(sandbox, data.draw(configs(sandbox)))


def test_the_hook_sees_what_legitimate_settings_do(sandbox: Sandbox) -> None:
    """The property is not vacuous: settings inside build, and their I/O is recorded."""
    a = sandbox.allowed / "sub"
    cases = {
        "fake": AdapterConfig(
            name="p", adapter_type="fake", config={"state_file": f"{a}/fake.jsonl"}
        ),
        "log": AdapterConfig(name="p", adapter_type="log", config={"path": f"{a}/log.jsonl"}),
        "bird2": AdapterConfig(
            name="p",
            adapter_type="bird2",
            config={"socket": f"{a}/bird.ctl", "include_file": f"{a}/rtbh.conf"},
        ),
        "frr": AdapterConfig(
            name="p", adapter_type="frr", config={"asn": 65001, "vty_socket_dir": str(a)}
        ),
        "exabgp": AdapterConfig(name="p", adapter_type="exabgp", endpoint=f"unix://{a}/exa.sock"),
    }
    for kind, config in cases.items():
        built, events = run_checked(sandbox, config)
        assert built, kind
        assert events, f"{kind}: the audit hook recorded nothing"
        if kind == "frr":
            assert ("exec", sandbox.vtysh) in events
        if kind == "exabgp":
            assert ("connect", f"{a}/exa.sock") in events
