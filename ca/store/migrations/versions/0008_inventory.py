"""Inventory (issue 11): who an X509-SVID was issued through, when an agent was last seen and which
version it runs, and who to call about a registration entry.

Release note: adds ``issued_certificates.agent_id`` (nullable: the agent an SVID was issued through —
the workload's agent, or the agent itself for its own SVID; NULL for SVIDs an officer minted and for
records written before this revision), with indexes on it and on ``not_after`` (the inventory lists
SVIDs by expiry); ``agents.last_seen_at`` (nullable until the agent next calls) and ``agents.version``
(empty until the agent reports one); ``registration_entries.owner`` (empty: nobody named). Nothing
existing changes meaning.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issued_certificates") as batch:
        batch.add_column(sa.Column("agent_id", sa.String(2048), nullable=True))
        batch.create_index(op.f("ix_issued_certificates_agent_id"), ["agent_id"])
        batch.create_index(op.f("ix_issued_certificates_not_after"), ["not_after"])
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("version", sa.String(64), nullable=False, server_default=""))
    with op.batch_alter_table("registration_entries") as batch:
        batch.add_column(sa.Column("owner", sa.String(256), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("registration_entries") as batch:
        batch.drop_column("owner")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("version")
        batch.drop_column("last_seen_at")
    with op.batch_alter_table("issued_certificates") as batch:
        batch.drop_index(op.f("ix_issued_certificates_not_after"))
        batch.drop_index(op.f("ix_issued_certificates_agent_id"))
        batch.drop_column("agent_id")
