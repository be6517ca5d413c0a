"""Logging: one line per request to DATA_DIR/ipn_receiver.log and stderr; never a secret."""

import html
import json
import logging
import os
import re
import subprocess
import sys
import unittest
import urllib.parse
from unittest import mock

from helpers import (PYTHON, ISN_KEY, PASSPHRASE, SCRIPT, ReceiverTestCase, call, cgi_environment, environ_for,
                     generated, ipn_receiver, payment, post, promopit_sale, signed, urlencode)

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[\d+\] .+$")
# The lines Python's own tracebacks are made of, and nothing that could pass for a record.
TRACEBACK_LINE = re.compile(r"^(Traceback \(most recent call last\):|  File \".*|    .*|\w+(\.\w+)*(: .*)?|"
                            r"The above exception .*|During handling .*|)$")


class RequestLines(ReceiverTestCase):
    settings = {"LOG_LEVEL": "DEBUG"}

    def request_lines(self):
        return [line for line in self.log_text().splitlines() if " -> " in line]

    def test_one_line_per_request_with_provider_event_ids_outcome_and_time(self):
        post(payment())
        post(dict(payment(), sha_sign="0"))
        post(promopit_sale())
        call(environ_for(method="GET", content_type=None))
        lines = self.request_lines()
        self.assertEqual(len(lines), 4)
        for line in lines:
            self.assertRegex(line, LINE)
            self.assertRegex(line, r"\(\d+\.\d ms\)$")
        self.assertIn("INFO", lines[0])
        self.assertIn("POST -> 200, digistore24 on_payment order A1B2C3D4 txn 3999938: handled as #1", lines[0])
        self.assertIn("WARNING", lines[1])
        self.assertIn("POST -> 403, refused: invalid sha signature", lines[1])
        self.assertIn("promopit sale txn PP-100234: handled", lines[2])
        self.assertIn("GET -> 200, status line", lines[3])

    def test_the_file_is_private(self):
        post(payment())
        mode = os.stat(os.path.join(self.data_dir, "ipn_receiver.log")).st_mode & 0o777
        self.assertEqual(mode, 0o600)

    def test_request_data_cannot_forge_log_lines(self):
        # Every Unicode line break and control character: str.splitlines() breaks at all of these.
        for breaker in ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"):
            self.handle("on_x", lambda notification: None)
            post(payment(breaker.encode().hex(), event="on_x%s2026-01-01 00:00:00,000 ERROR [1] forged" % breaker))
        post(payment("controls", event="on_x\x1b[31m\x00\x9b\u202e"))
        text = self.log_text()
        self.assertNotIn("\n2026-01-01", text)
        for line in text.splitlines():
            self.assertRegex(line, LINE)
        self.assertIn("on_x\\n2026-01-01 00:00:00,000 ERROR [1] f...", text)   # shortened: up to 40
        self.assertIn("on_x\\u2028202", text)
        self.assertIn("on_x\\x1b[31m\\x00\\x9b\\u202e", text)

    def test_an_exception_message_cannot_forge_log_lines_in_the_traceback(self):
        def on_payment(notification):
            raise ValueError("unknown product " + notification["custom"])
        self.handle("on_payment", on_payment)
        post(payment(custom="x\n2026-01-01 00:00:00,000 ERROR [1] forged\u2028\x85 too"))
        text = self.log_text()
        self.assertIn("Traceback (most recent call last):", text)    # the traceback is there,
        self.assertIn("ValueError: unknown product x\\n2026-01-01 00:00:00,000 ERROR [1] forged\\u2028\\x85 too",
                      text)                                           # its message on one line
        for line in text.splitlines():                # every line a record or part of a traceback
            self.assertTrue(LINE.match(line) or TRACEBACK_LINE.match(line), line)

    def test_junk_nobody_vouched_for_is_shortened(self):
        # 560 requests with an 8 KB method each would otherwise rotate every log file away.
        for _ in range(20):
            call(environ_for(method="X" * 8192, content_type=None))
        text = self.log_text()
        self.assertLess(len(text), 20 * 300)
        self.assertLogged("INFO", "X" * 20 + "...(8192 characters) -> 405, method not allowed")

    def test_shortened_keeps_up_to_its_size(self):
        self.assertEqual(ipn_receiver.shortened("x" * 80), "x" * 80)
        self.assertEqual(ipn_receiver.shortened("x" * 81), "x" * 80 + "...(81 characters)")
        self.assertEqual(ipn_receiver.shortened("abcdef", 5), "abcde...(6 characters)")

    def test_each_outcome_in_its_own_words(self):
        """The request line says what happened, at INFO, or at WARNING for a POST that failed."""
        def broken(notification):
            raise RuntimeError("boom")

        def reentrant(notification):
            post(payment("3", event="on_refund"))                # the sender's retry, while busy
        self.handle("on_refund", reentrant)
        self.handle("on_chargeback", broken)
        call(environ_for(method="GET", content_type=None))
        call(environ_for(method="GET", content_type=None, SCRIPT_NAME="/ipn.py", PATH_INFO="/config.ini"))
        call(environ_for(method="PUT", content_type=None))
        post(dict(payment("1"), sha_sign="0"))
        call(environ_for(b"a=1"))
        post(payment("1"))
        post(payment("1"))
        post(payment("2", event="on_unknown"))
        post(payment("3", event="on_refund"))
        post(payment("4", event="on_chargeback"))
        without_method = environ_for(content_type=None)
        del without_method["REQUEST_METHOD"]               # a server that sets none: taken as a GET
        self.assertEqual(call(without_method).status, 200)
        reference = "order A1B2C3D4 txn"
        expected = [
            ("INFO", "GET -> 200, status line"),
            ("INFO", "GET -> 404, not found"),
            ("INFO", "PUT -> 405, method not allowed"),
            ("WARNING", "POST -> 403, refused: " + ipn_receiver.INVALID_SIGNATURE_ANSWER),
            ("WARNING", "POST -> 400, refused: not a Digistore24 or PromoPit notification (it has no sha_sign, "
                        "event or isn_key field); register this URL only with Digistore24 and PromoPit"),
            ("INFO", "POST -> 200, digistore24 on_payment %s 1: handled as #1" % reference),
            ("INFO", "POST -> 200, digistore24 on_payment %s 1: duplicate of #1, answered as before" % reference),
            ("INFO", "POST -> 200, digistore24 on_unknown %s 2: no handler for this event: stored, answered OK"
             % reference),
            ("WARNING", "POST -> 503, digistore24 on_refund %s 3: a copy is being processed right now" % reference),
            ("INFO", "POST -> 200, digistore24 on_refund %s 3: handled as #3" % reference),
            ("ERROR", "digistore24 handler broken failed for %s 4" % reference),
            ("WARNING", "POST -> 500, digistore24 on_chargeback %s 4: handler failed: RuntimeError: boom" % reference),
        ]
        messages = [entry for entry in self.log_messages()]
        for entry in expected:
            self.assertIn(entry, messages)
        self.assertEqual(messages.count(("INFO", "GET -> 200, status line")), 2)

    def test_storage_and_internal_failures_in_their_own_words(self):
        import sqlite3
        with mock.patch.object(ipn_receiver, "claim_notification", side_effect=sqlite3.OperationalError("disk I/O error")):
            post(payment("1"))
        with mock.patch.object(ipn_receiver, "handle_post", side_effect=RuntimeError("a bug")):
            answer = post(payment("2"))
        self.assertEqual((answer.status, answer.body), (500, ipn_receiver.INTERNAL_ERROR_ANSWER))
        store = os.path.join(self.data_dir, "events.sqlite3")
        self.assertLogged("ERROR", "event store %s: disk I/O error; check that the data folder exists, is writable by "
                                   "the web server's user and the disk is not full" % store)
        self.assertLogged("WARNING", "POST -> 503, digistore24 on_payment order A1B2C3D4 txn 1: storage unavailable")
        self.assertLogged("ERROR", "internal error")
        self.assertLogged("WARNING", "POST -> 500, internal error")
        self.assertIn("RuntimeError: a bug", self.log_text())

    def test_the_time_a_request_took(self):
        with mock.patch.object(ipn_receiver.time, "perf_counter", side_effect=[100.0, 100.1]):
            call(environ_for(method="GET", content_type=None))
        self.assertIn("GET -> 200, status line (100.0 ms)\n", self.log_text())

    def test_lone_surrogates_are_escaped(self):
        ipn_receiver.log.info("bytes that were not UTF-8: %s", b"a\xff".decode("utf-8", "surrogateescape"))
        self.assertLogged("INFO", "bytes that were not UTF-8: a\\udcff")

    def test_only_log_exception_adds_a_traceback(self):
        try:
            raise ValueError("while handling this")
        except ValueError:
            ipn_receiver.log.error("an error line written inside an except block")
        self.assertNotIn("Traceback", self.log_text())

    def test_a_message_is_formatted_as_logging_formats_it_and_one_that_does_not_fit_is_kept(self):
        # A handler's grant record with a wrong format vanished (the 55th review).
        log = ipn_receiver.log
        log.info("granted order %s to %s", "A1B2", "jane@example.com")
        log.info("granted order %(order)s", {"order": "C3D4"})
        log.info("granted order %d", "E5F6")
        log.info("granted %s and %s", "G7H8")
        log.info("100%% granted")
        self.assertEqual([message for _, message in self.log_messages()],
                         ["granted order A1B2 to jane@example.com", "granted order C3D4",
                          "granted order %d % ('E5F6',) (the message does not fit its arguments)",
                          "granted %s and %s % ('G7H8',) (the message does not fit its arguments)", "100%% granted"])

    def test_a_message_that_cannot_be_formatted_or_made_text_is_still_a_line(self):
        # OverflowError from %c, a __str__ that raises: the line was lost (the 72nd review).
        class Unwritable:
            def __str__(self):
                raise RuntimeError("no")
            __repr__ = __str__
        log = ipn_receiver.log
        log.info("code %c", 2 ** 40)
        log.info(Unwritable())
        log.info("granted %s %s", Unwritable())
        self.assertEqual([message for _, message in self.log_messages()],
                         ["code %c % (1099511627776,) (the message does not fit its arguments)",
                          "a Unwritable message whose text could not be made",
                          "a str message whose text could not be made"])

    def test_the_errors_of_an_exception_group_are_in_the_traceback(self):
        # Python 3.11's ExceptionGroup holds several errors; its traceback showed only the group
        # (the 72nd review). Any exception with a tuple of exceptions is taken as one.
        class Group(Exception):
            def __init__(self, message, exceptions):
                super().__init__(message)
                self.exceptions = tuple(exceptions)
        try:
            raise Group("two failed", [ValueError("the mail server said no"), KeyError("licence")])
        except Group:
            ipn_receiver.log.exception("granting failed")
        text = self.log_text()
        self.assertIn("Exception 1 of 2 in the group above:", text)
        self.assertIn("ValueError: the mail server said no", text)
        self.assertIn("Exception 2 of 2 in the group above:", text)
        self.assertIn("KeyError: 'licence'", text)

    def test_chained_exceptions_are_in_the_traceback(self):
        def on_payment(notification):
            try:
                {}["missing"]
            except KeyError as error:
                raise RuntimeError("could not grant access") from error
        self.handle("on_payment", on_payment)
        post(payment())
        text = self.log_text()
        self.assertIn("KeyError: 'missing'", text)
        self.assertIn("The above exception was the direct cause of the following exception:", text)
        self.assertIn("RuntimeError: could not grant access", text)
        self.assertLess(text.index("KeyError"), text.index("RuntimeError"))


class LikeALoggingLogger(ReceiverTestCase):
    """`log` is no logging.Logger, but takes the calls a handler would write to one."""

    def test_a_handler_may_call_log_as_it_would_a_logging_logger(self):
        # A vendor who knows logging writes log.warn, log.critical and exc_info=True: each was an
        # AttributeError or TypeError that failed the handler after its work (the 70th review).
        def on_payment(notification):
            try:
                raise ValueError("the mail server said no")
            except ValueError as error:
                ipn_receiver.log.warn("warned %s", "W")
                ipn_receiver.log.critical("critical %s", "C")
                ipn_receiver.log.error("with its traceback", exc_info=True)
                ipn_receiver.log.warning("with the exception given", exc_info=error, extra={"order": 1})
                ipn_receiver.log.info("with sys.exc_info()", exc_info=sys.exc_info(), stack_info=False)
                ipn_receiver.log.exception("exception, as always")
                ipn_receiver.log.exception("exception without", exc_info=False)
                ipn_receiver.log.log(logging.INFO, "at logging.INFO")
                ipn_receiver.log.log(25, "at a level of its own")
                ipn_receiver.log.log("warning", "at a level named")
                ipn_receiver.log.log("loud", "at a level not known")
                ipn_receiver.log.debug("below the level", exc_info=True)
                ipn_receiver.log.info("with a keyword logging does not know", colour="red")
            return {"username": "jane"}
        self.handle("on_payment", on_payment)
        answer = post(payment())
        self.assertEqual((answer.status, answer.body), (200, "OK\nusername: jane"))
        records = [(level, message) for level, message in self.log_messages()
                   if not message.startswith("POST ")]
        self.assertEqual(records, [
            ("WARNING", "warned W"), ("CRITICAL", "critical C"), ("ERROR", "with its traceback"),
            ("WARNING", "with the exception given"), ("INFO", "with sys.exc_info()"),
            ("ERROR", "exception, as always"), ("ERROR", "exception without"), ("INFO", "at logging.INFO"),
            ("Level 25", "at a level of its own"), ("WARNING", "at a level named"), ("ERROR", "at a level not known"),
            ("INFO", "with a keyword logging does not know")])
        # A traceback below each of the four that asked for one, and below no other.
        self.assertEqual(self.log_text().count("ValueError: the mail server said no"), 4)
        with open(os.path.join(self.data_dir, ipn_receiver.ERROR_LOG_FILE_NAME), encoding="utf-8") as file:
            self.assertIn("critical C", file.read())


class NoSecrets(ReceiverTestCase):
    settings = {"LOG_LEVEL": "DEBUG"}

    def test_no_secret_or_signature_in_any_line_at_any_level(self):
        def chatty(notification):
            ipn_receiver.log.debug("all fields: %r", notification.fields)
            ipn_receiver.log.info("repr: %r", notification)
        self.handle("on_payment", chatty)
        self.handle("sale", chatty, "PROMOPIT_HANDLERS")
        sent = payment()
        post(sent)
        post(dict(payment("2"), sha_sign=sent["sha_sign"]))       # a replayed signature, refused
        post(promopit_sale())
        post(promopit_sale(isn_key=ISN_KEY + "x"))
        self.handle("on_refund", lambda n: 1 / 0)
        post(payment("3", event="on_refund"))
        text = self.log_text()
        self.assertIn("all fields:", text)
        for secret in (PASSPHRASE, ISN_KEY, sent["sha_sign"], sent["sha_sign"].lower()):
            self.assertFalse(secret in text, "a secret or signature is in the log")

    def test_every_occurrence_of_a_secret_is_masked(self):
        ipn_receiver.log.info("%s and %s and %s%s", PASSPHRASE, ISN_KEY, PASSPHRASE, PASSPHRASE)
        text = self.log_text()
        self.assertIn("[secret] and [secret] and [secret][secret]", text)
        self.assertFalse(PASSPHRASE in text or ISN_KEY in text)

    def test_a_secret_within_the_other_is_masked_whole(self):
        # The longer one goes first: masking the ISN key first would leave the passphrase's ends.
        ipn_receiver.use_settings(SHA_PASSPHRASE="front-" + ISN_KEY + "-back", ISN_KEY=ISN_KEY, DATA_DIR=self.data_dir)
        ipn_receiver.log.info("passphrase %s, key %s", "front-" + ISN_KEY + "-back", ISN_KEY)
        self.assertLogged("INFO", "passphrase [secret], key [secret]")

    def test_a_secret_is_masked_as_repr_and_a_url_write_it_too(self):
        secret = "pä ss'wörd\\1"
        ipn_receiver.use_settings(SHA_PASSPHRASE=secret, DATA_DIR=self.data_dir)
        ipn_receiver.log.info("settings %r; request body sha_passphrase=%s and %s", {"p": secret},
                              "p%C3%A4+ss%27w%C3%B6rd%5C1", "p%C3%A4%20ss%27w%C3%B6rd%5C1")
        self.assertLogged("INFO", "settings {'p': \"[secret]\"}; request body sha_passphrase=[secret] and [secret]")

    def test_a_secret_is_masked_inside_a_repr_with_both_quotes_and_as_quote_keeps_its_slash(self):
        secret = "it's/a-long passphrase"
        ipn_receiver.use_settings(SHA_PASSPHRASE=secret, DATA_DIR=self.data_dir)
        ipn_receiver.log.info("calling %r", 'say "hi" with ' + secret)
        ipn_receiver.log.info("url https://x/?p=%s", urllib.parse.quote(secret))
        ipn_receiver.log.info("<p>%s</p>", html.escape("<" + secret + ">"))
        # Cut short where it is too long to log whole: masked first, not cut through.
        ipn_receiver.log.info("key %s", ipn_receiver.shortened("x" * 30 + secret, 40))
        self.assertLogged("INFO", "calling 'say \"hi\" with [secret]'")
        self.assertLogged("INFO", "url https://x/?p=[secret]")
        self.assertLogged("INFO", "<p>&lt;[secret]&gt;</p>")
        self.assertLogged("INFO", "key %s[secret]" % ("x" * 30))
        self.assertNotIn("it&#x27;s", self.log_text())

    def test_masking_opens_no_file(self):
        # `events`, `show` and `check` make nothing, not even the data folder, and mask what they print.
        folder = os.path.join(self.data_dir, "not-yet")
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=folder)
        self.assertEqual(ipn_receiver.shortened("x" * 70 + PASSPHRASE, 80), "x" * 70 + "[secret]")
        self.assertEqual(ipn_receiver.log.mask(PASSPHRASE), "[secret]")
        self.assertFalse(os.path.exists(folder))

    def test_a_secret_is_masked_as_json_ascii_and_its_utf8_bytes_write_it_too(self):
        # PROTOCOL.md's own example passphrase: outside ASCII, it has more spellings.
        secret = "pässwörd"
        ipn_receiver.use_settings(SHA_PASSPHRASE=secret, DATA_DIR=self.data_dir)
        ipn_receiver.log.info("%s | %s | %s | %s", json.dumps({"p": secret}), ascii(secret), secret.encode("utf-8"),
                              "p%c3%a4ssw%c3%b6rd")
        self.assertLogged("INFO", '{"p": "[secret]"} | \'[secret]\' | b\'[secret]\' | [secret]')
        # And in what a handler answers and what is stored of its failure.
        self.handle("on_payment", lambda n: {"headline": json.dumps(secret)})
        self.assertEqual(post(signed(payment("1"), passphrase=secret)).body, 'OK\nheadline: "[secret]"')

        def careless(notification):
            raise ValueError(repr(secret.encode("utf-8")))
        self.handle("on_payment", careless)
        post(signed(payment("2"), passphrase=secret))
        self.assertEqual(self.rows()[-1]["last_error"], "ValueError: b'[secret]'")

    def test_a_secret_a_handler_logs_by_mistake_is_masked(self):
        def careless(notification):
            ipn_receiver.log.info("using passphrase %s", PASSPHRASE)
            raise ValueError("bad key " + ISN_KEY)
        self.handle("on_payment", careless)
        post(payment())
        text = self.log_text()
        self.assertIn("using passphrase [secret]", text)
        self.assertIn("ValueError: bad key [secret]", text)
        self.assertFalse(PASSPHRASE in text or ISN_KEY in text)
        self.assertEqual(self.rows()[0]["last_error"], "ValueError: bad key [secret]")


class WhereTheLogCannotBeWritten(ReceiverTestCase):
    def capture_stderr(self):
        import io
        ipn_receiver.log.reset()
        ipn_receiver.log.to_stderr = True
        self.addCleanup(setattr, ipn_receiver.log, "to_stderr", False)
        captured = io.StringIO()
        patcher = mock.patch.object(ipn_receiver.sys, "stderr", captured)
        patcher.start()
        self.addCleanup(patcher.stop)
        return captured

    def test_a_data_folder_that_cannot_be_made_is_said_once_and_the_lines_go_to_stderr(self):
        blocked = os.path.join(self.data_dir, "a-file")
        open(blocked, "w").close()
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=blocked)
        captured = self.capture_stderr()
        ipn_receiver.log.info("first")
        ipn_receiver.log.info("second")
        lines = captured.getvalue().splitlines()
        self.assertEqual(lines[0], "ipn_receiver: cannot write the log file in %s (File exists); logging to stderr "
                                   "only. Run `python3 ipn_receiver.py check`." % blocked)
        self.assertRegex(lines[1], LINE)
        self.assertTrue(lines[1].endswith(" INFO [%d] first" % os.getpid()))
        self.assertEqual(len(lines), 3)

    def test_with_a_configuration_error_info_lines_still_go_to_stderr(self):
        captured = self.capture_stderr()
        with mock.patch.object(ipn_receiver, "settings", side_effect=ipn_receiver.ConfigError("broken")):
            ipn_receiver.log.info("still said")
        self.assertTrue(captured.getvalue().endswith(" INFO [%d] still said\n" % os.getpid()), captured.getvalue())


class LikeTheLoggingModule(unittest.TestCase):
    """A one-shot CGI call writes its log lines itself, since importing logging would cost it about
    8 ms: log_line must write what logging.Formatter(LOG_FORMAT) writes for the same record."""

    @generated(lambda st: st.tuples(st.integers(0, 4102444800), st.integers(0, 999),
                                    st.integers(1, 60), st.text()), examples=1000)
    def test_the_same_line_as_logging(self, record):
        seconds, milliseconds, level, text = record
        # The instant is taken in the middle of a millisecond: at its very edge, a float's rounding
        # may make either of the two (or logging of different Python versions) say the next one.
        when = seconds + milliseconds / 1000 + 0.0004
        theirs = logging.LogRecord("ipn_receiver", level, __file__, 1, "%s", (text,), None)
        theirs.created, theirs.msecs = when, int((when - int(when)) * 1000)
        expected = logging.Formatter(ipn_receiver.LOG_FORMAT).format(theirs)
        self.assertEqual(ipn_receiver.log_line(level, text, when), expected)


class SecretForms(unittest.TestCase):
    @generated(lambda st: st.text(min_size=1), examples=1000)
    def test_json_ascii_is_json_dumps(self, text):
        self.assertEqual(ipn_receiver.json_ascii(text), json.dumps(text)[1:-1])

    def test_a_tilde_percent_encoded_or_not(self):
        # Python before 3.7 and PHP's urlencode encode "~"; later Pythons and rawurlencode keep it.
        forms = ipn_receiver.secret_forms("a~b c")
        for written in ("a~b%20c", "a~b+c", "a%7Eb%20c", "a%7Eb+c", "a%7eb%20c", "a%7eb+c"):
            self.assertIn(written, forms)

    def test_json_that_keeps_umlauts_as_they_are(self):
        # json.dumps(..., ensure_ascii=False), as a handler logs text with umlauts: quotes escaped, "ä" not.
        self.assertIn('Pass\\"w\u00f6rt', ipn_receiver.secret_forms('Pass"w\u00f6rt'))

    def test_json_ascii_at_the_edges_of_16_bits(self):
        for text in ("\x7e\x7f\x80", "\uffff", "\U00010000", "\U0010ffff", "\x00\x1f\\\""):
            self.assertEqual(ipn_receiver.json_ascii(text), json.dumps(text)[1:-1], ascii(text))

    @generated(lambda st: st.text(min_size=1), examples=300)
    def test_every_form_written_by_python_is_among_them(self, secret):
        forms = ipn_receiver.secret_forms(secret)
        quoted = urllib.parse.quote(secret, safe="")
        lower_hex = re.sub("%[0-9A-F]{2}", lambda escape: escape.group().lower(), quoted)
        for written in (secret, repr(secret)[1:-1], ascii(secret)[1:-1], json.dumps(secret)[1:-1],
                        json.dumps(secret, ensure_ascii=False)[1:-1],
                        repr(secret.encode("utf-8", "surrogatepass"))[2:-1], quoted, lower_hex,
                        urllib.parse.quote_plus(secret, safe=""), urllib.parse.quote(secret),
                        # repr() and ascii() of a longer text holding both kinds of quote: "'" escaped
                        repr('say "hi" ' + secret)[10:-1], ascii('say "hi" ' + secret)[10:-1], html.escape(secret)):
            self.assertTrue(written in forms or not written, (secret, written))


class Rotation(ReceiverTestCase):
    def test_the_log_rotates_and_keeps_three_old_files(self):
        with mock.patch.object(ipn_receiver, "LOG_FILE_MAX_BYTES", 2000):
            for number in range(150):
                call(environ_for(method="GET", content_type=None))
        names = sorted(name for name in os.listdir(self.data_dir) if name.startswith("ipn_receiver.log"))
        self.assertEqual(names, ["ipn_receiver.log", "ipn_receiver.log.1", "ipn_receiver.log.2",
                                 "ipn_receiver.log.3"])
        for name in names:
            self.assertLess(os.path.getsize(os.path.join(self.data_dir, name)), 2200)
        self.assertEqual(os.stat(os.path.join(self.data_dir, "ipn_receiver.log")).st_mode & 0o777, 0o600)

    def test_refused_requests_cannot_rotate_an_error_away(self):
        # Anyone may send requests that are refused, as many as they like; the errors file, where
        # no refusal goes, still has a failed handler's traceback afterwards.
        def on_payment(notification):
            raise RuntimeError("the mail server is down")
        self.handle("on_payment", on_payment)
        post(payment())
        with mock.patch.object(ipn_receiver, "LOG_FILE_MAX_BYTES", 2000):
            for number in range(200):
                call(environ_for(b"a=1"))
        main = ""
        for name in os.listdir(self.data_dir):
            if name.startswith("ipn_receiver.log"):
                with open(os.path.join(self.data_dir, name)) as file:
                    main += file.read()
        self.assertNotIn("the mail server is down", main)          # rotated away there...
        with open(os.path.join(self.data_dir, "ipn_receiver.errors.log")) as file:
            errors = file.read()
        self.assertIn("RuntimeError: the mail server is down", errors)   # ...kept here
        self.assertIn("Traceback (most recent call last):", errors)
        self.assertNotIn("refused", errors)
        self.assertEqual(os.stat(os.path.join(self.data_dir, "ipn_receiver.errors.log")).st_mode & 0o777, 0o600)


class AFolderMovedAway(ReceiverTestCase):
    def test_a_log_file_that_cannot_be_opened_again_holds_no_closed_descriptor(self):
        # The data folder moved away under a long-lived process: the log cannot follow. Its old
        # descriptor, closed, would be a number the process gives to the next file it opens (a
        # handler's), which the log's next line would then close, or be written into.
        log_file = ipn_receiver.LogFile(os.path.join(self.data_dir, "x.log"))
        self.addCleanup(log_file.close)
        os.rename(self.data_dir, self.data_dir + "-moved")
        self.addCleanup(os.rename, self.data_dir + "-moved", self.data_dir)
        log_file.write("cannot follow\n")
        read_end, write_end = os.pipe()                 # (given the lowest free numbers)
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        log_file.write("nor now\n")
        os.fstat(write_end)                             # still open
        self.assertNotIn(log_file.fd, (read_end, write_end))
        os.set_blocking(read_end, False)
        self.assertRaises(BlockingIOError, os.read, read_end, 100)      # and nothing written into it


class LongRunningProcesses(ReceiverTestCase):
    """WSGI servers and the local server write the log as a CGI call does, from many threads."""

    def test_threads_write_whole_lines_and_logging_is_not_needed(self):
        import threading
        calls = [threading.Thread(target=post, args=(payment(str(number)),)) for number in range(16)]
        for thread in calls:
            thread.start()
        for thread in calls:
            thread.join()
        lines = [line for line in self.log_text().splitlines() if "POST -> " in line]
        self.assertEqual(len(lines), 16)
        for line in lines:
            self.assertRegex(line, LINE)
            self.assertIn("POST -> 200", line)
        self.assertFalse(logging.getLogger("ipn_receiver").handlers)    # logging is never set up

    @unittest.skipUnless(hasattr(os, "register_at_fork"), "Python 3.6 has no os.register_at_fork")
    def test_a_process_forked_while_another_thread_writes_a_line_can_log(self):
        # Under a threaded WSGI server, a handler forks as another call's thread writes a line:
        # the child waited forever for a lock that no thread of its own would let go (the 67th
        # review).
        import signal
        import threading
        import time
        import warnings
        ipn_receiver.log.info("the log set up")
        holding, done = threading.Event(), threading.Event()

        def write_a_line_slowly():
            with ipn_receiver.log._turn:
                holding.set()
                done.wait(30)
        writer = threading.Thread(target=write_a_line_slowly)
        writer.start()
        try:
            self.assertTrue(holding.wait(10))
            with warnings.catch_warnings():         # (3.12 and later warn of a fork beside threads)
                warnings.simplefilter("ignore", DeprecationWarning)
                child = os.fork()
            if child == 0:
                try:
                    ipn_receiver.log.info("the forked process logs")
                finally:
                    os._exit(0)
            deadline = time.monotonic() + 20
            while os.waitpid(child, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(child, signal.SIGKILL)
                    os.waitpid(child, 0)
                    self.fail("the forked process never wrote its line")
                time.sleep(0.05)
        finally:
            done.set()
            writer.join()
        self.assertIn("the forked process logs", self.log_text())

    def test_log_level_is_respected(self):
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.data_dir, LOG_LEVEL="WARNING")
        post(payment("1"))
        post(dict(payment("2"), sha_sign="0"))
        text = self.log_text()
        self.assertNotIn(" INFO ", text)
        self.assertIn("WARNING", text)


class OneShotCgi(ReceiverTestCase):
    """A CGI call imports nothing heavy: each of these costs a fresh interpreter milliseconds."""

    HEAVY = ("re", "json", "logging", "urllib", "configparser", "wsgiref", "argparse", "threading",
             "email", "tempfile", "traceback", "socket", "datetime")   # (_sqlite3 itself needs functools)

    def test_a_cgi_call_imports_nothing_heavy_and_logs_to_file_and_stderr(self):
        with open(os.path.join(self.data_dir, "ipn.ini"), "w") as file:
            file.write("[receiver]\nlog_level = INFO\n")
        body = urlencode(payment())
        environment = cgi_environment(self.data_dir, body=body, IPN_CONFIG=os.path.join(self.data_dir, "ipn.ini"))
        # -v: Python says "import 'name' # ..." for every module it imports (on every version).
        done = subprocess.run([PYTHON, "-S", "-v", SCRIPT], env=environment, input=body,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertTrue(done.stdout.endswith(b"\r\n\r\nOK"), done.stderr[-2000:])
        imported = set(re.findall(r"^import '([\w.]+)' ", done.stderr.decode(), re.M))
        self.assertIn("hashlib", imported)                  # (what the receiver needs is seen)
        self.assertFalse(imported & set(self.HEAVY), sorted(imported & set(self.HEAVY)))
        self.assertIn("_sqlite3", imported)
        self.assertNotIn("sqlite3", imported)               # the package: its datetime adapters cost
        request_line = [line for line in done.stderr.decode().splitlines() if "POST -> 200" in line]
        self.assertEqual(len(request_line), 1)
        self.assertRegex(request_line[0], LINE)
        self.assertIn(request_line[0], self.log_text())


if __name__ == "__main__":
    import unittest
    unittest.main()
