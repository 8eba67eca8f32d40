"""The second factor: users' TOTP secrets (sealed under the KEK) and their recovery codes.

Revision ID: 0008_mfa
Revises: 0007_sealed_secrets

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_mfa"
down_revision: str | Sequence[str] | None = "0007_sealed_secrets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "totp_secrets",
        # The user name: one secret per user, pending (enrolling) or active.
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_totp_secrets"),
    )
    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False),
        # A few hex digits of a hash of the code: which row to run argon2 against, so a code
        # costs one argon2 run, not ten. Too short to help anyone guess the code.
        sa.Column("hint", sa.String(8), nullable=False),
        sa.Column("code_hash", sa.String(512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_recovery_codes"),
    )
    op.create_index("ix_recovery_codes_username", "recovery_codes", ["username"])


def downgrade() -> None:
    op.drop_index("ix_recovery_codes_username", table_name="recovery_codes")
    op.drop_table("recovery_codes")
    op.drop_table("totp_secrets")
