"""CTC decoding of a padded batch (greedy, or prefix beam search with hotwords) and the parse of
SenseVoice's tags into a Segment."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

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
from .scoring import CTCLogits, Spike, collapse, score_frames, scorer_for
from .tokenizer import UNKNOWN_EMOTION, Tokenizer

if TYPE_CHECKING:
    import torch

FRAME_SECONDS = 0.06  # one LFR frame: 6 fbank frames of 10 ms
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
class BatchScores:
    """What decoding needs from a batch's encoder output, on the CPU: once it exists the device is free
    for the next forward, and ``CTCDecoder.finish`` turns it into Segments."""

    spikes: list[list[Spike]]  # greedy; for a beam-searched utterance, only its query frames'
    emotion_probs: list[float | None]  # of the first emotion tag among those spikes
    candidates: list[FrameCandidates | None]  # text frames' top-k, for beam-searched utterances


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def frame_time(frame: int) -> float:
    """Seconds from the utterance start of output frame ``frame`` (the first four answer the queries)."""
    return max(frame - NUM_QUERY_FRAMES, 0) * FRAME_SECONDS


class CTCDecoder:
    """Turns encoder output into Segments: tokens, text, and the language / emotion / event tags."""

    def __init__(self, ctc: CTCLogits, tokenizer: Tokenizer):
        self.ctc = ctc
        self.tokenizer = tokenizer
        self.unknown_emotion_id = tokenizer.emotions.get(UNKNOWN_EMOTION)
        self.emotion_rows = np.array(list(tokenizer.emotions.values()), dtype=np.int64)
        self.emotion_column = {token_id: column for column, token_id in enumerate(self.emotion_rows.tolist())}
        self._graphs: OrderedDict[tuple[Hotword, ...], ContextGraph] = OrderedDict()
        self._graphs_lock = threading.Lock()

    def prepare(self, options: DecodeOptions) -> list[str]:
        """Compile (and cache) the options' hotwords before their audio is decoded, so a batch never
        waits for it; returns why phrases were skipped, for the caller to pass on as warnings."""
        return list(self._hotword_graph(options.hotwords).skipped)

    def decode(
        self,
        encoded: np.ndarray | torch.Tensor,
        lengths: np.ndarray | torch.Tensor,
        options: Sequence[DecodeOptions],
        offsets: Sequence[float],
        durations: Sequence[float],
    ) -> list[Segment]:
        return self.finish(self.score(encoded, lengths, options), options, offsets, durations)

    def score(
        self,
        encoded: np.ndarray | torch.Tensor,
        lengths: np.ndarray | torch.Tensor,
        options: Sequence[DecodeOptions],
    ) -> BatchScores:
        """The device's part of decoding: CTC scores of every frame, reduced to what ``finish`` needs.

        ``encoded`` is (B, T, d) and ``lengths`` (B,): torch tensors (on any device) or numpy arrays, as
        the head takes them.
        """
        banned = [self.unknown_emotion_id if o.ban_emo_unk else None for o in options]
        top_k = [0 if o.beam_size == 1 else o.beam_size for o in options]
        best_paths, candidates = score_frames(self.ctc, encoded, lengths, banned, top_k)
        spikes = [
            collapse(best if k == 0 else best[:NUM_QUERY_FRAMES])
            for best, k in zip(best_paths, top_k, strict=True)
        ]
        emotion_spikes = [
            next((s for s in found if s.token_id in self.emotion_column), None) for found in spikes
        ]
        return BatchScores(spikes, self._emotion_probabilities(encoded, emotion_spikes, options), candidates)

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

    def _emotion_probabilities(
        self,
        encoded: np.ndarray | torch.Tensor,
        spikes: list[Spike | None],
        options: Sequence[DecodeOptions],
    ) -> list[float | None]:
        """Each utterance's probability of the emotion its spike emits, among the emotions, at the spike's
        first frame (None without an emotion spike): one small logits call for the batch."""
        found = [index for index, spike in enumerate(spikes) if spike is not None]
        probabilities: list[float | None] = [None] * len(spikes)
        if not found:
            return probabilities
        scorer = scorer_for(encoded)
        with scorer.mode():
            first_frames = np.array([spikes[i].first_frame for i in found])
            frames = encoded[scorer.array(np.array(found)), scorer.array(first_frames)]
            emotion_logits = self.ctc.logits(frames, scorer.array(self.emotion_rows))
        logits = scorer.host([emotion_logits]).astype(np.float64)
        unknown = self.emotion_column.get(self.unknown_emotion_id)
        if unknown is not None:
            logits[np.array([options[i].ban_emo_unk for i in found]), unknown] = float("-inf")
        probs = softmax(logits)
        for row, index in enumerate(found):
            probabilities[index] = round(float(probs[row, self.emotion_column[spikes[index].token_id]]), 4)
        return probabilities
