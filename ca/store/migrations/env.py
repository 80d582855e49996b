"""Alembic environment of the CA datastore (DESIGN §3 datastore).

Runs only inside :meth:`ca.store.Database.migrate`, which passes a connection that already holds the
migration lock and an open transaction; there is no ``alembic.ini``. New revisions are written by hand
under ``versions/``, and ``tests/integration/store`` fails when they drift from ``ca.store.models``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from ca.store.models import Base
from spiffe_core.errors import ConfigError

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise ConfigError("trustmesh migrations run through ca.store.Database.migrate(), not the alembic command")
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
