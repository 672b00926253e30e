"""The shell's Once: queued at most once until it runs, and never after the shell has closed."""

from __future__ import annotations

import asyncio

from pipeline.coordinator.shell import Once


def test_once_is_queued_once_until_it_runs_and_never_after_close():
    calls = []

    async def go() -> None:
        once = Once(lambda: calls.append(1))
        once()
        once()  # a second wake-up before it ran: still one run
        await asyncio.sleep(0)
        assert calls == [1]
        once()
        once.close()  # queued, then the sockets it would read are closed
        await asyncio.sleep(0)
        once()
        await asyncio.sleep(0)
        assert calls == [1] and once.closed

    asyncio.run(go())
