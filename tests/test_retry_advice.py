"""Refusals clients obey at once: what no retry can fix carries `x-should-retry: false` (which
Claude Code and the official SDKs read: without it Claude Code retries a 401 for minutes,
printing nothing); 5xx and a usage limit that resets soon keep their Retry-After.

Run: python3 -m unittest tests.test_retry_advice -v
"""

import os
import unittest

from support import ProxyTestCase, closed_port, codex_proxy
from fake_upstream import usage_limit_reply  # noqa: E402 (support puts tests/ on the path)

ANTHROPIC = {"anthropic-version": "2023-06-01", "x-api-key": "unused"}
REQUESTS = (  # (path, body, headers): one request of each dialect
    ("/v1/chat/completions", {"model": "gpt-5.5", "messages": [{"role": "user", "content": "Hi"}]}, None),
    ("/v1/responses", {"model": "gpt-5.5", "input": "Hi"}, None),
    ("/v1/messages", {"model": "claude-opus-5-5", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]},
     ANTHROPIC),
)


class RetryAdviceTableTests(unittest.TestCase):
    def test_the_table(self):
        cases = [  # (status, headers) -> x-should-retry
            ((400, None), "false"), ((401, None), "false"), ((403, None), "false"), ((404, None), "false"),
            ((413, None), "false"), ((408, None), None), ((429, None), None), ((429, {"Retry-After": "60"}), None),
            ((429, {"Retry-After": "61"}), "false"), ((500, None), None), ((502, {"Retry-After": "1"}), None),
            ((503, {"Retry-After": "1"}), None), ((529, None), None),
        ]
        for (status, headers), expected in cases:
            with self.subTest(status=status, headers=headers):
                advice = codex_proxy.retry_advice(status, headers) or {}
                self.assertEqual(advice.get("x-should-retry"), expected)
                if headers:
                    self.assertEqual(advice.get("Retry-After"), headers["Retry-After"])


class RefusalsOverHTTPTests(ProxyTestCase):
    def assert_advice(self, expected, status, method="POST", path=None, body=None, headers=None):
        """Each dialect's request (or the one given) is answered `status`, with `expected` as its
        x-should-retry (None: none)."""
        for request_path, request_body, request_headers in REQUESTS if path is None else [(path, body, headers)]:
            with self.subTest(path=request_path, status=status):
                got_status, got, _ = self.request(method, request_path, request_body, request_headers)
                self.assertEqual((got_status, got.get("x-should-retry")), (status, expected), got)

    def test_no_login_is_a_401_no_retry_fixes(self):
        os.remove(os.path.join(self.home, "auth.json"))
        self.assert_advice("false", 401)

    def test_a_refused_request_is_not_retried(self):
        for path, body, headers in REQUESTS:
            self.assert_advice("false", 400, path=path, body=dict(body, model=7), headers=headers)
        self.assert_advice("false", 404, "GET", "/v1/nowhere")
        self.assert_advice("false", 403, path="/v1/messages", body={}, headers=dict(ANTHROPIC, Host="evil.example"))

    def test_a_usage_limit_far_off_is_not_retried_a_near_one_is(self):
        for resets_in, expected in ((3600, "false"), (30, None)):
            with self.subTest(resets_in=resets_in):
                self.fake.script.append(usage_limit_reply(resets_in_seconds=resets_in))
                path, body, headers = REQUESTS[0]
                status, got, _ = self.request("POST", path, body, headers)
                self.assertEqual((status, got.get("x-should-retry")), (429, expected))
                self.assertIn("retry-after", got)

    def test_an_upstream_out_of_reach_may_be_retried(self):
        self.proxy = self.start_proxy(chatgpt_base_url="http://127.0.0.1:%d" % closed_port())
        self.assert_advice(None, 502)


if __name__ == "__main__":
    unittest.main()
