"""CTC prefix beam search with hotword bonuses, run on a whole batch at once with numpy.

Every utterance keeps ``width`` prefixes, each with the log-probability of all its alignments that end in a
blank and of those that end in its last token (the usual prefix beam search), plus the score of the single
best alignment of each kind: that alignment gives the token times. Only each frame's top-k tokens are
tried, and frames where the blank is near certain are not searched at all: their blank probability is
folded into the next searched frame, which turns a 10 s utterance of about 170 frames into a few dozen
steps on real speech. One step advances every utterance of the batch in a few dozen array operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .hotwords import ContextGraph

BLANK_ID = 0
BLANK_SKIP_LOG_PROB = math.log(0.999)  # a frame whose blank is this likely is not searched
NOT_NEW = -2  # a prefix's token-ending alignment continues an emission already recorded (-1 is the root)
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)

# A prefix's state is one row of floats and one of integers, so that a step gathers two arrays, not 15.
# Log-probabilities of all alignments (P_) and of the best one (V_) ending in a blank or the last token:
P_BLANK, P_TOKEN, V_BLANK, V_TOKEN, BONUS = range(5)
# ENTRY_*: emission record of the last token on the best alignment of that ending; END_BLANK: last frame of
# the last token on the best blank-ending one; HASH / PARENT_HASH: of the token sequence and of it minus its
# last token; NODE: hotword graph node; NEW_PARENT(_END): this step's emission, before it is recorded.
ENTRY_BLANK, ENTRY_TOKEN, END_BLANK, HASH, PARENT_HASH, LENGTH, LAST, NODE, NEW_PARENT, NEW_PARENT_END = (
    range(10)
)


@dataclass
class FrameCandidates:
    """One utterance's searchable frames: each frame's blank and top-k log-probabilities."""

    first_frame: int  # the utterance frame that row 0 scores
    blank: np.ndarray  # (frames,)
    top_ids: np.ndarray  # (frames, k)
    top_log_probs: np.ndarray  # (frames, k)


@dataclass
class Hypothesis:
    tokens: list[int]
    first_frames: list[int]  # where the best alignment emits each token
    last_frames: list[int]  # and the last frame it repeats it
    log_prob: float  # all alignments of the tokens (over the searched frames' top-k)
    bonus: float  # hotword bonus kept at the end


@dataclass
class _Steps:
    """The searched frames of every utterance, padded to the longest: step s of utterance u is a frame."""

    frames: np.ndarray  # (U, S) utterance frame of each step
    counts: np.ndarray  # (U,) steps per utterance
    blank: np.ndarray  # (U, S) blank log-probability at each step's frame
    skipped_blank: np.ndarray  # (U, S) summed blank log-probability of the skipped frames before the step
    has_skipped: np.ndarray  # (U, S)
    top_ids: np.ndarray  # (U, S, K)
    top_log_probs: np.ndarray  # (U, S, K)
    trailing_blank: np.ndarray  # (U,) summed blank log-probability of the skipped frames after the last step


def _steps(candidates: list[FrameCandidates], top_k: np.ndarray) -> _Steps:
    searched = [np.flatnonzero(c.blank <= BLANK_SKIP_LOG_PROB) for c in candidates]
    counts = np.array([len(s) for s in searched], np.int64)
    width, k = int(counts.max(initial=0)), max(c.top_ids.shape[1] for c in candidates)
    shape = (len(candidates), width)
    steps = _Steps(
        frames=np.zeros(shape, np.int64),
        counts=counts,
        blank=np.zeros(shape),
        skipped_blank=np.zeros(shape),
        has_skipped=np.zeros(shape, bool),
        top_ids=np.zeros((*shape, k), np.int64),
        top_log_probs=np.full((*shape, k), -np.inf),
        trailing_blank=np.zeros(len(candidates)),
    )
    for u, (rows, found) in enumerate(zip(candidates, searched, strict=True)):
        n, kept = len(found), int(top_k[u])
        cumulative = np.concatenate([[0.0], np.cumsum(rows.blank, dtype=np.float64)])
        previous = np.concatenate([[-1], found[:-1]])
        steps.frames[u, :n] = found + rows.first_frame
        steps.blank[u, :n] = rows.blank[found]
        steps.skipped_blank[u, :n] = cumulative[found] - cumulative[previous + 1]
        steps.has_skipped[u, :n] = found - previous > 1
        steps.top_ids[u, :n, :kept] = rows.top_ids[found, :kept]
        steps.top_log_probs[u, :n, :kept] = rows.top_log_probs[found, :kept]
        steps.trailing_blank[u] = cumulative[-1] - cumulative[found[-1] + 1 if n else 0]
    return steps


class _Emissions:
    """Append-only records of token emissions: (parent record, token, first frame, parent's last frame)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.count = 0

    def add(
        self, parent: np.ndarray, token: np.ndarray, frame: np.ndarray, parent_end: np.ndarray
    ) -> np.ndarray:
        self.parts.append(np.stack([parent, token, frame, parent_end], axis=1))
        self.count += len(parent)
        return self.count - len(parent) + np.arange(len(parent))

    def table(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros((0, 4), np.int64)


def _start(utterances: int, width: int, roots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every utterance starts from the empty prefix alone; the other places are dead (-inf)."""
    floats = np.full((utterances, width, 5), -np.inf)
    floats[:, 0, [P_BLANK, V_BLANK]] = 0.0
    floats[..., BONUS] = 0.0
    ints = np.zeros((utterances, width, 10), np.int64)
    ints[..., [ENTRY_BLANK, ENTRY_TOKEN, END_BLANK, LAST, NEW_PARENT_END]] = -1
    ints[..., NEW_PARENT] = NOT_NEW
    ints[..., NODE] = roots[:, None]
    return floats, ints


def prefix_beam_search(
    candidates: list[FrameCandidates],
    widths: list[int],
    graph: ContextGraph | None = None,
    roots: np.ndarray | None = None,
) -> list[Hypothesis]:
    """The best hypothesis of each utterance; ``roots[u]`` is its start node in ``graph`` (its hotwords)."""
    all_widths = np.array(widths)
    steps = _steps(candidates, all_widths)
    roots = np.zeros(len(candidates), np.int64) if roots is None else roots
    floats, ints = _start(len(candidates), int(all_widths.max()), roots)
    previous_frame = np.full(len(candidates), -1, np.int64)
    emissions = _Emissions()
    for step in range(steps.frames.shape[1]):
        rows = np.flatnonzero(steps.counts > step)
        f, i, previous = floats[rows], ints[rows], previous_frame[rows]
        _fold_skipped(f, i, steps.has_skipped[rows, step], steps.skipped_blank[rows, step], previous)
        new_f, new_i = _expand(
            f,
            i,
            steps.top_ids[rows, step],
            steps.top_log_probs[rows, step],
            steps.blank[rows, step],
            previous,
            graph,
        )
        frame = steps.frames[rows, step]
        floats[rows], ints[rows] = _prune(f, i, new_f, new_i, all_widths[rows], frame, emissions)
        previous_frame[rows] = frame
    return _best(floats, ints, steps, previous_frame, emissions.table(), graph)


def _fold_skipped(
    f: np.ndarray, i: np.ndarray, where: np.ndarray, blank: np.ndarray, previous_frame: np.ndarray
) -> None:
    """Blank frames that were not searched (before this step, in rows ``where``): every alignment now ends
    in a blank."""
    if not where.any():
        return
    g, gi = f[where], i[where]
    token_better = g[..., V_TOKEN] > g[..., V_BLANK]
    g[..., P_BLANK] = np.logaddexp(g[..., P_BLANK], g[..., P_TOKEN]) + blank[where, None]
    g[..., V_BLANK] = np.maximum(g[..., V_BLANK], g[..., V_TOKEN]) + blank[where, None]
    g[..., [P_TOKEN, V_TOKEN]] = -np.inf
    gi[..., ENTRY_BLANK] = np.where(token_better, gi[..., ENTRY_TOKEN], gi[..., ENTRY_BLANK])
    gi[..., END_BLANK] = np.where(token_better, previous_frame[where, None], gi[..., END_BLANK])
    f[where], i[where] = g, gi


def _expand(
    f: np.ndarray,
    i: np.ndarray,
    ids: np.ndarray,
    log_probs: np.ndarray,
    blank: np.ndarray,
    previous_frame: np.ndarray,
    graph: ContextGraph | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every prefix kept as it is (this frame is a blank or repeats its last token), updated in place, and
    extended by each top-k token, returned as (r, W, K) candidates; an extension equal to a kept prefix
    joins it instead."""
    p_b, p_t, v_b, v_t = (f[..., column].copy() for column in (P_BLANK, P_TOKEN, V_BLANK, V_TOKEN))
    token_better = v_t > v_b
    total, best = np.logaddexp(p_b, p_t), np.maximum(v_b, v_t)
    best_entry = np.where(token_better, i[..., ENTRY_TOKEN], i[..., ENTRY_BLANK])
    best_end = np.where(token_better, previous_frame[:, None], i[..., END_BLANK])
    repeat = ids[:, None, :] == i[..., LAST, None]  # (r, W, K)

    # A repeated token is a new emission only after a blank; any other token may follow either ending.
    token_log_prob = np.where(ids == BLANK_ID, -np.inf, log_probs)[:, None, :]
    new_f = np.empty((*repeat.shape, 5))
    new_f[..., [P_BLANK, V_BLANK]] = -np.inf
    new_f[..., P_TOKEN] = np.where(repeat, p_b[..., None], total[..., None]) + token_log_prob
    new_f[..., V_TOKEN] = np.where(repeat, v_b[..., None], best[..., None]) + token_log_prob
    new_i = np.empty((*repeat.shape, 10), np.int64)
    new_i[..., [ENTRY_BLANK, ENTRY_TOKEN, END_BLANK]] = -1
    new_i[..., NEW_PARENT] = np.where(repeat, i[..., ENTRY_BLANK, None], best_entry[..., None])
    new_i[..., NEW_PARENT_END] = np.where(repeat, i[..., END_BLANK, None], best_end[..., None])
    new_i[..., LAST] = ids[:, None, :]
    new_i[..., LENGTH] = i[..., LENGTH, None] + 1
    new_i[..., PARENT_HASH] = i[..., HASH, None]
    hashes = i[..., HASH, None].view(np.uint64) * _HASH_MULTIPLIER + (ids[:, None, :] + 1).astype(np.uint64)
    new_i[..., HASH] = hashes.view(np.int64)
    if graph is None:
        new_i[..., NODE] = i[..., NODE, None]
        new_f[..., BONUS] = f[..., BONUS, None]
    else:
        nodes = np.broadcast_to(i[..., NODE, None], repeat.shape).ravel()
        reached, gain = graph.step(nodes, new_i[..., LAST].ravel())
        new_i[..., NODE] = reached.reshape(repeat.shape)
        new_f[..., BONUS] = f[..., BONUS, None] + gain.reshape(repeat.shape)

    last_log_prob = np.where(repeat, log_probs[:, None, :], -np.inf).max(axis=2)
    f[..., P_BLANK], f[..., V_BLANK] = total + blank[:, None], best + blank[:, None]
    f[..., P_TOKEN], f[..., V_TOKEN] = p_t + last_log_prob, v_t + last_log_prob
    i[..., ENTRY_BLANK], i[..., END_BLANK] = best_entry, best_end
    i[..., NEW_PARENT], i[..., NEW_PARENT_END] = NOT_NEW, -1
    _join_existing(f, i, new_f, new_i, repeat, alive=np.isfinite(total))
    return new_f, new_i


def _join_existing(
    f: np.ndarray, i: np.ndarray, new_f: np.ndarray, new_i: np.ndarray, repeat: np.ndarray, alive: np.ndarray
) -> None:
    """A kept prefix ``y`` may equal an extension ``w + token`` (``w`` is ``y`` less its last token, which
    is among this frame's top-k): the extension's probability joins ``y``, and its emission becomes ``y``'s
    best token-ending alignment if it beats it. Live prefixes are distinct, so each ``y`` has one such
    ``(w, token)`` at most."""
    parent = (
        (i[:, None, :, HASH] == i[:, :, None, PARENT_HASH])
        & (i[:, None, :, LENGTH] + 1 == i[:, :, None, LENGTH])
        & alive[:, None, :]
    )  # (r, y, w)
    r, y = np.nonzero(parent.any(axis=2) & repeat.any(axis=2) & alive)
    if not len(r):
        return
    w, k = parent[r, y].argmax(axis=1), repeat[r, y].argmax(axis=1)
    f[r, y, P_TOKEN] = np.logaddexp(f[r, y, P_TOKEN], new_f[r, w, k, P_TOKEN])
    new_f[r, w, k, P_TOKEN] = -np.inf
    wins = new_f[r, w, k, V_TOKEN] > f[r, y, V_TOKEN]
    r, y, w, k = r[wins], y[wins], w[wins], k[wins]
    f[r, y, V_TOKEN] = new_f[r, w, k, V_TOKEN]
    i[r, y, NEW_PARENT] = new_i[r, w, k, NEW_PARENT]
    i[r, y, NEW_PARENT_END] = new_i[r, w, k, NEW_PARENT_END]


def _prune(
    f: np.ndarray,
    i: np.ndarray,
    new_f: np.ndarray,
    new_i: np.ndarray,
    widths: np.ndarray,
    frame: np.ndarray,
    emissions: _Emissions,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``widths[r]`` best of the kept and extended prefixes (acoustics plus hotword bonus), with the
    emissions of token-ending alignments that start at this frame recorded."""
    count, width = f.shape[:2]
    pool_f = np.concatenate([f, new_f.reshape(count, -1, 5)], axis=1)
    pool_i = np.concatenate([i, new_i.reshape(count, -1, 10)], axis=1)
    score = np.logaddexp(pool_f[..., P_BLANK], pool_f[..., P_TOKEN]) + pool_f[..., BONUS]
    order = np.argsort(-score, axis=1, kind="stable")[:, :width]
    rows = np.arange(count)[:, None]
    f, i = pool_f[rows, order], pool_i[rows, order]
    f[np.arange(width)[None, :] >= widths[:, None], : V_TOKEN + 1] = -np.inf
    r, w = np.nonzero((i[..., NEW_PARENT] != NOT_NEW) & np.isfinite(f[..., P_TOKEN]))
    if len(r):
        i[r, w, ENTRY_TOKEN] = emissions.add(
            i[r, w, NEW_PARENT], i[r, w, LAST], frame[r], i[r, w, NEW_PARENT_END]
        )
    return f, i


def _best(
    floats: np.ndarray,
    ints: np.ndarray,
    steps: _Steps,
    previous_frame: np.ndarray,
    table: np.ndarray,
    graph: ContextGraph | None,
) -> list[Hypothesis]:
    """Each utterance's best prefix once unfinished hotword matches give their bonus back."""
    bonus = floats[..., BONUS] + (graph.finish(ints[..., NODE]) if graph is not None else 0.0)
    log_prob = np.logaddexp(floats[..., P_BLANK], floats[..., P_TOKEN])
    hypotheses = []
    for u, w in enumerate(np.argmax(log_prob + bonus, axis=1)):
        f, i = floats[u, w], ints[u, w]
        if f[V_TOKEN] > f[V_BLANK]:
            entry, end = i[ENTRY_TOKEN], previous_frame[u]
        else:
            entry, end = i[ENTRY_BLANK], i[END_BLANK]
        emitted = []
        while entry >= 0:
            parent, token, first, parent_end = table[entry].tolist()
            emitted.append((token, first, int(end)))
            entry, end = parent, parent_end
        emitted.reverse()
        hypotheses.append(
            Hypothesis(
                tokens=[e[0] for e in emitted],
                first_frames=[e[1] for e in emitted],
                last_frames=[e[2] for e in emitted],
                log_prob=float(log_prob[u, w] + steps.trailing_blank[u]),
                bonus=float(bonus[u, w]),
            )
        )
    return hypotheses
