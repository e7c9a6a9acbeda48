"""incident lifecycle and the event log

The incident gains a detector's source/event id, raw details, its tier, a hold-down
deadline and who resolved it; rules reference their incident with a foreign key (rule
rows naming an incident that was never written lose the reference); the event log table.

Revision ID: 0003_incident_event_log
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orchestrator.store.models

revision = "0003_incident_event_log"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("event_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("raw_details", sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column("tier", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("held_until", orchestrator.store.models.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(sa.Column("resolved_by", sa.String(length=100), nullable=True))
        batch_op.create_index("ix_incidents_source_event", ["source", "event_id"], unique=False)
        batch_op.create_index("ix_incidents_status_held", ["status", "held_until"], unique=False)

    op.execute(
        "UPDATE rules SET incident_id = NULL WHERE incident_id IS NOT NULL "
        "AND incident_id NOT IN (SELECT id FROM incidents)"
    )
    with op.batch_alter_table("rules", schema=None) as batch_op:
        batch_op.alter_column(
            "incident_id",
            existing_type=sa.String(length=64),
            type_=sa.String(length=36),
            existing_nullable=True,
        )
        batch_op.create_foreign_key(
            op.f("fk_rules_incident_id_incidents"), "incidents", ["incident_id"], ["id"]
        )

    op.create_table(
        "events",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("at", orchestrator.store.models.UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("rule_id", Id, nullable=True),
        sa.Column("incident_id", sa.String(length=36), nullable=True),
        sa.Column("adapter_id", Id, nullable=True),
        sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name=op.f("fk_events_adapter_id_adapters")
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_events_incident_id_incidents")
        ),
        sa.ForeignKeyConstraint(["rule_id"], ["rules.id"], name=op.f("fk_events_rule_id_rules")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_incident", ["incident_id", "id"], unique=False)
        batch_op.create_index("ix_events_rule", ["rule_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_rule")
        batch_op.drop_index("ix_events_incident")
    op.drop_table("events")
    with op.batch_alter_table("rules", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_rules_incident_id_incidents"), type_="foreignkey")
        batch_op.alter_column(
            "incident_id",
            existing_type=sa.String(length=36),
            type_=sa.String(length=64),
            existing_nullable=True,
        )
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_index("ix_incidents_status_held")
        batch_op.drop_index("ix_incidents_source_event")
        for col in ("resolved_by", "held_until", "tier", "raw_details", "event_id", "source"):
            batch_op.drop_column(col)
