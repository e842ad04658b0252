"""The clock: fixtures are built from it, the proxy reads it through one seam, and no test
holds a literal date that the calendar will pass.

Run: python3 -m unittest tests.test_clock -v
"""

import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import unittest.mock

from support import HERE, ProxyTestCase, clock, codex_proxy, iso_ago, make_jwt, read_auth, write_auth
from fake_upstream import fake_id_token, usage_limit_reply  # noqa: E402 (support puts tests/ on the path)

A_DAY = 86400
A_YEAR = 365 * A_DAY
ISO_DATE = re.compile(r"(?<!\d)((?:19|20|99)\d\d)-([01]\d)-([0-3]\d)(?!\d)")


class FixturesAreCurrentTests(unittest.TestCase):
    """A fixture's default time is now, whatever the date: the suite broke once on a calendar
    date because write_auth() defaulted to a literal last_refresh that grew old."""

    def test_a_default_login_was_refreshed_within_a_day(self):
        folder = self.make_folder()
        write_auth(folder)
        refreshed = codex_proxy.parse_timestamp(read_auth(folder)["last_refresh"])
        self.assertLess(abs(refreshed - clock()), A_DAY)
        self.assertFalse(codex_proxy.tokens_expiring(read_auth(folder)["tokens"], read_auth(folder)["last_refresh"]))

    def test_the_fake_backends_tokens_and_limits_are_current(self):
        expires = codex_proxy.jwt_claims(fake_id_token())["exp"]
        self.assertLess(abs(expires - clock()), A_DAY)
        resets = usage_limit_reply()["body"]["error"]["resets_at"]
        self.assertLess(abs(resets - clock()), A_DAY)

    def test_iso_ago_counts_from_the_proxys_clock(self):
        self.assertLess(abs(codex_proxy.parse_timestamp(iso_ago(9 * A_DAY)) - (clock() - 9 * A_DAY)), 2)
        a_year_on = clock() + A_YEAR
        with unittest.mock.patch.object(codex_proxy, "wall_clock", lambda: a_year_on):
            self.assertLess(abs(codex_proxy.parse_timestamp(iso_ago(0)) - a_year_on), 2)

    def test_no_test_holds_a_date_the_clock_will_pass_soon(self):
        """A literal date in tests/ is either long past (a version string such as anthropic-version
        2023-06-01, a sample text) or the end of time (9999-12-31, RFC 5280's "no expiry"):
        never a time near now, which a default or a comparison would outlive."""
        found = []
        for folder, _, names in os.walk(HERE):
            for name in names:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as handle:
                    for number, line in enumerate(handle, 1):
                        for match in ISO_DATE.finditer(line):
                            if self.near_now(match) and "ISO_DATE" not in line:
                                found.append("%s:%d: %s" % (os.path.relpath(path, HERE), number, match.group(0)))
        self.assertEqual(found, [], "build these from the clock (support.clock(), iso_ago())")

    def near_now(self, match):
        year, month, day = (int(part) for part in match.groups())
        if year == 9999:
            return False
        stamp = codex_proxy.parse_timestamp("%04d-%02d-%02dT00:00:00Z" % (year, month, day))
        return stamp is None or stamp > clock() - A_YEAR

    def make_folder(self):
        folder = tempfile.mkdtemp(prefix="codex-home-")
        self.addCleanup(shutil.rmtree, folder, True)
        return folder


class ClockAheadRunTests(unittest.TestCase):
    """`.ci/run` runs the suite once more a year ahead (tests/clock_ahead/sitecustomize.py):
    that run must really be on the other date."""

    def test_the_clock_is_moved_when_the_run_asks(self):
        shift = float(os.environ.get("TESTS_CLOCK_SHIFT_SECONDS") or 0)
        if not shift:
            self.skipTest("not a clock-ahead run (TESTS_CLOCK_SHIFT_SECONDS is unset)")
        system_now = datetime.datetime.now(datetime.timezone.utc).timestamp()  # not moved by the shift
        self.assertLess(abs(codex_proxy.wall_clock() - system_now - shift), 60)
        self.assertLess(abs(codex_proxy.parse_timestamp(iso_ago(0)) - system_now - shift), 60)
        # and so is every proxy a test starts as a process of its own (they inherit the run's environment)
        moved = subprocess.run([sys.executable, "-c", "import codex_proxy; print(codex_proxy.wall_clock())"],
                               cwd=os.path.dirname(HERE), capture_output=True, text=True, timeout=60)
        self.assertLess(abs(float(moved.stdout) - system_now - shift), 60, moved.stderr)


class ProxyClockSeamTests(ProxyTestCase):
    """The proxy reads the time through codex_proxy.wall_clock only: moving it moves every
    decision that compares a stored time with now."""

    def post(self):
        return self.json_request("POST", "/v1/responses", {"model": "gpt-5.5", "input": "Say hi."})

    def test_a_year_on_a_login_written_then_is_not_due(self):
        a_year_on = clock() + A_YEAR
        with unittest.mock.patch.object(codex_proxy, "wall_clock", lambda: a_year_on):
            write_auth(self.home)
            status, _, body = self.post()
        self.assertEqual(status, 200, body)
        self.assertEqual(self.fake.requests_to("/oauth/token"), [])

    def test_a_year_on_a_login_written_now_is_due_and_refreshed(self):
        write_auth(self.home)
        a_year_on = clock() + A_YEAR
        with unittest.mock.patch.object(codex_proxy, "wall_clock", lambda: a_year_on):
            status, _, body = self.post()
        self.assertEqual(status, 200, body)
        self.assertEqual(len(self.fake.requests_to("/oauth/token")), 1)

    def test_a_tokens_exp_is_compared_with_the_seam(self):
        write_auth(self.home, access_token=make_jwt(exp=int(clock()) + 3600))
        self.assertFalse(codex_proxy.tokens_expiring(read_auth(self.home)["tokens"], None))
        two_hours_on = clock() + 7200
        with unittest.mock.patch.object(codex_proxy, "wall_clock", lambda: two_hours_on):
            self.assertTrue(codex_proxy.tokens_expiring(read_auth(self.home)["tokens"], None))


if __name__ == "__main__":
    unittest.main()
