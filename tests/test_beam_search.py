"""Prefix beam search: exact on small problems (checked against every alignment), batched, hotword-biased,
and never worse than greedy on the real recordings run through the tiny random model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sensevoice_serve.audio import decode_audio
from sensevoice_serve.batching import Utterance
from sensevoice_serve.beam_search import FrameCandidates, prefix_beam_search
from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.hotwords import compile_hotwords, parse_hotwords
from sensevoice_serve.queries import NUM_QUERY_FRAMES
from sensevoice_serve.scoring import collapse

from .conftest import SHARED_AUDIO
from .test_hotwords import LetterTokenizer

CLIP_SECONDS = 15  # of each recording: enough frames to search, quick on a loaded machine
RECORDINGS = sorted(p.name for p in SHARED_AUDIO.glob("*") if p.suffix in (".flac", ".mp3", ".wav"))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def candidates(log_probs: np.ndarray, first_frame: int = 0, k: int | None = None) -> FrameCandidates:
    order = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
    return FrameCandidates(
        first_frame, log_probs[:, 0].copy(), order, np.take_along_axis(log_probs, order, 1)
    )


def every_labeling(log_probs: np.ndarray) -> tuple[dict, dict]:
    """Log-probability of each labeling (summed over its alignments) and its best alignment."""
    total: dict[tuple, float] = {}
    best: dict[tuple, tuple[float, tuple]] = {}
    frames, vocab = log_probs.shape
    for path in itertools.product(range(vocab), repeat=frames):
        score = float(sum(log_probs[t, c] for t, c in enumerate(path)))
        labels = tuple(c for t, c in enumerate(path) if c and (t == 0 or path[t - 1] != c))
        total[labels] = np.logaddexp(total.get(labels, -np.inf), score)
        if score > best.get(labels, (-np.inf,))[0]:
            best[labels] = (score, path)
    return total, best


def spans(path: tuple, offset: int) -> list[tuple[int, int, int]]:
    """(token, first frame, last frame) of each emission of an alignment."""
    runs = []
    for t, c in enumerate(path):
        if c and t and path[t - 1] == c:
            runs[-1] = (c, runs[-1][1], t + offset)
        elif c:
            runs.append((c, t + offset, t + offset))
    return runs


def emitted(hypothesis) -> list[tuple[int, int, int]]:
    return list(zip(hypothesis.tokens, hypothesis.first_frames, hypothesis.last_frames, strict=True))


def random_problem(rng: np.random.Generator, frames: int, vocab: int) -> np.ndarray:
    logits = rng.normal(size=(frames, vocab)) * 2
    logits[:, 0] += rng.choice([0.0, 12.0], size=frames, p=[0.7, 0.3])  # some frames are surely blank
    return log_softmax(logits)


@pytest.mark.parametrize("seed", range(6))
def test_a_wide_beam_finds_the_most_likely_labeling_and_its_best_alignment(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(10):
        log_probs = random_problem(rng, int(rng.integers(1, 7)), int(rng.integers(2, 5)))
        total, best = every_labeling(log_probs)
        labels = max(total, key=total.get)
        (hypothesis,) = prefix_beam_search([candidates(log_probs, first_frame=4)], [200])
        assert tuple(hypothesis.tokens) == labels
        assert hypothesis.log_prob == pytest.approx(total[labels], abs=1e-3)  # skipped frames lose < 0.1 %
        assert emitted(hypothesis) == spans(best[labels][1], offset=4)


@pytest.mark.parametrize("seed", range(3))
def test_with_hotwords_a_wide_beam_maximises_probability_plus_kept_bonus(seed: int) -> None:
    rng = np.random.default_rng(seed)
    graph = compile_hotwords(parse_hotwords(["cb:2", "bcb:1.5", "a:0.5"], 1.0), LetterTokenizer())
    for _ in range(8):
        log_probs = random_problem(rng, int(rng.integers(2, 7)), 4)
        total, _ = every_labeling(log_probs)

        def kept_bonus(labels: tuple) -> float:
            node, kept = np.zeros(1, np.int64), 0.0
            for token in labels:
                node, gain = graph.step(node, np.array([token]))
                kept += gain[0]
            return kept + graph.finish(node)[0]

        labels = max(total, key=lambda t: total[t] + kept_bonus(t))
        (hypothesis,) = prefix_beam_search([candidates(log_probs)], [200], graph, np.zeros(1, np.int64))
        assert tuple(hypothesis.tokens) == labels
        assert hypothesis.bonus == pytest.approx(kept_bonus(labels))


def test_a_batch_decodes_each_utterance_as_alone() -> None:
    rng = np.random.default_rng(7)
    problems = [log_softmax(rng.normal(size=(n, 30)) * 3) for n in (40, 3, 0, 25)]
    widths = [4, 2, 3, 8]
    batch = prefix_beam_search([candidates(p, k=w) for p, w in zip(problems, widths, strict=True)], widths)
    for problem, width, together in zip(problems, widths, batch, strict=True):
        (alone,) = prefix_beam_search([candidates(problem, k=width)], [width])
        assert emitted(together) == emitted(alone)
        assert together.log_prob == pytest.approx(alone.log_prob)


def scripted(frames: list[dict[int, float]], vocab: int = 27) -> np.ndarray:
    """Log-probabilities where frame t gives the listed tokens these probabilities and the blank the rest."""
    probs = np.full((len(frames), vocab), 1e-6)
    for t, row in enumerate(frames):
        for token, p in row.items():
            probs[t, token] = p
        probs[t, 0] = max(1.0 - sum(row.values()), 1e-6)
    return np.log(probs / probs.sum(axis=1, keepdims=True))


def greedy_labels(log_probs: torch.Tensor) -> list[int]:
    return [s.token_id for s in collapse(log_probs.argmax(dim=-1))]


A, B, C, D, X, Y = 1, 2, 3, 4, 24, 25  # letters a b c d x y


def search(log_probs: np.ndarray, *hotwords: str, width: int = 4) -> list[int]:
    graph = compile_hotwords(parse_hotwords(hotwords, 2.0), LetterTokenizer()) if hotwords else None
    (hypothesis,) = prefix_beam_search(
        [candidates(log_probs, k=width)], [width], graph, np.zeros(1, np.int64)
    )
    return hypothesis.tokens


def test_the_hotword_path_that_is_second_best_wins_only_with_its_bonus() -> None:
    log_probs = scripted([{X: 0.6, A: 0.4}, {}, {Y: 0.6, B: 0.4}, {}, {D: 0.9}])
    assert greedy_labels(torch.tensor(log_probs)) == [X, Y, D]
    assert search(log_probs) == [X, Y, D]
    assert search(log_probs, "ab") == [A, B, D]
    assert search(log_probs, "ab", width=2) == [A, B, D]


def test_a_partial_match_is_not_rewarded() -> None:
    # "ab" is the start of the hotword "abc", but "c" never comes: its bonus is taken back, mid-utterance
    # and at the end alike, and the acoustically better "xy" wins.
    middle = scripted([{X: 0.6, A: 0.4}, {}, {Y: 0.6, B: 0.4}, {}, {D: 0.9}])
    assert search(middle, "abc") == [X, Y, D]
    end = scripted([{D: 0.9}, {X: 0.6, A: 0.4}, {}, {Y: 0.6, B: 0.4}])
    assert search(end, "abc") == [D, X, Y]
    assert search(end, "ab") == [D, A, B]


def labeling_log_prob(log_probs: torch.Tensor, labels: list[int]) -> float:
    """Log-probability of ``labels`` summed over all its alignments (CTC's forward algorithm)."""
    target = torch.tensor([labels], dtype=torch.long)
    length = torch.tensor([log_probs.shape[0]])
    loss = F.ctc_loss(log_probs[:, None], target, length, torch.tensor([len(labels)]), reduction="sum")
    return -float(loss)


@pytest.fixture(scope="module")
def recordings(tiny_engine) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Each shared recording's encoder output (its start) from the tiny random model."""
    encoded = []
    for name in RECORDINGS:
        samples = decode_audio(SHARED_AUDIO / name).samples[: CLIP_SECONDS * 16000]
        with torch.inference_mode():
            features, lengths = tiny_engine.features([samples])
            output, output_lengths = tiny_engine.model.encode(features, lengths, ["auto"], [True])
        encoded.append((name, output, output_lengths))
    if not encoded:
        pytest.skip(f"no recordings in {SHARED_AUDIO}")
    return encoded


@pytest.mark.parametrize("width", [4, 10])
def test_a_beam_without_hotwords_scores_at_least_greedy(tiny_engine, recordings, width: int) -> None:
    decoder = tiny_engine.decoder
    for name, encoded, lengths in recordings:
        scores = decoder.score(encoded, lengths, [DecodeOptions(beam_size=width)])
        (hypothesis,) = prefix_beam_search(scores.candidates, [width])
        with torch.inference_mode():
            log_probs = tiny_engine.model.ctc(encoded[0, NUM_QUERY_FRAMES : int(lengths[0])])
        greedy = labeling_log_prob(log_probs, greedy_labels(log_probs))
        assert labeling_log_prob(log_probs, hypothesis.tokens) >= greedy - 1e-4, name


def test_beam_one_is_greedy_on_every_recording_and_tags_do_not_change(tiny_engine) -> None:
    for name in RECORDINGS:
        samples = decode_audio(SHARED_AUDIO / name).samples[: CLIP_SECONDS * 16000]
        (alone,) = tiny_engine.run_batch([Utterance(samples, DecodeOptions())])
        mixed = tiny_engine.run_batch(
            [
                Utterance(samples, DecodeOptions(beam_size=4)),
                Utterance(samples, DecodeOptions()),
                Utterance(samples, DecodeOptions(beam_size=10, hotwords=["ab张三", "cd:3"])),
            ]
        )
        assert mixed[1] == alone, name
        for searched in (mixed[0], mixed[2]):
            tags = ("language", "emotion", "emotion_prob", "event", "itn")
            assert [getattr(searched, t) for t in tags] == [getattr(alone, t) for t in tags], name
            starts = [token.start for token in searched.tokens]
            assert starts == sorted(starts) and all(t.start <= t.end <= alone.end for t in searched.tokens)
