"""Named local keys (--api-key NAME=KEY, repeatable): read from flags and the environment, any of
them lets a request in, the name (never the key) in the request's log line and as a label in
/metrics, the 401 naming neither; the launchers' key by --key-name.

Run: python3 -m unittest tests.test_local_keys -v
"""

import contextlib
import io
import json
import os
import unittest
import unittest.mock

from support import ProxyTestCase, WebSocketClient, codex_proxy, run_script, wait_for
from test_operator import parse_prometheus, request_lines

CHAT = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}
KEYS = [("laptop", "SECRET-laptop-1"), ("ci", "SECRET-ci-2")]


def clean_environment(**variables):
    """os.environ without CODEX_PROXY_ variables, with these."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("CODEX_PROXY_")}
    environment.update(variables)
    return unittest.mock.patch.dict(os.environ, environment, clear=True)


class KeySettingTests(unittest.TestCase):
    def test_a_value_is_name_equals_key_or_a_key_named_default(self):
        self.assertEqual(codex_proxy.named_key("laptop=k1"), ("laptop", "k1"))
        self.assertEqual(codex_proxy.named_key("plain-key"), ("default", "plain-key"))
        for base64_key in ("c2VjcmV0==", "c2VjcmV0YQ="):  # padding is no name
            self.assertEqual(codex_proxy.named_key(base64_key), ("default", base64_key))
        for refused in ("", "[redacted]", "laptop=[redacted]"):
            with self.assertRaises(ValueError):
                codex_proxy.named_key(refused)

    def test_a_name_is_given_once(self):
        said = io.StringIO()
        with clean_environment(), contextlib.redirect_stderr(said), self.assertRaises(SystemExit):
            codex_proxy.config_from_args(["--api-key", "k1", "--api-key", "k2"])
        self.assertIn("--api-key names default twice", said.getvalue())

    def test_from_flags_repeated(self):
        with clean_environment():
            config = codex_proxy.config_from_args(["--api-key", "laptop=k1", "--api-key", "k2"])
        self.assertEqual(config.api_key, [("laptop", "k1"), ("default", "k2")])

    def test_from_the_environment_new_and_old_variable(self):
        with clean_environment(CODEX_PROXY_API_KEYS="laptop=k1, ci=k2"):
            self.assertEqual(codex_proxy.config_from_args([]).api_key, [("laptop", "k1"), ("ci", "k2")])
        with clean_environment(CODEX_PROXY_API_KEY="old-key"):
            self.assertEqual(codex_proxy.config_from_args([]).api_key, [("default", "old-key")])
        for old_key in ("abc=defghijkl", "long,secret", "=starts-with-equals"):  # the old variable: one key, whole
            with clean_environment(CODEX_PROXY_API_KEY=old_key):
                self.assertEqual(codex_proxy.config_from_args([]).api_key, [("default", old_key)])
        with clean_environment(CODEX_PROXY_API_KEYS="laptop=k1"):  # a flag replaces the variable
            self.assertEqual(codex_proxy.config_from_args(["--api-key", "x=k9"]).api_key, [("x", "k9")])

    def test_the_launchers_key_is_key_names_else_the_first(self):
        config = codex_proxy.Config(api_key=KEYS)
        self.assertEqual(config.key_for_clients(), "SECRET-laptop-1")
        self.assertEqual(codex_proxy.Config(api_key=KEYS, key_name="ci").key_for_clients(), "SECRET-ci-2")
        self.assertIsNone(codex_proxy.Config().key_for_clients())
        with self.assertRaises(ValueError) as caught:
            codex_proxy.Config(api_key=KEYS, key_name="phone").key_for_clients()
        self.assertIn("laptop, ci", str(caught.exception))
        self.assertNotIn("SECRET", str(caught.exception))


class LauncherKeyTests(unittest.TestCase):
    def test_a_key_name_that_names_no_key_stops_the_launcher(self):
        with clean_environment():
            status, _, err = run_script(self, ["--api-key", "laptop=SECRET-k", "--key-name", "phone", "codex"])
        self.assertEqual(status, 2)
        self.assertEqual(err, "codex_proxy.py codex: --key-name phone is none of the --api-key names (laptop)\n")


class NamedKeyRequestTests(ProxyTestCase):
    config_overrides = {"api_key": KEYS}

    def logged_chat(self, headers):
        with self.assertLogs("codex_proxy", "INFO") as logs:
            status, _, raw = self.request("POST", "/v1/chat/completions", CHAT, headers=headers)
            wait_for(lambda: request_lines(logs.records) or status != 200)
        return status, raw, logs

    def test_each_key_lets_in_and_its_name_is_logged_never_its_value(self):
        for (name, key), headers in zip(KEYS, ({"Authorization": "Bearer SECRET-laptop-1"},
                                               {"x-api-key": "SECRET-ci-2"})):
            status, raw, logs = self.logged_chat(headers)
            self.assertEqual(status, 200, raw)
            [record] = request_lines(logs.records)
            self.assertEqual(record.fields["key"], name)
            self.assertIn(" key %s " % name, record.getMessage())
            self.assertNotIn(key, "\n".join(logs.output))

    def test_a_wrong_key_gets_a_401_that_names_no_key(self):
        for headers in ({}, {"Authorization": "Bearer SECRET-laptop-"}, {"x-api-key": "laptop"}):
            status, raw, logs = self.logged_chat(headers)
            self.assertEqual(status, 401)
            for name, key in KEYS:
                self.assertNotIn(name, raw.decode())
                self.assertNotIn(key, raw.decode())
            self.assertNotIn("SECRET", "\n".join(logs.output))
        status, _, raw = self.request("POST", "/v1/messages", {"model": "claude", "max_tokens": 5, "messages": []})
        self.assertEqual((status, json.loads(raw)["type"]), (401, "error"))  # in the route's dialect

    def test_metrics_count_requests_and_tokens_by_key_name(self):
        for headers in ({"x-api-key": "SECRET-laptop-1"}, {"x-api-key": "SECRET-laptop-1"},
                        {"x-api-key": "SECRET-ci-2"}):
            self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT, headers=headers)[0], 200)
        raw = self.request("GET", "/metrics", headers={"x-api-key": "SECRET-ci-2"})[2].decode()
        samples, _ = parse_prometheus(raw)
        route = ("route", "/v1/chat/completions")
        self.assertEqual(samples[("codex_proxy_requests_total",
                                  frozenset({route, ("status", "200"), ("key", "laptop")}))], 2)
        self.assertEqual(samples[("codex_proxy_requests_total",
                                  frozenset({route, ("status", "200"), ("key", "ci")}))], 1)
        self.assertGreater(samples[("codex_proxy_tokens_total", frozenset({("kind", "input"), ("key", "ci")}))], 0)
        self.assertNotIn("SECRET", raw)

    def test_health_shows_no_key(self):
        raw = self.request("GET", "/health", headers={"x-api-key": "SECRET-ci-2"})[2].decode()
        self.assertIn('"auth"', raw)  # the key let it see the details
        self.assertNotIn("SECRET", raw)

    def test_each_socket_message_carries_the_upgrades_key_name(self):
        client = WebSocketClient(self, self.proxy.port, headers={"Authorization": "Bearer SECRET-ci-2"})
        self.assertEqual(client.answer_head()[0], 101)
        with self.assertLogs("codex_proxy", "INFO") as logs:
            for _ in range(2):
                client.send_json({"type": "response.create", "model": "gpt-5.5", "input": "hi"})
                self.assertEqual(client.read_response()[-1]["type"], "response.completed")
            wait_for(lambda: len(request_lines(logs.records)) >= 2)
        self.assertEqual([r.fields["key"] for r in request_lines(logs.records)], ["ci", "ci"])

    def test_a_key_a_reload_removes_no_longer_serves_an_open_socket(self):
        client = WebSocketClient(self, self.proxy.port, headers={"Authorization": "Bearer SECRET-ci-2"})
        self.assertEqual(client.answer_head()[0], 101)
        client.send_json({"type": "response.create", "model": "gpt-5.5", "input": "hi"})
        self.assertEqual(client.read_response()[-1]["type"], "response.completed")
        config = self.proxy.app.config  # what a reload does: the field gets a new value
        self.proxy.loop.call_soon_threadsafe(setattr, config, "api_key", [("laptop", "SECRET-laptop-1")])
        wait_for(lambda: config.api_key == [("laptop", "SECRET-laptop-1")])
        client.send_json({"type": "response.create", "model": "gpt-5.5", "input": "hi again"})
        self.assertEqual(client.closed_with(), 1008)
        self.assertEqual(len(self.fake.requests_to("/responses")), 1)


if __name__ == "__main__":
    unittest.main()
