"""peak-ewma, end to end with the bundled ``slow-backend`` scenario: a backend slow for three seconds gets
its share back within ten seconds of turning fast (it used to be starved for about 45)."""

from collections import Counter

from traffic.scenario import find_scenario, load_scenario, run_scenario


def test_a_backend_that_turns_fast_again_regains_its_share_within_ten_seconds():
    scenario = load_scenario(find_scenario("slow-backend"))
    slow_from, fast_from = (event.at_s for event in scenario.events)  # mock-2 turns slow, then fast
    run = run_scenario(scenario, say=lambda text: None)
    ok = [r for r in run["results"] if r.status == 200]
    assert len(ok) == len(run["results"]) > 1000

    def share(start: float, end: float) -> float:
        window = Counter(r.backend for r in ok if start <= r.started_s < end)
        return window["mock-2"] / max(1, sum(window.values()))

    assert share(slow_from + 0.5, fast_from) < 0.05  # avoided while slow
    assert share(fast_from + 5, fast_from + 7.5) > 0.2  # back well within ten seconds
