"""Damaged inputs as Hypothesis strategies: a seed file and a few mutations, each printable as a recipe.

A recipe (``FuzzCase``) rebuilds its bytes exactly from the seed corpus, so any input that breaks something
can be turned into a regression test without storing the bytes. Positions are drawn against the seed's
length and taken modulo the length at the time, so a recipe stays valid after a truncation before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from tests.test_audio_fuzz import _mutated

# Values that break size and count fields: zero, one, sign boundaries, all ones.
INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
# Most formats keep what decides the decoder's work (format tags, rates, sizes, tables) near the start.
HEADER_BYTES = 512


@dataclass(frozen=True)
class FlipBits:
    position: int
    mask: int

    def apply(self, data: bytearray) -> bytearray:
        data[self.position % len(data)] ^= self.mask
        return data


@dataclass(frozen=True)
class SetInteger:
    """A header field (1, 2 or 4 bytes, either byte order) set to ``value``."""

    position: int
    width: int
    value: int
    byteorder: str

    def apply(self, data: bytearray) -> bytearray:
        start = self.position % len(data)
        field = (self.value % (1 << (8 * self.width))).to_bytes(self.width, self.byteorder)  # type: ignore[arg-type]
        data[start : start + self.width] = field[: len(data) - start]
        return data


@dataclass(frozen=True)
class Truncate:
    length: int

    def apply(self, data: bytearray) -> bytearray:
        return data[: self.length % len(data)]


@dataclass(frozen=True)
class Splice:
    """``removed`` bytes at ``position`` replaced by ``inserted``: holes, garbage, shifted boxes."""

    position: int
    removed: int
    inserted: bytes

    def apply(self, data: bytearray) -> bytearray:
        start = self.position % len(data)
        data[start : start + self.removed] = self.inserted
        return data


@dataclass(frozen=True)
class Repeat:
    """A stretch copied elsewhere: repeated frames, chunks and boxes."""

    position: int
    length: int
    target: int

    def apply(self, data: bytearray) -> bytearray:
        start = self.position % len(data)
        piece = data[start : start + self.length]
        at = self.target % len(data)
        data[at:at] = piece
        return data


@dataclass(frozen=True)
class Scramble:
    """The unit test's own mutator (``tests/test_audio_fuzz.py``) with a drawn seed."""

    seed: int

    def apply(self, data: bytearray) -> bytearray:
        if len(data) < 2:  # it cuts somewhere after the first byte
            return data
        return bytearray(_mutated(bytes(data), np.random.default_rng(self.seed)))


Mutation = FlipBits | SetInteger | Truncate | Splice | Repeat | Scramble


@dataclass(frozen=True)
class FuzzCase:
    """A seed file's name and the mutations applied to it in order."""

    seed: str
    mutations: tuple[Mutation, ...]

    def build(self, corpus: dict[str, bytes]) -> bytes:
        data = bytearray(corpus[self.seed])
        for mutation in self.mutations:
            if not data:
                break
            data = mutation.apply(data)
        return bytes(data)


def _positions(size: int) -> st.SearchStrategy[int]:
    anywhere = st.integers(0, max(0, size - 1))
    return st.one_of(st.integers(0, max(0, min(size, HEADER_BYTES) - 1)), anywhere)


def mutations(size: int) -> st.SearchStrategy[Mutation]:
    """One mutation of a file of ``size`` bytes."""
    where = _positions(size)
    values = st.one_of(st.sampled_from(INTERESTING), st.integers(0, 0xFFFFFFFF))
    return st.one_of(
        st.builds(FlipBits, where, st.integers(1, 255)),
        st.builds(SetInteger, where, st.sampled_from((1, 2, 4)), values, st.sampled_from(("little", "big"))),
        st.builds(Truncate, st.integers(1, max(1, size))),
        st.builds(Splice, where, st.integers(0, 64), st.binary(max_size=64)),
        st.builds(Repeat, where, st.integers(1, 4096), where),
        st.builds(Scramble, st.integers(0, 2**32 - 1)),
    )


@st.composite
def fuzz_cases(draw: st.DrawFn, corpus: dict[str, bytes], min_mutations: int = 1) -> FuzzCase:
    """A seed from ``corpus`` with ``min_mutations`` to 4 mutations."""
    seed = draw(st.sampled_from(sorted(corpus)))
    chosen = draw(st.lists(mutations(len(corpus[seed])), min_size=min_mutations, max_size=4))
    return FuzzCase(seed, tuple(chosen))


def campaign(
    strategy: st.SearchStrategy, count: int, seed: int
) -> Callable[[Callable[[Any], None]], Callable[[], None]]:
    """Turns ``body(example)`` into a run over ``count`` examples of ``strategy``, the same ones for the same
    ``seed``: generation only (no database, no shrinking: the body records failures instead of raising)."""

    def decorate(body: Callable[[Any], None]) -> Callable[[], None]:
        return settings(
            max_examples=count,
            database=None,
            deadline=None,
            phases=(Phase.generate,),
            suppress_health_check=list(HealthCheck),
        )(hypothesis_seed(seed)(given(strategy)(body)))

    return decorate
