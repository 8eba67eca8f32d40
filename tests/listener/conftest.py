"""Tests of code that holds transports itself (tokensvc.web.verifyport): each runs on asyncio's
loop and on uvloop's, which `tokensvc serve` runs. Their transports differ (uvloop's are not
asyncio.Transport subclasses, and read at other times), so one loop alone proves little."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
