"""cluster state: the writers' generation and adapter leases (several instances)

Revision ID: 0008_cluster_state
Revises: 0007_operators
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orchestrator.store.models

revision = "0008_cluster_state"
down_revision = "0007_operators"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_state",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cluster_state")),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", orchestrator.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.bulk_insert(
        sa.table(
            "cluster_state", sa.column("name", sa.String), sa.column("generation", sa.BigInteger)
        ),
        [{"name": "writers", "generation": 0}],
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("cluster_state")
