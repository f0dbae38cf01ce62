"""Events from the batcher's thread to a request's coroutine: one wake-up of the event loop per burst, and
consecutive text pieces of a choice merged, so that a consumer that lags gets fewer, longer chunks."""

import asyncio
import threading

from ..inference.engine import ChatEvent


class EventRelay:
    """:meth:`emit` from any thread; ``await`` :meth:`burst` in the loop's own."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.pending: list[tuple[int, ChatEvent]] = []
        self.scheduled = False
        self.ready = asyncio.Event()

    def emit(self, index: int, event: ChatEvent) -> None:
        with self.lock:
            self.pending.append((index, event))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self.ready.set)
        except RuntimeError:  # the loop has closed: the server is shutting down
            pass

    async def burst(self) -> list[tuple[int, ChatEvent]]:
        """The events emitted since the last burst (waiting for at least one), text pieces merged."""
        while True:
            await self.ready.wait()
            with self.lock:
                events, self.pending, self.scheduled = self.pending, [], False
                self.ready.clear()
            if events:
                return merged(events)


def merged(events: list[tuple[int, ChatEvent]]) -> list[tuple[int, ChatEvent]]:
    """``events`` with each run of text pieces of the same choice joined into one."""
    joined: list[tuple[int, ChatEvent]] = []
    for index, event in events:
        if event.kind == "text" and joined and joined[-1][0] == index and joined[-1][1].kind == "text":
            joined[-1] = (index, ChatEvent("text", joined[-1][1].text + event.text))
        else:
            joined.append((index, event))
    return joined


__all__ = ["EventRelay", "merged"]
