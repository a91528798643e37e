from __future__ import annotations

from sensevoice_serve.batching import plan_batches


def test_longest_first_within_the_budget() -> None:
    assert plan_batches([10, 40, 20, 40, 35], max_batch_frames=90) == [[1, 3], [4], [2], [0]]


def test_padding_is_bounded() -> None:
    # 100 and 70 would pad 30 %: over the 25 % bound, so they run apart even with budget to spare.
    assert plan_batches([100, 70, 76], max_batch_frames=10_000) == [[0, 2], [1]]


def test_batch_size_cap_and_oversized_items() -> None:
    assert plan_batches([5] * 5, max_batch_frames=1000, max_batch_size=2) == [[0, 1], [2, 3], [4]]
    assert plan_batches([500, 5], max_batch_frames=100) == [[0], [1]]
    assert plan_batches([], max_batch_frames=100) == []
