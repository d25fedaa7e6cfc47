"""bench/measure.py's memory-bandwidth yardstick."""
import math

from numpygpt.bench.measure import triad_bandwidth, TRIAD_WORDS
from numpygpt.engine import parallel


def test_triad_bandwidth_is_positive_and_finite_serial_and_threaded():
    for threads in (1, 2):
        with parallel.using_threads(threads):
            bw = triad_bandwidth(n=1 << 16, repeats=2, chunk=1 << 12)
        assert math.isfinite(bw) and bw > 0


def test_triad_counts_three_words_per_element_as_stream():
    assert TRIAD_WORDS == 3
