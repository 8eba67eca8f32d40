"""`tokens.spelling_of`: the user name a token's subject is another spelling of.

Since this revision the mint refuses a subject that is another spelling (case, width, accents,
invisible characters aside) of a name a user could have: `Ledger` must be written `ledger`.
Tokens minted before it may carry such subjects; their rows record the user name they spell,
so that making that name a user still needs an unrestricted admin token (review, helper-72:
a `users:write` delegate made `ledger` a user of its own while a `Ledger` service token lived,
and a backend comparing subjects loosely took its logins for the service).

Revision ID: 0011_subject_spellings
Revises: 0010_token_parent

Hand-written, portable to PostgreSQL and SQLite; never import models here (history is frozen):
the spelling rule below is this revision's own copy of tokensvc.accounts.users.spelling_of.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_subject_spellings"
down_revision: str | Sequence[str] | None = "0010_token_parent"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_USER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_DROPPED = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
)


def _spelled(subject: str) -> str | None:
    letters = unicodedata.normalize("NFKD", _DROPPED.sub("", subject))
    letters = "".join(c for c in letters if unicodedata.category(c) not in ("Mn", "Me", "Cf"))
    folded = unicodedata.normalize("NFKC", letters).strip().casefold().lower()
    return folded if folded != subject and _USER_NAME.fullmatch(folded) else None


def upgrade() -> None:
    op.add_column("tokens", sa.Column("spelling_of", sa.String(64), nullable=True))
    op.create_index("ix_tokens_spelling_of", "tokens", ["spelling_of"])
    tokens = sa.table("tokens", sa.column("subject", sa.String), sa.column("spelling_of"))
    connection = op.get_bind()
    # Distinct subjects, not rows: a user's logins share one.
    for (subject,) in connection.execute(sa.select(tokens.c.subject).distinct()):
        spelled = _spelled(subject)
        if spelled is not None:
            connection.execute(
                tokens.update().where(tokens.c.subject == subject).values(spelling_of=spelled)
            )


def downgrade() -> None:
    op.drop_index("ix_tokens_spelling_of", table_name="tokens")
    # In place (SQLite >= 3.35): a batch copy of `tokens` would drop the table, and its ON
    # DELETE CASCADE would take the service keys with it (0010).
    op.drop_column("tokens", "spelling_of")
