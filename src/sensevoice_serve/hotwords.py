"""Hotwords (names, products, jargon): checked, tokenized and compiled into a context graph for beam search.

The graph is an Aho-Corasick automaton over token ids, as in icefall / wenet / sherpa-onnx. A hypothesis
carries a node; each token it emits moves it along the automaton and earns a bonus:

- while a phrase is being matched, every matched token earns that phrase's boost, so the hypothesis survives
  pruning long enough to finish the phrase;
- when the match fails (or the utterance ends mid-phrase) the bonus of the unfinished part is taken back;
- reaching a phrase's last token banks ``boost x tokens`` for good.

A node shared by phrases with different boosts (a common prefix) earns the largest of them while in
progress; what is banked on completion is always the completed phrase's own boost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from .errors import InvalidOption

DEFAULT_HOTWORD_SCORE = 1.5  # log-probability bonus per token, sherpa-onnx's default
MAX_HOTWORD_SCORE = 10.0  # e^10 per token already forces a phrase wherever it is remotely plausible
MAX_HOTWORDS = 10_000
MAX_HOTWORD_CHARS = 64
ROOT = 0
_TAG = re.compile(r"<\|[^|<>]*\|>")


class Hotword(NamedTuple):
    phrase: str
    boost: float


class HotwordTokenizer(Protocol):
    vocab_size: int
    unk_id: int

    def encode(self, text: str, word_start: bool = True) -> list[int]: ...


def _check_boost(boost: object, spec: object) -> float:
    if isinstance(boost, bool) or not isinstance(boost, (int, float)) or not math.isfinite(boost):
        raise InvalidOption(f"hotword {spec!r}: the boost must be a finite number, not {boost!r}")
    if not 0 < boost <= MAX_HOTWORD_SCORE:
        raise InvalidOption(f"hotword {spec!r}: the boost must be above 0 and at most {MAX_HOTWORD_SCORE:g}")
    return float(boost)


def parse_hotword(spec: str | Hotword | tuple[str, float], default_boost: float) -> Hotword:
    """``"phrase"`` or ``"phrase:boost"`` (the last ``:``), or a ``(phrase, boost)`` pair, checked.

    A phrase that itself contains ``:`` needs an explicit boost (``"Re:Zero:2"``).
    """
    if isinstance(spec, tuple) and len(spec) == 2:
        phrase, boost = spec
    elif isinstance(spec, str):
        phrase, colon, tail = spec.rpartition(":")
        if not colon:
            phrase, boost = spec, default_boost
        else:
            try:
                boost = float(tail)
            except ValueError:
                raise InvalidOption(
                    f"hotword {spec!r}: what follows the last ':' must be a boost (a number, as in "
                    f"'ComfyUI:3.0'); a phrase containing ':' needs an explicit boost ('Re:Zero:2')"
                ) from None
    else:
        raise InvalidOption(f"a hotword must be a string such as 'ComfyUI' or 'ComfyUI:3.0', not {spec!r}")
    if not isinstance(phrase, str):
        raise InvalidOption(f"a hotword phrase must be a string, not {phrase!r}")
    phrase = " ".join(phrase.split())
    if not phrase:
        raise InvalidOption(f"hotword {spec!r} is empty")
    if len(phrase) > MAX_HOTWORD_CHARS:
        raise InvalidOption(
            f"hotword {phrase[:20]!r}… is {len(phrase)} characters: at most {MAX_HOTWORD_CHARS}"
        )
    if _TAG.search(phrase):
        raise InvalidOption(f"hotword {phrase!r} contains a SenseVoice tag (<|…|>)")
    return Hotword(phrase, _check_boost(boost, spec))


def parse_hotwords(
    specs: Iterable[str | Hotword | tuple[str, float]], default_boost: float
) -> tuple[Hotword, ...]:
    """Every hotword checked (InvalidOption names the first bad one); at most ``MAX_HOTWORDS``."""
    if isinstance(specs, (str, bytes)):
        raise InvalidOption("hotwords must be a list of phrases, not a single string")
    default_boost = _check_boost(default_boost, "hotword_score")
    hotwords = tuple(parse_hotword(spec, default_boost) for spec in specs)
    if len(hotwords) > MAX_HOTWORDS:
        raise InvalidOption(f"{len(hotwords)} hotwords given: at most {MAX_HOTWORDS}")
    return hotwords


def hotword_lines(text: str) -> list[str]:
    """One hotword per line (a hotwords file or form field); blank lines and ``#`` comments are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def split_hotwords(text: str) -> list[str]:
    """Comma-separated hotwords (a flag, an environment variable, a form field); empty items are skipped."""
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass(frozen=True)
class ContextGraph:
    """The automaton as flat arrays, so a whole beam steps at once.

    ``edge_keys`` are ``parent * vocab_size + token``, sorted: the trie's edges, looked up by binary search.
    The root is the node whose fail arc points at itself (several graphs can be stacked into one).
    """

    edge_keys: np.ndarray
    edge_children: np.ndarray
    fail: np.ndarray
    potential: np.ndarray  # bonus a match in progress at this node holds (taken back if it fails)
    reward: np.ndarray  # banked for good on reaching this node: every phrase that ends here
    vocab_size: int
    skipped: tuple[str, ...] = ()  # why phrases were left out (the tokenizer cannot write them)

    @property
    def num_nodes(self) -> int:
        return len(self.fail)

    def goto(self, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The node reached from each of ``nodes`` by its token: follow fail arcs until an edge matches."""
        current = nodes.astype(np.int64, copy=True)
        reached = np.empty_like(current)
        pending = np.arange(len(current))
        last_edge = len(self.edge_keys) - 1
        while pending.size:
            at = current[pending]
            keys = at * self.vocab_size + tokens[pending]
            position = np.minimum(np.searchsorted(self.edge_keys, keys), max(last_edge, 0))
            found = self.edge_keys[position] == keys if last_edge >= 0 else np.zeros(len(keys), bool)
            at_root = self.fail[at] == at
            reached[pending[found]] = self.edge_children[position[found]]
            stuck = ~found & at_root
            reached[pending[stuck]] = at[stuck]
            pending = pending[~(found | at_root)]
            current[pending] = self.fail[current[pending]]
        return reached

    def step(self, nodes: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Next nodes and the bonus each transition earns (negative when a partial match is given up)."""
        reached = self.goto(nodes, tokens)
        return reached, self.potential[reached] - self.potential[nodes] + self.reward[reached]

    def finish(self, nodes: np.ndarray) -> np.ndarray:
        """Bonus to take back at the end of an utterance: whatever an unfinished match still holds."""
        return -self.potential[nodes]


def stack_graphs(graphs: Sequence[ContextGraph]) -> tuple[ContextGraph, np.ndarray]:
    """One graph holding several (a batch whose utterances bring different hotwords), and each one's root."""
    if len(graphs) == 1:
        return graphs[0], np.zeros(1, np.int64)
    offsets = np.cumsum([0, *(g.num_nodes for g in graphs[:-1])])
    vocab = graphs[0].vocab_size
    # Node ids grow with the offset, so the shifted keys stay sorted when concatenated.
    stacked = ContextGraph(
        edge_keys=np.concatenate([g.edge_keys + off * vocab for g, off in zip(graphs, offsets, strict=True)]),
        edge_children=np.concatenate([g.edge_children + off for g, off in zip(graphs, offsets, strict=True)]),
        fail=np.concatenate([g.fail + off for g, off in zip(graphs, offsets, strict=True)]),
        potential=np.concatenate([g.potential for g in graphs]),
        reward=np.concatenate([g.reward for g in graphs]),
        vocab_size=vocab,
    )
    return stacked, offsets.astype(np.int64)


def token_variants(tokenizer: HotwordTokenizer, phrase: str) -> list[list[int]]:
    """The token sequences the model may emit for ``phrase``: as written and lower-cased (the model writes
    lower case without ITN), each at a word start and glued to the text before it (mid-sentence Chinese,
    or an English name right after a Chinese character). Sequences with an unknown piece are left out."""
    variants: list[list[int]] = []
    for text in dict.fromkeys((phrase, phrase.lower())):
        for word_start in (True, False):
            tokens = tokenizer.encode(text, word_start)
            if tokens and tokenizer.unk_id not in tokens and tokens not in variants:
                variants.append(tokens)
    return variants


def unwritable_characters(tokenizer: HotwordTokenizer, phrase: str) -> str:
    return "".join(
        dict.fromkeys(c for c in phrase if not c.isspace() and tokenizer.unk_id in tokenizer.encode(c, False))
    )


def compile_hotwords(hotwords: Sequence[Hotword], tokenizer: HotwordTokenizer) -> ContextGraph:
    """The context graph of ``hotwords``; a phrase the tokenizer cannot write is skipped and named in
    ``skipped`` (the model could never emit it, so boosting part of it would only distort other words)."""
    sequences: list[list[int]] = []
    boosts: list[float] = []
    skipped = []
    for hotword in hotwords:
        variants = token_variants(tokenizer, hotword.phrase)
        if not variants:
            unknown = unwritable_characters(tokenizer, hotword.phrase)
            skipped.append(f"hotword {hotword.phrase!r} skipped: the model cannot write {unknown or 'it'!r}")
        sequences += variants
        boosts += [hotword.boost] * len(variants)
    return _build_graph(sequences, np.array(boosts, np.float64), tokenizer.vocab_size, tuple(skipped))


def _build_graph(
    sequences: list[list[int]], boosts: np.ndarray, vocab_size: int, skipped: tuple[str, ...]
) -> ContextGraph:
    """Trie and fail arcs built one depth at a time, each depth in a few array operations."""
    lengths = np.array([len(s) for s in sequences], np.int64)
    tokens = np.full((len(sequences), int(lengths.max(initial=0))), -1, np.int64)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = sequence
    graph = ContextGraph(
        edge_keys=np.zeros(0, np.int64),
        edge_children=np.zeros(0, np.int64),
        fail=np.zeros(1, np.int64),
        potential=np.zeros(1),
        reward=np.zeros(1),
        vocab_size=vocab_size,
        skipped=skipped,
    )
    at = np.zeros(len(sequences), np.int64)
    for depth in range(tokens.shape[1]):
        active = np.flatnonzero(lengths > depth)
        keys, inverse = np.unique(at[active] * vocab_size + tokens[active, depth], return_inverse=True)
        children = graph.num_nodes + np.arange(len(keys))
        at[active] = children[inverse]
        boost = np.full(len(keys), -np.inf)
        np.maximum.at(boost, inverse, boosts[active])
        banked = np.zeros(len(keys))
        ending = lengths[active] == depth + 1
        np.maximum.at(banked, inverse[ending], boosts[active][ending] * (depth + 1))
        parents, edge_tokens = keys // vocab_size, keys % vocab_size
        graph = _add_level(graph, keys, children, parents, edge_tokens, boost, banked)
    return graph


def _add_level(
    graph: ContextGraph,
    keys: np.ndarray,
    children: np.ndarray,
    parents: np.ndarray,
    tokens: np.ndarray,
    boost: np.ndarray,
    banked: np.ndarray,
) -> ContextGraph:
    """Append one depth of the trie: its edges, then its fail arcs (which only lead to shallower nodes)."""
    with_edges = ContextGraph(
        edge_keys=np.concatenate([graph.edge_keys, keys]),
        edge_children=np.concatenate([graph.edge_children, children]),
        fail=graph.fail,
        potential=graph.potential,
        reward=graph.reward,
        vocab_size=graph.vocab_size,
        skipped=graph.skipped,
    )
    from_root = parents == ROOT
    fail = np.full(len(children), ROOT, np.int64)
    fail[~from_root] = with_edges.goto(graph.fail[parents[~from_root]], tokens[~from_root])
    return ContextGraph(
        edge_keys=with_edges.edge_keys,
        edge_children=with_edges.edge_children,
        fail=np.concatenate([graph.fail, fail]),
        potential=np.concatenate([graph.potential, graph.potential[parents] + boost]),
        reward=np.concatenate([graph.reward, banked + graph.reward[fail]]),
        vocab_size=graph.vocab_size,
        skipped=graph.skipped,
    )
