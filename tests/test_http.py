"""The HTTP contract, as application() keeps it under CGI, WSGI and the local server.

| request                                         | answer                                   |
|-------------------------------------------------|------------------------------------------|
| GET / HEAD                                      | 200, a status line starting "OK"         |
| a verified notification                         | 200 "OK" (+ on_payment's answer lines)   |
| an unknown event, or none, verified             | 200 "OK", stored, not dispatched         |
| "no_signature_passphrase_provided" as signature | 403 "ERROR: no signature: ..."           |
| no signature at all, or an empty one            | 403 "ERROR: unsigned call: ..."          |
| a wrong signature / ISN key                     | 403 "ERROR: invalid sha signature/isn key"|
| the needed secret not set, placeholder, short   | 503 "ERROR: <SETTING> is not set, ..."   |
| a configuration error                           | 503 naming the file, the line and check  |
| the handler raised                              | 500 naming handler, exception type, id   |
| not a form of a known sender, missing event     | 400                                      |
| body over MAX_BODY_BYTES / other content types  | 413 / 415                                |
| other methods                                   | 405 with Allow                           |
| a path below the script's URL (SCRIPT_NAME set) | 404                                      |
"""

import unittest
from unittest import mock

from helpers import (ISN_KEY, PASSPHRASE, ReceiverTestCase, call, environ_for, fixture_fields,
                     ipn_receiver, payment, post, promopit_sale, signed, urlencode)
from test_signature import WORKED_EXAMPLES

INVALID_SIGNATURE = "ERROR: " + ipn_receiver.INVALID_SIGNATURE_ANSWER
INVALID_ISN_KEY = "ERROR: " + ipn_receiver.INVALID_ISN_KEY_ANSWER
MISSING_EVENT = "ERROR: " + ipn_receiver.MISSING_EVENT_ANSWER


class Answers(ReceiverTestCase):
    def assertAnswer(self, answer, status, body):
        self.assertEqual((answer.status, answer.body), (status, body))
        self.assertEqual(answer.headers["Content-Type"], "text/plain; charset=utf-8")
        self.assertEqual(answer.headers["Content-Length"], str(len(answer.body.encode("utf-8"))))
        # No cache may keep an answer (it may hold access data), and no browser guess its type.
        self.assertEqual(answer.headers["Cache-Control"], "no-store")
        self.assertEqual(answer.headers["X-Content-Type-Options"], "nosniff")

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
        # Methods are case-sensitive, as HTTP says: "post" is not POST. ("poſt": Python's upper()
        # makes it POST, in 3.7 and later.)
        for method in ("PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW", "post", "Post", "poſt", "head"):
            answer = call(environ_for(urlencode(payment()), method=method))
            self.assertEqual(answer.status, 405)
            self.assertEqual(answer.headers["Allow"], "GET, HEAD, POST")
            self.assertTrue(answer.body.startswith("ERROR: method not allowed"))

    def test_a_url_below_the_receiver_is_not_found(self):
        for method in ("GET", "POST"):
            answer = call(environ_for(urlencode(payment()), method=method, SCRIPT_NAME="/ipn_receiver.py",
                                      PATH_INFO="/config.ini"))
            self.assertEqual((answer.status, answer.body), (404, "ERROR: not found: nothing is below the "
                                                                 "receiver's URL; register the URL of the script itself"))
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
        # The first two sign the same fields in either variant: one notification. Those without an
        # event are stored with none.
        self.assertEqual([row["event"] for row in self.rows()], ["", "", "on_payment", "on_payment", "on_payment"])

    def test_an_internal_error_is_500_and_its_traceback_goes_to_the_log(self):
        with mock.patch.object(ipn_receiver, "read_form", side_effect=ZeroDivisionError("a bug")):
            self.assertAnswer(post(payment()), 500, "ERROR: internal error in ipn_receiver; the sender retries later; "
                                                    "the traceback is in ipn_receiver.log, please report it with "
                                                    "the version of ipn_receiver.py")
        self.assertIn("ZeroDivisionError: a bug", self.log_text())

    def test_altered_field_names_are_refused_in_words(self):
        split = dict(payment("1"))
        split["custom=a"] = "b"
        self.assertAnswer(post(signed({k: v for k, v in split.items() if k != "sha_sign"})), 400,
                          'ERROR: a field name contains "="; Digistore24 never sends one, so this call was altered '
                          'on the way')
        cased = {k: v for k, v in payment("2").items() if k != "sha_sign"}
        cased["ORDER_ID"] = "x"
        self.assertAnswer(post(signed(cased, upper_keys=True)), 400,
                          "ERROR: two field names differ only in upper and lower case; Digistore24 never sends that, "
                          "so this call was altered on the way")
        self.assertAnswer(post(dict(payment("3"), isn_key="k")), 400,
                          "ERROR: the call has both an isn_key and a sha_sign field; PromoPit sends only the first "
                          "and Digistore24 only the second")

    def test_tampered_samples_are_refused(self):
        original = fixture_fields("digistore24_on_payment")
        for key in original:
            if key == "sha_sign":
                continue
            tampered = dict(original)
            tampered[key] = original[key] + "1" if original[key] else "1"
            with self.subTest(field=key):
                self.assertAnswer(post(tampered), 403, INVALID_SIGNATURE)
        renamed = dict(original)
        renamed["Order_id"] = renamed.pop("order_id")
        self.assertAnswer(post(renamed), 403, INVALID_SIGNATURE)
        self.assertAnswer(post(dict(original, sha_sign=original["sha_sign"][:-1] + "0")), 403,
                          INVALID_SIGNATURE)
        self.assertAnswer(post(dict(original, extra="1")), 403, INVALID_SIGNATURE)
        self.assertEqual(self.rows(), [])

    def test_a_forged_worked_example_is_refused(self):
        for passphrase, fields, upper_keys, sha_sign in WORKED_EXAMPLES:
            ipn_receiver.use_settings(SHA_PASSPHRASE=passphrase, DATA_DIR=self.data_dir)
            tampered = dict(fields, sha_sign=sha_sign, event="on_refund")
            self.assertAnswer(post(tampered), 403, INVALID_SIGNATURE)

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
        self.assertAnswer(post(promopit_sale(isn_key="wrong")), 403, INVALID_ISN_KEY)
        self.assertEqual(post(promopit_sale(isn_key="")).body[:22], "ERROR: unsigned call: ")

    def test_an_empty_field_of_the_other_senders_decides_nothing(self):
        # An empty field carries nothing: it cannot make a genuine call one that names both senders.
        self.assertAnswer(post(dict(payment("1"), isn_key="")), 200, "OK")
        self.assertAnswer(post(dict(promopit_sale(), sha_sign="", SHASIGN="")), 200, "OK")
        self.assertEqual([row["provider"] for row in self.rows()], ["digistore24", "promopit"])

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
            self.assertEqual((answer.status, answer.body), (400, MISSING_EVENT))
        self.assertEqual(self.rows(), [])

    def test_missing_event(self):
        fields = {"order_id": "1", "transaction_id": "2"}
        self.assertAnswer(post(dict(fields, sha_sign="00")), 400, MISSING_EVENT)

    def test_not_a_notification(self):
        for body in (b"order_id=1&product=2", b"\x00\x01\x02", b"<xml/>"):
            answer = call(environ_for(body))
            self.assertEqual(answer.status, 400, body)
            self.assertTrue(answer.body.startswith("ERROR: not a Digistore24 or PromoPit notification"))
        self.assertAnswer(call(environ_for(b"")), 400,
                          "ERROR: the body is empty; expected the form fields of a notification")

    def test_a_secret_that_cannot_be_used_verifies_nothing_even_a_call_signed_with_it(self):
        # Too short; or a passphrase that is the ISN key too: PromoPit sends its key in every call,
        # and whoever saw one would sign any Digistore24 call with it (the 35th review). PromoPit's
        # own calls lose nothing by that.
        for passphrase, isn_key, promopit_status in (("abc", "k1", 503), ("shared-secret-1", "shared-secret-1", 200)):
            with self.subTest(passphrase=passphrase):
                ipn_receiver.use_settings(SHA_PASSPHRASE=passphrase, ISN_KEY=isn_key, DATA_DIR=self.data_dir)
                answer = post(signed(payment(), passphrase=passphrase))
                self.assertEqual((answer.status, answer.body), (503, "ERROR: " + ipn_receiver.unusable_secret_answer(
                    "SHA_PASSPHRASE")))
                self.assertEqual(post(promopit_sale(isn_key=isn_key)).status, promopit_status)
        self.assertEqual([row["provider"] for row in self.rows()], ["promopit"])

    def test_secret_not_configured_is_503_naming_the_setting_but_not_what_is_wrong_with_it(self):
        # Not set, the placeholder, or too short: one answer, so that a caller does not learn that a
        # secret is short enough to be worth guessing. `check` says which.
        placeholders = ipn_receiver.PLACEHOLDERS
        for passphrase, isn_key in (("", ""), (placeholders["SHA_PASSPHRASE"], placeholders["ISN_KEY"]),
                                    ("1234567", "7654321")):
            ipn_receiver.use_settings(SHA_PASSPHRASE=passphrase, ISN_KEY=isn_key, DATA_DIR=self.data_dir)
            self.assertAnswer(post(payment()), 503, "ERROR: SHA_PASSPHRASE cannot be used (not set, the placeholder, "
                              "or under 8 characters, or the same as ISN_KEY); run `python3 ipn_receiver.py check` "
                              "on the server, as the web server runs the receiver (its user, its environment): it "
                              "says which, and where to put your Digistore24 IPN passphrase")
            self.assertAnswer(post(promopit_sale()), 503, "ERROR: ISN_KEY cannot be used (not set, the placeholder, "
                              "or under 8 characters); run `python3 ipn_receiver.py check` on the server, as the "
                              "web server runs the receiver (its user, its environment): it says which, and where to "
                              "put your PromoPit ISN key")
            # The vendor's own log says which (the 51st review), and never the value.
            state = "is too short" if passphrase == "1234567" else "is still the placeholder" if passphrase else \
                "is not set"
            self.assertIn("503, refused: SHA_PASSPHRASE %s" % state, self.log_text())
            self.assertIn("503, refused: ISN_KEY %s" % state, self.log_text())
        self.assertNotIn("1234567", self.log_text())
        # A placeholder is refused even when the call is signed with it: fail closed.
        placeholder = ipn_receiver.PLACEHOLDERS["SHA_PASSPHRASE"]
        ipn_receiver.use_settings(SHA_PASSPHRASE=placeholder, DATA_DIR=self.data_dir)
        self.assertEqual(post(signed(payment(), passphrase=placeholder)).status, 503)
        self.assertEqual(self.rows(), [])

    def test_a_configuration_error_is_503_naming_where_and_check(self):
        ipn_receiver._settings = None
        with mock.patch.dict("os.environ", {"IPN_LOG_LEVEL": "LOUD", "IPN_DATA_DIR": self.data_dir}):
            answer = post(payment())
        # check run without the web server's environment would find nothing (the 51st review).
        self.assertAnswer(answer, 503, "ERROR: configuration error in the environment variable IPN_LOG_LEVEL; run "
                                       "`python3 ipn_receiver.py check` on the server, with IPN_LOG_LEVEL set as the "
                                       "web server sets it, to see what to change")

    def test_signed_without_a_passphrase_says_where_to_set_one(self):
        # What Digistore24 sends when its IPN connection has no passphrase (seen in real calls).
        for name in ("sha_sign", "SHASIGN"):
            fields = dict(fixture_fields("digistore24_on_payment"))
            del fields["sha_sign"]
            fields[name] = "no_signature_passphrase_provided"
            answer = post(fields)
            self.assertEqual(answer.status, 403)
            self.assertEqual(answer.body, "ERROR: no signature: Digistore24 sent none because its IPN connection "
                                          "has no passphrase; enter one there (Settings > Integrations (IPN), edit "
                                          "the connection, IPN passphrase) and the same one as SHA_PASSPHRASE of "
                                          "ipn_receiver")
        # Even where the receiver has no passphrase either: the same passphrase goes into both.
        ipn_receiver.use_settings(SHA_PASSPHRASE="", DATA_DIR=self.data_dir)
        self.assertTrue(post(fields).body.startswith("ERROR: no signature: "))
        self.assertEqual(self.rows(), [])

    def test_a_call_with_no_signature_at_all_is_not_told_that_the_passphrases_differ(self):
        # Nothing to compare: not from Digistore24's IPN, nor from PromoPit (no isn_key either).
        fields = dict(fixture_fields("digistore24_on_payment"))
        del fields["sha_sign"]
        for extra in ({}, {"sha_sign": ""}, {"SHASIGN": ""}, {"sha_sign": "", "SHASIGN": ""}):
            answer = post(dict(fields, **extra))
            self.assertEqual((answer.status, answer.body), (403, "ERROR: unsigned call: its sha_sign (Digistore24) "
                             "or isn_key (PromoPit) is missing or empty; register this URL only with Digistore24 (as "
                             "an IPN connection) and PromoPit (as the ISN URL)"), extra)
        # An empty isn_key alike, whether ISN_KEY is usable or not: the caller learns nothing of it.
        for isn_key in (ISN_KEY, ""):
            ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=isn_key, DATA_DIR=self.data_dir)
            answer = post(dict(promopit_sale(), isn_key=""))
            self.assertEqual((answer.status, answer.body[:22]), (403, "ERROR: unsigned call: "), isn_key)
        self.assertEqual(self.rows(), [])

    def test_a_handler_with_a_long_name_is_named_shortened(self):
        def a_handler_whose_name_is_very_long_indeed_and_longer(notification):
            raise KeyError("x")
        self.handle("on_payment", a_handler_whose_name_is_very_long_indeed_and_longer)
        self.assertAnswer(post(payment()), 500, "ERROR: handler a_handler_whose_name_is_very_long_indeed...(51 "
                                                "characters) failed (KeyError) for notification #1; the traceback "
                                                "is in ipn_receiver.log")

    def test_an_exception_class_with_a_long_name_is_named_cut_short(self):
        # (A class may be given any name: a handler's own, made up from data.)
        long_named = type("E" * 45, (Exception,), {})

        def raising(notification):
            raise long_named()
        self.handle("on_payment", raising)
        self.assertAnswer(post(payment()), 500, "ERROR: handler raising failed (%s...(45 characters)) for notification "
                                                "#1; the traceback is in ipn_receiver.log" % ("E" * 40))

    def test_a_raising_handler_is_500_naming_it_and_the_traceback_goes_to_the_log_only(self):
        def broken(notification):
            raise RuntimeError("database of accounts is down for jane@example.com")
        self.handle("on_refund", broken)
        answer = post(payment(event="on_refund"))
        self.assertAnswer(answer, 500, "ERROR: handler broken failed (RuntimeError) for notification #1; the "
                                       "traceback is in ipn_receiver.log")
        log = self.log_text()
        self.assertIn("Traceback (most recent call last)", log)
        self.assertIn("RuntimeError: database of accounts is down", log)
        self.assertIn("in broken", log)

    def test_a_handler_calling_sys_exit_is_a_failed_handler_not_a_dead_process(self):
        def on_payment(notification):
            __import__("sys").exit(3)
        self.handle("on_payment", on_payment)
        self.assertAnswer(post(payment()), 500, "ERROR: handler on_payment failed (SystemExit) for notification "
                                                "#1; the traceback is in ipn_receiver.log")

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
        self.assertLogged("WARNING", "on_refund returned answer lines; only on_payment's are sent, these are ignored")

    def test_line_breaks_and_controls_become_spaces_never_a_failure_after_the_work(self):
        # The account exists once the handler returns: failing now would make every retry
        # create another. So the answer is made safe to send, with a warning in the log.
        runs = []

        def grant(notification):
            runs.append(1)
            return {"username": "Jane\r\nthankyou_url: https://evil", "head\x00line": "Welcome\u2028\x0b\x85 Jane",
                    "password": "secret-one\ud800"}
        self.handle("on_payment", grant)
        for _ in range(3):
            answer = post(payment())
            self.assertEqual(answer.status, 200)
            self.assertEqual(answer.body, "OK\nusername: Jane  thankyou_url: https://evil\nhead line: Welcome    Jane\n"
                                          "password: secret-one\ufffd")
        self.assertEqual(len(runs), 1)
        self.assertEqual(self.rows()[0]["status"], "done")
        # Each warning says what was replaced (the 70th review: one text named all four).
        self.assertLogged("WARNING", "on_payment's answer line username had a line break or control character; "
                                     "sent with that replaced")
        self.assertLogged("WARNING", "on_payment's answer line head\\x00line had a line break or control character; "
                                     "sent with that replaced")
        self.assertLogged("WARNING", "on_payment's answer line password had bytes that were not UTF-8; sent with "
                                     "that replaced")
        self.assertNotIn("secret-one", self.log_text())

    def test_a_colon_in_a_key_becomes_a_space(self):
        self.handle("on_payment", lambda n: {"": "lost", "pass:word": "x", "  ": "lost too", "username": "u"})
        self.assertEqual(post(payment()).body, "OK\npass word: x\nusername: u")
        self.assertLogged("WARNING", "on_payment's answer line pass:word had a colon in its key; sent with that "
                                     "replaced")
        self.assertLogged("WARNING", "on_payment returned an answer line without a key; it is left out")

    def test_clean_lines_go_out_without_a_warning(self):
        self.handle("on_payment", lambda n: {"username": "jane", "password_2": "x", "headline": 12})
        self.assertEqual(post(payment()).body, "OK\nusername: jane\npassword_2: x\nheadline: 12")
        self.assertEqual([level for level, _ in self.log_messages()], ["INFO"])

    def test_a_known_key_with_something_after_it_is_unknown(self):
        # Only an account's keys take a number, and only as _2, _3, ... (PROTOCOL.md).
        keys = ["passwordX", "username_", "username2", "headline_2", "password_02", "loginurl_x2", "username_X"]
        self.handle("on_payment", lambda n: dict.fromkeys(keys, "1"))
        self.assertEqual(post(payment()).body, "OK\n" + "\n".join(key + ": 1" for key in keys))
        known = ("known: thankyou_url, username, password, loginurl, headline, show_on, hide_on, and username_2, "
                 "password_2, loginurl_2, ...")
        for key in keys:
            self.assertLogged("WARNING", "on_payment returned the answer line %s, which Digistore24 does not know; %s"
                              % (key, known))

    def test_more_accounts_are_known(self):
        self.handle("on_payment", lambda n: {"username_2": "a", "password_2": "b", "loginurl_12": "c"})
        self.assertEqual(post(payment()).body, "OK\nusername_2: a\npassword_2: b\nloginurl_12: c")
        self.assertEqual([level for level, _ in self.log_messages()], ["INFO"])

    def test_html_is_sent_with_a_warning(self):
        # Digistore24 takes plain text: the line goes out as it is, and the log says why it shows so.
        self.handle("on_payment", lambda n: {"headline": "Welcome <b>Jane</b>", "username": "a<b"})
        self.assertEqual(post(payment()).body, "OK\nheadline: Welcome <b>Jane</b>\nusername: a<b")
        self.assertLogged("WARNING", "on_payment's answer line headline looks like HTML; Digistore24 shows it as "
                                     "plain text")
        self.assertNotIn("line username looks", self.log_text())

    def test_a_blank_or_bytes_value_is_sent_with_a_warning(self):
        # A password left None went to the buyer blank, and bytes as "b'jane'", with nothing in
        # the log (the 48th review).
        self.handle("on_payment", lambda n: {"username": b"jane", "password": None, "loginurl": " ", "x": 0})
        self.assertEqual(post(payment()).body, "OK\nusername: b'jane'\npassword: \nloginurl:  \nx: 0")
        self.assertLogged("WARNING", "on_payment's answer line username is bytes, which show as b'...' (decode them "
                                     "first); sent as it is")
        for key in ("password", "loginurl"):
            self.assertLogged("WARNING", "on_payment's answer line %s is empty: the buyer sees nothing there; sent as "
                                         "it is" % key)
        self.assertNotIn("line x is", self.log_text())

    def test_a_long_key_of_html_is_named_shortened(self):
        key = "username_" + "1" * 40
        self.handle("on_payment", lambda n: {key: "<i>x</i>"})
        post(payment())
        self.assertLogged("WARNING", "on_payment's answer line %s...(49 characters) looks like HTML; Digistore24 "
                                     "shows it as plain text" % key[:40])

    def test_a_long_key_with_a_line_break_is_named_shortened(self):
        key = "user" + "\x0b" * 50 + "name"
        self.handle("on_payment", lambda n: {key: "1"})
        post(payment())
        self.assertLogged("WARNING", "on_payment's answer line user%s...(58 characters) had a line break or "
                                     "control character; sent with that replaced"
                                     % ("\\x0b" * 36))

    def test_a_long_unknown_key_is_named_shortened(self):
        key = "passwordX" + "x" * 50
        self.handle("on_payment", lambda n: {key: "1"})
        self.assertEqual(post(payment()).body, "OK\n%s: 1" % key)
        self.assertLogged("WARNING", "on_payment returned the answer line %s...(59 characters), which Digistore24 "
                                     "does not know; known: thankyou_url, username, password, loginurl, headline, "
                                     "show_on, hide_on, and username_2, password_2, loginurl_2, ..." % key[:40])

    def test_a_lone_surrogate_at_either_end_of_its_range_becomes_a_replacement_character(self):
        self.handle("on_payment", lambda n: {"username": "a\ud800b\udfffc"})
        self.assertEqual(post(payment()).body, "OK\nusername: a\ufffdb\ufffdc")
        self.assertEqual(self.rows()[0]["status"], "done")

    def test_a_non_dict_result_is_answered_ok_without_lines(self):
        self.handle("on_payment", lambda n: "username: jane")
        answer = post(payment())
        self.assertEqual((answer.status, answer.body), (200, "OK"))
        self.assertLogged("ERROR", "on_payment returned str, not a dict of answer lines: answered OK without lines")

    def test_a_result_that_cannot_be_read_is_answered_ok_without_lines(self):
        class Unprintable:
            def __str__(self):
                raise ValueError("no")
        self.handle("on_payment", lambda n: {"username": Unprintable()})
        self.assertEqual(post(payment()).body, "OK")
        self.assertLogged("ERROR", "on_payment: its answer lines could not be read; answered OK without them")

    def test_a_secret_in_an_answer_line_is_masked(self):
        self.handle("on_payment", lambda n: {"password": "is " + PASSPHRASE, PASSPHRASE: "key"})
        self.assertEqual(post(payment()).body, "OK\npassword: is [secret]\n[secret]: key")
        self.assertLogged("WARNING", "on_payment's answer line password had a configured secret; sent with that "
                                     "replaced")
        self.assertLogged("WARNING", "on_payment's answer line [secret] had a configured secret; sent with that "
                                     "replaced")

    def test_an_answer_line_with_several_things_replaced_names_each(self):
        self.handle("on_payment", lambda n: {"password": "is\t" + PASSPHRASE + "\udfff"})
        self.assertEqual(post(payment()).body, "OK\npassword: is [secret]\ufffd")
        self.assertLogged("WARNING", "on_payment's answer line password had a line break or control character and a "
                                     "configured secret and bytes that were not UTF-8; sent with that replaced")

    def test_a_long_key_with_an_empty_value_is_named_shortened(self):
        key = "username_" + "1" * 41
        self.handle("on_payment", lambda n: {key: ""})
        post(payment())
        self.assertLogged("WARNING", "on_payment's answer line %s...(50 characters) is empty: the buyer sees nothing "
                                     "there; sent as it is" % key[:40])

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
        # The fields the signature covers, in the order sent: every non-empty one, no signature.
        sent = [(key, value) for key, value in fields.items() if key != "sha_sign"]
        self.assertEqual(list(notification.fields.items()), [(key, value) for key, value in sent if value])
        self.assertEqual(len(notification.fields), 114)             # of 172: 58 were sent empty
        self.assertNotIn("sha_sign", notification.fields)
        self.assertEqual(notification["order_id"], "A1B2C3D4")
        self.assertEqual(notification.get("placeholder_TITLE"), fields["placeholder_TITLE"])    # as signed
        self.assertEqual(notification.get("purchase_id"), "")
        self.assertEqual(notification.get("purchase_id", None), None)
        self.assertIn("email", notification)
        with self.assertRaises(KeyError) as caught:
            notification["purchase_id"]
        self.assertIn("no field 'purchase_id'", str(caught.exception))
        # A field sent empty is not there: get() gives "" for it, [] says so.
        self.assertEqual(fields["affiliate_name"], "")
        self.assertEqual(notification.get("affiliate_name"), "")
        self.assertNotIn("affiliate_name", notification)
        with self.assertRaises(KeyError) as caught:
            notification["affiliate_name"]
        self.assertIn("a field sent empty is left out", str(caught.exception))
        self.assertEqual(notification.add_info, {})
        self.assertIsInstance(notification.id, int)
        # Read as a dict is (the 48th review: `for name in notification` raised AttributeError).
        self.assertEqual(list(notification), list(notification.fields))
        self.assertEqual(dict(notification), notification.fields)
        self.assertEqual((list(notification.items()), list(notification.values()), len(notification)),
                         (list(notification.fields.items()), list(notification.fields.values()),
                          len(notification.fields)))
        self.assertEqual((notification.get(0), 0 in notification), ("", False))
        # Its repr escapes what the sender wrote (the 72nd review: a handler's print(repr(...)) sent
        # an escape sequence to the vendor's terminal under replay).
        copy = ipn_receiver.Notification("digistore24", {"order_id": "A\x1b[31m0", "event": "on_payment"})
        self.assertEqual(repr(copy), "<Notification digistore24 on_payment order A\\x1b[31m0 txn ->")

    def test_upper_keys_variant_fields_are_in_lower_case_and_found_in_any_case(self):
        seen = self.capture()
        fields = dict(payment())
        del fields["sha_sign"]
        post(signed({key.upper(): value for key, value in fields.items()}, upper_keys=True))
        notification = seen[0]
        self.assertEqual(notification["order_id"], "A1B2C3D4")
        self.assertEqual(notification.get("ORDER_ID"), "A1B2C3D4")
        self.assertEqual(notification.get("placeholder_TITLE"), fields["placeholder_TITLE"])
        self.assertIn("placeholder_title", notification.fields)
        self.assertTrue(all(key == key.lower() for key in notification.fields))

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

    def test_promopit_questions_after_a_gap_are_kept(self):
        # A pair sent empty is left out, so the numbers may skip: every pair sent counts.
        seen = self.capture("sale", "PROMOPIT_HANDLERS")
        post(promopit_sale(add_info_1="", add_value_1="", add_info_2="", add_value_2="", add_info_3="Size",
                           add_value_3="XL", add_info_10="Gift", add_value_10="no", add_value_4="orphan",
                           add_info_6="Unanswered", add_info_05="Padded", add_info_X="junk", add_info_="junk",
                           add_value_="junk", **{"add_info_" + "9" * 5000: "a number too long for int()",
                                                 "add_value_" + "9" * 19: "longer than any number PromoPit writes"}))
        self.assertEqual(list(seen[0].add_info.items()), [("Size", "XL"), ("add_info_4", "orphan"), ("Unanswered", ""),
                                                          ("Gift", "no")])
        self.assertEqual(seen[0]["add_info_" + "9" * 5000], "a number too long for int()")

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
