"""``sluice agent``: register, observe, detect, report, and run firewall jobs.

Four loops share one HTTP client:

* **sample** (every second): read the kernel's counters (:mod:`.traffic`), queue a metrics
  batch, feed the detector and queue its incident events;
* **send**: deliver queued incident events first, then metrics. While the service is
  unreachable both queues are bounded (oldest dropped first, counted) and retried with
  back-off; unsent incident updates collapse into the newest (peaks are cumulative), so an
  outage keeps each attack's open, latest state and resolve; a 4xx answer drops that one
  item (it would never succeed);
* **heartbeat** (every 30 s);
* **jobs**: long poll ``/agent/jobs``; each job is recorded before it is applied and
  after, so a job delivered twice, or again after a restart, is never applied twice;
* **captures**: a sampled ring keeps recent packets; when an incident opens, the ring and
  a bounded capture (:mod:`.capture`) are written to the state directory and uploaded to
  ``/agent/pcaps`` for that incident; files the service could not take yet are retried
  every 30 s (at most five wait on disk).

No request ever reaches a shell: a job names a profile and checked rules, the agent
renders them itself (:mod:`.render`) and runs the firewall tools with argument lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import platform
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from orchestrator.agent.capture import PcapSpool, SampledRing, capture, sha256_of
from orchestrator.agent.detect import Detector, Event, Thresholds
from orchestrator.agent.firewall import Firewall
from orchestrator.agent.grammar import check_custom
from orchestrator.agent.profiles import PROFILES
from orchestrator.agent.render import RuleSet
from orchestrator.agent.state import AgentState
from orchestrator.agent.traffic import Observer, Reading, Sample, conn_count, rates
from policies.errors import SluiceError

log = logging.getLogger("sluice.agent")
AGENT_VERSION = "0.1.0"


class AgentError(SluiceError):
    code = "agent_error"


@dataclass
class AgentConfig:
    url: str
    state_dir: Path
    interface: str
    name: str
    ip: str
    deploy_token: str | None = None
    location: str | None = None
    management: list[str] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)
    heartbeat_every: float = 30.0
    metrics_every: float = 1.0
    poll_wait: float = 25.0
    max_metrics: int = 600  # ten minutes of per-second batches
    max_incident_events: int = 200
    capture: bool = True
    capture_packets: int = 20_000
    capture_bytes: int = 8 << 20
    capture_seconds: float = 10.0


def _service_address(url: str) -> list[str]:
    """The service's address(es): the agent's own lifeline is never dropped by a profile."""
    host = urlsplit(url).hostname or ""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        return sorted({str(a[4][0]) for a in socket.getaddrinfo(host, None)})
    except OSError:
        return []


class Agent:
    def __init__(self, cfg: AgentConfig, *, observer: Observer | None = None) -> None:
        self.cfg = cfg
        self.state = AgentState.load(cfg.state_dir)
        self.observer = observer or Observer(cfg.interface)
        self.detector = Detector(cfg.thresholds, cfg.ip)
        self.metrics: deque[dict[str, Any]] = deque(maxlen=cfg.max_metrics)
        self.incidents: deque[Event] = deque(maxlen=cfg.max_incident_events)
        self.dropped = {"metrics": 0, "incidents": 0}
        self.incident_id: str | None = None
        self.started = time.monotonic()
        self.wake_sender = asyncio.Event()
        self.protected_extra = [*cfg.management, *_service_address(cfg.url)]
        self.client = httpx.AsyncClient(base_url=cfg.url.rstrip("/") + "/api/v1", timeout=10)
        self.spool = PcapSpool(cfg.state_dir / "pcaps")
        self.capture_task: asyncio.Task[None] | None = None
        self.ring: SampledRing | None = None

    # ------------------------------------------------------------ identity

    def _auth(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.state.node_key}",
            "X-Node-UUID": str(self.state.node_id),
        }

    async def register(self) -> None:
        """Register with the deploy token once; afterwards the stored node key is used."""
        if self.state.node_id and self.state.node_key:
            return
        if not self.cfg.deploy_token:
            raise AgentError("this agent is not registered yet: give it a deploy token")
        body = {
            "name": self.cfg.name,
            "ip": self.cfg.ip,
            "interface": self.cfg.interface,
            "os": f"{platform.system()} {platform.release()}"[:100],
        }
        if self.cfg.location:
            body["location"] = self.cfg.location
        while True:
            try:
                r = await self.client.post(
                    "/nodes",
                    json=body,
                    headers={"Authorization": f"Bearer {self.cfg.deploy_token}"},
                )
            except httpx.TransportError as exc:
                log.warning("registration: service unreachable (%s); retrying", exc)
                await asyncio.sleep(2)
                continue
            if r.status_code != 201:
                raise AgentError(f"registration refused: {r.status_code} {r.text[:300]}")
            doc = r.json()
            self.state.node_id, self.state.node_key = doc["node"]["id"], doc["api_key"]
            self.state.save()
            log.info("registered as node %s", self.state.node_id)
            return

    # ------------------------------------------------------------ sampling

    async def sample_loop(self, stop: asyncio.Event) -> None:
        prev: Reading = await asyncio.to_thread(self.observer.read, time.monotonic())
        tick = time.monotonic()
        while not stop.is_set():
            tick += self.cfg.metrics_every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, tick - time.monotonic()))
            if stop.is_set():
                return
            try:
                cur = await asyncio.to_thread(self.observer.read, time.monotonic())
            except SluiceError as exc:
                log.warning("cannot read traffic counters: %s", exc)
                continue
            self.observe(rates(prev, cur))
            prev = cur

    def observe(self, s: Sample) -> None:
        """Queue one metrics batch and the detector's event for sample ``s``."""
        self._queue(
            self.metrics,
            "metrics",
            {
                "pps": round(s.pps, 1),
                "bps": round(s.bps, 1),
                "tcp_pct": s.pct("tcp"),
                "udp_pct": s.pct("udp"),
                "icmp_pct": s.pct("icmp"),
                "conn_count": conn_count(),
                "recorded_at": datetime.now(UTC).isoformat(),
            },
        )
        if self.ring is not None:
            self.ring.set_rate(s.pps)
        ev = self.detector.feed(s)
        if ev is not None:
            log.info("attack %s: %s", ev.kind, ev.body)
            if ev.kind == "update" and self.incidents and self.incidents[-1].kind == "update":
                self.incidents[-1] = ev  # unsent: the newest update carries every peak
            else:
                self._queue(self.incidents, "incidents", ev)
        self.wake_sender.set()

    def _queue(self, q: deque[Any], name: str, item: Any) -> None:
        if q.maxlen is not None and len(q) == q.maxlen:
            self.dropped[name] += 1
        q.append(item)

    # ------------------------------------------------------------ sending

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response | None:
        """POST; None when the service is unreachable or failing (retry later)."""
        try:
            r = await self.client.post(path, json=body, headers=self._auth())
        except httpx.TransportError:
            return None
        if r.status_code >= 500 or r.status_code == 429:
            return None
        if r.status_code >= 400:
            log.warning("%s refused (%s): %s", path, r.status_code, r.text[:300])
        return r

    async def _send_incident(self, ev: Event) -> bool:
        if ev.kind == "resolve":
            if self.incident_id is None:
                return True
            r = await self._post(f"/agent/incidents/{self.incident_id}/resolve", {})
            if r is not None:
                self.incident_id = None
            return r is not None
        r = await self._post("/agent/incidents", ev.body)
        if r is not None and r.status_code == 200:
            self.incident_id = r.json().get("incident", {}).get("id") or self.incident_id
            if ev.kind == "open" and self.incident_id and self.cfg.capture:
                self._start_capture(self.incident_id)
        return r is not None

    # ------------------------------------------------------------ captures

    def _start_capture(self, incident_id: str) -> None:
        if self.capture_task is not None and not self.capture_task.done():
            return  # one capture at a time; it covers the attack's start
        self.capture_task = asyncio.create_task(self._capture(incident_id))

    async def _capture(self, incident_id: str) -> None:
        path = self.spool.path_for(incident_id)
        try:
            got = await asyncio.to_thread(
                capture,
                self.cfg.interface,
                path,
                max_packets=self.cfg.capture_packets,
                max_bytes=self.cfg.capture_bytes,
                max_seconds=self.cfg.capture_seconds,
                before=self.ring.snapshot() if self.ring is not None else (),
            )
        except OSError as exc:
            log.warning("capture for incident %s failed: %s", incident_id, exc)
            return
        log.info(
            "captured %d packets (%d bytes) in %.1f s for incident %s",
            got.packets,
            got.size,
            got.seconds,
            incident_id,
        )
        if got.packets == 0:
            path.unlink(missing_ok=True)
            return
        await self.upload_pending()

    async def upload_pending(self) -> None:
        """Upload spooled captures; keep those the service could take later."""
        for path in self.spool.pending():
            try:
                r = await self.client.post(
                    "/agent/pcaps",
                    params={"incident_id": path.stem, "filename": f"attack-{path.stem}.pcap"},
                    content=path.read_bytes(),  # bounded by capture_bytes
                    headers={
                        **self._auth(),
                        "Content-Type": "application/vnd.tcpdump.pcap",
                        "X-PCAP-SHA256": sha256_of(path),
                    },
                    timeout=60,
                )
            except (httpx.TransportError, OSError):
                return
            code = ""
            if r.status_code >= 400:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    code = str(r.json()["error"]["code"])
            if r.status_code in (200, 201):
                log.info("capture %s uploaded", path.name)
                path.unlink(missing_ok=True)
            elif r.status_code >= 500 or r.status_code == 429 or code == "not_found":
                log.warning("capture upload deferred (%s %s)", r.status_code, code)
                return  # the service is failing or does not take captures yet: keep it
            else:
                log.warning("capture %s refused (%s %s); dropped", path.name, r.status_code, code)
                path.unlink(missing_ok=True)

    async def upload_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 30)
            if not stop.is_set():
                await self.upload_pending()

    async def flush(self) -> bool:
        """Send what is queued, oldest first; False when the service could not be reached."""
        while self.incidents:
            if not await self._send_incident(self.incidents[0]):
                return False
            self.incidents.popleft()
        while self.metrics:
            if await self._post("/agent/metrics", self.metrics[0]) is None:
                return False
            self.metrics.popleft()
        return True

    async def send_loop(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            if await self.flush():
                backoff = 1.0
                self.wake_sender.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake_sender.wait(), 5)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 30.0)

    async def heartbeat_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._post(
                "/agent/heartbeat",
                {
                    "agent_version": AGENT_VERSION,
                    "uptime": round(time.monotonic() - self.started, 1),
                    "os": f"{platform.system()} {platform.release()}"[:100],
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.heartbeat_every)

    # ------------------------------------------------------------ jobs

    def apply_job(self, job: dict[str, Any]) -> tuple[str, str]:
        """Apply one job with the real firewall tools; (status, detail). Runs in a thread."""
        payload = job.get("payload") or {}
        suite = str(payload.get("suite", ""))
        try:
            fw = Firewall(suite)
            if job.get("kind") == "firewall.remove":
                return "succeeded", fw.remove()
            if job.get("kind") != "firewall.apply":
                return "failed", f"unknown job kind {job.get('kind')!r}"
            profile = PROFILES.get(str(payload.get("profile_id")))
            if profile is None:
                return "failed", f"unknown profile {payload.get('profile_id')!r}"
            custom = tuple(
                check_custom(suite, str(r.get("cmd", "")), str(r.get("title", "")))
                for r in payload.get("rules", [])
            )
            protected = tuple(
                str(p) for p in [*payload.get("protected", []), *self.protected_extra]
            )
            return "succeeded", fw.apply(RuleSet(profile.id, profile.rules, custom, protected))
        except SluiceError as exc:
            return "failed", exc.message
        except (OSError, ValueError) as exc:
            return "failed", f"{type(exc).__name__}: {exc}"

    async def handle_job(self, job: dict[str, Any]) -> None:
        job_id = str(job["id"])
        rec = self.state.jobs.get(job_id)
        if rec is None:
            self.state.start(job_id)
            status, detail = await asyncio.to_thread(self.apply_job, job)
            log.info("job %s %s: %s", job_id, status, detail)
            self.state.finish(job_id, status, detail)
        elif rec.get("phase") == "started":
            log.warning("job %s was interrupted by a restart; not applying it again", job_id)
            self.state.finish(
                job_id, "failed", "interrupted by an agent restart while applying; not re-applied"
            )
        else:
            log.info("job %s delivered again: already %s, not re-applied", job_id, rec["status"])
        await self.report(job_id)

    async def report(self, job_id: str) -> bool:
        rec = self.state.jobs[job_id]
        r = await self._post(
            f"/agent/jobs/{job_id}/result", {"status": rec["status"], "detail": rec["detail"]}
        )
        if r is None:
            return False
        self.state.reported(job_id)
        return True

    async def jobs_loop(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            for job_id in self.state.unreported():
                if not await self.report(job_id):
                    break
            try:
                r = await self.client.get(
                    "/agent/jobs",
                    params={"wait": self.cfg.poll_wait},
                    headers=self._auth(),
                    timeout=self.cfg.poll_wait + 15,
                )
                r.raise_for_status()
                jobs = r.json()["jobs"]
                backoff = 1.0
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log.debug("job poll failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            for job in jobs:
                await self.handle_job(job)

    # ------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        await self.register()
        await asyncio.to_thread(self.observer.install)
        if self.cfg.capture:
            try:
                self.ring = SampledRing(self.cfg.interface)
                self.ring.start()
            except OSError as exc:
                log.warning("no ring of recent packets on %s: %s", self.cfg.interface, exc)
        log.info("observing %s; node %s", self.cfg.interface, self.state.node_id)
        tasks = [
            asyncio.create_task(loop(stop))
            for loop in (
                self.sample_loop,
                self.send_loop,
                self.heartbeat_loop,
                self.jobs_loop,
                self.upload_loop,
            )
        ]
        try:
            await stop.wait()
        finally:
            for t in [*tasks, *([self.capture_task] if self.capture_task else [])]:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.ring is not None:
                self.ring.stop()
            with contextlib.suppress(SluiceError):
                await asyncio.to_thread(self.observer.uninstall)
            await self.client.aclose()
