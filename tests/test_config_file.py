"""--config FILE: a JSON object of settings (their long flags as keys), under the flags and over
the variables; each way it can be wrong refused in one line (exit 2); `config --print`; SIGHUP
re-reading it in the running proxy (same process, same port), a broken file changing nothing;
`install-service`.

Run: python3 -m unittest tests.test_config_file -v
"""

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import types
import unittest
import unittest.mock

from fake_upstream import FakeCodexBackend
from support import SCRIPT, DumpDirTestCase, codex_proxy, run_script, wait_for, write_auth
from test_local_keys import clean_environment


class ConfigFileTestCase(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="codex-proxy-config-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.path = os.path.join(self.folder, "config.json")

    def write(self, data):
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.write(data if isinstance(data, str) else json.dumps(data))
        return self.path


class PrecedenceTests(ConfigFileTestCase):
    def config(self, argv, **variables):
        with clean_environment(**variables):
            return codex_proxy.config_from_args(argv)

    def test_flag_over_file_over_variable_over_default(self):
        self.write({"port": 9001, "log-level": "debug", "verbosity": "low"})
        config = self.config(["--config", self.path, "--port", "9002"], CODEX_PROXY_PORT="9003",
                             CODEX_PROXY_LOG_LEVEL="warning", CODEX_PROXY_DEFAULT_MODEL="gpt-x")
        self.assertEqual((config.port, config.log_level, config.verbosity, config.default_model),
                         (9002, "debug", "low", "gpt-x"))
        self.assertEqual(config.shutdown_grace, 10)  # the default
        self.assertEqual(config.config_file, self.path)

    def test_the_file_from_its_variable(self):
        self.write({"port": 9004})
        self.assertEqual(self.config([], CODEX_PROXY_CONFIG=self.path).port, 9004)

    def test_values_as_the_flags_take_them(self):
        other = os.path.join(self.folder, "second")
        self.write({"codex_home": [self.folder, other], "api_keys": {"laptop": "k1", "ci": "k2"},
                    "model_map": {"claude-*": "gpt-5.5"}, "allowed-host": ["box.lan"], "quiet": True,
                    "max_body_mb": 2, "upstream_idle_timeout": 2.5, "fast": False})
        config = self.config(["--config", self.path])
        self.assertEqual(config.codex_homes, [self.folder, other])
        self.assertEqual(config.codex_home, self.folder)
        self.assertEqual(config.api_key, [("laptop", "k1"), ("ci", "k2")])
        self.assertEqual(config.model_map, [("claude-*", "gpt-5.5")])
        self.assertEqual((config.allowed_hosts, config.quiet, config.max_body_bytes, config.upstream_idle_timeout,
                          config.fast), (["box.lan"], True, 2 << 20, 2.5, False))

    def test_a_flag_replaces_a_repeatable_options_file_value(self):
        self.write({"api_key": ["laptop=k1", "ci=k2"], "model_map": {"a": "b"}})
        config = self.config(["--config", self.path, "--api-key", "phone=k3"])
        self.assertEqual(config.api_key, [("phone", "k3")])
        self.assertEqual(config.model_map, [("a", "b")])

    def test_doctor_and_usage_read_it_too_each_what_it_takes(self):
        self.write({"codex_home": [self.folder], "port": 9001, "log_level": "error"})
        parser = codex_proxy.command_parser("usage", "", codex_proxy.UPSTREAM_SETTINGS)
        with clean_environment():
            config, _ = codex_proxy.parse_command_line(parser, ["--config", self.path])
        self.assertEqual((config.codex_home, config.log_level, config.port), (self.folder, "error", 8765))

    def test_null_is_not_set(self):
        self.write({"port": None})
        self.assertEqual(self.config(["--config", self.path], CODEX_PROXY_PORT="9005").port, 9005)


class ConfigErrorTests(ConfigFileTestCase):
    def refused(self, *args):
        environment = {name: value for name, value in os.environ.items() if not name.startswith("CODEX_PROXY_")}
        status, out, err = run_script(self, list(args), env=environment)
        self.assertEqual(status, 2, err)
        lines = err.splitlines()
        self.assertEqual(len(lines), 2, err)  # one line, and where to read more
        self.assertEqual(lines[1], "See `python3 codex_proxy.py --help`.")
        return lines[0]

    def test_each_way_a_file_is_wrong_is_one_line_naming_the_file_and_key(self):
        cases = [({"prot": 1}, "%s: prot is no setting; did you mean port?"),
                 ({"port": "x"}, "%s: port must be a whole number, not 'x'"),
                 ({"port": 70000}, "%s: port must be a port from 0 to 65535"),
                 ({"log_level": ["info"]}, "%s: log_level must be a string, a number or true/false, not an array"),
                 ({"reasoning-effort": "huge"}, "%s: reasoning-effort must be one of"),
                 ({"api_key": {"my laptop": "k"}}, "%s: api_key: 'my laptop' cannot be a name here"),
                 ({"model_map": ["no-equals"]}, "%s: model_map takes PATTERN=MODEL"),
                 ({"config": "other.json"}, "%s: config: a config file cannot name another"),
                 ([1, 2], "the config file %s must hold a JSON object"),
                 ('{"port": ', "the config file %s is not JSON"),
                 ("[" * 100000 + "]" * 100000, "the config file %s is not JSON"),
                 # What `config --print` writes without --show-keys: no key anyone could guess.
                 ({"api_keys": {"laptop": "[redacted]"}}, "%s: api_keys is [redacted]: `config --print` hides"),
                 ({"api_key": ["[redacted]"]}, "%s: api_key is [redacted]"),
                 ({"api_key": ["k1", "k2"]}, "%s: api_key names default twice"),
                 ]
        for data, expected in cases:
            self.assertIn(expected % self.write(data), self.refused("--config", self.path), data)

    def test_a_file_that_cannot_be_read(self):
        missing = os.path.join(self.folder, "missing.json")
        self.assertEqual(self.refused("--config", missing),
                         "codex_proxy.py: cannot read the config file %s: No such file or directory" % missing)

    def test_a_key_given_twice_under_two_spellings(self):
        self.write({"max_streams": 2, "upstream-threads": 3})
        self.assertIn("upstream-threads sets what %s: max_streams does" % self.path,
                      self.refused("--config", self.path))


class ConfigPrintTests(ConfigFileTestCase):
    def test_prints_the_effective_settings_keys_redacted_and_reads_back_the_same(self):
        self.write({"port": 9001, "api_key": {"laptop": "SECRET-1"}, "model_map": {"claude-*": "gpt-5.5"},
                    "quiet": True})
        environment = {name: value for name, value in os.environ.items() if not name.startswith("CODEX_PROXY_")}
        status, out, err = run_script(self, ["config", "--print", "--config", self.path, "--verbosity", "low"],
                                      env=environment)
        self.assertEqual(status, 0, err)
        printed = json.loads(out)
        self.assertNotIn("SECRET", out)
        self.assertEqual(printed["api_key"], {"laptop": "[redacted]"})
        self.assertEqual((printed["port"], printed["verbosity"], printed["quiet"], printed["max_body_mb"]),
                         (9001, "low", True, 64))
        status, out, _ = run_script(self, ["config", "--print", "--show-keys", "--config", self.path], env=environment)
        self.assertEqual(json.loads(out)["api_key"], {"laptop": "SECRET-1"})
        self.write(out)  # the printed file, read back: the same settings
        with clean_environment():
            again = codex_proxy.config_from_args(["--config", self.path])
            first = codex_proxy.config_from_args(["--port", "9001", "--api-key", "laptop=SECRET-1", "--model-map",
                                                  "claude-*=gpt-5.5", "--quiet"])
        for setting in codex_proxy.SETTINGS[1:]:
            self.assertEqual(getattr(again, setting.name), getattr(first, setting.name), setting.name)

    def test_needs_print(self):
        status, _, err = run_script(self, ["config"])
        self.assertEqual(status, 2)
        self.assertIn("config --print", err)


class Reader(threading.Thread):
    """A process's stderr lines, as they come."""

    def __init__(self, stream):
        threading.Thread.__init__(self, daemon=True)
        self.stream, self.lines = stream, []

    def run(self):
        for line in iter(self.stream.readline, b""):
            self.lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    def wait_for_line(self, pattern, after=0):
        def found():
            return [line for line in self.lines[after:] if re.search(pattern, line)]
        if not wait_for(found, timeout=10):
            raise AssertionError("no line like %r in:\n%s" % (pattern, "\n".join(self.lines)))
        return found()[0]


class ReloadTests(ConfigFileTestCase):
    """The proxy as a process of its own, with --config; SIGHUP to it."""

    def setUp(self):
        ConfigFileTestCase.setUp(self)
        self.fake = FakeCodexBackend().start()
        self.addCleanup(self.fake.stop)
        self.fake.valid_access_tokens = {"access-1", "access-2"}
        self.homes = [os.path.join(self.folder, name) for name in ("one", "two")]
        for number, home in enumerate(self.homes, 1):
            os.mkdir(home)
            write_auth(home, access_token="access-%d" % number, refresh_token="refresh-%d" % number)
        self.settings = {"port": 0, "chatgpt_base_url": self.fake.chatgpt_base, "codex_home": self.homes[:1],
                         "api_key": {"laptop": "SECRET-laptop"}, "default_model": "gpt-5.5"}
        self.write(self.settings)
        environment = {name: value for name, value in os.environ.items() if not name.startswith("CODEX_PROXY_")}
        environment.update(CODEX_REFRESH_TOKEN_URL_OVERRIDE=self.fake.token_url)
        environment.pop("OPENAI_API_KEY", None)
        self.proc = subprocess.Popen([sys.executable, SCRIPT, "--config", self.path], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=environment)
        self.addCleanup(self.reap)
        self.log = Reader(self.proc.stderr)
        self.log.start()
        self.port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)",
                                  self.log.wait_for_line("listening on")).group(1))

    def reap(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.join(10)
        self.proc.stderr.close()

    def chat(self, key, model="claude-sonnet-4"):
        return codex_proxy_request(self.port, "/v1/messages", {"model": model, "max_tokens": 50, "messages": [
            {"role": "user", "content": "hi"}]}, key)

    def reload(self, settings):
        seen = len(self.log.lines)
        self.write(settings)
        self.proc.send_signal(signal.SIGHUP)
        return self.log.wait_for_line(r"re-read %s|settings stay as they were" % re.escape(self.path), seen)

    def test_sighup_changes_keys_model_map_and_logins_in_the_same_process_and_port(self):
        self.assertEqual(self.chat("SECRET-laptop")[0], 200)
        line = self.reload(dict(self.settings, api_key={"ci": "SECRET-ci"}, codex_home=self.homes[1:],
                                model_map={"claude-*": "gpt-5.4"}, port=1))
        self.assertIn("changed --api-key, --codex-home, --model-map", line)
        self.assertIn("--port changed in %s: kept as it was until a restart" % self.path,
                      self.log.wait_for_line("--port changed"))
        self.assertEqual(self.chat("SECRET-laptop")[0], 401)  # same port, same process
        self.assertEqual(self.chat("SECRET-ci")[0], 200)
        self.assertIsNone(self.proc.poll())
        first, second = self.fake.requests_to("/backend-api/codex/responses")
        self.assertEqual((first.json["model"], first.headers["authorization"]), ("gpt-5.5", "Bearer access-1"))
        self.assertEqual((second.json["model"], second.headers["authorization"]), ("gpt-5.4", "Bearer access-2"))
        health = json.loads(codex_proxy_request(self.port, "/health", None, "SECRET-ci", "GET")[1])
        self.assertEqual([login["codex_home"] for login in health["logins"]], self.homes[1:])
        self.assertTrue(any(" key ci " in line for line in self.log.lines), self.log.lines)
        self.assertFalse([line for line in self.log.lines if "SECRET" in line])

    def test_a_request_in_flight_ends_on_what_it_started_with(self):
        self.fake.script.append({"text": "one two three four five six seven eight", "delay": 0.1})
        answers = []
        streaming = threading.Thread(target=lambda: answers.append(codex_proxy_request(
            self.port, "/v1/chat/completions", {"model": "claude-sonnet-4", "stream": True, "messages": [
                {"role": "user", "content": "hi"}]}, "SECRET-laptop")))
        streaming.start()
        self.assertTrue(wait_for(lambda: self.fake.requests_to("/backend-api/codex/responses")))
        self.reload(dict(self.settings, api_key={"ci": "SECRET-ci"}, codex_home=self.homes[1:],
                         model_map={"claude-*": "gpt-5.4"}))
        self.assertEqual(self.chat("SECRET-ci")[0], 200)  # a new request: the new settings
        streaming.join(30)
        [(status, body)] = answers
        self.assertEqual(status, 200)
        self.assertIn(b"data: [DONE]", body)  # whole, on the model and login it began with
        first, second = self.fake.requests_to("/backend-api/codex/responses")
        self.assertEqual((first.json["model"], first.headers["authorization"]), ("gpt-5.5", "Bearer access-1"))
        self.assertEqual((second.json["model"], second.headers["authorization"]), ("gpt-5.4", "Bearer access-2"))
        self.assertTrue(self.log.wait_for_line(r"POST /v1/chat/completions -> 200 .* key laptop "))

    def test_a_broken_file_keeps_the_settings(self):
        for broken in ('{"api_key": ', {"api_key": {"ci": "SECRET-ci"}, "verbosty": "low"}):
            line = self.reload(broken)
            self.assertIn("the settings stay as they were", line)
            self.assertIn(self.path, line)
            self.assertEqual(self.chat("SECRET-laptop")[0], 200)
            self.assertEqual(self.chat("SECRET-ci")[0], 401)
        self.assertIsNone(self.proc.poll())
        self.assertFalse([line for line in self.log.lines if "SECRET" in line])

    def test_a_changed_default_is_applied_and_named(self):
        self.assertIn("changed --reasoning-effort", self.reload(dict(self.settings, reasoning_effort="high")))
        self.assertEqual(self.chat("SECRET-laptop")[0], 200)
        [sent] = self.fake.requests_to("/backend-api/codex/responses")
        self.assertEqual(sent.json["reasoning"]["effort"], "high")
        self.assertIn("no change to apply", self.reload(dict(self.settings, reasoning_effort="high")))


class ReloadInFlightTests(DumpDirTestCase):
    def test_a_request_in_flight_is_dumped_where_dump_dir_was_when_it_began(self):
        self.fake.script.append({"text": "slow", "delay": 0.3})
        config = self.proxy.app.config
        result = {}
        thread = threading.Thread(target=lambda: result.update(answer=self.request(
            "POST", "/v1/responses", {"model": "gpt-5.5", "input": "hi"})))
        thread.start()
        wait_for(lambda: self.fake.requests_to("/responses"))
        self.proxy.loop.call_soon_threadsafe(setattr, config, "dump_dir", None)  # what a reload does
        thread.join(10)
        self.assertEqual(result["answer"][0], 200)
        wait_for(lambda: len(self.dumps()) == 1)
        self.assertEqual(len(self.dumps()), 1)


class SighupWithoutConfigTests(unittest.TestCase):
    def test_ends_the_proxy_as_a_closed_terminal_does(self):
        environment = {name: value for name, value in os.environ.items() if not name.startswith("CODEX_PROXY_")}
        proc = subprocess.Popen([sys.executable, SCRIPT, "--port", "0"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=environment)
        log = Reader(proc.stderr)
        log.start()

        def reap():
            proc.kill()
            proc.wait(timeout=10)
            log.join(10)
            proc.stderr.close()
        self.addCleanup(reap)
        log.wait_for_line("listening on")
        proc.send_signal(signal.SIGHUP)  # (nothing to re-read: its usual meaning)
        self.assertEqual(proc.wait(timeout=10), -signal.SIGHUP)


def codex_proxy_request(port, path, body, key, method="POST"):
    """(status, body) of a request to the proxy on `port` with the local key `key`."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json", "x-api-key": key})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


class PollTests(unittest.TestCase):
    def test_without_sighup_a_changed_file_is_reread(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "config.json")
        with open(path, "w") as handle:
            handle.write("{}")
        reloads = []
        watcher = codex_proxy.SettingsReload(None, types.SimpleNamespace(config_file=path))
        watcher.reload = lambda: reloads.append(1)

        async def run():
            task = asyncio.ensure_future(watcher.poll(0.02))
            await asyncio.sleep(0.1)
            self.assertEqual(reloads, [])  # unchanged: not re-read
            with open(path, "w") as handle:
                handle.write('{"port": 1}')
            await changed(1)
            os.remove(path)  # gone for a while (an editor replacing it): no reload, and the watch goes on
            await asyncio.sleep(0.1)
            with open(path, "w") as handle:
                handle.write('{"port": 22}')
            await changed(2)
            task.cancel()

        async def changed(count):
            for _ in range(100):
                await asyncio.sleep(0.02)
                if len(reloads) >= count:
                    break
            self.assertEqual(len(reloads), count)
        asyncio.run(run())
        self.assertEqual(reloads, [1, 1])


class InstallServiceTests(ConfigFileTestCase):
    @unittest.skipUnless(sys.platform.startswith("linux"), "systemd: Linux")
    def test_a_systemd_user_unit_on_linux(self):
        environment = dict(os.environ, HOME=self.folder, XDG_CONFIG_HOME=os.path.join(self.folder, "xdg"))
        environment.pop("CODEX_PROXY_CONFIG", None)
        status, out, err = run_script(self, ["install-service", "--print", "--config", self.path], env=environment)
        self.assertEqual(status, 0, err)
        self.assertIn("\n[Service]\nExecStart=%s %s --config %s\n" % (sys.executable, SCRIPT, self.path), out)
        self.assertIn("\nRestart=on-failure\n", out)
        self.assertIn("\nExecReload=/bin/kill -HUP $MAINPID\n", out)
        self.assertIn("\n[Install]\nWantedBy=default.target\n", out)
        self.assertIn("config --print > %s" % self.path, out)  # the file is not there yet
        self.assertTrue(out.endswith("  systemctl --user daemon-reload\n"
                                     "  systemctl --user enable --now codex-proxy.service\n"), out)
        self.assertFalse(os.path.exists(os.path.join(self.folder, "xdg")))  # --print writes nothing
        self.write({"port": 0})
        status, out, err = run_script(self, ["install-service", "--config", self.path], env=environment)
        unit = os.path.join(self.folder, "xdg", "systemd", "user", "codex-proxy.service")
        self.assertEqual((status, out.splitlines()[0]), (0, "Wrote %s." % unit), err)
        with open(unit) as handle:
            self.assertIn("ExecStart=%s %s --config %s\n" % (sys.executable, SCRIPT, self.path), handle.read())
        self.assertNotIn("config --print", out)

    def test_paths_with_spaces_are_quoted_for_systemd(self):
        unit = codex_proxy.systemd_unit(["/usr/bin/python3", "/home/a b/codex_proxy.py", "--config", "/x/100%.json"])
        self.assertIn('ExecStart=/usr/bin/python3 "/home/a b/codex_proxy.py" --config /x/100%%.json\n', unit)

    def test_a_launchd_plist_for_macos(self):
        plist = codex_proxy.launchd_plist(["/usr/bin/python3", "/p/codex_proxy.py", "--config", "/p/c.json"])
        import plistlib
        data = plistlib.loads(plist.encode())
        self.assertEqual(data["ProgramArguments"], ["/usr/bin/python3", "/p/codex_proxy.py", "--config", "/p/c.json"])
        self.assertTrue(data["RunAtLoad"])


if __name__ == "__main__":
    unittest.main()
