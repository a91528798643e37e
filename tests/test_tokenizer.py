from __future__ import annotations

from pathlib import Path

import pytest

from sensevoice_serve.errors import ModelLoadError
from sensevoice_serve.random_checkpoint import SPECIAL_PIECE_IDS, write_tokenizer
from sensevoice_serve.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "bpe.model"
    write_tokenizer(path)
    return Tokenizer(path)


def test_generated_tokenizer_matches_published_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == 25055
    assert tokenizer.languages == {
        "zh": 24884,
        "en": 24885,
        "yue": 24888,
        "ja": 24892,
        "ko": 24896,
        "nospeech": 24992,
    }
    assert tokenizer.emotions["HAPPY"] == 25001 and tokenizer.emotions["EMO_UNKNOWN"] == 25009
    assert tokenizer.textnorms == {"withitn": 25016, "woitn": 25017}
    for piece, token_id in SPECIAL_PIECE_IDS.items():
        assert tokenizer.piece(token_id) == piece


def test_tags_decode_verbatim(tokenizer: Tokenizer) -> None:
    ids = [24885, 25004, tokenizer.events["Speech"], 25017]
    assert tokenizer.decode(ids) == "<|en|><|NEUTRAL|><|Speech|><|woitn|>"


def test_tags_are_looked_up_not_assumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tokenizer whose tags sit elsewhere is read correctly: nothing depends on fixed ids.
    from sensevoice_serve import random_checkpoint

    moved = {piece: token_id - 100 for piece, token_id in SPECIAL_PIECE_IDS.items()}
    monkeypatch.setattr(random_checkpoint, "SPECIAL_PIECE_IDS", moved)
    write_tokenizer(tmp_path / "moved.model")
    moved_tokenizer = Tokenizer(tmp_path / "moved.model")
    assert moved_tokenizer.languages["zh"] == 24784
    assert moved_tokenizer.tag_name(24784) == "zh"


def test_not_a_tokenizer(tmp_path: Path) -> None:
    bogus = tmp_path / "x.model"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a sentencepiece model"):
        Tokenizer(bogus)
    with pytest.raises(ModelLoadError, match="tokenizer not found"):
        Tokenizer(tmp_path / "missing.model")


def test_encode_at_a_word_start_or_glued_to_the_text_before(tokenizer: Tokenizer) -> None:
    start, glued = tokenizer.encode("ab张三", True), tokenizer.encode("ab张三", False)
    assert [tokenizer.piece(t) for t in start] == ["\u2581", "a", "b", "张", "三"]
    assert [tokenizer.piece(t) for t in glued] == ["a", "b", "张", "三"]
    assert tokenizer.decode(glued) == "ab张三"
    assert tokenizer.encode("Ω", False) == [tokenizer.unk_id]
