"""The operator's view: the start banner, --auth, settings errors, the request
log line (text and JSON), /metrics, --dump-dir, GET / and HEAD, 404 hints."""

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import shlex
import time
import unittest
from unittest import mock

from support import DumpDirTestCase, ProxyTestCase, clock, codex_proxy, make_jwt, read_auth, wait_for, write_auth
from fake_upstream import fake_id_token, usage_limit_reply  # noqa: E402 (support puts tests/ on the path)

CHAT = {"model": "gpt-5.4", "messages": [{"role": "user", "content": "the PROMPT text"}]}
SECRETS = ("at-SECRET-token", "rt-SECRET-token", "sk-SECRET-key", "local-SECRET-key")


def parse_prometheus(text):
    """{(name, frozenset(labels)): value} and {family: type}; fails on a line that is not the format."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ")
            types[family] = kind
        elif line.startswith("# HELP ") or not line:
            continue
        else:
            match = re.match(r'^([a-z_:][a-z0-9_:]*)(?:\{(.*)\})? ([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?|\+Inf|NaN)$', line)
            assert match, "not a Prometheus sample: %r" % line
            labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples, types


class BannerTests(ProxyTestCase):
    def write_login(self):
        self.expires = int(time.time()) + 3600
        write_auth(self.home, access_token=make_jwt(exp=self.expires, secret="at-SECRET-token"),
                   refresh_token="rt-SECRET-token", id_token=fake_id_token(email="ada@example.com", plan="pro"))

    def setUp(self):
        super().setUp()
        self.fake.valid_access_tokens.add(read_auth(self.home)["tokens"]["access_token"])

    def banner(self, proxy=None, **config):
        proxy = proxy or self.proxy
        return "\n".join(codex_proxy.start_banner(proxy.server, proxy.config))

    def announced(self, proxy=None, timeout=10):
        """What announce_plan prints (the start lines the backend's answers make)."""
        proxy = proxy or self.proxy
        out = io.StringIO()
        with contextlib.redirect_stderr(out):
            asyncio.run_coroutine_threadsafe(codex_proxy.announce_plan(proxy.server), proxy.loop).result(timeout)
        return out.getvalue()

    def test_says_where_who_and_what_to_paste_and_no_secret(self):
        text = self.banner()
        url = "http://127.0.0.1:%d" % self.proxy.port
        self.assertIn("listening on %s" % url, text)
        login = next(line for line in text.splitlines() if "login:" in line)
        self.assertIn("ada@example.com", login)
        self.assertIn("pro", login)
        self.assertIn("access token expires", login)
        self.assertIn("ANTHROPIC_BASE_URL=%s ANTHROPIC_AUTH_TOKEN=unused claude" % url, text)
        self.assertIn("OPENAI_BASE_URL=%s/v1 OPENAI_API_KEY=unused" % url, text)
        # The Codex CLI line is a command to paste, from any folder: the launcher, on this proxy.
        codex = next(line for line in text.splitlines() if "Codex CLI:" in line).split("Codex CLI:")[1]
        self.assertEqual(shlex.split(codex), ["python3", os.path.abspath(codex_proxy.__file__),
                                              "--port", str(self.proxy.port), "codex"])
        for secret in SECRETS:
            self.assertNotIn(secret, text)
        self.assertNotIn("eyJ", text)  # no JWT at all

    def test_with_a_local_key_the_paste_lines_do_not_show_it(self):
        proxy = self.start_proxy(api_key="local-SECRET-key")
        text = self.banner(proxy)
        self.assertIn("ANTHROPIC_AUTH_TOKEN=<your --api-key>", text)
        # The Codex CLI line gives the key through its variable: in argv, ps would show it to anyone.
        self.assertIn("Codex CLI:    CODEX_PROXY_API_KEY=<your --api-key> python3 ", text)
        self.assertNotIn("--api-key <", text)
        self.assertNotIn("local-SECRET-key", text)

    def test_an_unused_openai_api_key_is_pointed_out(self):
        proxy = self.start_proxy(openai_api_key="sk-SECRET-key")
        text = self.banner(proxy)
        self.assertIn("OPENAI_API_KEY is set but not used", text)
        self.assertNotIn("sk-SECRET-key", text)

    def test_a_missing_login_says_how_to_make_one(self):
        os.remove(os.path.join(self.home, "auth.json"))
        text = self.banner(self.start_proxy(auth="chatgpt"))
        self.assertIn("NO LOGIN", text)
        self.assertIn("codex_proxy.py login", text)

    def test_the_plan_lines_name_models_and_usage_windows(self):
        text = self.announced()
        self.assertRegex(text, r"models: .*gpt-5\.4.*; claude-\* -> \S+, claude-\*haiku\* -> \S+")
        self.assertIn("usage:", text)
        self.assertRegex(text, r"\d+% used")
        for secret in SECRETS:
            self.assertNotIn(secret, text)
        # One models line in all: the start lines leave it to the catalog's.
        self.assertEqual(len(re.findall(r"models:", self.banner() + text)), 1)

    def test_the_plan_lines_say_when_the_backend_cannot_be_asked(self):
        self.fake.stop()
        text = self.announced(timeout=30)
        self.assertIn("models: not listed (cannot reach upstream", text)
        self.assertIn("usage:  not known (cannot reach upstream", text)

    def test_models_and_usage_are_asked_each_on_its_own(self):
        self.fake.usage_reply = {"status": 404, "body": {"detail": "Not Found"}}
        text = self.announced()
        self.assertRegex(text, r"models: .*gpt-5\.4")
        self.assertIn("usage:  not known (HTTP 404: Not Found)", text)
        self.fake.usage_reply, self.fake.models_reply = None, {"status": 500, "body": {"detail": "catalog down"}}
        text = self.announced(self.start_proxy())
        self.assertIn("models: not listed (HTTP 500: catalog down", text)
        self.assertRegex(text, r"usage:  .*\d+% used")

    def test_a_login_that_stopped_working_is_said_once_with_its_fix(self):
        self.fake.valid_access_tokens, self.fake.refresh_tokens = set(), {}  # refused, and so is its refresh
        write_auth(self.home, access_token=make_jwt(exp=int(clock()) - 600), refresh_token="rt-SECRET-token",
                   id_token=fake_id_token(email="ada@example.com", plan="pro"))
        proxy = self.start_proxy()
        with self.assertLogs("codex_proxy", "WARNING") as logs:
            text = self.banner(proxy) + "\n" + self.announced(proxy)
        login = next(line for line in text.splitlines() if "login:" in line)
        self.assertIn("access token expired", login)
        self.assertNotIn("renewed automatically", text)
        said = [line for line in logs.output + text.splitlines() if "no longer valid" in line]
        self.assertEqual(len(said), 1, logs.output + [text])
        self.assertIn("stopped working", said[0])
        self.assertIn("codex_proxy.py login", said[0])
        self.assertIn("models: not listed (no working login: see the warning above)", text)
        self.assertNotIn("usage:", text)
        for secret in SECRETS:
            self.assertNotIn(secret, text + "\n".join(logs.output))

    @unittest.skipUnless(os.name == "posix", "file modes")
    def test_an_auth_json_others_can_read_is_warned_about_with_the_fix(self):
        path = os.path.join(self.home, "auth.json")
        os.chmod(path, 0o600)
        self.assertNotIn("warning:", self.banner())
        os.chmod(path, 0o644)
        self.assertIn("warning: %s has mode 0644: other users of this machine can get at it -> chmod 600 %s"
                      % (path, path), self.banner())

    def test_api_key_mode_says_where_the_key_is_and_never_a_plan(self):
        for settings, said in (({}, "NO API KEY: No OpenAI API key found"),
                               ({"openai_api_key": "sk-SECRET-key"}, "API key from OPENAI_API_KEY -> ")):
            text = self.banner(self.start_proxy(auth="apikey", **settings))
            login = next(line for line in text.splitlines() if "login:" in line)
            self.assertIn(said, login)
            self.assertNotIn("plan", text)
            self.assertNotIn("sk-SECRET-key", text)
            self.assertEqual(len(re.findall(r"models:", text)), 1)


class AuthChoiceTests(ProxyTestCase):
    """--auth auto|chatgpt|apikey, and which of auth.json and OPENAI_API_KEY wins."""

    def setUp(self):
        super().setUp()
        self.fake.api_keys.add("sk-env-key")

    def went_to(self, proxy):
        status, _, payload = self.json_request("POST", "/v1/chat/completions", CHAT, proxy=proxy)
        chatgpt = len(self.fake.requests_to("/backend-api/codex/responses"))
        api = len(self.fake.requests_to("/v1/responses")) + len(self.fake.requests_to("/v1/chat/completions"))
        del self.fake.requests[:]
        return status, payload, "chatgpt" if chatgpt and not api else "apikey" if api and not chatgpt else None

    def test_auto_prefers_the_login_over_the_environment_key(self):
        status, payload, where = self.went_to(self.start_proxy(openai_api_key="sk-env-key"))
        self.assertEqual((status, where), (200, "chatgpt"), payload)

    def test_auto_uses_the_environment_key_without_a_login(self):
        os.remove(os.path.join(self.home, "auth.json"))
        status, payload, where = self.went_to(self.start_proxy(openai_api_key="sk-env-key"))
        self.assertEqual((status, where), (200, "apikey"), payload)

    def test_apikey_uses_the_key_despite_a_login(self):
        status, payload, where = self.went_to(self.start_proxy(openai_api_key="sk-env-key", auth="apikey"))
        self.assertEqual((status, where), (200, "apikey"), payload)

    def test_chatgpt_without_a_login_says_how_to_log_in(self):
        os.remove(os.path.join(self.home, "auth.json"))
        status, payload, where = self.went_to(self.start_proxy(openai_api_key="sk-env-key", auth="chatgpt"))
        self.assertEqual((status, where), (401, None), payload)
        self.assertIn("codex_proxy.py login", payload["error"]["message"])

    def test_apikey_without_a_key_says_where_to_put_one(self):
        status, payload, where = self.went_to(self.start_proxy(auth="apikey"))
        self.assertEqual((status, where), (401, None), payload)
        self.assertIn("OPENAI_API_KEY", payload["error"]["message"])


class SettingsErrorTests(unittest.TestCase):
    """A bad value, as a flag or as its variable, stops the start with exit 2 naming it."""

    def refused(self, argv, env=None):
        err = io.StringIO()
        with mock.patch.dict(os.environ, env or {}), contextlib.redirect_stderr(err), \
                self.assertRaises(SystemExit) as stop:
            codex_proxy.config_from_args(argv)
        self.assertEqual(stop.exception.code, 2)
        self.assertNotIn("Traceback", err.getvalue())
        refusal, see_help = err.getvalue().splitlines()  # one line, and where to read more
        self.assertEqual(see_help, "See `python3 codex_proxy.py --help`.")
        return refusal

    def test_flags(self):
        for argv, words in ((["--auth", "nope"], ("--auth", "nope", "auto, chatgpt, apikey")),
                            (["--log-format", "xml"], ("--log-format", "xml", "text, json")),
                            (["--log-level", "loud"], ("--log-level", "loud")),
                            (["--max-streams", "0"], ("--max-streams", "1 or more")),
                            (["--port", "70000"], ("--port", "70000")),
                            (["--chatgpt-base-url", "ftp://x"], ("--chatgpt-base-url", "ftp://x")),
                            (["--keepalive-interval", "-1"], ("--keepalive-interval", "-1"))):
            line = self.refused(argv)
            for word in words:
                self.assertIn(word, line, argv)

    def test_variables(self):
        for env, words in (({"CODEX_PROXY_AUTH": "nope"}, ("CODEX_PROXY_AUTH", "--auth", "nope")),
                           ({"CODEX_PROXY_LOG_FORMAT": "xml"}, ("CODEX_PROXY_LOG_FORMAT", "xml")),
                           ({"CODEX_PROXY_MAX_STREAMS": "0"}, ("CODEX_PROXY_MAX_STREAMS", "1 or more")),
                           ({"CODEX_PROXY_UPSTREAM_THREADS": "x"}, ("CODEX_PROXY_UPSTREAM_THREADS", "'x'")),
                           ({"CODEX_PROXY_QUIET": "maybe"}, ("CODEX_PROXY_QUIET", "maybe"))):
            line = self.refused([], env)
            for word in words:
                self.assertIn(word, line, env)

    def test_every_bad_value_of_the_issue_as_flag_and_as_variable(self):
        for flag, value in (("--port", "-1"), ("--port", "70000"), ("--log-level", "verbose"),
                            ("--reasoning-effort", "turbo"), ("--verbosity", "loud"), ("--fast", "maybe"),
                            ("--upstream-idle-timeout", "-5"), ("--max-body-mb", "-1"),
                            ("--chatgpt-base-url", "notaurl"), ("--openai-base-url", "http://"),
                            ("--proxy", "socks9://x:y"), ("--allow-origin", "evil"), ("--quiet", "2"),
                            ("--store-max-responses", "-1"), ("--shutdown-grace", "soon")):
            variable = "CODEX_PROXY_" + flag[2:].replace("-", "_").upper()
            if flag not in ("--fast", "--quiet"):  # switches take no value as flags
                self.assertIn(flag, self.refused([flag, value]))
            line = self.refused([], {variable: value})
            self.assertIn(variable, line)
            self.assertIn(flag, line)

    def test_good_values_are_taken(self):
        env = {"CODEX_PROXY_LOG_FORMAT": "json", "CODEX_PROXY_QUIET": "yes", "CODEX_PROXY_AUTH": "apikey"}
        with mock.patch.dict(os.environ, env):
            config = codex_proxy.config_from_args(["--dump-dir", "/tmp/x", "--max-streams", "7"])
        self.assertEqual((config.log_format, config.quiet, config.auth, config.dump_dir, config.max_streams),
                         ("json", True, "apikey", "/tmp/x", 7))
        with mock.patch.dict(os.environ, {"CODEX_PROXY_AUTH": "apikey"}):  # a flag beats its variable
            self.assertEqual(codex_proxy.config_from_args(["--auth", "chatgpt"]).auth, "chatgpt")


class RequestLogTests(ProxyTestCase):
    config_overrides = {"max_body_bytes": 4096, "model_map": [("gpt-4*", "gpt-5.5")]}

    def logged(self, call, lines=1):
        """(what `call` returned, the log records meanwhile), once `lines` request lines are in."""
        with self.assertLogs("codex_proxy", "INFO") as logs:
            result = call()
            # The line is written once the answer is out: wait for it.
            wait_for(lambda: len(request_lines(logs.records)) >= lines)
        return result, logs.records

    def chats(self, count, stream=False):
        """`count` chat requests, one after the other: [(status, headers, raw body)]."""
        return [self.request("POST", "/v1/chat/completions", dict(CHAT, stream=stream)) for _ in range(count)]

    def test_one_line_per_request_with_its_id_models_tokens_and_times(self):
        (status, headers, _), records = self.logged(lambda: self.json_request(
            "POST", "/v1/chat/completions", dict(CHAT, model="gpt-4o")))
        self.assertEqual(status, 200)
        [record] = request_lines(records)
        fields = record.fields
        self.assertRegex(headers["x-request-id"], r"^req_\w+$")
        self.assertEqual(fields["id"], headers["x-request-id"])
        self.assertEqual((fields["method"], fields["path"], fields["status"], fields["dialect"]),
                         ("POST", "/v1/chat/completions", 200, "openai-chat"))
        self.assertEqual(fields["model"], "gpt-4o")
        self.assertEqual(fields["upstream_model"], "gpt-5.5")  # --model-map
        self.assertEqual(self.fake.requests_to("/backend-api/codex/responses")[0].json["model"], "gpt-5.5")
        self.assertGreater(fields["input_tokens"], 0)
        self.assertGreater(fields["output_tokens"], 0)
        self.assertIn("cached_tokens", fields)
        self.assertGreaterEqual(fields["total_ms"], fields["ttfb_ms"])
        line = record.getMessage()
        self.assertTrue(line.startswith("%s POST /v1/chat/completions -> 200 openai-chat gpt-4o->" % fields["id"]),
                        line)
        self.assertRegex(line, r" tokens \d+\(\d+ cached\)/\d+/\d+ ttfb \d+ms total \d+ms upstream fake-req-\w+$")
        # The upstream's own id: in the line and to the client, which has the proxy's as x-request-id.
        self.assertEqual(fields["upstream_request_id"], self.fake.answer_ids[-1])
        self.assertEqual(headers["x-upstream-request-id"], self.fake.answer_ids[-1])
        self.assertEqual(fields["outcome"], "ok")
        # --log-format json: the same fields, one JSON object per line.
        formatted = json.loads(codex_proxy.JsonLogFormatter().format(record))
        self.assertEqual(formatted["level"], "info")
        self.assertEqual({k: formatted[k] for k in fields}, fields)
        self.assertNotIn("message", formatted)
        self.assertNotIn("PROMPT", json.dumps(formatted) + line)  # no prompt text

    def test_a_stream_says_stream(self):
        (status, headers, _), records = self.logged(lambda: self.request(
            "POST", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True,
                                     "messages": [{"role": "user", "content": "hi"}]}))
        self.assertEqual(status, 200)
        [record] = request_lines(records)
        self.assertTrue(record.fields["stream"])
        self.assertIn(" anthropic-messages claude-sonnet-4-5->", record.getMessage())
        self.assertIn(" stream ", record.getMessage())
        self.assertEqual((headers["x-request-id"], headers["x-upstream-request-id"]),
                         (record.fields["id"], record.fields["upstream_request_id"]))

    def test_a_relayed_stream_that_failed_says_why(self):
        """API-key mode passes the API's stream through: its response.failed is the line's reason too."""
        proxy = self.start_proxy(openai_api_key="sk-test-key", auth="apikey")
        self.fake.script.append({"text": "partial", "fail": {"code": "server_error", "message": "The model broke."}})
        body = {"model": "gpt-4.1", "input": "hi", "stream": True}
        ((status, _, raw), records) = self.logged(lambda: self.request("POST", "/v1/responses", body, proxy=proxy))
        self.assertEqual(status, 200)
        self.assertIn(b"response.failed", raw)
        [line] = request_lines(records)
        self.assertTrue(line.getMessage().endswith(" failed: server_error: The model broke."), line.getMessage())

    def test_a_stream_that_failed_or_was_cut_says_why_and_its_warnings_name_it(self):
        for reply, reason in (({"text": "partial", "fail": {"code": "server_error", "message": "The model broke."}},
                               "server_error: The model broke."),
                              ({"text": "partial", "cut": True}, codex_proxy.STREAM_CUT)):
            self.fake.script.append(reply)
            ([(status, headers, _)], records) = self.logged(lambda: self.chats(1, stream=True))
            [line] = request_lines(records)
            self.assertEqual(status, 200)
            self.assertIn(" -> 200 openai-chat gpt-5.4 stream ", line.getMessage())
            self.assertTrue(line.getMessage().endswith(" failed: " + reason), line.getMessage())
            formatted = json.loads(codex_proxy.JsonLogFormatter().format(line))
            self.assertEqual((formatted["outcome"], formatted["reason"]), ("failed", reason))
            for warning in [r for r in records if r.levelno >= logging.WARNING]:
                self.assertTrue(warning.getMessage().startswith(headers["x-request-id"] + ": "), warning.getMessage())
                formatted = json.loads(codex_proxy.JsonLogFormatter().format(warning))
                self.assertEqual(formatted["request_id"], headers["x-request-id"])
        self.assertIn("upstream stream broke off", warning.getMessage())  # the cut one's

    def test_with_auth_apikey_the_login_file_is_not_watched(self):
        proxy = self.start_proxy(auth="apikey", openai_api_key="sk-test-key")  # a key the fake API takes
        with self.assertLogs("codex_proxy", "INFO") as logs:
            self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT, proxy=proxy)[0], 200)
            os.remove(os.path.join(self.home, "auth.json"))  # the ChatGPT login, not used here
            self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT, proxy=proxy)[0], 200)
            wait_for(lambda: len(request_lines(logs.records)) >= 2)
        self.assertEqual([r.levelname for r in logs.records], ["INFO", "INFO"], logs.output)

    def test_error_lines_say_why_never_with_a_token_and_the_client_gets_both_ids(self):
        self.fake.script.extend([usage_limit_reply(), {"status": 500, "body": {"detail": "The backend fell over."}},
                                 {"status": 400, "body": {"detail": "Refused Bearer at-SECRET-token for now"}}])
        answers, records = self.logged(lambda: self.chats(3), lines=3)
        reasons = ("The usage limit has been reached (usage_limit_reached) The limit resets ",
                   "The backend fell over.", "Refused [redacted] for now")
        for (status, headers, _), line, reason, upstream_id in zip(answers, request_lines(records), reasons,
                                                                   self.fake.answer_ids[-3:]):
            self.assertEqual((status, line.fields["status"], line.fields["outcome"]), (line.fields["status"], status,
                                                                                         "failed"))
            self.assertIn(" failed: " + reason, line.getMessage())
            self.assertEqual((headers["x-request-id"], headers["x-upstream-request-id"]),
                             (line.fields["id"], upstream_id))
            self.assertIn(" upstream %s " % upstream_id, line.getMessage())
        self.assertEqual([answer[0] for answer in answers], [429, 500, 400])
        self.assertNotIn("SECRET", "\n".join(r.getMessage() for r in records))

    def test_a_dead_login_names_the_model_and_is_warned_about_once_with_the_fix(self):
        self.fake.valid_access_tokens, self.fake.refresh_tokens = set(), {}  # refused, and so is its refresh
        answers, records = self.logged(lambda: self.chats(2), lines=2)
        for (status, _, _), line in zip(answers, request_lines(records)):
            self.assertEqual(status, 401)
            self.assertIn(" -> 401 openai-chat gpt-5.4 ttfb ", line.getMessage())
            self.assertIn(" failed: codex_login_required: The Codex login in %s is no longer valid"
                          % os.path.join(self.home, "auth.json"),
                          line.getMessage())
        [warning] = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
        self.assertTrue(warning.startswith(answers[0][1]["x-request-id"] + ": the ChatGPT login stopped working: "),
                        warning)
        self.assertIn("run `python3 codex_proxy.py login", warning)

    def test_a_login_that_goes_and_comes_back_is_logged_once_each_time(self):
        self.assertEqual(self.chats(1)[0][0], 200)
        os.remove(os.path.join(self.home, "auth.json"))
        answers, records = self.logged(lambda: self.chats(2) + (write_auth(self.home) and self.chats(1)), lines=3)
        self.assertEqual([answer[0] for answer in answers], [401, 401, 200])
        said = [r.getMessage() for r in records if not getattr(r, "fields", None)]
        self.assertEqual(len(said), 2, said)
        self.assertIn("the login in %s is gone (the file was removed): run `python3 codex_proxy.py login"
                      % os.path.join(self.home, "auth.json"), said[0])
        self.assertIn("%s now holds a ChatGPT login" % os.path.join(self.home, "auth.json"), said[1])

    def test_errors_are_logged_too(self):
        (status, headers, _), records = self.logged(lambda: self.request("GET", "/nowhere"))
        self.assertEqual(status, 404)
        [record] = request_lines(records)
        self.assertEqual((record.fields["status"], record.fields["id"]), (404, headers["x-request-id"]))

    def test_refused_requests_are_logged_and_counted(self):
        big = json.dumps(dict(CHAT, messages=[{"role": "user", "content": "x" * 8000}])).encode()
        with self.assertLogs("codex_proxy", "WARNING") as logs:
            status, headers, _ = self.request("POST", "/v1/chat/completions", big)
            self.assertEqual(status, 413)
            answer = self.raw_exchange(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"y" * 70000
                                       + b"\r\n\r\n")
            self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:60])
        text = "\n".join(logs.output)
        self.assertIn("%s: refused a request (413)" % headers["x-request-id"], text)
        request_id = re.search(rb"\r\nx-request-id: (req_\w+)\r\n", answer).group(1).decode()
        self.assertIn("%s: refused a request (431)" % request_id, text)
        samples, _ = parse_prometheus(self.request("GET", "/metrics")[2].decode())
        for status in ("413", "431"):
            self.assertEqual(samples[("codex_proxy_requests_total",
                                      frozenset({("route", "-"), ("status", status)}))], 1)

    def test_what_a_thread_logs_for_a_request_names_it(self):
        # A large request is parsed and translated in a thread (off_loop): what that logs names it too.
        part = {"type": "input_text", "text": "x" * 70000, "cache_control": {"type": "ephemeral"}}
        proxy = self.start_proxy(max_body_bytes=1 << 20)
        with self.assertLogs("codex_proxy", "DEBUG") as logs:
            status, headers, _ = self.request("POST", "/v1/responses", {
                "model": "gpt-5.4", "input": [{"role": "user", "content": [part]}]}, proxy=proxy)
        self.assertEqual(status, 200)
        [dropped] = [r.getMessage() for r in logs.records if "cache_control" in r.getMessage()]
        self.assertTrue(dropped.startswith(headers["x-request-id"] + ": dropped input"), dropped)

    def test_debug_says_how_a_request_was_mapped(self):
        with self.assertLogs("codex_proxy", "DEBUG") as logs:
            self.assertEqual(self.request("POST", "/v1/chat/completions", dict(CHAT, model="gpt-4o"))[0], 200)
        self.assertTrue(any("model 'gpt-4o' ->" in line for line in logs.output), logs.output)
        for line in logs.output:
            self.assertNotIn("access-1", line)


def request_lines(records):
    """The request lines among log records (each carries its fields)."""
    return [record for record in records if getattr(record, "fields", None)]


class LoggingSetupTests(unittest.TestCase):
    def test_logging_is_set_up_as_the_flags_say(self):
        root = logging.getLogger()
        before = list(root.handlers), root.level
        self.addCleanup(lambda: (setattr(root, "handlers", before[0]), root.setLevel(before[1])))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            codex_proxy.set_up_logging(codex_proxy.Config(log_format="json", log_level="warning"))
            logging.getLogger("codex_proxy").warning("careful")
            logging.getLogger("codex_proxy").info("not shown")
        [line] = err.getvalue().splitlines()
        self.assertEqual((json.loads(line)["level"], json.loads(line)["message"]), ("warning", "careful"))


class MetricsTests(ProxyTestCase):
    def metrics(self, **kwargs):
        status, headers, raw = self.request("GET", "/metrics", **kwargs)
        self.assertEqual(status, 200, raw)
        self.assertTrue(headers["content-type"].startswith("text/plain"), headers)
        return parse_prometheus(raw.decode())

    def test_counters_move_with_requests(self):
        before, types = self.metrics()
        self.assertEqual(types["codex_proxy_requests_total"], "counter")
        self.assertEqual(types["codex_proxy_time_to_first_byte_seconds"], "histogram")
        self.assertEqual(types["codex_proxy_upstream_streams"], "gauge")
        for _ in range(2):
            self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT)[0], 200)
        self.assertEqual(self.request("POST", "/v1/chat/completions", {"model": 5})[0], 400)
        after, _ = self.metrics()

        def grew(name, **labels):
            key = (name, frozenset(labels.items()))
            return after.get(key, 0) - before.get(key, 0)
        route = "/v1/chat/completions"
        self.assertEqual(grew("codex_proxy_requests_total", route=route, status="200"), 2)
        self.assertEqual(grew("codex_proxy_requests_total", route=route, status="400"), 1)
        self.assertGreater(grew("codex_proxy_tokens_total", kind="input"), 0)
        self.assertGreater(grew("codex_proxy_tokens_total", kind="output"), 0)
        self.assertGreaterEqual(grew("codex_proxy_time_to_first_byte_seconds_count"), 3)
        self.assertEqual(after[("codex_proxy_time_to_first_byte_seconds_bucket", frozenset({("le", "+Inf")}))],
                         after[("codex_proxy_time_to_first_byte_seconds_count", frozenset())])
        buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in after.items()
                         if name == "codex_proxy_time_to_first_byte_seconds_bucket")
        self.assertEqual([v for _, v in buckets], sorted(v for _, v in buckets))  # cumulative
        self.assertEqual(after[("codex_proxy_upstream_streams", frozenset())], 0)
        self.assertEqual(after[("codex_proxy_requests_in_flight", frozenset())], 1)  # this one

    def test_upstream_errors_and_token_refreshes_are_counted(self):
        self.fake.valid_access_tokens = {"access-2"}  # access-1 is refused: one refresh
        self.fake.script.append({"status": 500, "body": {"detail": "boom"}})
        self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT)[0], 500)
        samples, _ = self.metrics()
        self.assertEqual(samples[("codex_proxy_upstream_errors_total", frozenset({("kind", "http_500")}))], 1)
        self.assertEqual(samples[("codex_proxy_token_refreshes_total", frozenset())], 1)

    def test_plan_usage_after_the_backend_reported_it(self):
        self.assertEqual(self.request("POST", "/v1/chat/completions", CHAT)[0], 200)
        samples, _ = self.metrics()
        windows = {dict(labels)["window"] for (name, labels) in samples if name == "codex_proxy_plan_usage_percent"}
        self.assertTrue(windows, samples)

    def test_needs_the_local_key_where_one_is_set(self):
        proxy = self.start_proxy(api_key="local-SECRET-key")
        self.assertEqual(self.request("GET", "/metrics", proxy=proxy)[0], 401)
        self.metrics(proxy=proxy, headers={"Authorization": "Bearer local-SECRET-key"})


class DumpDirTests(DumpDirTestCase):
    def test_each_exchange_in_a_file_with_secrets_redacted(self):
        headers = {"Authorization": "Bearer local-SECRET-key", "x-api-key": "sk-SECRET-key",
                   "Cookie": "session=sk-SECRET-key"}
        body = dict(CHAT, stream=True, metadata={"api_key": "sk-SECRET-key"})
        status, hdrs, raw = self.request("POST", "/v1/chat/completions?api_key=sk-SECRET-key&beta=true", body,
                                         headers=headers)
        self.assertEqual(status, 200, raw)
        for path in ("/health", "/metrics", "/"):  # the proxy's own pages leave no file
            self.assertEqual(self.request("GET", path)[0], 200)
        self.assertTrue(wait_for(lambda: len(self.dumps()) >= 1))
        time.sleep(0.2)
        [(name, text)] = self.dumps()
        self.assertIn(hdrs["x-request-id"], name)
        for secret in SECRETS + ("access-1",):
            self.assertNotIn(secret, text)
        data = json.loads(text)
        self.assertEqual((data["id"], data["status"]), (hdrs["x-request-id"], 200))
        self.assertEqual(data["request"]["path"], "/v1/chat/completions")
        self.assertEqual(data["request"]["query"], {"api_key": "[redacted]", "beta": "true"})
        self.assertEqual(data["request"]["headers"]["Authorization"], "[redacted]")
        self.assertEqual(data["request"]["headers"]["x-api-key"], "[redacted]")
        self.assertEqual(data["request"]["body"]["messages"], CHAT["messages"])
        self.assertEqual(data["request"]["body"]["metadata"], {"api_key": "[redacted]"})
        self.assertEqual(data["upstream_request"]["input"][0]["content"][0]["text"], "the PROMPT text")
        self.assertIn("response.completed", [e.get("type") for e in data["upstream_events"]])
        self.assertEqual(data["answer"], raw.decode())

    def test_a_dump_dir_that_cannot_be_written_is_a_warning_not_a_failure(self):
        blocker = os.path.join(self.dump_dir, "file")
        open(blocker, "w").close()
        proxy = self.start_proxy(dump_dir=os.path.join(blocker, "sub"))
        with self.assertLogs("codex_proxy", "WARNING") as logs:
            status, headers, _ = self.request("POST", "/v1/chat/completions", CHAT, proxy=proxy)
            self.assertEqual(status, 200)
            wait_for(lambda: any("--dump-dir" in line for line in logs.output))
        self.assertIn("%s: cannot write the exchange to --dump-dir" % headers["x-request-id"], "\n".join(logs.output))


class PagesTests(ProxyTestCase):
    def test_the_index_says_what_this_is_and_how_to_use_it(self):
        status, headers, raw = self.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain"))
        text = raw.decode()
        url = "http://127.0.0.1:%d" % self.proxy.port
        self.assertIn("codex-proxy %s" % codex_proxy.__version__, text)
        self.assertIn("ANTHROPIC_BASE_URL=%s " % url, text)
        self.assertIn("OPENAI_BASE_URL=%s/v1 " % url, text)
        for path in ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/health", "/metrics"):
            self.assertIn(url + path, text)

    def test_head_has_the_get_head_and_no_body(self):
        get_status, get_headers, get_body = self.request("GET", "/")  # the same bytes every time (not /health's uptime)
        # Keep-alive: a HEAD answer with a body would spill into the next answer.
        data = self.raw_exchange(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % self.proxy.port
                                 + b"GET /v1/nothing HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head, rest = data.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b"Content-Length: %d" % len(get_body), head)
        self.assertTrue(rest.startswith(b"HTTP/1.1 404 "), rest[:40])
        self.assertEqual(get_status, 200)

    def test_head_on_a_post_route_is_405(self):
        status, headers, _ = self.request("HEAD", "/v1/chat/completions")
        self.assertEqual(status, 405)
        self.assertIn("POST", headers.get("allow", ""))

    def test_405_and_options_give_the_same_allow(self):
        status, headers, _ = self.request("POST", "/health")
        self.assertEqual((status, headers.get("allow")), (405, "GET, HEAD, OPTIONS"))
        status, headers, _ = self.request("OPTIONS", "/health")
        self.assertEqual((status, headers.get("allow")), (204, "GET, HEAD, OPTIONS"))
        status, headers, _ = self.request("GET", "/v1/messages")
        self.assertEqual((status, headers.get("allow")), (405, "OPTIONS, POST"))

    def test_a_doubled_v1_is_served_and_the_client_told_once_which_base_url_to_use(self):
        # A base URL that ends in /v1 (the commonest setup mistake for Anthropic clients), to which
        # the client adds /v1 again: served as if it had not, with one warning per client.
        messages = {"model": "claude-opus-5-5", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
        anthropic = {"anthropic-version": "2023-06-01", "x-api-key": "unused", "User-Agent": "claude-cli/2.1.328"}
        with self.assertLogs("codex_proxy", "WARNING") as logs:
            for _ in range(3):
                self.assertEqual(self.json_answer("POST", "/v1/v1/messages", messages, anthropic)["type"], "message")
            self.json_answer("POST", "/v1/v1/chat/completions", CHAT, {"User-Agent": "OpenAI/Python 2.8.0"})
        told = [line for line in logs.output if "adds /v1 again" in line]
        self.assertEqual(len(told), 2, logs.output)
        self.assertIn("claude-cli/2.1.328", told[0])
        self.assertIn("ANTHROPIC_BASE_URL=http://127.0.0.1:%d, with no /v1" % self.proxy.port, told[0])
        self.assertIn("http://127.0.0.1:%d/v1, with /v1 once" % self.proxy.port, told[1])
        self.assertEqual(len(self.fake.requests_to("/responses")), 4)
        status, _, payload = self.json_request("GET", "/v2/models")
        self.assertIn("GET / lists them", payload["error"]["message"])

    def test_health_says_which_login_without_secrets(self):
        payload = self.json_answer("GET", "/health", status=200)
        self.assertEqual(payload["status"], "ok")
        self.assertEqual(payload["auth"]["mode"], "chatgpt")
        self.assertIn("streams", payload)
        self.assertNotIn("access-1", json.dumps(payload))
        proxy = self.start_proxy(api_key="local-SECRET-key")
        status, _, payload = self.json_request("GET", "/health", proxy=proxy)
        self.assertEqual(status, 200)  # open to all, but says less to those without the key
        self.assertNotIn("auth", payload)
        self.assertNotIn("usage", payload)


if __name__ == "__main__":
    unittest.main()
