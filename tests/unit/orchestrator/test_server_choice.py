"""Which HTTP parser and event loop ``sluice serve`` runs on (orchestrator.api.server)."""

from __future__ import annotations

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orchestrator.api import server
from orchestrator.settings import Settings
from policies.errors import SluiceError


async def _app(scope: object, receive: object, send: object) -> None:  # never called
    raise AssertionError


def test_auto_takes_httptools_and_uvloop() -> None:
    # both are dependencies of the project: installed wherever it is
    assert server.choices(Settings()) == ("httptools", "uvloop")
    cfg = server.config(_app, Settings(), log_level="warning")
    assert cfg.loop == "uvloop"
    assert isinstance(cfg.http, type) and issubclass(cfg.http, HttpToolsProtocol)


def test_named_choices_are_taken() -> None:
    settings = Settings(http_parser="h11", event_loop="asyncio")
    assert server.choices(settings) == ("h11", "asyncio")
    cfg = server.config(_app, settings, log_level="warning")
    assert cfg.loop == "asyncio"
    assert isinstance(cfg.http, type) and issubclass(cfg.http, H11Protocol)
    assert cfg.h11_max_incomplete_event_size == settings.http_max_header_bytes


def test_auto_falls_back_without_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "installed", lambda module: False)
    assert server.choices(Settings()) == ("h11", "asyncio")


@pytest.mark.parametrize(
    ("setting", "value"), [("http_parser", "httptools"), ("event_loop", "uvloop")]
)
def test_naming_a_missing_package_is_refused(
    monkeypatch: pytest.MonkeyPatch, setting: str, value: str
) -> None:
    monkeypatch.setattr(server, "installed", lambda module: False)
    with pytest.raises(SluiceError, match=f"{setting} is '{value}' but the Python package"):
        server.choices(Settings.model_validate({setting: value}))


def test_unknown_choices_are_refused() -> None:
    with pytest.raises(ValueError, match="http_parser"):
        Settings.model_validate({"http_parser": "picohttp"})
