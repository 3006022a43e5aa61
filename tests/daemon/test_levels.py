"""The shared thermal-pressure scale."""

from __future__ import annotations

import re

import pytest

from daemon import levels


def test_scale_order_and_label_safety():
    assert levels.LEVELS == ("nominal", "light", "moderate", "heavy", "trapping", "sleeping")
    assert [levels.level_ordinal(n) for n in levels.LEVELS] == [0, 1, 2, 3, 4, 5]
    assert levels.level_ordinal("unknown") is None and levels.level_ordinal(None) is None
    assert all(re.fullmatch(r"[a-z_]+", n) for n in levels.LEVELS)


@pytest.mark.parametrize("text, level", [
    ("Nominal", "nominal"), ("Light", "light"), ("Moderate", "moderate"), ("Heavy", "heavy"),
    ("heavy", "heavy"), ("Trapping", "trapping"), ("Sleeping", "sleeping"),
    (" Nominal ", "nominal"), ("Really Hot!", "really_hot"), ("!!!", "unknown"),
    ("", None), (None, None),
])
def test_from_powermetrics(text, level):
    assert levels.from_powermetrics(text) == level


@pytest.mark.parametrize("value, level", [
    (0, "nominal"), (1, "moderate"), (2, "heavy"), (3, "trapping"), (4, "sleeping"),
    (10, "light"), (20, "moderate"), (30, "heavy"), (40, "trapping"), (50, "sleeping"),
    (5, "unknown"), (99, "unknown"),
])
def test_from_notify_value(value, level):
    assert levels.from_notify_value(value) == level


@pytest.mark.parametrize("state, level", [
    (0, "nominal"), (1, "moderate"), (2, "heavy"), (3, "trapping"), (4, "unknown"),
    ("fair", "moderate"), ("Serious", "heavy"), ("critical", "trapping"), ("odd", "unknown"),
])
def test_from_thermal_state(state, level):
    assert levels.from_thermal_state(state) == level


@pytest.mark.parametrize("limit, warning, level", [
    (None, None, None), (100, None, "nominal"), (99, None, "moderate"), (80, None, "moderate"),
    (79, None, "heavy"), (50, None, "heavy"), (49, None, "trapping"), (100, 0, "nominal"),
    (100, 5, "heavy"), (100, 100, "heavy"), (100, 10, "trapping"), (None, 110, "trapping"),
    (90, 100, "heavy"), (None, 255, None),
])
def test_from_pmset(limit, warning, level):
    assert levels.from_pmset(limit, warning) == level
