"""The root_keys table. Only `keystore.store` issues SQL against it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from keystore.db import Base

KEY_ID_MAX_LENGTH = 64


class RootKeyRow(Base):
    """One root key, encrypted under the key-encryption key named by `kek_id`.

    `slot` numbers the generate interval of a scheduled key and is NULL for manual rotations; its
    unique constraint is what lets racing replicas make exactly one key per interval.
    """

    __tablename__ = "root_keys"

    id: Mapped[str] = mapped_column(String(KEY_ID_MAX_LENGTH), primary_key=True)
    slot: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    kek_id: Mapped[str] = mapped_column(String(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)

    def __repr__(self) -> str:
        return (
            f"RootKeyRow(id={self.id!r}, slot={self.slot!r}, created_at={self.created_at!r},"
            f" expires_at={self.expires_at!r}, kek_id={self.kek_id!r})"
        )
