"""The bakery discharger's X25519 key pair, its private half encrypted under the KEK.

Revision ID: 0004_discharger_key
Revises: 0003_subject_generations

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_discharger_key"
down_revision: str | Sequence[str] | None = "0003_subject_generations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "discharger_keys",
        # The primary key is what lets replicas racing at first start create exactly one key.
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_discharger_keys"),
    )


def downgrade() -> None:
    op.drop_table("discharger_keys")
