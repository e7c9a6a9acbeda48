"""rate windows: API rate-limit counters shared by several instances

Revision ID: 0009_rate_windows
Revises: 0008_cluster_state
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_rate_windows"
down_revision = "0008_cluster_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_windows",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "minute", name=op.f("pk_rate_windows")),
    )


def downgrade() -> None:
    op.drop_table("rate_windows")
