"""The command line, start-up, and the single-file stdlib-only promise."""

import ast
import os
import re
import subprocess
import sys
import unittest
import urllib.request
from unittest import mock

from support import ROOT, SCRIPT, codex_proxy, run_script, taken_port

# Top-level modules of the standard library that codex_proxy.py may import
# (sys.stdlib_module_names exists only from 3.10; this list keeps 3.8 honest).
STDLIB = {"__future__", "_thread", "argparse", "asyncio", "base64", "binascii", "collections", "concurrent", "contextvars", "copy", "ctypes", "dataclasses", "datetime",
          "fcntl", "fnmatch", "functools", "msvcrt", "signal", "hashlib", "hmac", "http", "ipaddress", "itertools", "json", "logging", "math", "os", "random", "re", "selectors",
          "socket", "ssl", "struct", "sys", "tempfile", "threading", "time", "types", "urllib", "uuid", "webbrowser", "zlib"}


class SingleFileTests(unittest.TestCase):
    def setUp(self):
        with open(SCRIPT, encoding="utf-8") as handle:
            self.source = handle.read()

    def imported_modules(self):
        names = set()
        for node in ast.walk(ast.parse(self.source)):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                self.assertEqual(node.level, 0)
                names.add(node.module.split(".")[0])
        return names

    def test_imports_only_the_standard_library(self):
        names = self.imported_modules()
        self.assertTrue(names)
        self.assertEqual(names - STDLIB, set())
        if hasattr(sys, "stdlib_module_names"):
            self.assertEqual(names - set(sys.stdlib_module_names) - {"__future__"}, set())

    def test_parses_with_python_3_8_grammar(self):
        ast.parse(self.source, feature_version=(3, 8))
        compile(self.source, SCRIPT, "exec")

    def test_sections_follow_the_data_flow(self):
        banners = re.findall(r"^# ---- (.+?) -+$", self.source, re.M)
        order = ["configuration", "credentials", "upstream client", "HTTP server", "translators", "routes",
                 "command line"]
        positions = [next(i for i, b in enumerate(banners) if b.startswith(name)) for name in order]
        self.assertEqual(positions, sorted(positions))


class ArgumentTests(unittest.TestCase):
    def test_flags_and_environment(self):
        env = {"CODEX_PROXY_PORT": "9123", "CODEX_PROXY_FAST": "1", "CODEX_PROXY_MODEL_MAP": "claude-*=gpt-5.4"}
        with mock.patch.dict(os.environ, env):
            config = codex_proxy.config_from_args(["--verbosity", "high", "--model-map", "gpt-4*=gpt-5.5"])
        self.assertEqual(config.port, 9123)
        self.assertEqual((config.reasoning_effort, config.verbosity, config.service_tier),
                         ("minimal", "high", "priority"))  # --fast fills only what was not said
        self.assertEqual(config.model_map, [("gpt-4*", "gpt-5.5")])  # the flag, not its variable
        with mock.patch.dict(os.environ, {"CODEX_HOME": "/tmp/cli-home", "CODEX_PROXY_MODEL_MAP": "a=b,c=d"}):
            self.assertEqual(codex_proxy.config_from_args([]).model_map, [("a", "b"), ("c", "d")])
            config = codex_proxy.config_from_args(["--codex-home", "/tmp/work", "--codex-home", "/tmp/home"])
        self.assertEqual(config.codex_homes, ["/tmp/work", "/tmp/home"])  # not CODEX_HOME's as well
        config = codex_proxy.config_from_args(["--max-body-mb", "2", "--upstream-threads", "80"])
        self.assertEqual((config.max_body_bytes, config.max_streams), (2 * 1024 * 1024, 80))  # an alias now
        with self.assertRaises(SystemExit):
            codex_proxy.config_from_args(["--model-map", "nonsense"])

    def test_loopback_detection(self):
        for host in ("127.0.0.1", "::1", "localhost", "127.5.5.5"):
            self.assertTrue(codex_proxy.is_loopback(host), host)
        for host in ("0.0.0.0", "192.168.1.4", "::", "example.com"):
            self.assertFalse(codex_proxy.is_loopback(host), host)


class ProcessTests(unittest.TestCase):
    def test_help_explains_the_essentials(self):
        status, out, _ = run_script(self, ["--help"])
        self.assertEqual(status, 0)
        for word in ("--port", "--api-key", "--fast", "--model-map", "auth.json", "CODEX_PROXY_"):
            self.assertIn(word, out)

    def test_a_bad_environment_value_is_a_usage_error(self):
        status, _, err = run_script(self, [], dict(os.environ, CODEX_PROXY_PORT="abc"))
        self.assertEqual(status, 2)
        self.assertIn("invalid int value: 'abc'", err)
        self.assertNotIn("Traceback", err)

    def test_refuses_a_public_address_without_an_api_key(self):
        status, _, err = run_script(self, ["--host", "0.0.0.0", "--port", "0"])
        self.assertEqual(status, 2)
        self.assertIn("--api-key", err)

    def test_a_bad_ca_bundle_is_named_at_start(self):
        env = dict(os.environ, SSL_CERT_FILE=os.path.join(ROOT, "no-such-bundle.pem"))
        status, _, err = run_script(self, ["--port", "0"], env)
        self.assertEqual(status, 2)
        self.assertIn("CA bundle", err)

    def test_a_taken_port_is_one_line_naming_it(self):
        port = taken_port(self)
        status, _, err = run_script(self, ["--port", str(port), "--quiet"],
                                    dict(os.environ, CODEX_HOME=os.path.join(ROOT, "no-such-codex-home")))
        self.assertEqual(status, 1)
        self.assertIn("cannot listen on 127.0.0.1:%d" % port, err)
        self.assertNotIn("Traceback", err)

    def test_starts_prints_its_url_and_serves_health(self):
        env = dict(os.environ, CODEX_HOME=os.path.join(ROOT, "no-such-codex-home"))
        env.pop("OPENAI_API_KEY", None)
        proc = subprocess.Popen([sys.executable, SCRIPT, "--port", "0"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            line = proc.stderr.readline()  # the start lines go to stderr
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            self.assertIsNotNone(match, line)
            login = proc.stderr.readline()  # says the login is missing, and both ways to make one
            self.assertIn("NO LOGIN", login)
            self.assertIn("python codex_proxy.py login", login)
            self.assertIn("codex login", login)
            with urllib.request.urlopen(match.group(1) + "/health", timeout=5) as answer:
                self.assertEqual(answer.status, 200)
        finally:
            proc.terminate()
            proc.communicate(timeout=10)


if __name__ == "__main__":
    unittest.main()
