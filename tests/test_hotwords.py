"""Hotword options (parse and limits) and the context graph's bonuses (earned, banked, taken back)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.errors import InvalidOption
from sensevoice_serve.hotwords import (
    MAX_HOTWORD_CHARS,
    MAX_HOTWORDS,
    ContextGraph,
    Hotword,
    compile_hotwords,
    hotword_lines,
    parse_hotwords,
    stack_graphs,
    token_variants,
)
from sensevoice_serve.random_checkpoint import write_tokenizer
from sensevoice_serve.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "bpe.model"
    write_tokenizer(path)
    return Tokenizer(path)


class LetterTokenizer:
    """One token per letter (a=1, b=2, …): graph tests read as strings."""

    vocab_size = 27
    unk_id = 0

    def encode(self, text: str, word_start: bool = True) -> list[int]:
        return [ord(c) - 96 if "a" <= c <= "z" else 0 for c in text if c != " "]


def bonuses(graph: ContextGraph, text: str) -> list[float]:
    """The bonus of each token of ``text`` in turn, then what the end of the utterance takes back."""
    node, gains = np.zeros(1, np.int64), []
    for token in LetterTokenizer().encode(text):
        node, gain = graph.step(node, np.array([token]))
        gains.append(float(gain[0]))
    return [*gains, float(graph.finish(node)[0])]


def letters_graph(*specs: str) -> ContextGraph:
    return compile_hotwords(parse_hotwords(specs, 1.0), LetterTokenizer())


def test_phrases_with_and_without_their_own_boost() -> None:
    hotwords = parse_hotwords(["ComfyUI:3.0", "  张三  ", "Re:Zero:2", "New   York", ("SenseVoice", 4)], 1.5)
    assert hotwords == (
        Hotword("ComfyUI", 3.0),
        Hotword("张三", 1.5),
        Hotword("Re:Zero", 2.0),
        Hotword("New York", 1.5),
        Hotword("SenseVoice", 4.0),
    )
    assert hotword_lines("ComfyUI:3\n\n  张三 \n") == ["ComfyUI:3", "张三"]


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["ok", "   "], "is empty"),
        ([""], "is empty"),
        (["ComfyUI:lots"], "must be a boost"),
        (["Re:Zero"], "must be a boost"),
        (["a:0"], "above 0"),
        (["a:-1"], "above 0"),
        (["a:11"], "at most 10"),
        (["a:nan"], "finite number"),
        (["a:inf"], "finite number"),
        ([("a", "3")], "finite number"),
        ([3], "must be a string"),
        (["x" * (MAX_HOTWORD_CHARS + 1)], f"at most {MAX_HOTWORD_CHARS}"),
        (["<|en|>"], "SenseVoice tag"),
        ("ComfyUI", "not a single string"),
        ([f"w{i}" for i in range(MAX_HOTWORDS + 1)], f"at most {MAX_HOTWORDS}"),
    ],
)
def test_bad_hotwords_are_clear_errors(specs: object, message: str) -> None:
    with pytest.raises(InvalidOption, match=message):
        DecodeOptions(beam_size=4, hotwords=specs)


def test_the_cap_itself_is_accepted() -> None:
    options = DecodeOptions(beam_size=4, hotwords=[f"w{i}" for i in range(MAX_HOTWORDS)])
    assert len(options.hotwords) == MAX_HOTWORDS


def test_options_check_beam_size_and_default_score() -> None:
    assert DecodeOptions().beam_size == 1 and DecodeOptions().hotwords == ()
    with pytest.raises(InvalidOption, match="need beam search"):
        DecodeOptions(hotwords=["ComfyUI"])
    for bad in (0, 17, 2.5, True):
        with pytest.raises(InvalidOption, match="beam_size"):
            DecodeOptions(beam_size=bad)
    with pytest.raises(InvalidOption, match="hotword_score"):
        DecodeOptions(beam_size=4, hotwords=["a"], hotword_score=-1)
    assert DecodeOptions(beam_size=2, hotwords=["a"], hotword_score=2.5).hotwords == (Hotword("a", 2.5),)


def test_a_completed_phrase_banks_its_boost_and_keeps_it() -> None:
    graph = letters_graph("abc:2")
    # Each token earns 2 while matching; completion banks 2 x 3 on top; moving on gives back the 6 pending.
    assert bonuses(graph, "abcx") == [2.0, 2.0, 8.0, -6.0, 0.0]
    assert sum(bonuses(graph, "xabcx")) == pytest.approx(6.0)
    assert sum(bonuses(graph, "abc")) == pytest.approx(6.0)


def test_a_partial_match_is_taken_back() -> None:
    graph = letters_graph("abc:2")
    assert bonuses(graph, "abx") == [2.0, 2.0, -4.0, 0.0]
    assert bonuses(graph, "ab") == [2.0, 2.0, -4.0]  # the utterance ends mid-phrase
    assert sum(bonuses(graph, "ababc")) == pytest.approx(6.0)  # a failed start does not block a match


def test_phrases_inside_other_matches_are_found() -> None:
    # Aho-Corasick: "bc" completes inside a failing "abd" match, and both of overlapping phrases count.
    assert sum(bonuses(letters_graph("abd", "bc"), "abc")) == pytest.approx(2.0)
    assert sum(bonuses(letters_graph("ab", "abc"), "abc")) == pytest.approx(2.0 + 3.0)


def test_each_phrase_banks_its_own_boost_on_a_shared_prefix() -> None:
    graph = letters_graph("ab:3", "abc:1")
    assert sum(bonuses(graph, "ab")) == pytest.approx(6.0)
    assert sum(bonuses(graph, "abc")) == pytest.approx(6.0 + 3.0)
    # While matching, the shared prefix earns the larger boost; the unshared token only its own phrase's.
    assert bonuses(graph, "abc")[:3] == [3.0, 3.0 + 6.0, 1.0 + 3.0]


def test_stacked_graphs_score_as_each_alone() -> None:
    first, second = letters_graph("abc:2"), letters_graph("bcd:1", "x")
    stacked, roots = stack_graphs([first, second])
    for graph, root in ((first, 0), (second, 1)):
        for text in ("abcd", "xbcdx", "abx"):
            node, total, alone = np.array([roots[root]]), 0.0, 0.0
            alone_node = np.zeros(1, np.int64)
            for token in LetterTokenizer().encode(text):
                node, gain = stacked.step(node, np.array([token]))
                alone_node, alone_gain = graph.step(alone_node, np.array([token]))
                total, alone = total + gain[0], alone + alone_gain[0]
            assert total == pytest.approx(alone)


def test_mixed_script_phrases_match_at_a_word_start_and_mid_sentence(tokenizer: Tokenizer) -> None:
    variants = token_variants(tokenizer, "ab张三")
    pieces = [[tokenizer.piece(t) for t in v] for v in variants]
    assert ["\u2581", "a", "b", "张", "三"] in pieces  # after a space, or first in the utterance
    assert ["a", "b", "张", "三"] in pieces  # glued to the text before it
    # Upper case the tokenizer lacks: the lower-case form (the model's output without ITN) still counts.
    assert token_variants(tokenizer, "AB") == token_variants(tokenizer, "ab")


def test_phrases_the_model_cannot_write_are_skipped_with_a_reason(tokenizer: Tokenizer) -> None:
    graph = compile_hotwords(parse_hotwords(["Ωμέγα", "ab"], 1.5), tokenizer)
    assert graph.skipped == ("hotword 'Ωμέγα' skipped: the model cannot write 'Ωμέγα'",)
    empty = compile_hotwords(parse_hotwords(["é"], 1.5), tokenizer)
    assert empty.num_nodes == 1 and len(empty.skipped) == 1


def test_ten_thousand_hotwords_compile_into_one_graph(tokenizer: Tokenizer) -> None:
    letters = "abcdefghijklmnopqrstuvwxyz"
    phrases = [f"{letters[i % 26]}{letters[i // 26 % 26]}{chr(0x4E00 + i)}" for i in range(MAX_HOTWORDS)]
    graph = compile_hotwords(parse_hotwords(phrases, 1.5), tokenizer)
    assert graph.skipped == ()
    last = token_variants(tokenizer, phrases[-1])[1]
    node, total = np.zeros(1, np.int64), 0.0
    for token in last:
        node, gain = graph.step(node, np.array([token]))
        total += gain[0]
    assert total + graph.finish(node)[0] == pytest.approx(1.5 * len(last))
    assert math.isclose(graph.potential.max(), 1.5 * 4)
