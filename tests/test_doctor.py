"""`doctor` and `usage`: the commands that check the setup and show the plan's
usage windows, run as processes against the fake backend (and once in this
process, to see that they leave no thread or socket behind)."""

import contextlib
import datetime
import gc
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
import unittest
from unittest import mock

from support import (LEAKS, FakeCodexBackend, closed_port, codex_proxy, make_jwt, read_auth, run_script, wait_for,
                     write_auth)
from fake_upstream import fake_id_token, usage_limit_reply

REFRESH_TOKEN = "refresh-doctor-secret"
CHECKS = ["python", "credentials", "permissions", "token", "upstream", "models", "request"]
LINE = re.compile(r"^(ok|FAIL|skip) {1,3}(\w+): (.*)$")
BOTH_LOGINS = ("`codex login`", "`python3 codex_proxy.py login`")


class CommandTestCase(unittest.TestCase):
    """A fake backend, an empty CODEX_HOME, and an environment without API keys or proxies."""

    def setUp(self):
        self.fake = FakeCodexBackend().start()
        self.addCleanup(self.fake.stop)
        self.home = tempfile.mkdtemp(prefix="codex-home-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.auth_path = os.path.join(self.home, "auth.json")
        self.access = make_jwt(exp=int(time.time()) + 3600, sub="doctor-test")
        self.fake.valid_access_tokens = {self.access}
        self.fake.refresh_tokens[REFRESH_TOKEN] = ("access-fresh", "refresh-fresh", None)
        self.env = {name: value for name, value in os.environ.items()
                    if not name.startswith("CODEX_PROXY_") and name.upper() not in ("OPENAI_API_KEY", "HTTPS_PROXY")}
        self.env.update(CODEX_HOME=self.home, CODEX_REFRESH_TOKEN_URL_OVERRIDE=self.fake.token_url)
        self.secrets = [self.access, REFRESH_TOKEN, "access-fresh", "refresh-fresh", "sk-test-key"]

    def log_in(self, access_token=None, refresh_token=REFRESH_TOKEN, mode=0o600):
        """An auth.json as `codex login` writes it, with an id token that names the user and plan."""
        write_auth(self.home, access_token=access_token or self.access, refresh_token=refresh_token)
        data = read_auth(self.home)
        data["tokens"]["id_token"] = fake_id_token()
        with open(self.auth_path, "w") as handle:
            json.dump(data, handle)
        os.chmod(self.auth_path, mode)

    def run_command(self, command, *args, **env):
        """(exit status, stdout, stderr) of `codex_proxy.py COMMAND` against the fake; later
        arguments win over the fake's base URL. No token may appear in either stream."""
        status, out, err = run_script(self, [command, "--chatgpt-base-url", self.fake.chatgpt_base] + list(args),
                                      dict(self.env, **env))
        for secret in self.secrets:
            self.assertNotIn(secret, out + err)
        return status, out, err

    def doctor(self, *args, **env):
        """(exit status, {check: (status, text)}), the checks in their order."""
        status, out, err = self.run_command("doctor", *args, **env)
        lines = [LINE.match(line) for line in out.splitlines()]
        self.assertTrue(all(lines), out)
        self.assertEqual([line.group(2) for line in lines], CHECKS, out)
        return status, {line.group(2): (line.group(1), line.group(3)) for line in lines}

    def assert_statuses(self, checks, **expected):
        """Every check ok, but for those named."""
        self.assertEqual({name: status for name, (status, _) in checks.items()},
                         dict(dict.fromkeys(CHECKS, "ok"), **expected), checks)


class DoctorTest(CommandTestCase):
    def test_all_checks_pass(self):
        self.log_in()
        status, checks = self.doctor()
        self.assertEqual(status, 0, checks)
        self.assert_statuses(checks)
        self.assertIn("ChatGPT login in %s (user@example.com, plus)" % self.auth_path, checks["credentials"][1])
        self.assertIn("0600", checks["permissions"][1])
        self.assertRegex(checks["token"][1], r"expires \d{4}-\d\d-\d\d \d\d:\d\d .*\(in 59m\)")
        self.assertIn("127.0.0.1:%d answers" % self.fake._server.server_address[1], checks["upstream"][1])
        self.assertIn("3 listed; the default is gpt-5.5", checks["models"][1])
        self.assertIn("Hello from the fake backend.", checks["request"][1])
        request = self.fake.requests_to("/backend-api/codex/responses")[0]
        self.assertEqual(request.json["input"][0]["content"], [{"type": "input_text", "text": "ping"}])

    def test_a_token_due_for_refresh_is_refreshed(self):
        self.log_in(access_token=make_jwt(exp=int(time.time()) - 60))
        self.fake.valid_access_tokens = {"access-fresh"}
        status, checks = self.doctor("--offline")
        self.assertEqual(status, 0, checks)
        self.assertIn("refreshed: the old access token expired", checks["token"][1])
        self.assertEqual(read_auth(self.home)["tokens"]["access_token"], "access-fresh")

    def test_offline_skips_the_test_request(self):
        self.log_in()
        status, checks = self.doctor("--offline")
        self.assertEqual(status, 0, checks)
        self.assert_statuses(checks, request="skip")
        self.assertEqual(checks["request"][1], "--offline")
        self.assertEqual(self.fake.requests_to("/responses"), [])

    def test_a_missing_login_names_the_file_and_both_ways_to_log_in(self):
        status, checks = self.doctor()
        self.assertEqual(status, 1)
        self.assert_statuses(checks, credentials="FAIL", permissions="skip", token="skip", models="skip",
                             request="skip")
        self.assertIn("no login found at %s" % self.auth_path, checks["credentials"][1])
        for command in BOTH_LOGINS:
            self.assertIn(command, checks["credentials"][1])

    def test_an_auth_json_that_is_not_json(self):
        with open(self.auth_path, "w") as handle:
            handle.write("{not json")
        os.chmod(self.auth_path, 0o600)
        status, checks = self.doctor()
        self.assertEqual(status, 1)
        self.assert_statuses(checks, credentials="FAIL", token="skip", models="skip", request="skip")
        self.assertIn("Cannot read the Codex login in %s" % self.auth_path, checks["credentials"][1])
        self.assertIn("log in again", checks["credentials"][1])

    @unittest.skipUnless(os.name == "posix", "file modes are POSIX's")
    def test_an_auth_json_others_can_read(self):
        self.log_in(mode=0o644)
        status, checks = self.doctor("--offline")
        self.assertEqual(status, 1)
        self.assert_statuses(checks, permissions="FAIL", request="skip")
        self.assertIn("mode 0644", checks["permissions"][1])
        self.assertTrue(checks["permissions"][1].endswith("-> chmod 600 %s" % self.auth_path), checks)

    def test_a_dead_refresh_token_says_to_log_in_again(self):
        self.log_in(access_token=make_jwt(exp=int(time.time()) - 3600), refresh_token="refresh-nobody-knows")
        status, checks = self.doctor()
        self.assertEqual(status, 1)
        self.assert_statuses(checks, token="FAIL", models="skip", request="skip")
        self.assertIn("expired", checks["token"][1])
        self.assertIn("refresh_token_invalidated", checks["token"][1])
        self.assertIn("-> log in again: " + " or ".join(BOTH_LOGINS), checks["token"][1])
        self.assertEqual(checks["models"][1], "not tried: token failed")

    def assert_upstream_fails(self, *args, says=()):
        """doctor with these arguments: the upstream check fails saying all of `says`, and the
        checks that need the upstream are not tried."""
        self.log_in()
        status, checks = self.doctor("--offline", *args)
        self.assertEqual(status, 1)
        self.assert_statuses(checks, upstream="FAIL", models="skip", request="skip")
        for words in says:
            self.assertIn(words, checks["upstream"][1])

    def test_an_unreachable_upstream_names_host_port_and_what_failed(self):
        port = closed_port()
        self.assert_upstream_fails("--chatgpt-base-url", "http://127.0.0.1:%d/backend-api/codex" % port, says=(
            "cannot reach upstream 127.0.0.1:%d: connection refused" % port, "-> check your network or --proxy"))

    def test_a_tls_failure_points_at_the_ca_bundle(self):
        port = self.fake._server.server_address[1]  # plain HTTP, where TLS is expected
        self.assert_upstream_fails("--chatgpt-base-url", "https://127.0.0.1:%d/x" % port, says=(
            "cannot reach upstream 127.0.0.1:%d: TLS failed" % port, "-> check the CA bundle (SSL_CERT_FILE"))

    def test_an_unreachable_proxy_is_named_without_its_credentials(self):
        port = closed_port()
        self.secrets.append("proxy-secret")
        self.assert_upstream_fails("--chatgpt-base-url", "https://chatgpt.invalid/backend-api/codex",
                                   "--proxy", "http://someone:proxy-secret@127.0.0.1:%d" % port,
                                   says=("cannot reach the proxy 127.0.0.1:%d" % port,
                                         "connection refused -> check --proxy"))

    def test_a_failing_model_catalog(self):
        self.log_in()
        self.fake.models_reply = {"status": 503, "body": {"error": {"message": "The catalog is resting.",
                                                                    "code": "server_is_overloaded"}}}
        status, checks = self.doctor()
        self.assertEqual(status, 1)
        self.assert_statuses(checks, models="FAIL", request="skip")
        self.assertIn("HTTP 503: The catalog is resting.", checks["models"][1])
        self.assertIn("try again later", checks["models"][1])

    def test_a_failing_test_request(self):
        self.log_in()
        self.fake.script.append(usage_limit_reply(resets_in_seconds=600))
        status, checks = self.doctor()
        self.assertEqual(status, 1)
        self.assert_statuses(checks, request="FAIL")
        self.assertIn("HTTP 429: The usage limit has been reached", checks["request"][1])
        self.assertIn("-> wait until the limit resets", checks["request"][1])

    def test_api_key_mode(self):
        status, checks = self.doctor("--openai-base-url", self.fake.api_base, OPENAI_API_KEY="sk-test-key")
        self.assertEqual(status, 0, checks)
        self.assert_statuses(checks, permissions="skip", token="skip")
        self.assertIn("API key from OPENAI_API_KEY", checks["credentials"][1])
        self.assertIn("4 listed; the default is gpt-5 ", checks["models"][1])
        self.assertEqual(len(self.fake.requests_to("/v1/responses")), 1)

    def test_help_and_usage_errors(self):
        status, out, _ = self.run_command("doctor", "--help")
        self.assertEqual(status, 0)
        for flag in ("--offline", "--codex-home", "--proxy", "--chatgpt-base-url", "--auth"):
            self.assertIn(flag, out)
        status, _, err = self.run_command("doctor", "--no-such-flag")
        self.assertEqual((status, err.splitlines()), (2, ["codex_proxy.py doctor: no flag --no-such-flag",
                                                          "See `python3 codex_proxy.py doctor --help`."]))


class UsageTest(CommandTestCase):
    @unittest.skipUnless(hasattr(time, "tzset"), "TZ is read where time.tzset exists")
    def test_both_windows_in_local_time(self):
        self.log_in()
        now = int(time.time())
        self.fake.usage = {"rate_limit": {
            "primary_window": {"used_percent": 42, "limit_window_seconds": 18000, "reset_at": now + 7200},
            "secondary_window": {"used_percent": 7.5, "limit_window_seconds": 604800, "reset_at": now + 3 * 86400}}}
        status, out, err = self.run_command("usage", TZ="XYZ-3")  # local time: UTC+3, named XYZ

        def local(stamp):
            return datetime.datetime.fromtimestamp(stamp, datetime.timezone(datetime.timedelta(hours=3))).strftime(
                "%Y-%m-%d %H:%M XYZ")
        self.assertEqual(status, 0, err)
        self.assertEqual(out.splitlines(), [
            "ChatGPT plan usage of user@example.com, plus:",
            "  5-hour window: 42%% used, resets %s (in 1h 59m)" % local(now + 7200),
            "  weekly window: 7.5%% used, resets %s (in 2d 23h)" % local(now + 3 * 86400)])

    def test_api_key_mode_has_no_plan_windows(self):
        status, out, _ = self.run_command("usage", "--openai-base-url", self.fake.api_base,
                                          OPENAI_API_KEY="sk-test-key")
        self.assertEqual(status, 0)
        self.assertIn("there are no plan usage windows", out)
        self.assertEqual(self.fake.requests, [])

    def test_a_failure_says_why(self):
        status, out, err = self.run_command("usage")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("No Codex login found at %s" % self.auth_path, err)
        self.assertIn(BOTH_LOGINS[1], err)

    def test_help(self):
        status, out, _ = self.run_command("usage", "--help")
        self.assertEqual(status, 0)
        self.assertIn("5-hour and weekly", out)
        self.assertIn("--codex-home", out)


class InProcessTest(CommandTestCase):
    def test_leaves_no_thread_or_socket_behind(self):
        self.log_in()
        threads, leaks = set(threading.enumerate()), len(LEAKS)
        out, outcome = io.StringIO(), []
        # In a thread of its own: asyncio.run() leaves its thread without an event loop, which on
        # Python 3.8 would fail later tests that make asyncio objects in the main thread.
        runner = threading.Thread(target=lambda: outcome.append(codex_proxy.main(
            ["doctor", "--chatgpt-base-url", self.fake.chatgpt_base])))
        with mock.patch.dict(os.environ, self.env, clear=True), mock.patch("logging.basicConfig"), \
                contextlib.redirect_stdout(out):
            runner.start()
            runner.join(30)
        self.assertEqual(outcome, [0], out.getvalue())
        self.assertTrue(wait_for(lambda: set(threading.enumerate()) <= threads), threading.enumerate())
        gc.collect()
        self.assertEqual(LEAKS[leaks:], [])


if __name__ == "__main__":
    unittest.main()
