import random
from collections import Counter

import pytest

from simplelb.algorithms import ALGORITHMS, RoundRobin, create
from simplelb.backend import Backend
from simplelb.config import BackendSpec


def backends(*weights):
    return [Backend(BackendSpec(f"b{i}", 1000 + i, w)) for i, w in enumerate(weights)]


def names(picks):
    return "".join("abcdefgh"[int(b.host[1:])] for b in picks)


def test_smooth_weighted_round_robin_interleaves_the_heavy_backend():
    pool = backends(5, 1, 1)
    rr = RoundRobin()
    # The nginx sequence: the heavy backend's turns are spread out, not bunched.
    assert names(rr.pick(pool) for _ in range(7)) == "aabacaa"
    assert names(rr.pick(pool) for _ in range(7)) == "aabacaa"


def test_every_window_of_total_weight_has_exact_shares():
    pool = backends(3, 2, 1)
    rr = RoundRobin()
    picks = [rr.pick(pool) for _ in range(60)]
    for start in range(0, 60, 6):
        assert Counter(names(picks[start : start + 6])) == {"a": 3, "b": 2, "c": 1}


def test_equal_weights_rotate():
    pool = backends(1, 1, 1)
    rr = RoundRobin()
    assert names(rr.pick(pool) for _ in range(6)) == "abcabc"


def test_only_candidates_are_picked():
    pool = backends(1, 1, 1)
    rr = RoundRobin()
    assert {names([rr.pick([pool[0], pool[2]])]) for _ in range(10)} == {"a", "c"}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_registered_algorithms_pick_from_the_candidates(name):
    algorithm = create(name, rng=random.Random(1))
    pool = backends(1, 2, 3)
    assert all(algorithm.pick(pool) in pool for _ in range(50))
