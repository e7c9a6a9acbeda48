"""The containerlab topologies parse, reference files that exist, and match the lab's configs."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from labs.bird import render_config
from labs.frr import render_bgpd
from labs.peers import Neighbor
from tests.conftest import need_binaries

CLAB = Path(__file__).resolve().parents[3] / "labs" / "containerlab"
FILES = sorted(CLAB.glob("*.clab.yml"))
IMAGE = re.compile(r"^(?:[a-z0-9.-]+/)*(?P<name>[a-z0-9._-]+):[A-Za-z0-9._-]+$")
KNOWN_IMAGES = {"bird", "frr"}
ENDPOINT = re.compile(r"^(?P<node>[\w-]+):(?P<iface>eth\d+)$")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_there_are_topologies() -> None:
    assert {f.name for f in FILES} >= {"bird-speaker.clab.yml", "frr-speaker.clab.yml"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_topology_is_well_formed(path: Path) -> None:
    data = load(path)
    assert isinstance(data.get("name"), str) and data["name"]
    nodes: dict[str, Any] = data["topology"]["nodes"]
    assert {"speaker", "bird", "frr"} <= set(nodes)
    used: dict[str, set[str]] = {n: set() for n in nodes}
    for link in data["topology"]["links"]:
        ends = link["endpoints"]
        assert len(ends) == 2
        for end in ends:
            m = ENDPOINT.match(end)
            assert m, end
            assert m.group("node") in nodes, f"link to unknown node {end}"
            assert m.group("iface") not in used[m.group("node")], f"{end} used twice"
            used[m.group("node")].add(m.group("iface"))
    for name, node in nodes.items():
        assert node["kind"] == "linux", name
        m = IMAGE.match(node["image"])
        assert m and m.group("name") in KNOWN_IMAGES, node["image"]
        for bind in node.get("binds", []):
            host, _, rest = bind.partition(":")
            assert rest.startswith("/"), bind
            if host.startswith("configs/"):
                assert (CLAB / host).exists(), f"{path.name}: {bind} refers to a missing file"
            else:
                assert host.startswith("run/"), f"{bind}: host paths are configs/ or run/"
        for cmd in node.get("exec", []):
            dev = re.search(r"dev (eth\d+)", cmd)
            assert dev and dev.group(1) in used[name], f"{name}: {cmd} on an unlinked interface"
        if "bird" in node["image"]:
            assert "-c /etc/bird/bird.conf" in node["cmd"]


def _neighbors() -> tuple[list[Neighbor], dict[str, list[Neighbor]]]:
    links = {
        "bird": ("192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2", 65010),
        "frr": ("192.0.2.9", "192.0.2.10", "2001:db8:0:1::1", "2001:db8:0:1::2", 65011),
    }
    speaker: list[Neighbor] = []
    receivers: dict[str, list[Neighbor]] = {}
    for name, (a4, b4, a6, b6, asn) in links.items():
        speaker += [Neighbor(f"{name}4", b4, asn, a4), Neighbor(f"{name}6", b6, asn, a6)]
        receivers[name] = [Neighbor("spk4", a4, 65001, b4), Neighbor("spk6", a6, 65001, b6)]
    return speaker, receivers


def test_configs_match_the_namespace_lab() -> None:
    speaker, receivers = _neighbors()
    cfg = CLAB / "configs"
    assert (cfg / "bird/bird.conf").read_text() == render_config(
        "192.0.2.2", 65010, receivers["bird"]
    )
    assert (cfg / "frr/frr.conf").read_text() == "frr defaults traditional\n" + render_bgpd(
        "frr", "192.0.2.10", 65011, receivers["frr"]
    )
    assert (cfg / "speaker-bird/bird.conf").read_text() == render_config(
        "192.0.2.1", 65001, speaker, include=Path("/etc/bird/sluice/sluice-routes.conf")
    )
    assert (cfg / "speaker-frr/frr.conf").read_text() == (
        "frr defaults traditional\n" + render_bgpd("speaker", "192.0.2.1", 65001, speaker)
    )
    assert "staticd=yes" in (cfg / "speaker-frr/daemons").read_text()


def test_daemons_accept_the_configs(tmp_path: Path) -> None:
    need_binaries("bird", "/usr/lib/frr/bgpd")
    cfg = CLAB / "configs"
    for conf in (cfg / "bird/bird.conf", cfg / "speaker-bird/bird.conf"):
        text = conf.read_text().replace("/etc/bird/sluice/", f"{cfg / 'speaker-bird' / 'sluice'}/")
        local = tmp_path / conf.parent.name / "bird.conf"
        local.parent.mkdir()
        local.write_text(text)
        res = subprocess.run(
            ["bird", "-p", "-c", str(local)], capture_output=True, text=True, check=False
        )
        assert res.returncode == 0, f"{conf}: {res.stderr}"
    bgpd = shutil.which("bgpd") or "/usr/lib/frr/bgpd"
    # bgpd drops to user frr before it reads the file: check a copy that user can read,
    # whatever the permissions of the checkout (a 0700 temporary clone is common)
    readable = Path(tempfile.mkdtemp(prefix="sluice-clab-"))
    readable.chmod(0o755)
    try:
        for conf in (cfg / "frr/frr.conf", cfg / "speaker-frr/frr.conf"):
            local = readable / f"{conf.parent.name}.conf"
            local.write_text(conf.read_text())
            local.chmod(0o644)
            res = subprocess.run(
                [bgpd, "-C", "-f", str(local)], capture_output=True, text=True, check=False
            )
            out = res.stdout + res.stderr
            # bgpd -C exits 0 even when it rejects lines; it logs them as [EC ...] errors
            assert res.returncode == 0 and not re.search(r"\[EC \d+\]", out), f"{conf}: {out}"
    finally:
        shutil.rmtree(readable, ignore_errors=True)
