"""rate windows: API rate-limit counters shared by several instances

Revision ID: 0010_rate_windows
Revises: 0009_delivery_resume
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_rate_windows"
down_revision = "0009_delivery_resume"
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
