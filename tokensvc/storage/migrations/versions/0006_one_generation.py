"""One generation per subject: fold `users.generation` into `subject_generations`.

Until now a subject's current generation was the larger of two counters, the user's own (raised by
a password change, disable or lost role) and a per-subject floor (raised by revoke-all and delete),
each raised from its own value: after a revoke-all set the floor to 1, a password change took the
user's counter from 0 to 1 and revoked nothing. From here on `subject_generations` holds the only
counter and every revoking event raises it by one. Each subject's generation becomes the larger of
the two, so every token that is valid now stays valid and every revoked one stays revoked.

Revision ID: 0006_one_generation
Revises: 0005_tokens

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006_one_generation"
down_revision: str | Sequence[str] | None = "0005_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    conn = op.get_bind()
    now = datetime.now(UTC)
    if conn.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # UTC as naive text, as the models store it there
    raised = conn.execute(sa.text("SELECT name, generation FROM users WHERE generation > 0"))
    for name, generation in raised.fetchall():
        floor = conn.execute(
            sa.text("SELECT generation FROM subject_generations WHERE subject = :s"), {"s": name}
        ).scalar_one_or_none()
        if floor is None:
            conn.execute(
                sa.text(
                    "INSERT INTO subject_generations (subject, generation, updated_at)"
                    " VALUES (:s, :g, :t)"
                ),
                {"s": name, "g": generation, "t": now},
            )
        elif floor < generation:
            conn.execute(
                sa.text(
                    "UPDATE subject_generations SET generation = :g, updated_at = :t"
                    " WHERE subject = :s"
                ),
                {"s": name, "g": generation, "t": now},
            )
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("ck_users_generation_not_negative", type_="check")
        batch.drop_column("generation")


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("generation", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.create_check_constraint("ck_users_generation_not_negative", "generation >= 0")
    # The generations stay in subject_generations, which the older code also reads (as a floor).
