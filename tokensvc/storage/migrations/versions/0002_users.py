"""Users: name, argon2 password hash, roles, disabled flag and token generation.

Revision ID: 0002_users
Revises: 0001_root_keys
Create Date: 2025-11-21

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_users"
down_revision: str | Sequence[str] | None = "0001_root_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(512), nullable=False),
        sa.Column("roles", sa.JSON(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        # Bumped whenever tokens already issued must stop working (password change, disable).
        sa.Column("generation", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_users"),
        sa.CheckConstraint("name = lower(name)", name="ck_users_name_lowercase"),
        sa.CheckConstraint("generation >= 0", name="ck_users_generation_not_negative"),
    )


def downgrade() -> None:
    op.drop_table("users")
