import gc
import math
import random
import weakref
from collections import Counter
from contextlib import ExitStack

import pytest

from simplelb.algorithms import (
    ALGORITHMS,
    LeastConnections,
    PeakEwmaChoices,
    PowerOfTwoChoices,
    RendezvousHash,
    RoundRobin,
    WeightedRandom,
    create,
)
from simplelb.backend import Backend
from simplelb.specs import BackendSpec


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def backends(*weights, clock=None):
    kwargs = {"clock": clock} if clock else {}
    return [Backend(BackendSpec(f"b{i}", 1000 + i, w), **kwargs) for i, w in enumerate(weights)]


def names(picks):
    return "".join("abcdefgh"[int(b.spec.host[1:])] for b in picks)


def hold(stack: ExitStack, backend: Backend, count: int = 1) -> None:
    """Put ``count`` requests in flight on ``backend`` until the stack closes."""
    for _ in range(count):
        stack.enter_context(backend.track())


# --- round-robin -------------------------------------------------------------------


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


def test_round_robin_lets_go_of_backends_that_left_and_keeps_rotating():
    # Discovery churn: backends come and go; the ones gone must not be held forever.
    rr = RoundRobin()
    gone = weakref.ref(backends(1)[0])  # (a backend nobody else holds)
    first = backends(1, 1)
    rr.pick(first)
    left = weakref.ref(first[0])
    del first
    for _ in range(50):  # fifty generations of two backends each
        pool = backends(1, 1)
        assert names(rr.pick(pool) for _ in range(4)) == "abab"
    gc.collect()
    assert gone() is None and left() is None


def test_only_candidates_are_picked():
    pool = backends(1, 1, 1)
    rr = RoundRobin()
    assert {names([rr.pick([pool[0], pool[2]])]) for _ in range(10)} == {"a", "c"}


# --- least-connections ----------------------------------------------------------------


def test_least_connections_picks_the_lowest_load_per_weight():
    pool = backends(1, 3, 1)
    algorithm = LeastConnections(random.Random(1))
    with ExitStack() as stack:
        hold(stack, pool[0], 2)  # 2 per weight
        hold(stack, pool[1], 3)  # 1 per weight
        hold(stack, pool[2], 2)  # 2 per weight
        assert {algorithm.pick(pool) for _ in range(20)} == {pool[1]}


def test_least_connections_breaks_ties_without_favouring_the_first():
    pool = backends(1, 1, 1)
    algorithm = LeastConnections(random.Random(1))
    counts = Counter(names([algorithm.pick(pool)]) for _ in range(300))
    assert set(counts) == {"a", "b", "c"} and min(counts.values()) > 60


@pytest.mark.parametrize("algorithm", [LeastConnections, PowerOfTwoChoices])
def test_idle_backends_are_picked_by_weight(algorithm):
    # Nothing in flight (low load): every load ties, and the tie must follow the weights. A fair
    # coin, or a uniform choice among the tied, split 1:9 evenly.
    pool = backends(1, 9, 2)
    pick = algorithm(random.Random(7)).pick
    counts = Counter(names([pick(pool)]) for _ in range(6000))
    for name, share in (("a", 1 / 12), ("b", 9 / 12), ("c", 2 / 12)):
        assert abs(counts[name] / 6000 - share) < 0.02, counts


# --- random -------------------------------------------------------------------------------


def test_weighted_random_follows_the_weights():
    pool = backends(1, 2, 7)
    algorithm = WeightedRandom(random.Random(42))
    counts = Counter(names([algorithm.pick(pool)]) for _ in range(10_000))
    assert abs(counts["a"] / 10_000 - 0.1) < 0.02
    assert abs(counts["b"] / 10_000 - 0.2) < 0.02
    assert abs(counts["c"] / 10_000 - 0.7) < 0.02


def test_seeded_random_is_repeatable():
    pool = backends(1, 1, 1)
    first = names(WeightedRandom(random.Random(5)).pick(pool) for _ in range(30))
    second = names(WeightedRandom(random.Random(5)).pick(pool) for _ in range(30))
    assert first == second


# --- power of two choices --------------------------------------------------------------


def test_power_of_two_never_picks_the_most_loaded_backend():
    pool = backends(1, 1, 1, 1)
    algorithm = PowerOfTwoChoices(random.Random(3))
    with ExitStack() as stack:
        hold(stack, pool[2], 5)
        hold(stack, pool[0], 1)
        picks = Counter(algorithm.pick(pool) for _ in range(500))
    assert pool[2] not in picks  # it loses every comparison: two *distinct* backends are drawn
    assert set(picks) == {pool[0], pool[1], pool[3]}


def test_power_of_two_with_two_backends_always_picks_the_less_loaded():
    pool = backends(1, 1)
    algorithm = PowerOfTwoChoices(random.Random(3))
    with ExitStack() as stack:
        hold(stack, pool[0], 1)
        assert {algorithm.pick(pool) for _ in range(50)} == {pool[1]}


# --- peak-ewma --------------------------------------------------------------------------------


def simulate(algorithm, pool, latency_of, clock, requests):
    """Requests one at a time (nothing ever in flight at pick time), each taking its backend's latency."""
    picks = Counter()
    for _ in range(requests):
        backend = algorithm.pick(pool)
        picks[backend] += 1
        with backend.track():
            clock.now += latency_of[backend]
        clock.now += 0.01  # think time between requests
    return picks


def test_peak_ewma_steers_away_from_a_slow_backend_one_request_at_a_time():
    clock = FakeClock()
    pool = backends(1, 1, 1, clock=clock)
    latency = {pool[0]: 0.005, pool[1]: 0.100, pool[2]: 0.006}
    picks = simulate(PeakEwmaChoices(random.Random(7)), pool, latency, clock, 600)
    assert picks[pool[1]] < 0.05 * 600
    # Round robin, by contrast, gives it a third.
    assert simulate(RoundRobin(), pool, latency, clock, 600)[pool[1]] == 200


def test_peak_ewma_reacts_to_the_first_slow_answer():
    clock = FakeClock()
    pool = backends(1, 1, clock=clock)
    for backend in pool:
        with backend.track():
            clock.now += 0.005
    with pool[0].track():
        clock.now += 0.5  # one spike
    algorithm = PeakEwmaChoices(random.Random(1))
    assert {algorithm.pick(pool) for _ in range(20)} == {pool[1]}


def test_peak_ewma_forgets_a_stale_estimate():
    clock = FakeClock()
    pool = backends(1, 1, clock=clock)
    with pool[0].track():
        clock.now += 0.5
    algorithm = PeakEwmaChoices(random.Random(1))
    clock.now += 4
    assert pool[0].latency_s() == pytest.approx(0.5 * math.exp(-0.4))  # decaying
    clock.now += 2
    assert pool[0].latency_s() is None  # five seconds without news: forgotten, so neutral
    assert algorithm.cost(pool[0], pool) == 0.0


def test_peak_ewma_gives_a_slow_backend_that_turned_fast_its_share_back_within_seconds():
    clock = FakeClock()
    pool = backends(1, 1, clock=clock)
    latency = {pool[0]: 0.200, pool[1]: 0.005}
    algorithm = PeakEwmaChoices(random.Random(3))
    simulate(algorithm, pool, latency, clock, 300)  # slow: avoided
    latency[pool[0]] = 0.005  # and fast again
    turned = clock.now
    while simulate(algorithm, pool, latency, clock, 1)[pool[0]] == 0:
        assert clock.now - turned < 10, "starved"
    assert clock.now - turned < 6
    assert simulate(algorithm, pool, latency, clock, 400)[pool[0]] > 0.3 * 400  # its share, back


def test_peak_ewma_gives_a_new_backend_a_neutral_estimate():
    clock = FakeClock()
    pool = backends(1, 1, 1, clock=clock)
    latency = {pool[0]: 0.010, pool[1]: 0.030, pool[2]: 0.020}
    algorithm = PeakEwmaChoices(random.Random(11))
    for backend in pool[:2]:
        with backend.track():
            clock.now += latency[backend]
    # pool[2] has no sample: it costs the mean of the others (20 ms), between fast and slow.
    assert algorithm.cost(pool[2], pool) == pytest.approx((pool[0].latency_s() + pool[1].latency_s()) / 2)
    picks = simulate(algorithm, pool, latency, clock, 300)
    assert 0 < picks[pool[2]] < 300 * 0.6  # neither starved nor flooded


def test_a_recovered_backend_forgets_its_old_latency():
    clock = FakeClock()
    (backend,) = backends(1, clock=clock)
    with backend.track():
        clock.now += 2.0
    for _ in range(3):
        backend.record_probe(False, "down")
    for _ in range(2):
        backend.record_probe(True, "up")
    assert backend.healthy and backend.latency_s() is None


# --- hash ---------------------------------------------------------------------------------------


def test_hash_is_stable_for_a_key():
    pool = backends(1, 1, 1)
    algorithm = RendezvousHash()
    assert len({algorithm.pick(pool, "user-42") for _ in range(20)}) == 1


def test_removing_a_backend_moves_only_its_keys():
    pool = backends(1, 1, 1, 1, 1)
    algorithm = RendezvousHash()
    keys = [f"key-{i}" for i in range(2000)]
    before = {key: algorithm.pick(pool, key) for key in keys}
    removed = pool[2]
    after = {key: algorithm.pick([b for b in pool if b is not removed], key) for key in keys}
    moved = [key for key in keys if before[key] is not after[key]]
    assert all(before[key] is removed for key in moved)  # keys of the backends that stayed stay put
    assert len(moved) == sum(1 for key in keys if before[key] is removed)
    assert abs(len(moved) / len(keys) - 0.2) < 0.04  # about its share
    # And it comes back to exactly the old assignment.
    assert {key: algorithm.pick(pool, key) for key in keys} == before


def test_hash_follows_weights():
    pool = backends(1, 3)
    algorithm = RendezvousHash()
    counts = Counter(algorithm.pick(pool, f"k{i}") for i in range(4000))
    assert abs(counts[pool[1]] / 4000 - 0.75) < 0.03


def test_bounded_load_hashing_caps_a_hot_key():
    pool = backends(1, 1, 1, 1)
    algorithm = RendezvousHash(balance_factor=1.25)
    with ExitStack() as stack:
        for _ in range(40):
            backend = algorithm.pick(pool, "hot-key")
            total = sum(b.in_flight for b in pool) + 1
            assert backend.in_flight + 1 <= -(-1.25 * total // len(pool))  # ceil(F x average)
            hold(stack, backend)
        loads = sorted(b.in_flight for b in pool)
    assert loads[-1] <= 13  # ceil(1.25 x 40 / 4): the cap holds at the end too, not 40 on one backend


def test_without_bounded_load_a_hot_key_stays_on_one_backend():
    pool = backends(1, 1, 1, 1)
    algorithm = RendezvousHash()
    with ExitStack() as stack:
        for _ in range(20):
            hold(stack, algorithm.pick(pool, "hot-key"))
        assert sorted(b.in_flight for b in pool) == [0, 0, 0, 20]


def test_hash_without_a_key_falls_back_to_round_robin():
    pool = backends(1, 1, 1)
    algorithm = RendezvousHash()
    assert names(algorithm.pick(pool, None) for _ in range(6)) == "abcabc"


# --- all of them ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_registered_algorithms_pick_only_from_the_candidates(name):
    algorithm = create(name, rng=random.Random(1))
    pool = backends(1, 2, 3)
    assert all(algorithm.pick(pool[1:], "k") in pool[1:] for _ in range(50))
    assert all(algorithm.pick(pool[:1], "k") is pool[0] for _ in range(5))
