"""One error family (ProxyError: status, code, fix) and one reader of upstream error payloads."""

import json
import os
import shutil
import socket
import ssl
import tempfile
import threading
import unittest
import urllib.parse

from support import codex_proxy


class ErrorFamilyTest(unittest.TestCase):
    def test_every_failure_the_proxy_reports_is_a_proxy_error(self):
        for name in ("ClientError", "HTTPError", "AuthError", "UpstreamUnavailable", "UpstreamError", "LockTimeout",
                     "LoginFailed", "CheckFailed", "CannotListen"):
            self.assertTrue(issubclass(getattr(codex_proxy, name), codex_proxy.ProxyError), name)
        for name in ("ClientGone", "CheckSkipped"):  # control flow, not failures
            self.assertFalse(issubclass(getattr(codex_proxy, name), codex_proxy.ProxyError), name)

    def test_describe_failure_reads_the_error_s_own_status_code_and_retry(self):
        cases = [(codex_proxy.AuthError("log in"), 401, "codex_login_required", None),
                 (codex_proxy.UpstreamUnavailable("busy", 503, retry_after=1), 503, "upstream_unavailable", "1"),
                 (codex_proxy.ClientError("bad", param="input", code="x"), 400, "x", None)]
        for exc, status, code, retry in cases:
            answer = codex_proxy.describe_failure(exc)
            self.assertEqual((answer["status"], answer["code"], answer["message"]), (status, code, exc.message))
            self.assertEqual((answer["headers"] or {}).get("Retry-After"), retry)

    def test_a_lock_that_stays_taken_is_its_own_kind(self):
        if codex_proxy.fcntl is None:
            self.skipTest("no fcntl here")
        folder = tempfile.mkdtemp(prefix="codex-lock-")
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "auth.json.lock")
        held, release = threading.Event(), threading.Event()

        def hold():
            with codex_proxy.FileLock(path):
                held.set()
                release.wait(5)

        holder = threading.Thread(target=hold)
        holder.start()
        self.addCleanup(holder.join)
        self.addCleanup(release.set)
        held.wait(5)
        with self.assertRaises(codex_proxy.LockTimeout) as caught:
            with codex_proxy.FileLock(path, timeout=0.1):
                pass
        self.assertNotIsInstance(caught.exception, codex_proxy.UpstreamUnavailable)
        self.assertEqual(caught.exception.code, "auth_file_locked")
        self.assertIn("stayed locked", caught.exception.message)
        self.assertTrue(caught.exception.fix)

    def test_a_connect_failure_carries_its_fix(self):
        proxy = urllib.parse.urlsplit("http://127.0.0.1:3128")
        cases = [(ssl.SSLError("bad certificate"), None, codex_proxy.CA_BUNDLE_FIX),
                 (OSError("Tunnel connection failed: 403"), proxy, codex_proxy.PROXY_FIX),
                 (ConnectionRefusedError(), proxy, codex_proxy.PROXY_FIX),
                 (ConnectionRefusedError(), None, codex_proxy.NETWORK_FIX),
                 (socket.timeout(), None, codex_proxy.NETWORK_FIX)]
        for exc, through, fix in cases:
            failure, _ = codex_proxy.describe_connect_failure(exc, "example.com:443", through, 5)
            self.assertEqual(failure.fix, fix, failure)


class UpstreamFailureReaderTest(unittest.TestCase):
    def test_every_shape_of_an_error_body(self):
        read = codex_proxy.UpstreamFailure.of_body
        cases = [((400, {"error": {"message": "m", "code": "c"}}), ("m", "c")),
                 ((400, {"error": {"message": "m", "type": "t"}}), ("m", "t")),
                 ((422, {"detail": "d"}), ("d", None)),
                 ((422, {"detail": [{"loc": "x"}]}), ('[{"loc": "x"}]', None)),
                 ((400, {"error": "invalid_grant"}), ("invalid_grant", None)),
                 ((400, {"code": "top", "detail": "d"}), ("d", "top")),
                 ((500, None, b"plain text"), ("plain text", None)),
                 ((500, None), ("HTTP 500 from upstream", None)),
                 ((400, {"error": {"code": 7, "message": ["no"]}}, b"raw"), ("raw", None))]
        for args, (message, code) in cases:
            failure = read(*args)
            self.assertEqual((failure.message, failure.code), (message, code), args)

    def test_a_usage_limit_says_its_code_its_limit_and_when_to_retry(self):
        error = {"type": "usage_limit_reached", "message": "The usage limit has been reached",
                 "plan_type": "plus", "resets_in_seconds": 50}
        failure = codex_proxy.UpstreamFailure.of_body(429, {"error": error})
        self.assertEqual(failure.code, "usage_limit_reached")
        self.assertEqual(failure.limit, {"plan_type": "plus", "resets_in_seconds": 50})
        self.assertEqual(failure.retry_after(), "50")
        self.assertIn("usage_limit_reached", failure.message)
        upstream = codex_proxy.UpstreamError(429, json.dumps({"error": error}).encode())
        self.assertEqual((upstream.status, upstream.code, upstream.retry_after()), (429, "usage_limit_reached", "50"))
        self.assertTrue(upstream.fix)

    def test_a_refresh_error_code_in_either_shape(self):
        self.assertEqual(codex_proxy.refresh_error_code({"error": "invalid_grant"}), "invalid_grant")
        self.assertEqual(codex_proxy.refresh_error_code({"error": {"code": "refresh_token_reused"}}),
                         "refresh_token_reused")
        self.assertIsNone(codex_proxy.refresh_error_code(None))

    def test_a_stream_s_failing_event(self):
        failed = {"type": "response.failed", "response": {"error": {"code": "rate_limit_exceeded", "message": "slow"}}}
        self.assertEqual(codex_proxy.stream_error(codex_proxy.event_failure(failed)),
                         {"status": 429, "code": "rate_limit_exceeded", "message": "slow"})
        bare = {"type": "error", "code": "server_is_overloaded"}
        self.assertEqual(codex_proxy.stream_error(codex_proxy.event_failure(bare))["status"], 503)
        self.assertEqual(codex_proxy.stream_error({}, "cut")["message"], "cut")


if __name__ == "__main__":
    unittest.main()
