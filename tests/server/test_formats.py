"""The pieces of the server that need no live server: OpenAI word grouping and error codes."""

from __future__ import annotations

from sensevoice_serve.errors import AudioTooLongError, Overloaded, Unauthorized
from sensevoice_serve.results import Token
from sensevoice_serve.server.errors import error_code
from sensevoice_serve.server.openai_format import words


def _tokens(*pieces: str) -> list[Token]:
    return [Token(index, piece, index * 0.1, index * 0.1 + 0.05) for index, piece in enumerate(pieces)]


def test_words_join_pieces_and_keep_punctuation_with_the_word_before() -> None:
    grouped = words(
        _tokens("\u2581And", "\u2581so", ",", "\u2581my", "\u2581fel", "low", "\u2581Amer", "icans", ".")
    )
    assert [w["word"] for w in grouped] == ["And", "so,", "my", "fellow", "Americans."]
    assert (grouped[3]["start"], grouped[3]["end"]) == (0.4, 0.55)


def test_every_cjk_character_is_a_word_and_a_bare_word_marker_is_none() -> None:
    grouped = words(_tokens("\u2581", "我", "想", "问", "，", "\u2581ok"))
    assert [w["word"] for w in grouped] == ["我", "想", "问，", "ok"]


def test_error_codes_are_stable_snake_case() -> None:
    assert error_code(AudioTooLongError("x")) == "audio_too_long"
    assert error_code(Overloaded("x")) == "overloaded"
    assert error_code(Unauthorized("x")) == "unauthorized"
