"""The HTTP contract, as application() keeps it under CGI, WSGI and the local server.

| request                                         | answer                                   |
|-------------------------------------------------|------------------------------------------|
| GET / HEAD                                      | 200, a status line starting "OK"         |
| a verified notification                         | 200 "OK" (+ on_payment's answer lines)   |
| an unknown event, or none, verified             | 200 "OK", stored, not dispatched         |
| a wrong signature / ISN key                     | 403 "ERROR: invalid sha signature/isn key"|
| the needed secret not set, or the placeholder   | 503 "ERROR: <SETTING> is not set ..."    |
| the handler raised                              | 500 "ERROR: handler failed"              |
| not a form of a known sender, missing event     | 400                                      |
| body over MAX_BODY_BYTES / other content types  | 413 / 415                                |
| other methods                                   | 405 with Allow                           |
| a path below the script's URL (SCRIPT_NAME set) | 404                                      |
"""

import unittest
from unittest import mock

from helpers import (PASSPHRASE, ReceiverTestCase, call, environ_for, fixture_fields,
                     ipn_receiver, payment, post, promopit_sale, signed, urlencode)
from test_signature import WORKED_EXAMPLES


class Answers(ReceiverTestCase):
    def assertAnswer(self, answer, status, body):
        self.assertEqual((answer.status, answer.body), (status, body))
        self.assertEqual(answer.headers["Content-Type"], "text/plain; charset=utf-8")
        self.assertEqual(answer.headers["Content-Length"], str(len(answer.body.encode("utf-8"))))

    def test_get_and_head_say_the_receiver_is_up_and_reveal_nothing(self):
        answer = call(environ_for(method="GET", content_type=None))
        self.assertEqual(answer.status, 200)
        self.assertTrue(answer.body.startswith("OK "))
        for secret in (PASSPHRASE, "ISN", self.data_dir, "SHA_PASSPHRASE"):
            self.assertNotIn(secret, answer.body)
        head = call(environ_for(method="HEAD", content_type=None))
        self.assertEqual((head.status, head.body), (200, ""))
        self.assertEqual(head.headers["Content-Length"], answer.headers["Content-Length"])

    def test_other_methods_get_405_with_allow(self):
        for method in ("PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW"):
            answer = call(environ_for(urlencode(payment()), method=method))
            self.assertEqual(answer.status, 405)
            self.assertEqual(answer.headers["Allow"], "GET, HEAD, POST")
            self.assertTrue(answer.body.startswith("ERROR: method not allowed"))

    def test_a_url_below_the_receiver_is_not_found(self):
        for method in ("GET", "POST"):
            answer = call(environ_for(urlencode(payment()), method=method, SCRIPT_NAME="/ipn_receiver.py",
                                      PATH_INFO="/config.ini"))
            self.assertEqual((answer.status, answer.body),
                             (404, "ERROR: not found; the receiver's URL has no path below it"))
        self.assertEqual(self.rows(), [])
        # Its own URL, with or without a slash, and any URL where the server does not say
        # where the receiver is (a WSGI server behind a proxy):
        for script_name, path_info in (("/ipn", ""), ("/ipn", "/"), ("", "/ipn"), ("", "/any/path")):
            answer = call(environ_for(method="GET", SCRIPT_NAME=script_name, PATH_INFO=path_info))
            self.assertEqual(answer.status, 200, (script_name, path_info))

    def test_every_digistore24_event_is_answered_ok_and_dispatched(self):
        seen = []
        for number, event in enumerate(ipn_receiver.DIGISTORE24_HANDLERS):
            self.handle(event, lambda n: seen.append((n.event, n["transaction_id"])))
            self.assertAnswer(post(payment(str(number), event=event)), 200, "OK")
        self.assertEqual(seen, [(event, str(number)) for number, event in enumerate(ipn_receiver.DIGISTORE24_HANDLERS)])

    def test_the_samples_are_answered_ok(self):
        for name in ("digistore24_on_payment", "digistore24_on_refund", "digistore24_connection_test",
                     "promopit_sale"):
            with self.subTest(sample=name):
                self.assertAnswer(post(fixture_fields(name)), 200, "OK")

    def test_the_worked_examples_are_answered_ok(self):
        # Their signatures are valid; those without an event are stored, not dispatched.
        for passphrase, fields, upper_keys, sha_sign in WORKED_EXAMPLES:
            ipn_receiver.use_settings(SHA_PASSPHRASE=passphrase, DATA_DIR=self.data_dir)
            with self.subTest(fields=fields, upper_keys=upper_keys):
                self.assertAnswer(post(dict(fields, sha_sign=sha_sign)), 200, "OK")

    def test_tampered_samples_are_refused(self):
        original = fixture_fields("digistore24_on_payment")
        for key in original:
            if key == "sha_sign":
                continue
            tampered = dict(original)
            tampered[key] = original[key] + "1" if original[key] else "1"
            with self.subTest(field=key):
                self.assertAnswer(post(tampered), 403, "ERROR: invalid sha signature")
        renamed = dict(original)
        renamed["Order_id"] = renamed.pop("order_id")
        self.assertAnswer(post(renamed), 403, "ERROR: invalid sha signature")
        self.assertAnswer(post(dict(original, sha_sign=original["sha_sign"][:-1] + "0")), 403,
                          "ERROR: invalid sha signature")
        self.assertAnswer(post(dict(original, extra="1")), 403, "ERROR: invalid sha signature")
        self.assertEqual(self.rows(), [])

    def test_a_forged_worked_example_is_refused(self):
        for passphrase, fields, upper_keys, sha_sign in WORKED_EXAMPLES:
            ipn_receiver.use_settings(SHA_PASSPHRASE=passphrase, DATA_DIR=self.data_dir)
            tampered = dict(fields, sha_sign=sha_sign, event="on_refund")
            self.assertAnswer(post(tampered), 403, "ERROR: invalid sha signature")

    def test_signature_variants_are_accepted(self):
        self.assertAnswer(post(signed(payment("1"), upper_keys=True)), 200, "OK")
        lower = payment("2")
        lower["sha_sign"] = lower["sha_sign"].lower()
        self.assertAnswer(post(lower), 200, "OK")
        shasign = payment("3")
        shasign["SHASIGN"] = shasign.pop("sha_sign")
        self.assertAnswer(post(shasign), 200, "OK")

    def test_promopit(self):
        self.assertAnswer(post(promopit_sale()), 200, "OK")
        self.assertAnswer(post(promopit_sale(isn_key="wrong")), 403, "ERROR: invalid isn key")
        self.assertAnswer(post(promopit_sale(isn_key="")), 403, "ERROR: invalid isn key")

    def test_unknown_events_are_answered_ok_stored_and_not_dispatched(self):
        called = []
        self.handle("on_payment", called.append)
        self.assertAnswer(post(payment("9", event="on_something_new")), 200, "OK")
        self.assertEqual(called, [])
        row = self.rows()[0]
        self.assertEqual((row["event"], row["status"], row["answer"]), ("on_something_new", "ignored", "OK"))
        self.assertIn("no handler for this event", self.log_text())

    def test_a_handler_set_to_none_counts_as_no_handler(self):
        self.handle("on_refund", None)
        self.assertAnswer(post(payment("9", event="on_refund")), 200, "OK")
        self.assertEqual(self.rows()[0]["status"], "ignored")

    def test_a_call_with_only_empty_fields_is_refused(self):
        import hashlib
        anyones = hashlib.sha512(b"").hexdigest().upper()
        for fields in ({"event": "", "sha_sign": anyones}, {"x": "", "y": "", "event": "", "sha_sign": anyones}):
            answer = post(fields)                     # unverifiable, and so without an event
            self.assertEqual((answer.status, answer.body), (400, "ERROR: missing event"))
        self.assertEqual(self.rows(), [])

    def test_missing_event(self):
        fields = {"order_id": "1", "transaction_id": "2"}
        self.assertAnswer(post(dict(fields, sha_sign="00")), 400, "ERROR: missing event")

    def test_not_a_notification(self):
        for body in (b"order_id=1&product=2", b"\x00\x01\x02", b"<xml/>"):
            answer = call(environ_for(body))
            self.assertEqual(answer.status, 400, body)
            self.assertTrue(answer.body.startswith("ERROR: not a Digistore24 or PromoPit notification"))
        self.assertAnswer(call(environ_for(b"")), 400,
                          "ERROR: the body is empty; expected the form fields of a notification")

    def test_secret_not_configured_is_503_naming_the_setting(self):
        for value in ("", ipn_receiver.PLACEHOLDERS["SHA_PASSPHRASE"]):
            ipn_receiver.use_settings(SHA_PASSPHRASE=value, ISN_KEY="", DATA_DIR=self.data_dir)
            answer = post(payment())
            self.assertEqual(answer.status, 503)
            self.assertTrue(answer.body.startswith("ERROR: SHA_PASSPHRASE "), answer.body)
            self.assertIn("IPN_SHA_PASSPHRASE", answer.body)
            answer = post(promopit_sale())
            self.assertEqual(answer.status, 503)
            self.assertTrue(answer.body.startswith("ERROR: ISN_KEY is not set"), answer.body)
        # A placeholder is refused even when the call is signed with it: fail closed.
        placeholder = ipn_receiver.PLACEHOLDERS["SHA_PASSPHRASE"]
        ipn_receiver.use_settings(SHA_PASSPHRASE=placeholder, DATA_DIR=self.data_dir)
        self.assertEqual(post(signed(payment(), passphrase=placeholder)).status, 503)
        self.assertEqual(self.rows(), [])

    def test_a_configuration_error_is_503_with_the_reason(self):
        ipn_receiver._settings = None
        with mock.patch.dict("os.environ", {"IPN_LOG_LEVEL": "LOUD", "IPN_DATA_DIR": self.data_dir}):
            answer = post(payment())
        self.assertEqual(answer.status, 503)
        self.assertIn("ERROR: configuration error: environment variable IPN_LOG_LEVEL", answer.body)

    def test_a_raising_handler_is_500_and_the_traceback_goes_to_the_log_only(self):
        def broken(notification):
            raise RuntimeError("database of accounts is down")
        self.handle("on_payment", broken)
        answer = post(payment())
        self.assertAnswer(answer, 500, "ERROR: handler failed")
        log = self.log_text()
        self.assertIn("Traceback (most recent call last)", log)
        self.assertIn("RuntimeError: database of accounts is down", log)
        self.assertIn("in broken", log)

    def test_a_handler_calling_sys_exit_is_a_failed_handler_not_a_dead_process(self):
        self.handle("on_payment", lambda n: __import__("sys").exit(3))
        self.assertAnswer(post(payment()), 500, "ERROR: handler failed")

    def test_every_error_body_starts_with_error(self):
        answers = [call(environ_for(b"x", content_type="text/plain")), call(environ_for(b"", method="PUT")),
                   post({"order_id": "1"}), post(dict(payment(), sha_sign="0"))]
        for answer in answers:
            self.assertTrue(answer.body.startswith("ERROR: "), answer)
            self.assertGreaterEqual(answer.status, 400)

    def test_error_answers_do_not_echo_the_request(self):
        marker = "ECHO-MARKER-<script>"
        for fields in ({"event": marker, "sha_sign": "1"}, {marker: "1"}, {"isn_key": marker}):
            answer = post(fields)
            self.assertNotIn("ECHO-MARKER", answer.body)
        answer = call(environ_for(b"x", content_type="text/" + marker))
        self.assertNotIn("ECHO-MARKER", answer.body)


class AccessData(ReceiverTestCase):
    """on_payment may return thank-you page and access data lines (PROTOCOL.md, "The answer")."""

    def test_returned_items_become_key_value_lines_after_ok(self):
        self.handle("on_payment", lambda n: {"username": "jane", "password": "pw 1", "loginurl": "https://x/",
                                             "username_2": "j2", "show_on": "invoice,receipt_page"})
        answer = post(payment())
        self.assertEqual(answer.body, "OK\nusername: jane\npassword: pw 1\nloginurl: https://x/\n"
                                      "username_2: j2\nshow_on: invoice,receipt_page")

    def test_other_events_send_only_ok(self):
        self.handle("on_refund", lambda n: {"username": "jane"})
        self.assertEqual(post(payment(event="on_refund")).body, "OK")
        self.assertIn("only on_payment's are sent", self.log_text())

    def test_a_line_break_in_a_value_fails_the_handler_without_leaking_the_value(self):
        self.handle("on_payment", lambda n: {"password": "secret-one\nthankyou_url: https://evil"})
        answer = post(payment())
        self.assertEqual((answer.status, answer.body), (500, "ERROR: handler failed"))
        self.assertNotIn("secret-one", self.log_text())
        self.assertEqual(self.rows()[0]["status"], "failed")

    def test_a_non_dict_result_fails_the_handler(self):
        self.handle("on_payment", lambda n: "OK")
        self.assertEqual(post(payment()).status, 500)
        self.assertIn("returned str", self.rows()[0]["last_error"])

    def test_unknown_keys_are_sent_with_a_warning(self):
        self.handle("on_payment", lambda n: {"licence_key": "ABC"})
        self.assertEqual(post(payment()).body, "OK\nlicence_key: ABC")
        self.assertIn("Digistore24 does not know", self.log_text())


class TheNotification(ReceiverTestCase):
    def capture(self, event="on_payment", table="DIGISTORE24_HANDLERS"):
        seen = []
        self.handle(event, seen.append, table)
        return seen

    def test_digistore24_notification(self):
        seen = self.capture()
        fields = payment()
        post(fields)
        notification = seen[0]
        self.assertEqual((notification.provider, notification.event), ("digistore24", "on_payment"))
        self.assertTrue(notification.is_test)                       # the sample has api_mode=test
        self.assertEqual(len(notification.fields), 172)
        self.assertNotIn("sha_sign", notification.fields)
        self.assertEqual(notification["order_id"], "A1B2C3D4")
        self.assertEqual(notification.get("purchase_id"), "")
        self.assertEqual(notification.get("purchase_id", None), None)
        self.assertIn("email", notification)
        with self.assertRaises(KeyError) as caught:
            notification["purchase_id"]
        self.assertIn("no field 'purchase_id'", str(caught.exception))
        self.assertEqual(notification.add_info, {})
        self.assertIsInstance(notification.id, int)

    def test_live_mode_is_not_a_test(self):
        seen = self.capture()
        post(payment(api_mode="live"))
        self.assertFalse(seen[0].is_test)

    def test_promopit_notification_and_its_questions(self):
        seen = self.capture("sale", "PROMOPIT_HANDLERS")
        post(promopit_sale(add_info_3="Size", add_value_3="XL"))
        notification = seen[0]
        self.assertEqual((notification.provider, notification.event, notification.is_test), ("promopit", "sale", True))
        self.assertNotIn("isn_key", notification.fields)
        self.assertEqual(list(notification.add_info.items()), [("Color", "Red"), ("Name", "Mark"), ("Size", "XL")])
        self.assertEqual(notification["customer_name"], "Ana Müller")

    def test_shasign_is_removed_too(self):
        seen = self.capture()
        fields = payment()
        fields["SHASIGN"] = fields.pop("sha_sign")
        post(fields)
        self.assertNotIn("SHASIGN", seen[0].fields)

    def test_handlers_are_looked_up_when_a_call_arrives(self):
        seen = []
        ipn_receiver.DIGISTORE24_HANDLERS["on_custom_event"] = seen.append
        self.assertEqual(post(payment(event="on_custom_event")).body, "OK")
        self.assertEqual(len(seen), 1)


if __name__ == "__main__":
    unittest.main()
