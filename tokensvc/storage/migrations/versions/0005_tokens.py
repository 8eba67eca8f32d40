"""Token lifecycle: the token registry, service-token root keys, revoked root keys, the audit log.

Revision ID: 0005_tokens
Revises: 0004_discharger_key

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_tokens"
down_revision: str | Sequence[str] | None = "0004_discharger_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("description", sa.String(1024), nullable=False, server_default=""),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("kind", sa.String(16), nullable=False, server_default="rotating"),
        sa.PrimaryKeyConstraint("token_id", name="pk_tokens"),
        sa.CheckConstraint("kind IN ('rotating', 'service')", name="ck_tokens_kind"),
    )
    op.create_index("ix_tokens_subject", "tokens", ["subject"])
    # Every replica polls "revoked since T": an index keeps that cheap however many tokens exist.
    op.create_index("ix_tokens_revoked_at", "tokens", ["revoked_at"])
    op.create_table(
        "service_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_service_keys"),
        # Deleting a token's registry row deletes its key: the token can never verify again.
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["tokens.token_id"],
            name="fk_service_keys_token_id_tokens",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("token_id", name="uq_service_keys_token_id"),
    )
    op.create_table(
        "revoked_keys",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_by", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="pk_revoked_keys"),
    )
    op.create_index("ix_revoked_keys_revoked_at", "revoked_keys", ["revoked_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("revoked_keys")
    op.drop_table("service_keys")
    op.drop_table("tokens")
