"""Transports from the adapter to the bridge: a unix socket (JSON lines) or HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import httpx
from pydantic import SecretStr

from adapters.egress import EgressPolicy, EgressRefused, egress_client
from policies.errors import AdapterRefused, AdapterUnavailable


class BridgeClient(Protocol):
    async def request(self, body: dict[str, Any], wait: float) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def _reply(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise AdapterRefused(f"ExaBGP bridge at {where} answered something that is not JSON")
    if not data.get("ok", False) and "error" in data:
        err = data["error"]
        raise AdapterRefused(f"ExaBGP bridge at {where}: {err.get('message', err)}")
    return data


class UnixClient:
    """One connection, one request at a time; reconnects when the bridge was restarted."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._conn is None:
            self._conn = await asyncio.open_unix_connection(self.path, limit=64 * 1024 * 1024)
        return self._conn

    async def _drop(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
        self._conn = None

    async def request(self, body: dict[str, Any], wait: float) -> dict[str, Any]:
        payload = json.dumps(body).encode() + b"\n"
        async with self._lock:
            for attempt in (1, 2):
                fresh = self._conn is None
                try:
                    reader, writer = await asyncio.wait_for(self._connect(), wait)
                    writer.write(payload)
                    await writer.drain()
                    line = await asyncio.wait_for(reader.readline(), wait)
                    if not line:
                        raise ConnectionResetError("the bridge closed the connection")
                    return _reply(json.loads(line), f"unix://{self.path}")
                except TimeoutError:
                    await self._drop()
                    raise AdapterUnavailable(
                        f"ExaBGP bridge at unix://{self.path} did not answer within {wait:g} s"
                    ) from None
                except OSError as exc:
                    await self._drop()
                    # a kept connection may be stale (bridge respawned): retry once, fresh
                    if fresh or attempt == 2:
                        raise AdapterUnavailable(
                            f"cannot reach the ExaBGP bridge at unix://{self.path}: "
                            f"{exc.strerror or exc}"
                        ) from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


class HttpClient:
    """The bridge over HTTP, through the service's egress policy (no redirects followed)."""

    def __init__(self, url: str, token: SecretStr | None, egress: EgressPolicy) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self._client = egress_client(egress, headers=headers)

    async def request(self, body: dict[str, Any], wait: float) -> dict[str, Any]:
        op = body.get("op", "commands")
        try:
            if op == "commands":
                resp = await self._client.post(
                    f"{self.url}/commands", json={"commands": body["commands"]}, timeout=wait
                )
            else:
                resp = await self._client.get(f"{self.url}/{op}", timeout=wait)
        except EgressRefused as exc:
            raise AdapterRefused(
                f"ExaBGP bridge at {self.url}: {exc}", code="egress_refused"
            ) from None
        except httpx.TimeoutException:
            raise AdapterUnavailable(
                f"ExaBGP bridge at {self.url} did not answer within {wait:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise AdapterUnavailable(
                f"cannot reach the ExaBGP bridge at {self.url}: {exc}"
            ) from None
        if resp.status_code == 401:
            raise AdapterRefused(f"ExaBGP bridge at {self.url} refused the token (HTTP 401)")
        if resp.status_code >= 500:
            raise AdapterUnavailable(f"ExaBGP bridge at {self.url}: HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            data = None
        return _reply(data, self.url)

    async def close(self) -> None:
        await self._client.aclose()
