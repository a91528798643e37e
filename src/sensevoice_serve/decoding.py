"""CTC decoding of a padded batch (greedy, or prefix beam search with hotwords) and the parse of
SenseVoice's tags into a Segment."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .beam_search import FrameCandidates, Hypothesis, prefix_beam_search
from .errors import InvalidOption
from .hotwords import (
    DEFAULT_HOTWORD_SCORE,
    ContextGraph,
    Hotword,
    compile_hotwords,
    parse_hotwords,
    stack_graphs,
)
from .queries import LANGUAGE_QUERY, NUM_QUERY_FRAMES
from .results import Segment, Token
from .tokenizer import UNKNOWN_EMOTION, Tokenizer

if TYPE_CHECKING:
    from .model import CTCHead

FRAME_SECONDS = 0.06  # one LFR frame: 6 fbank frames of 10 ms
BLANK_ID = 0
LOGIT_ROWS_PER_CHUNK = 4096  # bounds the float32 (rows x vocab) logits held at once
SEARCHED_ROWS_PER_CHUNK = 512  # rows normalised at once for beam search, on top of those logits
MAX_BEAM_SIZE = 16
CACHED_HOTWORD_GRAPHS = 8


@dataclass(frozen=True)
class DecodeOptions:
    """How one utterance is decoded. ``beam_size`` 1 is greedy; hotwords need a beam (2 or more).

    ``hotwords`` takes phrases (``"ComfyUI"``, ``"ComfyUI:3.0"`` with its own boost) or ``Hotword`` pairs and
    holds them checked, as ``Hotword`` pairs with ``hotword_score`` filled in where no boost was given.
    """

    language: str = "auto"
    use_itn: bool = True
    ban_emo_unk: bool = False
    beam_size: int = 1
    hotwords: tuple[Hotword, ...] = ()
    hotword_score: float = DEFAULT_HOTWORD_SCORE

    def __post_init__(self) -> None:
        if self.language not in LANGUAGE_QUERY:
            raise InvalidOption(
                f"unsupported language {self.language!r}: choose one of {', '.join(LANGUAGE_QUERY)}"
            )
        if isinstance(self.beam_size, bool) or not isinstance(self.beam_size, int):
            raise InvalidOption(f"beam_size must be a whole number, not {self.beam_size!r}")
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise InvalidOption(f"beam_size must be from 1 (greedy) to {MAX_BEAM_SIZE}, not {self.beam_size}")
        object.__setattr__(self, "hotwords", parse_hotwords(self.hotwords, self.hotword_score))
        if self.hotwords and self.beam_size == 1:
            raise InvalidOption("hotwords need beam search: set beam_size to 2 or more (4 is a good start)")


@dataclass
class Spike:
    """A run of identical non-blank CTC outputs: one emitted token."""

    token_id: int
    first_frame: int
    last_frame: int


@dataclass
class BatchScores:
    """What decoding needs from a batch's encoder output, on the CPU: once it exists the device is free
    for the next forward, and ``CTCDecoder.finish`` turns it into Segments."""

    spikes: list[list[Spike]]  # greedy; for a beam-searched utterance, only its query frames'
    emotion_probs: list[float | None]  # of the first emotion tag among those spikes
    candidates: list[FrameCandidates | None]  # text frames' top-k, for beam-searched utterances


def score_frames(
    ctc: CTCHead,
    encoded: torch.Tensor,
    lengths: torch.Tensor,
    banned: Sequence[int | None],
    top_k: Sequence[int],
) -> tuple[list[torch.Tensor], list[FrameCandidates | None]]:
    """Best token per valid frame of each utterance (padding frames are never scored) and, where
    ``top_k[i]`` > 0, the blank and top-k log-probabilities of utterance i's text frames.

    ``banned[i]`` is a token id utterance i may not emit (ban_emo_unk), or None.
    """
    lengths_list, device = lengths.tolist(), encoded.device
    positions = torch.arange(encoded.shape[1], device=device)[None, :].expand(len(lengths_list), -1)
    valid = positions < lengths.to(device)[:, None]
    frames = encoded[valid]

    def per_frame(values: list[int]) -> torch.Tensor:
        return torch.repeat_interleave(torch.tensor(values, device=device), lengths.to(device))

    banned_per_frame = per_frame([-1 if b is None else b for b in banned])
    searched = (per_frame(list(top_k)) > 0) & (positions[valid] >= NUM_QUERY_FRAMES)
    k = max(top_k, default=0)
    best, searched_scores = [], []
    for start in range(0, frames.shape[0], LOGIT_ROWS_PER_CHUNK):
        chunk = slice(start, start + LOGIT_ROWS_PER_CHUNK)
        logits = ctc.logits(frames[chunk])
        ban = banned_per_frame[chunk]
        rows = torch.nonzero(ban >= 0).squeeze(1)
        logits[rows, ban[rows]] = float("-inf")
        best.append(logits.argmax(dim=-1))
        if k:
            searched_scores += top_k_log_probs(logits, searched[chunk], k)
    best_paths = list(torch.cat(best).cpu().split(lengths_list))
    if not k:
        return best_paths, [None] * len(lengths_list)
    counts = [max(n - NUM_QUERY_FRAMES, 0) if kk else 0 for n, kk in zip(lengths_list, top_k, strict=True)]
    scores = (
        torch.cat(searched_scores).cpu().double().numpy() if searched_scores else np.zeros((0, 1 + 2 * k))
    )
    candidates: list[FrameCandidates | None] = []
    for rows, kk in zip(np.split(scores, np.cumsum(counts)[:-1]), top_k, strict=True):
        candidates.append(
            FrameCandidates(
                NUM_QUERY_FRAMES, rows[:, 0], rows[:, 1 + k :].astype(np.int64), rows[:, 1 : 1 + k]
            )
            if kk
            else None
        )
    return best_paths, candidates


def top_k_log_probs(logits: torch.Tensor, rows: torch.Tensor, k: int) -> list[torch.Tensor]:
    """(blank, k log-probabilities, their ids) of the ``rows`` of ``logits``, a few rows at a time: the
    normalised copy of a whole chunk of logits would double decoding's peak memory."""
    scores = []
    for start in range(0, logits.shape[0], SEARCHED_ROWS_PER_CHUNK):
        part = slice(start, start + SEARCHED_ROWS_PER_CHUNK)
        if rows[part].any():
            log_probs = torch.log_softmax(logits[part][rows[part]], dim=-1)
            values, ids = log_probs.topk(k, dim=-1)
            scores.append(torch.cat([log_probs[:, BLANK_ID, None], values, ids.double()], dim=1))
    return scores


def ctc_argmax(
    ctc: CTCHead, encoded: torch.Tensor, lengths: torch.Tensor, banned: Sequence[int | None]
) -> list[torch.Tensor]:
    """Best token per valid frame of each utterance: greedy decoding's path."""
    return score_frames(ctc, encoded, lengths, banned, [0] * len(banned))[0]


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
        self._graphs: OrderedDict[tuple[Hotword, ...], ContextGraph] = OrderedDict()
        self._graphs_lock = threading.Lock()

    def prepare(self, options: DecodeOptions) -> list[str]:
        """Compile (and cache) the options' hotwords before their audio is decoded, so a batch never
        waits for it; returns why phrases were skipped, for the caller to pass on as warnings."""
        return list(self._hotword_graph(options.hotwords).skipped)

    def decode(
        self,
        encoded: torch.Tensor,
        lengths: torch.Tensor,
        options: Sequence[DecodeOptions],
        offsets: Sequence[float],
        durations: Sequence[float],
    ) -> list[Segment]:
        return self.finish(self.score(encoded, lengths, options), options, offsets, durations)

    @torch.inference_mode()
    def score(
        self, encoded: torch.Tensor, lengths: torch.Tensor, options: Sequence[DecodeOptions]
    ) -> BatchScores:
        """The device's part of decoding: CTC scores of every frame, reduced to what ``finish`` needs."""
        banned = [self.unknown_emotion_id if o.ban_emo_unk else None for o in options]
        top_k = [0 if o.beam_size == 1 else o.beam_size for o in options]
        best_paths, candidates = score_frames(self.ctc, encoded, lengths, banned, top_k)
        scores = BatchScores([], [], candidates)
        for index, best in enumerate(best_paths):
            spikes = collapse(best if top_k[index] == 0 else best[:NUM_QUERY_FRAMES])
            emotion_spike = next(
                (s for s in spikes if self.tokenizer.tag_name(s.token_id) in self.emotion_names), None
            )
            scores.spikes.append(spikes)
            scores.emotion_probs.append(
                None
                if emotion_spike is None
                else self._emotion_probability(
                    encoded[index, emotion_spike.first_frame],
                    self.tokenizer.tag_name(emotion_spike.token_id),
                    options[index].ban_emo_unk,
                )
            )
        return scores

    def finish(
        self,
        scores: BatchScores,
        options: Sequence[DecodeOptions],
        offsets: Sequence[float],
        durations: Sequence[float],
    ) -> list[Segment]:
        """The CPU's part: beam search where asked, tags, tokens and their times."""
        searched = self._beam_search(scores.candidates, options)
        segments = []
        for index, spikes in enumerate(scores.spikes):
            hypothesis = searched.get(index)
            if hypothesis is not None:
                spikes = spikes + [
                    Spike(*emission)
                    for emission in zip(
                        hypothesis.tokens, hypothesis.first_frames, hypothesis.last_frames, strict=True
                    )
                ]
            segment = self._segment(spikes, offsets[index], durations[index])
            emotion_tags = (self.tokenizer.tag_name(s.token_id) for s in scores.spikes[index])
            if segment.emotion is not None and segment.emotion in emotion_tags:
                segment.emotion_prob = scores.emotion_probs[index]
            segments.append(segment)
        return segments

    def _beam_search(
        self, candidates: list[FrameCandidates | None], options: Sequence[DecodeOptions]
    ) -> dict[int, Hypothesis]:
        """One search over every beam-decoded utterance of the batch, each with its own width and hotwords."""
        indices = [i for i, c in enumerate(candidates) if c is not None]
        if not indices:
            return {}
        # A request's utterances share one list: told apart by identity, 10,000 phrases are not rehashed.
        hotword_lists = {id(options[i].hotwords): options[i].hotwords for i in indices}
        graph, roots = None, None
        if any(hotword_lists.values()):
            graph, offsets = stack_graphs([self._hotword_graph(h) for h in hotword_lists.values()])
            position = {key: offset for key, offset in zip(hotword_lists, offsets, strict=True)}
            roots = np.array([position[id(options[i].hotwords)] for i in indices])
        hypotheses = prefix_beam_search(
            [candidates[i] for i in indices], [options[i].beam_size for i in indices], graph, roots
        )
        return dict(zip(indices, hypotheses, strict=True))

    def _hotword_graph(self, hotwords: tuple[Hotword, ...]) -> ContextGraph:
        with self._graphs_lock:
            graph = self._graphs.get(hotwords)
            if graph is not None:
                self._graphs.move_to_end(hotwords)
                return graph
        graph = compile_hotwords(hotwords, self.tokenizer)
        with self._graphs_lock:
            self._graphs[hotwords] = graph
            while len(self._graphs) > CACHED_HOTWORD_GRAPHS:
                self._graphs.popitem(last=False)
        return graph

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
