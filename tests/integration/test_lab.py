"""The lab harness itself: links carry traffic, and teardown leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labs.bird import BirdNode
from labs.netns import Lab, LabError, destroy_from_state, list_netns, netns_pids
from labs.peers import Neighbor
from tests.integration.conftest import BIRD_BINARIES, RECEIVER_BINARIES, require_lab

ECHO = (
    "import socket,sys;s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET);"
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind((sys.argv[1],7007));s.listen();"
    "c,_=s.accept();c.sendall(c.recv(100).upper())"
)
CLIENT = (
    "import socket,sys;c=socket.create_connection((sys.argv[1],7007),timeout=5);"
    "c.sendall(b'ping');print(c.recv(100).decode())"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return ""


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_link_carries_tcp_between_namespaces(lab: Lab, family: str) -> None:
    a, b = lab.namespace("a"), lab.namespace("b")
    link = lab.link(a, b)
    server_addr = link.b_v4 if family == "v4" else link.b_v6
    lab.spawn(b, [sys.executable, "-c", ECHO, server_addr], name="echo")
    deadline = time.monotonic() + 5
    while True:
        res = lab.run(a, [sys.executable, "-c", CLIENT, server_addr], check=False)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert res.stdout.strip() == "PING", res.stderr


def test_close_removes_namespaces_processes_and_workdir_even_on_error() -> None:
    require_lab()
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        ns = lab.namespace("x")
        lab.namespace("y")
        lab.link(ns, lab.namespaces["y"])
        # a process that ignores SIGTERM and forks a child out of its group
        proc = lab.spawn(
            ns,
            ["sh", "-c", "trap '' TERM; setsid sleep 300 & sleep 300"],
            name="stubborn",
        )
        time.sleep(0.2)
        pids = netns_pids(ns.netns)
        assert proc.pid in pids and len(pids) >= 2
        workdir = lab.dir
        names = [n.netns for n in lab.namespaces.values()]
        raise RuntimeError("boom")
    assert not set(names) & set(list_netns())
    assert not any(_alive(p) for p in pids)
    assert not workdir.exists()


def test_state_lets_another_process_tear_the_lab_down() -> None:
    require_lab()
    lab = Lab()
    try:
        ns = lab.namespace("s")
        proc = lab.spawn(ns, ["sleep", "300"], name="sleeper")
        state = lab.state()
        lab.detach()  # as `labs.cli up` does: the lab outlives this object
        assert ns.netns in list_netns()
        destroy_from_state(state)
        assert ns.netns not in list_netns()
        proc.popen.wait(timeout=60)  # a deadline, not a speed assumption: it is killed
        assert not Path(state["workdir"]).exists()
    finally:
        lab._closed = False
        lab.close()


def test_a_daemon_that_fails_to_start_says_why(lab: Lab) -> None:
    require_lab(*BIRD_BINARIES)
    ns = lab.namespace("bad")
    include = lab.path("broken.conf")
    include.write_text("this is not bird config;\n")
    node = BirdNode(
        lab,
        ns,
        name="broken",
        router_id="192.0.2.1",
        asn=65001,
        neighbors=[Neighbor("p", "192.0.2.2", 65002, "192.0.2.1")],
        include=include,
    )
    with pytest.raises(LabError, match=r"(?s)exited.*syntax error"):
        node.start(timeout=5)


def test_same_namespace_name_twice_is_an_error(lab: Lab) -> None:
    lab.namespace("dup")
    with pytest.raises(LabError, match="already exists"):
        lab.namespace("dup")


@pytest.mark.parametrize("speaker", ["bird", "frr"])
def test_cli_up_status_down_from_separate_processes(tmp_path: Path, speaker: str) -> None:
    require_lab(*RECEIVER_BINARIES)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "labs.cli", *args, "--state-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=90,
        )

    started = time.monotonic()
    res = cli("up", "--speaker", speaker, "--json")
    try:
        assert res.returncode == 0, res.stderr
        assert time.monotonic() - started < 60
        state = json.loads(res.stdout)
        assert state["adapter"]["adapter_type"] == {"bird": "bird2", "frr": "frr"}[speaker]
        namespaces = state["lab"]["namespaces"]
        assert set(namespaces) <= set(list_netns())
        again = cli("up")
        assert again.returncode == 1 and "already up" in again.stderr
        st = cli("status", "--json")
        assert st.returncode == 0, st.stderr
        report = json.loads(st.stdout)
        assert all(report["namespaces"].values())
        assert report["adapter_health"]["ok"] is True
        assert set(report["adapter_health"]["sessions"].values()) == {"established"}
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert not set(namespaces) & set(list_netns())
    assert not Path(state["lab"]["workdir"]).exists()
    assert cli("status").returncode == 1
