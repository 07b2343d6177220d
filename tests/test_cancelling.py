"""A retrying background loop stops when cancelled, even when the cancel surfaces from an
`await` as TimeoutError (Python 3.11's asyncio.timeout can do that when a cancel lands as the
timeout fires; runtime/cancelling.py)."""

from __future__ import annotations

import asyncio

from botpulse.runtime.cancelling import reraise_if_cancelled


async def _call_that_turns_a_cancel_into_a_timeout() -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise TimeoutError from None  # what the race in asyncio.timeout hands back


async def _retrying_loop(rounds: list[int], *, checks: bool, limit: int = 5) -> None:
    while len(rounds) < limit:
        rounds.append(1)
        try:
            await _call_that_turns_a_cancel_into_a_timeout()
        except Exception:
            if checks:
                reraise_if_cancelled()


async def _cancel_each_round(task: asyncio.Task[None]) -> None:
    while not task.done():
        await asyncio.sleep(0.005)
        task.cancel()


async def test_a_retrying_loop_that_checks_stops_on_cancel() -> None:
    rounds: list[int] = []
    task = asyncio.create_task(_retrying_loop(rounds, checks=True))
    await _cancel_each_round(task)
    assert task.cancelled() and len(rounds) == 1


async def test_without_the_check_the_cancel_is_lost() -> None:
    # The case the check exists for: the loop swallows every cancel and runs all its rounds.
    rounds: list[int] = []
    task = asyncio.create_task(_retrying_loop(rounds, checks=False))
    await _cancel_each_round(task)
    assert not task.cancelled() and len(rounds) == 5
