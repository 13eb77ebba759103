import pytest

from simplelb.backend import Backend
from simplelb.specs import BackendSpec


def make(rise=2, fall=3):
    return Backend(BackendSpec("127.0.0.1", 9, 1), rise=rise, fall=fall)


def test_backend_starts_healthy():
    assert make().healthy


def test_fall_consecutive_failures_take_it_down():
    backend = make(fall=3)
    assert backend.record_probe(False, "HTTP 500") is None
    assert backend.record_probe(False, "HTTP 500") is None
    change = backend.record_probe(False, "HTTP 503")
    assert change is not None and change.healthy is False and change.reason == "HTTP 503"
    assert not backend.healthy
    assert backend.record_probe(False, "HTTP 503") is None  # already down: no second change


def test_a_pass_resets_the_failure_count():
    backend = make(fall=2)
    for _ in range(5):
        backend.record_probe(False, "x")
        backend.record_probe(True, "ok")
    assert backend.healthy


def test_rise_consecutive_passes_bring_it_back():
    backend = make(rise=2, fall=1)
    backend.record_probe(False, "down")
    assert backend.record_probe(True, "HTTP 200") is None
    backend.record_probe(False, "flap")
    assert backend.record_probe(True, "HTTP 200") is None  # the flap reset the count
    change = backend.record_probe(True, "HTTP 200")
    assert change is not None and change.healthy
    assert backend.healthy


def test_track_counts_in_flight_responses_and_failures():
    backend = make()
    with backend.track() as outer:
        with backend.track() as inner:
            assert backend.in_flight == 2
            inner.responded(200)
        assert backend.in_flight == 1
        outer.responded(503)
    with pytest.raises(RuntimeError):
        with backend.track():
            raise RuntimeError("boom")  # no response: a failure, not a request answered
    status = backend.status()
    assert (status["in_flight"], status["requests"], status["failures"]) == (0, 2, 1)
