"""Periodic background rounds: a fixed rate, so a round's duration does not stretch the period."""

from __future__ import annotations

import asyncio

import pytest

from tokensvc.operations.background import every


@pytest.mark.serial  # wall-clock bound: run alone
async def test_rounds_start_at_a_fixed_rate_whatever_each_takes() -> None:
    """0.1 s rounds that each take 0.08 s start 0.1 s apart, not 0.18 s."""
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def job() -> None:
        starts.append(loop.time())
        await asyncio.sleep(0.08)

    task = asyncio.create_task(every(0.1, job, what="test rounds"))
    await asyncio.sleep(1.05)
    task.cancel()
    assert len(starts) >= 6
    mean_gap = (starts[-1] - starts[0]) / (len(starts) - 1)
    assert mean_gap < 0.14  # sleeping after each round would make it 0.18


async def test_a_round_that_overruns_is_not_followed_at_once() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def job() -> None:
        starts.append(loop.time())
        await asyncio.sleep(0.15 if len(starts) == 1 else 0.0)

    task = asyncio.create_task(every(0.1, job, what="test rounds"))
    await asyncio.sleep(0.5)
    task.cancel()
    assert starts[1] - starts[0] >= 0.15 + 0.1 - 0.01  # the overrun, then a whole interval
