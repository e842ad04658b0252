"""The command line, start-up, and the single-file stdlib-only promise."""

import ast
import contextlib
import io
import os
import re
import subprocess
import sys
import unittest
import urllib.request
from unittest import mock

from support import ROOT, SCRIPT, RunningProxy, closed_port, codex_proxy, run_script, taken_port

NO_HOME = os.path.join(ROOT, "no-such-codex-home")
CLEAN_ENVIRONMENT = {name: value for name, value in os.environ.items()
                     if not name.startswith("CODEX_PROXY_") and name != "OPENAI_API_KEY"}

# Top-level modules of the standard library that codex_proxy.py may import
# (sys.stdlib_module_names exists only from 3.10; this list keeps 3.8 honest).
STDLIB = {"__future__", "_thread", "argparse", "asyncio", "base64", "binascii", "collections", "concurrent", "contextvars", "copy", "ctypes", "dataclasses", "datetime",
          "difflib", "errno", "fcntl", "fnmatch", "functools", "msvcrt", "signal", "hashlib", "hmac", "http", "ipaddress", "itertools", "json", "logging", "math", "os", "plistlib", "random", "re", "selectors", "shlex",
          "shutil", "socket", "ssl", "struct", "subprocess", "sys", "tempfile", "threading", "time", "types", "urllib", "uuid", "webbrowser", "zlib"}


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
        err = io.StringIO()
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(err):
            codex_proxy.config_from_args(["--model-map", "nonsense"])
        self.assertEqual(err.getvalue().splitlines()[0], "codex_proxy.py: --model-map takes PATTERN=MODEL, not 'nonsense'")

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
        self.assertEqual((status, err.splitlines()), (2, [
            "codex_proxy.py: CODEX_PROXY_PORT (--port) must be a whole number, not 'abc'",
            "See `python3 codex_proxy.py --help`."]))

    def test_refuses_a_public_address_without_an_api_key(self):
        status, _, err = run_script(self, ["--host", "0.0.0.0", "--port", "0"])
        self.assertEqual(status, 2)
        self.assertIn("--api-key", err)

    def test_a_bad_ca_bundle_is_named_at_start(self):
        env = dict(os.environ, SSL_CERT_FILE=os.path.join(ROOT, "no-such-bundle.pem"))
        status, _, err = run_script(self, ["--port", "0"], env)
        self.assertEqual(status, 2)
        self.assertIn("CA bundle", err)

    def test_a_port_another_program_holds_is_named_with_its_holder_and_another_port(self):
        port = taken_port(self)  # held by this process, which answers nothing there
        status, _, err = run_script(self, ["--port", str(port), "--quiet"], dict(CLEAN_ENVIRONMENT, CODEX_HOME=NO_HOME))
        self.assertEqual(status, 1)
        taken, fix = err.splitlines()
        self.assertTrue(taken.startswith("codex_proxy.py: cannot listen on 127.0.0.1:%d: the port is taken by " % port),
                        taken)
        if os.path.exists("/proc/net/tcp"):  # Linux tells which process has it
            self.assertIn("process %d (" % os.getpid(), taken)
        self.assertRegex(fix, r"^  start this one on another port: --port (\d+) or --port 0 \(any free one\)$")
        self.assertGreater(int(re.search(r"--port (\d+)", fix).group(1)), port)

    def test_a_port_a_codex_proxy_holds_is_named_with_its_version_and_url(self):
        port = closed_port()
        proxy = RunningProxy(codex_proxy.Config(port=port, codex_home=NO_HOME)).start()
        self.addCleanup(proxy.stop)
        status, _, err = run_script(self, ["--port", str(port), "--quiet"], dict(CLEAN_ENVIRONMENT, CODEX_HOME=NO_HOME))
        self.assertEqual(status, 1)
        taken, fix = err.splitlines()
        self.assertRegex(taken, r"^codex_proxy.py: cannot listen on 127.0.0.1:%d: a codex-proxy %s already answers "
                                r"there, at http://127.0.0.1:%d \(up \d+s\)$" % (port, re.escape(codex_proxy.__version__),
                                                                                port))
        self.assertRegex(fix, r"^  use it, or start this one on another port: (--port \d+ or )?--port 0 \(any free "
                              r"one\)$")

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
            self.assertIn("python3 codex_proxy.py login", login)
            self.assertIn("codex login", login)
            with urllib.request.urlopen(match.group(1) + "/health", timeout=5) as answer:
                self.assertEqual(answer.status, 200)
        finally:
            proc.terminate()
            proc.communicate(timeout=10)


COMMAND_NAMES = ["login", "logout", "doctor", "usage", "claude", "codex", "config", "install-service"]


class CommandLineTests(unittest.TestCase):
    """What a new user sees on a slip: one line saying what is wrong and one saying where to read more
    (exit status 2), the nearest flag or command, each command's own flags, warnings for variables that
    are no setting."""

    def refusal(self, args, **env):
        """The lines of a refused command line but its last, which must point at the --help of the
        command it was for."""
        status, out, err = run_script(self, args, dict(CLEAN_ENVIRONMENT, CODEX_HOME=NO_HOME, **env))
        lines = err.splitlines()
        command = " " + args[0] if args and args[0] in COMMAND_NAMES else ""
        self.assertEqual((status, out, lines[-1]), (2, "", "See `python3 codex_proxy.py%s --help`." % command), err)
        self.assertNotIn("usage: codex_proxy.py", err)  # argparse's usage block
        return lines[:-1]

    def test_a_bad_flag_or_value_is_one_line_for_the_server_and_every_command(self):
        for args, env, line in (
                (["--port", "99999"], {}, "codex_proxy.py: --port must be a port from 0 to 65535, not 99999"),
                ([], {"CODEX_PROXY_PORT": "99999"},
                 "codex_proxy.py: CODEX_PROXY_PORT (--port) must be a port from 0 to 65535, not 99999"),
                (["--login-strategy", "fastest"], {}, "codex_proxy.py: --login-strategy must be one of headroom, "
                 "fill-first, round-robin, not 'fastest'"),
                ([], {"CODEX_PROXY_LOGIN_STRATEGY": "random"}, "codex_proxy.py: CODEX_PROXY_LOGIN_STRATEGY "
                 "(--login-strategy) must be one of headroom, fill-first, round-robin, not 'random'"),
                (["--login-recheck-interval", "0"], {},
                 "codex_proxy.py: --login-recheck-interval must be more than 0, not 0"),
                ([], {"CODEX_PROXY_LOGIN_RECHECK_INTERVAL": "soon"},
                 "codex_proxy.py: CODEX_PROXY_LOGIN_RECHECK_INTERVAL (--login-recheck-interval) must be a number, "
                 "not 'soon'"),
                (["--prot", "9000"], {}, "codex_proxy.py: no flag --prot; did you mean --port?"),
                (["--log-level"], {}, "codex_proxy.py: --log-level needs a value"),
                (["doctor", "--auth", "nope"], {},
                 "codex_proxy.py doctor: --auth must be one of auto, chatgpt, apikey, not 'nope'"),
                (["doctor"], {"CODEX_PROXY_AUTH": "nope"},
                 "codex_proxy.py doctor: CODEX_PROXY_AUTH (--auth) must be one of auto, chatgpt, apikey, not 'nope'"),
                (["doctor", "--ofline"], {}, "codex_proxy.py doctor: no flag --ofline; did you mean --offline?"),
                (["usage", "--port", "9000"], {},
                 "codex_proxy.py usage: --port is the server's flag, not one of this command's"),
                (["usage", "now"], {}, "codex_proxy.py usage: takes no argument 'now'"),
                (["login", "--proxy", "socks9://x"], {},
                 "codex_proxy.py login: --proxy must look like http://HOST:PORT, not 'socks9://x'"),
                (["login"], {"CODEX_PROXY_PROXY": "socks9://x"},
                 "codex_proxy.py login: CODEX_PROXY_PROXY (--proxy) must look like http://HOST:PORT, not 'socks9://x'"),
                (["logout", "--browser"], {}, "codex_proxy.py logout: no flag --browser")):
            self.assertEqual(self.refusal(args, **env), [line], args)

    def test_a_word_that_is_no_command_is_told_the_nearest_and_all_of_them(self):
        lines = self.refusal(["logni"])
        self.assertEqual(lines[:2], ["codex_proxy.py: no command 'logni'; did you mean 'login'?", "The commands:"])
        self.assertEqual([line.split()[0] for line in lines[2:]], COMMAND_NAMES)
        self.assertEqual(self.refusal(["--port", "9000", "doctr"])[0],
                         "codex_proxy.py: no command 'doctr'; did you mean 'doctor'?")
        self.assertEqual(self.refusal(["serve"])[:2], ["codex_proxy.py: no command 'serve'", "The commands:"])
        # A command after server flags (the launchers' order) is told where its flags go.
        self.assertEqual(self.refusal(["--proxy", "http://x:1", "usage"]),
                         ["codex_proxy.py: the usage command's flags go after it: codex_proxy.py usage [FLAGS]"])

    def test_the_help_shows_the_commands_and_placeholders_in_words(self):
        status, out, _ = run_script(self, ["--help"])
        self.assertEqual(status, 0)
        self.assertIn("codex_proxy.py COMMAND [FLAGS]", out)
        for name, summary in codex_proxy.COMMANDS:
            self.assertRegex(out, r"\n  %s +%s\n" % (name, re.escape(summary)))
        for flag in ("--log-level LEVEL", "--port PORT", "--host HOST", "--model-map PATTERN=MODEL",
                     "--max-body-mb MB", "--shutdown-grace SECONDS"):
            self.assertIn(flag, out)
        self.assertNotRegex(out, r"--[a-z-]+ [A-Z]+_[A-Z_]+")  # no LOG_LEVEL, SHUTDOWN_GRACE...

    def test_each_command_help_shows_only_its_own_flags(self):
        def flags(command):
            status, out, _ = run_script(self, [command, "--help"])
            self.assertEqual(status, 0)
            return set(re.findall(r"^  (?:-h, )?(--[a-z-]+)", out, re.M))
        upstream = {"--help", "--config", "--auth", "--codex-home", "--chatgpt-base-url", "--openai-base-url",
                    "--proxy", "--log-level"}
        self.assertEqual(flags("usage"), upstream)
        self.assertEqual(flags("doctor"), upstream | {"--offline", "--reasoning-effort", "--verbosity",
                                                      "--service-tier", "--fast", "--default-model", "--model-map",
                                                      "--upstream-idle-timeout"})
        self.assertEqual(flags("login"), {"--help", "--browser", "--proxy", "--codex-home"})
        self.assertEqual(flags("logout"), {"--help", "--codex-home"})

    def test_a_variable_that_is_no_setting_is_warned_of_with_the_nearest(self):
        env = dict(CLEAN_ENVIRONMENT, CODEX_PROXY_PROT="9000", CODEX_PROXY_ZZYZX="1",
                   CODEX_PROXY_UPSTREAM_THREADS="8", CODEX_HOME=NO_HOME,
                   **dict.fromkeys(codex_proxy.OTHER_VARIABLES, "1"))
        warnings = ["codex_proxy.py: WARNING: CODEX_PROXY_PROT is not a setting (ignored); did you mean "
                    "CODEX_PROXY_PORT (--port)?", "codex_proxy.py: WARNING: CODEX_PROXY_ZZYZX is not a setting (ignored)"]
        for args in (["--version"], ["logout"], ["usage", "--openai-base-url", "http://127.0.0.1:9", "--help"]):
            status, _, err = run_script(self, args, env)
            self.assertEqual((status, err.splitlines()[:2]), (0, warnings), args)
        self.assertNotIn("WARNING", run_script(self, ["--version"], dict(CLEAN_ENVIRONMENT, CODEX_PROXY_PORT="1"))[2])

    def test_the_nearest_setting_is_found_by_what_follows_the_prefix(self):
        self.assertEqual(codex_proxy.unknown_variable_warnings({"CODEX_PROXY_LOGLEVEL": "", "CODEX_PROXY_": "",
                                                                "CODEX_PROXY_MAX_STREAMS": "", "OTHER": ""}), [
            "CODEX_PROXY_ is not a setting (ignored)",
            "CODEX_PROXY_LOGLEVEL is not a setting (ignored); did you mean CODEX_PROXY_LOG_LEVEL (--log-level)?"])


if __name__ == "__main__":
    unittest.main()
