"""channel deliveries resumable: next attempt time and a lease (who is sending it)

Revision ID: 0009_delivery_resume
Revises: 0008_cluster_state
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orchestrator.store.models

revision = "0009_delivery_resume"
down_revision = "0008_cluster_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channel_deliveries") as batch:
        batch.add_column(
            sa.Column("next_attempt_at", orchestrator.store.models.UTCDateTime(), nullable=True)
        )
        batch.add_column(sa.Column("owner", sa.String(length=32), nullable=True))
        batch.add_column(
            sa.Column("lease_until", orchestrator.store.models.UTCDateTime(), nullable=True)
        )
        batch.create_index("ix_channel_deliveries_status", ["status"])


def downgrade() -> None:
    with op.batch_alter_table("channel_deliveries") as batch:
        batch.drop_index("ix_channel_deliveries_status")
        batch.drop_column("lease_until")
        batch.drop_column("owner")
        batch.drop_column("next_attempt_at")
