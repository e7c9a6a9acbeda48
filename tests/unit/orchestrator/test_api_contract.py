"""Schemathesis against the application in process: every operation, bounded examples.

For every operation, valid and invalid generated requests (with the admin token, or
without it where the invalid request leaves it out) must get no server error, a
documented status, an answer matching its documented schema, content type and headers,
and invalid input must be refused. Every path answers an undeclared method with 405 and
an ``Allow`` header naming exactly its methods. All findings are collected and reported together.

Left out: revoking tokens (a generated id would revoke the caller's own token), the
event stream (its answer never ends; its parameters are covered by unit tests), and
schemathesis' ``positive_data_acceptance``: the document describes shapes, and a value of
the right shape can still be refused for its meaning (``target_ip: "0"``) with a
documented 422.

(Schemathesis' own pytest integration does not run under pytest 9 yet, so the test drives
its strategies and checks itself.)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Ok
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi
from schemathesis.schemas import APIOperation, BaseSchema
from schemathesis.specs.openapi.checks import positive_data_acceptance

from orchestrator.api.app import create_app
from orchestrator.service import Service
from tests.unit.orchestrator.conftest import ADMIN, policy, settings_for

EXAMPLES = 6  # per operation and mode; the whole run stays under 2 minutes on 2 slow cores
SKIP = {
    ("DELETE", "/api/v1/workspace/tokens/{token_id}"),  # would revoke the caller's token
    ("GET", "/api/v1/events/stream"),  # an answer that never ends (its parameters: unit tests)
}
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaseSchema]:
    tmp: Path = tmp_path_factory.mktemp("contract")
    svc = Service(
        settings_for(
            tmp,
            admin_token=ADMIN,
            api_wait_seconds=0,  # do not wait for adapters: hundreds of requests
            rate_limit_per_minute=10**9,
        ),
        policy=policy(cooldown_seconds=0),
    )
    # the app's lifespan starts the service in schemathesis' own event loop
    app = create_app(svc, run_scheduler=False)
    # the token goes where the document declares the bearer scheme, so generated requests
    # that leave it out (or spoil it) on purpose stay without it
    config = SchemathesisConfig.from_dict({"auth": {"openapi": {"apiToken": {"bearer": ADMIN}}}})
    yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app, config=config)
    asgi.shutdown_lifespans()


def _findings(exc: BaseException) -> list[str]:
    group = getattr(exc, "exceptions", None)
    if group:
        return [line for sub in group for line in _findings(sub)]
    return [f"{type(exc).__name__}: {exc}".split("\n\nReproduce")[0][:1500]]


def _run(op: APIOperation[Any, Any, Any, Any], mode: GenerationMode, found: dict[str, str]) -> None:
    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case[Any]) -> None:
        try:
            case.call_and_validate(excluded_checks=[positive_data_acceptance])
        except (Exception, BaseExceptionGroup) as exc:  # every finding is kept and reported
            for text in _findings(exc):
                key = f"{op.label} [{mode.value}]: " + text.split("\n")[0]
                found.setdefault(key, f"{text}\n  request: {case.as_curl_command()}")

    with contextlib.suppress(Unsatisfiable):  # no invalid request without inputs
        run()


def test_every_operation_keeps_its_contract(api_schema: BaseSchema) -> None:
    found: dict[str, str] = {}
    operations = [r.ok() for r in api_schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) > 30
    for op in operations:
        if (op.method.upper(), op.path) in SKIP:
            continue
        _run(op, GenerationMode.POSITIVE, found)
        _run(op, GenerationMode.NEGATIVE, found)
    assert not found, f"{len(found)} distinct findings:\n\n" + "\n\n".join(
        f"* {k}\n{v}" for k, v in sorted(found.items())
    )


def _methods(raw: dict[str, Any], concrete: str) -> set[str]:
    """Every method some documented path template serves at ``concrete``."""
    methods: set[str] = set()
    for template, item in raw["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), concrete):
            methods |= {m.upper() for m in item if m in ("get", "post", "put", "patch", "delete")}
    return methods


def test_undeclared_methods_get_405_with_allow(api_schema: BaseSchema) -> None:
    raw: dict[str, Any] = api_schema.raw_schema
    client = asgi.get_client(api_schema.app)
    with client as http:
        for path in raw["paths"]:
            concrete = re.sub(r"\{[^}]+\}", "1", path)
            declared = _methods(raw, concrete)
            expected = sorted(declared | ({"HEAD"} if "GET" in declared else set()))
            for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - declared:
                r = http.request(method, "http://testserver" + concrete, headers=AUTH)
                assert r.status_code == 405, (method, path, r.text)
                assert r.json()["error"]["code"] == "method_not_allowed"
                assert sorted(r.headers["allow"].split(", ")) == expected, (method, path)
