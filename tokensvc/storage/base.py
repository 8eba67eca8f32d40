"""The declarative base of tokensvc's own tables.

keystore keeps its tables (root keys, service keys, the discharger key) on a base of its own, so
that it stays a library that imports nothing of tokensvc; both share the naming convention and
the UTC timestamp type, and one migration history (tokensvc/storage/migrations) creates both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from keystore.db import NAMING_CONVENTION, UTCDateTime


class Base(DeclarativeBase):
    """The base of every tokensvc table: users, subject generations, the registry, audit."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}
