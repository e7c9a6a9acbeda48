"""The whole path with real ExaBGP: service -> dispatcher -> exabgp adapter -> bridge -> BIRD.

Same scenario as test_gobgp_service.py: announce, survive a speaker restart through
reconciliation, expire on TTL, withdraw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from labs.exabgp import ExaBgpSpeaker
from labs.topology import Topology, running
from tests.integration.conftest import RECEIVER_BINARIES, require_lab
from tests.integration.test_gobgp_service import service_round_trip

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module")
def exabgp_topology() -> Iterator[Topology]:
    require_lab("exabgp", *RECEIVER_BINARIES)
    with running(ExaBgpSpeaker(), receivers=("bird",)) as topo:
        yield topo


def test_rule_lifecycle_through_exabgp(exabgp_topology: Topology, tmp_path: Path) -> None:
    asyncio.run(service_round_trip(exabgp_topology, tmp_path))
