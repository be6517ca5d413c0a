"""Logging: one line per request to DATA_DIR/ipn_receiver.log and stderr; never a secret."""

import logging
import os
import re
import subprocess
from unittest import mock

from helpers import (PYTHON, ISN_KEY, PASSPHRASE, SCRIPT, ReceiverTestCase, call, cgi_environment, environ_for, ipn_receiver,
                     payment, post, promopit_sale, urlencode)

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \[\d+\] .+$")


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
        post(payment(event="on_x\n2026-01-01 00:00:00,000 ERROR [1] forged\r\x1b[31m"))
        text = self.log_text()
        self.assertNotIn("\nforged", text)
        self.assertNotIn("\n2026-01-01", text)
        self.assertIn("on_x\\n2026-01-01 00:00:00,000 ERROR [1] forged\\r\\x1b[31m", text)
        for line in text.splitlines():
            self.assertRegex(line, LINE)


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

    def test_one_shot_mode_rotates_the_same_way(self):
        ipn_receiver.log.reset()
        ipn_receiver.log.one_shot = True
        with mock.patch.object(ipn_receiver, "LOG_FILE_MAX_BYTES", 1000):
            for number in range(40):
                call(environ_for(method="GET", content_type=None))
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "ipn_receiver.log.2")))
        self.assertFalse(ipn_receiver.log._logger)


class PythonLogging(ReceiverTestCase):
    def test_long_running_processes_log_through_the_logging_module(self):
        records = []

        class Catch(logging.Handler):
            def emit(self, record):
                records.append(record)

        post(payment("1"))                                       # sets the logger up
        logger = logging.getLogger("ipn_receiver")
        catcher = Catch()
        logger.addHandler(catcher)
        self.addCleanup(logger.removeHandler, catcher)
        post(payment("2"))
        self.assertTrue(any("POST -> 200" in record.getMessage() for record in records))
        self.assertFalse(logger.propagate)

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
        done = subprocess.run([PYTHON, "-S", "-X", "importtime", SCRIPT], env=environment, input=body,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertTrue(done.stdout.endswith(b"\r\n\r\nOK"), done.stderr[-2000:])
        imported = {line.split("|")[-1].strip() for line in done.stderr.decode().splitlines()
                    if line.startswith("import time:")}
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
