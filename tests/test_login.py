"""Logins: the `login` command (device code and browser, against the fake's login endpoints),
`logout`, and several logins (--codex-home, repeatable) taking over from each other at usage
limits and dead refresh tokens.

Run: python3 -m unittest tests.test_login -v
"""

import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from unittest import mock

from support import (SCRIPT, ProxyTestCase, closed_port as free_port, codex_proxy, make_jwt, output_text, read_auth,
                     run_script, taken_port, write_auth)
from fake_upstream import CLIENT_ID, fake_id_token, s256, usage_limit_reply


FAKE_TEXT = "Hello from the fake backend."
BODY = {"model": "gpt-5.5", "input": "Say hi."}


def foreground_signals():
    """In the child: Ctrl-C as in a terminal's foreground job. A shell's background job (as
    CI may run the suite) ignores SIGINT, which Python would then leave ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class LoginCommandTest(ProxyTestCase):
    """`python3 codex_proxy.py login` and `logout` as processes, against the fake's login endpoints;
    the proxy (started with no login at all) serves with what they write."""

    def write_login(self):
        """No login: the proxy starts without one. The commands' environment instead."""
        self.env = dict(os.environ, CODEX_PROXY_ISSUER=self.fake.base_url, CODEX_HOME=self.home)
        for name in ("DISPLAY", "WAYLAND_DISPLAY", "HTTPS_PROXY", "https_proxy", "CODEX_PROXY_PROXY"):
            self.env.pop(name, None)  # no browser may open, no proxy in the way

    def run_command(self, *args):
        """(exit status, stdout, stderr) of `codex_proxy.py ARGS`."""
        return run_script(self, args, self.env)

    def start_login(self, *args):
        """A login process, and a queue of its output lines (None at the end)."""
        process = subprocess.Popen([sys.executable, SCRIPT, "login"] + list(args), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=self.env,
                                   preexec_fn=foreground_signals if os.name == "posix" else None)
        self.addCleanup(self.end_process, process)
        lines = queue.Queue()

        def pump():
            for line in process.stdout:
                lines.put(line)
            lines.put(None)
        threading.Thread(target=pump, daemon=True).start()
        return process, lines

    @staticmethod
    def end_process(process):
        if process.poll() is None:
            process.kill()
        process.wait(10)
        process.stdout.close()
        process.stderr.close()

    def wait_for_line(self, lines, pattern):
        while True:
            line = lines.get(timeout=20)
            self.assertIsNotNone(line, "the process ended before printing %r" % pattern)
            match = re.search(pattern, line)
            if match:
                return match

    def auth_path(self):
        return os.path.join(self.home, "auth.json")

    def assert_no_secret_printed(self, text):
        for token in self.fake.login_tokens + ["refresh-login-", "eyJ"]:
            self.assertNotIn(token, text)

    def test_device_login_writes_the_codex_cli_file_and_the_proxy_serves_with_it(self):
        self.assertEqual(self.json_request("GET", "/health")[2]["logins"][0]["state"], "not logged in")
        self.assertEqual(self.json_request("POST", "/v1/responses", BODY)[0], 401)
        status, out, err = self.run_command("login")
        self.assertEqual(status, 0, err)
        self.assertIn(self.fake.base_url + "/codex/device", out)
        self.assertRegex(out, r"\n    [0-9A-F]{4}-C0DE\n")
        self.assertIn("Logged in as user@example.com, plus plan", out)
        self.assert_no_secret_printed(out + err)
        usercode, = self.fake.requests_to("/deviceauth/usercode")
        self.assertEqual(usercode.json, {"client_id": CLIENT_ID})
        polls = self.fake.requests_to("/deviceauth/token")
        self.assertEqual(len(polls), 3)  # two "not yet" (403, 404), then the grant
        self.assertEqual(set(polls[0].json), {"device_auth_id", "user_code"})
        exchange, = self.fake.requests_to("/oauth/token")
        self.assertEqual(exchange.headers["content-type"], "application/x-www-form-urlencoded")
        form = urllib.parse.parse_qs(exchange.body.decode())
        self.assertEqual((form["grant_type"], form["redirect_uri"], form["client_id"]),
                         (["authorization_code"], [self.fake.base_url + "/deviceauth/callback"], [CLIENT_ID]))
        # Byte for byte what the Codex CLI writes (serde_json's pretty form), mode 0600.
        data = read_auth(self.home)
        access = self.fake.login_tokens[0]
        expected = {"auth_mode": "chatgpt", "OPENAI_API_KEY": None, "tokens": {
            "id_token": data["tokens"]["id_token"], "access_token": access,
            "refresh_token": access.replace("access", "refresh"), "account_id": "acct-123"},
            "last_refresh": data["last_refresh"]}
        with open(self.auth_path(), "rb") as handle:
            self.assertEqual(handle.read(), json.dumps(expected, indent=2).encode())
        self.assertRegex(data["last_refresh"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertLess(abs(codex_proxy.parse_timestamp(data["last_refresh"]) - time.time()), 60)
        self.assertEqual(codex_proxy.token_identity(data["tokens"]["id_token"])["email"], "user@example.com")
        self.assertEqual(stat.S_IMODE(os.stat(self.auth_path()).st_mode), 0o600)
        # The proxy, running since before the login, serves with it.
        status, _, payload = self.json_request("POST", "/v1/responses", BODY)
        self.assertEqual((status, output_text(payload)), (200, FAKE_TEXT))
        self.assertEqual(self.fake.requests_to("/backend-api/codex/responses")[-1].headers["authorization"],
                         "Bearer " + access)
        login, = self.json_request("GET", "/health")[2]["logins"]
        self.assertEqual((login["email"], login["plan"], login["state"]), ("user@example.com", "plus", "ok"))

    def test_a_device_code_nobody_enters_expires(self):
        self.fake.device_pending = 10 ** 6
        status, out, err = self.run_command("login", "--give-up-after", "0.5")
        self.assertEqual(status, 1, out)
        self.assertIn("not entered within 0.5 seconds", err)
        self.assertIn("python3 codex_proxy.py login", err)
        self.assertFalse(os.path.exists(self.auth_path()))

    @unittest.skipIf(os.name == "nt", "SIGINT to a child process is POSIX")
    def test_ctrl_c_cancels_a_login_cleanly(self):
        self.fake.device_pending = 10 ** 6
        for args in ((), ("--browser", "--callback-port", str(free_port()))):
            with self.subTest(args=args):
                process, lines = self.start_login(*args)
                self.wait_for_line(lines, r"Waiting for")
                process.send_signal(signal.SIGINT)
                self.assertEqual(process.wait(10), 130)
                err = process.stderr.read()
                self.assertIn("Login cancelled; nothing was written.", err)
                self.assertNotIn("Traceback", err)
                self.assertFalse(os.path.exists(self.auth_path()))

    def test_device_login_not_enabled_suggests_the_browser(self):
        self.fake.device_login_enabled = False
        status, out, err = self.run_command("login")
        self.assertEqual(status, 1, out)
        self.assertIn("Device code login is not enabled for this account or workspace", err)
        self.assertIn("python3 codex_proxy.py login --browser", err)
        self.assertFalse(os.path.exists(self.auth_path()))

    def test_browser_login_refuses_a_foreign_state_and_takes_the_redirect(self):
        write_auth(self.home, id_token=fake_id_token("acct-old", "old@example.com", "free"))
        port = free_port()
        process, lines = self.start_login("--browser", "--callback-port", str(port))
        url = self.wait_for_line(lines, r"(http://127\.0\.0\.1:\d+/oauth/authorize\?\S+)").group(1)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).items()}
        self.assertEqual((query["redirect_uri"], query["scope"], query["code_challenge_method"]),
                         ("http://localhost:%d/auth/callback" % port, "openid profile email offline_access", "S256"))
        browser = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        # A callback that did not start here (another state) is refused, and the login waits on.
        with self.assertRaises(urllib.error.HTTPError) as caught:
            browser.open("http://127.0.0.1:%d/auth/callback?code=forged&state=wrong" % port, timeout=10)
        self.assertEqual(caught.exception.code, 400)
        self.assertIn(b"state mismatch", caught.exception.read())
        caught.exception.close()
        self.assertIsNone(process.poll())
        self.assertEqual(read_auth(self.home)["tokens"]["access_token"], "access-1")  # untouched
        # Be the browser: sign in, follow the redirect back to the login's page.
        with browser.open(url, timeout=10) as page:
            self.assertEqual(page.status, 200)
            self.assertIn(b"Signed in", page.read())
        self.assertEqual(process.wait(20), 0, process.stderr.read())
        out = "".join(iter(lines.get, None))
        self.assertIn("Logged in as user@example.com, plus plan (in place of old@example.com)", out)
        self.assert_no_secret_printed(out)
        form = urllib.parse.parse_qs(self.fake.requests_to("/oauth/token")[0].body.decode())
        self.assertEqual(form["redirect_uri"], ["http://localhost:%d/auth/callback" % port])
        self.assertEqual(s256(form["code_verifier"][0]), query["code_challenge"])
        self.assertEqual(read_auth(self.home)["tokens"]["access_token"], self.fake.login_tokens[0])
        status, _, payload = self.json_request("POST", "/v1/responses", BODY)
        self.assertEqual(status, 200, payload)

    def test_browser_login_says_when_its_port_is_taken(self):
        port = taken_port(self)
        status, out, err = self.run_command("login", "--browser", "--callback-port", str(port))
        self.assertEqual(status, 1, out)
        self.assertIn("Cannot listen on 127.0.0.1:%d" % port, err)
        self.assertIn("python3 codex_proxy.py login", err)  # the device login, which needs no port

    def test_logout_says_whose_login_it_removes(self):
        write_auth(self.home, id_token=fake_id_token("acct-123", "me@example.com", "pro"), OPENAI_API_KEY="sk-x")
        status, out, err = self.run_command("logout")
        self.assertEqual(status, 0, err)
        self.assertIn("Logged out me@example.com (pro plan)", out)
        self.assertFalse(os.path.exists(self.auth_path()))  # the API key went too: nothing to trip on
        self.assertNotIn("sk-x", out)
        status, out, _ = self.run_command("logout", "--codex-home", self.home)
        self.assertEqual((status, out.strip()), (0, "No login in %s: nothing to do." % self.home))
        status, _, payload = self.json_request("POST", "/v1/responses", BODY)
        self.assertEqual(status, 401, payload)
        self.assertIn("python3 codex_proxy.py login", payload["error"]["message"])
        self.assertIn("codex login", payload["error"]["message"])

    def test_the_issuer_override_is_a_testing_aid_of_login_only(self):
        self.assertIn("CODEX_PROXY_ISSUER", self.run_command("login", "--help")[1])
        self.assertNotIn("CODEX_PROXY_ISSUER", self.run_command("--help")[1])


class TwoLoginsTestCase(ProxyTestCase):
    """Two logins: login 1 (me@example.com, plus, account acct-123) in self.home, login 2
    (work@example.com, team, account acct-b) in self.second; the fake accepts both accounts' tokens."""

    def write_login(self):
        self.second = tempfile.mkdtemp(prefix="codex-home-2-")
        self.addCleanup(shutil.rmtree, self.second, True)
        write_auth(self.home, id_token=fake_id_token("acct-123", "me@example.com", "plus"))
        write_auth(self.second, access_token="access-b", refresh_token="refresh-b", account_id="acct-b",
                   id_token=fake_id_token("acct-b", "work@example.com", "team"))
        self.fake.valid_access_tokens.add("access-b")
        self.fake.accounts["access-b"] = "acct-b"

    def make_config(self, **overrides):
        # fill-first: these tests follow the order of the logins; StrategyTest tries each strategy.
        return ProxyTestCase.make_config(self, **dict({"codex_homes": [self.home, self.second],
                                                       "login_strategy": "fill-first"}, **overrides))

    def post(self, conversation, body=BODY, proxy=None):
        return self.json_request("POST", "/v1/responses", body, {"session_id": conversation}, proxy)

    def bearers(self):
        return [r.headers.get("authorization")[7:] for r in self.fake.requests_to("/responses")]

    def health_logins(self, headers=None, proxy=None):
        status, _, payload = self.json_request("GET", "/health", headers=headers, proxy=proxy)
        self.assertEqual(status, 200, payload)
        return payload["logins"]


class SeveralLoginsTest(TwoLoginsTestCase):
    def test_a_usage_limit_moves_the_conversation_to_the_next_login(self):
        self.fake.script.extend([usage_limit_reply(resets_in_seconds=3), {"text": "from login 2"}])
        status, events, raw = self.sse_request("/v1/responses", dict(BODY, stream=True),
                                               {"session_id": "conv-1"})
        self.assertEqual(status, 200, raw)  # retried on login 2: the client never sees the 429
        self.assertEqual([name for name, _ in events][-1], "response.completed")
        self.assertNotIn("error", [name for name, _ in events])
        self.assertEqual(self.bearers(), ["access-1", "access-b"])
        # The same conversation goes straight to login 2 while login 1 rests; so does a new one.
        for conversation in ("conv-1", "conv-2"):
            status, _, payload = self.post(conversation)
            self.assertEqual((status, output_text(payload)), (200, FAKE_TEXT))
        self.assertEqual(self.bearers(), ["access-1", "access-b", "access-b", "access-b"])
        logins = self.health_logins()
        self.assertEqual([(entry["email"], entry["plan"], entry["state"]) for entry in logins],
                         [("me@example.com", "plus", "resting"), ("work@example.com", "team", "ok")])
        self.assertRegex(logins[0]["until"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertNotIn("access-1", json.dumps(logins))
        # Once login 1's limit has reset, new conversations go to it again; conv-1 stays where its
        # prompt cache now is.
        time.sleep(max(0.0, codex_proxy.parse_timestamp(logins[0]["until"]) - time.time()) + 0.2)
        self.fake.reset()
        for conversation in ("conv-3", "conv-1"):
            self.assertEqual(self.post(conversation)[0], 200)
        self.assertEqual(self.bearers(), ["access-1", "access-b"])
        self.assertEqual([entry["state"] for entry in self.health_logins()], ["ok", "ok"])

    def test_every_login_resting_is_one_429_with_the_earliest_reset(self):
        self.fake.script.extend([usage_limit_reply(resets_in_seconds=300),
                                 {"status": 429, "body": {"error": {
                                     "type": "usage_not_included", "message": "Your plan does not include Codex.",
                                     "plan_type": "free", "resets_in_seconds": 60}}}])
        for attempt in (1, 2):
            with self.subTest(attempt=attempt):
                status, headers, payload = self.post("conv-1")
                self.assertEqual(status, 429, payload)
                error = payload["error"]
                self.assertEqual((error["type"], error["code"], error["plan_type"]),
                                 ("usage_not_included", "usage_not_included", "free"))
                self.assertLessEqual(abs(error["resets_at"] - (time.time() + 60)), 5)
                self.assertIn(int(headers["retry-after"]), range(55, 62))
                self.assertIn("Every login has reached its usage limit", error["message"])
                self.assertIn("login 2", error["message"])
        self.assertEqual(self.bearers(), ["access-1", "access-b"])  # the second 429 asked nobody
        status, _, payload = self.json_request("POST", "/v1/messages", {
            "model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual((status, payload["error"]["type"]), (429, "rate_limit_error"))

    def test_a_dead_refresh_token_sets_one_login_aside(self):
        write_auth(self.home, access_token=make_jwt(exp=int(time.time()) - 60), refresh_token="refresh-dead",
                   id_token=fake_id_token("acct-123", "me@example.com", "plus"))
        with self.assertLogs("codex_proxy", "WARNING") as logs:
            for conversation in ("conv-1", "conv-2", "conv-1"):
                status, _, payload = self.post(conversation)
                self.assertEqual((status, output_text(payload)), (200, FAKE_TEXT))
        self.assertEqual(len([line for line in logs.output if "aside" in line]), 1, logs.output)
        [said] = [line for line in logs.output if "refresh_token_invalidated" in line]  # why, once
        self.assertIn("the ChatGPT login stopped working: ", said)
        self.assertEqual(len(self.fake.requests_to("/oauth/token")), 1)  # tried once, then left alone
        self.assertEqual(set(self.bearers()), {"access-b"})
        first = self.health_logins()[0]
        self.assertEqual((first["email"], first["state"]), ("me@example.com", "set aside"))
        self.assertIn("python3 codex_proxy.py login", first["reason"])
        # A new login in that folder brings it back.
        write_auth(self.home, access_token="access-1", refresh_token="refresh-1",
                   id_token=fake_id_token("acct-123", "me@example.com", "plus"))
        self.fake.reset()
        self.assertEqual(self.post("conv-3")[0], 200)
        self.assertEqual(self.bearers(), ["access-1"])
        self.assertEqual([entry["state"] for entry in self.health_logins()], ["ok", "ok"])

    def test_no_login_left_is_a_401_naming_both_ways_to_log_in(self):
        os.remove(os.path.join(self.home, "auth.json"))
        os.remove(os.path.join(self.second, "auth.json"))
        status, _, payload = self.post("conv-1")
        self.assertEqual(status, 401, payload)
        self.assertEqual(payload["error"]["code"], "codex_login_required")
        for words in ("python3 codex_proxy.py login", "codex login", self.home, self.second):
            self.assertIn(words, payload["error"]["message"])
        self.assertEqual([entry["state"] for entry in self.health_logins()], ["not logged in", "not logged in"])

    def test_health_names_accounts_only_to_holders_of_the_local_key(self):
        proxy = self.start_proxy(api_key="local-key")
        self.assertEqual(self.health_logins(proxy=proxy), [{"state": "ok"}, {"state": "ok"}])
        logins = self.health_logins({"Authorization": "Bearer local-key"}, proxy)
        self.assertEqual([(entry["email"], entry["codex_home"]) for entry in logins],
                         [("me@example.com", self.home), ("work@example.com", self.second)])

    def test_start_lines_list_the_logins(self):
        text = self.proxy.app.upstream.logins.describe()
        self.assertIn("2 ChatGPT logins", text)
        self.assertIn("me@example.com (plus plan) from %s" % os.path.join(self.home, "auth.json"), text)
        self.assertIn("work@example.com (team plan)", text)
        os.remove(os.path.join(self.second, "auth.json"))
        self.assertIn("NOT FOUND (run `python3 codex_proxy.py login --codex-home %s` or `CODEX_HOME=%s codex login`)"
                      % (self.second, self.second), self.proxy.app.upstream.logins.describe())


class LoginsChoiceTest(unittest.TestCase):
    """Logins' bookkeeping on its own: stickiness, rests, and forgetting old conversations."""

    def setUp(self):
        self.homes = [tempfile.mkdtemp(prefix="codex-home-%d-" % n) for n in range(3)]
        for home in self.homes:
            self.addCleanup(shutil.rmtree, home, True)
            write_auth(home)
        self.logins = codex_proxy.Logins(codex_proxy.Config(codex_homes=self.homes, openai_api_key=None), None)

    def limit(self, seconds):
        return codex_proxy.UpstreamError(429, json.dumps(usage_limit_reply(seconds)["body"]).encode())

    def test_conversations_stick_and_move_on_in_order(self):
        self.assertEqual(self.logins.choose("a"), 0)
        self.logins.rest(0, self.limit(100))
        self.assertEqual(self.logins.choose("a"), 1)
        self.logins.served("a", 1)
        self.logins.served("b", 2)
        self.logins.rest(1, self.limit(100))
        self.assertEqual((self.logins.choose("a"), self.logins.choose("b"), self.logins.choose(None)), (2, 2, 2))
        self.logins.served("a", 2)
        self.logins.rest(2, self.limit(50))
        with self.assertRaises(codex_proxy.UpstreamError) as caught:
            self.logins.choose("a")
        self.assertEqual(caught.exception.limit_details()["resets_in_seconds"], 50)
        self.logins.resting[2] = (time.time() - 1,) + self.logins.resting[2][1:]  # its limit has reset
        self.assertEqual((self.logins.choose("a"), self.logins.choose("b")), (2, 2))
        with self.assertRaises(codex_proxy.UpstreamError):
            self.logins.choose("a", tried={2})  # tried already in this request: none left

    def test_the_oldest_conversations_are_forgotten(self):
        with mock.patch.object(codex_proxy.Logins, "MAX_CONVERSATIONS", 2):
            for n, conversation in enumerate("abc"):
                self.logins.served(conversation, n)
        self.assertEqual(list(self.logins.conversations.items()), [("b", 1), ("c", 2)])

    def test_one_login_is_not_several(self):
        single = codex_proxy.Logins(codex_proxy.Config(codex_home=self.homes[0], openai_api_key=None), None)
        self.assertFalse(single.several)
        self.assertEqual(single.status(True)[0]["state"], "ok")


class CodexHomeFlagTest(unittest.TestCase):
    def test_repeatable_flag_and_comma_list(self):
        config = codex_proxy.config_from_args(["--codex-home", "/a", "--codex-home", "~/b"])
        self.assertEqual((config.codex_home, config.codex_homes), ("/a", ["/a", os.path.expanduser("~/b")]))
        with mock.patch.dict(os.environ, {"CODEX_PROXY_CODEX_HOME": "/x, /y", "CODEX_HOME": "/ignored"}):
            config = codex_proxy.config_from_args([])
        self.assertEqual((config.codex_home, config.codex_homes), ("/x", ["/x", "/y"]))
        with mock.patch.dict(os.environ, {"CODEX_HOME": "/only"}):
            os.environ.pop("CODEX_PROXY_CODEX_HOME", None)
            config = codex_proxy.config_from_args([])
        self.assertEqual((config.codex_home, config.codex_homes), ("/only", ["/only"]))


if __name__ == "__main__":
    unittest.main()
