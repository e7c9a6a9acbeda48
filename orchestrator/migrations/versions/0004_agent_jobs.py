"""agent jobs: work pulled by node agents (firewall profiles)

Revision ID: 0004_agent_jobs
Revises: 0003_incident_event_log
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orchestrator.store.models

revision = "0004_agent_jobs"
down_revision = "0003_incident_event_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("node_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", orchestrator.store.models.UTCDateTime(), nullable=False),
        sa.Column("delivered_at", orchestrator.store.models.UTCDateTime(), nullable=True),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("finished_at", orchestrator.store.models.UTCDateTime(), nullable=True),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_agent_jobs_node_id_nodes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_jobs")),
    )
    with op.batch_alter_table("agent_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_agent_jobs_created", ["created_at"], unique=False)
        batch_op.create_index("ix_agent_jobs_node_status", ["node_id", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("agent_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_jobs_node_status")
        batch_op.drop_index("ix_agent_jobs_created")
    op.drop_table("agent_jobs")
