"""Incremental detokenization with stop strings, on the host.

A request's text is released piece by piece as tokens arrive; a piece never ends inside a
multi-byte character (the tokenizer shows one as U+FFFD until its last byte arrives), and
text that could still become a stop string is held back until it cannot. A stop string
ends the request with the text cut before it.
"""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    """The text of a growing token sequence, released incrementally."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0  # characters released so far
        self.stopped = False

    def add(self, ids: Sequence[int], final: bool = False) -> str:
        """Append token ids (eos excluded) and return the newly released text; `final`
        releases everything left. After a stop string, `stopped` is True and nothing more
        is released."""
        if self.stopped:
            return ""
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._find_stop(text)
        if cut is not None:
            self.stopped = True
            end = cut
        elif final:
            end = len(text)
        else:
            end = len(text) - self.hold
            while end > self.sent and text[end - 1] == REPLACEMENT:
                end -= 1  # an incomplete multi-byte character
        if end <= self.sent:
            return ""
        piece, self.sent = text[self.sent : end], end
        return piece

    def _find_stop(self, text: str) -> int | None:
        """Where the earliest stop string starts in the unreleased part (None: nowhere)."""
        start = max(self.sent - self.hold, 0)
        found = [i for s in self.stop if (i := text.find(s, start)) >= 0]
        return min(found) if found else None
