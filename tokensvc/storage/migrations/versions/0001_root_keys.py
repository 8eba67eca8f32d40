"""Root keys, encrypted under the key-encryption key.

Revision ID: 0001_root_keys
Revises:
Create Date: 2025-11-21

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_root_keys"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "root_keys",
        sa.Column("id", sa.String(64), nullable=False),
        # floor(created_at / generate_interval) for scheduled keys, NULL for manual rotations.
        sa.Column("slot", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_root_keys"),
        # One scheduled key per interval however many replicas race for it.
        sa.UniqueConstraint("slot", name="uq_root_keys_slot"),
    )
    op.create_index("ix_root_keys_expires_at", "root_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_root_keys_expires_at", table_name="root_keys")
    op.drop_table("root_keys")
