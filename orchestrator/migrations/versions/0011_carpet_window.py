"""carpet window: the carpet-bombing attack window and covered events, shared by instances

Revision ID: 0011_carpet_window
Revises: 0010_rate_windows
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from orchestrator.store.models import UTCDateTime

revision = "0011_carpet_window"
down_revision = "0010_rate_windows"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "carpet_window",
        sa.Column("version", sa.SmallInteger(), nullable=False),
        sa.Column("plen", sa.SmallInteger(), nullable=False),
        sa.Column("net", sa.String(length=40), nullable=False),
        sa.Column("addr", sa.String(length=40), nullable=False),
        sa.Column("first_at", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("version", "plen", "net", "addr", name=op.f("pk_carpet_window")),
    )
    op.create_index("ix_carpet_window_seen", "carpet_window", ["seen_at"])
    op.create_table(
        "covered_events",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("incident_id", sa.String(length=36), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("unbanned_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("source", "event_id", name=op.f("pk_covered_events")),
    )
    op.create_index("ix_covered_events_incident", "covered_events", ["incident_id"])


def downgrade() -> None:
    op.drop_index("ix_covered_events_incident", table_name="covered_events")
    op.drop_table("covered_events")
    op.drop_index("ix_carpet_window_seen", table_name="carpet_window")
    op.drop_table("carpet_window")
