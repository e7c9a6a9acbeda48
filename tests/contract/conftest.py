"""The contract suite's harness fixture: one live backend per adapter type, module-wide.

``harness`` is parametrized over every adapter type the ``sluice.adapters`` entry points
register, and scoped to the module so pytest groups the tests by adapter type: each
daemon or fake server starts once per kind and is torn down before the next kind starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.base import Registry
from tests.contract.harnesses import Harness, open_harness


@pytest.fixture(scope="module", params=Registry().names())
def harness(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    adapter_type: str = request.param
    tmp: Path = tmp_path_factory.mktemp(f"contract-{adapter_type}")
    with open_harness(adapter_type, tmp) as h:
        yield h
