"""Several logins that know their quota: --login-strategy places new conversations (headroom,
fill-first, round-robin) while old ones stay on their login, and a rest after a usage limit ends
at its reset or as soon as a re-check (wham/usage) shows the login below its limit.

The fake backend reports each account's used percents (its `used_percents` knob) in the headers
of every answer and at wham/usage. Time is moved through codex_proxy.wall_clock, never slept.

Run: python3 -m unittest tests.test_quota -v
"""

import asyncio
import contextlib
import io
import os
import shutil
import tempfile
import threading
import time
import unittest
from unittest import mock

from support import codex_proxy, run_script, write_auth
from fake_upstream import fake_id_token, usage_limit_reply
from test_login import TwoLoginsTestCase
from test_operator import parse_prometheus

LOGIN_1, LOGIN_2 = "access-1", "access-b"  # the bearer each login sends


class QuotaTestCase(TwoLoginsTestCase):
    def setUp(self):
        self.shift = 0.0  # seconds the proxy's clock is ahead of the real one
        patcher = mock.patch.object(codex_proxy, "wall_clock", lambda: time.time() + self.shift)
        patcher.start()
        self.addCleanup(patcher.stop)
        super().setUp()

    def served_by(self, conversation):
        """Post a turn of `conversation`: the bearer of the /responses call that served it."""
        status, _, payload = self.post(conversation)
        self.assertEqual(status, 200, payload)
        return self.bearers()[-1]

    def rechecks(self):
        """(bearer, account id) of each wham/usage call so far."""
        return [(r.headers.get("authorization")[7:], r.headers.get("chatgpt-account-id"))
                for r in self.fake.requests_to("/wham/usage")]

    def use(self, strategy):
        self.proxy.app.config.login_strategy = strategy  # read at each choice: a reloaded Config takes effect


class StrategyTest(QuotaTestCase):
    def make_config(self, **overrides):
        return TwoLoginsTestCase.make_config(self, **dict({"login_strategy": "headroom"}, **overrides))

    def test_headroom_places_new_conversations_on_the_lowest_used_percent_and_old_ones_stay(self):
        self.fake.used_percents = {"acct-123": {"primary": 70, "secondary": 5},
                                   "acct-b": {"primary": 10, "secondary": 40}}
        # Never reported counts as 0%: two new conversations are enough for both logins to report.
        self.served_by("warm-1")
        self.served_by("warm-2")
        self.assertEqual([entry["used_percent"] for entry in self.health_logins()], [70, 40])  # the highest window
        self.assertEqual(self.served_by("conv-a"), LOGIN_2)  # 40% < 70%
        self.fake.used_percents["acct-b"] = {"primary": 90}
        self.assertEqual(self.served_by("conv-b"), LOGIN_2)  # still 40% as last reported; now 90%
        self.assertEqual(self.served_by("conv-c"), LOGIN_1)  # 70% < 90%
        self.assertEqual(self.served_by("conv-a"), LOGIN_2)  # an old conversation stays, whatever its usage
        self.assertEqual(self.served_by("conv-c"), LOGIN_1)
        self.assertEqual([entry["used_percent"] for entry in self.health_logins()], [70, 90])

    def test_headroom_ties_go_to_the_first_listed(self):
        self.assertEqual(codex_proxy.place_conversation("headroom", [0, 1, 2], [30, 20, 20], [0]), 1)
        self.assertEqual(codex_proxy.place_conversation("headroom", [0, 2], [0, 0, 0], [0]), 0)

    def test_fill_first_takes_the_first_available_whatever_its_usage(self):
        self.use("fill-first")
        self.fake.used_percents = {"acct-123": {"primary": 95}, "acct-b": {"primary": 1}}
        self.assertEqual([self.served_by(c) for c in ("conv-1", "conv-2", "conv-3")], [LOGIN_1] * 3)

    def test_round_robin_takes_the_logins_in_turn_and_old_conversations_stay(self):
        self.use("round-robin")
        first, second, third = (self.served_by(c) for c in ("conv-1", "conv-2", "conv-3"))
        self.assertEqual((first == second, first == third), (False, True))
        self.assertEqual([self.served_by(c) for c in ("conv-2", "conv-1", "conv-2")], [second, first, second])
        self.assertEqual(self.served_by("conv-4"), second)

    def test_a_usage_limit_is_sent_again_on_the_login_the_strategy_picks(self):
        self.fake.used_percents = {"acct-123": {"primary": 100}, "acct-b": {"primary": 50}}
        self.served_by("warm-1")
        self.served_by("warm-2")  # both reported: login 1 at 100%, login 2 at 50%
        self.use("fill-first")
        self.fake.reset()
        self.fake.script.append(usage_limit_reply(resets_in_seconds=3600))
        self.assertEqual(self.served_by("conv-1"), LOGIN_2)  # the client never saw the 429
        self.assertEqual(self.bearers(), [LOGIN_1, LOGIN_2])
        self.assertEqual(self.served_by("conv-2"), LOGIN_2)  # login 1 rests: no /responses call for it
        self.assertEqual(self.bearers(), [LOGIN_1, LOGIN_2, LOGIN_2])
        self.assertEqual([entry["state"] for entry in self.health_logins()], ["resting", "ok"])


class RecheckTest(QuotaTestCase):
    def make_config(self, **overrides):
        return TwoLoginsTestCase.make_config(self, **dict({"login_recheck_interval": 300}, **overrides))

    def rest_login_1(self, resets_in_seconds=3600):
        """Login 1 answers a usage limit (its windows full): conv-1 is served on login 2."""
        self.fake.used_percents["acct-123"] = {"primary": 100, "secondary": 60}
        self.fake.script.append(usage_limit_reply(resets_in_seconds=resets_in_seconds))
        self.assertEqual(self.served_by("conv-1"), LOGIN_2)
        self.assertEqual(self.bearers(), [LOGIN_1, LOGIN_2])

    def test_a_rest_ended_early_by_a_recheck(self):
        self.rest_login_1()
        self.shift = 299  # within the interval of the 429: no re-check, login 1 gets no call
        self.assertEqual(self.served_by("conv-2"), LOGIN_2)
        self.assertEqual(self.rechecks(), [])
        self.shift = 301  # a re-check is due; the backend still shows login 1 full: it rests on
        self.assertEqual(self.served_by("conv-3"), LOGIN_2)
        self.assertEqual(self.rechecks(), [(LOGIN_1, "acct-123")])  # its own token and account
        self.assertEqual(self.served_by("conv-4"), LOGIN_2)
        self.assertEqual(len(self.rechecks()), 1)  # at most once per interval, counted from the last re-check
        self.fake.used_percents["acct-123"] = {"primary": 30, "secondary": 60}  # the limit lifted early
        self.shift = 602
        self.assertEqual(self.served_by("conv-5"), LOGIN_1)  # back at once, and first again (fill-first)
        self.assertEqual(len(self.rechecks()), 2)
        self.assertEqual(self.served_by("conv-1"), LOGIN_2)  # conv-1 stays where it moved
        logins = self.health_logins()
        self.assertEqual([(entry["state"], entry["used_percent"]) for entry in logins], [("ok", 60), ("ok", 12)])

    def test_logins_a_reload_builds_are_rechecked_too(self):
        app, loop = self.proxy.app, self.proxy.loop
        loop.call_soon_threadsafe(app.upstream.use_logins, app.config)  # what a SIGHUP changing codex_home does
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)  # (done: the loop has run it)
        self.rest_login_1()
        self.fake.used_percents["acct-123"] = {"primary": 30}  # the limit lifted early
        self.shift = 301
        self.assertEqual(self.served_by("conv-2"), LOGIN_1)
        self.assertEqual(self.rechecks(), [(LOGIN_1, "acct-123")])

    def test_a_reload_adding_a_login_keeps_rests_rechecks_usage_and_conversations(self):
        self.rest_login_1()  # login 1 rests, at 100%; conv-1 is on login 2
        third = tempfile.mkdtemp(prefix="codex-home-3-")
        self.addCleanup(shutil.rmtree, third, True)
        write_auth(third, access_token="access-c", refresh_token="refresh-c", account_id="acct-c",
                   id_token=fake_id_token("acct-c", "ci@example.com", "plus"))
        self.fake.valid_access_tokens.add("access-c")
        self.fake.accounts["access-c"] = "acct-c"
        app, loop = self.proxy.app, self.proxy.loop
        app.config.codex_homes = [self.home, third, self.second]  # (login 2 is listed third now)
        before = app.upstream.logins
        loop.call_soon_threadsafe(app.upstream.use_logins, app.config)  # what a SIGHUP changing codex_home does
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
        before.served("conv-9", 1)  # a request in flight on the old logins, whose login 2 was index 1
        self.assertNotIn("conv-9", app.upstream.logins.conversations)  # (index 1 is another login now)
        logins = self.health_logins()
        self.assertEqual([(entry["email"], entry["state"], entry["used_percent"]) for entry in logins],
                         [("me@example.com", "resting", 100), ("ci@example.com", "ok", None),
                          ("work@example.com", "ok", 12)])
        self.shift = 299  # within the interval of the 429: still no re-check, login 1 gets no call
        self.assertEqual(self.served_by("conv-1"), LOGIN_2)  # conv-1 stays on its login
        self.assertEqual(self.served_by("conv-2"), "access-c")  # fill-first: the first available
        self.assertEqual(self.rechecks(), [])
        self.assertEqual(self.bearers(), [LOGIN_1, LOGIN_2, LOGIN_2, "access-c"])
        self.fake.used_percents["acct-123"] = {"primary": 30}  # the limit lifted early
        self.shift = 301  # due, counted from the 429 before the reload
        self.assertEqual(self.served_by("conv-3"), LOGIN_1)
        self.assertEqual(self.rechecks(), [(LOGIN_1, "acct-123")])

    def test_a_reload_removing_a_login_drops_its_conversations_and_keeps_the_others(self):
        self.use("round-robin")
        bearers = {self.served_by(c): c for c in ("conv-1", "conv-2")}
        self.assertEqual(sorted(bearers), [LOGIN_1, LOGIN_2])  # one conversation on each login
        app, loop = self.proxy.app, self.proxy.loop
        app.config.codex_homes = [self.second]  # login 1 goes; login 2 is the first now
        loop.call_soon_threadsafe(app.upstream.use_logins, app.config)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
        self.assertEqual(dict(app.upstream.logins.conversations), {bearers[LOGIN_2]: 0})

    def first_request_rechecking(self, answers):
        """Both logins rest, then lift early; a re-check takes a second and both are due: a request
        (conv-3, its answer in answers["first"]) starts them, in a thread. Returns once one runs."""
        self.rest_login_1()
        self.fake.used_percents["acct-b"] = {"primary": 100}
        self.fake.script.append(usage_limit_reply(resets_in_seconds=1800))
        self.assertEqual(self.post("conv-2")[0], 429)  # both rest now
        self.fake.used_percents = {"acct-123": {"primary": 20}, "acct-b": {"primary": 30}}  # both lifted early
        self.fake.usage_delay = 1.0
        self.shift = 301
        first = threading.Thread(target=lambda: answers.setdefault("first", self.post("conv-3")))
        first.start()
        self.addCleanup(first.join, 30)
        deadline = time.monotonic() + 10
        while not self.rechecks() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(self.rechecks(), "the first request never re-checked")
        return first

    def test_with_every_login_resting_a_request_waits_for_the_recheck_another_is_running(self):
        answers = {}
        first = self.first_request_rechecking(answers)
        answers["second"] = self.post("conv-4")  # while the first request's re-check runs
        first.join(30)
        self.assertEqual([answers[name][0] for name in ("first", "second")], [200, 200], answers)
        self.assertEqual(sorted(self.rechecks()), [(LOGIN_1, "acct-123"), (LOGIN_2, "acct-b")])  # once each

    def test_a_login_the_old_logins_are_rechecking_during_a_reload_is_rechecked_by_the_new(self):
        answers = {}
        first = self.first_request_rechecking(answers)
        app, loop = self.proxy.app, self.proxy.loop
        loop.call_soon_threadsafe(app.upstream.use_logins, app.config)  # while the old logins re-check
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
        answers["second"] = self.post("conv-4")  # on the new logins, which learn nothing of that re-check
        first.join(30)
        self.assertEqual([answers[name][0] for name in ("first", "second")], [200, 200], answers)

    def test_a_rest_rechecked_at_its_reset(self):
        self.rest_login_1(resets_in_seconds=600)
        self.use("fill-first")
        with self.assertLogs("codex_proxy", "WARNING") as logs:
            self.proxy.app.config.login_recheck_interval = 100000  # only the reset makes a re-check due
            self.shift = 500
            self.assertEqual(self.served_by("conv-2"), LOGIN_2)
            self.assertEqual(self.rechecks(), [])
            self.fake.used_percents["acct-123"] = {"primary": 0}
            self.shift = 601
            self.assertEqual(self.served_by("conv-3"), LOGIN_1)
        self.assertEqual(self.rechecks(), [(LOGIN_1, "acct-123")])
        self.assertTrue(any("below its usage limit again" in line for line in logs.output), logs.output)

    def test_a_recheck_still_at_the_limit_rests_until_the_full_window_resets(self):
        self.rest_login_1(resets_in_seconds=60)
        self.shift = 61  # at its reset, the backend says the weekly window is full now
        self.fake.used_percents["acct-123"] = {"primary": 40, "secondary": 100}
        self.assertEqual(self.served_by("conv-2"), LOGIN_2)
        [login_1, _] = self.health_logins()
        self.assertEqual((login_1["state"], login_1["used_percent"]), ("resting", 100))
        week_reset = time.time() + 86400  # the fake's secondary window resets in a day
        self.assertLess(abs(codex_proxy.parse_timestamp(login_1["until"]) - week_reset), 5)

    def test_every_login_resting_a_due_recheck_saves_the_request(self):
        self.rest_login_1()
        self.fake.used_percents["acct-b"] = {"primary": 100}
        self.fake.script.append(usage_limit_reply(resets_in_seconds=1800))
        status, _, payload = self.post("conv-2")
        self.assertEqual(status, 429, payload)  # both rest now; no re-check is due yet
        self.assertEqual(self.rechecks(), [])
        self.fake.used_percents["acct-b"] = {"primary": 35}
        self.shift = 301
        self.assertEqual(self.served_by("conv-2"), LOGIN_2)  # login 2 came back on its re-check
        self.assertEqual(sorted(self.rechecks()), [(LOGIN_1, "acct-123"), (LOGIN_2, "acct-b")])

    def test_every_login_resting_with_none_back_is_a_429_at_the_soonest_reset(self):
        self.rest_login_1()
        self.fake.used_percents["acct-b"] = {"primary": 100}
        self.fake.script.append(usage_limit_reply(resets_in_seconds=1800))
        self.assertEqual(self.post("conv-2")[0], 429)
        self.shift = 301
        for attempt in (1, 2):  # the second asks nobody: no re-check is due again within the interval
            status, headers, payload = self.post("conv-%d" % (attempt + 2))
            self.assertEqual(status, 429, payload)
            self.assertEqual(len(self.rechecks()), 2)
            # Both re-checks showed a full 5-hour window, which the fake resets an hour from (real) now.
            self.assertLessEqual(abs(int(headers["retry-after"]) - (3600 - self.shift)), 5)
            self.assertEqual(payload["error"]["code"], "usage_limit_reached")
        self.assertEqual(self.bearers(), [LOGIN_1, LOGIN_2, LOGIN_2])  # no /responses call while resting
        status, _, payload = self.json_request("POST", "/v1/messages", {
            "model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual((status, payload["error"]["type"]), (429, "rate_limit_error"))

    def test_a_failed_recheck_changes_nothing_and_the_reset_ends_the_rest(self):
        self.rest_login_1(resets_in_seconds=600)
        self.use("fill-first")
        self.fake.usage_reply = {"status": 502, "body": {"detail": "bad gateway"}}
        self.shift = 301
        self.assertEqual(self.served_by("conv-2"), LOGIN_2)
        self.assertEqual(len(self.rechecks()), 1)
        self.assertEqual(self.health_logins()[0]["state"], "resting")
        self.shift = 601
        self.assertEqual(self.served_by("conv-3"), LOGIN_1)  # its reset ended the rest
        self.assertEqual(len(self.rechecks()), 2)  # (re-checked at its reset, which failed again)


class DisplayTest(QuotaTestCase):
    """/health, the start lines, `usage` and /metrics show each login's last reported used percent
    and, while it rests, until when."""

    def setUp(self):
        super().setUp()
        self.fake.used_percents = {"acct-123": {"primary": 100, "secondary": 60}, "acct-b": {"primary": 25}}
        self.fake.script.append(usage_limit_reply(resets_in_seconds=3600))
        self.assertEqual(self.served_by("conv-1"), LOGIN_2)  # login 1 rests
        self.until = time.time() + 3600

    def test_metrics_show_each_logins_used_percent_and_rest(self):
        status, _, raw = self.request("GET", "/metrics")
        self.assertEqual(status, 200)
        samples, types = parse_prometheus(raw.decode())
        used = {label: samples[("codex_proxy_login_used_percent", frozenset([("login", label)]))]
                for label in ("1", "2")}
        self.assertEqual(used, {"1": 100, "2": 25})
        until = samples[("codex_proxy_login_resting_until_seconds", frozenset([("login", "1")]))]
        self.assertLess(abs(until - self.until), 5)
        self.assertNotIn(("codex_proxy_login_resting_until_seconds", frozenset([("login", "2")])), samples)
        self.assertEqual(types["codex_proxy_login_used_percent"], "gauge")

    def test_health_shows_them_with_the_rest(self):
        [login_1, login_2] = self.health_logins()
        self.assertEqual((login_1["state"], login_1["used_percent"], login_2["state"], login_2["used_percent"]),
                         ("resting", 100, "ok", 25))
        self.assertLess(abs(codex_proxy.parse_timestamp(login_1["until"]) - self.until), 5)

    def test_the_start_lines_show_each_login_and_a_rest_the_backend_says_is_over_ends(self):
        self.assertIn("new conversations: --login-strategy fill-first", codex_proxy.login_line(
            self.proxy.app.upstream, self.proxy.config))
        out = io.StringIO()
        with contextlib.redirect_stderr(out):
            asyncio.run_coroutine_threadsafe(codex_proxy.announce_plan(self.proxy.server),
                                             self.proxy.loop).result(10)
        lines = out.getvalue().splitlines()
        resting = [n for n, line in enumerate(lines) if line.startswith("  usage:  login 1 (me@example.com), "
                                                                         "resting until ")]
        self.assertEqual(len(resting), 1, lines)
        self.assertIn("5-hour window: 100% used", lines[resting[0] + 1])
        self.assertIn("  usage:  login 2 (work@example.com):", lines)
        self.assertTrue(any("5-hour window: 25% used" in line for line in lines), lines)
        # Asked again once login 1 is below its limit: that answer ends its rest too.
        self.fake.used_percents["acct-123"] = {"primary": 20}
        with contextlib.redirect_stderr(io.StringIO()):
            asyncio.run_coroutine_threadsafe(codex_proxy.announce_plan(self.proxy.server),
                                             self.proxy.loop).result(10)
        self.assertEqual([entry["state"] for entry in self.health_logins()], ["ok", "ok"])

    def test_the_usage_command_shows_each_login(self):
        env = {name: value for name, value in os.environ.items() if not name.startswith("CODEX_PROXY_")}
        status, out, err = run_script(self, ["usage", "--chatgpt-base-url", self.fake.chatgpt_base,
                                             "--codex-home", self.home, "--codex-home", self.second], env)
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[:2], ["ChatGPT plan usage of 2 logins:", "  login 1 (me@example.com):"])
        self.assertRegex(lines[2], r"^    5-hour window: 100% used, resets ")
        self.assertRegex(lines[3], r"^    weekly window: 60% used, resets ")
        self.assertEqual(lines[4], "  login 2 (work@example.com):")
        self.assertRegex(lines[5], r"^    5-hour window: 25% used, resets ")
        self.assertEqual(sorted(r.headers.get("chatgpt-account-id") for r in self.fake.requests_to("/wham/usage")),
                         ["acct-123", "acct-b"])  # each asked with its own account
        for token in ("access-1", "access-b", "refresh-1", "refresh-b"):
            self.assertNotIn(token, out + err)


if __name__ == "__main__":
    unittest.main()
