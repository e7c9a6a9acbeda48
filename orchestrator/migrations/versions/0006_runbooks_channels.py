"""runbooks, durable executions, alert channels and deliveries

Revision ID: 0006_runbooks_channels
Revises: 0005_pcap_store
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orchestrator.store.models

revision = "0006_runbooks_channels"
down_revision = "0005_pcap_store"
branch_labels = None
depends_on = None

T = orchestrator.store.models.UTCDateTime
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "runbooks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("trigger_conditions", sa.JSON(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", T(), nullable=False),
        sa.Column("updated_at", T(), nullable=False),
        sa.Column("deleted_at", T(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runbooks")),
    )
    op.create_table(
        "runbook_executions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("runbook_id", sa.String(length=36), nullable=False),
        sa.Column("incident_id", sa.String(length=36), nullable=True),
        sa.Column("trigger", sa.String(length=64), nullable=False),
        sa.Column("event_id", Id, nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", T(), nullable=True),
        sa.Column("created_at", T(), nullable=False),
        sa.Column("started_at", T(), nullable=True),
        sa.Column("finished_at", T(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["runbook_id"], ["runbooks.id"], name=op.f("fk_runbook_executions_runbook_id_runbooks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runbook_executions")),
        sa.UniqueConstraint(
            "runbook_id", "incident_id", "trigger", name="uq_runbook_executions_once"
        ),
    )
    op.create_index(
        "ix_runbook_executions_runbook", "runbook_executions", ["runbook_id", "created_at"]
    )
    op.create_index("ix_runbook_executions_status", "runbook_executions", ["status", "lease_until"])
    op.create_table(
        "runbook_step_results",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("execution_id", sa.String(length=36), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("action_type", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", T(), nullable=False),
        sa.Column("finished_at", T(), nullable=True),
        sa.Column("output", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["runbook_executions.id"],
            name=op.f("fk_runbook_step_results_execution_id_runbook_executions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runbook_step_results")),
        sa.UniqueConstraint("execution_id", "step_index", name="uq_runbook_step_results_once"),
    )
    op.create_table(
        "channels",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("channel_type", sa.String(length=32), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.JSON(), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", T(), nullable=False),
        sa.Column("updated_at", T(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint("name", name=op.f("uq_channels_name")),
    )
    op.create_table(
        "channel_deliveries",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("channel_id", sa.String(length=36), nullable=False),
        sa.Column("group_key", sa.String(length=80), nullable=False),
        sa.Column("event_kind", sa.String(length=40), nullable=False),
        sa.Column("incident_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("created_at", T(), nullable=False),
        sa.Column("delivered_at", T(), nullable=True),
        sa.ForeignKeyConstraint(
            ["channel_id"], ["channels.id"], name=op.f("fk_channel_deliveries_channel_id_channels")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_deliveries")),
        sa.UniqueConstraint(
            "channel_id", "group_key", "event_kind", name="uq_channel_deliveries_once"
        ),
    )
    op.create_table(
        "alert_groups",
        sa.Column("incident_id", sa.String(length=36), nullable=False),
        sa.Column("group_key", sa.String(length=80), nullable=False),
        sa.Column("attack_family", sa.String(length=32), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=True),
        sa.Column("at", T(), nullable=False),
        sa.PrimaryKeyConstraint("incident_id", name=op.f("pk_alert_groups")),
    )
    op.create_index("ix_alert_groups_family_at", "alert_groups", ["attack_family", "at"])


def downgrade() -> None:
    op.drop_index("ix_alert_groups_family_at", table_name="alert_groups")
    op.drop_table("alert_groups")
    op.drop_table("channel_deliveries")
    op.drop_table("channels")
    op.drop_table("runbook_step_results")
    op.drop_index("ix_runbook_executions_status", table_name="runbook_executions")
    op.drop_index("ix_runbook_executions_runbook", table_name="runbook_executions")
    op.drop_table("runbook_executions")
    op.drop_table("runbooks")
