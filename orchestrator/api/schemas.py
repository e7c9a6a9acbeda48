"""Request bodies, named as in the Flowtriq API v1 reference; unknown fields are errors."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from policies.errors import IntentInvalid
from policies.intents import AnyIntent, build_intent

FLOWSPEC_FIELDS = (
    "source",
    "protocol",
    "port",
    "destination_port",
    "source_port",
    "icmp_type",
    "icmp_code",
    "tcp_flags",
    "packet_length",
    "dscp",
    "fragment",
    "flow_label",
)
BLACKHOLE_FIELDS = ("communities", "large_communities", "next_hop", "peers")
ACTION_FIELDS = ("action", "rate_limit", "redirect", "mark")
# intent field -> the API body field it came from
_API_FIELD = {
    "prefix": "target_ip",
    "destination": "target_ip",
    "kind": "intent_type",
    "action": "action",
}
_ACTION_FIELD = {"bytes_per_second": "rate_limit", "route_target": "redirect", "dscp": "mark"}


class CreateRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_ip: Annotated[str, Field(min_length=1, max_length=64)]
    intent_type: str
    adapter_id: int | str
    ttl: int | None = None
    reason: Annotated[str, Field(max_length=1000)] = ""
    dry_run: bool = False
    # FlowSpec match components (RFC 8955/8956); see the README for the grammar
    source: str | None = None
    protocol: int | str | list[int | str] | None = None
    port: int | str | list[int | str] | None = None
    destination_port: int | str | list[int | str] | None = None
    source_port: int | str | list[int | str] | None = None
    icmp_type: int | str | list[int | str] | None = None
    icmp_code: int | str | list[int | str] | None = None
    tcp_flags: str | list[str] | None = None
    packet_length: int | str | list[int | str] | None = None
    dscp: int | str | list[int | str] | None = None
    fragment: str | list[str] | None = None
    flow_label: int | str | list[int | str] | None = None
    # FlowSpec action: discard (default), rate-limit (bytes/s), redirect (route target), mark
    action: str | None = None
    rate_limit: float | None = None
    redirect: str | None = None
    mark: int | None = None
    # Blackhole options
    communities: list[str] | None = None
    large_communities: list[str] | None = None
    next_hop: str | None = None
    peers: list[str] | None = None

    def to_intent(self) -> AnyIntent:
        kind = self.intent_type
        data: dict[str, Any] = {"kind": kind}
        given = self.model_dump(exclude_unset=True, exclude_none=True)
        if kind == "flowspec":
            data["destination"] = self.target_ip
            data.update({k: given[k] for k in FLOWSPEC_FIELDS if k in given})
            data["action"] = self._action()
            wrong = [k for k in BLACKHOLE_FIELDS if k in given]
        else:
            data["prefix"] = self.target_ip
            if kind == "blackhole":
                data.update({k: given[k] for k in BLACKHOLE_FIELDS if k in given})
            wrong = [k for k in FLOWSPEC_FIELDS + ACTION_FIELDS if k in given]
            if kind == "scrubbing":
                wrong += [k for k in BLACKHOLE_FIELDS if k in given]
        if wrong and kind in ("flowspec", "blackhole", "scrubbing"):
            raise IntentInvalid(f"{wrong[0]} does not apply to {kind} rules", field=wrong[0])
        try:
            return build_intent(data)
        except IntentInvalid as exc:
            field = exc.field or "intent"
            api_field = _API_FIELD.get(field.split(".")[0], field)
            message = exc.message.removeprefix(f"{field}: ")
            raise IntentInvalid(f"{api_field}: {message}", code=exc.code, field=api_field) from None

    def _action(self) -> dict[str, Any]:
        action = (self.action or "discard").replace("_", "-")
        if action == "discard":
            return {"type": "discard"}
        if action == "rate-limit":
            if self.rate_limit is None:
                raise IntentInvalid(
                    "action rate-limit needs rate_limit (bytes per second)", field="rate_limit"
                )
            return {"type": "rate-limit", "bytes_per_second": self.rate_limit}
        if action == "redirect":
            if self.redirect is None:
                raise IntentInvalid(
                    "action redirect needs redirect (a route target)", field="redirect"
                )
            return {"type": "redirect", "route_target": self.redirect}
        if action == "mark":
            if self.mark is None:
                raise IntentInvalid("action mark needs mark (a DSCP value 0-63)", field="mark")
            return {"type": "mark", "dscp": self.mark}
        raise IntentInvalid(
            f"unknown action {self.action!r} (discard, rate-limit, redirect, mark)", field="action"
        )


class WithdrawRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(max_length=1000)] = ""


class UpsertAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int | None = None
    adapter_type: Annotated[str, Field(min_length=1, max_length=50)]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    endpoint: Annotated[str, Field(max_length=1000)] = ""
    auth_token: str | None = None
    config: dict[str, Any] = {}
    capabilities: list[str] | None = None


class CreateToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    scope: str = "read"
    expires_in: int | None = None
