"""The channels' outbound connections, made on an event loop of their own.

The service's main event loop also runs the signal intake, whose group commits hold it
for a while under a burst of signals (the store's calls are synchronous). A message's
HTTP exchange needs several turns of a loop (connect, send, read the answer); made on the
main loop, each turn would wait for the intake, and a burst of a hundred incidents turned
one Slack post into seconds. Here they run on a dedicated thread's loop: the main loop
only hands over the message and, later, takes the result. The egress policy is the same
(each :class:`~orchestrator.channels.transports.Egress` is rebuilt there from its policy:
an httpx client belongs to the loop it is used on).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Mapping
from typing import Any

from adapters.egress import EgressPolicy
from orchestrator.channels.transports import TYPES, Egress, Message


class SendLoop:
    """At most ``concurrency`` messages in flight, bounded here (where they are sent): a
    bound held on the main loop would stay held until that loop came round to the result."""

    def __init__(self, concurrency: int = 32) -> None:
        self.concurrency = concurrency
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: dict[tuple[EgressPolicy, float], Egress] = {}

    def start(self, warm: Egress | None = None) -> None:
        """Start the loop; ``warm``: build that policy's HTTP client now (loading the CA
        bundle takes tens of milliseconds, better spent before the first incident)."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="sluice-channel-send", daemon=True)
        self._thread.start()
        ready.wait(10)
        self._loop = loop
        if warm is not None:
            asyncio.run_coroutine_threadsafe(self._warm(warm), loop).result(30)

    async def _warm(self, egress: Egress) -> None:
        self._egress((egress.policy, egress.timeout)).client()

    def _egress(self, how: tuple[EgressPolicy, float]) -> Egress:
        egress = self._clients.get(how)
        if egress is None:
            egress = self._clients[how] = Egress(*how, connections=self.concurrency)
        return egress

    async def send(
        self,
        egress: Egress,
        kind: str,
        config: Mapping[str, Any],
        secrets: Mapping[str, Any],
        msg: Message,
    ) -> dict[str, Any]:
        """Send one message under ``egress``'s policy; on the send loop when it runs."""
        fut = self.submit(egress, kind, config, secrets, msg)
        if fut is None:
            return await TYPES[kind].send(egress, config, secrets, msg)
        return await asyncio.wrap_future(fut)  # cancelling this cancels the send there

    def submit(
        self,
        egress: Egress,
        kind: str,
        config: Mapping[str, Any],
        secrets: Mapping[str, Any],
        msg: Message,
    ) -> concurrent.futures.Future[dict[str, Any]] | None:
        """Start sending now, from synchronous code (None: the send loop is not running).

        The channel consumer hands the first attempts over this way as soon as their rows
        are committed, without waiting for the main loop to run the delivery tasks."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return None
        return asyncio.run_coroutine_threadsafe(
            self._send((egress.policy, egress.timeout), kind, config, secrets, msg), loop
        )

    async def _send(
        self,
        how: tuple[EgressPolicy, float],
        kind: str,
        config: Mapping[str, Any],
        secrets: Mapping[str, Any],
        msg: Message,
    ) -> dict[str, Any]:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        async with self._sem:
            return await TYPES[kind].send(self._egress(how), config, secrets, msg)

    async def _close(self) -> None:
        for egress in self._clients.values():
            with contextlib.suppress(Exception):
                await egress.aclose()
        self._clients.clear()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
