"""Identity mappings: the legacy identity bridge's mapping rules (DESIGN §5, bridge/mapping.py).

Release note: adds the ``identity_mappings`` table (name, the rule as JSON, timestamps). Nothing
existing changes. Follows 0005 (federation relationships).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_mappings",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("rule", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_identity_mappings")),
    )


def downgrade() -> None:
    op.drop_table("identity_mappings")
