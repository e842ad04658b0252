"""SETTINGS is the one source of the settings: every Config field has its Setting and back,
each flag is a Setting's, and a help text that names a default names the real one."""

import dataclasses
import os
import re
import unittest
import unittest.mock

from support import ROOT, codex_proxy

ALL_SETTINGS = codex_proxy.SETTINGS + codex_proxy.SETTINGS_WITHOUT_FLAGS
NAMED_DEFAULT = re.compile(r"\(default ([^:;,)\s][^;,)]*)[;,)]")  # "(default 64)", "(default info; ...)"


class OneSourceOfSettingsTest(unittest.TestCase):
    def test_each_config_field_is_a_setting_and_each_setting_a_field(self):
        names = [setting.name for setting in ALL_SETTINGS]
        self.assertEqual(len(names), len(set(names)), "a setting is declared twice")
        self.assertEqual(sorted(field.name for field in dataclasses.fields(codex_proxy.Config)), sorted(names))

    def test_every_setting_the_proxy_reads_is_a_field(self):
        with open(codex_proxy.__file__, encoding="utf-8") as handle:
            source = handle.read()
        # (Not in a file name: a string's "config.toml", a path's /config.toml.)
        read = set(re.findall(r"(?<![\w\"'/`])config\.([a-z_]+)\b", source))
        methods = {name for name in vars(codex_proxy.Config) if callable(getattr(codex_proxy.Config, name, None))
                   or isinstance(vars(codex_proxy.Config)[name], property)}
        fields = {field.name for field in dataclasses.fields(codex_proxy.Config)}
        self.assertEqual(read - fields - methods, set(), "read from a Config but not a setting")

    def test_each_flag_is_a_settings(self):
        parser = codex_proxy.build_arg_parser()
        destinations = {action.dest for action in parser._actions} - {"help", "version"}
        self.assertEqual(destinations, {setting.name for setting in codex_proxy.SETTINGS})
        for setting in codex_proxy.SETTINGS_WITHOUT_FLAGS:
            self.assertEqual((setting.flags, setting.variables), ((), ()), setting.name)

    def test_placeholders_are_words(self):
        for setting in codex_proxy.SETTINGS:
            if not setting.switch:  # --log-level LEVEL, --model-map PATTERN=MODEL; not LOG_LEVEL
                self.assertRegex(setting.metavar, r"^[A-Z]+(=[A-Z]+)?$", setting.name)

    def test_every_codex_proxy_variable_read_or_documented_is_known(self):
        # Those the tests and CI read, and those the file and README name: each a setting's, or one of
        # OTHER_VARIABLES, so that the proxy warns of none of them as misspelt.
        known = {name for setting in codex_proxy.SETTINGS for name in setting.variables}
        known |= set(codex_proxy.OTHER_VARIABLES)
        read = re.compile(r'(?:environ\.get\(|environ\[|from_environment\(|from_variables\()"(CODEX_PROXY_\w+)"')
        named = set()
        for folder, _, files in os.walk(ROOT):
            for name in files:
                path = os.path.join(folder, name)
                if ".git" in path.split(os.sep) or not name.endswith((".py", ".md", "run")):
                    continue
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
                named.update(read.findall(text))
                if name in ("codex_proxy.py", "README.md", "run"):  # .ci/run exports them
                    named.update(re.findall(r"\bCODEX_PROXY_[A-Z][A-Z_]*[A-Z]\b", text))
        self.assertIn("CODEX_PROXY_CLIENTS_DIR", named)
        self.assertEqual(named - known, set())
        self.assertEqual(codex_proxy.unknown_variable_warnings(dict.fromkeys(known, "1")), [])

    def test_a_default_named_in_help_is_the_default(self):
        for setting in ALL_SETTINGS:
            named = NAMED_DEFAULT.search(setting.help)
            if named and not named.group(1).startswith("$"):  # a default from the environment: said in words
                self.assertEqual(named.group(1), setting.default, setting.name)
                self.assertEqual(setting.value(named.group(1)), getattr(codex_proxy.Config(), setting.name))

    def test_a_config_made_in_code_is_the_empty_command_lines(self):
        # Two ways to a Config: Config() (the fields' defaults) and the command line with no flag
        # and no CODEX_PROXY_ variable (read_settings); they must agree on every setting.
        environment = {name: value for name, value in os.environ.items() if not name.startswith("CODEX_PROXY_")}
        with unittest.mock.patch.dict(os.environ, environment, clear=True):
            from_code, from_flags = codex_proxy.Config(), codex_proxy.config_from_args([])
        for setting in ALL_SETTINGS:
            self.assertEqual(getattr(from_code, setting.name), getattr(from_flags, setting.name), setting.name)
        self.assertEqual((from_code.port, from_code.max_body_bytes, from_code.heartbeat_interval), (8765, 64 << 20, 15))
        config = codex_proxy.Config(codex_home="/tmp/x")
        self.assertEqual((config.codex_home, config.codex_homes), ("/tmp/x", ["/tmp/x"]))
        self.assertEqual(codex_proxy.Config(codex_homes=["/a", "/b"]).codex_home, "/a")

    def test_fast_fills_only_what_was_not_said(self):
        config = codex_proxy.Config(fast=True, verbosity="high")
        self.assertEqual((config.reasoning_effort, config.verbosity, config.service_tier),
                         ("minimal", "high", "priority"))

    def test_an_unknown_setting_is_refused(self):
        with self.assertRaises(TypeError):
            codex_proxy.Config(no_such_setting=1)


if __name__ == "__main__":
    unittest.main()
