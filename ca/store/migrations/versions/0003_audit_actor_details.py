"""Audit log: how the actor authenticated, under which role, and why a refused action was refused.

Release note (trustmesh 0.3.0): adds ``audit_log.auth_method``, ``audit_log.role`` and
``audit_log.reason`` (empty strings for existing rows). Empty fields are left out of a row's hash, so the
chain written before this release still verifies.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("auth_method", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("role", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("reason", sa.String(1024), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("reason")
        batch.drop_column("role")
        batch.drop_column("auth_method")
