"""Agents: the SVID a renewal replaced, and until when it still authenticates.

Release note (trustmesh 0.2.0): adds ``agents.previous_serial`` and ``agents.previous_serial_until``
(both nullable). The node API now accepts an agent's X509-SVID only while it is the one the CA last
issued to that agent, or the one before it for a short overlap after a renewal, so an SVID replaced by
renewal or re-attestation stops working. Existing rows get NULLs: their current serial keeps working.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("previous_serial", sa.String(40), nullable=True))
        batch.add_column(sa.Column("previous_serial_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("previous_serial_until")
        batch.drop_column("previous_serial")
