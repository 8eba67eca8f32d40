"""The revocation event log behind GET /v1/revocations/stream (tokensvc.tokens.events).

Revision ID: 0009_revocation_events
Revises: 0008_mfa

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_revocation_events"
down_revision: str | Sequence[str] | None = "0008_mfa"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "revocation_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_revocation_events"),
        sa.CheckConstraint(
            "kind IN ('token', 'generation', 'key')", name="ck_revocation_events_kind"
        ),
        # SQLite: AUTOINCREMENT, so an id is never reused (ids are the stream's cursor).
        sqlite_autoincrement=True,
    )
    op.create_index("ix_revocation_events_created_at", "revocation_events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_revocation_events_created_at", table_name="revocation_events")
    op.drop_table("revocation_events")
