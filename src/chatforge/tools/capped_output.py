"""Read a child process's stdout and stderr as they arrive, holding at most a fixed number of bytes of each."""

import os
import selectors
import subprocess
import time

TRUNCATION_MARK = "\n…[output truncated]…\n"


class CappedBuffer:
    """The first and the last ``limit // 2`` bytes of a stream; whatever came between them is counted, not kept."""

    def __init__(self, limit: int):
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        if len(self.tail) > self.half:
            excess = len(self.tail) - self.half
            self.dropped += excess
            del self.tail[:excess]

    def text(self) -> str:
        head, tail = self.head.decode(errors="replace"), self.tail.decode(errors="replace")
        return head + (TRUNCATION_MARK if self.dropped else "") + tail


def collect(process: subprocess.Popen, limit_bytes: int, deadline: float) -> tuple[str, str, bool]:
    """Read ``process``'s stdout and stderr pipes until both close and it exits, or until ``deadline`` (a
    :func:`time.monotonic` time) passes: the two texts, each cut to ``limit_bytes``, and whether time ran out.
    Never blocks past the deadline, whatever the process (or a descendant holding its pipes) does."""
    buffers = {process.stdout: CappedBuffer(limit_bytes), process.stderr: CappedBuffer(limit_bytes)}
    with selectors.DefaultSelector() as selector:
        for pipe in buffers:
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    buffers[key.fileobj].add(chunk)
                else:
                    selector.unregister(key.fileobj)
    try:
        process.wait(max(deadline - time.monotonic(), 0))
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    return buffers[process.stdout].text(), buffers[process.stderr].text(), timed_out


__all__ = ["CappedBuffer", "TRUNCATION_MARK", "collect"]
