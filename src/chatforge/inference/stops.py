"""Stop strings applied to streamed text: nothing that could begin a stop string is passed on until it is known
not to be one, and the text ends right before the first stop string."""

from collections.abc import Sequence


class StopStrings:
    """Feed pieces of text; get back what can be shown and whether a stop string was reached."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [stop for stop in stops if stop]
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        text = self.held + piece
        found = [at for at in (text.find(stop) for stop in self.stops) if at >= 0]
        if found:
            self.held = ""
            return text[:min(found)], True
        keep = max((size for stop in self.stops for size in range(1, len(stop)) if text.endswith(stop[:size])),
                   default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """What was held back, once the text is over without a stop string."""
        held, self.held = self.held, ""
        return held


__all__ = ["StopStrings"]
