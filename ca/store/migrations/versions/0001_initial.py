"""Initial CA datastore schema.

Release note (trustmesh 0.1.0): creates authorities, issued_certificates, registration_entries,
join_tokens, agents, audit_log and trust_bundle_state. Timestamps are stored in UTC; serial numbers as
lowercase hex; join tokens only as their SHA-256.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Timestamps are stored in UTC (PostgreSQL timestamptz; UTC wall time on SQLite).
_TIMESTAMP = sa.DateTime(timezone=True)
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "authorities",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("trust_domain", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("key_ref", sa.String(512), nullable=False),
        sa.Column("public_key_der", sa.LargeBinary(), nullable=False),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=True),
        sa.Column("upstream_chain_pem", sa.Text(), nullable=True),
        sa.Column("not_before", _TIMESTAMP, nullable=False),
        sa.Column("not_after", _TIMESTAMP, nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("activated_at", _TIMESTAMP, nullable=True),
        sa.Column("retired_at", _TIMESTAMP, nullable=True),
        sa.Column("tainted_at", _TIMESTAMP, nullable=True),
        sa.Column("revoked_at", _TIMESTAMP, nullable=True),
        sa.CheckConstraint("kind IN ('x509', 'jwt')", name="ck_authorities_kind"),
        sa.CheckConstraint(
            "state IN ('prepared', 'active', 'retired', 'tainted', 'revoked')", name="ck_authorities_state"
        ),
        sa.CheckConstraint("kind = 'jwt' OR certificate_der IS NOT NULL", name="ck_authorities_x509_has_certificate"),
        sa.PrimaryKeyConstraint("id", name="pk_authorities"),
    )
    op.create_table(
        "issued_certificates",
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("spiffe_id", sa.String(2048), nullable=False),
        sa.Column("authority_id", sa.String(128), nullable=False),
        sa.Column("not_before", _TIMESTAMP, nullable=False),
        sa.Column("not_after", _TIMESTAMP, nullable=False),
        sa.Column("issued_at", _TIMESTAMP, nullable=False),
        sa.Column("revoked_at", _TIMESTAMP, nullable=True),
        sa.Column("revocation_reason", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(
            ["authority_id"],
            ["authorities.id"],
            name="fk_issued_certificates_authority_id_authorities",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("serial", name="pk_issued_certificates"),
    )
    op.create_index("ix_issued_certificates_spiffe_id", "issued_certificates", ["spiffe_id"])
    op.create_index(
        "ix_issued_certificates_authority_id_revoked_at", "issued_certificates", ["authority_id", "revoked_at"]
    )
    op.create_table(
        "registration_entries",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("spiffe_id", sa.String(2048), nullable=False),
        sa.Column("parent_id", sa.String(2048), nullable=False),
        sa.Column("selectors", sa.JSON(), nullable=False),
        sa.Column("identity_key", sa.String(64), nullable=False),
        sa.Column("dns_names", sa.JSON(), nullable=False),
        sa.Column("x509_ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("jwt_ttl_seconds", sa.Integer(), nullable=True),
        sa.Column("federates_with", sa.JSON(), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("hint", sa.String(1024), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registration_entries"),
        sa.UniqueConstraint("identity_key", name="uq_registration_entries_identity_key"),
    )
    op.create_index("ix_registration_entries_spiffe_id", "registration_entries", ["spiffe_id"])
    op.create_index("ix_registration_entries_parent_id", "registration_entries", ["parent_id"])
    op.create_table(
        "join_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", _TIMESTAMP, nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("used_at", _TIMESTAMP, nullable=True),
        sa.Column("agent_spiffe_id", sa.String(2048), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_join_tokens"),
    )
    op.create_index("ix_join_tokens_expires_at", "join_tokens", ["expires_at"])
    op.create_table(
        "agents",
        sa.Column("spiffe_id", sa.String(2048), nullable=False),
        sa.Column("attestation_type", sa.String(64), nullable=False),
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("expires_at", _TIMESTAMP, nullable=False),
        sa.Column("banned", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("spiffe_id", name="pk_agents"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", _TIMESTAMP, nullable=False),
        sa.Column("actor", sa.String(2048), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("target", sa.String(2048), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
        sa.UniqueConstraint("prev_hash", name="uq_audit_log_prev_hash"),
    )
    op.create_table(
        "trust_bundle_state",
        sa.Column("trust_domain", sa.String(255), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("trust_domain", name="pk_trust_bundle_state"),
    )


def downgrade() -> None:
    for table in (
        "trust_bundle_state",
        "audit_log",
        "agents",
        "join_tokens",
        "registration_entries",
        "issued_certificates",
        "authorities",
    ):
        op.drop_table(table)
