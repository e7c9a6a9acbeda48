"""pcap store

Revision ID: 0005_pcap_store
Revises: 0004_agent_jobs
Create Date: 2026-12-01 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orchestrator.store.models

revision = "0005_pcap_store"
down_revision = "0004_agent_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pcaps",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("incident_id", sa.String(length=36), nullable=False),
        sa.Column("node_id", sa.String(length=36), nullable=True),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("link_type", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("packet_count", sa.BigInteger(), nullable=False),
        sa.Column("first_packet_at", orchestrator.store.models.UTCDateTime(), nullable=False),
        sa.Column("last_packet_at", orchestrator.store.models.UTCDateTime(), nullable=False),
        sa.Column("checkpoints", sa.JSON(), nullable=False),
        sa.Column("analysis", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("analyzed_at", orchestrator.store.models.UTCDateTime(), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", orchestrator.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["incident_id"], ["incidents.id"], name=op.f("fk_pcaps_incident_id_incidents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pcaps")),
    )
    with op.batch_alter_table("pcaps", schema=None) as batch_op:
        batch_op.create_index("ix_pcaps_created", ["created_at"], unique=False)
        batch_op.create_index("ix_pcaps_first_packet", ["first_packet_at"], unique=False)
        batch_op.create_index("ix_pcaps_incident_sha", ["incident_id", "sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pcaps", schema=None) as batch_op:
        batch_op.drop_index("ix_pcaps_incident_sha")
        batch_op.drop_index("ix_pcaps_first_packet")
        batch_op.drop_index("ix_pcaps_created")
    op.drop_table("pcaps")
