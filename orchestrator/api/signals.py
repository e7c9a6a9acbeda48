"""Signal intake: incidents, nodes and the agent API (modelled on Flowtriq's)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field, ValidationError
from starlette.requests import ClientDisconnect

from orchestrator.api.deps import NODE_STATE, LeanRoute, RateLimiter, guarded, require
from orchestrator.api.envelope import ok
from orchestrator.api.schemas import Address, Body, Label, Name, Offset
from orchestrator.nodes import NodeRegistry
from orchestrator.runtime import PolicyRuntime
from orchestrator.tokens import TokenInfo
from policies.errors import ValidationFailed
from policies.signals import Signal

router = APIRouter(tags=["signals"])
# POST /incidents alone: the application tries it right after /health (orchestrator.api.app)
intake_router = APIRouter(tags=["signals"])
Reader = Annotated[TokenInfo, Depends(require("read"))]
Writer = Annotated[TokenInfo, Depends(require("write"))]
Pct = Annotated[float, Field(ge=0, le=100)]
Family = Literal[
    "udp_flood", "syn_flood", "http_flood", "icmp_flood", "dns_flood", "multi_vector", "unknown"
]


async def runtime_of(request: Request) -> PolicyRuntime:
    rt: PolicyRuntime = request.app.state.runtime
    return rt


async def nodes_of(request: Request) -> NodeRegistry:
    reg: NodeRegistry = request.app.state.nodes
    return reg


Runtime = Annotated[PolicyRuntime, Depends(runtime_of)]
Nodes = Annotated[NodeRegistry, Depends(nodes_of)]


def _signal(data: dict[str, Any]) -> Signal:
    try:
        return Signal.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "signal"
        msg = str(err["msg"]).removeprefix("Value error, ")
        code = "missing_parameter" if err["type"] == "missing" else "invalid_parameter"
        raise ValidationFailed(f"{field}: {msg}", field=field, code=code) from None


# ---------------------------------------------------------------- incidents

RAW_DETAILS_MAX_BYTES = 16 * 1024
SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+=-]{0,127}")


@dataclass(frozen=True)
class DetectorFields:
    """What a detector adds to a signal: who it is, its id for the attack, ban or unban."""

    action: Literal["ban", "unban"] = "ban"
    incident_id: str | None = None
    source: str | None = None
    event_id: str | None = None
    raw_details: dict[str, Any] | None = None


def detector_fields(body: dict[str, Any]) -> DetectorFields:
    """Take the detector fields out of a signal body, checked; the rest is the signal."""
    action = body.pop("action", "ban")
    if action not in ("ban", "unban"):
        raise ValidationFailed(
            "action must be 'ban' or 'unban'", code="invalid_action", field="action"
        )
    incident_id = body.pop("incident_id", None)
    if incident_id is not None and not isinstance(incident_id, str):
        raise ValidationFailed("incident_id must be a string", field="incident_id")
    source = body.pop("source", None)
    if source is not None and not (isinstance(source, str) and SOURCE.fullmatch(source)):
        raise ValidationFailed(
            "source must be a detector name of 1-64 letters, digits, '_', '.', ':' or '-'",
            code="invalid_source",
            field="source",
        )
    event_id = body.pop("event_id", None)
    if event_id is not None:
        if not (isinstance(event_id, str) and EVENT_ID.fullmatch(event_id)):
            raise ValidationFailed(
                "event_id must be 1-128 letters, digits or '_.:/@+=-', starting with a "
                "letter or digit",
                code="invalid_event_id",
                field="event_id",
            )
        if source is None:
            raise ValidationFailed(
                "event_id needs source: an event id is unique per detector",
                code="missing_parameter",
                field="source",
            )
    raw = body.pop("raw_details", None)
    if raw is not None:
        if not isinstance(raw, dict):
            raise ValidationFailed(
                "raw_details must be a JSON object", code="invalid_raw_details", field="raw_details"
            )
        size = len(json.dumps(raw, separators=(",", ":")).encode())
        if size > RAW_DETAILS_MAX_BYTES:
            raise ValidationFailed(
                f"raw_details is {size} bytes; at most {RAW_DETAILS_MAX_BYTES} are kept",
                code="raw_details_too_large",
                field="raw_details",
            )
    if action == "unban" and incident_id is None and event_id is None:
        raise ValidationFailed(
            "an unban names its incident: incident_id, or source and event_id",
            code="missing_parameter",
            field="event_id",
        )
    return DetectorFields(action, incident_id, source, event_id, raw)


async def apply_signal(rt: PolicyRuntime, body: dict[str, Any], actor: str) -> dict[str, Any]:
    """A ban (signal) or an unban from a detector, the body already a dict."""
    f = detector_fields(body)
    if f.action == "unban":
        if body:  # the signal fields are optional on an unban; checked when given
            _signal(body)
        return await rt.unban(
            actor=actor,
            incident_id=f.incident_id,
            source=f.source,
            event_id=f.event_id,
            raw_details=f.raw_details,
        )
    return await rt.handle(
        _signal(body),
        actor=actor,
        incident_id=f.incident_id,
        source=f.source,
        event_id=f.event_id,
        raw_details=f.raw_details,
    )


async def report_incident(request: Request, who: Writer) -> Response:
    """Open or update an incident with a signal (or end it: ``action: unban``)."""
    # every detector's hot path: the runtime is read here rather than through one more
    # dependency for FastAPI to solve on each request
    rt: PolicyRuntime = request.app.state.runtime
    try:
        body = parse_json(await read_body(request))
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise ValidationFailed("the request body must be JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object")
    # the answer holds JSON types only: rendered as it is, without FastAPI's encoder walk
    return answer(ok(**await apply_signal(rt, body, who.name)))


# a run of 19 digits: an integer orjson may not read exactly (past 64 bits it makes a
# float). Found by mapping every byte to b"1" (a digit) or b"0" and searching the run:
# a fifth of what a regular expression costs on a signal's body.
_DIGITS = bytes(0x31 if 0x30 <= b <= 0x39 else 0x30 for b in range(256))
_LONG_RUN = b"1" * 19


def parse_json(raw: bytes) -> Any:
    """A request body read as ``json.loads`` reads it, by orjson (five times faster) when
    that gives the same: orjson refuses NaN, Infinity, lone surrogates and other encodings
    than UTF-8 (``json`` decides then), and a body with a long number goes to ``json``."""
    if _LONG_RUN not in raw.translate(_DIGITS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def answer(content: dict[str, Any]) -> Response:
    """A JSON answer rendered by orjson (several times faster than ``json.dumps``); by
    ``json`` when orjson refuses (an integer beyond 64 bits in a detector's raw_details)."""
    try:
        return Response(orjson.dumps(content), media_type="application/json")
    except TypeError:
        return JSONResponse(content)


async def read_body(request: Request) -> bytes:
    """The whole request body, read from ``receive`` (through the request guard: its size
    limit and deadline hold) without the async generator behind ``Request.body()``."""
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


# every detector's hot path: authorized without FastAPI's general dependency solver
intake_router.add_api_route(
    "/incidents", report_incident, methods=["POST"], route_class_override=LeanRoute
)


@router.get("/incidents")
async def list_incidents(
    rt: Runtime,
    _: Reader,
    status: Literal["open", "mitigating", "resolved", "expired"] | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    return ok(incidents=rt.list_incidents(status=status, limit=limit, offset=offset))


@router.get("/incidents/{incident_id}")
async def get_incident(incident_id: str, rt: Runtime, _: Reader) -> dict[str, Any]:
    return ok(incident=rt.get_incident(incident_id))


@router.post("/incidents/{incident_id}/resolve")
async def resolve_incident(incident_id: str, rt: Runtime, who: Writer) -> dict[str, Any]:
    return ok(incident=rt.resolve(incident_id, actor=who.name))


# ---------------------------------------------------------------- nodes


class RegisterNode(Body):
    name: Name
    ip: Address
    location: Label | None = None
    os: Label | None = None
    interface: Annotated[str, Field(max_length=32, pattern=r"^[A-Za-z0-9_.:@-]+$")] = "eth0"


@router.post("/nodes", status_code=201)
async def register_node(body: RegisterNode, reg: Nodes, who: Writer) -> dict[str, Any]:
    from policies.intents import parse_address

    try:
        ip = str(parse_address(body.ip))
    except ValueError as exc:
        raise ValidationFailed(f"ip: {exc}", field="ip") from None
    node, key = reg.register(
        name=body.name,
        ip=ip,
        location=body.location,
        os=body.os,
        interface=body.interface,
        actor=who.name,
    )
    return ok(node=node, api_key=key)


@router.get("/nodes")
async def list_nodes(
    reg: Nodes,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Offset = 0,
    status: Literal["online", "offline", "attack", "elevated"] | None = None,
) -> dict[str, Any]:
    items, total = reg.list(limit=limit, offset=offset, status=status)
    return ok(nodes=items, total=total)


# ---------------------------------------------------------------- agent API


async def agent(
    request: Request,
    reg: Nodes,
    authorization: Annotated[str | None, Header()] = None,
    x_node_uuid: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Authenticate a node (failures limited per address) and rate limit it per node."""
    # a request with a body was authenticated (and counted) by the request guard already
    known: dict[str, Any] | None = request.scope.get("state", {}).get(NODE_STATE)
    node = known or guarded(request, lambda: reg.authenticate(authorization, x_node_uuid))
    limiter: RateLimiter = request.app.state.agent_limiter
    request.state.rate_headers = await limiter.ahit(f"node:{node['id']}")
    return node


Agent = Annotated[dict[str, Any], Depends(agent)]


class Heartbeat(Body):
    agent_version: Label | None = None
    uptime: Annotated[float, Field(ge=0)] | None = None
    os: Label | None = None


class Metrics(Body):
    pps: Annotated[float, Field(ge=0)]
    bps: Annotated[float, Field(ge=0)]
    tcp_pct: Pct | None = None
    udp_pct: Pct | None = None
    icmp_pct: Pct | None = None
    conn_count: Annotated[int, Field(ge=0)] | None = None
    recorded_at: datetime | None = None


class AgentIncident(Body):
    attack_family: Family
    severity: Literal["low", "medium", "high", "critical"]
    peak_pps: Annotated[float, Field(ge=0)] = 0.0
    peak_bps: Annotated[float, Field(ge=0)] = 0.0
    target_ip: Address | None = None
    tcp_pct: Pct | None = None
    udp_pct: Pct | None = None
    icmp_pct: Pct | None = None
    top_source_ports: Annotated[list[int], Field(max_length=64)] = Field(default_factory=list)
    top_destination_ports: Annotated[list[int], Field(max_length=64)] = Field(default_factory=list)
    top_sources: Annotated[list[Address], Field(max_length=64)] = Field(default_factory=list)
    source_countries: (
        Annotated[dict[Annotated[str, Field(max_length=2)], float], Field(max_length=300)]
        | Annotated[list[Annotated[str, Field(max_length=2)]], Field(max_length=300)]
    ) = Field(default_factory=dict)


@router.post("/agent/heartbeat")
async def heartbeat(body: Heartbeat, node: Agent, reg: Nodes) -> dict[str, Any]:
    reg.seen(node["id"], body.agent_version, body.os)
    return ok(node_id=node["id"])


@router.post("/agent/metrics")
async def metrics(body: Metrics, node: Agent, reg: Nodes, rt: Runtime) -> dict[str, Any]:
    """One metrics batch: feeds the node's dynamic baseline, and an open attack's decisions."""
    reg.seen(node["id"])
    policy = rt.service.policy
    learned = rt.state.observe(policy.baseline, node["ip"], time.time(), body.bps, body.pps)
    open_incident = rt.open_incident_for(node["ip"])
    result: dict[str, Any] = {"baseline_updated": learned}
    if open_incident is not None:
        sig = _signal(
            {
                "target_ip": node["ip"],
                "node": node["id"],
                "bps": body.bps,
                "pps": body.pps,
                "tcp_pct": body.tcp_pct,
                "udp_pct": body.udp_pct,
                "icmp_pct": body.icmp_pct,
                "attack_family": open_incident["attack_family"],
                "severity": open_incident["severity"],
            }
        )
        result.update(await rt.handle(sig, actor=f"node:{node['name']}"))
    return ok(**result)


@router.post("/agent/incidents")
async def agent_incident(
    body: AgentIncident, node: Agent, reg: Nodes, rt: Runtime
) -> dict[str, Any]:
    reg.seen(node["id"])
    return ok(**await rt.handle(agent_signal(body, node), actor=f"node:{node['name']}"))


def agent_signal(body: AgentIncident, node: dict[str, Any]) -> Signal:
    """The signal a node's incident report stands for (its own address by default)."""
    data = body.model_dump(exclude={"peak_pps", "peak_bps"}, exclude_none=True)
    data.update(
        target_ip=body.target_ip or node["ip"],
        node=node["id"],
        bps=body.peak_bps,
        pps=body.peak_pps,
    )
    return _signal(data)
