"""The sentencepiece tokenizer and SenseVoice's special tags, always looked up by name in the loaded model."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from .errors import ModelLoadError

TOKENIZER_FILENAME = "chn_jpn_yue_eng_ko_spectok.bpe.model"

LANGUAGE_TAGS = ("zh", "en", "yue", "ja", "ko", "nospeech")
EMOTION_TAGS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN")
EVENT_TAGS = (
    "Speech",
    "BGM",
    "Applause",
    "Laughter",
    "Cry",
    "Sneeze",
    "Breath",
    "Cough",
    "Sing",
    "Speech_Noise",
    "GBG",
    "Event_UNK",
)
TEXTNORM_TAGS = ("withitn", "woitn")
UNKNOWN_EMOTION = "EMO_UNKNOWN"

TAG_PATTERN = re.compile(r"<\|[^|<>]*\|>")


def tag(name: str) -> str:
    return f"<|{name}|>"


class Tokenizer:
    """Wraps a sentencepiece model; knows which ids are SenseVoice tags and of what kind."""

    def __init__(self, model_path: str | Path):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise ModelLoadError(f"tokenizer not found: {self.path}")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as error:
            raise ModelLoadError(f"{self.path} is not a sentencepiece model: {error}") from error
        self.vocab_size = self._sp.GetPieceSize()
        self.unk_id = self._sp.unk_id()
        self._glued = _without_word_start(self.path.read_bytes())
        self.languages = self._lookup(LANGUAGE_TAGS)
        self.emotions = self._lookup(EMOTION_TAGS)
        self.events = self._lookup(EVENT_TAGS)
        self.textnorms = self._lookup(TEXTNORM_TAGS)
        self.tag_ids = {**self.languages, **self.emotions, **self.events, **self.textnorms}
        self._tag_names = {token_id: name for name, token_id in self.tag_ids.items()}

    def _lookup(self, names: Iterable[str]) -> dict[str, int]:
        """Tag name -> id for the tags this tokenizer has; a missing tag is simply absent."""
        found = {}
        for name in names:
            token_id = self._sp.PieceToId(tag(name))
            if token_id != self._sp.unk_id():
                found[name] = token_id
        return found

    def require_tags(self) -> None:
        """A SenseVoice tokenizer must at least have the language and text-norm tags."""
        missing = [tag(n) for n in (*LANGUAGE_TAGS[:5], *TEXTNORM_TAGS) if n not in self.tag_ids]
        if missing:
            raise ModelLoadError(f"{self.path} lacks SenseVoice tags {', '.join(missing)}")

    def encode(self, text: str, word_start: bool = True) -> list[int]:
        """Token ids of ``text`` at the start of a word (after a space, or first in the utterance), or glued
        to the text before it (inside a Chinese sentence, where there are no spaces)."""
        return (self._sp if word_start else self._glued).EncodeAsIds(text)

    def decode(self, token_ids: list[int]) -> str:
        return self._sp.DecodeIds(token_ids)

    def piece(self, token_id: int) -> str:
        return self._sp.IdToPiece(token_id)

    def tag_name(self, token_id: int) -> str | None:
        return self._tag_names.get(token_id)


def _without_word_start(model: bytes) -> spm.SentencePieceProcessor:
    """The same model without the word-start mark sentencepiece puts before every text it encodes."""
    from sentencepiece import sentencepiece_model_pb2 as spm_model  # protobuf: only once a model loads

    proto = spm_model.ModelProto()
    proto.ParseFromString(model)
    proto.normalizer_spec.add_dummy_prefix = False
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


def strip_tags(text: str) -> str:
    return TAG_PATTERN.sub("", text).strip()
