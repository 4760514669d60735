"""zoo.bench.interleaved_latency: alternation and settle calls, on a fake clock (no wall-clock assertions)."""

from __future__ import annotations

import pytest

import zoo.bench as bench


class FakeRuntime:
    """A callable that costs 10 time units on the first call after another runtime ran, 1 unit after itself."""

    clock = 0.0
    last: str | None = None
    log: list[str] = []

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> None:
        cls = FakeRuntime
        cls.clock += 1.0 if cls.last == self.name else 10.0
        cls.last = self.name
        cls.log.append(self.name)


@pytest.fixture
def fake_clock(monkeypatch):
    FakeRuntime.clock, FakeRuntime.last, FakeRuntime.log = 0.0, None, []
    monkeypatch.setattr(bench.time, "perf_counter", lambda: FakeRuntime.clock / 1e3)  # units -> ms
    return FakeRuntime


@pytest.mark.parametrize("settle, expected_ms", [(0, 10.0), (1, 1.0)])
def test_settle_calls_time_the_steady_state(fake_clock, settle, expected_ms):
    fns = {"a": FakeRuntime("a"), "b": FakeRuntime("b")}
    times = bench.interleaved_latency(fns, warmup=2, rounds=5, settle=settle)
    # without settle calls every timed call pays the switch; with one, none does
    assert times == {"a": pytest.approx(expected_ms), "b": pytest.approx(expected_ms)}
    # still alternating round by round, and every settle call is made
    rounds = fake_clock.log[4:]
    assert len(rounds) == 5 * 2 * (1 + settle)
    assert rounds[: 2 * (1 + settle)] == ["a"] * (1 + settle) + ["b"] * (1 + settle)
