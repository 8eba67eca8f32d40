"""Secrets of the deployment sealed under the KEK (the key lockout and log hashes derive from).

Revision ID: 0007_sealed_secrets
Revises: 0006_one_generation

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_sealed_secrets"
down_revision: str | Sequence[str] | None = "0006_one_generation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sealed_secrets",
        # The primary key is what lets replicas racing at first start create exactly one row.
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sealed_secrets"),
    )


def downgrade() -> None:
    op.drop_table("sealed_secrets")
