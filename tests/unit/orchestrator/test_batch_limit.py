"""Adapters that declare larger batches (adapters.base.LargeBatches) get them."""

from __future__ import annotations

from typing import Any

from adapters.base import AdapterConfig, LargeBatches
from adapters.exabgp.adapter import ExaBgpAdapter
from adapters.frr.adapter import FrrAdapter
from adapters.gobgp.adapter import GoBgpAdapter
from tests.hostaccess import LOOPBACK
from tests.unit.orchestrator.conftest import add_fake


async def test_dispatcher_hands_a_large_batch_adapter_its_limit(make_service: Any) -> None:
    svc = await make_service(batch_size=1000)
    aid, fake = await add_fake(svc)
    assert not isinstance(fake, LargeBatches)
    assert svc.dispatcher.batch_limit(aid) == 1000
    fake.batch_limit = 5000  # type: ignore[attr-defined]  # now it declares the protocol
    assert isinstance(fake, LargeBatches)
    assert svc.dispatcher.batch_limit(aid) == 5000
    fake.batch_limit = 10  # never below the service's size
    assert svc.dispatcher.batch_limit(aid) == 1000


def test_exabgp_and_gobgp_declare_large_batches_and_frr_does_not() -> None:
    exa = ExaBgpAdapter.from_config(
        AdapterConfig(
            name="e", adapter_type="exabgp", endpoint="http://127.0.0.1:5000", access=LOOPBACK
        )
    )
    assert isinstance(exa, LargeBatches) and exa.batch_limit >= 5000
    assert GoBgpAdapter.batch_limit >= 5000
    # FRR: one vtysh call per batch with a 10 s timeout; 1,000 at a time
    assert "batch_limit" not in vars(FrrAdapter)
