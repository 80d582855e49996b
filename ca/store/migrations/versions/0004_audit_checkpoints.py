"""Audit log: signed checkpoints of the chain's head, and an index on the record time.

Release note (trustmesh 0.3.0): adds the table ``audit_checkpoints`` (the head of the audit chain,
signed every ``[audit] checkpoint_interval`` by the active X.509 authority, so ``trustmesh-ca audit
verify`` detects records cut off the end of the log) and the index ``ix_audit_log_at`` (``audit list
--since``). Existing audit records are untouched; the first checkpoint is written a minute after the
upgraded CA starts.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("authority_id", sa.String(128), nullable=False),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_checkpoints"),
    )
    op.create_index("ix_audit_checkpoints_last_id", "audit_checkpoints", ["last_id"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_index("ix_audit_checkpoints_last_id", table_name="audit_checkpoints")
    op.drop_table("audit_checkpoints")
