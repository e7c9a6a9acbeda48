"""The generated GoBGP modules, with a clear error when ``make stubs`` has not run."""

from __future__ import annotations

from typing import Any

from policies.errors import AdapterConfigInvalid

try:
    from adapters.gobgp._generated import attribute_pb2, gobgp_pb2, gobgp_pb2_grpc
except ImportError as exc:  # pragma: no cover - exercised only on a fresh checkout
    raise AdapterConfigInvalid(
        "the GoBGP adapter needs its gRPC stubs: run `make stubs` (or "
        "`python -m adapters.gobgp.build_stubs`) first",
        code="gobgp_stubs_missing",
    ) from exc

api: Any = gobgp_pb2
attr: Any = attribute_pb2
grpc_api: Any = gobgp_pb2_grpc

__all__ = ["api", "attr", "grpc_api"]
