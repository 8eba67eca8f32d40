"""Subject generations: a per-subject floor under which tokens are revoked.

Revision ID: 0003_subject_generations
Revises: 0002_users

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_subject_generations"
down_revision: str | Sequence[str] | None = "0002_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subject_generations",
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subject", name="pk_subject_generations"),
        sa.CheckConstraint("generation >= 0", name="ck_subject_generations_not_negative"),
    )


def downgrade() -> None:
    op.drop_table("subject_generations")
