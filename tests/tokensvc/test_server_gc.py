"""`tokensvc serve` freezes what exists once the app has started, so full collections skip it."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from tests.conftest import make_config
from tokensvc.web import appkeys
from tokensvc.web.app import create_app
from tokensvc.web.server import freeze_startup_objects


async def test_startup_objects_are_frozen_out_of_full_collections(
    aiohttp_client: Any, sqlite_url: str, data_dir: Path
) -> None:
    """After start-up the app, its stores and caches are no longer among the objects a full
    collection walks; objects made afterwards still are."""
    app = create_app(make_config(database_url=sqlite_url, data_dir=data_dir))
    app.on_startup.append(freeze_startup_objects)
    before = gc.get_freeze_count()
    try:
        await aiohttp_client(app)
        frozen = gc.get_freeze_count() - before
        tracked = {id(o) for o in gc.get_objects()}
        later: list[object] = [[]]
        tracked_later = {id(o) for o in gc.get_objects()}
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual

    assert frozen > 10_000
    assert id(app) not in tracked
    assert id(app[appkeys.VERIFIER].cache) not in tracked
    assert id(later) in tracked_later
