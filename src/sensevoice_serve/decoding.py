"""Greedy CTC over a padded batch, and the parse of SenseVoice's tags into a Segment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import InvalidOption
from .model import LANGUAGE_QUERY, NUM_QUERY_FRAMES, CTCHead
from .results import Segment, Token
from .tokenizer import UNKNOWN_EMOTION, Tokenizer

FRAME_SECONDS = 0.06  # one LFR frame: 6 fbank frames of 10 ms
BLANK_ID = 0
LOGIT_ROWS_PER_CHUNK = 4096  # bounds the float32 (rows x vocab) logits held at once


@dataclass(frozen=True)
class DecodeOptions:
    language: str = "auto"
    use_itn: bool = True
    ban_emo_unk: bool = False

    def __post_init__(self) -> None:
        if self.language not in LANGUAGE_QUERY:
            raise InvalidOption(
                f"unsupported language {self.language!r}: choose one of {', '.join(LANGUAGE_QUERY)}"
            )


@dataclass
class Spike:
    """A run of identical non-blank CTC outputs: one emitted token."""

    token_id: int
    first_frame: int
    last_frame: int


def ctc_argmax(
    ctc: CTCHead, encoded: torch.Tensor, lengths: torch.Tensor, banned: Sequence[int | None]
) -> list[torch.Tensor]:
    """Best token per valid frame of each utterance (padding frames are never scored).

    ``banned[i]`` is a token id utterance i may not emit (ban_emo_unk), or None.
    """
    lengths_list = lengths.tolist()
    valid = torch.arange(encoded.shape[1], device=encoded.device)[None, :] < lengths[:, None]
    frames = encoded[valid]
    banned_per_frame = torch.repeat_interleave(
        torch.tensor([-1 if b is None else b for b in banned], device=encoded.device),
        lengths.to(encoded.device),
    )
    best = []
    for start in range(0, frames.shape[0], LOGIT_ROWS_PER_CHUNK):
        logits = ctc.logits(frames[start : start + LOGIT_ROWS_PER_CHUNK])
        ban = banned_per_frame[start : start + LOGIT_ROWS_PER_CHUNK]
        rows = torch.nonzero(ban >= 0).squeeze(1)
        logits[rows, ban[rows]] = float("-inf")
        best.append(logits.argmax(dim=-1))
    return list(torch.cat(best).cpu().split(lengths_list))


def collapse(best: torch.Tensor) -> list[Spike]:
    tokens, counts = torch.unique_consecutive(best, return_counts=True)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    return [
        Spike(token, start, end - 1)
        for token, start, end in zip(tokens.tolist(), starts.tolist(), ends.tolist(), strict=True)
        if token != BLANK_ID
    ]


def frame_time(frame: int) -> float:
    """Seconds from the utterance start of output frame ``frame`` (the first four answer the queries)."""
    return max(frame - NUM_QUERY_FRAMES, 0) * FRAME_SECONDS


class CTCDecoder:
    """Turns encoder output into Segments: tokens, text, and the language / emotion / event tags."""

    def __init__(self, ctc: CTCHead, tokenizer: Tokenizer):
        self.ctc = ctc
        self.tokenizer = tokenizer
        self.unknown_emotion_id = tokenizer.emotions.get(UNKNOWN_EMOTION)
        self.emotion_names = list(tokenizer.emotions)
        self.emotion_rows = torch.tensor(list(tokenizer.emotions.values()), dtype=torch.long)

    def decode(
        self,
        encoded: torch.Tensor,
        lengths: torch.Tensor,
        options: Sequence[DecodeOptions],
        offsets: Sequence[float],
        durations: Sequence[float],
    ) -> list[Segment]:
        banned = [self.unknown_emotion_id if o.ban_emo_unk else None for o in options]
        best_paths = ctc_argmax(self.ctc, encoded, lengths, banned)
        segments = []
        for index, best in enumerate(best_paths):
            spikes = collapse(best)
            segment = self._segment(spikes, offsets[index], durations[index])
            emotion_spike = next(
                (s for s in spikes if self.tokenizer.tag_name(s.token_id) == segment.emotion), None
            )
            if emotion_spike is not None and segment.emotion is not None:
                segment.emotion_prob = self._emotion_probability(
                    encoded[index, emotion_spike.first_frame], segment.emotion, options[index].ban_emo_unk
                )
            segments.append(segment)
        return segments

    def _segment(self, spikes: list[Spike], offset: float, duration: float) -> Segment:
        tokenizer = self.tokenizer
        ids = [spike.token_id for spike in spikes]
        raw_text = tokenizer.decode(ids)
        first: dict[str, str] = {}
        tokens = []
        for spike in spikes:
            name = tokenizer.tag_name(spike.token_id)
            if name is None:
                tokens.append(
                    Token(
                        id=spike.token_id,
                        text=tokenizer.piece(spike.token_id),
                        start=round(offset + min(frame_time(spike.first_frame), duration), 3),
                        # The last LFR frame is padded past the audio: a token never outlasts its segment.
                        end=round(offset + min(frame_time(spike.last_frame + 1), duration), 3),
                    )
                )
                continue
            for kind, table in (
                ("language", tokenizer.languages),
                ("emotion", tokenizer.emotions),
                ("event", tokenizer.events),
                ("textnorm", tokenizer.textnorms),
            ):
                if name in table:
                    first.setdefault(kind, name)
        textnorm = first.get("textnorm")
        return Segment(
            start=round(offset, 3),
            end=round(offset + duration, 3),
            text=tokenizer.decode([t.id for t in tokens]).strip(),
            raw_text=raw_text,
            language=first.get("language"),
            emotion=first.get("emotion"),
            event=first.get("event"),
            itn=None if textnorm is None else textnorm == "withitn",
            tokens=tokens,
        )

    def _emotion_probability(self, frame: torch.Tensor, emotion: str, ban_unknown: bool) -> float:
        logits = self.ctc.logits(frame[None], self.emotion_rows.to(frame.device))[0]
        if ban_unknown and UNKNOWN_EMOTION in self.emotion_names:
            logits[self.emotion_names.index(UNKNOWN_EMOTION)] = float("-inf")
        return round(float(torch.softmax(logits, dim=-1)[self.emotion_names.index(emotion)]), 4)
