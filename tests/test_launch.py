"""The launchers: `codex_proxy.py [SETTINGS] claude|codex [ARGS...]` runs the client pointed at a
proxy, the running one or one of its own for the length of the run.

The clients here are a fake: one small Python script installed as both `claude` and `codex` in a
folder that is the launcher's whole PATH. It reports its arguments and environment in a JSON
file, asks the proxy it was pointed at for /v1/models (with the key it was given), and exits
with the status it is told; told to sleep, it waits for a signal instead."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import shutil
import unittest
from unittest import mock

from support import SCRIPT, ProxyTestCase, closed_port, codex_proxy, run_script, wait_for

FAKE_CLIENT = r'''#!%(python)s
import json, os, signal, sys, time, urllib.error, urllib.request

args = sys.argv[1:]
url, token = os.environ.get("ANTHROPIC_BASE_URL"), os.environ.get("ANTHROPIC_AUTH_TOKEN")
for word in args:  # the Codex CLI's -c overrides
    name, _, value = word.partition("=")
    if name == "model_providers.codex-proxy.base_url":
        url = json.loads(value)[:-len("/v1")]
    if name == "model_providers.codex-proxy.env_key":
        token = os.environ.get(json.loads(value))
report = {"argv": args, "url": url, "pid": os.getpid(), "env": {name: os.environ.get(name) for name in (
    "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY", "CODEX_PROXY_API_KEY")}}
if url:
    request = urllib.request.Request(url + "/v1/models", headers={"Authorization": "Bearer %%s" %% token})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            report["models"] = [model["id"] for model in json.load(answer)["data"]]
    except urllib.error.HTTPError as exc:
        report["models"] = exc.code


def tell(**more):
    report.update(more)
    with open(os.environ["FAKE_CLIENT_REPORT"] + ".new", "w") as handle:
        json.dump(report, handle)
    os.replace(os.environ["FAKE_CLIENT_REPORT"] + ".new", os.environ["FAKE_CLIENT_REPORT"])


def on_sigint(number, frame):
    tell(signal=number)
    sys.exit(42)


if not os.environ.get("FAKE_CLIENT_SIGINT_UNHANDLED"):
    signal.signal(signal.SIGINT, on_sigint)
tell(sigint=str(signal.getsignal(signal.SIGINT)))
if os.environ.get("FAKE_CLIENT_SLEEP"):
    time.sleep(float(os.environ["FAKE_CLIENT_SLEEP"]))
sys.exit(int(os.environ.get("FAKE_CLIENT_STATUS", "0")))
'''

CODEX_PROVIDER = ["-c", 'model_provider="codex-proxy"', "-c", 'model_providers.codex-proxy.name="codex-proxy"']


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # all gone already
        pass


def port_is_free(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@unittest.skipUnless(os.name == "posix", "the fake clients are POSIX scripts")
class LauncherTests(ProxyTestCase):
    def setUp(self):
        ProxyTestCase.setUp(self)
        self.root = tempfile.mkdtemp(prefix="codex-proxy-launch-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.bin, self.tmp = os.path.join(self.root, "bin"), os.path.join(self.root, "tmp")
        os.mkdir(self.bin)
        os.mkdir(self.tmp)
        for name in ("claude", "codex"):
            path = os.path.join(self.bin, name)
            with open(path, "w") as handle:
                handle.write(FAKE_CLIENT % {"python": sys.executable})
            os.chmod(path, 0o755)
        self.report_path = os.path.join(self.root, "report.json")

    def env(self, port, **more):
        """The launcher's environment: this one's without any client or proxy setting, the fake
        clients alone on PATH, the test's login and fake backend, `port` as the proxy's port."""
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("ANTHROPIC_", "CODEX_PROXY_", "OPENAI_"))}
        env.update(PATH=self.bin, TMPDIR=self.tmp, HOME=self.root, CODEX_HOME=self.home,
                   CODEX_PROXY_CHATGPT_BASE_URL=self.fake.chatgpt_base, CODEX_PROXY_PORT=str(port),
                   CODEX_REFRESH_TOKEN_URL_OVERRIDE=self.fake.token_url, FAKE_CLIENT_REPORT=self.report_path,
                   ANTHROPIC_API_KEY="sk-ant-of-the-user")
        env.update(more)
        return env

    def launch(self, args, port=None, **more):
        """(exit status, stderr, the fake client's report or None) of the launcher as a process."""
        status, _, err = run_script(self, args, self.env(self.proxy.port if port is None else port, **more))
        return status, err, self.report()

    def report(self):
        if not os.path.exists(self.report_path):
            return None
        with open(self.report_path) as handle:
            return json.load(handle)

    def own_logs(self):
        return [name for name in os.listdir(self.tmp) if name.startswith("codex-proxy-") and name.endswith(".log")]

    def test_claude_without_a_proxy_gets_one_for_its_run(self):
        port = closed_port()
        status, err, report = self.launch(["claude", "-p", "hi", "--port", "1", "--help"], port,
                                          FAKE_CLIENT_STATUS="3")
        self.assertEqual(status, 3, err)  # the client's
        # Its words, as they were, after the base URL as settings (which outrank its settings.json's).
        self.assertEqual(report["argv"], ["--settings", json.dumps({"env": {"ANTHROPIC_BASE_URL": report["url"]}}),
                                          "-p", "hi", "--port", "1", "--help"])
        self.assertEqual(report["env"], {"ANTHROPIC_BASE_URL": report["url"], "ANTHROPIC_AUTH_TOKEN": "unused",
                                         "ANTHROPIC_API_KEY": None, "CODEX_PROXY_API_KEY": None})
        self.assertEqual(report["models"], ["gpt-5.5", "gpt-5.4", "gpt-5.5-mini"])  # through the proxy
        own = int(report["url"].rsplit(":", 1)[1])
        self.assertNotEqual(own, port)  # a free port: the configured one stays free for a proxy of the user's
        self.assertTrue(port_is_free(own))  # stopped with the client
        [log] = self.own_logs()
        self.assertEqual(err.splitlines(), ["codex-proxy: started on %s for this claude run, its log in %s"
                                            % (report["url"], os.path.join(self.tmp, log))])
        with open(os.path.join(self.tmp, log)) as handle:
            self.assertIn("GET /v1/models -> 200", handle.read())

    def test_a_proxy_started_with_no_login_says_so_before_the_client_runs(self):
        empty = os.path.join(self.root, "no-login")
        os.mkdir(empty)
        status, err, report = self.launch(["claude"], closed_port(), CODEX_HOME=empty)
        self.assertEqual(status, 0, err)
        lines = err.splitlines()
        self.assertTrue(lines[0].startswith("codex-proxy: started on "), err)
        # (CODEX_HOME is that folder: the plain commands log in there.)
        self.assertEqual(lines[1:], ["codex-proxy: no working login: run `python3 codex_proxy.py login` "
                                     "or `codex login`"])

    def test_claude_uses_the_running_proxy(self):
        status, err, report = self.launch(["claude"])
        self.assertEqual(status, 0, err)
        self.assertEqual(report["url"], "http://127.0.0.1:%d" % self.proxy.port)
        self.assertEqual(report["models"], ["gpt-5.5", "gpt-5.4", "gpt-5.5-mini"])
        self.assertEqual(err.splitlines(), ["codex-proxy: claude uses the codex-proxy running on %s" % report["url"]])
        self.assertEqual(self.own_logs(), [])  # no second proxy

    def test_the_local_key_reaches_the_client_and_decides_reuse(self):
        keyed = self.start_proxy(api_key="key-one")
        status, err, report = self.launch(["--api-key", "key-one", "claude"], keyed.port)
        self.assertEqual(status, 0, err)
        self.assertEqual(report["url"], "http://127.0.0.1:%d" % keyed.port)
        self.assertEqual((report["env"]["ANTHROPIC_AUTH_TOKEN"], report["models"][0]), ("key-one", "gpt-5.5"))
        # Another key: that proxy would refuse the client, so the launcher starts its own, saying why.
        status, err, report = self.launch(["codex"], keyed.port, CODEX_PROXY_API_KEY="key-two")
        self.assertEqual(status, 0, err)
        self.assertNotEqual(report["url"], "http://127.0.0.1:%d" % keyed.port)
        self.assertEqual((report["env"]["CODEX_PROXY_API_KEY"], report["models"][0]), ("key-two", "gpt-5.5"))
        self.assertIn("the codex-proxy on http://127.0.0.1:%d wants another key" % keyed.port, err)
        self.assertNotIn("key-", err)  # never a key

    def test_a_port_taken_by_something_else_gets_a_proxy_on_another(self):
        taken = int(self.fake.base_url.rsplit(":", 1)[1])  # an HTTP server, but not a codex-proxy
        status, err, report = self.launch(["claude"], taken)
        self.assertEqual(status, 0, err)
        self.assertEqual(report["models"], ["gpt-5.5", "gpt-5.4", "gpt-5.5-mini"])
        self.assertIn("; 127.0.0.1:%d is taken by something that is not a codex-proxy" % taken, err)
        self.assertEqual(len(err.splitlines()), 1, err)

    def test_codex_gets_the_provider_and_the_default_model_as_overrides(self):
        url = "http://127.0.0.1:%d" % self.proxy.port
        provider = CODEX_PROVIDER + ["-c", 'model_providers.codex-proxy.base_url="%s/v1"' % url,
                                     "-c", 'model_providers.codex-proxy.wire_api="responses"',
                                     "-c", "model_providers.codex-proxy.supports_websockets=true"]
        status, err, report = self.launch(["codex", "exec", "hi"])
        self.assertEqual(status, 0, err)
        self.assertEqual(report["argv"], provider + ["-c", 'model="gpt-5.5"', "exec", "hi"])
        self.assertEqual(report["models"][0], "gpt-5.5")
        # The default model as the proxy's settings make it: --default-model, or --model-map's claude-* pattern.
        for settings, model in ((["--default-model", "gpt-5.4"], "gpt-5.4"),
                                (["--model-map", "claude-*=gpt-5.5-mini"], "gpt-5.5-mini")):
            self.launch(settings + ["codex", "exec", "hi"])
            self.assertEqual(self.report()["argv"], provider + ["-c", 'model="%s"' % model, "exec", "hi"])
        for words in (["exec", "-m", "gpt-5.4", "hi"], ["--model=gpt-5.4"], ["exec", "-c", 'model="gpt-5.4"', "hi"]):
            self.launch(["codex"] + words)  # the user's model is the user's
            self.assertEqual(self.report()["argv"], provider + words)

    def test_codex_gets_the_key_through_env_key(self):
        keyed = self.start_proxy(api_key="key-one")
        status, err, report = self.launch(["codex", "exec", "hi"], keyed.port, CODEX_PROXY_API_KEY="key-one")
        self.assertEqual(status, 0, err)
        self.assertIn('model_providers.codex-proxy.env_key="CODEX_PROXY_API_KEY"', report["argv"])
        self.assertEqual((report["env"]["CODEX_PROXY_API_KEY"], report["models"][0]), ("key-one", "gpt-5.5"))
        self.assertNotIn("key-one", " ".join(report["argv"]) + err)

    def test_a_client_not_installed_is_one_line_saying_how_to_install_it(self):
        for program, package in (("claude", "@anthropic-ai/claude-code"), ("codex", "@openai/codex")):
            status, err, report = self.launch([program], PATH=self.tmp)
            self.assertEqual(status, 127)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn("npm install -g " + package, err)
            self.assertIsNone(report)
        self.assertEqual(self.own_logs(), [])  # said before any proxy was started

    def start_sleeping_client(self, program="claude", **more):
        """The launcher with its own proxy, in a process group of its own (as in a terminal), once
        its client sleeps; (the process, the client's report)."""
        env = self.env(closed_port(), FAKE_CLIENT_SLEEP="60", **more)
        proc = subprocess.Popen([sys.executable, SCRIPT, program], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        self.addCleanup(proc.communicate)
        self.addCleanup(kill_group, proc.pid)  # first: what a failed test left sleeping
        self.assertTrue(wait_for(self.report, timeout=20), "the client never started")
        return proc, self.report()

    def test_ctrl_c_reaches_the_client_and_its_status_is_the_launchers(self):
        proc, report = self.start_sleeping_client()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does: the whole foreground group
        self.assertEqual(proc.wait(20), 42)  # the client's status: the launcher let the signal pass
        self.assertEqual(self.report()["signal"], signal.SIGINT)
        self.assertTrue(port_is_free(int(report["url"].rsplit(":", 1)[1])))
        self.assertNotIn(b"Traceback", proc.stderr.read())

    def test_ctrl_c_ends_a_client_that_leaves_it_to_the_system(self):
        proc, report = self.start_sleeping_client(FAKE_CLIENT_SIGINT_UNHANDLED="1")
        self.assertEqual(report["sigint"], str(signal.default_int_handler))  # not inherited as ignored
        os.killpg(proc.pid, signal.SIGINT)
        self.assertEqual(proc.wait(20), 128 + signal.SIGINT)

    def test_sigterm_to_the_launcher_is_passed_on(self):
        proc, report = self.start_sleeping_client("codex")
        proc.terminate()  # to the launcher alone
        self.assertEqual(proc.wait(20), 128 + signal.SIGTERM)  # the client's death, told as a shell would
        self.assertTrue(port_is_free(int(report["url"].rsplit(":", 1)[1])))


class TrustTests(ProxyTestCase):
    """The local key goes only to a proxy of this user's."""

    def test_the_listeners_owner_is_read_from_proc(self):
        if not os.path.exists("/proc/net/tcp"):
            self.skipTest("no /proc/net/tcp here (not Linux)")
        owners = {uid for _, uid in codex_proxy.listening_sockets(self.proxy.port)}
        self.assertEqual(owners, {os.getuid()})
        self.assertEqual(codex_proxy.listening_sockets(closed_port()), [])

    def test_a_listener_of_another_user_is_not_sent_the_key(self):
        config = self.make_config(port=self.proxy.port, api_key="local-SECRET-key")
        url, health, _ = codex_proxy.running_proxy(config)
        self.assertEqual(url, "http://127.0.0.1:%d" % self.proxy.port)  # ours: reused
        never = mock.patch.object(codex_proxy, "codex_proxy_health", side_effect=AssertionError("probed with the key"))
        for owners in ([("12345", os.getuid() + 1)], None):  # another user's; who holds it cannot be told
            with never, mock.patch.object(codex_proxy, "listening_sockets", return_value=owners):
                url, health, why = codex_proxy.running_proxy(config)
            self.assertEqual((url, health), (None, None))
            self.assertIn("does not get the key", why)


class LaunchedProxyTests(ProxyTestCase):
    def test_its_own_proxy_stops_with_the_run_in_this_process(self):
        """In process: a stop that failed would leave the port open and the thread alive (a test of
        the launcher as a process could not tell, its exit closes everything)."""
        own = codex_proxy.LaunchedProxy(self.make_config(port=8765, quiet=True))
        self.addCleanup(own.stop)
        url = own.start()
        port = int(url.rsplit(":", 1)[1])
        self.assertNotEqual(port, 8765)  # a free port, never the configured one
        self.assertEqual(self.request("GET", "/health", proxy=mock.Mock(port=port))[0], 200)
        own.stop()
        self.assertFalse(own.thread.is_alive())
        self.assertTrue(port_is_free(port))
        if own.log_path:
            os.remove(own.log_path)


class CodexConfigModelTests(unittest.TestCase):
    def test_a_model_the_codex_config_names_at_its_top_level(self):
        home = tempfile.mkdtemp(prefix="codex-config-")
        self.addCleanup(shutil.rmtree, home, True)
        cases = [('model = "gpt-5.4"\n[profiles.x]\nmodel = "y"\n', "gpt-5.4"),
                 ("# a comment\nmodel='o3'\n", "o3"),
                 ('[profiles.x]\nmodel = "y"\n', None),
                 ('model_provider = "codex-proxy"\n', None)]
        for text, model in cases:
            with open(os.path.join(home, "config.toml"), "w") as handle:
                handle.write(text)
            self.assertEqual(codex_proxy.codex_config_model(home), model, text)
        os.remove(os.path.join(home, "config.toml"))
        self.assertIsNone(codex_proxy.codex_config_model(home))


class LaunchWordsTests(unittest.TestCase):
    def test_flags_before_the_command_word_are_the_servers(self):
        split = codex_proxy.launch_words
        self.assertEqual(split(["--port", "9000", "claude", "--port", "1"]), (["--port", "9000"], "claude",
                                                                               ["--port", "1"]))
        self.assertEqual(split(["--po", "9", "--fast", "--model-map", "a=b", "codex", "-m", "x"]),
                         (["--po", "9", "--fast", "--model-map", "a=b"], "codex", ["-m", "x"]))
        self.assertEqual(split(["--port=9000", "codex"]), (["--port=9000"], "codex", []))
        self.assertEqual(split(["claude", "--help"]), ([], "claude", ["--help"]))
        for argv in ([], ["--port", "9000"], ["--port", "claude"], ["--default-model", "codex"], ["doctor"],
                     ["serve", "claude"]):
            self.assertIsNone(split(argv), argv)

    def test_help_names_the_launchers(self):
        status, out, _ = run_script(self, ["--help"])
        self.assertEqual(status, 0)
        self.assertRegex(out, r"\n  claude +run Claude Code on the proxy")
        self.assertRegex(out, r"\n  codex +run the Codex CLI on the proxy")
        self.assertIn("every word after the client's name is the client's", out)

    def test_a_model_the_user_names_for_codex(self):
        for args in (["-m", "x"], ["exec", "--model", "x"], ["--model=x"], ["-mx"], ["-c", "model=x"], ["-p", "work"],
                     ["--profile=work"],
                     ["--config", 'model="x"'], ["--config=model=x"]):
            self.assertTrue(codex_proxy.codex_model_named(args), args)
        for args in ([], ["exec", "use -m x"], ["-c", "model_provider=x"], ["exec", "--", "-m"]):
            self.assertFalse(codex_proxy.codex_model_named(args), args)


if __name__ == "__main__":
    unittest.main()
