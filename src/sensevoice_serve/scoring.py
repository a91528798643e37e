"""From a padded batch of encoder frames to what CTC decoding reads: each utterance's best path (greedy),
its spikes, and the top-k candidates of beam-searched frames, on numpy arrays (the int8 runtime) or torch
tensors where they are (the torch runtime)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .beam_search import FrameCandidates
from .queries import NUM_QUERY_FRAMES
from .runtimes import CTCLogits

if TYPE_CHECKING:
    import torch

BLANK_ID = 0

# Bounds the float32 (rows x vocab) logits held at once: 1024 rows are 100 MB, on a CPU no slower than 4096.
LOGIT_ROWS_PER_CHUNK = 1024
# Rows normalised at once for beam search (numpy in place, torch in a copy on top of those logits).
SEARCHED_ROWS_PER_CHUNK = 512


@dataclass
class Spike:
    """A run of identical non-blank CTC outputs: one emitted token."""

    token_id: int
    first_frame: int
    last_frame: int


class NumpyScorer:
    """Scoring on numpy arrays: the int8 runtime's frames and logits, on the CPU."""

    def mode(self) -> AbstractContextManager[None]:
        return nullcontext()

    def array(self, values: np.ndarray) -> np.ndarray:
        return values

    def argmax(self, logits: np.ndarray) -> np.ndarray:
        return logits.argmax(axis=1)

    def top_k(self, logits: np.ndarray, k: int) -> np.ndarray:
        """Rows of (log-normaliser, blank logit, top-k logits, their ids). Overwrites ``logits``: the rows of
        a chunk of logits that nothing reads after them.

        For a beam's few k, k argmax passes beat ``np.argpartition`` (which writes an index per logit); each
        found top logit is set to -inf, and added back to the normaliser's sum from its recorded value.
        """
        every_row = np.arange(logits.shape[0])
        blank = logits[:, BLANK_ID].copy()
        ids = np.empty((logits.shape[0], k), dtype=np.int64)
        values = np.empty((logits.shape[0], k), dtype=logits.dtype)
        for rank in range(k):
            ids[:, rank] = logits.argmax(axis=1)
            values[:, rank] = logits[every_row, ids[:, rank]]
            logits[every_row, ids[:, rank]] = float("-inf")
        peak = values[:, :1]
        np.subtract(logits, peak, out=logits)
        np.exp(logits, out=logits)
        log_norm = peak[:, 0] + np.log(logits.sum(axis=1) + np.exp(values - peak).sum(axis=1))
        return np.column_stack([log_norm, blank, values, ids])

    def host(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)


class TorchScorer:
    """Scoring on torch tensors where they are (a GPU's): only argmaxes and top-k reach the host."""

    def __init__(self, device: torch.device):
        import torch

        self.torch = torch
        self.device = device

    def mode(self) -> AbstractContextManager[None]:
        return self.torch.inference_mode()

    def array(self, values: np.ndarray) -> torch.Tensor:
        return self.torch.from_numpy(values).to(self.device)

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)

    def top_k(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        """Rows of (log-normaliser, blank logit, top-k logits, their ids), as ``NumpyScorer.top_k``."""
        values, ids = logits.topk(k, dim=1)
        log_norm = self.torch.logsumexp(logits, dim=1)
        return self.torch.cat([log_norm[:, None], logits[:, BLANK_ID, None], values, ids.float()], dim=1)

    def host(self, parts: list[torch.Tensor]) -> np.ndarray:
        return self.torch.cat(parts).cpu().numpy()


Scorer = NumpyScorer | TorchScorer


def scorer_for(encoded: np.ndarray | torch.Tensor) -> Scorer:
    """The int8 runtime hands numpy arrays over, the torch runtime tensors."""
    return NumpyScorer() if isinstance(encoded, np.ndarray) else TorchScorer(encoded.device)


@dataclass(frozen=True)
class FramePlan:
    """Which frames of a padded batch are scored and how, worked out once on the host for either runtime.

    Rows number the valid frames in order: utterance by utterance, padding left out.
    """

    lengths: np.ndarray  # (B,) valid frames per utterance
    valid: np.ndarray  # (B, T) whether a padded frame is an utterance's
    banned_rows: np.ndarray  # rows with a token they may not emit (ban_emo_unk)
    banned_ids: np.ndarray  # and that token
    # Runs of rows whose top-k beam search reads: beam utterances' text frames.
    searched: list[tuple[int, int]]

    @classmethod
    def of(
        cls, lengths: np.ndarray, padded_frames: int, banned: Sequence[int | None], top_k: Sequence[int]
    ) -> FramePlan:
        utterance = np.repeat(np.arange(len(lengths)), lengths)
        banned_ids = np.array([-1 if b is None else b for b in banned], dtype=np.int64)[utterance]
        banned_rows = np.flatnonzero(banned_ids >= 0)
        ends = np.cumsum(lengths).tolist()
        starts = [end - length for end, length in zip(ends, lengths.tolist(), strict=True)]
        searched = [
            (start + NUM_QUERY_FRAMES, end)
            for start, end, k in zip(starts, ends, top_k, strict=True)
            if k and end > start + NUM_QUERY_FRAMES
        ]
        valid = np.arange(padded_frames)[None, :] < lengths[:, None]
        return cls(lengths, valid, banned_rows, banned_ids[banned_rows], searched)

    def searched_counts(self, top_k: Sequence[int]) -> np.ndarray:
        """Searched rows per utterance."""
        return np.array(
            [max(n - NUM_QUERY_FRAMES, 0) if k else 0 for n, k in zip(self.lengths, top_k, strict=True)]
        )


def score_frames(
    ctc: CTCLogits,
    encoded: np.ndarray | torch.Tensor,
    lengths: np.ndarray | torch.Tensor,
    banned: Sequence[int | None],
    top_k: Sequence[int],
) -> tuple[list[np.ndarray], list[FrameCandidates | None]]:
    """Best token per valid frame of each utterance (padding frames are never scored) and, where
    ``top_k[i]`` > 0, the blank and top-k log-probabilities of utterance i's text frames.

    ``banned[i]`` is a token id utterance i may not emit (ban_emo_unk), or None.
    """
    plan = FramePlan.of(np.array(lengths.tolist(), dtype=np.int64), encoded.shape[1], banned, top_k)
    k = max(top_k, default=0)
    scorer = scorer_for(encoded)
    with scorer.mode():
        best, scores = score_rows(ctc, scorer, encoded[scorer.array(plan.valid)], plan, k)
    best_paths = np.split(best, np.cumsum(plan.lengths)[:-1])
    candidates: list[FrameCandidates | None] = []
    for rows, kk in zip(np.split(scores, np.cumsum(plan.searched_counts(top_k))[:-1]), top_k, strict=True):
        log_norm = rows[:, :1]
        candidates.append(
            FrameCandidates(
                NUM_QUERY_FRAMES,
                rows[:, 1] - rows[:, 0],
                rows[:, 2 + k :].astype(np.int64),
                rows[:, 2 : 2 + k] - log_norm,
            )
            if kk
            else None
        )
    return best_paths, candidates


def score_rows(
    ctc: CTCLogits, scorer: Scorer, frames: Any, plan: FramePlan, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The argmax of every row of ``frames`` and the (log-normaliser, blank, top-k, ids) of the searched
    ones, a chunk of logits at a time; searched rows are normalised a few at a time, in place where the
    scorer can: a normalised copy of a whole chunk would double decoding's peak memory."""
    banned_rows, banned_ids = scorer.array(plan.banned_rows), scorer.array(plan.banned_ids)
    best, scores = [], []
    for start in range(0, frames.shape[0], LOGIT_ROWS_PER_CHUNK):
        stop = min(start + LOGIT_ROWS_PER_CHUNK, frames.shape[0])
        logits = ctc.logits(frames[start:stop])
        first, last = (int(i) for i in np.searchsorted(plan.banned_rows, [start, stop]))
        if last > first:
            logits[banned_rows[first:last] - start, banned_ids[first:last]] = float("-inf")
        best.append(scorer.argmax(logits))
        for run_start, run_stop in plan.searched:
            run_start, run_stop = max(run_start, start) - start, min(run_stop, stop) - start
            for part in range(run_start, run_stop, SEARCHED_ROWS_PER_CHUNK):
                scores.append(scorer.top_k(logits[part : min(part + SEARCHED_ROWS_PER_CHUNK, run_stop)], k))
    return (
        scorer.host(best).astype(np.int64) if best else np.zeros(0, np.int64),
        scorer.host(scores).astype(np.float64) if scores else np.zeros((0, 2 + 2 * k)),
    )


def ctc_argmax(
    ctc: CTCLogits,
    encoded: np.ndarray | torch.Tensor,
    lengths: np.ndarray | torch.Tensor,
    banned: Sequence[int | None],
) -> list[np.ndarray]:
    """Best token per valid frame of each utterance: greedy decoding's path."""
    return score_frames(ctc, encoded, lengths, banned, [0] * len(banned))[0]


def collapse(best: np.ndarray) -> list[Spike]:
    """The spikes of a best path on the host (a CPU tensor will do)."""
    best = np.asarray(best)
    if not best.size:
        return []
    starts = np.flatnonzero(np.concatenate(([True], best[1:] != best[:-1])))
    ends = np.append(starts[1:], best.size) - 1
    return [
        Spike(token, start, end)
        for token, start, end in zip(best[starts].tolist(), starts.tolist(), ends.tolist(), strict=True)
        if token != BLANK_ID
    ]
