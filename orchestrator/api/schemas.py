"""Request bodies, named as in the Flowtriq API v1 reference; unknown fields are errors.

Every field is bounded: strings in length, lists and mappings in entries, integers to what
the store can hold; names and labels refuse control characters (a newline in a name would
otherwise forge lines in the service log). NaN and infinities are refused.
The shared field types here are for every router's bodies and parameters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from policies.errors import IntentInvalid
from policies.intents import AnyIntent, build_intent

# The largest id the store (a signed 64-bit integer) can hold.
MAX_ID = 2**63 - 1
# No C0/C1 control characters, no Unicode line or paragraph separators.
NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
PathId = Annotated[int, Path(ge=1, le=MAX_ID, description="an object id")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NO_CONTROL)]
Label = Annotated[str, StringConstraints(max_length=200, pattern=NO_CONTROL)]
Text = Annotated[str, Field(max_length=1000)]
Short = Annotated[str, Field(max_length=256)]
Address = Annotated[str, Field(min_length=1, max_length=64)]
# A free-form settings mapping (adapter config, geo lockdown): bounded in keys; the body
# size limit bounds the rest.
Mapping = Annotated[dict[Annotated[str, Field(max_length=100)], Any], Field(max_length=100)]


def _at_most(n: int) -> BeforeValidator:
    """Refuse a list longer than ``n`` before a union of shapes tries it (one clear error)."""

    def check(value: object) -> object:
        if isinstance(value, list) and len(value) > n:
            raise ValueError(f"at most {n} values, not {len(value)}")
        return value

    return BeforeValidator(check)


# One FlowSpec match component: a value, an expression ("=80|>=1024"), or a list of them.
Component = Annotated[int | Short | list[int | Short], _at_most(32)]


class Body(BaseModel):
    """Base of every request body: unknown fields are errors, NaN/infinity refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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


class CreateRule(Body):
    target_ip: Address
    intent_type: Annotated[str, Field(max_length=32)]
    adapter_id: Id | Name
    ttl: Annotated[int, Field(ge=-MAX_ID, le=MAX_ID)] | None = None
    reason: Text = ""
    dry_run: bool = False
    # FlowSpec match components (RFC 8955/8956); see the README for the grammar
    source: Address | None = None
    protocol: Component | None = None
    port: Component | None = None
    destination_port: Component | None = None
    source_port: Component | None = None
    icmp_type: Component | None = None
    icmp_code: Component | None = None
    tcp_flags: Annotated[Short | list[Short], _at_most(32)] | None = None
    packet_length: Component | None = None
    dscp: Component | None = None
    fragment: Annotated[Short | list[Short], _at_most(8)] | None = None
    flow_label: Component | None = None
    # FlowSpec action: discard (default), rate-limit (bytes/s), redirect (route target), mark
    action: Annotated[str, Field(max_length=32)] | None = None
    rate_limit: Annotated[float, Field(ge=0, le=1e15)] | None = None
    redirect: Short | None = None
    mark: Annotated[int, Field(ge=-MAX_ID, le=MAX_ID)] | None = None
    # Blackhole options
    communities: Annotated[list[Short], Field(max_length=64)] | None = None
    large_communities: Annotated[list[Short], Field(max_length=64)] | None = None
    next_hop: Address | None = None
    peers: Annotated[list[Short], Field(max_length=64)] | None = None

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


class WithdrawRule(Body):
    reason: Text = ""


class UpsertAdapter(Body):
    id: Id | None = None
    adapter_type: Annotated[str, Field(min_length=1, max_length=50)]
    name: Name
    endpoint: Annotated[str, Field(max_length=1000)] = ""
    auth_token: Annotated[str, Field(max_length=8192)] | None = None
    config: Mapping = {}
    capabilities: (
        Annotated[list[Annotated[str, Field(max_length=32)]], Field(max_length=8)] | None
    ) = None


class CreateToken(Body):
    name: Name
    # a scope, or the role name it stands for (viewer = read, operator = write, admin)
    scope: Literal["read", "write", "admin", "viewer", "operator"] = "read"
    # up to ten years
    expires_in: Annotated[int, Field(ge=1, le=10 * 366 * 86400)] | None = None
