"""x509pop without state in the CA process: a secret all replicas share, and the nonces already used.

Release note: adds the ``shared_secrets`` table (a named random secret, here the key x509pop challenges
are sealed with; created by the first replica that needs it) and the ``x509pop_used_nonces`` table
(SHA-256 of each nonce whose proof succeeded, until it expires; pruned by the retention task). Nothing
existing changes. Follows 0006 (identity mappings).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shared_secrets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_shared_secrets")),
    )
    op.create_table(
        "x509pop_used_nonces",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_x509pop_used_nonces")),
    )
    op.create_index("ix_x509pop_used_nonces_expires_at", "x509pop_used_nonces", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_x509pop_used_nonces_expires_at", table_name="x509pop_used_nonces")
    op.drop_table("x509pop_used_nonces")
    op.drop_table("shared_secrets")
