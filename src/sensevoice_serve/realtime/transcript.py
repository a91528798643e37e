"""One item's partial results -> the text deltas sent for it.

A partial re-decodes the whole open utterance, so it may revise what an earlier partial said, but a delta
can only append (that is all an OpenAI client does with it). So a delta carries only text two consecutive
partials agree on, their common token prefix, which later audio rarely changes; the final transcript adds
its remainder when it extends what was sent. Each delta event also carries the latest whole hypothesis, for
clients that redraw it rather than append.
"""

from __future__ import annotations

from ..results import Segment, render_tokens


class ItemText:
    def __init__(self) -> None:
        self.sent = ""  # the deltas so far, joined
        self.hypothesis = ""  # the latest partial's whole text
        self._previous_ids: list[int] | None = None

    def partial(self, segment: Segment) -> str | None:
        """The delta a new partial result allows ("" when it only changes the hypothesis), or None when it
        changes nothing."""
        ids = [token.id for token in segment.tokens]
        agreed = 0
        if self._previous_ids is not None:
            for mine, theirs in zip(ids, self._previous_ids, strict=False):
                if mine != theirs:
                    break
                agreed += 1
        self._previous_ids = ids
        delta = self._extension(render_tokens(segment.tokens[:agreed]))
        changed = segment.text != self.hypothesis
        self.hypothesis = segment.text
        return delta if delta or changed else None

    def final(self, transcript: str) -> str:
        """What the final transcript adds to the deltas sent ("" when it revises them: the completed event's
        transcript is what counts)."""
        return self._extension(transcript)

    def _extension(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
