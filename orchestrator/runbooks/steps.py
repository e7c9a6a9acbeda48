"""Runbook steps and triggers: checked when a runbook is saved, never at run time only.

A bad step refuses the whole runbook with ``field = "steps.<index>.<field>"``; the codes
are ``unknown_action_type``, ``invalid_step`` (a config that does not fit its type),
``invalid_expression`` / ``unknown_variable`` (a condition), ``wait_too_long``,
``unknown_channel``, ``unknown_integration``, and for triggers ``unknown_severity`` /
``unknown_family`` / ``invalid_trigger``.

Every step may carry ``timeout_seconds`` (1..MAX_TIMEOUT, default DEFAULT_TIMEOUT) and
``continue_on_failure`` (default false: a failing step stops the execution).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args
from urllib.parse import urlsplit

from adapters.webhook.signing import secret_key
from orchestrator.agent.grammar import RuleInvalid, check_custom
from orchestrator.agent.profiles import PROFILES, SUITES
from orchestrator.runbooks import expr
from policies.errors import ValidationFailed
from policies.signals import AttackFamily, Severity

ACTION_TYPES = (
    "wait",
    "iptables",
    "notify_channel",
    "webhook",
    "cloudflare_uam",
    "scrubbing_enable",
    "log",
    "condition",
)
# Steps that change something outside the execution log; a test run only describes them.
SIDE_EFFECTS = frozenset(
    {"iptables", "notify_channel", "webhook", "cloudflare_uam", "scrubbing_enable"}
)
# Steps that can be run again after a restart without doing anything twice.
RESUMABLE = frozenset({"wait", "log", "condition"})
MAX_WAIT = 3600.0
MAX_STEPS = 50
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 600.0
SEVERITIES: tuple[str, ...] = get_args(Severity)
FAMILIES: tuple[str, ...] = get_args(AttackFamily)
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
TRIGGER_EVENTS = ("incident.opened", "incident.escalated", "incident.resolved")


class StepInvalid(ValidationFailed):
    code = "invalid_step"


@dataclass(frozen=True, slots=True)
class Lookups:
    """What a step may name, answered by the service at save time."""

    channel_exists: Callable[[str], bool]
    integration_exists: Callable[[int], bool]
    cloudflare_exists: Callable[[int], bool]


def _fail(i: int, fld: str, message: str, code: str = "invalid_step") -> StepInvalid:
    where = f"steps.{i}.{fld}" if fld else f"steps.{i}"
    return StepInvalid(f"step {i}: {message}", code=code, field=where)


def check_template(text: Any, i: int, fld: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise _fail(i, f"action_config.{fld}", f"{fld} must be a non-empty string")
    if len(text) > 4000:
        raise _fail(i, f"action_config.{fld}", f"{fld} is longer than 4000 characters")
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise _fail(i, f"action_config.{fld}", f"{fld} is not a valid template: {exc}") from None
    for name in names:
        if name not in expr.VARIABLES:
            raise _fail(
                i,
                f"action_config.{fld}",
                f"{fld} names unknown variable {{{name}}}; known: "
                + ", ".join(sorted(expr.VARIABLES)),
                code="unknown_variable",
            )
    return text


def render(text: str, ctx: Mapping[str, Any]) -> str:
    """Fill a checked template (only plain ``{name}`` fields of known variables)."""
    return text.format_map({k: ctx.get(k, "") for k in expr.VARIABLES})


def _keys(cfg: Mapping[str, Any], i: int, allowed: set[str], required: set[str]) -> None:
    for k in cfg:
        if k not in allowed:
            raise _fail(i, f"action_config.{k}", f"unknown setting {k!r}")
    for k in sorted(required):
        if k not in cfg:
            raise _fail(i, f"action_config.{k}", f"{k} is required")


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_step(i: int, step: Any, look: Lookups) -> dict[str, Any]:  # noqa: PLR0915  # one branch per type
    if not isinstance(step, Mapping):
        raise _fail(i, "", "a step is an object with action_type and action_config")
    extra = set(step) - {"action_type", "action_config", "timeout_seconds", "continue_on_failure"}
    if extra:
        raise _fail(i, sorted(extra)[0], f"unknown step field {sorted(extra)[0]!r}")
    kind = step.get("action_type")
    if kind not in ACTION_TYPES:
        raise _fail(
            i,
            "action_type",
            f"unknown action_type {kind!r}; known: {', '.join(ACTION_TYPES)}",
            code="unknown_action_type",
        )
    cfg = step.get("action_config", {})
    if not isinstance(cfg, Mapping):
        raise _fail(i, "action_config", "action_config must be an object")
    cfg = dict(cfg)
    timeout = step.get("timeout_seconds", DEFAULT_TIMEOUT)
    if not _number(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise _fail(i, "timeout_seconds", f"timeout_seconds must be in (0, {MAX_TIMEOUT:g}]")
    cont = step.get("continue_on_failure", False)
    if not isinstance(cont, bool):
        raise _fail(i, "continue_on_failure", "continue_on_failure must be true or false")

    if kind == "wait":
        _keys(cfg, i, {"seconds"}, {"seconds"})
        s = cfg["seconds"]
        if not _number(s) or s < 0:
            raise _fail(i, "action_config.seconds", "seconds must be a number >= 0")
        if s > MAX_WAIT:
            raise _fail(
                i,
                "action_config.seconds",
                f"a wait is at most {MAX_WAIT:g} s, not {s:g}",
                code="wait_too_long",
            )
        if "timeout_seconds" not in step:
            timeout = float(s) + 5.0  # a wait is bounded by its own duration
    elif kind == "iptables":
        _keys(cfg, i, {"action", "suite", "profile_id", "rules"}, {"action"})
        action = cfg["action"]
        if action not in ("apply", "remove"):
            raise _fail(i, "action_config.action", "action must be 'apply' or 'remove'")
        suite = cfg.setdefault("suite", "iptables")
        if suite not in SUITES:
            raise _fail(
                i, "action_config.suite", f"unknown suite {suite!r}; known: {', '.join(SUITES)}"
            )
        if action == "apply":
            profile = cfg.get("profile_id")
            if profile not in PROFILES:
                raise _fail(
                    i,
                    "action_config.profile_id",
                    f"unknown profile {profile!r}",
                    code="unknown_profile",
                )
            rules = cfg.setdefault("rules", [])
            if not isinstance(rules, list) or len(rules) > 50:
                raise _fail(i, "action_config.rules", "rules is a list of at most 50 rules")
            checked = []
            for j, rule in enumerate(rules):
                if not isinstance(rule, Mapping):
                    raise _fail(i, f"action_config.rules.{j}", "a rule is {cmd, title}")
                try:
                    c = check_custom(suite, rule.get("cmd", ""), str(rule.get("title", "")))
                except RuleInvalid as exc:
                    raise _fail(
                        i, f"action_config.rules.{j}.cmd", exc.message, code=exc.code
                    ) from None
                checked.append({"cmd": c.text, "title": c.title})
            cfg["rules"] = checked
        elif "rules" in cfg or "profile_id" in cfg:
            raise _fail(i, "action_config.rules", "remove takes only the suite")
    elif kind == "notify_channel":
        _keys(cfg, i, {"channel", "message"}, {"channel", "message"})
        if not isinstance(cfg["channel"], str) or not look.channel_exists(cfg["channel"]):
            raise _fail(
                i,
                "action_config.channel",
                f"no alert channel {cfg['channel']!r}",
                code="unknown_channel",
            )
        check_template(cfg["message"], i, "message")
    elif kind == "webhook":
        _keys(cfg, i, {"url", "method", "body", "secret"}, {"url"})
        url = cfg["url"]
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise _fail(i, "action_config.url", "url must be an http(s) URL with a host")
        method = cfg.setdefault("method", "POST")
        if method not in ("POST", "PUT"):
            raise _fail(i, "action_config.method", "method must be POST or PUT")
        if "body" in cfg:
            check_template(cfg["body"], i, "body")
        if "secret" in cfg:
            try:
                secret_key(str(cfg["secret"]))
            except ValueError as exc:
                raise _fail(i, "action_config.secret", str(exc)) from None
    elif kind == "cloudflare_uam":
        _keys(cfg, i, {"adapter_id", "zone_id", "enabled"}, {"adapter_id", "zone_id"})
        aid = cfg["adapter_id"]
        if not isinstance(aid, int) or isinstance(aid, bool) or not look.cloudflare_exists(aid):
            raise _fail(
                i,
                "action_config.adapter_id",
                f"no cloudflare adapter with id {aid!r}",
                code="unknown_integration",
            )
        if not isinstance(cfg["zone_id"], str) or not cfg["zone_id"]:
            raise _fail(i, "action_config.zone_id", "zone_id must be a string")
        if not isinstance(cfg.setdefault("enabled", True), bool):
            raise _fail(i, "action_config.enabled", "enabled must be true or false")
    elif kind == "scrubbing_enable":
        _keys(cfg, i, {"integration_id", "ttl"}, {"integration_id"})
        iid = cfg["integration_id"]
        if not isinstance(iid, int) or isinstance(iid, bool) or not look.integration_exists(iid):
            raise _fail(
                i,
                "action_config.integration_id",
                f"no scrubbing integration with id {iid!r}",
                code="unknown_integration",
            )
        ttl = cfg.setdefault("ttl", 3600)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= 30 * 86400:
            raise _fail(i, "action_config.ttl", "ttl must be whole seconds in (0, 30 days]")
    elif kind == "log":
        _keys(cfg, i, {"message", "level"}, {"message"})
        check_template(cfg["message"], i, "message")
        if cfg.setdefault("level", "info") not in ("info", "warning", "error"):
            raise _fail(i, "action_config.level", "level must be info, warning or error")
    else:  # condition
        _keys(cfg, i, {"expression"}, {"expression"})
        try:
            expr.parse(cfg["expression"])
        except expr.ExpressionInvalid as exc:
            raise _fail(i, "action_config.expression", exc.message, code=exc.code) from None
    return {
        "action_type": kind,
        "action_config": cfg,
        "timeout_seconds": float(timeout),
        "continue_on_failure": cont,
    }


def check_steps(steps: Any, look: Lookups) -> list[dict[str, Any]]:
    if not isinstance(steps, list) or not steps:
        raise StepInvalid("steps must be a non-empty list", field="steps")
    if len(steps) > MAX_STEPS:
        raise StepInvalid(f"at most {MAX_STEPS} steps", field="steps")
    return [check_step(i, s, look) for i, s in enumerate(steps)]


def check_trigger(t: Any) -> dict[str, Any]:
    """``{min_severity, min_pps, attack_family, nodes, events}`` with defaults filled."""
    if not isinstance(t, Mapping):
        raise ValidationFailed(
            "trigger_conditions must be an object",
            code="invalid_trigger",
            field="trigger_conditions",
        )
    allowed = {"min_severity", "min_pps", "attack_family", "nodes", "events"}
    for k in t:
        if k not in allowed:
            raise ValidationFailed(
                f"unknown trigger condition {k!r}; known: {', '.join(sorted(allowed))}",
                code="invalid_trigger",
                field=f"trigger_conditions.{k}",
            )
    sev = t.get("min_severity", "any")
    if sev != "any" and sev not in SEVERITIES:
        raise ValidationFailed(
            f"unknown severity {sev!r}; known: any, {', '.join(SEVERITIES)}",
            code="unknown_severity",
            field="trigger_conditions.min_severity",
        )
    pps = t.get("min_pps", 0)
    if not _number(pps) or pps < 0:
        raise ValidationFailed(
            "min_pps must be a number >= 0",
            code="invalid_trigger",
            field="trigger_conditions.min_pps",
        )
    fam = t.get("attack_family", "any")
    if fam != "any" and fam not in FAMILIES:
        raise ValidationFailed(
            f"unknown attack family {fam!r}; known: any, {', '.join(FAMILIES)}",
            code="unknown_family",
            field="trigger_conditions.attack_family",
        )
    nodes = t.get("nodes", "all")
    if nodes != "all" and (
        not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes)
    ):
        raise ValidationFailed(
            'nodes must be "all" or a non-empty list of node ids or names',
            code="invalid_trigger",
            field="trigger_conditions.nodes",
        )
    evs = t.get("events", ["incident.opened"])
    if not isinstance(evs, list) or not evs or any(e not in TRIGGER_EVENTS for e in evs):
        raise ValidationFailed(
            f"events must be a non-empty list of {', '.join(TRIGGER_EVENTS)}",
            code="invalid_trigger",
            field="trigger_conditions.events",
        )
    return {
        "min_severity": sev,
        "min_pps": pps,
        "attack_family": fam,
        "nodes": nodes,
        "events": list(dict.fromkeys(evs)),
    }


def matches(trigger: Mapping[str, Any], kind: str, ctx: Mapping[str, Any]) -> bool:
    if kind not in trigger["events"]:
        return False
    if (
        trigger["min_severity"] != "any"
        and SEVERITY_RANK.get(str(ctx.get("severity")), -1) < SEVERITY_RANK[trigger["min_severity"]]
    ):
        return False
    if float(ctx.get("pps") or 0) < float(trigger["min_pps"]):
        return False
    if trigger["attack_family"] != "any" and ctx.get("attack_family") != trigger["attack_family"]:
        return False
    return not (trigger["nodes"] != "all" and ctx.get("node") not in trigger["nodes"])
