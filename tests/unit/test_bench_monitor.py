"""The monitor benchmark's statistics: the interval its figures are printed with."""
import random

from tests.conftest import load_script

bench = load_script("tests/perf/bench_monitor.py", "bench_monitor")


def test_the_median_interval_is_the_binomial_order_statistics_around_the_median():
    # n = 40: a 95% interval of the median runs from the 14th to the 27th smallest value
    values = list(range(1, 41))
    random.Random(4).shuffle(values)
    assert bench._median_interval(values) == "14.000-27.000"


def test_the_median_interval_holds_the_median_of_its_population_about_95_times_in_100():
    rng = random.Random(7)
    held = sum(low <= 1.0 <= high
               for low, high in (map(float, bench._median_interval([rng.lognormvariate(0, 0.1) for _ in range(40)])
                                     .split("-")) for _ in range(2000)))
    assert 0.93 <= held / 2000 <= 0.985


def test_too_few_ratios_have_no_interval():
    assert bench._median_interval([1.0] * 5) is None
