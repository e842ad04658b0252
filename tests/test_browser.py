"""Web pages in the user's browser must not be able to use the proxy.

Any page can send requests to 127.0.0.1: a cross-origin page can POST "simple"
requests (no-cors, text/plain) that the proxy would forward on the user's plan,
and a page on a DNS-rebound name (evil.example resolving to 127.0.0.1) can even
read the answers, its requests being same-origin. The proxy refuses a Host that
is not a loopback name (unless --allowed-host), any Origin not listed with
--allow-origin, and Sec-Fetch-Site cross-site/same-site; listed origins get CORS.

The first class checks that matrix with raw HTTP. The second drives a real
headless Chromium (Debian's chromium package) against the real proxy: skipped
when Chromium is missing, failed instead when CI=true or
CODEX_PROXY_REQUIRE_OPTIONAL is set.
"""

import json
import unittest

from support import ProxyTestCase  # first: it puts tests/ on sys.path
from browser_support import (Chromium, ForwardProxy, PageServer, TcpTap, browser_required,  # noqa: E402
                             find_chromium, page_html)
from fake_upstream import DEFAULT_TEXT  # noqa: E402

CHAT = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "Hi"}]}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}]}
ANTHROPIC_HEADERS = {"x-api-key": "anything", "anthropic-version": "2023-06-01"}
PAGE_ORIGIN = "http://127.0.0.1:5555"  # an origin for the raw-HTTP tests; nothing listens there


class GuardOverHTTPTests(ProxyTestCase):
    """The Host / Origin / Sec-Fetch-Site matrix, without a browser."""

    def setUp(self):
        super().setUp()
        self.port = self.proxy.port

    def upstream_count(self):
        return len(self.fake.requests)

    def chat(self, headers, proxy=None):
        return self.json_request("POST", "/v1/chat/completions", CHAT, headers, proxy=proxy)

    def messages(self, headers, proxy=None):
        hdrs = dict(ANTHROPIC_HEADERS)
        hdrs.update(headers)
        return self.json_request("POST", "/v1/messages", MESSAGES, hdrs, proxy=proxy)

    def assert_openai_refusal(self, status, body, flag):
        self.assertEqual(status, 403, body)
        self.assertIsInstance(body, dict, body)
        self.assertIsInstance(body.get("error"), dict, body)
        self.assertEqual(body["error"].get("type"), "permission_error", body)
        self.assertIn(flag, body["error"].get("message", ""), body)

    def assert_anthropic_refusal(self, status, body, flag):
        self.assertEqual(status, 403, body)
        self.assertIsInstance(body, dict, body)
        self.assertEqual(body.get("type"), "error", body)
        self.assertEqual(body["error"].get("type"), "permission_error", body)
        self.assertIn(flag, body["error"].get("message", ""), body)

    def assert_served(self, status, body, what):
        self.assertEqual(status, 200, "%s: %r" % (what, body))

    # -- Host

    def test_foreign_host_is_refused_in_the_dialect_of_the_path(self):
        before = self.upstream_count()
        host = {"Host": "evil.example:%d" % self.port}
        self.assert_openai_refusal(*self.chat(host)[::2], flag="--allowed-host")
        self.assert_anthropic_refusal(*self.messages(host)[::2], flag="--allowed-host")
        status, _, body = self.json_request("GET", "/v1/models", headers=host)
        self.assert_openai_refusal(status, body, "--allowed-host")
        status, _, body = self.json_request("POST", "/v1/messages/count_tokens", MESSAGES,
                                            dict(ANTHROPIC_HEADERS, **host))
        self.assert_anthropic_refusal(status, body, "--allowed-host")
        for path in ("/health", "/no/such/path"):
            status, _, raw = self.request("GET", path, headers=host)
            self.assertEqual(status, 403, (path, raw))
        status, _, body = self.chat({"Host": "evil.example"})  # no port
        self.assertEqual(status, 403, body)
        self.assertEqual(self.upstream_count(), before, "a refused request reached the backend")
        self.assertEqual(self.fake.requests_to("/responses"), [])

    def test_foreign_host_is_refused_before_the_api_key_check(self):
        proxy = self.start_proxy(api_key="local-key")
        status, _, body = self.chat({"Host": "evil.example:%d" % proxy.port, "Authorization": "Bearer wrong"},
                                    proxy=proxy)
        self.assert_openai_refusal(status, body, "--allowed-host")
        status, _, body = self.chat({"Host": "127.0.0.1:%d" % proxy.port, "Authorization": "Bearer local-key"},
                                    proxy=proxy)
        self.assert_served(status, body, "right key, loopback Host")

    def test_loopback_hosts_are_served(self):
        for host in ("localhost:%d" % self.port, "127.0.0.1:%d" % self.port, "[::1]:%d" % self.port,
                     "localhost", "127.0.0.1", "127.0.0.2:%d" % self.port, "localhost:1"):
            status, _, body = self.chat({"Host": host})
            self.assert_served(status, body, host)
            self.assertEqual(body["choices"][0]["message"]["content"], DEFAULT_TEXT)
        status, _, body = self.messages({"Host": "localhost:%d" % self.port})
        self.assert_served(status, body, "messages on localhost")
        self.assertEqual(body["content"][0]["text"], DEFAULT_TEXT)

    def test_allowed_host_flag(self):
        proxy = self.start_proxy(allowed_hosts=["evil.example"])
        status, _, body = self.chat({"Host": "evil.example:%d" % proxy.port}, proxy=proxy)
        self.assert_served(status, body, "--allowed-host evil.example")
        self.assertEqual(body["choices"][0]["message"]["content"], DEFAULT_TEXT)
        status, _, body = self.messages({"Host": "evil.example:%d" % proxy.port}, proxy=proxy)
        self.assert_served(status, body, "--allowed-host evil.example, /v1/messages")
        before = self.upstream_count()
        status, _, body = self.chat({"Host": "other.example:%d" % proxy.port}, proxy=proxy)
        self.assert_openai_refusal(status, body, "--allowed-host")
        self.assertEqual(self.upstream_count(), before)

    # -- Origin and Sec-Fetch-Site

    def test_origin_not_allowed_is_refused(self):
        before = self.upstream_count()
        for origin in (PAGE_ORIGIN, "null", "https://evil.example", "http://127.0.0.1:%d" % self.port):
            self.assert_openai_refusal(*self.chat({"Origin": origin})[::2], flag="--allow-origin")
            self.assert_anthropic_refusal(*self.messages({"Origin": origin})[::2], flag="--allow-origin")
        # A preflight from such a page is refused too, so its real request is never sent.
        status, _, raw = self.request("OPTIONS", "/v1/chat/completions", headers={
            "Origin": PAGE_ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        self.assertEqual(status, 403, raw)
        self.assertEqual(self.upstream_count(), before, "a refused request reached the backend")

    def test_origin_allowed_on_another_proxy_is_not_allowed_here(self):
        proxy = self.start_proxy(allow_origins=[PAGE_ORIGIN])
        status, _, body = self.chat({"Origin": "http://127.0.0.1:5556"}, proxy=proxy)
        self.assert_openai_refusal(status, body, "--allow-origin")

    def test_cross_site_fetch_metadata_without_origin_is_refused(self):
        before = self.upstream_count()
        for site in ("cross-site", "same-site"):
            self.assert_openai_refusal(*self.chat({"Sec-Fetch-Site": site})[::2], flag="--allow-origin")
            self.assert_anthropic_refusal(*self.messages({"Sec-Fetch-Site": site})[::2], flag="--allow-origin")
            status, _, body = self.json_request("GET", "/v1/models", headers={"Sec-Fetch-Site": site})
            self.assertEqual(status, 403, body)
        self.assertEqual(self.upstream_count(), before, "a refused request reached the backend")
        for site in ("none", "same-origin"):  # typed into the address bar; the proxy's own origin
            status, _, body = self.json_request("GET", "/v1/models", headers={"Sec-Fetch-Site": site})
            self.assert_served(status, body, "Sec-Fetch-Site: " + site)

    def test_allowed_origin_gets_cors(self):
        proxy = self.start_proxy(allow_origins=[PAGE_ORIGIN])
        before = self.upstream_count()
        for path, asked in (("/v1/chat/completions", "authorization,content-type"),
                            ("/v1/messages", "anthropic-version,content-type,x-api-key")):
            status, hdrs, raw = self.request("OPTIONS", path, proxy=proxy, headers={
                "Origin": PAGE_ORIGIN, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": asked, "Access-Control-Request-Private-Network": "true",
                "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"})
            self.assertEqual(status, 204, (path, hdrs, raw))
            self.assertEqual(hdrs.get("access-control-allow-origin"), PAGE_ORIGIN, hdrs)
            self.assertIn("POST", hdrs.get("access-control-allow-methods", ""), hdrs)
            allowed = {h.strip().lower() for h in hdrs.get("access-control-allow-headers", "").split(",")}
            self.assertTrue(set(asked.split(",")) <= allowed, hdrs)
            self.assertTrue(hdrs.get("access-control-max-age", "").isdigit(), hdrs)
            self.assertEqual(hdrs.get("access-control-allow-private-network"), "true", hdrs)
        self.assertEqual(self.upstream_count(), before, "a preflight reached the backend")

        status, hdrs, raw = self.request("POST", "/v1/chat/completions", CHAT, proxy=proxy, headers={
            "Origin": PAGE_ORIGIN, "Authorization": "Bearer x", "Sec-Fetch-Site": "same-site"})
        self.assertEqual(status, 200, raw)
        self.assertEqual(json.loads(raw)["choices"][0]["message"]["content"], DEFAULT_TEXT)
        self.assertEqual(hdrs.get("access-control-allow-origin"), PAGE_ORIGIN, hdrs)
        self.assertIn("origin", hdrs.get("vary", "").lower(), hdrs)
        status, hdrs, raw = self.request("POST", "/v1/messages", MESSAGES, proxy=proxy,
                                         headers=dict(ANTHROPIC_HEADERS, Origin=PAGE_ORIGIN))
        self.assertEqual(status, 200, raw)
        self.assertEqual(json.loads(raw)["content"][0]["text"], DEFAULT_TEXT)
        self.assertEqual(hdrs.get("access-control-allow-origin"), PAGE_ORIGIN, hdrs)
        self.assertIn("origin", hdrs.get("vary", "").lower(), hdrs)


CHROMIUM = find_chromium()


def fetch_step(name, url, method="GET", mode="cors", headers=None, body=None):
    init = {"method": method, "mode": mode, "cache": "no-store"}
    if headers:
        init["headers"] = headers
    if body is not None:
        init["body"] = json.dumps(body)
    return {"name": name, "url": url, "init": init}


def websocket_page(url, report_url):
    """A page that opens a WebSocket to `url`, asks for a response on it, and POSTs to
    `report_url` what it got: {"results": {"socket": {"opened", "last" (the last event's type),
    "text", "closed" (the close code)} or {"error"}}}."""
    script = """
const REPORT = %s;
let reported = false, seen = {opened: false};
function report(extra) {
  if (reported) return;
  reported = true;
  fetch(REPORT, {method: "POST", body: JSON.stringify({origin: location.origin,
                                                        results: {socket: Object.assign(seen, extra)}})});
}
const ws = new WebSocket(%s);
ws.onopen = () => { seen.opened = true;
                    ws.send(JSON.stringify({type: "response.create", model: "gpt-5.5", input: "Hi"})); };
ws.onmessage = (e) => {
  const event = JSON.parse(e.data);
  if (event.type === "response.completed" || event.type === "error") {
    report({last: event.type, text: JSON.stringify(event)});
    ws.close(1000);
  }
};
ws.onclose = (e) => report({closed: e.code});
setTimeout(() => report({error: "timeout"}), 8000);
""" % (json.dumps(report_url), json.dumps(url))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>ws</title></head>"
            "<body><script>%s</script></body></html>" % script).encode("utf-8")


class BrowserTests(ProxyTestCase):
    """Real headless Chromium pages against the real proxy. Each test starts its own
    servers and browser on free 127.0.0.1 ports and stops them all."""

    def setUp(self):
        if CHROMIUM is None:
            if browser_required():
                raise AssertionError("CI=true or CODEX_PROXY_REQUIRE_OPTIONAL is set but Chromium is not installed "
                                     "(apt-get install -y chromium)")
            self.skipTest("Chromium is not installed (apt-get install -y chromium, or set CODEX_PROXY_CHROMIUM)")
        super().setUp()

    # -- harness

    def serve_pages(self):
        pages = PageServer().start()
        self.addCleanup(pages.stop)
        return pages

    def tap(self, port):
        tap = TcpTap(port).start()
        self.addCleanup(tap.stop)
        return tap

    def open_browser(self, url, *flags):
        browser = Chromium(CHROMIUM, url, flags).start()
        self.addCleanup(browser.stop)
        return browser

    def await_report(self, reports, browser, what=""):
        report = reports.wait()
        if report is None:
            self.fail("no report from the page within the timeout %s\nChromium said:\n%s" % (what, browser.log_tail()))
        self.assertIsNone(report.get("failure"), report)
        browser.stop()  # done with it: the page has said everything
        return report["results"]

    def test_harness_page_reports_back(self):
        pages = self.serve_pages()
        pages.pages["/"] = page_html([], "/report")
        browser = self.open_browser(pages.origin + "/")
        self.assertEqual(self.await_report(pages.reports, browser), {})
        self.assertEqual(pages.reports.items[0]["origin"], pages.origin)

    def test_harness_forwarder_plays_a_rebound_name(self):
        """Control for the DNS rebinding test: with --allowed-host evil.example the page
        reaches the real proxy through the forwarder and reads its answer."""
        proxy = self.start_proxy(allowed_hosts=["evil.example"])
        evil = "evil.example:%d" % proxy.port
        forwarder = ForwardProxy(evil, proxy.port, page_html([fetch_step("models", "/v1/models")], "/__report"))
        forwarder.start()
        self.addCleanup(forwarder.stop)
        browser = self.open_browser("http://%s/" % evil, "--proxy-server=http://127.0.0.1:%d" % forwarder.port)
        results = self.await_report(forwarder.reports, browser, "through the forwarder")
        self.assertEqual(results["models"].get("status"), 200, results)
        self.assertIn("gpt-5.5", results["models"]["body"], results)
        self.assertIn(("GET", "http://%s/v1/models" % evil, evil, 200), forwarder.entries())

    # -- the attacks

    def test_cross_origin_page_cannot_post_to_the_proxy(self):
        pages = self.serve_pages()
        tap = self.tap(self.proxy.port)  # the same proxy on another port, so that we see its answers
        direct = "http://127.0.0.1:%d" % self.proxy.port
        tapped = "http://127.0.0.1:%d" % tap.port
        plain = {"Content-Type": "text/plain"}
        steps = []
        for base, tag in ((tapped, "tapped"), (direct, "direct")):
            steps += [fetch_step("chat_" + tag, base + "/v1/chat/completions", "POST", "no-cors", plain, CHAT),
                      fetch_step("messages_" + tag, base + "/v1/messages", "POST", "no-cors", plain, MESSAGES)]
        steps.append(fetch_step("cors_chat", tapped + "/v1/chat/completions", "POST", "cors",
                                {"Content-Type": "application/json"}, CHAT))
        pages.pages["/"] = page_html(steps, "/report")
        before = len(self.fake.requests)
        browser = self.open_browser(pages.origin + "/")
        results = self.await_report(pages.reports, browser)

        reached = self.fake.requests[before:]
        self.assertEqual([(r.method, r.path) for r in reached], [], "a page's request reached the backend")
        self.assertEqual(self.fake.requests_to("/responses"), [])
        for name in ("chat_tapped", "messages_tapped", "chat_direct", "messages_direct"):
            self.assertEqual(results[name].get("type"), "opaque", results)  # sent, answer unreadable
        self.assertIn("error", results["cors_chat"], results)  # preflight refused: fetch fails
        sent = tap.requests()
        for request in (("POST", "/v1/chat/completions"), ("POST", "/v1/messages"),
                        ("OPTIONS", "/v1/chat/completions")):
            self.assertIn(request, sent, tap.transcript())
        self.assertEqual(tap.statuses(), [403] * len(sent), tap.transcript())

    def test_dns_rebinding_page_reads_nothing(self):
        evil = "evil.example:%d" % self.proxy.port
        json_headers = {"Content-Type": "application/json"}
        steps = [fetch_step("chat", "/v1/chat/completions", "POST", "same-origin", json_headers, CHAT),
                 fetch_step("messages", "/v1/messages", "POST", "same-origin", dict(json_headers, **ANTHROPIC_HEADERS),
                            MESSAGES),
                 fetch_step("models", "/v1/models", mode="same-origin"),
                 fetch_step("health", "/health", mode="same-origin")]
        forwarder = ForwardProxy(evil, self.proxy.port, page_html(steps, "/__report"))
        forwarder.start()
        self.addCleanup(forwarder.stop)
        before = len(self.fake.requests)
        browser = self.open_browser("http://%s/" % evil, "--proxy-server=http://127.0.0.1:%d" % forwarder.port)
        results = self.await_report(forwarder.reports, browser, "through the forwarder")

        reached = self.fake.requests[before:]
        self.assertEqual([(r.method, r.path) for r in reached], [], "a page's request reached the backend")
        self.assertEqual(self.fake.requests_to("/responses"), [])
        for name, result in results.items():
            if "error" in result:
                continue  # nothing read at all is fine too
            self.assertEqual(result.get("status"), 403, (name, result))
            body = result.get("body") or ""
            self.assertNotIn(DEFAULT_TEXT, body, name)
            self.assertNotIn("gpt-5.5", body, name)
            self.assertIn("--allowed-host", body, (name, body))
        # The requests did travel: Chromium -> forwarder -> the real proxy, Host: evil.example.
        relayed = {(method, url): status for method, url, host, status in forwarder.entries() if host == evil}
        for method, path in (("POST", "/v1/chat/completions"), ("POST", "/v1/messages"), ("GET", "/v1/models")):
            self.assertEqual(relayed.get((method, "http://%s%s" % (evil, path))), 403, forwarder.entries())

    def test_allowed_origin_page_reads_answers(self):
        pages = self.serve_pages()
        proxy = self.start_proxy(allow_origins=[pages.origin])
        tap = self.tap(proxy.port)
        base = "http://127.0.0.1:%d" % proxy.port
        chat_headers = {"Content-Type": "application/json", "Authorization": "Bearer x"}
        steps = [fetch_step("chat", base + "/v1/chat/completions", "POST", "cors", chat_headers, CHAT),
                 fetch_step("messages", base + "/v1/messages", "POST", "cors",
                            dict(ANTHROPIC_HEADERS, **{"Content-Type": "application/json"}), MESSAGES),
                 fetch_step("chat_tapped", "http://127.0.0.1:%d/v1/chat/completions" % tap.port, "POST", "cors",
                            chat_headers, CHAT)]
        pages.pages["/"] = page_html(steps, "/report")
        browser = self.open_browser(pages.origin + "/")
        results = self.await_report(pages.reports, browser)

        for name in ("chat", "chat_tapped"):
            self.assertEqual(results[name].get("status"), 200, results)
            self.assertEqual(results[name].get("allow_origin"), pages.origin, results)
            self.assertEqual(json.loads(results[name]["body"])["choices"][0]["message"]["content"], DEFAULT_TEXT)
        self.assertEqual(results["messages"].get("status"), 200, results)
        self.assertEqual(json.loads(results["messages"]["body"])["content"][0]["text"], DEFAULT_TEXT)
        self.assertEqual(len(self.fake.requests_to("/responses")), 3)
        # The preflight went first, on the wire.
        self.assertEqual(tap.requests()[:2], [("OPTIONS", "/v1/chat/completions"), ("POST", "/v1/chat/completions")],
                         tap.transcript())
        self.assertEqual(tap.statuses()[:2], [204, 200], tap.transcript())

    def test_cross_origin_page_cannot_open_a_websocket(self):
        """Cross-site WebSocket hijacking: browsers apply no CORS to WebSockets, so the proxy must
        refuse the upgrade on its Origin. The control: a page whose origin is allowed reads an
        answer over the socket."""
        pages = self.serve_pages()
        pages.pages["/"] = websocket_page("ws://127.0.0.1:%d/v1/responses" % self.proxy.port, "/report")
        results = self.await_report(pages.reports, self.open_browser(pages.origin + "/"))
        self.assertFalse(results["socket"]["opened"], results)
        self.assertEqual(self.fake.requests_to("/responses"), [])

        allowed_pages = self.serve_pages()
        proxy = self.start_proxy(allow_origins=[allowed_pages.origin])
        allowed_pages.pages["/"] = websocket_page("ws://127.0.0.1:%d/v1/responses" % proxy.port, "/report")
        results = self.await_report(allowed_pages.reports, self.open_browser(allowed_pages.origin + "/"))
        self.assertEqual((results["socket"]["opened"], results["socket"].get("last")), (True, "response.completed"),
                         results)
        self.assertIn(DEFAULT_TEXT, results["socket"]["text"])
        self.assertEqual(len(self.fake.requests_to("/responses")), 1)

if __name__ == "__main__":
    unittest.main()
