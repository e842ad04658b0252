"""Credentials: auth.json reading, token refresh (proactive, on 401, single-flight,
shared with the Codex CLI), account headers, API-key mode, and secrets in logs.

Run: python3 -m unittest tests.test_credentials -v
"""

import base64
import http.client
import json
import os
import shutil
import stat
import tempfile
import threading
import time
import unittest
import unittest.mock

from support import (ProxyTestCase, clock, codex_proxy, iso_ago, make_jwt, output_text, read_auth, sse_events,
                     streamed_text, write_auth)

AUTH_CLAIM = "https://api.openai.com/auth"
RESPONSES_BODY = {"model": "gpt-5.5", "input": "Say hi."}
FAKE_TEXT = "Hello from the fake backend."


def replace_auth(folder, **kw):
    """Write a new auth.json with support.write_auth, swapped in atomically (new inode),
    as another process would; the proxy must notice the change."""
    staging = tempfile.mkdtemp(prefix="auth-staging-")
    try:
        write_auth(staging, **kw)
        os.replace(os.path.join(staging, "auth.json"), os.path.join(folder, "auth.json"))
    finally:
        shutil.rmtree(staging, True)


def leftover_temp_files(folder):
    return [name for name in os.listdir(folder) if name.endswith(".tmp") or name.startswith(".auth.json.")]


def bearer(rec):
    return rec.headers.get("authorization")


# ---------------------------------------------------------------------------
# Pure helpers: JWT claims, atomic writes, the cross-process lock

class HelpersTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="codex-cred-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_jwt_claims(self):
        self.assertEqual(codex_proxy.jwt_claims(make_jwt(exp=1234, sub="u")), {"exp": 1234, "sub": "u"})
        claims = codex_proxy.jwt_claims(make_jwt(**{AUTH_CLAIM: {"chatgpt_account_id": "acct-9"}}))
        self.assertEqual(claims[AUTH_CLAIM]["chatgpt_account_id"], "acct-9")
        not_an_object = "h.%s.s" % base64.urlsafe_b64encode(b"[1, 2]").rstrip(b"=").decode()
        for junk in ("access-1", "", "a.!!!.c", "a.bm90IGpzb24.c", not_an_object, "x.e30.y"):
            with self.subTest(token=junk):
                self.assertEqual(codex_proxy.jwt_claims(junk), {})

    def test_atomic_write_json(self):
        path = os.path.join(self.dir, "auth.json")
        with open(path, "w") as handle:
            handle.write('{"old": true}')
        os.chmod(path, 0o644)
        codex_proxy.atomic_write_json(path, {"new": [1, 2], "text": "\u00e9"})
        with open(path, encoding="utf-8") as handle:
            self.assertEqual(json.load(handle), {"new": [1, 2], "text": "\u00e9"})
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(leftover_temp_files(self.dir), [])
        # A failure while writing leaves the old file byte for byte, and no temp file.
        with open(path, "rb") as handle:
            before = handle.read()
        with self.assertRaises(TypeError):
            codex_proxy.atomic_write_json(path, {"bad": object()})
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), before)
        self.assertEqual(leftover_temp_files(self.dir), [])

    @unittest.skipIf(codex_proxy.fcntl is None, "flock is POSIX only")
    def test_file_lock_excludes_a_second_holder(self):
        path = os.path.join(self.dir, "auth.json.lock")
        order = []
        second_has_it = threading.Event()

        def second():
            with codex_proxy.FileLock(path):  # its own open file: as another process would
                order.append("second")
                second_has_it.set()

        with codex_proxy.FileLock(path):
            thread = threading.Thread(target=second)
            thread.start()
            self.assertFalse(second_has_it.wait(0.3), "a second FileLock got in while the first was held")
            order.append("first released")
        thread.join(5)
        self.assertEqual(order, ["first released", "second"])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode) & 0o077, 0)


# ---------------------------------------------------------------------------
# AuthStore on its own, with a stubbed token endpoint

class AuthStoreTest(unittest.TestCase):
    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="codex-home-unit-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.path = os.path.join(self.home, "auth.json")
        self.calls = []
        self.answer = None  # what the stub token endpoint does: callable(body) -> (status, payload)

    def post_json(self, url, body, timeout=None):
        self.calls.append((url, body))
        return self.answer(body)

    def store(self):
        config = codex_proxy.Config(codex_home=self.home, openai_api_key=None,
                                    refresh_token_url="http://127.0.0.1:9/oauth/token")
        return codex_proxy.AuthStore(config, self.post_json)

    def file_bytes(self):
        with open(self.path, "rb") as handle:
            return handle.read()

    def test_refresh_request_and_rewrite(self):
        write_auth(self.home, access_token=make_jwt(exp=int(time.time()) - 60), refresh_token="refresh-1",
                   last_refresh=iso_ago(3600), extra_key=1)
        self.answer = lambda body: (200, {"access_token": "access-2", "refresh_token": "refresh-2",
                                          "id_token": "id-2"})
        token, account = self.store().chatgpt_credentials()
        self.assertEqual((token, account), ("access-2", "acct-123"))
        self.assertEqual(self.calls, [("http://127.0.0.1:9/oauth/token", {
            "client_id": "app_EMoamEEZ73f0CkXaXp7hrann", "grant_type": "refresh_token",
            "refresh_token": "refresh-1"})])
        data = read_auth(self.home)
        self.assertEqual(data["tokens"], {"id_token": "id-2", "access_token": "access-2",
                                          "refresh_token": "refresh-2", "account_id": "acct-123"})
        self.assertEqual((data["extra_key"], data["OPENAI_API_KEY"]), (1, None))

    def test_token_expiring_while_the_file_stays_the_same_is_refreshed(self):
        # The due time is worked out once per version of the file; the clock is read on every call.
        write_auth(self.home, access_token=make_jwt(exp=int(time.time()) + 3600), refresh_token="refresh-1")
        self.answer = lambda body: (200, {"access_token": "access-2", "refresh_token": "refresh-2"})
        store = self.store()
        first, _ = store.chatgpt_credentials()
        self.assertEqual(self.calls, [])
        an_hour_on = clock() + 3600
        with unittest.mock.patch.object(codex_proxy, "wall_clock", lambda: an_hour_on):
            token, _ = store.chatgpt_credentials()
        self.assertEqual(token, "access-2")
        self.assertEqual(len(self.calls), 1)
        self.assertNotEqual(first, token)

    def test_refresh_token_reused_after_the_codex_cli_refreshed(self):
        write_auth(self.home, access_token="access-1", refresh_token="refresh-1")

        def codex_cli_refreshed_first(body):
            # The Codex CLI spent the same refresh token a moment ago and rewrote the file in place.
            write_auth(self.home, access_token="access-cli", refresh_token="refresh-cli", last_refresh=iso_ago(0))
            return 401, {"error": {"code": "refresh_token_reused", "message": "already used"}}

        self.answer = codex_cli_refreshed_first
        store = self.store()
        tokens = store.refresh("access-1")
        self.assertEqual((tokens["access_token"], tokens["refresh_token"]), ("access-cli", "refresh-cli"))
        self.assertEqual(len(self.calls), 1)
        self.assertEqual(store.chatgpt_credentials(), ("access-cli", "acct-123"))
        self.assertEqual(read_auth(self.home)["tokens"]["access_token"], "access-cli")

    def test_refresh_token_reused_with_nobody_refreshed_needs_login(self):
        for shape in ({"error": {"code": "refresh_token_reused"}}, {"error": "refresh_token_expired"},
                      {"code": "refresh_token_invalidated"}, {"error": {"message": "nope"}}):
            with self.subTest(shape=shape):
                write_auth(self.home, access_token="access-1", refresh_token="refresh-1")
                before = self.file_bytes()
                self.answer = lambda body: (401, shape)
                with self.assertRaises(codex_proxy.AuthError) as caught:
                    self.store().refresh("access-1")
                self.assertIn("codex login", str(caught.exception))
                self.assertEqual(self.file_bytes(), before)

    def test_a_failed_refresh_never_touches_the_file(self):
        def raises(body):
            raise codex_proxy.UpstreamUnavailable("cannot reach upstream auth.openai.com")

        cases = [("raises", raises, codex_proxy.UpstreamUnavailable),
                 # the auth server's own trouble: temporary, so not "log in again"
                 ("500", lambda body: (500, {"error": "server_error"}), codex_proxy.UpstreamUnavailable),
                 ("500 not json", lambda body: (500, None), codex_proxy.UpstreamUnavailable),
                 ("200 without tokens", lambda body: (200, {"id_token": "x"}), codex_proxy.AuthError),
                 ("401 invalidated", lambda body: (401, {"error": {"code": "refresh_token_invalidated"}}),
                  codex_proxy.AuthError)]
        for name, answer, error in cases:
            with self.subTest(case=name):
                write_auth(self.home, access_token=make_jwt(exp=int(time.time()) - 10), extra_key=1)
                before = self.file_bytes()
                self.answer = answer
                with self.assertRaises(error):
                    self.store().chatgpt_credentials()
                self.assertEqual(self.file_bytes(), before)
                self.assertEqual(leftover_temp_files(self.home), [])
        self.assertEqual(len(self.calls), len(cases))

    def test_two_stores_on_one_file_refresh_once(self):
        """Two proxy processes (two AuthStores) refreshing together: the file lock makes it one refresh."""
        write_auth(self.home, access_token=make_jwt(exp=int(time.time()) - 10), refresh_token="refresh-1")
        spent = []

        def rotate(body):
            spent.append(body["refresh_token"])
            time.sleep(0.2)
            if spent.count(body["refresh_token"]) > 1:
                return 401, {"error": {"code": "refresh_token_reused"}}
            return 200, {"access_token": "access-%d" % (len(spent) + 1), "refresh_token": "refresh-x"}

        self.answer = rotate
        stores = [self.store(), self.store()]
        results = []
        threads = [threading.Thread(target=lambda s=s: results.append(s.chatgpt_credentials())) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        self.assertEqual(spent, ["refresh-1"])
        self.assertEqual(results, [("access-2", "acct-123")] * 2)

    def test_truncated_file_that_becomes_valid_is_read(self):
        with open(self.path, "w"):
            pass  # the Codex CLI truncated it and has not written yet
        writer = threading.Timer(0.2, write_auth, args=(self.home,), kwargs={"access_token": "access-late"})
        writer.start()
        self.addCleanup(writer.cancel)
        started = time.monotonic()
        token, account = self.store().chatgpt_credentials()
        self.assertEqual((token, account), ("access-late", "acct-123"))
        self.assertGreaterEqual(time.monotonic() - started, 0.15)

    def test_file_that_stays_invalid_is_an_auth_error(self):
        for content in ("", '{"tokens": {"access_tok', "[1, 2]"):
            with self.subTest(content=content):
                with open(self.path, "w") as handle:
                    handle.write(content)
                started = time.monotonic()
                with self.assertRaises(codex_proxy.AuthError) as caught:
                    self.store().chatgpt_credentials()
                elapsed = time.monotonic() - started
                self.assertIn(self.path, str(caught.exception))
                self.assertGreaterEqual(elapsed, 0.9)
                self.assertLess(elapsed, 2.5)

    def test_missing_file_and_missing_tokens(self):
        with self.assertRaises(codex_proxy.AuthError) as caught:
            self.store().chatgpt_credentials()
        self.assertIn("codex login", str(caught.exception))
        self.assertIn(self.path, str(caught.exception))
        with open(self.path, "w") as handle:
            json.dump({"OPENAI_API_KEY": None, "tokens": None}, handle)
        with self.assertRaises(codex_proxy.AuthError) as caught:
            self.store().chatgpt_credentials()
        self.assertIn("codex login", str(caught.exception))

    def test_account_id_sources(self):
        id_token = make_jwt(**{AUTH_CLAIM: {"chatgpt_account_id": "acct-from-id-token"}})
        self.assertEqual(codex_proxy.token_account_id({"account_id": "acct-a", "id_token": id_token}), "acct-a")
        self.assertEqual(codex_proxy.token_account_id({"account_id": None, "id_token": id_token}),
                         "acct-from-id-token")
        self.assertEqual(codex_proxy.token_account_id({"id_token": id_token}), "acct-from-id-token")
        self.assertIsNone(codex_proxy.token_account_id({"id_token": "x.e30.y"}))
        write_auth(self.home, account_id=None, id_token=None)
        data = read_auth(self.home)
        data["tokens"]["id_token"] = id_token
        with open(self.path, "w") as handle:
            json.dump(data, handle)
        self.assertEqual(self.store().chatgpt_credentials(), ("access-1", "acct-from-id-token"))

    def test_expiry_rules(self):
        expiring = codex_proxy.tokens_expiring
        now = int(time.time())
        cases = [
            ({"access_token": make_jwt(exp=now - 10)}, iso_ago(0), True),
            ({"access_token": make_jwt(exp=now + 120)}, iso_ago(0), True),  # within the 5 minute margin
            ({"access_token": make_jwt(exp=now + 3600)}, iso_ago(30 * 86400), False),  # exp wins over age
            ({"access_token": "opaque"}, iso_ago(9 * 86400), True),
            ({"access_token": "opaque"}, iso_ago(9 * 86400)[:-1] + "789Z", True),  # Codex CLI's nanoseconds
            ({"access_token": "opaque"}, iso_ago(86400), False),
            ({"access_token": "opaque"}, None, False),
            ({"access_token": "opaque"}, "not a date", False),
        ]
        for tokens, last_refresh, expected in cases:
            with self.subTest(tokens=tokens, last_refresh=last_refresh):
                self.assertEqual(expiring(tokens, last_refresh), expected)


# ---------------------------------------------------------------------------
# Through the running proxy

class ProxyCredentialsTest(ProxyTestCase):
    def post_responses(self, body=None, headers=None, proxy=None):
        return self.json_request("POST", "/v1/responses", body or RESPONSES_BODY, headers, proxy)

    def assert_ok(self, status, payload):
        self.assertEqual(status, 200, payload)
        self.assertEqual(output_text(payload), FAKE_TEXT)

    def assert_proactive_refresh(self, stale):
        replace_auth(self.home, access_token=stale, refresh_token="refresh-1", last_refresh=iso_ago(3600),
                     extra_key=1, OPENAI_API_KEY=None)
        # The fake would still take the stale token: only a proactive refresh changes it.
        self.fake.valid_access_tokens = {stale}
        before = time.time()
        status, _, payload = self.post_responses()
        self.assert_ok(status, payload)
        self.assertEqual(self.fake.refresh_count, 1)
        self.assertEqual(len(self.fake.requests_to("/oauth/token")), 1)
        calls = self.fake.requests_to("/responses")
        self.assertEqual([bearer(r) for r in calls], ["Bearer access-2"])
        self.assertNotIn("Bearer " + stale, [bearer(r) for r in self.fake.requests])
        data = read_auth(self.home)
        self.assertEqual((data["tokens"]["access_token"], data["tokens"]["refresh_token"]), ("access-2", "refresh-2"))
        self.assertEqual(data["tokens"]["account_id"], "acct-123")
        self.assertEqual(data["tokens"]["id_token"].count("."), 2)  # the fake's new id_token
        self.assertEqual(data["extra_key"], 1)
        self.assertIn("OPENAI_API_KEY", data)
        self.assertIsNone(data["OPENAI_API_KEY"])
        self.assertEqual(set(data), {"OPENAI_API_KEY", "tokens", "last_refresh", "extra_key"})
        refreshed = codex_proxy.parse_timestamp(data["last_refresh"])
        self.assertTrue(before - 2 <= refreshed <= time.time() + 2, data["last_refresh"])
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.home, "auth.json")).st_mode), 0o600)
        self.assertEqual(leftover_temp_files(self.home), [])
        # The next request uses the new token without another refresh.
        self.assert_ok(*self.post_responses()[::2])
        self.assertEqual(self.fake.refresh_count, 1)

    def test_proactive_refresh_of_an_expired_jwt(self):
        self.assert_proactive_refresh(make_jwt(exp=int(time.time()) - 30))

    def test_proactive_refresh_of_a_jwt_expiring_within_five_minutes(self):
        self.assert_proactive_refresh(make_jwt(exp=int(time.time()) + 120))

    def test_fresh_jwt_is_not_refreshed(self):
        fresh = make_jwt(exp=int(time.time()) + 3600)
        replace_auth(self.home, access_token=fresh, last_refresh=iso_ago(20 * 86400))
        self.fake.valid_access_tokens = {fresh}
        self.assert_ok(*self.post_responses()[::2])
        self.assertEqual(self.fake.refresh_count, 0)
        self.assertEqual(read_auth(self.home)["tokens"]["access_token"], fresh)

    def test_refresh_when_last_refresh_is_older_than_eight_days_and_no_exp(self):
        replace_auth(self.home, access_token="access-1", last_refresh=iso_ago(9 * 86400))
        self.assert_ok(*self.post_responses()[::2])  # access-1 is still accepted by the fake
        self.assertEqual(self.fake.refresh_count, 1)
        self.assertEqual([bearer(r) for r in self.fake.requests_to("/responses")], ["Bearer access-2"])
        data = read_auth(self.home)
        self.assertEqual(data["tokens"]["access_token"], "access-2")
        self.assertGreater(codex_proxy.parse_timestamp(data["last_refresh"]), time.time() - 60)

    def test_no_refresh_when_last_refresh_is_recent_and_no_exp(self):
        replace_auth(self.home, access_token="access-1", last_refresh=iso_ago(86400))
        with open(os.path.join(self.home, "auth.json"), "rb") as handle:
            before = handle.read()
        self.assert_ok(*self.post_responses()[::2])
        self.assertEqual(self.fake.refresh_count, 0)
        self.assertEqual([bearer(r) for r in self.fake.requests_to("/responses")], ["Bearer access-1"])
        with open(os.path.join(self.home, "auth.json"), "rb") as handle:
            self.assertEqual(handle.read(), before)

    def test_401_refreshes_and_retries_once(self):
        self.fake.valid_access_tokens = set()  # access-1 (no exp, recently refreshed) was revoked
        status, _, payload = self.post_responses()
        self.assert_ok(status, payload)
        self.assertEqual(self.fake.refresh_count, 1)
        # The catalog call met the 401 first; every later call used the new token.
        self.assertEqual([bearer(r) for r in self.fake.requests_to("/models")], ["Bearer access-1", "Bearer access-2"])
        self.assertEqual([bearer(r) for r in self.fake.requests_to("/responses")], ["Bearer access-2"])
        self.assertEqual(read_auth(self.home)["tokens"]["refresh_token"], "refresh-2")

    def test_401_after_a_refresh_is_not_retried_again(self):
        self.assertEqual(self.json_request("GET", "/v1/models")[0], 200)  # catalog cached
        self.fake.reset()
        self.fake.account_id = "acct-other"  # every token is refused now: 401 "Account mismatch"
        status, _, payload = self.post_responses()
        self.assertEqual(status, 401, payload)
        self.assertIn("Account mismatch", payload["error"]["message"])
        self.assertEqual(len(self.fake.requests_to("/responses")), 2)  # the call and one retry
        self.assertEqual(self.fake.refresh_count, 1)

    def test_concurrent_requests_share_one_refresh(self):
        self.assertEqual(self.json_request("GET", "/v1/models")[0], 200)  # catalog cached: calls go straight up
        stale = make_jwt(exp=int(time.time()) - 30)
        replace_auth(self.home, access_token=stale, refresh_token="refresh-1")
        self.fake.valid_access_tokens = {stale}
        self.fake.refresh_delay = 0.3
        results = []

        def call():
            try:
                status, _, payload = self.post_responses()
                results.append((status, output_text(payload or {})))
            except Exception as exc:  # recorded, asserted below
                results.append((None, repr(exc)))

        threads = [threading.Thread(target=call) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        self.assertEqual(results, [(200, FAKE_TEXT)] * 20)
        self.assertEqual(self.fake.refresh_count, 1)
        self.assertEqual(len(self.fake.requests_to("/oauth/token")), 1)
        self.assertEqual({bearer(r) for r in self.fake.requests_to("/responses")}, {"Bearer access-2"})
        self.assertEqual(len(self.fake.requests_to("/responses")), 20)

    def test_spent_refresh_token_is_a_401_telling_to_log_in(self):
        # Someone else spent refresh-1 without writing auth.json: the login is gone for good.
        conn = http.client.HTTPConnection("127.0.0.1", int(self.fake.base_url.rsplit(":", 1)[1]), timeout=5)
        self.addCleanup(conn.close)
        conn.request("POST", "/oauth/token", json.dumps({"client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
                                                         "grant_type": "refresh_token", "refresh_token": "refresh-1"}),
                     {"Content-Type": "application/json"})
        answer = conn.getresponse()
        self.assertEqual((answer.status, json.loads(answer.read())["access_token"]), (200, "access-2"))
        for path, body, method in (("/v1/responses", RESPONSES_BODY, "POST"), ("/v1/models", None, "GET")):
            with self.subTest(path=path):
                status, headers, payload = self.json_request(method, path, body)
                self.assertEqual(status, 401, payload)
                self.assertEqual(headers["content-type"], "application/json")
                error = payload["error"]
                self.assertEqual((error["type"], error["code"]), ("authentication_error", "codex_login_required"))
                self.assertIn("codex login", error["message"])
                self.assertIn("refresh_token_reused", error["message"])
        self.assertEqual(self.fake.requests_to("/responses"), [])
        self.assertEqual(read_auth(self.home)["tokens"]["refresh_token"], "refresh-1")

    def test_missing_auth_file_is_a_401(self):
        os.remove(os.path.join(self.home, "auth.json"))
        status, _, payload = self.post_responses()
        self.assertEqual(status, 401, payload)
        self.assertEqual(payload["error"]["type"], "authentication_error")
        self.assertIn("codex login", payload["error"]["message"])
        self.assertEqual(self.fake.requests, [])

    def test_torn_auth_file_is_a_401_and_does_not_freeze_the_proxy(self):
        with open(os.path.join(self.home, "auth.json"), "w") as handle:
            handle.write('{"tokens": {"acc')  # stays torn
        result = {}

        def call():
            result["answer"] = self.post_responses()

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.1)
        started = time.monotonic()
        health = self.request("GET", "/health")[0]
        health_seconds = time.monotonic() - started
        thread.join(15)
        status, _, payload = result["answer"]
        self.assertEqual(status, 401, payload)
        self.assertEqual(payload["error"]["code"], "codex_login_required")
        self.assertIn("auth.json", payload["error"]["message"])
        self.assertEqual(health, 200)
        # Upstream.mode() runs on the event loop: it must not wait (read() retries a torn file for up to
        # 1 s) or every client, even /health, stalls while one request waits for the file.
        self.assertLess(health_seconds, 0.5, "/health took %.2fs: the event loop was blocked" % health_seconds)

    def test_account_id_from_id_token_and_codex_headers(self):
        id_token = make_jwt(exp=int(time.time()) + 3600, **{AUTH_CLAIM: {"chatgpt_account_id": "acct-123"}})
        replace_auth(self.home, account_id=None)
        data = read_auth(self.home)
        data["tokens"]["id_token"] = id_token
        del data["tokens"]["account_id"]
        with open(os.path.join(self.home, "auth.json"), "w") as handle:
            json.dump(data, handle)
        self.assert_ok(*self.post_responses()[::2])
        for rec in self.fake.requests_to("/responses") + self.fake.requests_to("/models"):
            self.assertEqual(rec.headers.get("chatgpt-account-id"), "acct-123")
            self.assertEqual(rec.headers.get("originator"), "codex_cli_rs")
            self.assertTrue(rec.headers.get("user-agent", "").startswith("codex_cli_rs/"), rec.headers)
        rec = self.fake.requests_to("/responses")[0]
        self.assertEqual(rec.headers.get("authorization"), "Bearer access-1")
        self.assertTrue(rec.headers.get("session_id"))
        self.assertEqual(rec.headers.get("session_id"), rec.json["prompt_cache_key"])
        self.assertEqual(rec.headers.get("accept"), "text/event-stream")

    def test_account_id_from_tokens_and_client_session_id(self):
        self.assert_ok(*self.post_responses(headers={"session_id": "conv-42"})[::2])
        rec = self.fake.requests_to("/responses")[0]
        self.assertEqual(rec.headers.get("chatgpt-account-id"), "acct-123")
        self.assertEqual(rec.headers.get("session_id"), "conv-42")
        self.assertEqual(rec.json["prompt_cache_key"], "conv-42")

    def test_api_key_mode(self):
        api = self.start_proxy(openai_api_key="sk-test-key", auth="apikey")
        body = {"model": "gpt-4.1", "input": "hi", "temperature": 0.2, "max_output_tokens": 50,
                "metadata": {"k": "v"}}
        # Non-streaming: the API's JSON, relayed.
        status, headers, payload = self.json_request("POST", "/v1/responses", body, proxy=api)
        self.assertEqual(status, 200, payload)
        self.assertTrue(headers["content-type"].startswith("application/json"))
        self.assertEqual((payload["object"], payload["status"], output_text(payload)), ("response", "completed",
                                                                                        FAKE_TEXT))
        # Streaming: the SSE relayed as it came.
        self.fake.script.append({"text": "streamed words"})
        status, hdrs, raw = self.request("POST", "/v1/responses", dict(body, stream=True), proxy=api)
        self.assertEqual(status, 200, raw)
        self.assertTrue(hdrs["content-type"].startswith("text/event-stream"))
        events = sse_events(raw, json.loads)
        self.assertEqual(events[0][0], "response.created")
        self.assertEqual(events[-1][0], "response.completed")
        self.assertNotIn("error", [name for name, _ in events])
        self.assertEqual(streamed_text(e for _, e in events), "streamed words")
        calls = self.fake.requests_to("/v1/responses")
        self.assertEqual([r.json for r in calls], [body, dict(body, stream=True)])
        self.assertEqual({bearer(r) for r in calls}, {"Bearer sk-test-key"})
        self.assertEqual(self.fake.requests_to("/backend-api/codex/responses"), [])
        self.assertEqual(self.fake.refresh_count, 0)
        # /v1/models: the API's list.
        status, _, payload = self.json_request("GET", "/v1/models", proxy=api)
        self.assertEqual(status, 200, payload)
        self.assertEqual(payload["object"], "list")
        self.assertEqual([m["id"] for m in payload["data"]], ["gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-5"])
        self.assertEqual(payload["data"][0], {"id": "gpt-4.1", "object": "model", "created": 0, "owned_by": "openai"})
        self.assertEqual(bearer(self.fake.requests_to("/v1/models")[0]), "Bearer sk-test-key")

    def test_api_key_from_auth_json(self):
        replace_auth(self.home, access_token=None, refresh_token=None, account_id=None,
                     OPENAI_API_KEY="sk-test-key", auth_mode="apikey")
        status, _, payload = self.post_responses({"model": "gpt-4.1", "input": "hi", "temperature": 0})
        self.assertEqual(status, 200, payload)
        self.assertEqual(output_text(payload), FAKE_TEXT)
        rec = self.fake.requests_to("/v1/responses")[0]
        self.assertEqual((bearer(rec), rec.json["temperature"]), ("Bearer sk-test-key", 0))

    def test_logs_never_contain_a_token(self):
        secrets = ["at-SECRET-1", "rt-SECRET-1", "at-SECRET-2", "rt-SECRET-2", "sk-SECRET-key"]
        self.fake.refresh_tokens = {"rt-SECRET-1": ("at-SECRET-2", "rt-SECRET-2", None)}
        self.fake.valid_access_tokens = set()
        self.fake.api_keys.add("sk-SECRET-key")
        replace_auth(self.home, access_token="at-SECRET-1", refresh_token="rt-SECRET-1")
        api = self.start_proxy(openai_api_key="sk-SECRET-key", auth="apikey")
        with self.assertLogs("codex_proxy", "DEBUG") as logs:
            self.assert_ok(*self.post_responses()[::2])  # 401, refresh, retry
            self.assertEqual(self.fake.refresh_count, 1)
            replace_auth(self.home, access_token="at-SECRET-1", refresh_token="rt-SECRET-1")
            status, _, payload = self.post_responses()  # a spent refresh token: failure path
            self.assertEqual(status, 401, payload)
            self.fake.script.append({"text": "x", "cut": True})
            self.request("POST", "/v1/responses", {"model": "gpt-4.1", "input": "hi", "stream": True}, proxy=api)
            self.assertEqual(self.json_request("GET", "/v1/models", proxy=api)[0], 200)
        text = "\n".join(logs.output)
        self.assertIn("refreshed", text)
        for record in logs.records:
            text += "\n" + repr(record.args) + repr(record.__dict__.get("exc_text"))
        for secret in secrets:
            self.assertNotIn(secret, text)
        self.assertNotIn("SECRET", text)


if __name__ == "__main__":
    unittest.main()
