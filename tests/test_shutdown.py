"""SIGTERM and SIGINT: the proxy (a real process) stops accepting at once, lets
requests in flight finish within --shutdown-grace, then ends what remains with
the dialect's error; it exits 0 without a traceback."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from support import SCRIPT, FakeCodexBackend, raw_request, read_until, write_auth



class ShutdownTest(unittest.TestCase):
    def start(self, *flags):
        self.fake = FakeCodexBackend().start()
        self.addCleanup(self.fake.stop)
        home = tempfile.mkdtemp(prefix="codex-home-")
        self.addCleanup(shutil.rmtree, home, True)
        write_auth(home)
        env = dict(os.environ, CODEX_HOME=home, CODEX_REFRESH_TOKEN_URL_OVERRIDE=self.fake.token_url)
        env.pop("OPENAI_API_KEY", None)
        self.proc = subprocess.Popen([sys.executable, SCRIPT, "--port", "0", "--chatgpt-base-url",
                                      self.fake.chatgpt_base, "--default-model", "gpt-5.5"] + list(flags),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.addCleanup(self.reap)
        line = self.proc.stderr.readline().decode()  # the first start line
        self.port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", line).group(1))

    def reap(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=15)
        self.addCleanup(sock.close)
        return sock

    def open_stream(self, path, body, first=b"data:"):
        sock = self.connect()
        sock.sendall(raw_request(path, dict(body, stream=True)))
        received = read_until(sock, first)
        self.assertIn(first, received)
        return sock, received

    def read_rest(self, sock, received=b""):
        while not received.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received

    def stop(self, number=None):
        """(exit status, stderr, seconds to exit), after sending `number` if given."""
        started = time.monotonic()
        if number is not None:
            self.proc.send_signal(number)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err.decode(), time.monotonic() - started

    def test_sigterm_lets_streams_finish_and_closes_idle_connections_at_once(self):
        self.start("--shutdown-grace", "10")
        idle = self.connect()
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertIn(b"200 OK", idle.recv(65536))
        self.fake.script.append({"text": "abcdefghij" * 3, "delay": 0.1, "events_repeat": 4})  # ~1.5 s
        sock, received = self.open_stream("/v1/chat/completions",
                                          {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]})
        self.proc.send_signal(signal.SIGTERM)
        idle.settimeout(2)
        self.assertEqual(idle.recv(65536), b"")  # the idle keep-alive connection is closed now
        time.sleep(0.2)
        with self.assertRaises(OSError):  # nothing new is accepted
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
        answer = self.read_rest(sock, received)
        self.assertIn(b"data: [DONE]", answer)  # the stream in flight finished whole
        text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                       for line in answer.decode().split("\n")
                       if line.startswith("data: {") and '"choices":[{' in line)
        self.assertEqual(text, "abcdefghij" * 12)
        status, err, elapsed = self.stop()  # already stopping: wait for the exit
        self.assertEqual(status, 0, err)
        self.assertNotIn("Traceback", err)

    def test_sigint_after_the_grace_ends_streams_with_the_dialect_error(self):
        self.start("--shutdown-grace", "0.5")
        self.fake.script.append({"text": "x" * 50, "delay": 0.05, "events_repeat": 200})  # ~30 s
        sock, received = self.open_stream("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 100,
                                                            "messages": [{"role": "user", "content": "hi"}]},
                                          first=b"content_block_delta")
        self.fake.script.append({"text": "slow", "delay": 5})
        waiting = self.connect()  # a non-stream request still waiting for its answer
        waiting.sendall(raw_request("/v1/chat/completions",
                                    {"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}))
        time.sleep(0.3)
        status, err, elapsed = self.stop(signal.SIGINT)
        self.assertEqual(status, 0, err)
        self.assertNotIn("Traceback", err)
        self.assertLess(elapsed, 5)
        answer = self.read_rest(sock, received)
        self.assertIn(b"event: error", answer)
        self.assertIn(b"overloaded_error", answer)
        self.assertTrue(answer.endswith(b"0\r\n\r\n"), answer[-200:])
        self.assertNotIn(b"message_stop", answer)
        waiting.settimeout(5)
        head = waiting.recv(65536)
        self.assertTrue(head.startswith(b"HTTP/1.1 503 "), head)
        self.assertIn(b"shutting down", head)


if __name__ == "__main__":
    unittest.main()
