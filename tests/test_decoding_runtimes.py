"""The int8 runtime's numpy scoring against the torch runtime's, on random logits without ties."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sensevoice_serve import scoring
from sensevoice_serve.beam_search import FrameCandidates
from sensevoice_serve.decoding import BatchScores, CTCDecoder, DecodeOptions
from sensevoice_serve.model import CTCHead
from sensevoice_serve.queries import NUM_QUERY_FRAMES
from sensevoice_serve.random_checkpoint import write_tokenizer
from sensevoice_serve.tokenizer import UNKNOWN_EMOTION, Tokenizer

from .test_decoding import NumpyHead

LENGTHS = [30, 7, 45, 4, 22, 13]
OPTIONS = [
    DecodeOptions(),
    DecodeOptions(ban_emo_unk=True),
    DecodeOptions(beam_size=4),
    DecodeOptions(beam_size=2, ban_emo_unk=True),
    DecodeOptions(beam_size=7),
    DecodeOptions(beam_size=3),
]
EMOTION_FRAME = 2


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "bpe.model"
    write_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path: Path) -> Tokenizer:
    return Tokenizer(tokenizer_path)


def random_batch(tokenizer: Tokenizer, seed: int = 0) -> tuple[CTCHead, torch.Tensor, torch.Tensor]:
    """Random logits, exactly the same from either head: frame t of utterance b is a one-hot vector picking
    its own column of the weights. Each utterance's emotion frame ranks the unknown emotion first, then the
    others at random, above any other token."""
    rng = np.random.default_rng(seed)
    slots = sum(LENGTHS)
    weight = rng.standard_normal((tokenizer.vocab_size, slots)).astype(np.float32)
    encoded = torch.zeros(len(LENGTHS), max(LENGTHS), slots)
    emotion_rows = list(tokenizer.emotions.values())
    unknown = tokenizer.emotions[UNKNOWN_EMOTION]
    slot = 0
    for b, length in enumerate(LENGTHS):
        encoded[b, torch.arange(length), torch.arange(slot, slot + length)] = 1.0
        emotion_logits = 20.0 + rng.permutation(len(emotion_rows))
        weight[emotion_rows, slot + EMOTION_FRAME] = emotion_logits
        weight[unknown, slot + EMOTION_FRAME] = emotion_logits.max() + 1
        slot += length
    head = CTCHead(slots, tokenizer.vocab_size)
    with torch.no_grad():
        head.ctc_lo.weight.copy_(torch.from_numpy(weight))
        head.ctc_lo.bias.zero_()
    return head, encoded, torch.tensor(LENGTHS)


def both_scores(tokenizer: Tokenizer, seed: int = 0) -> tuple[BatchScores, BatchScores]:
    head, encoded, lengths = random_batch(tokenizer, seed)
    torch_scores = CTCDecoder(head, tokenizer).score(encoded, lengths, OPTIONS)
    numpy_scores = CTCDecoder(NumpyHead(head), tokenizer).score(encoded.numpy(), lengths.numpy(), OPTIONS)
    return torch_scores, numpy_scores


def assert_same_candidates(got: FrameCandidates | None, expected: FrameCandidates | None) -> None:
    assert (got is None) == (expected is None)
    if got is None or expected is None:
        return
    assert got.first_frame == expected.first_frame
    np.testing.assert_array_equal(got.top_ids, expected.top_ids)
    # The two runtimes' log-normalisers differ in float32 rounding only.
    np.testing.assert_allclose(got.blank, expected.blank, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.top_log_probs, expected.top_log_probs, rtol=0, atol=1e-5)


def assert_same_scores(got: BatchScores, expected: BatchScores) -> None:
    assert got.spikes == expected.spikes
    assert got.emotion_probs == expected.emotion_probs
    assert len(got.candidates) == len(expected.candidates)
    for mine, theirs in zip(got.candidates, expected.candidates, strict=True):
        assert_same_candidates(mine, theirs)


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_scores_equal_torch_scores(tokenizer: Tokenizer, seed: int) -> None:
    torch_scores, numpy_scores = both_scores(tokenizer, seed)
    assert_same_scores(numpy_scores, torch_scores)
    assert all(p is not None for p in torch_scores.emotion_probs)
    assert [c is None for c in torch_scores.candidates] == [o.beam_size == 1 for o in OPTIONS]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_scores_on_a_gpu_equal_numpy_scores(tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    head, encoded, lengths = random_batch(tokenizer)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(scoring, "LOGIT_ROWS_PER_CHUNK", 64)
    monkeypatch.setattr(scoring, "SEARCHED_ROWS_PER_CHUNK", 5)
    gpu_scores = CTCDecoder(head.cuda(), tokenizer).score(encoded.cuda(), lengths.cuda(), OPTIONS)
    assert_same_scores(gpu_scores, both_scores(tokenizer)[1])


def test_banned_emotion_is_never_emitted(tokenizer: Tokenizer) -> None:
    unknown = tokenizer.emotions[UNKNOWN_EMOTION]
    for scores in both_scores(tokenizer):
        for spikes, options in zip(scores.spikes, OPTIONS, strict=True):
            emotion = next(s.token_id for s in spikes if s.first_frame == EMOTION_FRAME)
            assert (emotion == unknown) is not options.ban_emo_unk


def test_candidates_are_the_top_k_log_probabilities_of_the_text_frames(tokenizer: Tokenizer) -> None:
    head, encoded, _ = random_batch(tokenizer)
    with torch.no_grad():
        logits = head.logits(encoded)
    for scores in both_scores(tokenizer):
        for b, (candidates, options) in enumerate(zip(scores.candidates, OPTIONS, strict=True)):
            if candidates is None:
                continue
            text = logits[b, NUM_QUERY_FRAMES : LENGTHS[b]].clone()
            if options.ban_emo_unk:
                text[:, tokenizer.emotions[UNKNOWN_EMOTION]] = float("-inf")
            log_probs = torch.log_softmax(text, dim=-1)
            width = options.beam_size
            values, ids = log_probs.topk(width, dim=-1)
            expected = FrameCandidates(NUM_QUERY_FRAMES, log_probs[:, 0].numpy(), ids.numpy(), values.numpy())
            got = FrameCandidates(
                candidates.first_frame,
                candidates.blank,
                candidates.top_ids[:, :width],
                candidates.top_log_probs[:, :width],
            )
            assert_same_candidates(got, expected)


@pytest.mark.parametrize(("logit_rows", "searched_rows"), [(7, 3), (1, 1), (64, 5)])
def test_chunking_changes_no_score(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch, logit_rows: int, searched_rows: int
) -> None:
    whole_torch, whole_numpy = both_scores(tokenizer)
    monkeypatch.setattr(scoring, "LOGIT_ROWS_PER_CHUNK", logit_rows)
    monkeypatch.setattr(scoring, "SEARCHED_ROWS_PER_CHUNK", searched_rows)
    chunked_torch, chunked_numpy = both_scores(tokenizer)
    assert_same_scores(chunked_torch, whole_torch)
    assert_same_scores(chunked_numpy, whole_numpy)


def test_the_numpy_path_decodes_without_importing_torch(tokenizer_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys

        import numpy as np

        from sensevoice_serve.decoding import CTCDecoder, DecodeOptions
        from sensevoice_serve.tokenizer import Tokenizer

        class Head:
            def __init__(self, vocab, width):
                self.weight = np.random.default_rng(0).standard_normal((vocab, width)).astype(np.float32)

            def logits(self, frames, rows=None):
                return frames @ (self.weight if rows is None else self.weight[rows]).T

        tokenizer = Tokenizer({str(tokenizer_path)!r})
        encoded = np.random.default_rng(1).standard_normal((2, 12, 8)).astype(np.float32)
        options = [DecodeOptions(ban_emo_unk=True), DecodeOptions(beam_size=3, hotwords=("ab",))]
        decoder = CTCDecoder(Head(tokenizer.vocab_size, 8), tokenizer)
        segments = decoder.decode(encoded, np.array([12, 9]), options, [0.0, 0.0], [1.0, 1.0])
        assert len(segments) == 2 and all(s.raw_text for s in segments), segments
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
