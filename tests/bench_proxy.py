"""Benchmark: what the proxy adds to a request, and how fast it moves a stream.

    python tests/bench_proxy.py            (about 20 s on 2 cores)

Everything runs on loopback against the fake backend, so the numbers are the
proxy's own cost (parsing, translation, thread hand-offs), not the network's.
Not part of the test suite: timings belong here, not in unit tests.
"""

import concurrent.futures
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_upstream import FakeCodexBackend  # noqa: E402
from support import RunningProxy, codex_proxy, write_auth  # noqa: E402

REQUESTS = 300
STREAM_DELTAS = 3000  # text deltas in the long streamed answer
CONCURRENT = 64


def timed_post(port, path, body, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    payload = json.dumps(body).encode()
    started = time.perf_counter()
    conn.request("POST", path, body=payload, headers=dict({"Content-Type": "application/json"}, **(headers or {})))
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    assert response.status == 200, (response.status, data[:300])
    return elapsed, data


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    fake = FakeCodexBackend().start()
    home = tempfile.mkdtemp()
    write_auth(home)
    config = codex_proxy.Config(host="127.0.0.1", port=0, codex_home=home, openai_api_key=None,
                                chatgpt_base_url=fake.chatgpt_base, refresh_token_url=fake.token_url,
                                log_level="warning")
    proxy = RunningProxy(config).start()
    codex_headers = {"Authorization": "Bearer access-1", "ChatGPT-Account-ID": fake.account_id}
    upstream_body = {"model": "gpt-5.5", "instructions": "x", "input": [], "stream": True, "store": False}
    try:
        direct = [timed_post(int(fake.base_url.rsplit(":", 1)[1]), "/backend-api/codex/responses", upstream_body, codex_headers)[0]
                  for _ in range(REQUESTS)]
        chat = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}
        through = [timed_post(proxy.port, "/v1/chat/completions", chat)[0] for _ in range(REQUESTS)]
        overhead = statistics.median(through) - statistics.median(direct)
        print("non-stream chat completion, %d sequential requests:" % REQUESTS)
        print("  direct to fake backend : p50 %.2f ms  p99 %.2f ms" % (statistics.median(direct) * 1e3,
                                                                      percentile(direct, 0.99) * 1e3))
        print("  through the proxy      : p50 %.2f ms  p99 %.2f ms" % (statistics.median(through) * 1e3,
                                                                      percentile(through, 0.99) * 1e3))
        print("  proxy overhead (p50)   : %.2f ms" % (overhead * 1e3))

        for path, body in (("/v1/responses", {"model": "gpt-5.5", "input": "hi", "stream": True}),
                           ("/v1/chat/completions", dict(chat, stream=True)),
                           ("/v1/messages", {"model": "claude-x", "max_tokens": 10, "stream": True,
                                             "messages": [{"role": "user", "content": "hi"}]})):
            fake.script.append({"text": "x", "events_repeat": STREAM_DELTAS})
            elapsed, data = timed_post(proxy.port, path, body)
            print("stream of %d deltas via %-21s: %.0f ms (%.0f events/s)" % (
                STREAM_DELTAS, path, elapsed * 1e3, STREAM_DELTAS / elapsed))

        def one_stream(_):
            fake_reply = {"text": "x", "events_repeat": 50, "delay": 0.01}
            fake.script.append(fake_reply)
            return timed_post(proxy.port, "/v1/chat/completions", dict(chat, stream=True))[0]
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
            times = list(pool.map(one_stream, range(CONCURRENT)))
        wall = time.perf_counter() - started
        print("%d concurrent streams of ~0.5 s each: wall %.2f s (slowest %.2f s)" % (CONCURRENT, wall, max(times)))
    finally:
        proxy.stop()
        fake.stop()
        shutil.rmtree(home, True)


if __name__ == "__main__":
    main()
