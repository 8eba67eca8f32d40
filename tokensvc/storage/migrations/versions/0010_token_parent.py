"""Token lineage: `tokens.parent_id`, the token whose authority minted this one,
`tokens.key_id`, the root key that signed it, and `tokens.bounded`, whether its authority ends
with its expiry.

Revoking a token revokes every token minted with it, recursively (tokensvc.tokens.registry); so
does revoking its subject's tokens or its root key. `parent_id` is what that walk follows,
`key_id` where a key's walk starts. Tokens minted before this revision have neither recorded.
`bounded` is true for a token minted by one that could not mint past its own expiry: it cannot
either, nor can anything it mints (tokensvc.services.authorization, "unbounded").

Revision ID: 0010_token_parent
Revises: 0009_revocation_events

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_token_parent"
down_revision: str | Sequence[str] | None = "0009_revocation_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain column, no foreign key: a parent minted before the registry existed, or registered
    # only when it was revoked, may have no row of its own.
    op.add_column("tokens", sa.Column("parent_id", sa.String(32), nullable=True))
    op.add_column("tokens", sa.Column("key_id", sa.String(64), nullable=True))
    op.add_column(
        "tokens", sa.Column("bounded", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    # The cascade walks parent -> children: one index lookup per token in the tree.
    op.create_index("ix_tokens_parent_id", "tokens", ["parent_id"])
    op.create_index("ix_tokens_key_id", "tokens", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_tokens_key_id", table_name="tokens")
    op.drop_index("ix_tokens_parent_id", table_name="tokens")
    # ALTER TABLE ... DROP COLUMN in place (SQLite >= 3.35): a batch copy of `tokens` would
    # drop the table, and its ON DELETE CASCADE would take the service keys with it.
    op.drop_column("tokens", "bounded")
    op.drop_column("tokens", "key_id")
    op.drop_column("tokens", "parent_id")
