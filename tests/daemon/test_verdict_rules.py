"""The verdicts' rules on constructed loop series (daemon/verdicts.py): stability score, slowdowns and
what explains them, the history band."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.verdicts import (
    Loop,
    LoopTelemetry,
    find_slowdowns,
    history_band,
    stability_score,
    warm_level,
)


def test_the_issue_example_scores_096_and_fails() -> None:
    score = stability_score([100, 99, 98, 97, 96])
    assert score.score == pytest.approx(0.96)
    assert score.passed is False and score.pass_mark == 0.97
    assert score.loops == (100, 99, 98, 97, 96)


def test_worst_over_best_wherever_they_fall() -> None:
    # the best loop need not be the first: a slow start and a peak in the middle
    assert stability_score([97, 100, 98.5]).score == pytest.approx(0.97)
    assert stability_score([97, 100, 98.5]).passed is True  # exactly the pass mark passes
    assert stability_score([50, 100]).score == pytest.approx(0.5)


def test_the_pass_mark_is_a_setting() -> None:
    assert stability_score([100, 96], pass_mark=0.95).passed is True
    assert stability_score([100, 96], pass_mark=0.99).passed is False
    with pytest.raises(ValueError, match="pass mark"):
        stability_score([1, 2], pass_mark=1.5)


def test_one_loop_has_no_score_and_empty_loops_do_not_count() -> None:
    assert stability_score([100]).score is None and stability_score([100]).passed is None
    assert stability_score([]).score is None
    # a slice that measured nothing is not a loop of zero throughput
    assert stability_score([100, 0, 98]).score == pytest.approx(0.98)


def loops(values: list[float], telemetry: list[LoopTelemetry] | None = None) -> list[Loop]:
    telemetry = telemetry or [LoopTelemetry(seconds=60.0) for _ in values]
    return [Loop(v, t) for v, t in zip(values, telemetry, strict=True)]


def test_warm_level_is_the_median_of_the_first_two_loops() -> None:
    assert warm_level(loops([100, 90, 10])) == 95
    assert warm_level(loops([100])) is None


def test_a_drop_with_no_telemetry_change_is_unexplained() -> None:
    quiet = LoopTelemetry(seconds=60, throttle_known=True, thermal_level="nominal", clock_hertz=1.98e9,
                          power_watts=400, power_limit_watts=700, temperature_celsius=60)
    found = find_slowdowns(loops([100, 100, 99, 80, 96], [quiet] * 5))
    (slowdown,) = found  # 99 and 96 are within 5 %
    assert slowdown.index == 3 and slowdown.drop == pytest.approx(0.2)
    assert not slowdown.explained and slowdown.explanations == ()
    assert slowdown.to_dict()["readings"]["loop"]["clock_hertz"] == 1.98e9


def test_the_threshold_is_a_setting() -> None:
    series = loops([100, 100, 96])
    assert find_slowdowns(series) == []  # 4 % below: not a slowdown at 5 %
    assert [s.index for s in find_slowdowns(series, threshold=0.03)] == [2]
    assert [s.index for s in find_slowdowns(loops([100, 100, 95]))] == [2]  # exactly 5 % is one
    with pytest.raises(ValueError, match="threshold"):
        find_slowdowns(series, threshold=0)


def test_a_throttle_reason_that_appears_explains_a_drop() -> None:
    warm = LoopTelemetry(seconds=60, throttle_known=True)
    hot = LoopTelemetry(seconds=60, throttle_known=True, throttle_seconds={"hw_thermal_slowdown": 30.0})
    (slowdown,) = find_slowdowns(loops([100, 100, 80], [warm, warm, hot]))
    assert slowdown.explained
    assert slowdown.explanations == ("throttle hw_thermal_slowdown: 0% -> 50% of the time",)


def test_a_throttle_share_that_grows_explains_a_drop_and_one_that_holds_does_not() -> None:
    def share(s: float) -> LoopTelemetry:
        return LoopTelemetry(seconds=100, throttle_known=True, throttle_seconds={"sw_thermal_slowdown": s})

    assert find_slowdowns(loops([100, 100, 80], [share(10), share(10), share(40)]))[0].explained
    # 10 % -> 13 %: within the margin, not a change
    assert not find_slowdowns(loops([100, 100, 80], [share(10), share(10), share(13)]))[0].explained


def test_thermal_pressure_rising_explains_a_drop() -> None:
    nominal = LoopTelemetry(seconds=60, thermal_level="nominal")
    heavy = LoopTelemetry(seconds=60, thermal_level="heavy")
    (slowdown,) = find_slowdowns(loops([100, 100, 70], [nominal, nominal, heavy]))
    assert slowdown.explanations == ("thermal pressure rose: nominal -> heavy",)
    # the same level as in the warm loops explains nothing
    assert not find_slowdowns(loops([100, 100, 70], [heavy, heavy, heavy]))[0].explained


def test_the_clock_explains_a_drop_when_it_fell_by_half_the_drop_or_more() -> None:
    def clock(hz: float) -> LoopTelemetry:
        return LoopTelemetry(seconds=60, clock_hertz=hz)

    # throughput -20 %, clock -10 %: exactly half the drop
    (slowdown,) = find_slowdowns(loops([100, 100, 80], [clock(2.0e9), clock(2.0e9), clock(1.8e9)]))
    assert slowdown.explanations == ("clock fell 10%: 2000 -> 1800 MHz",)
    # clock -5 % for a 20 % drop: the clock does not account for it
    assert not find_slowdowns(loops([100, 100, 80], [clock(2.0e9), clock(2.0e9), clock(1.9e9)]))[0].explained


def test_power_moving_off_its_cap_or_the_cap_moving_explains_a_drop() -> None:
    def power(watts: float, limit: float = 700.0) -> LoopTelemetry:
        return LoopTelemetry(seconds=60, power_watts=watts, power_limit_watts=limit)

    (off,) = find_slowdowns(loops([100, 100, 70], [power(695), power(698), power(500)]))
    assert off.explanations == ("power moved off its cap: 696 -> 500 W (limit 700 W)",)
    (lowered,) = find_slowdowns(loops([100, 100, 70], [power(695), power(698), power(495, limit=500)]))
    assert lowered.explanations == ("power limit moved: 700 -> 500 W",)
    (onto,) = find_slowdowns(loops([100, 100, 70], [power(400), power(410), power(690)]))
    assert onto.explanations[0].startswith("power moved onto its cap")


def test_a_machine_at_its_power_cap_from_the_start_has_the_cap_in_its_warm_state() -> None:
    """An H200 at full load sits at its power cap (sw_power_cap active) from the first second: the
    cap is part of its warm state. A later drop with the cap unchanged is unexplained."""
    capped = LoopTelemetry(seconds=60, throttle_known=True, throttle_seconds={"sw_power_cap": 60.0},
                           thermal_level=None, clock_hertz=1.755e9, power_watts=699.0, power_limit_watts=700.0)
    assert capped.at_cap
    (slowdown,) = find_slowdowns(loops([100, 100, 99, 85], [capped] * 4))
    assert slowdown.index == 3 and not slowdown.explained
    # the same machine, with the clock falling as well: explained by the clock, not by the cap
    slower = LoopTelemetry(seconds=60, throttle_known=True, throttle_seconds={"sw_power_cap": 60.0},
                           clock_hertz=1.5e9, power_watts=699.0, power_limit_watts=700.0)
    (clocked,) = find_slowdowns(loops([100, 100, 85], [capped, capped, slower]))
    assert [e.split(":")[0] for e in clocked.explanations] == ["clock fell 15%"]


def test_a_reading_missing_on_either_side_explains_nothing() -> None:
    unknown = LoopTelemetry(seconds=60)
    known = LoopTelemetry(seconds=60, clock_hertz=1.0e9, thermal_level="heavy", power_watts=10, power_limit_watts=700)
    assert not find_slowdowns(loops([100, 100, 50], [unknown, unknown, known]))[0].explained
    assert not find_slowdowns(loops([100, 100, 50], [known, known, unknown]))[0].explained


def test_the_history_band_is_the_2_5_to_97_5_percentile_of_the_last_rotations() -> None:
    values = [100.0 + ((i * 37) % 23) for i in range(30)]  # 30 rotations, spread 100-122
    band = history_band(values, limit=20)
    assert band is not None and band.rotations == 20
    last = np.array(values[-20:])
    assert band.low == pytest.approx(np.percentile(last, 2.5))
    assert band.median == pytest.approx(np.percentile(last, 50))
    assert band.high == pytest.approx(np.percentile(last, 97.5))
    assert band.low < band.median < band.high
    assert band.below(band.low - 0.01) and not band.below(band.low) and not band.below(band.high + 5)


def test_the_history_needs_five_rotations_and_the_length_is_a_setting() -> None:
    assert history_band([100.0, 101.0, 99.0, 100.0]) is None
    band = history_band([100.0, 101.0, 99.0, 100.0, 102.0])
    assert band is not None and band.rotations == 5
    assert history_band([1.0] * 10 + [100.0] * 5, limit=5).median == 100.0  # only the last 5 count
    assert history_band([0.0, 0.0, 100.0, 100.0, 100.0, 100.0]) is None  # rotations that measured nothing
