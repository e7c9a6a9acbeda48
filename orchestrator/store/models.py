"""Tables. Rules and their events are never deleted; adapters are soft-deleted so history
keeps pointing at them. Only portable SQL types are used, so PostgreSQL can follow SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as naive UTC and always read back as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite rowid aliasing needs INTEGER

adapters = Table(
    "adapters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("adapter_type", String(50), nullable=False),
    Column("endpoint", Text, nullable=False, default=""),
    # Write-only: used to build the adapter, never returned by the API nor logged.
    Column("auth_token", Text, nullable=True),
    Column("config", JSON, nullable=False, default=dict),
    Column("capabilities", JSON, nullable=True),
    Column("source", String(10), nullable=False, default="api"),  # api | policy
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("deleted_at", UTCDateTime(), nullable=True),
    Column("health", JSON, nullable=True),
    Column("checked_at", UTCDateTime(), nullable=True),
)

rules = Table(
    "rules",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("target", String(64), nullable=False),
    Column("intent", Text, nullable=False),  # canonical text; parse_canonical reads it back
    Column("adapter_id", Id, ForeignKey("adapters.id"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("end_state", String(16), nullable=True),  # withdrawn | expired, once decided
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("origin", String(16), nullable=False),  # manual | policy | runbook
    Column("reason", Text, nullable=False, default=""),
    Column("explanation", JSON(none_as_null=True), nullable=True),
    Column("incident_id", String(36), ForeignKey("incidents.id"), nullable=True),
    Column("created_by", String(100), nullable=True),
    Column("ttl", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("activated_at", UTCDateTime(), nullable=True),
    Column("ended_at", UTCDateTime(), nullable=True),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Index("ix_rules_state_expires", "state", "expires_at"),
    Index("ix_rules_state_next_attempt", "state", "next_attempt_at"),
    Index("ix_rules_key_adapter", "key", "adapter_id"),
    Index("ix_rules_target_created", "target", "created_at"),
    Index("ix_rules_created", "created_at"),
)

rule_events = Table(
    "rule_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("rule_id", Id, ForeignKey("rules.id"), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("event", String(32), nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_rule_events_rule", "rule_id", "id"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("scope", String(10), nullable=False),  # read | write | admin
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", String(40), nullable=False),  # ISO 8601 text: hashed exactly as stored
    Column("actor", String(100), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=False),
    Column("detail", Text, nullable=False),  # canonical JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

incidents = Table(
    "incidents",
    metadata,
    Column("id", String(36), primary_key=True),  # UUID
    Column("target", String(64), nullable=False),
    Column("node", String(64), nullable=True),
    Column("status", String(16), nullable=False),  # orchestrator.incidents.Status
    Column("attack_family", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("peak_bps", Float, nullable=False, default=0.0),
    Column("peak_pps", Float, nullable=False, default=0.0),
    Column("last_signal", JSON, nullable=False),
    Column("signals", Integer, nullable=False, default=0),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("resolved_at", UTCDateTime(), nullable=True),
    # A detector's own name and id for the attack (same pair = same incident).
    Column("source", String(64), nullable=True),
    Column("event_id", String(128), nullable=True),
    Column("raw_details", JSON(none_as_null=True), nullable=True),
    Column("tier", String(64), nullable=True),
    # A held signal is evaluated again at this time if the incident is still open.
    Column("held_until", UTCDateTime(), nullable=True),
    Column("resolved_by", String(100), nullable=True),
    Index("ix_incidents_target_status", "target", "status"),
    Index("ix_incidents_opened", "opened_at"),
    Index("ix_incidents_source_event", "source", "event_id"),
    Index("ix_incidents_status_held", "status", "held_until"),
)

# Every detector event (source + event_id) that fed an incident the event did not open, so
# that the detector's unban or a resolve by any of them finds the incident (the pair that
# opened it is the incident's own source + event_id).
incident_events = Table(
    "incident_events",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("event_id", String(128), primary_key=True),
    Column("incident_id", String(36), ForeignKey("incidents.id"), primary_key=True),
    Column("at", UTCDateTime(), nullable=False),  # when the event first fed it
    Index("ix_incident_events_incident", "incident_id"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("incident_id", String(36), ForeignKey("incidents.id"), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("tier", String(64), nullable=True),
    Column("explanation", JSON, nullable=False),
    Column("rules", JSON, nullable=False),  # [{rule_id, intent, adapter, deduplicated}]
    Column("refused", JSON, nullable=False),  # [{intent, adapter, code, message}]
    Column("withdrawn", JSON, nullable=False),  # [rule ids]
    Index("ix_decisions_incident", "incident_id", "id"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", String(36), primary_key=True),  # UUID
    Column("name", String(100), nullable=False),
    Column("ip", String(64), nullable=False),
    Column("location", String(100), nullable=True),
    Column("os", String(100), nullable=True),
    Column("interface", String(32), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("agent_version", String(32), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=True),
)

# The event log: every state change of rules, incidents, adapter sessions and the policy,
# written in the transaction of the change itself. Ids only increase (AUTOINCREMENT), so
# a consumer resumes with ``after=<last id seen>``.
events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("kind", String(40), nullable=False),  # e.g. rule.active, incident.resolved
    Column("rule_id", Id, ForeignKey("rules.id"), nullable=True),
    Column("incident_id", String(36), ForeignKey("incidents.id"), nullable=True),
    Column("adapter_id", Id, ForeignKey("adapters.id"), nullable=True),
    Column("detail", JSON(none_as_null=True), nullable=True),
    Index("ix_events_incident", "incident_id", "id"),
    Index("ix_events_rule", "rule_id", "id"),
    sqlite_autoincrement=True,
)

# Work for node agents (firewall profiles, runbook firewall steps): pulled by the agent,
# applied once, its result reported back. Never deleted: the history of what ran where.
agent_jobs = Table(
    "agent_jobs",
    metadata,
    Column("id", String(36), primary_key=True),  # UUID; the agent's idempotency key
    Column("node_id", String(36), ForeignKey("nodes.id"), nullable=False),
    Column("kind", String(32), nullable=False),  # firewall.apply | firewall.remove
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # queued | delivered | succeeded | failed
    Column("created_by", String(100), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("deliveries", Integer, nullable=False, default=0),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("result", JSON(none_as_null=True), nullable=True),
    Index("ix_agent_jobs_node_status", "node_id", "status"),
    Index("ix_agent_jobs_created", "created_at"),
)

pcaps = Table(
    "pcaps",
    metadata,
    Column("id", String(36), primary_key=True),  # UUID; the file is data_dir/pcaps/<id>.<format>
    Column("incident_id", String(36), ForeignKey("incidents.id"), nullable=False),
    Column("node_id", String(36), nullable=True),  # null: uploaded by an operator
    Column("filename", String(200), nullable=False),
    Column("format", String(8), nullable=False),  # pcap | pcapng
    Column("link_type", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("packet_count", BigInteger, nullable=False),
    Column("first_packet_at", UTCDateTime(), nullable=False),
    Column("last_packet_at", UTCDateTime(), nullable=False),
    Column("checkpoints", JSON, nullable=False),  # file offsets of every 1000th packet
    Column("analysis", JSON(none_as_null=True), nullable=True),  # computed once, then kept
    Column("analyzed_at", UTCDateTime(), nullable=True),
    Column("created_by", String(100), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_pcaps_first_packet", "first_packet_at"),
    Index("ix_pcaps_created", "created_at"),
    Index("ix_pcaps_incident_sha", "incident_id", "sha256"),
)

kv = Table(
    "kv",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", JSON, nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# Runbooks (issue 12): definitions, durable executions and each step's result. An
# execution is unique per runbook + incident + trigger, so several consumers of the event
# log (restarts, other instances) can race to create it and only one wins.
runbooks = Table(
    "runbooks",
    metadata,
    Column("id", String(36), primary_key=True),  # UUID
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("trigger_conditions", JSON, nullable=False),
    Column("steps", JSON, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("deleted_at", UTCDateTime(), nullable=True),
)

runbook_executions = Table(
    "runbook_executions",
    metadata,
    Column("id", String(36), primary_key=True),  # UUID
    Column("runbook_id", String(36), ForeignKey("runbooks.id"), nullable=False),
    Column("incident_id", String(36), nullable=True),
    Column("trigger", String(64), nullable=False),  # an event kind, or test:<uuid>
    Column("event_id", Id, nullable=True),
    Column("mode", String(16), nullable=False),  # live | test | dry_run
    Column("status", String(16), nullable=False),  # running|succeeded|failed|interrupted
    Column("context", JSON, nullable=False),
    Column("steps", JSON, nullable=False),  # the steps as they were when it started
    Column("step_index", Integer, nullable=False, default=0),
    Column("owner", String(64), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("error", Text, nullable=True),
    UniqueConstraint("runbook_id", "incident_id", "trigger", name="uq_runbook_executions_once"),
    Index("ix_runbook_executions_runbook", "runbook_id", "created_at"),
    Index("ix_runbook_executions_status", "status", "lease_until"),
)

runbook_step_results = Table(
    "runbook_step_results",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("execution_id", String(36), ForeignKey("runbook_executions.id"), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("action_type", String(32), nullable=False),
    Column(
        "status", String(16), nullable=False
    ),  # running|succeeded|failed|skipped|planned|interrupted
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("output", JSON(none_as_null=True), nullable=True),
    Column("error", Text, nullable=True),
    UniqueConstraint("execution_id", "step_index", name="uq_runbook_step_results_once"),
)

# Alert channels: where incidents are announced. ``secrets`` is write-only.
channels = Table(
    "channels",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("channel_type", String(32), nullable=False),
    Column("config", JSON, nullable=False),
    Column("secrets", JSON, nullable=False),
    Column("filters", JSON, nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# One delivery per channel, correlated group and event kind (the unique constraint is the
# dedup across instances); attempts and the last error are recorded.
channel_deliveries = Table(
    "channel_deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel_id", String(36), ForeignKey("channels.id"), nullable=False),
    Column("group_key", String(80), nullable=False),
    Column("event_kind", String(40), nullable=False),
    Column("incident_id", String(36), nullable=True),
    # pending | retrying (a failed attempt, the next at next_attempt_at) | delivered | failed
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("payload", JSON, nullable=True),  # the message, enough to send it after a restart
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("owner", String(32), nullable=True),  # the instance sending it, until lease_until
    Column("lease_until", UTCDateTime(), nullable=True),
    UniqueConstraint("channel_id", "group_key", "event_kind", name="uq_channel_deliveries_once"),
    Index("ix_channel_deliveries_status", "status"),
)

# Incidents correlated into one alert group (same family, overlapping sources, 5 minutes).
alert_groups = Table(
    "alert_groups",
    metadata,
    Column("incident_id", String(36), primary_key=True),
    Column("group_key", String(80), nullable=False),
    Column("attack_family", String(32), nullable=False),
    Column("sources", JSON, nullable=False),
    Column("node", String(64), nullable=True),
    Column("at", UTCDateTime(), nullable=False),
    Index("ix_alert_groups_family_at", "attack_family", "at"),
)

# Dashboard operators (people; API tokens are for programs) and their login sessions.
operators = Table(
    "operators",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(100), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),  # Argon2id, with its parameters
    Column("role", String(16), nullable=False),  # viewer | operator | admin
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_login_at", UTCDateTime(), nullable=True),
    Column("disabled_at", UTCDateTime(), nullable=True),
)

operator_sessions = Table(
    "operator_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),  # SHA-256 of the cookie's value
    Column("operator_id", Id, ForeignKey("operators.id"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# Several instances on one PostgreSQL: the writers' generation (bumped by every write
# transaction, under the writer lock) and the adapter leases (see orchestrator/cluster.py).
cluster_state = Table(
    "cluster_state",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("generation", BigInteger, nullable=False, default=0),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(100), nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

# API rate limits shared by several instances (PostgreSQL): requests per key per minute
rate_windows = Table(
    "rate_windows",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("minute", BigInteger, primary_key=True),  # minutes since the epoch
    Column("hits", Integer, nullable=False),
)

# Carpet bombing (issue 14): the attack window shared by every instance and kept across
# restarts. Per candidate prefix (version, prefix length, network as a decimal integer)
# the attacked addresses (decimal) and when each was first and last seen in the current
# run; the row with address "" is the prefix's own run (first_at: when it began). Rows
# last seen before the window are dead (reads skip them, a periodic job deletes them).
carpet_window = Table(
    "carpet_window",
    metadata,
    Column("version", SmallInteger, primary_key=True),
    Column("plen", SmallInteger, primary_key=True),
    Column("net", String(40), primary_key=True),
    Column("addr", String(40), primary_key=True),
    Column("first_at", Float, nullable=False),  # epoch seconds
    Column("seen_at", Float, nullable=False),
    Index("ix_carpet_window_seen", "seen_at"),
)

# Signals that attached to a covering incident, by their detector's source + event_id, so
# that the detector's unban of that event finds the covering incident.
covered_events = Table(
    "covered_events",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("event_id", String(128), primary_key=True),
    Column("incident_id", String(36), nullable=False),
    Column("target", String(64), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("unbanned_at", UTCDateTime(), nullable=True),
    Index("ix_covered_events_incident", "incident_id"),
)

__all__ = [
    "adapters",
    "agent_jobs",
    "alert_groups",
    "audit_log",
    "carpet_window",
    "channel_deliveries",
    "channels",
    "cluster_state",
    "covered_events",
    "decisions",
    "events",
    "incident_events",
    "incidents",
    "kv",
    "leases",
    "metadata",
    "nodes",
    "operator_sessions",
    "operators",
    "pcaps",
    "rate_windows",
    "rule_events",
    "rules",
    "runbook_executions",
    "runbook_step_results",
    "runbooks",
    "tokens",
]
