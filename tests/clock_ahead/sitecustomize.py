"""Runs the suite on another date: with PYTHONPATH=tests/clock_ahead and
TESTS_CLOCK_SHIFT_SECONDS=SECONDS, every Python process of the run (the tests, the fake
backend, each proxy a test starts as a subprocess) reads a wall clock moved by SECONDS.

    TESTS_CLOCK_SHIFT_SECONDS=31536000 PYTHONPATH="$PWD/tests/clock_ahead" python3 -m unittest discover -s tests

Only the wall clock moves (time.time, time.time_ns): timeouts run on the monotonic clock, as
they should. test_clock.py checks that the shift took effect, so that this run cannot pass
without it. (libfaketime cannot do this here: under it time.sleep fails with EINVAL.)
"""

import os
import time

SHIFT = float(os.environ.get("TESTS_CLOCK_SHIFT_SECONDS") or 0)

if SHIFT:
    real_time, real_time_ns = time.time, time.time_ns

    def shifted_time():
        return real_time() + SHIFT

    def shifted_time_ns():
        return real_time_ns() + int(SHIFT * 1e9)

    time.time, time.time_ns = shifted_time, shifted_time_ns
