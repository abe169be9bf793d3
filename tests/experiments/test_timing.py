import statistics
import time

import pytest

from linearised_laplace.experiments.timing import Timing, measure, stopwatch


def _counter():
    calls = []

    def fn():
        calls.append(len(calls))
        return len(calls)

    return fn, calls


@pytest.mark.parametrize(("repeats", "warmup"), [(1, 0), (3, 1), (5, 2)])
def test_measure_runs_warmup_then_repeats_and_returns_the_last_result(repeats, warmup):
    fn, calls = _counter()
    result, timing = measure(fn, repeats=repeats, warmup=warmup)
    assert len(calls) == warmup + repeats
    assert result == warmup + repeats
    assert len(timing.wall) == len(timing.cpu) == repeats
    assert timing.warmup == warmup


def test_medians_and_record():
    timing = Timing(wall=(3.0, 1.0, 2.0, 10.0), cpu=(0.5, 0.25, 4.0, 1.0), warmup=1)
    assert timing.wall_median == statistics.median(timing.wall)
    assert timing.cpu_median == statistics.median(timing.cpu)
    assert timing.record("fit ") == {
        "fit wall [s]": statistics.median(timing.wall),
        "fit CPU [s]": statistics.median(timing.cpu),
        "fit repeats": 4,
        "fit warm-up": 1,
    }
    _, measured = measure(lambda: None, repeats=3, warmup=0)
    assert measured.wall_median == statistics.median(measured.wall)
    assert measured.cpu_median == statistics.median(measured.cpu)


def test_busy_loop_uses_cpu_and_sleep_does_not():
    def busy():
        start = time.process_time()
        while time.process_time() - start < 0.02:
            pass

    _, timing = measure(busy, repeats=1, warmup=0)
    assert timing.cpu_median > 0
    _, timing = measure(lambda: time.sleep(0.05), repeats=1, warmup=0)
    assert timing.wall_median >= 0.05
    assert timing.cpu_median < 0.02


@pytest.mark.parametrize(("repeats", "warmup"), [(0, 1), (-1, 0), (3, -1)])
def test_bad_repeats_or_warmup_raise(repeats, warmup):
    fn, calls = _counter()
    with pytest.raises(ValueError, match="repeats"):
        measure(fn, repeats=repeats, warmup=warmup)
    assert calls == []


def test_stopwatch_records_one_repeat_without_warmup():
    with stopwatch() as clock:
        time.sleep(0.01)
    assert len(clock.timing.wall) == len(clock.timing.cpu) == 1
    assert clock.timing.wall_median >= 0.01
    record = clock.timing.record()
    assert record["repeats"] == 1
    assert record["warm-up"] == 0


def test_sync_runs_before_each_clock_is_read():
    synced = []
    measure(lambda: None, repeats=3, warmup=2, sync=lambda: synced.append(1))
    assert len(synced) == 3  # once per timed repeat, not for the warm-up
    with stopwatch(sync=lambda: synced.append(1)):
        pass
    assert len(synced) == 4
    _, timing = measure(lambda: None, repeats=1, warmup=0, sync=lambda: time.sleep(0.02))
    assert timing.wall_median >= 0.02  # what the sync waits for is counted
