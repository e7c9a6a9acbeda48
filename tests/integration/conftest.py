"""Lab fixtures for integration tests: real daemons in network namespaces.

* ``lab``: a bare :class:`labs.netns.Lab` for one test (namespaces, links, processes),
  torn down after the test whatever happens.
* ``require_lab(*binaries)``: skip (or fail under ``SLUICE_REQUIRE_LAB=1``) without root,
  ``ip`` or the given daemon binaries.
* ``bird_topology`` / ``frr_topology``: module-scoped topologies (BIRD 2 / FRR speaker,
  BIRD and FRR receivers) shared by the tests of one module; tests must leave the speaker
  empty again (withdraw what they announced).

Speaker kinds of other modules plug in the same way::

    @pytest.fixture(scope="module")
    def gobgp_topology() -> Iterator[Topology]:
        require_lab("gobgpd", *RECEIVER_BINARIES)
        with running(GoBgpSpeaker()) as topo:
            yield topo

After the session, no namespace this test process created may be left: the autouse
``no_leftover_namespaces`` fixture fails the run otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labs.netns import CREATED, Lab, list_netns
from labs.topology import BirdSpeaker, FrrSpeaker, Topology, running
from tests.conftest import need_binaries, need_root

BIRD_BINARIES = ("bird", "birdc")
FRR_BINARIES = ("/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "/usr/lib/frr/staticd", "vtysh")
RECEIVER_BINARIES = (*BIRD_BINARIES, *FRR_BINARIES)


def require_lab(*binaries: str) -> None:
    need_root()
    need_binaries("ip", *binaries)


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_lab()
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def bird_topology() -> Iterator[Topology]:
    require_lab(*RECEIVER_BINARIES)
    with running(BirdSpeaker()) as topo:
        yield topo


@pytest.fixture(scope="module")
def frr_topology() -> Iterator[Topology]:
    require_lab(*RECEIVER_BINARIES)
    with running(FrrSpeaker()) as topo:
        yield topo


@pytest.fixture(scope="session", autouse=True)
def no_leftover_namespaces() -> Iterator[None]:
    yield
    left = CREATED & set(list_netns())
    assert not left, f"namespaces left behind: {sorted(left)}"
