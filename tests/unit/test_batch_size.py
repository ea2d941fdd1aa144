"""How much of a lane's queue one group-commit statement takes (services/inbound/batcher.batch_size)."""

from __future__ import annotations

import pytest

from services.inbound.batcher import SPLIT_FLOOR, batch_size


@pytest.mark.parametrize(("waiting", "last", "max_batch", "take"), [
    (1, 0, 256, 1),  # an idle server: no delay, no split
    (SPLIT_FLOOR, 0, 256, SPLIT_FLOOR),  # a few at once always go together
    (SPLIT_FLOOR, 200, 256, SPLIT_FLOOR),
    (57, 0, 256, 29),  # a burst on an idle lane: half now, the rest next
    (48, 2, 256, 25),  # the alternation's big batch is cut to half the webhooks in play
    (25, 25, 256, 25),  # balanced halves stay as they are
    (2, 48, 256, 2),  # what is waiting is all there is: never wait for more
    (12, 60, 256, 12),
    (600, 600, 256, 256),  # max_batch still caps
    (10, 0, 256, SPLIT_FLOOR),  # just over the floor: the floor, not half
])
def test_batch_size(waiting: int, last: int, max_batch: int, take: int) -> None:
    assert batch_size(waiting, last, max_batch) == take


def _closed_loop(choose, waiting: int, last: int, rounds: int = 12) -> list[int]:
    """Batch sizes of a lane under a closed loop: the webhooks a statement answers send their next
    request while the following statement runs, so they are waiting when the one after is chosen."""
    sizes = []
    for _ in range(rounds):
        take = choose(waiting, last)
        sizes.append(take)
        waiting, last = waiting - take + last, take
    return sizes


def test_alternation_settles_into_halves() -> None:
    # 50 senders caught in big/small alternation (48 waiting, 2 just answered).
    assert _closed_loop(lambda w, last: batch_size(w, last, 256), 48, 2)[-6:] == [25] * 6
    # Taking everything waiting keeps alternating, which is what batch_size exists to break.
    assert _closed_loop(lambda w, last: w, 48, 2)[-6:] == [48, 2] * 3


def test_a_burst_on_an_idle_lane_settles_into_halves() -> None:
    assert _closed_loop(lambda w, last: batch_size(w, last, 256), 50, 0)[-6:] == [25] * 6
