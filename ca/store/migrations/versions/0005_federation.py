"""Federation relationships: the trust domains this CA federates with and their last good bundles.

Release note: adds the table ``federation_relationships`` (one row per federated trust domain). Nothing
existing changes. Follows 0004 (audit checkpoints).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "federation_relationships",
        sa.Column("trust_domain", sa.String(255), nullable=False),
        sa.Column("bundle_endpoint_url", sa.String(2048), nullable=False),
        sa.Column("profile", sa.String(16), nullable=False),
        sa.Column("endpoint_spiffe_id", sa.String(2048), nullable=True),
        sa.Column("bundle", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_refresh_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(1024), nullable=False),
        sa.PrimaryKeyConstraint("trust_domain", name="pk_federation_relationships"),
    )


def downgrade() -> None:
    op.drop_table("federation_relationships")
