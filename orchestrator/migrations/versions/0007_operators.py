"""operators and their login sessions (the dashboard)

Revision ID: 0007_operators
Revises: 0006_runbooks_channels
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import orchestrator.store.models

revision = "0007_operators"
down_revision = "0006_runbooks_channels"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", orchestrator.store.models.UTCDateTime(), nullable=False),
        sa.Column("last_login_at", orchestrator.store.models.UTCDateTime(), nullable=True),
        sa.Column("disabled_at", orchestrator.store.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operators")),
        sa.UniqueConstraint("username", name=op.f("uq_operators_username")),
    )
    op.create_table(
        "operator_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "operator_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", orchestrator.store.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", orchestrator.store.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["operator_id"],
            ["operators.id"],
            name=op.f("fk_operator_sessions_operator_id_operators"),
        ),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_operator_sessions")),
    )


def downgrade() -> None:
    op.drop_table("operator_sessions")
    op.drop_table("operators")
