"""Alembic environment: runs against the engine the service hands over."""

from __future__ import annotations

from alembic import context

from orchestrator.store.models import metadata

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
