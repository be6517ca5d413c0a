"""Settings: the constants at the top of ipn_receiver.py, overridden by an INI file, then by the
environment; every mistake a one-line message naming the file, the key and the fix."""

import configparser
import os
import shutil
import tempfile
import unittest
from unittest import mock

from helpers import REPO, ipn_receiver

load = ipn_receiver.load_settings
ConfigError = ipn_receiver.ConfigError


class SettingsTestCase(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="ipn-settings-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        # The script's folder, where config.ini is looked for, is a fresh one for each test.
        patcher = mock.patch.object(ipn_receiver, "HERE", self.folder)
        patcher.start()
        self.addCleanup(patcher.stop)

    def write(self, text, name="config.ini", mode="w"):
        path = os.path.join(self.folder, name)
        with open(path, mode) as file:
            file.write(text)
        return path

    def assertConfigError(self, text, *fragments, **environ):
        if text is not None:
            self.write(text)
        with self.assertRaises(ConfigError) as caught:
            load(environ)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message


class Precedence(SettingsTestCase):
    def test_the_constants_in_the_file_are_the_defaults(self):
        config = load({})
        self.assertEqual(config["SHA_PASSPHRASE"], ipn_receiver.SHA_PASSPHRASE)
        self.assertEqual(config["LOG_LEVEL"], "INFO")
        self.assertEqual(config["MAX_BODY_BYTES"], 1024 * 1024)
        self.assertEqual(config["PROCESSING_TIMEOUT"], 300)
        self.assertEqual(config["DATA_DIR"], os.path.join(self.folder, "ipn_data"))
        self.assertIsNone(config["config_file"])

    def test_ini_overrides_the_file_and_environment_overrides_both(self):
        self.write("[digistore24]\nsha_passphrase = from-ini\n[receiver]\nlog_level = debug\n")
        config = load({})
        self.assertEqual(config["SHA_PASSPHRASE"], "from-ini")
        self.assertEqual(config["LOG_LEVEL"], "DEBUG")
        config = load({"IPN_SHA_PASSPHRASE": "from-env", "IPN_LOG_LEVEL": "error"})
        self.assertEqual(config["SHA_PASSPHRASE"], "from-env")
        self.assertEqual(config["LOG_LEVEL"], "ERROR")
        self.assertEqual(config["where"]["SHA_PASSPHRASE"], "environment variable IPN_SHA_PASSPHRASE")

    def test_every_setting_has_its_ini_key_and_environment_variable(self):
        self.write("[digistore24]\nsha_passphrase = a\n[promopit]\nisn_key = b\n[receiver]\n"
                   "data_dir = /srv/data\nlog_level = WARNING\nmax_body_bytes = 2048\n"
                   "processing_timeout = 60\n")
        config = load({})
        self.assertEqual((config["SHA_PASSPHRASE"], config["ISN_KEY"], config["DATA_DIR"],
                          config["LOG_LEVEL"], config["MAX_BODY_BYTES"], config["PROCESSING_TIMEOUT"]),
                         ("a", "b", "/srv/data", "WARNING", 2048, 60))
        config = load({"IPN_SHA_PASSPHRASE": "c", "IPN_ISN_KEY": "d", "IPN_DATA_DIR": "/tmp/x",
                       "IPN_LOG_LEVEL": "DEBUG", "IPN_MAX_BODY_BYTES": "10",
                       "IPN_PROCESSING_TIMEOUT": "5"})
        self.assertEqual((config["SHA_PASSPHRASE"], config["ISN_KEY"], config["DATA_DIR"],
                          config["LOG_LEVEL"], config["MAX_BODY_BYTES"], config["PROCESSING_TIMEOUT"]),
                         ("c", "d", "/tmp/x", "DEBUG", 10, 5))

    def test_empty_values_mean_not_set_there(self):
        self.write("[digistore24]\nsha_passphrase =\n")
        config = load({"IPN_ISN_KEY": ""})
        self.assertEqual(config["SHA_PASSPHRASE"], ipn_receiver.SHA_PASSPHRASE)
        self.assertEqual(config["ISN_KEY"], ipn_receiver.ISN_KEY)

    def test_ipn_config_names_the_file(self):
        path = self.write("[promopit]\nisn_key = elsewhere\n", name="other.ini")
        self.write("[promopit]\nisn_key = beside\n")
        config = load({"IPN_CONFIG": path})
        self.assertEqual(config["ISN_KEY"], "elsewhere")
        self.assertEqual(config["config_file"], path)

    def test_ipn_config_naming_a_missing_file_is_an_error(self):
        self.assertConfigError(None, "IPN_CONFIG", "/nonexistent/ipn.ini",
                               IPN_CONFIG="/nonexistent/ipn.ini")

    def test_relative_data_dir_starts_at_the_script_folder(self):
        self.assertEqual(load({"IPN_DATA_DIR": "data"})["DATA_DIR"], os.path.join(self.folder, "data"))
        self.assertEqual(load({"IPN_DATA_DIR": "/abs/data"})["DATA_DIR"], "/abs/data")
        self.assertEqual(load({"IPN_DATA_DIR": "~/d"})["DATA_DIR"], os.path.expanduser("~/d"))

    def test_use_settings_ignores_ini_and_environment(self):
        self.write("[promopit]\nisn_key = from-ini\n")
        with mock.patch.dict(os.environ, {"IPN_SHA_PASSPHRASE": "from-env"}):
            config = ipn_receiver.use_settings(DATA_DIR=self.folder)
        self.addCleanup(setattr, ipn_receiver, "_settings", None)
        self.assertEqual(config["ISN_KEY"], ipn_receiver.ISN_KEY)
        self.assertEqual(config["SHA_PASSPHRASE"], ipn_receiver.SHA_PASSPHRASE)
        with self.assertRaises(TypeError):
            ipn_receiver.use_settings(SHA_PASSPRASE="typo")


class IniFile(SettingsTestCase):
    def test_values_are_literal_whatever_characters_they_hold(self):
        self.write("[digistore24]\nsha_passphrase = a%b#c;d=e:f \"g\"\n")
        self.assertEqual(load({})["SHA_PASSPHRASE"], 'a%b#c;d=e:f "g"')

    def test_colon_separator_comments_crlf_and_a_bom_are_fine(self):
        self.write(b"\xef\xbb\xbf# comment\r\n; another\r\n[Receiver]\r\nLOG_LEVEL: warning\r\n", mode="wb")
        self.assertEqual(load({})["LOG_LEVEL"], "WARNING")

    def test_example_config_reads_the_same_as_with_configparser(self):
        path = os.path.join(REPO, "config.example.ini")
        ours = ipn_receiver.read_ini_file(path)
        theirs = configparser.ConfigParser(interpolation=None)
        theirs.read(path, encoding="utf-8")
        self.assertEqual(ours, {section: dict(theirs[section]) for section in theirs.sections()})

    def test_example_config_as_shipped_leaves_the_receiver_unconfigured(self):
        shutil.copy(os.path.join(REPO, "config.example.ini"), os.path.join(self.folder, "config.ini"))
        config = load({})
        self.assertEqual(config["config_file"], os.path.join(self.folder, "config.ini"))
        for name in ("SHA_PASSPHRASE", "ISN_KEY"):
            self.assertIn("placeholder", ipn_receiver.secret_problem(config, name))

    def test_malformed_lines(self):
        self.assertConfigError("[receiver]\njust words\n", "config.ini line 2", "key = value")
        self.assertConfigError("log_level = INFO\n", "config.ini line 1", "log_level", "[section]")
        self.assertConfigError("[receiver\n", "line 1", "[receiver]")
        self.assertConfigError("[receiver]\n  log_level = INFO\n", "line 2", "one line")
        self.assertConfigError("[receiver]\nlog_level = INFO\nlog_level = DEBUG\n", "line 3", "twice")

    def test_unknown_keys_are_named(self):
        message = self.assertConfigError("[receiver]\ndata_dri = x\n", "config.ini", "data_dri")
        self.assertIn("[receiver] data_dir", message)

    def test_bad_values_name_where_they_came_from(self):
        self.assertConfigError("[receiver]\nmax_body_bytes = lots\n", "config.ini, [receiver] max_body_bytes",
                               "whole number")
        self.assertConfigError("[receiver]\nprocessing_timeout = -1\n", "processing_timeout")
        self.assertConfigError("[receiver]\nlog_level = LOUD\n", "[receiver] log_level", "DEBUG, INFO")
        os.remove(os.path.join(self.folder, "config.ini"))
        self.assertConfigError(None, "environment variable IPN_MAX_BODY_BYTES", IPN_MAX_BODY_BYTES="1e6")

    def test_bad_values_are_not_echoed(self):
        message = self.assertConfigError("[receiver]\nmax_body_bytes = secret-looking-value\n")
        self.assertNotIn("secret-looking-value", message)

    def test_not_utf8(self):
        self.write(b"[digistore24]\nsha_passphrase = \xff\xfe\n", mode="wb")
        self.assertConfigError(None, "config.ini", "UTF-8")


class Secrets(unittest.TestCase):
    def config(self, **values):
        base = {"SHA_PASSPHRASE": "", "ISN_KEY": ""}
        base.update(values)
        return base

    def test_empty_whitespace_and_placeholders_are_not_set(self):
        for value, state in (("", "is not set"), ("   ", "is not set"),
                             (ipn_receiver.PLACEHOLDERS["SHA_PASSPHRASE"], "still the placeholder")):
            problem = ipn_receiver.secret_problem(self.config(SHA_PASSPHRASE=value), "SHA_PASSPHRASE")
            self.assertIn(state, problem)
            for where in ("SHA_PASSPHRASE", "[digistore24] sha_passphrase", "IPN_SHA_PASSPHRASE"):
                self.assertIn(where, problem)

    def test_a_real_secret_has_no_problem(self):
        self.assertIsNone(ipn_receiver.secret_problem(self.config(ISN_KEY="k-123456"), "ISN_KEY"))

    def test_the_placeholders_of_the_file_and_the_example_config_are_the_same(self):
        with open(os.path.join(REPO, "config.example.ini"), encoding="utf-8") as file:
            example = file.read()
        for name, placeholder in ipn_receiver.PLACEHOLDERS.items():
            self.assertEqual(getattr(ipn_receiver, name), placeholder)
            self.assertIn(placeholder, example)


if __name__ == "__main__":
    unittest.main()
