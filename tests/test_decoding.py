"""The result parser on token sequences built from the tokenizer (random weights rarely emit tags), on
torch tensors (the torch runtime) and on numpy arrays (the int8 runtime)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sensevoice_serve import scoring
from sensevoice_serve.decoding import CTCDecoder, DecodeOptions
from sensevoice_serve.errors import InvalidOption
from sensevoice_serve.model import CTCHead
from sensevoice_serve.random_checkpoint import write_tokenizer
from sensevoice_serve.scoring import collapse
from sensevoice_serve.tokenizer import EMOTION_TAGS, EVENT_TAGS, LANGUAGE_TAGS, Tokenizer

WIDTH = 32
# The decoder must not build autograd graphs whoever calls it (torch warns when it does).
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "bpe.model"
    write_tokenizer(path)
    return Tokenizer(path)


def scripted_batch(
    paths: list[list[tuple[int, float]]], vocab: int
) -> tuple[CTCHead, torch.Tensor, torch.Tensor]:
    """A CTC head and encoder output whose per-frame scores are exactly ``paths``: (token, logit) per frame.

    Frame t of utterance b is the one-hot vector e_(slot) and the head maps slot -> the scripted logits.
    """
    head = CTCHead(WIDTH, vocab)
    torch.nn.init.zeros_(head.ctc_lo.weight)
    torch.nn.init.zeros_(head.ctc_lo.bias)
    frames = max(len(p) for p in paths)
    encoded = torch.zeros(len(paths), frames, WIDTH)
    slot = 0
    with torch.no_grad():
        for b, path in enumerate(paths):
            for t, scores in enumerate(path):
                for token, logit in scores if isinstance(scores, list) else [scores]:
                    head.ctc_lo.weight[token, slot] = logit
                encoded[b, t, slot] = 1.0
                slot += 1
    return head, encoded, torch.tensor([len(p) for p in paths])


class NumpyHead:
    """A CTC head on numpy arrays, as the int8 runtime's: float32 (N, d) frames to float32 logits."""

    def __init__(self, head: CTCHead):
        self.weight = head.ctc_lo.weight.detach().numpy().copy()
        self.bias = head.ctc_lo.bias.detach().numpy().copy()

    def logits(self, frames: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        weight, bias = (self.weight, self.bias) if rows is None else (self.weight[rows], self.bias[rows])
        return frames @ weight.T + bias


Batch = tuple[CTCHead | NumpyHead, torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]


def on_runtime(runtime: str, head: CTCHead, encoded: torch.Tensor, lengths: torch.Tensor) -> Batch:
    """The batch as the torch runtime hands it to the decoder, or as the int8 runtime does."""
    if runtime == "torch":
        return head, encoded, lengths
    return NumpyHead(head), encoded.numpy(), lengths.numpy()


@pytest.fixture(params=["torch", "int8"])
def runtime(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize(
    "path", [torch.tensor([0, 5, 5, 0, 5, 7, 7, 7, 0]), np.array([0, 5, 5, 0, 5, 7, 7, 7, 0])]
)
def test_collapse_removes_blanks_and_repeats(path: torch.Tensor | np.ndarray) -> None:
    spikes = collapse(path)
    assert [(s.token_id, s.first_frame, s.last_frame) for s in spikes] == [(5, 1, 2), (5, 4, 4), (7, 5, 7)]
    assert collapse(path[:0]) == []


@pytest.mark.parametrize("language", LANGUAGE_TAGS)
@pytest.mark.parametrize("use_itn", [True, False])
def test_every_language_and_itn(tokenizer: Tokenizer, language: str, use_itn: bool, runtime: str) -> None:
    itn = "withitn" if use_itn else "woitn"
    word = [tokenizer._sp.PieceToId("\u2581ab"), tokenizer._sp.PieceToId("\u2581cd")]
    path = [
        (tokenizer.languages[language], 9.0),
        (tokenizer.emotions["NEUTRAL"], 9.0),
        (tokenizer.events["Speech"], 9.0),
        (tokenizer.textnorms[itn], 9.0),
        (word[0], 9.0),
        (0, 9.0),
        (word[1], 9.0),
        (word[1], 9.0),
    ]
    head, encoded, lengths = on_runtime(runtime, *scripted_batch([path], tokenizer.vocab_size))
    segment = CTCDecoder(head, tokenizer).decode(encoded, lengths, [DecodeOptions()], [10.0], [2.0])[0]
    assert segment.language == language
    assert segment.itn is use_itn
    assert segment.raw_text == f"<|{language}|><|NEUTRAL|><|Speech|><|{itn}|> ab cd"
    assert segment.text == "ab cd"
    assert [(t.text, t.start, t.end) for t in segment.tokens] == [
        ("\u2581ab", 10.0, 10.06),
        ("\u2581cd", 10.12, 10.24),
    ]
    assert (segment.start, segment.end) == (10.0, 12.0)


@pytest.mark.parametrize("emotion", EMOTION_TAGS)
def test_every_emotion_with_its_probability(tokenizer: Tokenizer, emotion: str, runtime: str) -> None:
    others = [(tokenizer.emotions[e], 1.0) for e in EMOTION_TAGS if e != emotion]
    path = [(tokenizer.languages["en"], 9.0), [(tokenizer.emotions[emotion], 4.0), *others]]
    head, encoded, lengths = on_runtime(runtime, *scripted_batch([path], tokenizer.vocab_size))
    segment = CTCDecoder(head, tokenizer).decode(encoded, lengths, [DecodeOptions()], [0.0], [1.0])[0]
    assert segment.emotion == emotion
    expected = math.exp(4.0) / (math.exp(4.0) + 7 * math.exp(1.0))
    assert segment.emotion_prob == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("event", EVENT_TAGS)
def test_every_event(tokenizer: Tokenizer, event: str, runtime: str) -> None:
    path = [(tokenizer.languages["zh"], 9.0), (tokenizer.events[event], 9.0)]
    head, encoded, lengths = on_runtime(runtime, *scripted_batch([path], tokenizer.vocab_size))
    segment = CTCDecoder(head, tokenizer).decode(encoded, lengths, [DecodeOptions()], [0.0], [1.0])[0]
    assert segment.event == event
    assert segment.emotion is None and segment.emotion_prob is None
    assert segment.tokens == [] and segment.text == ""


def test_ban_emo_unk_applies_per_utterance_and_to_the_probability(tokenizer: Tokenizer, runtime: str) -> None:
    unknown, happy = tokenizer.emotions["EMO_UNKNOWN"], tokenizer.emotions["HAPPY"]
    path = [(tokenizer.languages["en"], 9.0), [(unknown, 6.0), (happy, 5.0)]]
    head, encoded, lengths = scripted_batch([path, path], tokenizer.vocab_size)
    # Both utterances share weights: the slot trick needs the same script for both.
    with torch.no_grad():
        head.ctc_lo.weight[:, 2:4] = head.ctc_lo.weight[:, 0:2]
    head, encoded, lengths = on_runtime(runtime, head, encoded, lengths)
    options = [DecodeOptions(ban_emo_unk=False), DecodeOptions(ban_emo_unk=True)]
    kept, banned = CTCDecoder(head, tokenizer).decode(encoded, lengths, options, [0.0, 0.0], [1.0, 1.0])
    assert kept.emotion == "EMO_UNKNOWN"
    assert banned.emotion == "HAPPY"
    assert banned.emotion_prob == pytest.approx(math.exp(5.0) / (math.exp(5.0) + 6), abs=1e-4)


def test_padding_frames_are_never_decoded(tokenizer: Tokenizer, runtime: str) -> None:
    word = tokenizer._sp.PieceToId("\u2581ab")
    short = [(tokenizer.languages["en"], 9.0)]
    long = [(tokenizer.languages["en"], 9.0), (0, 9.0), (0, 9.0), (0, 9.0), (word, 9.0)]
    head, encoded, lengths = scripted_batch([short, long], tokenizer.vocab_size)
    encoded[0, 1:] = encoded[1, 4]  # padding that would decode as a word if it were read
    head, encoded, lengths = on_runtime(runtime, head, encoded, lengths)
    first, second = CTCDecoder(head, tokenizer).decode(
        encoded, lengths, [DecodeOptions()] * 2, [0, 0], [1, 1]
    )
    assert first.raw_text == "<|en|>"
    assert second.text == "ab"


def test_unknown_language_is_a_clear_error() -> None:
    with pytest.raises(InvalidOption, match="unsupported language 'fr'"):
        DecodeOptions(language="fr")


def test_hotwords_find_the_second_best_path_and_keep_tags_and_times(
    tokenizer: Tokenizer, runtime: str
) -> None:
    a, b, x, y = (tokenizer._sp.PieceToId(piece) for piece in "abxy")
    tags = [tokenizer.languages["en"], tokenizer.emotions["HAPPY"], tokenizer.events["Speech"]]
    query_frames = [(tag, 20.0) for tag in (*tags, tokenizer.textnorms["withitn"])]
    text_frames = [[(x, 12.0), (a, 11.6)], (0, 16.0), [(y, 12.0), (b, 11.6)], (0, 16.0)]
    head, encoded, lengths = on_runtime(
        runtime, *scripted_batch([query_frames + text_frames], tokenizer.vocab_size)
    )
    decoder = CTCDecoder(head, tokenizer)

    def decode(options: DecodeOptions):
        return decoder.decode(encoded, lengths, [options], [10.0], [1.0])[0]

    greedy = decode(DecodeOptions())
    assert greedy.text == "xy"
    assert decode(DecodeOptions(beam_size=4)).text == "xy"
    boosted = decode(DecodeOptions(beam_size=4, hotwords=["ab"]))
    assert boosted.text == "ab"
    assert boosted.raw_text == "<|en|><|HAPPY|><|Speech|><|withitn|>ab"
    assert [(t.text, t.start, t.end) for t in boosted.tokens] == [("a", 10.0, 10.06), ("b", 10.12, 10.18)]
    tags = ("language", "emotion", "emotion_prob", "event", "itn")
    assert [getattr(boosted, t) for t in tags] == [getattr(greedy, t) for t in tags]


def test_prepare_reports_hotwords_the_model_cannot_write(tokenizer: Tokenizer) -> None:
    head, encoded, lengths = scripted_batch([[(tokenizer.languages["en"], 9.0)]], tokenizer.vocab_size)
    decoder = CTCDecoder(head, tokenizer)
    options = DecodeOptions(beam_size=2, hotwords=["Ωμέγα", "ab"])
    assert decoder.prepare(options) == ["hotword 'Ωμέγα' skipped: the model cannot write 'Ωμέγα'"]
    assert decoder.decode(encoded, lengths, [options], [0.0], [1.0])[0].raw_text == "<|en|>"


def test_beam_search_reads_the_same_scores_whatever_the_chunking(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch, runtime: str
) -> None:
    a, b, x = (tokenizer._sp.PieceToId(piece) for piece in "abx")
    query = [(tokenizer.languages["en"], 20.0)] * 4
    first = query + [[(x, 12.0), (a, 11.6)], (0, 16.0), [(b, 12.0), (x, 11.0)], (a, 9.0)]
    second = query + [(0, 16.0), [(a, 12.0), (b, 11.9)], (b, 12.0)]
    head, encoded, lengths = on_runtime(runtime, *scripted_batch([first, second], tokenizer.vocab_size))
    options = [DecodeOptions(beam_size=3, hotwords=["ab"]), DecodeOptions(beam_size=2)]
    whole = CTCDecoder(head, tokenizer).decode(encoded, lengths, options, [0.0, 0.0], [1.0, 1.0])
    monkeypatch.setattr(scoring, "LOGIT_ROWS_PER_CHUNK", 5)
    monkeypatch.setattr(scoring, "SEARCHED_ROWS_PER_CHUNK", 2)
    chunked = CTCDecoder(head, tokenizer).decode(encoded, lengths, options, [0.0, 0.0], [1.0, 1.0])
    assert chunked == whole
    assert [s.text for s in whole] == ["aba", "ab"]
