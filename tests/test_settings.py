"""Settings: the constants at the top of ipn_receiver.py, overridden by an INI file, then by the
environment; every mistake a one-line message naming the file, the key and the fix."""

import configparser
import os
import shutil
import sys
import sqlite3
import tempfile
import time
import unittest
from unittest import mock

from helpers import PASSPHRASE, REPO, fixture, forget_settings, generated, ipn_receiver, payment, post, signed

load = ipn_receiver.load_settings
ConfigError = ipn_receiver.ConfigError


# Lines an INI file is generated from: sections, settings, comments, and what looks like them.
INI_LINES = ["[receiver]", "[digistore24]", "[promopit]", "[Receiver]", "[ receiver ]", "[DEFAULT]", "[]", "[x",
             "log_level = DEBUG", "LOG_LEVEL: info", "data_dir=/srv/ipn", "sha_passphrase = a=b:c # d ; e",
             "isn_key =   ", "isn_key = \u00e4\u2028\x85\x0c", "key", "= value", ": value", "# comment",
             "; comment", "   # indented comment", "", "   ", "\t", " continued", "\tcontinued", "k = %(x)s"]


class SettingsTestCase(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="ipn-settings-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        # The script's folder, where config.ini is looked for, is a fresh one for each test.
        patcher = mock.patch.object(ipn_receiver, "HERE", self.folder)
        patcher.start()
        self.addCleanup(patcher.stop)

    def write(self, text, name="config.ini"):
        """Write the file: bytes as they are, text as UTF-8; dated two seconds ago, as one uploaded
        before the call (a file changed just now is waited for: see AFileBeingUploaded)."""
        path = os.path.join(self.folder, name)
        with open(path, "wb") as file:
            file.write(text if isinstance(text, bytes) else text.encode("utf-8"))
        os.utime(path, (time.time() - 2, time.time() - 2))
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
        self.location = caught.exception.location           # the short form an answer shows:
        self.assertNotIn(self.folder, self.location)        # never a path
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

    def test_log_level_is_read_in_ascii_cases_only(self):
        # "ınfo".upper() is "INFO" from Python 3.7 on, not in 3.6, where every call then failed
        # (the 43rd review): one rule everywhere, and the dotless i is no i.
        for level in ("ınfo", "\u0130NFO"):
            with self.subTest(level=level), self.assertRaises(ipn_receiver.ConfigError):
                load({"IPN_LOG_LEVEL": level})
        self.assertEqual(load({"IPN_LOG_LEVEL": "Info"})["LOG_LEVEL"], "INFO")

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

    def test_a_placeholder_in_config_ini_means_not_set_there(self):
        # config.example.ini copied as it is, to set data_dir: the passphrase at the top of the file
        # stays in use (the 51st review: the placeholder overrode it, and every call got 503).
        shutil.copy(os.path.join(REPO, "config.example.ini"), os.path.join(self.folder, "config.ini"))
        with mock.patch.object(ipn_receiver, "SHA_PASSPHRASE", "a-real-passphrase"):
            config = load({})
        self.assertEqual(config["SHA_PASSPHRASE"], "a-real-passphrase")
        self.assertEqual(config["where"]["SHA_PASSPHRASE"], "SHA_PASSPHRASE at the top of ipn_receiver.py")
        self.assertEqual(config["ISN_KEY"], ipn_receiver.PLACEHOLDERS["ISN_KEY"])

    def test_ipn_config_names_the_file(self):
        path = self.write("[promopit]\nisn_key = elsewhere\n", name="other.ini")
        self.write("[promopit]\nisn_key = beside\n")
        config = load({"IPN_CONFIG": path})
        self.assertEqual(config["ISN_KEY"], "elsewhere")
        self.assertEqual(config["config_file"], path)

    def test_ipn_config_naming_a_missing_file_is_an_error(self):
        message = self.assertConfigError(None, IPN_CONFIG="/nonexistent/ipn.ini")
        self.assertEqual(message, "IPN_CONFIG names /nonexistent/ipn.ini, which is not a file; correct the path or "
                                  "unset IPN_CONFIG")
        self.assertEqual(self.location, "the environment variable IPN_CONFIG")

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root, to give the file another owner")
    def test_a_config_file_another_user_wrote_is_refused(self):
        # IPN_CONFIG=/tmp/ipn.ini, made first by another user: their passphrase would verify their calls.
        path = self.write("[digistore24]\nsha_passphrase = their-own-passphrase\n", name="ipn.ini")
        os.chown(path, 65534, 65534)
        message = self.assertConfigError(None, "%s: another user of this server could change it, and so give the "
                                               "receiver a passphrase or a data folder of their own; keep it in a "
                                               "folder of your own" % path, IPN_CONFIG=path)
        self.assertNotIn("their-own", message)
        self.assertEqual(self.location, "ipn.ini")
        os.chown(path, 0, 65534)                # root's: read
        self.assertEqual(load({"IPN_CONFIG": path})["SHA_PASSPHRASE"], "their-own-passphrase")
        # A link to it that another user made: they could make it lead to a file of theirs.
        link = os.path.join(self.folder, "link.ini")
        os.symlink(path, link)
        os.chown(link, 65534, 65534, follow_symlinks=False)
        self.assertConfigError(None, "%s: another user of this server could change it," % link, IPN_CONFIG=link)

    def test_a_config_file_others_may_write_to_is_refused(self):
        # Mode 666 after an upload under umask 000, or beside the script in a folder every user
        # may write to: another user could put their passphrase and data folder into it.
        path = self.write("[digistore24]\nsha_passphrase = the-vendors-passphrase\n")
        self.assertEqual(load({})["SHA_PASSPHRASE"], "the-vendors-passphrase")      # 644: read (check reports it)
        os.chmod(path, 0o666)
        message = self.assertConfigError(None)
        self.assertEqual(message, "%s: another user of this server could change it, and so give the receiver a "
                                  "passphrase or a data folder of their own; keep it in a folder of your own, owned by "
                                  "the user the receiver runs as, chmod 600 (`python3 ipn_receiver.py check`)" % path)
        os.chmod(path, 0o600)
        os.chmod(self.folder, 0o777)
        self.addCleanup(os.chmod, self.folder, 0o700)
        self.assertConfigError(None, "%s: another user of this server could change %s," % (path, self.folder))

    def test_relative_data_dir_starts_at_the_script_folder(self):
        self.assertEqual(load({"IPN_DATA_DIR": "data"})["DATA_DIR"], os.path.join(self.folder, "data"))
        self.assertEqual(load({"IPN_DATA_DIR": "/abs/data"})["DATA_DIR"], "/abs/data")

    def test_a_home_folder_in_data_dir_is_the_users_whatever_home_says(self):
        # HOME is set by the web server, suEXEC, sudo and cron each their own way: a data folder
        # that moved with it was another store, where copies ran their handlers again and commands
        # found nothing (the 48th review).
        import pwd
        home = pwd.getpwuid(os.geteuid()).pw_dir
        for value in ("/somewhere/else", None):
            with mock.patch.dict(os.environ):
                os.environ.pop("HOME", None)
                if value:
                    os.environ["HOME"] = value
                self.assertEqual(load({"IPN_DATA_DIR": "~/d"})["DATA_DIR"], os.path.join(home, "d"))
                self.assertEqual(load({"IPN_DATA_DIR": "~"})["DATA_DIR"], os.path.normpath(home))
        self.assertEqual(ipn_receiver.expand_home("~root/d"), os.path.join(pwd.getpwnam("root").pw_dir, "d"))
        self.assertEqual(ipn_receiver.expand_home("a/~/d"), "a/~/d")

    def test_a_data_dir_that_holds_the_script_is_refused(self):
        # The data folder gets an .htaccess that denies the web everything in and below it: the
        # receiver itself, and a whole site beside it.
        for data_dir in (".", self.folder, os.path.dirname(self.folder), self.folder + "/"):
            with self.subTest(data_dir=data_dir):
                self.assertConfigError("[receiver]\ndata_dir = %s\n" % data_dir, "config.ini line 2, [receiver] "
                                       "data_dir: DATA_DIR is the folder the script is in, or one above it")
        for data_dir in ("ipn_data", self.folder + "-data", os.path.join(os.path.dirname(self.folder), "ipn_data")):
            self.write("[receiver]\ndata_dir = %s\n" % data_dir)
            self.assertEqual(load({})["DATA_DIR"], os.path.join(self.folder, data_dir))

    def test_a_data_dir_that_is_a_link_to_the_scripts_folder_is_refused_too(self):
        # cPanel's ~/www is a link to public_html: an .htaccess written there would deny the script.
        link = self.folder + "-link"
        os.symlink(self.folder, link)
        self.addCleanup(os.remove, link)
        self.assertConfigError("[receiver]\ndata_dir = %s\n" % link, "DATA_DIR is the folder the script is in")

    def test_a_data_dir_with_a_nul_is_a_configuration_error(self):
        self.assertConfigError("[receiver]\ndata_dir = /home/you/ipn\x00data\n",
                               "config.ini line 2, [receiver] data_dir: DATA_DIR holds a NUL character")

    def test_a_data_dir_in_quotes_is_refused(self):
        # config.ini takes a value as it is written: the quotes would be part of a folder made inside
        # the script's folder, on the web, while the vendor's folder stayed empty.
        for text in ('[receiver]\ndata_dir = "/home/you/ipn_data"\n', "[receiver]\ndata_dir = 'ipn_data'\n"):
            self.assertConfigError(text, "config.ini line 2, [receiver] data_dir: DATA_DIR is in quotes, which would "
                                         "be part of the folder's name; remove them")
        self.assertConfigError(None, "environment variable IPN_DATA_DIR: DATA_DIR is in quotes",
                               IPN_DATA_DIR='"/home/you/ipn_data"')
        for data_dir in ('"', "a'b'", '"ipn_data'):         # one quote, or not around it: a name like any
            self.assertEqual(load({"IPN_DATA_DIR": data_dir})["DATA_DIR"], os.path.join(self.folder, data_dir))

    def test_a_comment_after_the_data_folder_is_refused(self):
        # "data_dir = /home/you/private   # moved out of the web root": the comment was part of the
        # folder's name, a new empty store, and a payment handled before ran again (the 63rd review).
        for text in ("[receiver]\ndata_dir = /home/you/private   # moved\n", "[receiver]\ndata_dir = data\t; old\n"):
            message = self.assertConfigError(text, "config.ini line 2, [receiver] data_dir: DATA_DIR has a comment "
                                                   "after the folder's name, which would be part of the name; put "
                                                   "the comment on a line of its own")
            self.assertNotIn("starting with #", message)            # (said once)
        self.assertConfigError(None, "environment variable IPN_DATA_DIR: DATA_DIR has a comment",
                               IPN_DATA_DIR="/srv/ipn #2")
        for data_dir in ("/srv/ipn#2", "/srv/ipn;2", "#ipn"):       # no space before it: a name like any
            self.assertEqual(load({"IPN_DATA_DIR": data_dir})["DATA_DIR"], os.path.join(self.folder, data_dir))

    def test_use_settings_ignores_ini_and_environment(self):
        self.write("[promopit]\nisn_key = from-ini\n")
        with mock.patch.dict(os.environ, {"IPN_SHA_PASSPHRASE": "from-env"}):
            config = ipn_receiver.use_settings(DATA_DIR=os.path.join(self.folder, "data"))
        self.addCleanup(setattr, ipn_receiver, "_settings", None)
        self.assertEqual(config["ISN_KEY"], ipn_receiver.ISN_KEY)
        self.assertEqual(config["SHA_PASSPHRASE"], ipn_receiver.SHA_PASSPHRASE)
        with self.assertRaises(TypeError):
            ipn_receiver.use_settings(SHA_PASSPRASE="typo")


    def test_a_setting_whose_line_is_gone_is_named_with_what_is_there_instead(self):
        # A line deleted, or its name misspelt: every call, even a GET, ended in a traceback, and the
        # web server answered with its own 500 page (the 59th review).
        for gone, instead in (("SHA_PASSPHRASE", "SHA_PASSPRASE"), ("ISN_KEY", None), ("LOG_LEVEL", None),
                              ("DATA_DIR", "data_dir")):
            with self.subTest(gone=gone), mock.patch.dict(ipn_receiver.__dict__):
                value = ipn_receiver.__dict__.pop(gone)
                if instead:
                    setattr(ipn_receiver, instead, value)
                self.assertEqual(self.assertConfigError(None), "%s is missing at the top of ipn_receiver.py (its line "
                                 "deleted, or its name misspelt); put its line back as the file came (the README's "
                                 "table of settings gives its default)" % gone)
                self.assertEqual(self.location, "ipn_receiver.py")
                with self.assertRaises(ConfigError):
                    ipn_receiver.use_settings()
        # So is a handler table deleted (PromoPit's, by a vendor who does not use it): check ended in
        # a KeyError that blamed the store, a PromoPit call in an "internal error" (the 64th review).
        for gone in ("PROMOPIT_HANDLERS", "DIGISTORE24_HANDLERS"):
            with self.subTest(gone=gone), mock.patch.dict(ipn_receiver.__dict__):
                del ipn_receiver.__dict__[gone]
                self.assertEqual(self.assertConfigError(None), "%s is missing at the top of ipn_receiver.py (its line "
                                 "deleted, or its name misspelt); put it back as the file came (an empty table is "
                                 "{})" % gone)
                self.assertEqual(self.location, "ipn_receiver.py")


class IniFile(SettingsTestCase):
    def test_values_are_literal_whatever_characters_they_hold(self):
        self.write("[digistore24]\nsha_passphrase = a%b#c;d=e:f \"g\"\n")
        self.assertEqual(load({})["SHA_PASSPHRASE"], 'a%b#c;d=e:f "g"')

    def test_colon_separator_comments_crlf_and_a_bom_are_fine(self):
        self.write(b"\xef\xbb\xbf# comment\r\n; another\r\n[Receiver]\r\nLOG_LEVEL: warning\r\n")
        self.assertEqual(load({})["LOG_LEVEL"], "WARNING")

    @generated(lambda st: st.lists(st.sampled_from(INI_LINES) | st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12), max_size=12), examples=3000)
    def test_files_read_the_same_as_with_configparser(self, lines):
        """read_ini_file stands in for configparser (its import costs a CGI call about 3.5 ms). On
        generated files, whatever one of them reads, the other reads the same; where one refuses a
        file, it is for a difference written down in read_ini_file."""
        text = "\n".join(lines)
        path = self.write(text.encode("utf-8"))
        try:
            ours = ipn_receiver.read_ini_file(path)
        except ConfigError:
            ours = None
        theirs = configparser.ConfigParser(interpolation=None)
        try:
            theirs.read_string(text)
            theirs = {section: dict(theirs[section]) for section in theirs.sections()}
        except configparser.Error:
            theirs = None
        written_down = [
            # section names in any case, spaces inside the brackets dropped; [DEFAULT] not special
            any(line.strip().startswith("[") and (line.strip() != line.strip().lower() or
                                                  line.strip()[1:-1] != line.strip()[1:-1].strip() or
                                                  line.strip().lower() == "[default]") for line in lines),
            # a line starting with a space: configparser's continuation line, refused here
            any(line[:1].isspace() and line.strip() for line in lines),
        ]
        if any(written_down):
            return
        self.assertEqual(ours, theirs, text)

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
        # Nor does it set anything else: copied whole, it froze DATA_DIR, PROCESSING_TIMEOUT, ... at
        # their defaults, and an edit at the top of the script did nothing (the 63rd review).
        self.assertEqual(config["where"], {name: "%s at the top of ipn_receiver.py" % name
                                           for name, _, _, _ in ipn_receiver.SETTINGS_SOURCES})
        # Its [receiver] lines are there to take the # away from, with the defaults as values.
        with open(os.path.join(REPO, "config.example.ini"), encoding="utf-8") as file:
            lines = file.read().split("\n")
        for name, shipped in ipn_receiver.SHIPPED_SETTINGS.items():
            self.assertIn("# %s = %s" % (name.lower(), shipped), lines)
            self.assertEqual(getattr(ipn_receiver, name), shipped)

    def test_malformed_lines(self):
        self.assertConfigError("[receiver]\njust words\n", "config.ini line 2", "key = value")
        self.assertConfigError("log_level = INFO\n", "config.ini line 1", "[section]")
        self.assertConfigError("[receiver\n", "line 1", "a section header is a name in square brackets, like [receiver]")
        self.assertConfigError("[receiver]\n  log_level = INFO\n", "line 2", "one line")
        self.assertConfigError("[receiver]\nlog_level = INFO\nlog_level = DEBUG\n", "line 3", "second time", "line 2")
        self.assertConfigError("[receiver]\nlog_level = INFO\n[digistore24]\n[Receiver]\n", "line 4", "second time")
        self.assertEqual(self.location, "config.ini line 4")

    def test_unknown_keys_are_given_by_line_and_never_shown(self):
        # A secret pasted as a line of its own may look like a key: it is never repeated.
        message = self.assertConfigError("[receiver]\ndata_dri = x\n", "config.ini line 2", "[receiver] data_dir")
        self.assertNotIn("data_dri ", message)
        message = self.assertConfigError("[promopit]\nisn_key =\nSeCrEt-K3y:9f8e7d\n", "config.ini line 3", "unknown")
        self.assertNotIn("secret-k3y", message.lower())
        self.assertEqual(self.location, "config.ini line 3")
        self.assertEqual(message, "config.ini line 3: unknown setting in [promopit] (the settings are [digistore24] "
                                  "sha_passphrase, [promopit] isn_key, [receiver] data_dir, [receiver] log_level, "
                                  "[receiver] max_body_bytes, [receiver] processing_timeout); correct its name, or "
                                  "start the line with # to make it a comment")

    def test_an_unknown_section_is_given_by_the_line_of_its_header(self):
        # Its keys are right, its name is not: the header is the line to correct (the 51st review).
        message = self.assertConfigError("[receiver]\nlog_level = INFO\n\n[digistore]\nsha_passphrase = x\n",
                                         "config.ini line 4: unknown section [digistore] (the settings are "
                                         "[digistore24] sha_passphrase,")
        self.assertTrue(message.endswith("); correct its name"), message)
        self.assertEqual(self.location, "config.ini line 4")

    def test_a_comment_after_a_value_is_named_as_the_mistake(self):
        # Values are literal, so `300 # seconds` is no number (a secret may hold a #: never said of it).
        self.assertConfigError("[receiver]\nprocessing_timeout = 300 # seconds\n", "PROCESSING_TIMEOUT must be a "
                               "whole number greater than 0, like 300 (with nothing after it: a comment is a line of "
                               "its own, starting with #)")
        message = self.assertConfigError("[receiver]\nprocessing_timeout = 300 seconds\n", "like 300")
        self.assertNotIn("comment", message)

    def test_the_ini_readers_every_message_word_for_word(self):
        # (The mutation run of the 51st review's functions: each word is what a vendor is told.)
        for text, message in (
                ("[receiver]\n  log_level = INFO\n", "config.ini line 2: starts with a space; write each setting on "
                                                      "one line, at the start of the line"),
                ("[receiver]\n[Receiver]\n", "config.ini line 2: [receiver] appears a second time; keep one"),
                ("[receiver]\njust words\n", "config.ini line 2: expected `key = value`"),
                ("[receiver]\n=a:b\n", "config.ini line 2: expected `key = value`"),     # (no name before the =)
                ("[receiver]\nlog_level = INFO\nlog_level = DEBUG\n", "config.ini line 3: this setting is set a "
                                                                     "second time in its section (line 2); keep one"),
                ("[receiver]\r\n\r\nlog_level = LOUD\r\n", "config.ini line 3, [receiver] log_level: LOG_LEVEL must be "
                                                          "one of DEBUG, INFO, WARNING, ERROR")):   # (CR LF: one line)
            with self.subTest(text=text):
                self.assertEqual(self.assertConfigError(text), message)
        os.mkdir(os.path.join(self.folder, "a folder"))
        with self.assertRaises(ConfigError) as caught:
            ipn_receiver.read_ini_file(os.path.join(self.folder, "a folder"))
        self.assertEqual(str(caught.exception), "%s: cannot be read (Is a directory); check its permissions"
                         % os.path.join(self.folder, "a folder"))
        # Another user's file: the owner and who reads it are named (the 59th review: "check its
        # permissions" of a file mode 600, as the README says it must be).
        path = self.write("[receiver]\n")
        refused = PermissionError(13, "Permission denied")
        with mock.patch.object(ipn_receiver, "open", side_effect=refused, create=True), \
                mock.patch.object(ipn_receiver, "user_name", lambda uid: {os.geteuid(): "www-data"}.get(uid, "?")), \
                mock.patch.object(os, "stat", return_value=os.stat_result((0o100600, 0, 0, 1, os.geteuid() + 1, 0, 0, 0, 0, 0))), \
                self.assertRaises(ConfigError) as caught:
            ipn_receiver.read_ini_file(path)
        self.assertEqual(str(caught.exception), "%s: cannot be read (Permission denied); it belongs to ?, and this "
                         "runs as www-data: run it as the user the web server runs the receiver as, and make the file "
                         "that user's (chown, chmod 600)" % path)

    def test_lines_end_as_in_pythons_text_files_and_a_value_follows_its_separator_at_once(self):
        self.write("[receiver]\rlog_level=debug\r[digistore24]\rsha_passphrase:=starts-with-an-equals-sign\r")
        config = load({})
        self.assertEqual((config["LOG_LEVEL"], config["SHA_PASSPHRASE"]), ("DEBUG", "=starts-with-an-equals-sign"))

    def test_the_settings_values_at_their_edges(self):
        self.assertEqual(load({"IPN_LOG_LEVEL": "warn"})["LOG_LEVEL"], "WARNING")
        self.assertEqual(load({"IPN_MAX_BODY_BYTES": "1", "IPN_PROCESSING_TIMEOUT": "1"})["MAX_BODY_BYTES"], 1)
        self.assertEqual(self.assertConfigError(None, IPN_MAX_BODY_BYTES="0"), "environment variable "
                         "IPN_MAX_BODY_BYTES: MAX_BODY_BYTES must be a whole number greater than 0, like 1048576")
        with mock.patch.object(ipn_receiver, "DATA_DIR", ""):
            self.assertEqual(load({})["DATA_DIR"], os.path.join(self.folder, "ipn_data"))      # empty: the default
        for quoted in ('""', "'/srv/data'", '"/srv/data"'):
            self.assertIn("DATA_DIR is in quotes", self.assertConfigError(None, IPN_DATA_DIR=quoted))
        self.assertEqual(load({"IPN_DATA_DIR": "XdataX"})["DATA_DIR"], os.path.join(self.folder, "XdataX"))
        self.assertEqual(self.assertConfigError(None, IPN_SHA_PASSPHRASE="\udcff-not-utf-8"), "environment variable "
                         "IPN_SHA_PASSPHRASE: SHA_PASSPHRASE is not valid UTF-8 text; save the file that sets it as UTF-8")

    def test_python_36_names_a_data_folder_in_its_file_system_encoding(self):
        # Before 3.7, SQLite takes the name as UTF-8 and the system in the locale's encoding.
        with mock.patch.object(sys, "version_info", (3, 6, 15)):
            for encoding, name, usable in (("ascii", "data\x80", False), ("ascii", "data\x7f", True),
                                           ("UTF_8", "d\u00e4ta", True)):
                with self.subTest(encoding=encoding, name=name), \
                        mock.patch.object(sys, "getfilesystemencoding", lambda: encoding):
                    if usable:
                        self.assertEqual(load({"IPN_DATA_DIR": name})["DATA_DIR"], os.path.join(self.folder, name))
                    else:
                        self.assertEqual(self.assertConfigError(None, IPN_DATA_DIR=name), "environment variable "
                                         "IPN_DATA_DIR: DATA_DIR holds characters this Python cannot use in a file "
                                         "name (it writes file names as ascii, as Python 3.6 does where the web "
                                         "server sets no LANG); use a DATA_DIR of ASCII characters, or Python 3.7 or "
                                         "later")

    def test_bad_values_name_where_they_came_from(self):
        self.assertConfigError("[receiver]\nmax_body_bytes = lots\n", "config.ini line 2, [receiver] max_body_bytes",
                               "whole number")
        self.assertConfigError("[receiver]\nprocessing_timeout = -1\n", "processing_timeout")
        self.assertConfigError("[receiver]\nlog_level = LOUD\n", "[receiver] log_level", "DEBUG, INFO")
        os.remove(os.path.join(self.folder, "config.ini"))
        with mock.patch.object(ipn_receiver, "LOG_LEVEL", "LOUD"):
            self.assertConfigError(None, "LOG_LEVEL at the top of ipn_receiver.py")
        self.assertEqual(self.location, "ipn_receiver.py")          # (what an answer shows)
        for value in ("1e6", "1_000", "\u0663", "9" * 30):
            self.assertConfigError(None, "environment variable IPN_MAX_BODY_BYTES", IPN_MAX_BODY_BYTES=value)

    def test_a_passphrase_may_hold_any_character_but_a_line_end(self):
        for passphrase in ("a\u2028b", "a\x85b", "a\x0cb", "a\x1cb", "a\u2029b", "a;b # c", "ä=ö:ü"):
            self.write("[digistore24]\nsha_passphrase = %s\n" % passphrase)
            self.assertEqual(load({})["SHA_PASSPHRASE"], passphrase)

    def test_a_secret_that_is_not_utf8_is_a_configuration_error(self):
        # Python keeps environment bytes that are not UTF-8 as lone surrogates (Apache's SetEnv
        # in a file saved as Latin-1, say): no signature could be computed with them.
        latin1 = b"p\xe4ssw\xf6rd".decode("utf-8", "surrogateescape")
        message = self.assertConfigError(None, "environment variable IPN_SHA_PASSPHRASE", "UTF-8",
                                         IPN_SHA_PASSPHRASE=latin1)
        self.assertNotIn("ssw", message)
        self.assertEqual(self.location, "the environment variable IPN_SHA_PASSPHRASE")

    def test_an_environment_secret_is_read_as_utf8_whatever_the_locale(self):
        # Python 3.6 decodes the environment as ASCII where the web server sets no LANG (Apache
        # sets none for CGI programs): a UTF-8 "pässwörd" arrives as bytes kept in surrogates.
        as_python_36_reads_it = "pässwörd-1".encode("utf-8").decode("ascii", "surrogateescape")
        self.assertEqual(load({"IPN_SHA_PASSPHRASE": as_python_36_reads_it})["SHA_PASSPHRASE"], "pässwörd-1")
        self.assertEqual(load({"IPN_ISN_KEY": "schlüssel-1"})["ISN_KEY"], "schlüssel-1")   # text already
        # And under Python 3.6's own view of file names and the environment, ASCII:
        as_python_36 = mock.patch.object(os, "fsencode", lambda text: text.encode("ascii", "surrogateescape"))
        with as_python_36:
            self.assertEqual(load({"IPN_SHA_PASSPHRASE": as_python_36_reads_it})["SHA_PASSPHRASE"], "pässwörd-1")
            self.assertEqual(load({"IPN_ISN_KEY": "schlüssel-1"})["ISN_KEY"], "schlüssel-1")
            self.assertEqual(ipn_receiver.environment_text("schlüssel-1"), "schlüssel-1")

    def test_a_data_dir_this_python_cannot_name_is_a_configuration_error(self):
        # Under Python 3.6 with no LANG, file names are ASCII: a DATA_DIR of "Zahlungsdaten-ä"
        # would make every call fail to open its store. (Here: a name that is not UTF-8, which
        # SQLite cannot open.)
        message = self.assertConfigError(None, "environment variable IPN_DATA_DIR",
                                         "DATA_DIR holds characters this Python cannot use in a file name",
                                         "ASCII", IPN_DATA_DIR="/tmp/daten-\udcff")
        self.assertNotIn("daten", message)

    def test_bad_values_are_not_echoed(self):
        message = self.assertConfigError("[receiver]\nmax_body_bytes = secret-looking-value\n")
        self.assertNotIn("secret-looking-value", message)

    def test_not_utf8(self):
        self.write(b"[digistore24]\nsha_passphrase = \xff\xfe\n")
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

    def test_a_short_secret_is_refused(self):
        # One captured signature is enough to try every short passphrase offline; the one that
        # fits then signs any notification.
        for name in ("SHA_PASSPHRASE", "ISN_KEY"):
            for value in ("Q", "xQz", "pässwö", "1234567"):
                problem = ipn_receiver.secret_problem(self.config(**{name: value}), name)
                self.assertTrue(problem.startswith(name + " is too short (fewer than 8 characters)"), problem)
                self.assertNotIn(value, problem)
            self.assertIsNone(ipn_receiver.secret_problem(self.config(**{name: "12345678"}), name))

    def test_the_problems_in_full(self):
        problem = ipn_receiver.secret_problem
        self.assertEqual(problem(self.config(SHA_PASSPHRASE="short"), "SHA_PASSPHRASE"),
                         "SHA_PASSPHRASE is too short (fewer than 8 characters): one captured notification is "
                         "enough to guess it. Choose a long random one, enter it in Digistore24's settings, and put "
                         "the same into SHA_PASSPHRASE at the top of ipn_receiver.py, into [digistore24] "
                         "sha_passphrase of config.ini, or into the environment variable IPN_SHA_PASSPHRASE")
        self.assertIn("enter it in PromoPit's settings, and put the same into ISN_KEY at the top of ipn_receiver.py, "
                      "into [promopit] isn_key of config.ini, or into the environment variable IPN_ISN_KEY",
                      problem(self.config(ISN_KEY="short"), "ISN_KEY"))
        self.assertEqual(problem(self.config(), "SHA_PASSPHRASE"),
                         "SHA_PASSPHRASE is not set: put your Digistore24 IPN passphrase into SHA_PASSPHRASE at the "
                         "top of ipn_receiver.py, into [digistore24] sha_passphrase of config.ini, or into the "
                         "environment variable IPN_SHA_PASSPHRASE")
        self.assertEqual(problem(self.config(ISN_KEY=ipn_receiver.PLACEHOLDERS["ISN_KEY"]), "ISN_KEY"),
                         "ISN_KEY is still the placeholder: put your PromoPit ISN key into ISN_KEY at the top of "
                         "ipn_receiver.py, into [promopit] isn_key of config.ini, or into the environment variable "
                         "IPN_ISN_KEY")

    def test_a_passphrase_that_is_the_isn_key_too_cannot_be_used(self):
        # PromoPit sends its key in every call; the key itself stays usable.
        config = self.config(SHA_PASSPHRASE="shared-secret-1", ISN_KEY="shared-secret-1")
        self.assertEqual(ipn_receiver.secret_problem(config, "SHA_PASSPHRASE"),
                         "SHA_PASSPHRASE is the same as ISN_KEY, and PromoPit sends its key in every call: whoever "
                         "sees one could sign any Digistore24 notification. Choose another ISN key at PromoPit and "
                         "put it into ISN_KEY at the top of ipn_receiver.py, into [promopit] isn_key of config.ini, "
                         "or into the environment variable IPN_ISN_KEY")
        self.assertIsNone(ipn_receiver.secret_problem(config, "ISN_KEY"))

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


class AFileBeingUploaded(SettingsTestCase):
    """A call that reads config.ini while it is being uploaded (or saved in place) would take what
    is there so far. Under CGI every call starts afresh: a data_dir line not there yet, or half a
    path, would make a second, empty store, in which a copy of a handled notification runs again.
    A file changed less than CONFIG_SETTLE_SECONDS ago is waited for."""

    def setUp(self):
        SettingsTestCase.setUp(self)
        forget_settings()
        self.addCleanup(forget_settings)
        environment = mock.patch.dict(os.environ, {"IPN_SHA_PASSPHRASE": PASSPHRASE})
        environment.start()
        self.addCleanup(environment.stop)
        for name in [name for name in os.environ if name.startswith("IPN_") and name != "IPN_SHA_PASSPHRASE"]:
            del os.environ[name]
        self.full = "[receiver]\ndata_dir = %s\n" % os.path.join(self.folder, "outside-the-web-root")

    def upload_in_progress(self, written):
        """config.ini as the first `written` characters of the full file, written just now."""
        with open(os.path.join(self.folder, "config.ini"), "w") as file:
            file.write(self.full[:written])

    def test_a_file_written_just_now_is_read_once_it_has_been_still_for_a_moment(self):
        pauses = []

        def upload_goes_on(seconds):        # time.sleep while the settings wait: the upload ends
            pauses.append(seconds)
            if len(pauses) == 3:
                self.write(self.full)
        for written in (len("[receiver]\n"), len(self.full) - 12):       # no data_dir yet; half a path
            with self.subTest(written=written):
                forget_settings()
                pauses.clear()
                self.upload_in_progress(written)
                with mock.patch.object(ipn_receiver.time, "sleep", upload_goes_on):
                    config = ipn_receiver.settings()
                self.assertEqual(config["DATA_DIR"], os.path.join(self.folder, "outside-the-web-root"))
                self.assertEqual(pauses, [0.05, 0.05, 0.05])

    def test_a_file_that_has_been_still_for_a_second_or_dated_ahead_is_read_at_once(self):
        self.write(self.full)                                   # dated two seconds ago
        future = time.time() + 3600
        for when in (None, future):
            if when:
                os.utime(os.path.join(self.folder, "config.ini"), (when, when))
            forget_settings()
            with mock.patch.object(ipn_receiver.time, "sleep", side_effect=AssertionError("waited")):
                self.assertEqual(ipn_receiver.settings()["DATA_DIR"], os.path.join(self.folder, "outside-the-web-root"))
        os.remove(os.path.join(self.folder, "config.ini"))      # no file: nothing to wait for
        forget_settings()
        with mock.patch.object(ipn_receiver.time, "sleep", side_effect=AssertionError("waited")):
            self.assertEqual(ipn_receiver.settings()["DATA_DIR"], os.path.join(self.folder, "ipn_data"))

    def test_a_file_that_keeps_changing_is_read_after_the_longest_wait(self):
        pauses = []
        self.upload_in_progress(len(self.full))
        with mock.patch.object(ipn_receiver.time, "sleep", pauses.append):
            ipn_receiver.settled_ini_file_state(most=1)
            self.assertEqual(len(pauses), 20)
            ipn_receiver.settled_ini_file_state()           # ten seconds, by default
        self.assertEqual(len(pauses), 20 + 200)


class ALongLivedProcess(SettingsTestCase):
    """Under WSGI or `serve` one process answers call after call, for weeks: it follows the
    edits of config.ini without a restart, and a moment of wrong settings (a file half uploaded)
    leaves nothing behind once they are right."""

    def setUp(self):
        SettingsTestCase.setUp(self)
        environment = mock.patch.dict(os.environ)
        environment.start()
        self.addCleanup(environment.stop)
        for name in [name for name in os.environ if name.startswith("IPN_")]:
            del os.environ[name]
        forget_settings()
        self.addCleanup(forget_settings)
        ipn_receiver.log.to_stderr = False
        self.data_dir = os.path.join(self.folder, "data")
        handlers = mock.patch.dict(ipn_receiver.DIGISTORE24_HANDLERS)
        handlers.start()
        self.addCleanup(handlers.stop)

    def settings_file(self, passphrase, log_level="INFO"):
        self.write("[digistore24]\nsha_passphrase = %s\n[receiver]\ndata_dir = %s\nlog_level = %s\n"
                   % (passphrase, self.data_dir, log_level))

    def test_a_new_passphrase_in_config_ini_is_used_without_a_restart(self):
        self.settings_file(PASSPHRASE)
        self.assertEqual(post(payment("1")).body, "OK")
        self.settings_file("a-new-passphrase")
        self.assertEqual(post(payment("2")).status, 403)                  # signed with the old one
        fields = dict(fixture("digistore24_on_payment")["fields"], transaction_id="3")
        self.assertEqual(post(signed(fields, "a-new-passphrase")).body, "OK")
        self.settings_file(PASSPHRASE, log_level="DEBUG")                  # the log follows too
        self.assertEqual(post(payment("4")).body, "OK")
        self.assertEqual(ipn_receiver.log.level, 10)

    def test_it_follows_a_new_data_folder_as_every_other_process_does(self):
        # Kept until a restart, the old folder would be used by the workers started before the
        # edit, and the new one by those started after: two stores, and a copy run in each. (A
        # file caught half uploaded is waited for: see AFileBeingUploaded.)
        self.settings_file(PASSPHRASE)
        self.assertEqual(post(payment("1")).body, "OK")
        self.data_dir = os.path.join(self.folder, "moved")
        self.settings_file(PASSPHRASE)
        self.assertEqual(ipn_receiver.settings()["DATA_DIR"], self.data_dir)
        self.assertEqual(post(payment("2")).body, "OK")
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "events.sqlite3")))

    def test_settings_wrong_at_the_first_call_leave_the_log_unmasked_no_longer_than_they_are_wrong(self):
        self.write("[digistore24]\nsha_pass")                            # a file half uploaded
        answer = post(payment("1"))
        self.assertEqual(answer.status, 503)
        self.assertTrue(answer.body.startswith("ERROR: configuration error"), answer.body)
        self.settings_file(PASSPHRASE)

        def handler(notification):
            raise RuntimeError("the shop refused key=" + PASSPHRASE)
        ipn_receiver.DIGISTORE24_HANDLERS["on_payment"] = handler
        self.assertEqual(post(payment("2")).status, 500)
        with open(os.path.join(self.data_dir, ipn_receiver.LOG_FILE_NAME), encoding="utf-8") as file:
            written = file.read()
        self.assertIn("key=[secret]", written)
        self.assertNotIn(PASSPHRASE, written)
        connection = ipn_receiver.open_store(ipn_receiver.settings())
        self.assertNotIn(PASSPHRASE, connection.execute("SELECT last_error FROM notifications").fetchone()[0])

    def test_settings_that_break_while_a_handler_runs_leave_its_secrets_masked(self):
        # The vendor saves a config.ini with a typo while a handler waits for the shop's API; the
        # handler then fails with the passphrase in its error. The settings that were right
        # until then still say what to mask.
        self.settings_file(PASSPHRASE)
        ipn_receiver.log.reset()

        def handler(notification):
            self.write("[digistore24]\nsha_passphrase = %s\n[receiv" % PASSPHRASE)
            raise RuntimeError("the shop refused key=" + PASSPHRASE)
        ipn_receiver.DIGISTORE24_HANDLERS["on_payment"] = handler
        self.assertEqual(post(payment("1")).status, 500)
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        self.assertEqual(connection.execute("SELECT last_error FROM notifications").fetchone()[0],
                         "RuntimeError: the shop refused key=[secret]")
        connection.close()
        self.settings_file("a-new-passphrase")                  # after a change, the old one too
        ipn_receiver.settings()
        ipn_receiver.log.info("old %s, new %s", PASSPHRASE, "a-new-passphrase")
        with open(os.path.join(self.data_dir, ipn_receiver.LOG_FILE_NAME), encoding="utf-8") as file:
            self.assertTrue(file.read().endswith(" INFO [%d] old [secret], new [secret]\n" % os.getpid()))

    def test_a_data_folder_that_could_not_be_made_at_first_gets_its_log_once_it_can(self):
        self.settings_file(PASSPHRASE)
        with open(self.data_dir, "w"):                                     # a file in its way
            pass
        self.assertEqual(post(payment("1")).status, 503)
        os.remove(self.data_dir)
        self.assertEqual(post(payment("2")).body, "OK")
        with open(os.path.join(self.data_dir, ipn_receiver.LOG_FILE_NAME), encoding="utf-8") as file:
            self.assertIn("handled as #1", file.read())

    def test_a_log_file_that_cannot_be_opened_leaves_no_descriptor_open(self):
        self.settings_file(PASSPHRASE)
        os.makedirs(self.data_dir, 0o700)       # (as the receiver makes it: it says nothing)
        os.makedirs(os.path.join(self.data_dir, ipn_receiver.ERROR_LOG_FILE_NAME))  # the second file cannot be
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("counting open descriptors needs /proc (Linux)")
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            ipn_receiver.log.info("a line")
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)
        self.assertEqual(ipn_receiver.log._files, [])

    def test_the_file_named_by_ipn_config_is_followed_too(self):
        path = os.path.join(self.folder, "elsewhere.ini")
        os.environ["IPN_CONFIG"] = path
        self.settings_file(PASSPHRASE)
        os.replace(os.path.join(self.folder, "config.ini"), path)
        self.assertEqual(post(payment("1")).body, "OK")
        self.settings_file("a-new-passphrase")
        os.replace(os.path.join(self.folder, "config.ini"), path)
        self.assertEqual(ipn_receiver.settings()["SHA_PASSPHRASE"], "a-new-passphrase")

    def test_the_log_files_are_opened_once_not_for_every_line(self):
        self.settings_file(PASSPHRASE)
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("counting open descriptors needs /proc (Linux)")
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            ipn_receiver.log.info("a line")
        self.assertEqual(len(os.listdir("/proc/self/fd")), before + 2)     # the log and the error log

    def test_settings_set_by_use_settings_stay_whatever_the_file_says(self):
        self.settings_file("passphrase-of-the-file")
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.data_dir)
        self.settings_file("passphrase-of-the-file-edited")
        self.assertEqual(ipn_receiver.settings()["SHA_PASSPHRASE"], PASSPHRASE)
