"""The decode budget (engine/decode_budget.py): refusals, waits that end, first come first served."""

from __future__ import annotations

import threading

import pytest

from engine.decode_budget import DecodeBudget, DecodeBusy, ImageTooCostly
from engine.errors import Unavailable
from tests.helpers import wait_until


def test_budget_refuses_at_once_what_can_never_fit():
    budget = DecodeBudget(10_000_000)
    too_much = "needs 12 MB to decode; this server decodes at most 10 MB at once"
    with pytest.raises(ImageTooCostly, match=too_much), budget.reserve(12_000_000, timeout=5):
        pass
    assert budget.free_bytes == 10_000_000 and budget.waiting == 0


def test_budget_times_out_with_a_distinct_error_and_recovers():
    budget = DecodeBudget(100)
    with budget.reserve(80):
        with pytest.raises(DecodeBusy) as caught, budget.reserve(30, timeout=0.05):
            pass
        assert isinstance(caught.value, Unavailable) and caught.value.facts["retry_after"] >= 1
        assert budget.waiting == 0 and budget.free_bytes == 20
        with budget.reserve(20, timeout=0):
            assert budget.free_bytes == 0
    assert budget.free_bytes == 100


def test_budget_is_released_when_the_block_raises():
    budget = DecodeBudget(100)
    with pytest.raises(RuntimeError), budget.reserve(100):
        raise RuntimeError("boom")
    assert budget.free_bytes == 100


def test_budget_serves_first_come_first_served():
    budget, order = DecodeBudget(100), []
    blocker = budget.reserve(60)
    blocker.__enter__()

    def take(name: str, nbytes: int) -> None:
        with budget.reserve(nbytes, timeout=5):
            order.append(name)

    big = threading.Thread(target=take, args=("big", 90))
    big.start()
    wait_until(lambda: budget.waiting == 1, 5, "the big reservation to queue")
    small = threading.Thread(target=take, args=("small", 20))  # 40 bytes are free, but "big" came first
    small.start()
    wait_until(lambda: budget.waiting == 2, 5, "the small reservation to queue")
    assert order == [] and budget.free_bytes == 40
    blocker.__exit__(None, None, None)  # "big" goes; "small" (20 > the 10 left) waits until "big" is done
    big.join(5)
    small.join(5)
    assert order == ["big", "small"] and budget.free_bytes == 100
