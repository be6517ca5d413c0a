"""The event store: every verified notification recorded durably before OK, its handler run once
per distinct notification, retries answered like the original, failures retried."""

import contextlib
import errno
import inspect
import io
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

from helpers import (ISN_KEY, PASSPHRASE, PYTHON, SCRIPT, ReceiverTestCase, fixture_fields, generated, ipn_receiver, payment, post,
                     promopit_sale, read_only_folder, readable_keys, signed)

STORAGE_ERROR = ipn_receiver.STORAGE_ERROR
BUSY = ipn_receiver.BUSY_ANSWER


class Recording(ReceiverTestCase):
    def test_the_store_is_created_on_first_use_in_wal_mode_with_a_schema_version(self):
        path = os.path.join(self.data_dir, "events.sqlite3")
        self.assertFalse(os.path.exists(path))
        post(payment())
        connection = sqlite3.connect(path)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone()[0], ipn_receiver.SCHEMA_VERSION)
        connection.close()

    def test_a_store_of_schema_1_gets_its_second_index_of_keys_and_keeps_its_rows(self):
        # As the receiver before schema 2 wrote it: the table, its UNIQUE key, user_version 1.
        runs = []
        self.handle("on_payment", lambda notification: runs.append(notification["transaction_id"]))
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        connection.execute(ipn_receiver.SCHEMA)
        connection.execute("INSERT INTO notifications (received_at, provider, event, duplicate_key, is_test, status, "
                           "attempts, deliveries, answer, updated_at, fields) VALUES (0, 'digistore24', 'on_payment', "
                           "'digistore24:on_payment:1001', 0, 'done', 1, 1, 'OK', 0, '{}')")
        connection.execute("PRAGMA user_version = 1")
        connection.commit()
        connection.close()
        self.assertEqual(post(payment("1001")).body, "OK")
        self.assertEqual(post(payment("2002")).body, "OK")
        self.assertEqual(runs, ["2002"])
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone()[0], 2)
        self.assertEqual(connection.execute("SELECT duplicate_key FROM notifications INDEXED BY duplicate_keys "
                                            "ORDER BY duplicate_key").fetchall(),
                         [("digistore24:on_payment:1001",), ("digistore24:on_payment:2002",)])
        connection.close()

    def test_a_store_another_process_migrated_meanwhile_is_left_as_it_is(self):
        # Two calls find schema 1; one migrates while the other waits for the lock, then reads
        # schema 2 under it: nothing more to do, and no "newer receiver" either.
        post(payment("1"))
        connection = ipn_receiver.open_store(ipn_receiver.settings())
        ipn_receiver.migrate_store(connection)
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone()[0], 2)
        self.assertEqual(post(payment("1")).body, "OK")

    def test_commits_are_synchronous_full(self):
        post(payment())
        connection = ipn_receiver.open_store(ipn_receiver.settings())
        self.assertEqual(connection.execute("PRAGMA synchronous").fetchone()[0], 2)   # 2 = FULL

    def test_a_row_holds_the_notification_and_what_was_answered(self):
        self.handle("on_payment", lambda n: {"username": "u1"})
        before = time.time()
        sent = payment()
        post(sent)
        row = self.rows()[0]
        expected_fields = {key: value for key, value in sent.items() if value and key != "sha_sign"}
        self.assertEqual(json.loads(row["fields"]), expected_fields)
        self.assertEqual(list(json.loads(row["fields"])), list(expected_fields))      # order kept
        self.assertEqual((row["provider"], row["event"], row["status"], row["attempts"], row["deliveries"]),
                         ("digistore24", "on_payment", "done", 1, 1))
        self.assertEqual(row["duplicate_key"], "digistore24:on_payment:3999938")
        self.assertEqual(row["is_test"], 1)
        self.assertEqual(row["answer"], "OK\nusername: u1")
        self.assertIsNone(row["last_error"])
        self.assertGreaterEqual(row["received_at"], before)
        self.assertGreaterEqual(row["updated_at"], row["received_at"])

    def test_the_handler_runs_while_the_row_is_processing_and_ok_comes_after_done(self):
        states = []
        self.handle("on_payment", lambda n: states.append((self.rows()[0]["status"], self.rows()[0]["claim"])))
        self.assertEqual(post(payment()).body, "OK")
        self.assertEqual([status for status, _ in states], ["processing"])
        self.assertRegex(states[0][1], r"^\d+-[0-9a-f]{12}$")     # who runs it: process id and a nonce
        self.assertEqual((self.rows()[0]["status"], self.rows()[0]["claim"]), ("done", None))
        self.assertNotIn("PROCESSING_TIMEOUT", self.log_text())

    def test_a_failed_transaction_is_rolled_back_and_the_next_call_is_taken(self):
        # In a long-running process the connection stays open: a transaction left open by a
        # failure would make every later call on it fail.
        real_open = ipn_receiver.open_store

        class FailingOnce:
            """The store's connection, but the first statement starting with `prefix` fails."""

            def __init__(self, connection, prefix):
                self.connection, self.prefix = connection, prefix

            def execute(self, sql, *args):
                if self.prefix and sql.startswith(self.prefix):
                    self.prefix = None
                    raise sqlite3.OperationalError("disk I/O error")
                return self.connection.execute(sql, *args)

        for number, prefix in enumerate(("INSERT OR IGNORE", "UPDATE notifications SET status = ?")):
            failing = []
            with mock.patch.object(ipn_receiver, "open_store",
                                   lambda config: failing[0] if failing else failing.append(
                                       FailingOnce(real_open(config), prefix)) or failing[0]):
                self.assertEqual(post(payment("fail-%d" % number)).status, 503, prefix)
            self.assertEqual(post(payment("next-%d" % number)).body, "OK", prefix)

    def test_a_done_row_without_a_stored_answer_is_answered_ok_unless_it_had_answer_lines(self):
        # (A row salvaged from a damaged store may have lost its answer.) Every event's answer is
        # OK but on_payment's, which may hold access data: held for the vendor (test_commands).
        post(payment("1", event="on_refund"))
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        connection.execute("UPDATE notifications SET answer = NULL")
        connection.commit()
        connection.close()
        self.assertEqual(post(payment("1", event="on_refund")).body, "OK")
        self.assertEqual(self.rows()[0]["status"], "done")

    def test_no_secret_or_signature_is_stored(self):
        sent = payment()
        post(sent)
        shasign = payment("77")
        shasign["SHASIGN"] = shasign.pop("sha_sign")
        post(shasign)
        post(promopit_sale())
        ipn_receiver.close_store()
        stored = b""
        for name in os.listdir(self.data_dir):
            if name.startswith("events.sqlite3"):
                with open(os.path.join(self.data_dir, name), "rb") as file:
                    stored += file.read()
        self.assertIn(b"A1B2C3D4", stored)                       # the data is there...
        for secret in (PASSPHRASE, ISN_KEY, sent["sha_sign"], shasign["SHASIGN"]):
            # ...the secrets are not (and a failure must not print what it searched)
            self.assertFalse(secret.encode() in stored, "a secret or signature is in the store")
        for row in self.rows():
            self.assertFalse({"sha_sign", "SHASIGN", "isn_key"} & set(json.loads(row["fields"])))

    def test_fields_are_stored_as_json_exactly_as_json_dumps_would(self):
        fields = {"a": 'quote " backslash \\ newline \n tab \t bell \x07', "ü": "€ \u2028 😀", "": ""}
        self.assertEqual(json.loads(ipn_receiver.json_text(fields)), fields)
        self.assertEqual(ipn_receiver.json_text(fields), json.dumps(fields, ensure_ascii=False, separators=(",", ":")))


class StandIns(unittest.TestCase):
    """json_text stands in for json.dumps (whose import costs a CGI call about 3.7 ms), and the
    store uses sqlite3's C core _sqlite3 for the sqlite3 package (about 1 ms)."""

    @generated(lambda st: st.dictionaries(st.text(), st.text(), max_size=8), examples=1000)
    def test_json_text_is_json_dumps(self, fields):
        # Text without lone surrogates is what a form gives (its bytes were decoded); with them,
        # too, the two agree.
        ours = ipn_receiver.json_text(fields)
        self.assertEqual(ours, json.dumps(fields, ensure_ascii=False, separators=(",", ":")))
        self.assertEqual(json.loads(ours), fields)

    def test_the_c_core_is_the_package(self):
        module = ipn_receiver.sqlite3_module()
        self.assertEqual(module.__name__, "_sqlite3")
        for name in ("connect", "Connection", "Error", "OperationalError", "DatabaseError", "sqlite_version"):
            self.assertIs(getattr(module, name), getattr(sqlite3, name), name)


class ExactlyOnce(ReceiverTestCase):
    def let_the_retry_pause_pass(self):
        """Make every failure an hour older: as if the longest pause before a retry had passed since."""
        connection = sqlite3.connect(os.path.join(self.data_dir, ipn_receiver.STORE_FILE_NAME))
        with connection:
            connection.execute("UPDATE notifications SET updated_at = updated_at - 3600 WHERE status = 'failed'")
        connection.close()

    def test_a_copy_of_a_done_notification_gets_the_stored_answer_byte_for_byte(self):
        calls = []

        def grant(notification):
            calls.append(notification.id)
            return {"username": "jane", "password": os.urandom(8).hex()}

        self.handle("on_payment", grant)
        first = post(payment())
        copies = [post(payment()) for _ in range(3)]
        self.assertEqual(len(calls), 1)
        for copy in copies:
            self.assertEqual((copy.status, copy.body), (200, first.body))
        self.assertEqual(self.rows()[0]["deliveries"], 4)

    def test_duplicate_keys(self):
        self.handle("on_payment", lambda n: None)
        self.handle("on_refund", lambda n: None)
        post(payment("1"))
        post(payment("1", event="on_refund"))                     # same transaction, another event
        post(payment("2"))
        post(promopit_sale("PP-1"))
        post(promopit_sale("PP-1", txn_amount="99.00"))          # same PromoPit transaction
        keys = [row["duplicate_key"] for row in self.rows()]
        self.assertEqual(keys, ["digistore24:on_payment:1", "digistore24:on_refund:1",
                                "digistore24:on_payment:2", "promopit:PP-1"])

    def test_a_case_changed_copy_of_an_upper_keys_call_is_still_a_copy(self):
        # That variant signs keys only up to their case: a captured call replayed with
        # Transaction_ID instead of transaction_id verifies, and must not run the handler again.
        seen = []
        self.handle("on_payment", seen.append)
        fields = dict(payment("4711"))
        del fields["sha_sign"]
        original = signed(fields, upper_keys=True)
        replay = {("Transaction_ID" if key == "transaction_id" else key): value for key, value in original.items()}
        self.assertEqual(post(original).body, "OK")
        self.assertEqual(post(replay).body, "OK")
        self.assertEqual(len(seen), 1)
        self.assertEqual(self.rows()[0]["deliveries"], 2)
        test = signed({"event": "connection_test", "ipn_version": "1.6"}, upper_keys=True)
        post(test)
        post({("IPN_Version" if key == "ipn_version" else key): value for key, value in test.items()})
        self.assertEqual(self.rows()[1]["deliveries"], 2)

    def test_an_event_name_cannot_pass_for_a_transaction_id(self):
        # "digistore24:<event>:<transaction_id>": an event with ":" (or "%") is escaped, so that
        # event "a:b" with transaction "c" is not event "a" with transaction "b:c".
        for event, transaction, key in (("a:b", "c", "digistore24:a%3Ab:c"), ("a", "b:c", "digistore24:a:b:c"),
                                        ("a%3Ab", "c", "digistore24:a%253Ab:c")):
            notification = ipn_receiver.Notification("digistore24", {"event": event, "transaction_id": transaction})
            self.assertEqual(notification.key, key)
        self.assertIsNone(notification.id)                   # a number only once it is stored

    def test_without_a_transaction_id_only_exact_copies_collapse(self):
        test = fixture_fields("digistore24_connection_test")
        post(test)
        post(test)
        post(signed({"event": "connection_test", "api_mode": "test", "ipn_version": "1.6"}))
        rows = self.rows()
        self.assertEqual([row["deliveries"] for row in rows], [2, 1])
        self.assertTrue(rows[0]["duplicate_key"].startswith("digistore24:connection_test:sha256:"))

    def test_a_failed_handler_runs_again_on_the_next_delivery(self):
        attempts = []

        def flaky(notification):
            attempts.append(1)
            if len(attempts) == 1:
                raise ConnectionError("mail server unreachable\nsecond line")
            return {"username": "ok"}

        self.handle("on_payment", flaky)
        first = post(payment())
        self.assertEqual((first.status, first.body), (500, "ERROR: handler flaky failed (ConnectionError) for "
                                                          "notification #1; the traceback is in ipn_receiver.log"))
        row = self.rows()[0]
        self.assertEqual((row["status"], row["attempts"]), ("failed", 1))
        self.assertEqual(row["last_error"], "ConnectionError: mail server unreachable\\nsecond line")
        # A copy within a minute does not run it: sent again and again (by whoever captured the call),
        # it would run the handler, and what it did before it failed, at the sender's pace.
        for _ in range(3):
            held = post(payment())
            self.assertEqual(held.status, 503)
            self.assertRegex(held.body, r"^ERROR: the handler failed for notification #1 just now; a copy that comes in "
                                        r"(59|60) s or later runs it again \(the sender retries later; on the server, "
                                        r"`replay 1` runs it now\)$")
        self.assertEqual(len(attempts), 1)
        # Counted as deliveries (`events` shows them), with the pause counted still from the failure.
        self.assertEqual((self.rows()[0]["deliveries"], self.rows()[0]["updated_at"]), (4, row["updated_at"]))
        self.let_the_retry_pause_pass()
        second = post(payment())
        self.assertEqual((second.status, second.body), (200, "OK\nusername: ok"))
        row = self.rows()[0]
        self.assertEqual((row["status"], row["attempts"], row["last_error"], row["deliveries"]), ("done", 2, None, 5))

    def test_the_pause_before_a_retry_doubles_with_each_failure_up_to_an_hour(self):
        # Whoever captured a call that fails runs its handler about 30 times a day at most, where
        # Digistore24 retries 20 times in 10 days.
        self.assertEqual([ipn_receiver.retry_pause(attempts) for attempts in (0, 1, 2, 3, 6, 7, 8, 10 ** 6)],
                         [60, 60, 120, 240, 1920, 3600, 3600, 3600])
        self.handle("on_payment", lambda n: 1 / 0)
        ipn_receiver.open_store(ipn_receiver.settings())        # (else connect() would make an empty file)
        connection = sqlite3.connect(os.path.join(self.data_dir, ipn_receiver.STORE_FILE_NAME))
        self.addCleanup(connection.close)
        for attempts, pause in ((1, 60), (2, 120), (3, 240)):
            self.assertEqual(post(payment()).status, 500)
            self.assertEqual(self.rows()[0]["attempts"], attempts)
            with connection:        # the pause, less a second, has passed: held
                connection.execute("UPDATE notifications SET updated_at = updated_at - ?", (pause - 2,))
            held = post(payment())
            self.assertEqual(held.status, 503)
            self.assertRegex(held.body, r"comes in [12] s or later")
            with connection:        # all of it: run again
                connection.execute("UPDATE notifications SET updated_at = updated_at - 2")

    def test_a_failed_notification_whose_handler_was_removed_since_is_answered_ok(self):
        # The vendor takes an event's handler out of the table after it failed: from then on the
        # event has no handler, and is answered OK and kept, as any event without one is.
        def on_affiliation(notification):
            raise RuntimeError("newsletter down")
        self.handle("on_affiliation", on_affiliation)
        call = signed({"event": "on_affiliation", "transaction_id": "77", "affiliate_name": "p1"})
        self.assertEqual(post(call).status, 500)
        del ipn_receiver.DIGISTORE24_HANDLERS["on_affiliation"]
        for _ in range(2):
            answer = post(call)
            self.assertEqual((answer.status, answer.body), (200, "OK"))
        row = self.rows()[0]
        self.assertEqual((row["status"], row["answer"], row["claim"], row["attempts"], row["deliveries"]),
                         ("ignored", "OK", None, 1, 3))
        self.assertEqual(row["last_error"], "RuntimeError: newsletter down")

    def test_an_abandoned_notification_whose_handler_was_removed_since_is_answered_ok(self):
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.data_dir, PROCESSING_TIMEOUT=60)
        connection = ipn_receiver.open_store(ipn_receiver.settings())
        fields = dict(payment())
        del fields["sha_sign"]
        notification = ipn_receiver.Notification("digistore24", ipn_receiver.vouched_fields(fields, "exact"))
        self.assertEqual(ipn_receiver.claim_notification(connection, notification, True, 60)[0], "run")
        del ipn_receiver.DIGISTORE24_HANDLERS["on_payment"]
        self.assertEqual(post(payment()).status, 503)               # within the timeout: still busy
        connection.execute("UPDATE notifications SET claimed_at = claimed_at - 61")
        answer = post(payment())
        self.assertEqual((answer.status, answer.body), (200, "OK"))
        self.assertEqual(self.rows()[0]["status"], "ignored")

    def test_an_exception_whose_message_cannot_be_read_is_still_a_failed_handler(self):
        class Broken(Exception):
            def __str__(self):
                return None                                 # a common bug: TypeError in str()

        def on_payment(notification):
            raise Broken()
        self.handle("on_payment", on_payment)
        answer = post(payment())
        self.assertEqual((answer.status, answer.body), (500, "ERROR: handler on_payment failed (Broken) for "
                                                             "notification #1; the traceback is in ipn_receiver.log"))
        row = self.rows()[0]
        self.assertEqual((row["status"], row["last_error"]), ("failed", "Broken: (its message could not be read)"))
        self.handle("on_payment", lambda n: None)
        self.let_the_retry_pause_pass()
        self.assertEqual(post(payment()).body, "OK")            # the retry runs it again

    def test_what_is_not_an_exception_still_fails_the_handler_and_is_answered(self):
        # A cancelled task, a library's timeout, Ctrl+C: not Exceptions, but a handler that raises
        # one has failed like any other. Else the call goes unanswered and the row stays
        # "processing", and every retry is told to wait.
        class Timeout(BaseException):
            pass

        for number, error in enumerate((Timeout("took too long"), KeyboardInterrupt(), SystemExit(3)), 1):
            def on_payment(notification, error=error):
                raise error
            self.handle("on_payment", on_payment)
            answer = post(payment(str(number)))
            self.assertEqual((answer.status, answer.body), (500, "ERROR: handler on_payment failed (%s) for "
                                                                 "notification #%d; the traceback is in "
                                                                 "ipn_receiver.log" % (type(error).__name__, number)))
            self.assertEqual(self.rows()[-1]["status"], "failed")
        self.assertIn("Timeout: took too long", self.log_text())
        self.handle("on_payment", lambda n: None)
        self.let_the_retry_pause_pass()
        self.assertEqual(post(payment("1")).body, "OK")         # the retry runs it again

    def test_a_server_stopping_the_call_while_its_outcome_waits_for_the_store_records_it_first(self):
        # gunicorn's quick shutdown (SIGQUIT, SIGINT) raises SystemExit in a worker wherever it is
        # (the 54th review): the handler's work done and left unrecorded, it would run again after
        # PROCESSING_TIMEOUT, and the sender got gunicorn's HTML page.
        self.handle("on_payment", lambda n: {"username": "jane"})
        stopped, write_to_store = [], ipn_receiver.write_to_store

        def stopped_once(config, write, lock_seconds=None, *outcome):
            if lock_seconds == ipn_receiver.OUTCOME_LOCK_TIMEOUT_SECONDS and not stopped:
                stopped.append("SIGQUIT")
                raise SystemExit(0)
            return write_to_store(config, write, lock_seconds, *outcome)
        with mock.patch.object(ipn_receiver, "write_to_store", stopped_once):
            answer = post(payment())
        self.assertEqual((answer.status, answer.body, stopped), (200, "OK\nusername: jane", ["SIGQUIT"]))
        self.assertEqual((self.rows()[0]["status"], self.rows()[0]["answer"]), ("done", "OK\nusername: jane"))
        # Stopped anywhere else in the call: one error line, and the sender's retry.
        with mock.patch.object(ipn_receiver, "claim_notification", side_effect=SystemExit(0)):
            answer = post(payment("2"))
        self.assertEqual((answer.status, answer.body), (503, ipn_receiver.STOPPED_ANSWER))
        self.assertEqual(len(self.rows()), 1)
        self.assertIn(" WARNING [%d] POST -> 503, stopped by the server (" % os.getpid(), self.log_text())

    def test_an_async_or_generator_handler_fails_instead_of_being_answered_ok_unrun(self):
        # `async def` (or a `yield` inside) makes a function return before a line of it runs.
        ran, returned = [], []

        async def coroutine(notification):
            ran.append(1)

        def generator(notification):
            ran.append(1)
            yield

        async def async_generator(notification):
            ran.append(1)
            yield

        def keeping_what_it_returns(function):
            def handler(notification):
                returned.append(function(notification))
                return returned[-1]
            return handler

        self.handle("on_payment", keeping_what_it_returns(coroutine))
        self.handle("on_refund", keeping_what_it_returns(generator))
        self.handle("on_chargeback", keeping_what_it_returns(async_generator))
        for event, body in (("on_payment", payment("a")), ("on_refund", payment("b", event="on_refund")),
                            ("on_chargeback", payment("c", event="on_chargeback"))):
            answer = post(body)
            self.assertEqual(answer.status, 500, event)
            self.assertIn("failed (TypeError)", answer.body)
        self.assertEqual(ran, [])
        self.assertEqual([row["status"] for row in self.rows()], ["failed"] * 3)
        self.assertEqual([row["last_error"] for row in self.rows()], [
            "TypeError: the handler returned %s without running: write it as a plain def, without async and "
            "yield" % kind for kind in ("coroutine", "generator", "async_generator")])
        # Closed, so that Python does not warn that the coroutine was never awaited.
        self.assertEqual(inspect.getcoroutinestate(returned[0]), "CORO_CLOSED")
        self.assertEqual(inspect.getgeneratorstate(returned[1]), "GEN_CLOSED")

    def test_a_handler_that_ran_and_returned_an_iterator_is_done_and_never_run_again(self):
        # `return shop.execute("INSERT ...")` returns a cursor, after the work is done: failing the
        # call (as for an unrun generator) would do that work again on every retry.
        shop = sqlite3.connect(":memory:")
        shop.execute("CREATE TABLE refunds (txn)")
        results = {"on_refund": lambda n: shop.execute("INSERT INTO refunds VALUES (?)", (n.get("transaction_id"),)),
                   "on_chargeback": lambda n: map(str, [1]),
                   "on_payment_missed": lambda n: iter([]),
                   # (A generator expression, where a dict was meant: the 45th review.)
                   "on_rebill_resumed": lambda n: ((key, value) for key, value in {"username": "jane"}.items())}
        for event, handler in results.items():
            self.handle(event, handler)
        for attempt in range(2):
            for number, event in enumerate(results):
                answer = post(payment(str(number), event=event))
                self.assertEqual((answer.status, answer.body), (200, "OK"), event)
        self.assertEqual(shop.execute("SELECT count(*) FROM refunds").fetchone()[0], 1)
        self.assertEqual([(row["status"], row["attempts"]) for row in self.rows()], [("done", 1)] * 4)
        self.assertLogged("ERROR", "on_refund returned Cursor, not a dict of answer lines: answered OK without lines")

    def test_what_a_handler_changes_in_its_notification_changes_nothing_the_receiver_does(self):
        # A field made an int ("the database wants one"), the event set to None: the work was done,
        # and logging the notification's reference afterwards failed: 500, or a row left
        # processing where the handler then raised (the 45th review).
        def careless(notification):
            notification.fields["transaction_id"] = int(notification["transaction_id"])
            notification.fields["order_id"] = None
            notification.event, notification.id, notification.provider = None, None, None
            notification.add_info[1] = 2
            if notification.get("custom") == "raise":
                raise RuntimeError("db down")
            return {"username": "jane"}
        self.handle("on_payment", careless)
        for attempt in range(2):
            answer = post(payment("1001"))
            self.assertEqual((answer.status, answer.body), (200, "OK\nusername: jane"))
        answer = post(payment("1002", custom="raise"))
        self.assertEqual((answer.status, answer.body), (500, "ERROR: handler careless failed (RuntimeError) for "
                                                             "notification #2; the traceback is in ipn_receiver.log"))
        self.assertEqual([(row["status"], row["attempts"]) for row in self.rows()], [("done", 1), ("failed", 1)])

    def test_an_exceptions_name_reaches_the_answer_in_one_line_and_masked(self):
        for name, shown in (("Bad\nName: injected", "Bad\\nName: injected"), ("Err_" + PASSPHRASE, "Err_[secret]")):
            def handler(notification, name=name):
                raise type(name, (Exception,), {})("x")
            handler.__name__ = "on_\npayment"
            self.handle("on_payment", handler)
            answer = post(payment(name[:3]))
            self.assertEqual((answer.status, answer.body), (500, "ERROR: handler on_\\npayment failed (%s) for "
                                                                 "notification #%d; the traceback is in ipn_receiver.log"
                                                                 % (shown, len(self.rows()))))

    def test_a_handlers_outcome_waits_longer_for_the_store_lock_than_a_new_call(self):
        # A repair or a salvage holds the lock just as a handler has run. Giving up after
        # LOCK_TIMEOUT_SECONDS would answer 503, and a retry would run the handler again.
        import fcntl
        lock = os.path.join(self.data_dir, ".lock")

        def on_payment(notification):
            holder = os.open(lock, os.O_RDWR)
            fcntl.flock(holder, fcntl.LOCK_EX)
            threading.Timer(0.5, os.close, (holder,)).start()      # closing it lets the lock go
            return {"username": "jane"}
        self.handle("on_payment", on_payment)
        with mock.patch.object(ipn_receiver, "LOCK_TIMEOUT_SECONDS", 0.1), \
                mock.patch.object(ipn_receiver, "OUTCOME_LOCK_TIMEOUT_SECONDS", 20):
            answer = post(payment())
        self.assertEqual((answer.status, answer.body), (200, "OK\nusername: jane"))
        self.assertEqual([(row["status"], row["attempts"]) for row in self.rows()], [("done", 1)])

    def test_what_a_result_does_when_looked_at_never_fails_the_call(self):
        # Work done, then a result that raises when looked at: a dict whose attributes are its
        # keys (KeyError), a value whose str() raises what is not an Exception. Failing the call
        # would do the work again on every retry.
        import asyncio

        class AttributeDict(dict):
            __getattr__ = dict.__getitem__

        class Cancelling:
            def __str__(self):
                raise asyncio.CancelledError()
        runs = []

        def on_payment(notification):
            runs.append(notification["transaction_id"])
            if notification["transaction_id"] == "1":
                return AttributeDict(username="jane")
            return {"username": Cancelling()}
        self.handle("on_payment", on_payment)
        for attempt in range(2):
            for number, body in (("1", "OK\nusername: jane"), ("2", "OK")):
                answer = post(payment(number))
                self.assertEqual((answer.status, answer.body), (200, body))
        self.assertEqual(runs, ["1", "2"])
        self.assertEqual([(row["status"], row["attempts"]) for row in self.rows()], [("done", 1)] * 2)

    def test_the_stored_error_is_one_line_of_at_most_500_characters(self):
        def on_payment(notification):
            raise ValueError("x\n" * 600)
        self.handle("on_payment", on_payment)
        post(payment())
        error = self.rows()[0]["last_error"]
        self.assertEqual(len(error), 500)
        self.assertTrue(error.startswith("ValueError: x\\nx\\n"))

    def test_a_copy_arriving_while_the_first_is_processed_gets_503_and_is_not_dispatched(self):
        answers = []

        def reentrant(notification):
            answers.append(post(payment()))          # the sender's retry, while we are still busy
        self.handle("on_payment", reentrant)
        self.assertEqual(post(payment()).body, "OK")
        self.assertEqual([(a.status, a.body) for a in answers], [(503, BUSY)])
        self.assertEqual(self.rows()[0]["attempts"], 1)

    def claimed_by_this_process(self):
        """A payment claimed here, as a call would before running its handler (PROCESSING_TIMEOUT
        60 s): the handler runs it records, and a connection to the store."""
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.data_dir, PROCESSING_TIMEOUT=60)
        seen = []
        self.handle("on_payment", seen.append)
        connection = ipn_receiver.open_store(ipn_receiver.settings())
        fields = dict(payment())
        del fields["sha_sign"]
        notification = ipn_receiver.Notification("digistore24", ipn_receiver.vouched_fields(fields, "exact"))
        self.assertEqual(ipn_receiver.claim_notification(connection, notification, True, 60)[0], "run")
        return seen, connection

    def test_an_abandoned_claim_is_taken_over_after_the_timeout(self):
        seen, connection = self.claimed_by_this_process()
        # The process that claimed it died. Within the timeout, copies wait...
        self.assertEqual(post(payment()).status, 503)
        # ...after it, the next copy takes the claim over and runs the handler.
        connection.execute("UPDATE notifications SET claimed_at = claimed_at - 61")
        self.assertEqual(post(payment()).body, "OK")
        self.assertEqual(len(seen), 1)
        # The log says the handler runs a second time, and why (the 48th review: "handled as #1").
        self.assertRegex(self.log_text(), "WARNING .*notification #1: the run of its handler that started 6[12] s "
                                          "ago never recorded how it ended \\(its process was killed, or it ran "
                                          "longer than PROCESSING_TIMEOUT\\); this copy runs it again\n")
        row = self.rows()[0]
        self.assertEqual((row["status"], row["attempts"], row["deliveries"]), ("done", 2, 3))

    def test_a_claim_dated_in_the_future_is_abandoned_once_it_is_more_than_the_timeout_ahead(self):
        # The process that claimed it ran while the clock was a day ahead, and died; the clock was
        # set right since. Waiting for the clock to catch up would outlast the sender's retries.
        seen, connection = self.claimed_by_this_process()
        connection.execute("UPDATE notifications SET claimed_at = claimed_at + 50")    # within the timeout
        self.assertEqual(post(payment()).status, 503)
        # A day ahead, made by this process, which still runs: the clock was set back while its
        # handler runs, and a copy must not run it a second time.
        connection.execute("UPDATE notifications SET claimed_at = claimed_at + 86400")
        self.assertEqual(post(payment()).status, 503)
        connection.execute("UPDATE notifications SET claim = ?", ("%d-0a1b2c" % pid_of_a_process_gone(),))
        self.assertEqual(post(payment()).body, "OK")
        self.assertEqual(len(seen), 1)
        self.assertEqual((self.rows()[0]["status"], self.rows()[0]["attempts"]), ("done", 2))

    def test_a_claim_is_abandoned_outside_the_timeout_either_way_and_held_within_it(self):
        abandoned = ipn_receiver.claim_is_abandoned
        gone, running = "%d-0a1b2c" % pid_of_a_process_gone(), "%d-0a1b2c" % os.getpid()
        for claim in (gone, running):
            self.assertEqual([abandoned(1000 + ago, 1000, 60, claim) for ago in (-61, -60, -59, 0, 59, 60, 61)],
                             [True, False, False, False, False, False, claim == gone], claim)
        self.assertTrue(abandoned(None, 1000, 60, None))        # no time: damage, taken over
        # Ahead of the clock, and no process that can be asked: taken as gone.
        for claim in (None, "", "x-1", "0-a", "-1-a", "1.5-a"):
            self.assertTrue(abandoned(1061, 1000, 60, claim), claim)
        self.assertTrue(ipn_receiver.process_is_running("1-a"))       # init
        with mock.patch.object(ipn_receiver.os, "kill", side_effect=PermissionError(1, "Operation not permitted")):
            self.assertTrue(ipn_receiver.process_is_running("1-a"))   # another user's: it runs, not ours to signal
        with mock.patch.object(ipn_receiver.os, "kill", side_effect=ProcessLookupError(3, "No such process")):
            self.assertFalse(ipn_receiver.process_is_running("1-a"))
        self.assertTrue(ipn_receiver.process_is_running("%d-replay-0a1b" % os.getpid()))

    def test_when_a_slow_run_and_its_takeover_both_finish_the_first_answer_stands(self):
        # A handler slower than PROCESSING_TIMEOUT: a retry took its claim over and runs it again.
        def slow(notification):
            connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
            connection.execute("UPDATE notifications SET claim = 'other-process'")
            connection.commit()
            connection.close()
            return {"username": "first"}
        self.handle("on_payment", slow)
        # The first run to finish records its answer, and answers with it...
        self.assertEqual(post(payment()).body, "OK\nusername: first")
        row = self.rows()[0]
        self.assertEqual((row["status"], row["claim"], row["answer"]), ("done", None, "OK\nusername: first"))
        self.assertLogged("WARNING", "notification #1: while its handler ran, a copy came after PROCESSING_TIMEOUT "
                                     "and ran it again; raise PROCESSING_TIMEOUT above your slowest handler")
        # (Taken over by replay --force, or by a run that has finished since, the log says so.)
        self.assertEqual(ipn_receiver.taken_over_by("123-replay-0a1b2c3d"), "`replay --force` ran it again")
        self.assertEqual(ipn_receiver.taken_over_by(None), "replay or a copy that came after PROCESSING_TIMEOUT saw "
                                                           "to it too (if a copy, raise PROCESSING_TIMEOUT above your "
                                                           "slowest handler)")
        # ...and the other run, finishing later, answers what the store holds, as every copy will.
        connection = ipn_receiver.open_store(ipn_receiver.settings())
        notification = ipn_receiver.Notification("digistore24", json.loads(row["fields"]))
        self.assertEqual(ipn_receiver.record_outcome(connection, notification, "other-process", "done",
                                                     "OK\nusername: second", None), "OK\nusername: first")
        self.assertEqual(ipn_receiver.record_outcome(connection, notification, "other-process", "failed",
                                                     None, "RuntimeError: x"), "OK\nusername: first")
        self.assertEqual(post(payment()).body, "OK\nusername: first")
        self.assertEqual(self.rows()[0]["answer"], "OK\nusername: first")

    def test_a_failed_run_leaves_a_running_takeover_alone(self):
        def failing(notification):
            connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
            connection.execute("UPDATE notifications SET claim = 'other-process'")
            connection.commit()
            connection.close()
            raise RuntimeError("timed out")
        self.handle("on_payment", failing)
        self.assertEqual(post(payment()).status, 500)
        row = self.rows()[0]
        self.assertEqual((row["status"], row["claim"]), ("processing", "other-process"))


class StorageProblems(ReceiverTestCase):
    def test_a_read_only_data_folder_gives_503_and_no_ok(self):
        called = []
        self.handle("on_payment", called.append)
        os.rmdir(self.data_dir)
        os.makedirs(self.data_dir)
        with read_only_folder(self.data_dir):
            ipn_receiver.log.reset()
            answer = post(payment())
        self.assertEqual((answer.status, answer.body), (503, STORAGE_ERROR))
        self.assertEqual(called, [])

    def test_a_read_only_store_gives_503_and_no_ok(self):
        post(payment("1"))
        ipn_receiver.close_store()
        with read_only_folder(self.data_dir):
            ipn_receiver.log.reset()
            answer = post(payment("2"))
        self.assertEqual((answer.status, answer.body), (503, STORAGE_ERROR))
        self.assertEqual([row["transaction_id"] for row in map(lambda r: json.loads(r["fields"]), self.rows())], ["1"])

    def test_the_reason_and_the_fix_go_to_the_log(self):
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.data_dir)
        with open(os.path.join(self.data_dir, "events.sqlite3"), "w") as file:
            file.write("")
        os.chmod(os.path.join(self.data_dir, "events.sqlite3"), 0o400)
        os.makedirs(os.path.join(self.data_dir, "events.sqlite3-wal"))   # cannot be a file now
        answer = post(payment())
        self.assertEqual(answer.status, 503)
        self.assertIn("event store", self.log_text())

    def test_a_deleted_store_is_not_made_anew_unasked_and_the_old_connection_not_used(self):
        # Deleted, moved, or not there yet where a copy of the data folder stopped halfway (the
        # 33rd review): a new store would run every notification handled before again. Calls get
        # 503 until it is back, or the vendor asks for a new one.
        runs = self.handle_payments_naming_their_buyer()
        post(payment("1"))
        for suffix in ("", "-wal", "-shm"):
            os.remove(os.path.join(self.data_dir, "events.sqlite3" + suffix))
        self.assertEqual((post(payment("1")).body, post(payment("2")).body), (STORAGE_ERROR, STORAGE_ERROR))
        self.assertEqual(runs, ["1"])
        self.assertFalse(os.path.exists(self.store()))
        self.assertIn(ipn_receiver.STORE_GONE % self.store(), self.log_text())
        checked = subprocess.run([PYTHON, SCRIPT, "check"], stdout=subprocess.PIPE, timeout=60, env=dict(
            os.environ, IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_DATA_DIR=self.data_dir))
        self.assertIn("PROBLEM  event store: " + ipn_receiver.STORE_GONE % self.store(), checked.stdout.decode())
        errors = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()) as output, contextlib.redirect_stderr(errors):
            self.assertEqual(ipn_receiver.main(["repair"]), 1)
            self.assertEqual(ipn_receiver.main(["repair", "--force"]), 0)
        self.assertEqual(errors.getvalue(), "ERROR: %s\n" % ipn_receiver.STORE_GONE % self.store())
        self.assertEqual(output.getvalue(), "started a new, empty store: copies of notifications handled before will "
                                            "run their handlers again\n")
        self.assertEqual(post(payment("2")).body, "OK\nusername: buyer-2")
        self.assertEqual(len(self.rows()), 1)

    def test_an_empty_database_put_where_the_store_was_is_not_taken_for_a_new_store(self):
        # `sqlite3 events.sqlite3 VACUUM` after it was deleted: one page, no schema (the 36th review).
        runs = self.handle_payments_naming_their_buyer()
        post(payment("1"))
        ipn_receiver.close_store()
        ipn_receiver.remove_store_files(self.store())
        connection = sqlite3.connect(self.store())
        connection.execute("VACUUM")
        connection.close()
        self.assertEqual(os.path.getsize(self.store()), 4096)
        self.assertEqual(post(payment("1")).body, STORAGE_ERROR)
        self.assertEqual(runs, ["1"])
        self.assertIn(ipn_receiver.UNREADABLE_STORE % self.store(), self.log_text())

    def test_a_deleted_store_with_its_journal_left_behind_starts_clean(self):
        post(payment("1"))
        ipn_receiver.close_store()
        os.remove(os.path.join(self.data_dir, "events.sqlite3"))   # the -wal file stays
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["repair", "--force"]), 0)
        self.assertEqual(post(payment("2")).body, "OK")
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        self.assertEqual(connection.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        self.assertEqual(connection.execute("SELECT count(*) FROM notifications").fetchone()[0], 1)
        connection.close()

    def test_a_store_written_by_a_newer_version_is_refused(self):
        post(payment("1"))
        ipn_receiver.close_store()
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        connection.execute("PRAGMA user_version = 99")
        connection.commit()
        connection.close()
        self.assertEqual(post(payment("2")).body, STORAGE_ERROR)
        self.assertIn("newer ipn_receiver", self.log_text())

    def store(self):
        return os.path.join(self.data_dir, "events.sqlite3")

    def checkpoint(self):
        """Close the store, its journal moved into the file, where a test damages it."""
        ipn_receiver.close_store()
        connection = sqlite3.connect(self.store())
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()

    def handle_payments_naming_their_buyer(self):
        """on_payment answers `username: buyer-<its transaction id>`: the list of those it ran for."""
        runs = []

        def on_payment(notification):
            runs.append(notification["transaction_id"])
            return {"username": "buyer-" + notification["transaction_id"]}
        self.handle("on_payment", on_payment)
        return runs

    def fill_and_checkpoint(self, count):
        for number in range(count):
            post(payment(str(number)))
        self.checkpoint()

    def test_a_store_whose_schema_cannot_be_read_is_not_replaced_by_an_empty_one(self):
        # Damage to the first page (the file header, the schema): not one row can be read. An
        # empty store in its place would run every notification handled before again: the calls
        # get 503 (the sender retries) until the vendor recovers it or runs `repair --force`.
        runs = []
        self.handle("on_payment", lambda notification: runs.append(1))
        for damage in (b"this is not a database header", b"\x00" * 16):
            with self.subTest(damage=damage):
                self.data_dir = tempfile.mkdtemp(prefix="ipn-test-")
                self.addCleanup(shutil.rmtree, self.data_dir, True)
                ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.data_dir)
                self.fill_and_checkpoint(30)
                with open(self.store(), "r+b") as file:
                    file.write(damage)
                del runs[:]
                started = time.monotonic()
                self.assertEqual((post(payment("0")).status, post(payment("100")).body), (503, STORAGE_ERROR))
                self.assertLess(time.monotonic() - started, 10)    # (no walk through what cannot be read)
                self.assertEqual(runs, [])
                self.assertIn(ipn_receiver.UNREADABLE_STORE % self.store(), self.log_text())
                self.assertFalse([name for name in os.listdir(self.data_dir) if "damaged" in name or "salvage" in name])
                # check says what repair does (the 42nd review: it said repair keeps every row, which refused).
                output = io.StringIO()
                with contextlib.redirect_stdout(output), contextlib.redirect_stderr(io.StringIO()), \
                        mock.patch.dict(os.environ, IPN_DATA_DIR=self.data_dir, IPN_SHA_PASSPHRASE=PASSPHRASE):
                    self.assertEqual(ipn_receiver.main(["check"]), 1)
                self.assertIn("\n         fix: %s\n" % (ipn_receiver.UNREADABLE_STORE % self.store()), output.getvalue())
                errors = io.StringIO()
                with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                    self.assertEqual(ipn_receiver.main(["repair"]), 1)
                    self.assertIn("repair --force", errors.getvalue())
                    self.assertEqual(ipn_receiver.main(["repair", "--force"]), 0)
                self.assertEqual(len([name for name in os.listdir(self.data_dir) if ".damaged-" in name]), 1)
                self.assertEqual(integrity(self.store()), "ok")
                self.assertEqual(os.stat(self.store()).st_mode & 0o777, 0o600)     # the new store is private too
                self.assertEqual(post(payment("100")).body, "OK")
                self.assertEqual(runs, [1])

    def test_each_storage_error_in_the_log_says_what_to_do(self):
        # The vendor's one clue where a call got 503 "storage unavailable".
        path = self.store()
        for error, hint in (
                (sqlite3.OperationalError("attempt to write a readonly database"), "make the data folder and "
                 "events.sqlite3 (and its -wal and -shm files, where there are any) writable by the web server's user"),
                (OSError(30, "Read-only file system"), "the file system is mounted read-only, as a host does with a "
                 "disk that fails: ask your host"),
                (PermissionError(13, "Permission denied"), "make the data folder and events.sqlite3 (and its -wal and "
                 "-shm files, where there are any) writable by the web server's user"),
                (sqlite3.OperationalError("database or disk is full"), "free disk space"),
                (OSError(28, "No space left on device"), "free disk space"),
                (sqlite3.OperationalError("database is locked"), "another process held the store longer than %d s"
                 % ipn_receiver.BUSY_TIMEOUT_SECONDS),
                (sqlite3.OperationalError("database table is busy"), "another process held the store longer than %d s"
                 % ipn_receiver.BUSY_TIMEOUT_SECONDS),
                (sqlite3.DatabaseError("database disk image is malformed"), "the file is damaged: run `python3 "
                 "ipn_receiver.py repair` (it keeps every row that can be read)"),
                (sqlite3.OperationalError("unable to open database file"), "check that the data folder exists, is "
                 "writable by the web server's user and the disk is not full")):
            with self.subTest(error=str(error)):
                self.assertEqual(ipn_receiver.describe_storage_error(error, path), "event store %s: %s; %s" % (
                    path, error.strerror if isinstance(error, OSError) else error, hint))

    def test_a_store_a_newer_receiver_migrated_meanwhile_is_not_migrated_back(self):
        # Another process, of a newer receiver, migrated it between this one's look and its lock.
        connection = sqlite3.connect(self.store(), isolation_level=None)
        self.addCleanup(connection.close)
        connection.execute("PRAGMA user_version = 99")
        with self.assertRaises(ipn_receiver.StorageError) as raised:
            ipn_receiver.migrate_store(connection)
        self.assertEqual(str(raised.exception), ipn_receiver.NEWER_SCHEMA % 99)

    def test_a_salvage_that_can_read_nothing_copies_nothing(self):
        # (And says so: a count of 1 would let an empty store take the place of one that held rows.)
        target = sqlite3.connect(":memory:", isolation_level=None)
        self.addCleanup(target.close)
        ipn_receiver.migrate_store(target)
        no_index = os.path.join(self.data_dir, "no-index.sqlite3")
        connection = sqlite3.connect(no_index)
        connection.execute("CREATE TABLE notifications (%s)" % ", ".join(ipn_receiver.STORE_COLUMNS))
        connection.execute("INSERT INTO notifications (id, duplicate_key) VALUES (1, 'k')")
        connection.commit()
        connection.close()
        garbage = os.path.join(self.data_dir, "garbage.sqlite3")
        with open(garbage, "wb") as file:
            file.write(b"SQLite format 3\0" + b"\xff" * 8000)
        for name, path in (("a folder", self.data_dir), ("no index of keys", no_index), ("no schema", garbage)):
            with self.subTest(name):
                self.assertEqual(ipn_receiver.salvage_rows(path, target), (0, 0))

    def sales_in_a_store(self, count):
        """`count` PromoPit sales, PP-0 on, handled and in the store's file: the list of those run."""
        runs = []
        self.handle("sale", lambda notification: runs.append(notification["promopit_txn_id"]), "PROMOPIT_HANDLERS")
        for number in range(count):
            post(promopit_sale("PP-%d" % number))
        self.checkpoint()
        return runs

    def test_rows_between_two_damaged_pages_are_read_one_by_one(self):
        # A scan stops at the first damaged page, and one from the other end at the last: the
        # rows between (ids past 125 too) are found by asking for each next id there is.
        runs = self.sales_in_a_store(300)
        with open(self.store(), "r+b") as file:
            content = bytearray(file.read())
            leaves = [at for at in range(4096, len(content), 4096) if content[at] == 0x0d]
            self.assertGreater(len(leaves), 6)
            lost = 0
            for at in (leaves[1], leaves[-2]):
                lost += int.from_bytes(content[at + 3:at + 5], "big")
                content[at:at + 4096] = b"\xff" * 4096
            file.seek(0)
            file.write(content)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["repair"]), 0)
        statuses = [row["status"] for row in self.rows()]
        self.assertEqual((statuses.count("done"), statuses.count("unknown")), (300 - lost, lost))
        del runs[:]
        for number in (0, 150, 299):
            post(promopit_sale("PP-%d" % number))
        self.assertEqual(runs, [])

    def test_a_damaged_root_of_the_table_ends_its_salvage_with_every_key_held(self):
        # Every lookup of an id meets the damage: the walk goes on id by id, no further than the
        # file has room for rows. Each row is still known by its key in the indexes.
        runs = self.sales_in_a_store(120)
        with open(self.store(), "r+b") as file:
            file.seek(4096)                     # page 2: the table's root
            file.write(b"\0" * 4096)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["repair"]), 0)
        self.assertEqual([row["status"] for row in self.rows()], ["unknown"] * 120)
        del runs[:]
        self.assertEqual(post(promopit_sale("PP-7")).status, 503)
        self.assertEqual(runs, [])

    def test_a_header_read_as_sqlite_reads_it(self):
        # Page sizes from 512 to 65536, which two bytes write as 1; a count of pages in four bytes.
        path = os.path.join(self.data_dir, "header.sqlite3")
        for size_bytes, count, verdict in ((b"\x00\x01", 2 ** 24 + 2, (2 ** 24 + 2, 65536)), (b"\x02\x00", 7, (7, 512)),
                                           (b"\x01\xff", 7, None), (b"\x00\x00", 7, None)):
            with self.subTest(size_bytes=size_bytes):
                with open(path, "wb") as file:
                    file.write(b"SQLite format 3\0" + size_bytes + b"\0" * 10 + count.to_bytes(4, "big") + b"\0" * 68)
                self.assertEqual(ipn_receiver.store_header(path), verdict)

    def test_the_stores_file_is_read_through_one_descriptor_kept_open(self):
        ipn_receiver.open_store(ipn_receiver.settings())
        header = ipn_receiver.read_store_file(self.store(), 100)
        self.assertTrue(header.startswith(b"SQLite format 3\0"))
        descriptors = len(os.listdir("/proc/self/fd"))
        self.assertEqual(ipn_receiver.read_store_file(self.store(), 100), header)
        self.assertEqual((len(os.listdir("/proc/self/fd")), len(ipn_receiver._store_files)), (descriptors, 1))
        pread = os.pread                        # (Windows has none, and no such locks: a file opened and closed)
        del os.pread
        try:
            self.assertEqual(ipn_receiver.read_store_file(self.store(), 100), header)
        finally:
            os.pread = pread

    def test_the_pages_a_journal_holds_are_read_frame_by_frame(self):
        # A header of 32 bytes (the page size at 8, the salts at 16), then frames: 24 bytes (the
        # page's number, then the salts at 8) and the page. Frames of an earlier generation (other
        # salts), and one cut short, do not count.
        def frame(page, salts=b"SALTSALT", size=512):
            return page.to_bytes(4, "big") + b"\0" * 4 + salts + b"\0" * 8 + b"p" * size

        header = b"\x37\x7f\x06\x82" + b"\0" * 4 + (512).to_bytes(4, "big") + b"\0" * 4 + b"SALTSALT" + b"\0" * 8
        wal = self.store() + "-wal"
        for name, content, pages in (
                ("none", b"", set()), ("whole frames", header + frame(3) + frame(5), {3, 5}),
                ("a frame cut short", header + frame(3) + frame(5) + frame(7)[:-12], {3, 5}),
                ("an earlier generation", header + frame(3) + frame(9, b"OLDSALTS") + frame(5), {3}),
                ("a page size of 0", header[:8] + b"\0" * 4 + header[12:] + frame(3, size=0) * 3, set())):
            with self.subTest(name):
                with open(wal, "wb") as file:
                    file.write(content)
                self.assertEqual(ipn_receiver.pages_in_journal(self.store()), pages)

    def test_what_may_hold_rows(self):
        # A new store is four pages: the schema, and the table and its two indexes with no entry
        # on them, as each page's header says. A store with a few rows is no larger; one whose
        # header is gone (zeros) does not show itself new; nor does one with a journal, or more pages.
        self.assertFalse(ipn_receiver.may_hold_rows(self.store()))          # none at all
        ipn_receiver.open_store(ipn_receiver.settings())
        ipn_receiver.close_store()
        with open(self.store(), "rb") as file:
            new = file.read()
        post(payment("1"))
        self.checkpoint()
        with open(self.store(), "rb") as file:
            one_row = file.read()
        self.assertEqual((len(new), len(one_row)), (4 * 4096, 4 * 4096))
        for name, content, journal, verdict in (
                ("new", new, None, False), ("new, its first page's tree damaged", new[:100] + b"\xff" * 8 + new[108:],
                                            None, False),
                ("new, with an empty journal", new, 0, False), ("with a journal", new, 1, True),
                ("one row", one_row, None, True), ("its header gone", b"\0" * 16 + new[16:], None, True),
                ("zeros", b"\0" * len(new), None, True), ("a page more", new + new[4096:8192], None, True),
                ("a page of another kind", new[:4096] + b"\x05" + new[4097:], None, True),
                ("an empty database of one page (the 36th review)", new[:4096], None, True),
                ("new, of schema 1: three pages", new[:3 * 4096], None, False)):
            with self.subTest(name):
                ipn_receiver.remove_store_files(self.store())
                with open(self.store(), "wb") as file:
                    file.write(content)
                if journal is not None:
                    with open(self.store() + "-wal", "wb") as file:
                        file.write(b"\0" * journal)
                self.assertEqual(ipn_receiver.may_hold_rows(self.store()), verdict)

    def test_a_store_cut_short_is_left_as_it_is_until_the_whole_file_is_back(self):
        # An upload or a copy that stopped halfway (moving DATA_DIR, say) leaves the store shorter
        # than its header says, or empty. Its rows past the cut cannot be read: salvaged unasked,
        # or started anew, their copies would run their handlers again, and the whole file is
        # likely still where it was copied from. Calls get 503 (the sender retries) until it is
        # back, or the vendor keeps what can be read with `repair --force`.
        runs = self.handle_payments_naming_their_buyer()
        self.fill_and_checkpoint(100)
        with open(self.store(), "rb") as file:
            whole = file.read()
        pages = len(whole) // 4096
        self.assertGreater(pages, 6)
        for size, left in ((0, "0 bytes of it are left"), (50, "50 bytes of it are left"),
                           (100, "0 of its %d pages are left" % pages),
                           (2 * 4096, "2 of its %d pages are left" % pages),
                           (len(whole) - 1000, "%d of its %d pages are left" % (pages - 1, pages))):
            with self.subTest(size=size):
                with open(self.store(), "wb") as file:
                    file.write(whole[:size])
                del runs[:]
                self.assertEqual((post(payment("7")).status, post(payment("100")).body), (503, STORAGE_ERROR))
                self.assertEqual(runs, [])
                self.assertEqual(ipn_receiver.cut_short(self.store()), left)
                self.assertIn(ipn_receiver.CUT_SHORT_STORE % (self.store(), left), self.log_text())
                self.assertEqual(sorted(name for name in os.listdir(self.data_dir) if name.startswith("events")),
                                 ["events.sqlite3"])
                errors = io.StringIO()
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
                    self.assertEqual(ipn_receiver.main(["repair"]), 1)
                self.assertEqual(errors.getvalue(), "ERROR: %s\n" % ipn_receiver.CUT_SHORT_STORE % (self.store(), left))
                checked = subprocess.run([PYTHON, SCRIPT, "check"], stdout=subprocess.PIPE, timeout=60, env=dict(
                    os.environ, IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_DATA_DIR=self.data_dir))
                self.assertIn("PROBLEM  event store: " + ipn_receiver.CUT_SHORT_STORE % (self.store(), left),
                              checked.stdout.decode())
        with open(self.store(), "wb") as file:
            file.write(whole)                   # back whole: nothing ran, nothing was lost
        self.assertEqual((post(payment("7")).body, post(payment("100")).body), ("OK\nusername: buyer-7",
                                                                              "OK\nusername: buyer-100"))
        self.assertEqual(runs, ["100"])
        # Or, the whole file gone for good, the rows before the cut kept on request:
        self.checkpoint()
        with open(self.store(), "r+b") as file:
            file.truncate(pages // 2 * 4096)
        with contextlib.redirect_stdout(io.StringIO()) as output:
            self.assertEqual(ipn_receiver.main(["repair", "--force"]), 0)
        self.assertIn("(repair: cut short: %d of its %d pages are left)" % (pages // 2, pages + 1), self.log_text())
        kept = int(re.search(r"holds (\d+) notifications", output.getvalue()).group(1))
        self.assertGreater(kept, 20)
        self.assertEqual(post(payment("0")).body, "OK\nusername: buyer-0")
        self.assertEqual(runs, ["100"])

    def test_the_store_file_alone_holds_all_but_the_last_calls_while_a_worker_keeps_its_connection(self):
        # A WSGI worker never closes its connection, and SQLite moves the -wal file's commits into
        # the store's own file only at a checkpoint: by default at 1,000 pages, about 300 calls.
        # Until then a backup of events.sqlite3 alone, or a -wal deleted as a temporary file,
        # would lose them all (the 33rd review: 200 sales, all run again).
        for number in range(60):
            post(payment(str(number)))
        self.assertIn(ipn_receiver.store_path(ipn_receiver.settings()), [
            row[2] for connection, _ in ipn_receiver._connections.values()
            for row in connection.execute("PRAGMA database_list")])          # (still open)
        backup = os.path.join(tempfile.mkdtemp(prefix="ipn-test-"), "events.sqlite3")
        self.addCleanup(shutil.rmtree, os.path.dirname(backup), True)
        shutil.copy(self.store(), backup)
        connection = sqlite3.connect(backup)
        self.addCleanup(connection.close)
        self.assertGreaterEqual(connection.execute("SELECT count(*) FROM notifications").fetchone()[0], 57)
        self.assertLess(os.path.getsize(self.store() + "-wal"), 30 * 4096)

    def test_a_thread_reading_the_stores_file_leaves_the_locks_of_the_others_held(self):
        # Closing any descriptor of a file drops every lock the process holds on it, SQLite's
        # too. In a threaded WSGI server (mod_wsgi's threads=5, waitress), a thread that opened
        # its connection dropped the locks of the others: a command run then, or another process
        # closing its connection, took itself for the store's last user and deleted the -wal
        # file they went on writing into (the 36th review: calls answered OK, then lost).
        post(payment("1"))                                  # this thread's connection, kept open
        thread = threading.Thread(target=lambda: (ipn_receiver.open_store(ipn_receiver.settings()),
                                                  ipn_receiver.may_hold_rows(self.store()),
                                                  ipn_receiver.integrity_of(self.store()), ipn_receiver.close_store(
                                                      (os.getpid(), threading.get_ident()))))
        thread.start()
        thread.join()
        count = ("import sqlite3, sys; connection = sqlite3.connect(sys.argv[1]); "
                 "print(connection.execute('SELECT count(*) FROM notifications').fetchone()[0])")
        subprocess.run([PYTHON, "-c", count, self.store()], check=True, stdout=subprocess.PIPE)   # `events`
        self.assertTrue(os.path.exists(self.store() + "-wal"))
        self.assertEqual(post(payment("2")).body, "OK")
        ipn_receiver.close_store()                          # (as the worker's process ends)
        counted = subprocess.run([PYTHON, "-c", count, self.store()], check=True, stdout=subprocess.PIPE)
        self.assertEqual(counted.stdout, b"2\n")

    def test_a_store_is_made_whole_before_it_takes_its_name(self):
        # So that one found without its schema was emptied or cut short, never the receiver's
        # own halfway: a process that died making it leaves the other name, cleared next time.
        with open(self.store() + ".new", "wb") as file:
            file.write(b"left by a process that died making the store")
        self.assertEqual(post(payment("1")).body, "OK")
        self.assertFalse(os.path.exists(self.store() + ".new"))
        self.assertEqual(os.stat(self.store()).st_mode & 0o777, 0o600)
        connection = sqlite3.connect(self.store())
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone()[0], ipn_receiver.SCHEMA_VERSION)

    def test_a_store_whose_schema_number_reads_0_is_salvaged_not_made_anew(self):
        # Schema 0 is a store with no table yet: one flipped bit there, taken at its word, would
        # have the migration make the table it has, and go on. (Harmless here; but the number
        # says the store is not the receiver's as it made it.) The rows are kept.
        runs = self.handle_payments_naming_their_buyer()
        post(payment("1"))
        self.checkpoint()
        connection = sqlite3.connect(self.store())
        connection.execute("PRAGMA user_version = 0")
        connection.commit()
        connection.close()
        self.assertEqual((post(payment("1")).body, post(payment("2")).body),
                         ("OK\nusername: buyer-1", "OK\nusername: buyer-2"))
        self.assertEqual(runs, ["1", "2"])
        self.assertIn("database disk image is malformed: it holds no schema (emptied or cut short, or its schema "
                      "number damaged)", self.log_text())

    def test_a_store_seen_cut_short_for_a_moment_is_looked_at_again(self):
        # Another process's checkpoint writes the header before it grows the file, and deletes the
        # -wal file once it has: seen between the two, a whole store looked cut short (the 37th review).
        ipn_receiver.open_store(ipn_receiver.settings())
        real = ipn_receiver.store_header(self.store())
        ahead = (real[0] + 1, real[1])
        for headers, verdict in (([ahead, real], None), ([ahead, ahead], "4 of its 5 pages are left")):
            looks = []                          # the two looks, and the pause between them
            with self.subTest(verdict=verdict), \
                    mock.patch.object(ipn_receiver, "store_header", side_effect=lambda path: looks.append(
                        "header") or headers[looks.count("header") - 1]), \
                    mock.patch.object(ipn_receiver.time, "sleep", side_effect=looks.append):
                self.assertEqual(ipn_receiver.cut_short(self.store()), verdict)
                self.assertEqual(looks, ["header", 0.05, "header"])
        with mock.patch.object(ipn_receiver.time, "sleep", side_effect=looks.append):
            self.assertIsNone(ipn_receiver.cut_short(self.store()))           # a whole one: one look
        self.assertEqual(looks, ["header", 0.05, "header"])

    def test_a_store_cut_short_beside_its_journal_is_left_as_it_is_too(self):
        # A WSGI worker ended (killed, say) leaves its -wal file, which the README says to move
        # along with the store; the store itself cut short on the way. The -wal file holds the
        # last few pages, not those the cut took (the 34th review: salvaged unasked, 111 copies
        # ran again). A page the -wal file holds is not missing: a checkpoint stopped halfway.
        runs = self.handle_payments_naming_their_buyer()
        for number in range(60):
            post(payment(str(number)))          # (the connection stays open, as a worker's)
        snapshot = {}
        for suffix in ("", "-wal"):
            with open(self.store() + suffix, "rb") as file:
                snapshot[suffix] = file.read()
        self.checkpoint()
        journal_pages = ipn_receiver.pages_in_journal(self.store())
        self.assertEqual(journal_pages, set())          # (checkpointed: the -wal file is empty)
        for suffix, content in snapshot.items():
            with open(self.store() + suffix, "wb") as file:
                file.write(content)
        journal_pages = ipn_receiver.pages_in_journal(self.store())
        pages = len(snapshot[""]) // 4096
        self.assertTrue(journal_pages and max(journal_pages) <= pages)
        with open(self.store(), "r+b") as file:
            file.truncate(pages // 2 * 4096)
        del runs[:]
        self.assertEqual((post(payment("7")).body, post(payment("100")).body), (STORAGE_ERROR, STORAGE_ERROR))
        self.assertEqual(runs, [])
        self.assertIn(ipn_receiver.CUT_SHORT_STORE % (self.store(), "%d of its %d pages are left" % (pages // 2, pages)),
                      self.log_text())
        # Only the last page missing, and the -wal file holding it: not cut short.
        last = max(journal_pages)
        with open(self.store(), "wb") as file:
            file.write(snapshot[""][:(last - 1) * 4096])
        self.assertEqual(ipn_receiver.store_header(self.store())[0], last)
        self.assertIsNone(ipn_receiver.cut_short(self.store()))

    def test_a_small_store_of_zeros_is_not_replaced_by_an_empty_one(self):
        # What some file systems leave after a power cut: the file as long as it was, all zeros.
        # Three sales fit in the four pages of a new store, so its size does not tell them.
        runs = []
        self.handle("sale", lambda notification: runs.append(notification["promopit_txn_id"]), "PROMOPIT_HANDLERS")
        for number in range(3):
            post(promopit_sale("PP-%d" % number))
        self.checkpoint()
        self.assertEqual(os.path.getsize(self.store()), 4 * 4096)
        with open(self.store(), "r+b") as file:
            file.write(b"\0" * 4 * 4096)
        self.assertEqual((post(promopit_sale("PP-1")).body, post(promopit_sale("PP-3")).body),
                         (STORAGE_ERROR, STORAGE_ERROR))
        self.assertEqual(runs, ["PP-0", "PP-1", "PP-2"])
        self.assertIn("so the receiver cannot read its rows (they may be there still)", self.log_text())

    def test_a_small_store_whose_schema_is_damaged_is_not_replaced_by_an_empty_one(self):
        # Four PromoPit sales, or one Digistore24 payment, fit in the four pages of a new store.
        # With its first page damaged not one row can be read: an empty store in its place would
        # run each of them again.
        for page_size in (4096, 1024):          # (1024: SQLite before 3.12, as CentOS 7 has)
            with self.subTest(page_size=page_size):
                self.data_dir = tempfile.mkdtemp(prefix="ipn-test-")
                self.addCleanup(shutil.rmtree, self.data_dir, True)
                ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=ISN_KEY, DATA_DIR=self.data_dir)
                ipn_receiver.open_store(ipn_receiver.settings())
                ipn_receiver.close_store()
                connection = sqlite3.connect(self.store())
                connection.execute("PRAGMA journal_mode=DELETE")    # (WAL keeps the page size it has)
                connection.execute("PRAGMA page_size=%d" % page_size)
                connection.execute("VACUUM")
                connection.execute("PRAGMA journal_mode=WAL")
                self.assertEqual(connection.execute("PRAGMA page_size").fetchone()[0], page_size)
                connection.close()
                runs = []
                self.handle("sale", lambda notification: runs.append(notification["promopit_txn_id"]),
                            "PROMOPIT_HANDLERS")
                for number in range(4):
                    self.assertEqual(post(promopit_sale("PP-%d" % number)).body, "OK")
                ipn_receiver.close_store()
                self.assertLessEqual(os.path.getsize(self.store()), 4 * 4096)
                self.assertFalse(os.path.exists(self.store() + "-wal"))
                with open(self.store(), "r+b") as file:
                    file.write(b"\0" * 16)                      # "SQLite format 3" is gone
                answer = post(promopit_sale("PP-0"))
                self.assertEqual((answer.status, answer.body), (503, STORAGE_ERROR))
                self.assertEqual(runs, ["PP-0", "PP-1", "PP-2", "PP-3"])
                self.assertIn("so the receiver cannot read its rows (they may be there still), and it was left as it was", self.log_text())

    def test_a_data_folder_htaccess_in_another_encoding_is_read_without_failing(self):
        htaccess = os.path.join(self.data_dir, ".htaccess")
        with open(htaccess, "wb") as file:
            file.write(b"# \xe4nderung\nRequire all denied\n")
        self.assertTrue(ipn_receiver.denies_the_web(htaccess))

    def test_a_new_store_damaged_before_it_held_anything_is_replaced(self):
        ipn_receiver.open_store(ipn_receiver.settings())            # made, with its schema, and no row
        ipn_receiver.close_store()
        with open(self.store(), "r+b") as file:
            file.seek(100)                      # the first page's tree, past the file header
            file.write(b"this is not a tree")
        self.assertEqual(post(payment("2")).body, "OK")
        self.assertIn("0 notifications were copied", self.log_text())

    def test_an_index_that_points_a_key_to_another_row_is_damage_not_that_rows_answer(self):
        # One bit flipped in the index of duplicate keys: the entry of txn 2002 points to the row
        # of txn 3003. Read through it, a copy of 2002 would get 3003's answer, another buyer's
        # access data. The row found is checked against the key; the store is salvaged.
        runs = self.handle_payments_naming_their_buyer()
        for number in ("1001", "2002", "3003"):
            post(payment(number))
        ipn_receiver.close_store()
        with open(self.store(), "r+b") as file:
            content = bytearray(file.read())
            key = b"digistore24:on_payment:2002"
            for page in (3, 4):                 # the two indexes, alike (else they disagree): then its rowid
                at = content.index(key, (page - 1) * 4096, page * 4096) + len(key)
                self.assertEqual(content[at], 2)
                content[at] = 3
            file.seek(0)
            file.write(content)
        self.assertNotEqual(integrity(self.store()), "ok")
        for number in ("2002", "3003", "1001"):
            self.assertEqual(post(payment(number)).body, "OK\nusername: buyer-" + number)
        self.assertEqual(runs, ["1001", "2002", "3003"])
        self.assertIn("the index of duplicate keys points to a row that holds another key", self.log_text())

    def test_a_page_of_an_index_that_hides_its_keys_runs_no_handler_again(self):
        # One flipped bit in the header of a page of an index of duplicate keys (its count of
        # entries): the keys on it are gone from that index, and SQLite's writes do not notice.
        # Had that index decided alone, every copy of those notifications would run its handler
        # again. The other index still holds them: the two disagree, and that is damage.
        for index in ipn_receiver.KEY_INDEXES:
            with self.subTest(index=index):
                self.data_dir = tempfile.mkdtemp(prefix="ipn-test-")
                self.addCleanup(shutil.rmtree, self.data_dir, True)
                ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=ISN_KEY, DATA_DIR=self.data_dir)
                runs = []
                self.handle("on_payment", lambda notification: runs.append(notification["transaction_id"]))
                for number in ("1001", "2002"):
                    post(payment(number))
                ipn_receiver.close_store()
                connection = sqlite3.connect(self.store())
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                page, = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (index,)).fetchone()
                connection.close()
                with open(self.store(), "r+b") as file:
                    file.seek((page - 1) * 4096 + 3)            # its count of entries: 2, read as 0
                    self.assertEqual(file.read(2), b"\0\2")
                    file.seek((page - 1) * 4096 + 3)
                    file.write(b"\0\0")
                for number in ("2002", "1001", "3003"):
                    self.assertEqual(post(payment(number)).body, "OK")
                self.assertEqual(runs, ["1001", "2002", "3003"])
                self.assertIn("the two indexes of duplicate keys disagree", self.log_text())

    def store_of_schema_1(self, count):
        """A store as the receiver before schema 2 left it (one index of the keys), holding `count`
        handled payments, txn 1001 on: the answer of each names its buyer."""
        connection = sqlite3.connect(self.store(), isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(ipn_receiver.SCHEMA)
        connection.execute("PRAGMA user_version = 1")
        connection.executemany(
            "INSERT OR IGNORE INTO notifications (received_at, provider, event, duplicate_key, is_test, fields, "
            "status, attempts, deliveries, answer, updated_at) VALUES (0, 'digistore24', 'on_payment', ?, 0, ?, "
            "'done', 1, 1, ?, 0)", [("digistore24:on_payment:%d" % number, '{"event": "on_payment", "transaction_id": '
                                     '"%d", "padding": "%s"}' % (number, "p" * 300), "OK\nusername: buyer-%d" % number)
                                    for number in range(1001, 1001 + count)])
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        table, index = [row[0] for row in connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name IN ('notifications', 'sqlite_autoindex_notifications_1') "
            "ORDER BY name")]
        connection.close()
        return table, index

    def test_a_damaged_store_of_schema_1_is_salvaged_into_schema_2(self):
        # Its migration meets the damage (the new index reads the whole table): the salvage must
        # know a store of schema 1 by its one index, not take it for one whose schema is damaged
        # and copy nothing (every call 503, and `repair --force` an empty store: handlers again).
        runs = []
        self.handle("on_payment", lambda notification: runs.append(notification["transaction_id"]))
        table, _ = self.store_of_schema_1(300)
        with open(self.store(), "r+b") as file:
            file.seek((table - 1) * 4096)
            page = file.read(4096)
            self.assertEqual(page[0], 0x05)                 # the table's root: its first child, a leaf,
            child = int.from_bytes(page[int.from_bytes(page[12:14], "big"):][:4], "big")
            file.seek((child - 1) * 4096 + 8)
            file.write(b"\xff\xff")                        # its first cell pointer out of the page
        self.assertEqual(post(payment("1300")).body, "OK\nusername: buyer-1300")
        self.assertEqual(post(payment("2002")).body, "OK")
        self.assertEqual(runs, ["2002"])
        # (Where this SQLite meets the damage, the store is salvaged with all but the damaged page's
        # rows, those as keys; a newer SQLite may read past it, and nothing is set aside.)
        copied = re.search(r"database disk image is malformed.*, a new store was started and (\d+) notifications were "
                           r"copied from the damaged one", self.log_text())
        self.assertGreater(int(copied.group(1)) if copied else 300, 200, self.log_text())
        connection = sqlite3.connect(self.store())
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone()[0], 2)
        connection.close()

    def test_a_store_of_schema_1_holding_one_key_twice_is_salvaged_with_the_first(self):
        # Written by the receiver before schema 2 after a flipped bit had hidden its index's keys:
        # the copy of 1003 ran again, a second row. The second index cannot be made: damage.
        runs = []
        self.handle("on_payment", lambda notification: runs.append(notification["transaction_id"]))
        _, index = self.store_of_schema_1(3)
        with open(self.store(), "r+b") as file:
            file.seek((index - 1) * 4096 + 3)
            file.write(b"\0\0")                              # its count of entries: 0
        connection = sqlite3.connect(self.store())
        connection.execute("INSERT OR IGNORE INTO notifications (received_at, provider, event, duplicate_key, is_test, "
                           "fields, status, attempts, deliveries, answer, updated_at) VALUES (0, 'digistore24', "
                           "'on_payment', 'digistore24:on_payment:1003', 0, '{}', 'done', 1, 1, 'OK\nusername: again', 0)")
        connection.commit()
        self.assertEqual(connection.execute("SELECT count(*) FROM notifications NOT INDEXED").fetchone()[0], 4)
        connection.close()
        for number in ("1003", "1001"):
            self.assertEqual(post(payment(number)).body, "OK\nusername: buyer-" + number)
        self.assertEqual(runs, [])
        self.assertIn("database disk image is malformed: two rows hold one duplicate key;", self.log_text())
        self.assertIn("a new store was started and 3 notifications were copied", self.log_text())   # the first

    def test_a_command_run_as_another_user_reads_a_store_of_schema_1_as_it_is(self):
        # `events` or `check` as root on the web server's store: a migration would make the lock
        # file root's, and every call after it would fail (503).
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            self.skipTest("needs root, to give the data folder another owner")
        self.store_of_schema_1(2)
        os.chown(self.data_dir, 65534, 65534)
        self.addCleanup(os.chown, self.data_dir, 0, 0)
        with contextlib.redirect_stdout(io.StringIO()) as output:
            self.assertEqual(ipn_receiver.main(["events"]), 0)
        self.assertEqual(len(output.getvalue().splitlines()), 3, output.getvalue())      # its heading, 2 rows
        ipn_receiver.close_store()
        self.assertEqual(sorted(name for name in os.listdir(self.data_dir) if not name.startswith("events.sqlite3")),
                         [])                         # no lock file, no log: nothing made
        connection = sqlite3.connect(self.store())
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone()[0], 1)
        connection.close()

    def test_a_store_of_schema_1_whose_number_flipped_to_a_newer_one_is_salvaged_whole(self):
        # Its schema number, 1, read as 3: a newer receiver's, and so one with the second index.
        # The salvage needs the first alone: `repair` (or `--force`, as the 503 says) keeps every row.
        runs = []
        self.handle("on_payment", lambda notification: runs.append(notification["transaction_id"]))
        self.store_of_schema_1(20)
        connection = sqlite3.connect(self.store())
        connection.execute("PRAGMA user_version = 3")
        connection.commit()
        connection.close()
        self.assertEqual(post(payment("1005")).body, STORAGE_ERROR)
        for arguments in (["repair"], ["repair", "--force"]):
            with self.subTest(arguments=arguments), contextlib.redirect_stdout(io.StringIO()) as output, \
                    contextlib.redirect_stderr(io.StringIO()):
                self.assertEqual(ipn_receiver.main(arguments), 0)
                self.assertIn("the new store holds 20 notifications", output.getvalue())
        for number in ("1005", "1020"):
            self.assertEqual(post(payment(number)).body, "OK\nusername: buyer-" + number)
        self.assertEqual(runs, [])

    def test_a_row_whose_key_flipped_into_anothers_does_not_take_its_place_in_the_salvage(self):
        # One bit in row 1003's key makes it 1007's, which row 1007 holds: found at a copy of 1003,
        # the store is salvaged. Kept in the order of their ids, 1003's row would take 1007's key,
        # and every copy of 1007 would get buyer 1003's access data (or run again, had 1003 failed).
        runs = self.handle_payments_naming_their_buyer()
        for number in range(1001, 1011):
            post(payment(str(number)))
        self.checkpoint()
        with open(self.store(), "r+b") as file:
            content = bytearray(file.read())
            key = b"digistore24:on_payment:1003"
            table = [at for at in range(0, len(content), 4096) if content[at] == 0x0d and key in content[at:at + 4096]]
            self.assertEqual(len(table), 1)                 # (the indexes hold it too: left as they are)
            at = content.index(key, table[0], table[0] + 4096) + len(key) - 1
            content[at] ^= 0x04                             # "3" read as "7"
            file.seek(0)
            file.write(content)
        # (Its fields and both indexes say 1003: the row is 1003's.)
        for number in ("1003", "1007", "1001", "1010"):
            self.assertEqual(post(payment(number)).body, "OK\nusername: buyer-" + number)
        self.assertEqual(len(runs), 10)
        self.assertIn("a new store was started and 10 notifications were copied", self.log_text())

    def test_a_store_of_schema_1_whose_row_key_flipped_is_migrated_without_running_it_again(self):
        # The second index is built from the damaged table, so it holds the row's key as it now
        # reads (1000), the first as it was (1001): both are kept, and neither runs or answers
        # as the other. (Kept in one dict by id, 1001 was lost, and its copy ran again.)
        runs = []
        self.handle("on_payment", lambda notification: runs.append(notification["transaction_id"]))
        self.store_of_schema_1(4)
        with open(self.store(), "r+b") as file:
            content = bytearray(file.read())
            for number, bit in ((b"1001", 0x01), (b"1003", 0x04)):      # "1001" reads "1000", "1003" "1007"
                key = b"digistore24:on_payment:" + number
                at = [at for at in range(0, len(content), 4096) if content[at] == 0x0d and key in content[at:at + 4096]][0]
                content[content.index(key, at, at + 4096) + len(key) - 1] ^= bit
            file.seek(0)
            file.write(content)
        for number in ("1001", "1000", "1002", "1003", "1007", "1004"):
            answer = post(payment(number))
            self.assertEqual(answer.status, 200 if number in ("1002", "1004") else 503, number)
        self.assertEqual(runs, [])
        self.assertEqual(post(payment("1002")).body, "OK\nusername: buyer-1002")
        # Which of the two it is cannot be told: neither holds the row's fields or its answer,
        # which would go to the other's buyer once the vendor decides (the 33rd review).
        self.assertIn(ipn_receiver.UNKNOWN_NOTE % 4, self.log_text())
        held = [row for row in self.rows() if row["status"] == "unknown"]
        self.assertEqual({row["duplicate_key"][-4:]: row["id"] for row in held if row["id"] < 5},
                         {"1000": 1, "1007": 3})                        # (the row's id stays with its key)
        self.assertEqual(sorted(row["duplicate_key"][-4:] for row in held), ["1000", "1001", "1003", "1007"])
        self.assertEqual([(row["answer"], row["last_error"]) for row in held], [(None, ipn_receiver.DOUBTED_KEY)] * 4)
        for row in held:                        # (the fields its copy brought back, its own)
            self.assertEqual("digistore24:on_payment:" + json.loads(row["fields"])["transaction_id"],
                             row["duplicate_key"])
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["replay", str(held[0]["id"]), "--done"]), 0)
        self.assertEqual(post(payment(held[0]["duplicate_key"].split(":")[-1])).body, "OK")
        self.assertEqual(runs, [])

    def test_a_salvaged_row_whose_id_is_taken_goes_in_under_a_new_one(self):
        # A flipped bit in the count of cells of the table's last page hides its rows, and the
        # next sale takes the id of one of them: the salvage reads both, under one id. Neither
        # is lost; where two rows hold one key, the first stands.
        connection = ipn_receiver.open_store(ipn_receiver.settings())
        columns = ipn_receiver.STORE_COLUMNS

        def row(number, key):
            return tuple(dict(ipn_receiver.UNREADABLE, id=number, duplicate_key=key).get(column) for column in columns)
        self.assertEqual([ipn_receiver.copy_row(connection, row(*entry)) for entry in ((1, "a"), (1, "b"), (5, "a"))],
                         [1, 1, 0])
        self.assertEqual(connection.execute("SELECT id, duplicate_key FROM notifications ORDER BY id").fetchall(),
                         [(1, "a"), (2, "b")])

    def test_of_two_rows_with_one_key_the_one_done_stands_with_its_answer(self):
        # A store copied back over the live one while its -wal file stayed reads as a mix of both:
        # one key in two rows, one done, one still processing. Kept, the processing one would
        # have run the handler again (the 38th review).
        runs = self.handle_payments_naming_their_buyer()
        post(payment("1"))
        post(payment("2"))
        self.checkpoint()
        connection = sqlite3.connect(self.store())
        schema = connection.execute("SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master").fetchall()
        connection.execute("PRAGMA writable_schema=ON")         # the key UNIQUE no more, for a moment
        connection.execute("DELETE FROM sqlite_master WHERE type = 'index'")
        connection.execute("UPDATE sqlite_master SET sql = replace(sql, 'NOT NULL UNIQUE', 'NOT NULL')")
        connection.commit()
        connection.close()
        connection = sqlite3.connect(self.store())
        connection.execute("UPDATE notifications SET (duplicate_key, fields, status, answer) = (SELECT duplicate_key, "
                           "fields, 'processing', NULL FROM notifications WHERE id = 2) WHERE id = 1")
        connection.commit()
        connection.close()
        connection = sqlite3.connect(self.store())
        connection.execute("PRAGMA writable_schema=ON")
        connection.execute("DELETE FROM sqlite_master")
        connection.executemany("INSERT INTO sqlite_master VALUES (?, ?, ?, ?, ?)", schema)
        connection.commit()
        connection.close()
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["repair"]), 0)
        self.assertEqual([(row["status"], row["duplicate_key"], row["answer"]) for row in self.rows()
                          if row["duplicate_key"].endswith(":2")], [("done", "digistore24:on_payment:2",
                                                                     "OK\nusername: buyer-2")])
        self.assertEqual(post(payment("2")).body, "OK\nusername: buyer-2")
        self.assertEqual(runs, ["1", "2"])

    def test_text_a_flipped_bit_made_no_utf8_is_damage_and_never_logged(self):
        # SQLite's integrity check passes it; sqlite3 cannot read it, and its message quotes the
        # text: a buyer's access data. A copy is held (its answer cannot be read), not a 503 for
        # ever; the other rows stand; nothing of the text goes into the log or onto the screen.
        runs = []
        self.handle("on_payment", lambda n: runs.append(n) or {"username": "jane-" + n["transaction_id"]})
        for number in ("1001", "1002"):
            post(payment(number))
        ipn_receiver.close_store()
        connection = sqlite3.connect(self.store())
        connection.execute("UPDATE notifications SET answer = CAST(X'4f4b0a757365726e616d653a206a616e65ff' AS TEXT) "
                           "WHERE duplicate_key LIKE '%1001'")
        connection.commit()
        connection.close()
        checked = subprocess.run([PYTHON, SCRIPT, "check"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                                 env=dict(os.environ, IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_DATA_DIR=self.data_dir))
        output = checked.stdout.decode()
        self.assertIn("PROBLEM  event store %s can be read (it is damaged: database disk image is malformed: text in "
                      "it is not UTF-8)\n         fix: python3 ipn_receiver.py repair   (sets it aside, and keeps the 2 "
                      "notifications that can be read)\n" % self.store(), output)
        self.assertEqual(ipn_receiver.integrity_of(self.store()), "database disk image is malformed: text in it is not "
                                                                  "UTF-8")     # (so `repair` repairs it)
        self.assertEqual(post(payment("1001")).body, ipn_receiver.UNKNOWN_ANSWER % {"id": 1})
        self.assertEqual(post(payment("1002")).body, "OK\nusername: jane-1002")
        self.assertEqual(len(runs), 2)
        self.assertIn("text in it is not UTF-8", self.log_text())
        self.assertNotIn("username: jane", self.log_text() + output)

    def test_a_name_in_the_schema_that_is_no_utf8_is_damage_that_is_salvaged(self):
        # One bit in a name on the first page: SQLite's message, which quotes the name, cannot be
        # read by sqlite3. Damage, not a riddle: the store is set aside, and its rows, which the
        # name does not hide from a salvage, are kept.
        runs = self.handle_payments_naming_their_buyer()
        post(payment("1"))
        ipn_receiver.close_store()
        with open(self.store(), "r+b") as file:
            content = bytearray(file.read())
            at = content.index(b"duplicate_keys", 0, 4096)      # in sqlite_master, on the first page
            content[at + 10] = 0xff
            file.seek(0)
            file.write(content)
        self.assertEqual(post(payment("2")).body, "OK\nusername: buyer-2")
        self.assertEqual(post(payment("1")).body, "OK\nusername: buyer-1")
        self.assertEqual(runs, ["1", "2"])
        self.assertIn("text in it is not UTF-8", self.log_text())
        self.assertIn("1 notifications were copied", self.log_text())
        self.assertEqual(integrity(self.store()), "ok")

    def test_a_store_that_says_a_newer_receiver_wrote_it_is_refused_with_both_ways_out(self):
        post(payment("1"))
        ipn_receiver.close_store()
        connection = sqlite3.connect(self.store())
        connection.execute("PRAGMA user_version = 3")      # one bit of 2: or a newer receiver's
        connection.commit()
        connection.close()
        self.assertEqual(post(payment("2")).body, STORAGE_ERROR)
        self.assertIn("the event store says it was written by a newer ipn_receiver (schema 3): upload that one again; "
                      "if you never had one, that number is damaged, and `python3 ipn_receiver.py repair --force` sets "
                      "the store aside and starts a new one with every row that can be read", self.log_text())
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["repair", "--force"]), 0)
        self.assertEqual(post(payment("1")).body, "OK")
        self.assertEqual([row["duplicate_key"] for row in self.rows()], ["digistore24:on_payment:1"])

    def test_a_schema_damaged_where_the_integrity_check_cannot_see_gives_503_and_runs_nothing(self):
        # One bit flipped in the schema's text: PRIMARY read as QRIMARY (every id is then NULL),
        # or a line break as a vertical tab (the next column becomes part of a comment). SQLite's
        # integrity check says ok. Answers and outcomes would go to no row: refused, left as it is.
        for damage in (("PRIMARY", "QRIMARY"), ("(retries included)\n", "(retries included)\v")):
            with self.subTest(damage=damage[1].strip()):
                self.setUp()
                runs = []

                def on_payment(notification):
                    runs.append(notification["transaction_id"])
                    if notification["transaction_id"] == "2002":
                        raise RuntimeError("not yet")
                    return {"username": "buyer-" + notification["transaction_id"]}
                self.handle("on_payment", on_payment)
                for number in ("1001", "2002"):
                    post(payment(number))
                ipn_receiver.close_store()
                connection = sqlite3.connect(self.store())
                connection.execute("PRAGMA writable_schema=ON")
                connection.execute("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE name = 'notifications'",
                                   damage)
                connection.commit()
                connection.close()
                if damage[0] == "PRIMARY":
                    self.assertEqual(integrity(self.store()), "ok")
                for number in ("1001", "2002", "3003"):
                    answer = post(payment(number))
                    self.assertEqual((answer.status, answer.body), (503, STORAGE_ERROR))
                self.assertEqual(runs, ["1001", "2002"])
                self.assertIn("its schema is damaged (", self.log_text())
                output = io.StringIO()
                with contextlib.redirect_stdout(output), contextlib.redirect_stderr(io.StringIO()) as errors, \
                        mock.patch.dict(os.environ, IPN_DATA_DIR=self.data_dir, IPN_SHA_PASSPHRASE=PASSPHRASE):
                    self.assertEqual(ipn_receiver.main(["check"]), 1)
                    self.assertEqual(ipn_receiver.main(["repair"]), 1)
                self.assertIn("PROBLEM  event store: event store %s: its schema is damaged" % self.store(),
                              output.getvalue())
                self.assertIn("damaged where its schema is kept, so the receiver cannot read its rows (they may be there "
                              "still), and it was left as it was",
                              errors.getvalue())
                self.assertEqual(runs, ["1001", "2002"])

    def test_what_is_wrong_with_a_schema_is_told_by_its_shape(self):
        def problem(*changes):
            connection = sqlite3.connect(":memory:")
            schema = ipn_receiver.SCHEMA
            for old, new in changes[:1]:
                schema = schema.replace(old, new)
            connection.execute(schema)
            connection.execute("PRAGMA user_version = 2")
            for statement in changes[1:] or [ipn_receiver.SECOND_KEY_INDEX]:
                connection.execute(statement)
            return ipn_receiver.schema_problem(connection)

        self.assertIsNone(problem())
        self.assertEqual(problem(("(retries included)\n", "(retries included)\v")),
                         "its columns are not those of the receiver's table")
        for id_column in ("INTEGER QRIMARY KEY", "INTEGER", "INTEGEQ PRIMARY KEY"):
            self.assertEqual(problem(("INTEGER PRIMARY KEY", id_column)), "its id is not the table's INTEGER PRIMARY KEY")
        # Both indexes of the duplicate keys, each UNIQUE, each of the key alone.
        not_unique, as_is = "its duplicate keys are not UNIQUE in their indexes", ("", "")
        without_unique = ("NOT NULL UNIQUE", "NOT NULL")
        self.assertEqual(problem(without_unique), not_unique)
        self.assertEqual(problem(as_is, "SELECT 1"), not_unique)
        # A store of schema 1 (made before the second index; read as it is by a command run as
        # another user, or salvaged) has the first alone.
        self.assertIsNone(problem(as_is, "PRAGMA user_version = 1"))
        self.assertEqual(problem(without_unique, "PRAGMA user_version = 1"), not_unique)
        for second in ("CREATE INDEX duplicate_keys ON notifications (duplicate_key)",
                       "CREATE UNIQUE INDEX duplicate_keys ON notifications (duplicate_key, event)",
                       "CREATE UNIQUE INDEX duplicate_keys ON notifications (event)",
                       "CREATE UNIQUE INDEX duplicate_kezs ON notifications (duplicate_key)"):
            self.assertEqual(problem(as_is, second), not_unique, second)

    def test_a_key_the_index_holds_but_no_row_does_is_damage(self):
        post(payment("1001"))
        post(payment("1002"))
        connection = ipn_receiver.open_store(ipn_receiver.settings())
        key = "digistore24:on_payment:1002"
        self.assertEqual(ipn_receiver.row_of_key(connection, "status", key), ("done",))
        self.assertIsNone(ipn_receiver.row_of_key(connection, "status", "nowhere", may_be_missing=True))
        with self.assertRaises(sqlite3.DatabaseError):
            ipn_receiver.row_of_key(connection, "status", "nowhere")       # (a claim found it there)
        ipn_receiver.close_store()
        with open(self.store(), "r+b") as file:                          # its entry points to row 9
            content = bytearray(file.read())
            at = content.index(key.encode(), 2 * 4096, 3 * 4096) + len(key)
            self.assertEqual(content[at], 2)
            content[at] = 9
            file.seek(0)
            file.write(content)
        connection = ipn_receiver.open_store(ipn_receiver.settings())
        for may_be_missing in (False, True):
            with self.assertRaises(sqlite3.DatabaseError):
                ipn_receiver.row_of_key(connection, "status", key, may_be_missing)

    def test_an_htaccess_of_the_receivers_cut_short_is_written_again(self):
        htaccess = os.path.join(self.data_dir, ".htaccess")
        with open(htaccess, "w") as file:
            file.write(ipn_receiver._HTACCESS.split("\n")[0] + "\n<IfModule mod_authz_core.c>\n")   # a full disk
        self.assertFalse(ipn_receiver.is_anothers(htaccess))
        self.assertEqual(post(payment()).body, "OK")
        self.assertTrue(ipn_receiver.denies_the_web(htaccess))

    def flip_a_bit_in_the_table(self, text, bit):
        """Flip `bit` in the last byte of `text` where a page of the table (not an index) holds it."""
        with open(self.store(), "r+b") as file:
            content = bytearray(file.read())
            at = [at for at in range(len(content)) if content.startswith(text, at)
                  and content[at // 4096 * 4096] == 0x0d][0] + len(text) - 1
            content[at] ^= bit
            file.seek(0)
            file.write(content)

    def test_a_row_whose_key_lost_a_bit_is_known_by_its_fields_and_the_index(self):
        # One flipped bit in a stored key makes 1001's row read 1000's, a sale yet to come. Its
        # fields and the index still say 1001: the row is 1001's. Held under 1000, whatever the
        # vendor then did would be wrong (the 33rd review): `replay` would run 1001 again and
        # give 1000's buyer 1001's access data; `replay --done` would lose 1000 for good.
        runs = self.handle_payments_naming_their_buyer()
        for number in ("1001", "1002"):
            post(payment(number))
        self.checkpoint()
        self.flip_a_bit_in_the_table(b"digistore24:on_payment:1001", 0x01)     # "1001" reads "1000"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["repair"]), 0)
        keys = {row["duplicate_key"]: row["status"] for row in self.rows()}
        self.assertEqual(keys, {"digistore24:on_payment:1001": "done", "digistore24:on_payment:1002": "done"})
        for number in ("1001", "1002", "1000"):
            self.assertEqual(post(payment(number)).body, "OK\nusername: buyer-" + number)
        self.assertEqual(runs, ["1001", "1002", "1000"])

    def test_a_row_whose_fields_lost_a_bit_keeps_its_key_and_answer_and_drops_the_fields(self):
        # One flipped bit in the transaction id within a row's fields: they make another key
        # than the row holds, and the index holds the row's. Its key is right, its fields are not:
        # they go (the next copy brings them back); its answer still goes to its own buyer.
        runs = self.handle_payments_naming_their_buyer()
        for number in ("1001", "1002"):
            post(payment(number))
        self.checkpoint()
        self.flip_a_bit_in_the_table(b'"transaction_id":"1001', 0x01)          # "1001" reads "1000" in its fields
        # (SQLite's check passes it: found where the store is salvaged for other damage.)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["repair", "--force"]), 0)
        row = [row for row in self.rows() if row["duplicate_key"] == "digistore24:on_payment:1001"][0]
        self.assertEqual((row["status"], row["fields"], row["answer"]), ("done", "{}", "OK\nusername: buyer-1001"))
        for number in ("1001", "1000"):
            self.assertEqual(post(payment(number)).body, "OK\nusername: buyer-" + number)
        self.assertEqual(runs, ["1001", "1002", "1000"])
        self.assertEqual(json.loads(self.rows()[0]["fields"])["transaction_id"], "1001")     # brought back

    def test_damage_where_new_calls_write_is_set_aside_and_the_readable_rows_kept(self):
        # The damage sits in the page every new row goes to, and the store's row count, read
        # from its index, still works: a health probe would call the store fine, and every new
        # sale would be refused until someone ran `repair`.
        self.fill_and_checkpoint(60)
        readable = damage_where_inserts_go(self.store())
        self.assertGreater(len(readable), 30)
        seen = []
        self.handle("on_payment", seen.append)
        answer = post(payment("new"))
        self.assertEqual((answer.status, answer.body), (200, "OK"))
        self.assertEqual(len(seen), 1)
        aside = [name for name in os.listdir(self.data_dir) if ".damaged-" in name and "-wal" not in name
                 and "-shm" not in name]
        self.assertEqual(len(aside), 1)
        self.assertEqual(integrity(self.store()), "ok")
        kept = {row["duplicate_key"] for row in self.rows()}
        self.assertEqual(kept, readable | {"digistore24:on_payment:new"})   # every readable row kept
        self.assertIn(("ERROR", "event store %s was set aside (database disk image is malformed); it was moved to %s, "
                                "a new store was started and %d notifications were copied from the damaged one. "
                                "Keep the damaged copy until `python3 ipn_receiver.py check` is clean."
                       % (self.store(), aside[0], len(readable))), self.log_messages())
        self.assertRegex(aside[0], r"^events\.sqlite3\.damaged-\d{8}-\d{6}$")
        # A copy of one that was kept gets its stored answer, not a second run.
        self.assertEqual(post(payment(sorted(readable)[0].split(":")[-1])).body, "OK")
        self.assertEqual(len(seen), 1)

    def test_a_row_whose_long_fields_are_damaged_is_kept_for_what_can_be_read(self):
        # Long fields span several pages; with one of them damaged the row's other columns still
        # tell that it was handled, and what was answered: its handler must not run again.
        self.handle("on_payment", lambda n: {"username": "jane"})
        post(payment("long", custom="MARKER" * 3000))
        post(payment("short"))
        self.checkpoint()
        with open(self.store(), "r+b") as file:
            content = file.read()
            pages = sorted({index // 4096 for index in range(0, len(content), 4096)
                            if b"MARKER" * 100 in content[index:index + 4096]})
            file.seek(pages[len(pages) // 2] * 4096)
            file.write(b"\xff" * 4096)                          # a page in the middle of the fields
        with ipn_receiver.StoreLock(self.data_dir):
            ipn_receiver.set_damaged_store_aside(ipn_receiver.settings(), "test")
        rows = {row["duplicate_key"]: row for row in self.rows()}
        self.assertEqual(set(rows), {"digistore24:on_payment:long", "digistore24:on_payment:short"})
        damaged = rows["digistore24:on_payment:long"]
        self.assertEqual((damaged["status"], damaged["answer"], damaged["fields"]), ("done", "OK\nusername: jane", "{}"))
        self.assertIn("some of its columns could not be read", damaged["last_error"])
        self.assertIsNone(rows["digistore24:on_payment:short"]["last_error"])
        runs = []
        self.handle("on_payment", runs.append)
        self.assertEqual(post(payment("long", custom="MARKER" * 3000)).body, "OK\nusername: jane")
        self.assertEqual(runs, [])

    def test_an_id_read_from_damage_does_not_make_the_salvage_endless(self):
        # A damaged cell may claim any id, 2**56 say. A salvage that walked every id up to the
        # largest one would never end, and it holds the store's lock meanwhile.
        self.fill_and_checkpoint(40)
        connection = sqlite3.connect(self.store())
        connection.execute("INSERT INTO notifications (id, received_at, provider, event, duplicate_key, is_test, "
                           "fields, status, attempts, deliveries, updated_at) VALUES "
                           "(?, 0, 'digistore24', 'on_payment', 'far', 0, '{}', 'done', 1, 1, 0)", (2 ** 56,))
        connection.commit()
        connection.close()
        self.assertEqual(damage_a_page_in_the_middle(self.store()), 2 ** 56)
        readable = readable_keys(self.store()) | {"far"}
        lookups = []
        real_salvage_row = ipn_receiver.salvage_row

        def counted(source, number):
            lookups.append(number)
            if len(lookups) > 10000:
                raise AssertionError("the salvage walks on and on")
            return real_salvage_row(source, number)

        with mock.patch.object(ipn_receiver, "salvage_row", counted):
            with ipn_receiver.StoreLock(self.data_dir):
                ipn_receiver.set_damaged_store_aside(ipn_receiver.settings(), "test")
        self.assertLess(len(lookups), 2000)
        rows = self.rows()
        self.assertEqual({row["duplicate_key"] for row in rows if row["status"] == "done"}, readable)
        # The rows of the damaged page are known from the index of duplicate keys: all 41 are kept.
        self.assertEqual({row["duplicate_key"] for row in rows},
                         {"digistore24:on_payment:%d" % number for number in range(40)} | {"far"})

    def test_rows_lost_to_damage_are_known_by_their_key_and_their_copies_held_for_the_vendor(self):
        # A damaged page of the table loses its rows, but the index of duplicate keys still holds
        # their keys. Whether their handlers ran is unknown: a copy is neither run again nor
        # answered OK; it gets a 503 that says what to do, and the vendor decides with `replay`.
        runs = []
        self.handle("on_payment", lambda notification: runs.append(notification["transaction_id"]))
        for number in range(60):
            post(payment(str(number), custom="row %d " % number + "x" * 200))
        self.checkpoint()
        ids = {row["duplicate_key"].split(":")[-1]: row["id"] for row in self.rows()}
        with open(self.store(), "r+b") as file:
            content = bytearray(file.read())
            for marker in (b"row 30 x", b"row 31 x"):                # pages of the table, not the index
                page = content.index(marker) // 4096
                content[page * 4096:page * 4096 + 12] = b"\x07" * 12  # their headers: their rows are lost
            file.seek(0)
            file.write(content)
        lost = {str(number) for number in range(60)} - {key.split(":")[-1] for key in readable_keys(self.store())}
        self.assertTrue({"30", "31"} <= lost)
        with ipn_receiver.StoreLock(self.data_dir):
            ipn_receiver.set_damaged_store_aside(ipn_receiver.settings(), "test")
        rows = {row["duplicate_key"].split(":")[-1]: row for row in self.rows()}
        self.assertEqual(set(rows), {str(number) for number in range(60)})
        self.assertEqual({number for number, row in rows.items() if row["status"] == "unknown"}, lost)
        self.assertEqual({number: row["id"] for number, row in rows.items()}, ids)     # each keeps its number
        self.assertIn(ipn_receiver.UNKNOWN_NOTE % len(lost), self.log_text())
        # Until a copy brings its fields back, there is nothing to run it with.
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            self.assertEqual(ipn_receiver.main(["replay", str(rows["30"]["id"])]), 1)
        self.assertIn("lost its fields when the event store was damaged", errors.getvalue())
        del runs[:]
        for number in range(60):
            answer = post(payment(str(number), custom="row %d " % number + "x" * 200))
            if str(number) in lost:
                self.assertEqual((answer.status, answer.body),
                                 (503, ipn_receiver.UNKNOWN_ANSWER % {"id": rows[str(number)]["id"]}))
            else:
                self.assertEqual((answer.status, answer.body), (200, "OK"))
        self.assertEqual(runs, [])                                  # nothing ran twice
        held = [message for level, message in self.log_messages() if message.startswith("POST") and "held" in message]
        self.assertEqual(len(held), len(lost))
        for message in held:
            self.assertRegex(message, r"^POST -> 503, digistore24 on_payment order \S+ txn \d+: held: salvaged from a "
                                      r"damaged store, status unknown$")
        self.assertTrue(ipn_receiver.UNKNOWN_ANSWER.startswith("ERROR: notification #%(id)d lost its record"))
        self.assertEqual({row["last_error"] for row in self.rows() if row["status"] == "unknown"},
                         {ipn_receiver.UNREADABLE["last_error"]})           # what the salvage wrote, kept
        # The copy brought the fields back; the vendor runs one and marks another handled.
        first, second = sorted(lost, key=int)[:2]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(ipn_receiver.main(["replay", str(rows[first]["id"])]), 0)
            self.assertEqual(ipn_receiver.main(["replay", str(rows[second]["id"]), "--done"]), 0)
        self.assertEqual(runs, [first])
        self.assertEqual(post(payment(first, custom="row %s " % first + "x" * 200)).body, "OK")
        self.assertEqual(post(payment(second, custom="row %s " % second + "x" * 200)).body, "OK")
        self.assertEqual(runs, [first])
        done = {row["duplicate_key"].split(":")[-1]: row for row in self.rows()}[second]
        self.assertEqual((done["status"], done["answer"], done["last_error"]),
                         ("done", "OK", "marked done by hand (replay --done)"))

    def test_a_process_killed_while_it_puts_the_salvaged_store_in_place(self):
        # The salvaged store is filled, then renamed in: a process killed between two of those
        # renames (the web server's timeout, the OOM killer) must leave no call to start an empty
        # store, in which every handled notification would run again.
        class Killed(BaseException):
            pass

        real_replace = os.replace
        for step in range(1, 7):
            with self.subTest(step=step):
                self.data_dir = tempfile.mkdtemp(prefix="ipn-test-")
                self.addCleanup(shutil.rmtree, self.data_dir, True)
                ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.data_dir)
                runs = []
                self.handle("on_payment", lambda notification: runs.append(1))
                for number in range(20):
                    post(payment(str(number)))
                connection = sqlite3.connect(self.store())      # another process's: the -wal stays
                connection.execute("SELECT count(*) FROM notifications").fetchone()
                renames = []

                def replace(source, target):
                    renames.append(source)
                    if len(renames) == step:
                        raise Killed()
                    return real_replace(source, target)

                with mock.patch.object(ipn_receiver.os, "replace", replace):
                    try:
                        with ipn_receiver.StoreLock(self.data_dir):
                            ipn_receiver.set_damaged_store_aside(ipn_receiver.settings(), "test")
                    except Killed:
                        pass
                connection.close()
                ipn_receiver.close_store()                      # the killed process's connections
                self.assertEqual(len(renames), min(step, 5))    # (step 6: no kill, all five done)
                self.assertEqual(post(payment("new")).body, "OK")
                finished = [message for level, message in self.log_messages() if "a process died" in message]
                self.assertEqual(len(finished), 1 if step in (3, 4, 5) else 0)
                if finished:
                    self.assertRegex(finished[0], r"^event store .*events\.sqlite3: a process died while setting a "
                                                  r"damaged store aside; the new store it had filled was put in "
                                                  r"place \(what was left of the damaged one: events\.sqlite3\."
                                                  r"damaged-\d{8}-\d{6}(-\d)?\)$")
                for number in range(20):
                    self.assertEqual(post(payment(str(number))).body, "OK")
                self.assertEqual(len(runs), 21)                 # the 20 once each, and the new one
                self.assertEqual(len(self.rows()), 21)
                if step > 2:        # (before, the live store was not yet moved: the next salvage
                                    # removes the one left, which is older than the store's rows)
                    self.assertFalse([name for name in os.listdir(self.data_dir) if "salvage" in name])
                self.assertEqual(integrity(self.store()), "ok")

    def test_the_folder_is_synced_once_the_salvaged_store_is_in_place(self):
        # The store's name is in its folder: until the folder is synced, a power cut may bring back
        # the damaged store under that name, and lose the new one with every row written since.
        for number in range(5):
            post(payment(str(number)))

        def salvage():
            with ipn_receiver.StoreLock(self.data_dir):
                ipn_receiver.set_damaged_store_aside(ipn_receiver.settings(), "test")

        self.assertEqual(self.renames_and_syncs(salvage)[-2:],
                         [("replace", self.store()), ("sync", os.stat(self.data_dir).st_ino)])

    def test_the_folder_is_synced_once_an_interrupted_swap_is_finished(self):
        post(payment())
        ipn_receiver.close_store()
        os.replace(self.store(), self.store() + ".salvaged")
        events = self.renames_and_syncs(lambda: ipn_receiver.finish_interrupted_swap(self.store()))
        self.assertEqual(events[-2:], [("replace", self.store()), ("sync", os.stat(self.data_dir).st_ino)])

    def test_a_claim_that_fails_inside_its_transaction_leaves_the_connection_usable(self):
        # A process that lives on keeps its connection: left inside the failed transaction, its
        # every later call would fail ("cannot start a transaction within a transaction").
        self.handle("on_payment", lambda notification: 1 / 0)
        post(payment("1"))
        with mock.patch.object(ipn_receiver, "retry_pause", side_effect=RuntimeError("a bug")):
            self.assertEqual(post(payment("1")).status, 503)
        self.handle("on_payment", lambda notification: None)
        self.assertEqual(post(payment("2")).status, 200)

    def test_an_outcome_that_fails_inside_its_transaction_leaves_the_connection_usable(self):
        # The same for the outcome's transaction.
        with mock.patch.object(ipn_receiver, "row_of_key", side_effect=RuntimeError("a bug")):
            self.assertEqual(post(payment("1")).status, 503)
        self.assertEqual(post(payment("2")).status, 200)

    def test_a_new_stores_name_is_synced_into_its_folder_before_its_first_row(self):
        # Else, after a power cut, the store could be gone while its journal, with the first
        # rows, is not; the next call would make the store anew and remove that journal.
        events = self.renames_and_syncs(lambda: post(payment()))
        self.assertIn(("sync", os.stat(self.data_dir).st_ino), events)
        with mock.patch.object(ipn_receiver, "sync_folder", side_effect=OSError(5, "Input/output error")):
            ipn_receiver.close_store()
            os.remove(self.store())
            self.assertEqual(post(payment("2")).status, 503)

    def test_a_folder_its_file_system_cannot_sync_is_passed_over_but_a_failing_sync_is_not(self):
        for number in (errno.EINVAL, errno.EIO):
            def fsync(fd):
                raise OSError(number, os.strerror(number))

            with self.subTest(errno=errno.errorcode[number]), mock.patch.object(os, "fsync", fsync):
                if number == errno.EINVAL:
                    self.assertIsNone(ipn_receiver.sync_folder(self.data_dir))
                else:
                    with self.assertRaises(OSError):
                        ipn_receiver.sync_folder(self.data_dir)

    def renames_and_syncs(self, action):
        """What `action` renamed, and which folders it synced, in order."""
        events = []
        real_replace, real_fsync = os.replace, os.fsync

        def replace(source, target):
            events.append(("replace", target))
            return real_replace(source, target)

        def fsync(fd):
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                events.append(("sync", os.fstat(fd).st_ino))
            return real_fsync(fd)

        with mock.patch.object(os, "replace", replace), mock.patch.object(os, "fsync", fsync):
            action()
        return events

    def test_which_keys_of_the_index_make_rows_of_their_own(self):
        # Each key no readable row holds: "unknown", with its id and key alone; where a readable
        # row has its id under another key (a bit flipped in one of them), under a new id.
        key = ipn_receiver.STORE_COLUMNS.index("duplicate_key")
        rows = [tuple(5 if index == 0 else "a" if index == key else None
                      for index in range(len(ipn_receiver.STORE_COLUMNS)))]
        # (Two indexes may hold one id under two keys, or one key under two ids: each key once.)
        lost = [dict(zip(ipn_receiver.STORE_COLUMNS, row)) for row in ipn_receiver.rows_of_lost_keys(
            rows, {(5, "b"), (6, "c"), (7, "a"), (6, "d"), (8, "c")})]
        self.assertEqual([(row["id"], row["duplicate_key"], row["status"], row["fields"]) for row in lost],
                         [(None, "b", "unknown", "{}"), (6, "c", "unknown", "{}"), (None, "d", "unknown", "{}")])

    def test_damage_that_sqlite_reports_as_out_of_memory_is_damage_too(self):
        # A damaged cell may claim a payload larger than SQLite can allocate: MemoryError, not
        # sqlite3.Error (seen with SQLite 3.53). The salvage reads past it like any damage.
        class Damaged:
            def execute(self, *args):
                raise MemoryError()

        self.assertEqual(ipn_receiver.keys_in_index(Damaged()), set())
        self.assertIsNone(ipn_receiver.salvage_row(Damaged(), 1))

    def test_the_indexes_are_read_from_both_ends_past_a_damaged_page(self):
        post(payment("0"))
        ipn_receiver.close_store()
        connection = sqlite3.connect(self.store())
        connection.executemany(
            "INSERT INTO notifications (received_at, provider, event, duplicate_key, is_test, fields, status, "
            "attempts, deliveries, updated_at) VALUES (0, 'digistore24', 'on_payment', ?, 0, '{}', 'done', 1, 1, 0)",
            [("digistore24:on_payment:%06d-%s" % (number, "k" * 40),) for number in range(1, 600)])
        connection.commit()
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        every_key = {row[0] for row in connection.execute("SELECT duplicate_key FROM notifications")}
        connection.close()
        with open(self.store(), "rb") as file:
            content = file.read()
        middle = sorted(every_key)[len(every_key) // 2].encode()
        pages = [number for number in range(1, len(content) // 4096) if content[number * 4096] == 0x0a and
                 middle in content[number * 4096:(number + 1) * 4096]]     # a leaf page of each index
        self.assertEqual(len(pages), 2)
        for damaged in (pages[:1], pages):
            with open(self.store(), "wb") as file:
                file.write(b"".join(b"\x07" * 12 + content[number * 4096 + 12:(number + 1) * 4096]
                                    if number in damaged else content[number * 4096:(number + 1) * 4096]
                                    for number in range(len(content) // 4096)))
            source = sqlite3.connect(self.store())
            try:
                keys = ipn_receiver.keys_in_index(source)
            finally:
                source.close()
            keys = {key for _, key in keys}
            if len(damaged) == 1:               # the other index holds what is on it
                self.assertEqual(keys, every_key)
                continue
            self.assertTrue(keys < every_key)
            self.assertIn(min(every_key), keys)
            self.assertIn(max(every_key), keys)
            self.assertGreater(len(keys), len(every_key) // 2)

    def test_a_salvage_that_fails_leaves_the_damaged_store_in_place(self):
        # A full disk, say, during the salvage: a store left empty would let every handler run
        # again. The damaged store stays, the call gets 503, and the sender retries.
        self.fill_and_checkpoint(60)
        readable = damage_where_inserts_go(self.store())
        runs = []
        self.handle("on_payment", lambda n: runs.append(1))
        full = sqlite3.OperationalError("database or disk is full")
        with mock.patch.object(ipn_receiver, "salvage_rows", side_effect=full):
            self.assertEqual((post(payment("new")).status, post(payment("new")).body[:26]),
                             (503, "ERROR: storage unavailable"))
            import contextlib
            import io
            with contextlib.redirect_stderr(io.StringIO()) as errors:
                self.assertEqual(ipn_receiver.main(["repair"]), 1)
            self.assertIn("it was left as it was", errors.getvalue())
        self.assertFalse([name for name in os.listdir(self.data_dir) if "damaged" in name or "salvage" in name])
        self.assertEqual(runs, [])
        # Space again: the next call sets it aside, and no handled notification runs again.
        self.assertEqual(post(payment("new")).body, "OK")
        for key in readable:
            self.assertEqual(post(payment(key.split(":")[-1])).body, "OK")
        self.assertEqual(runs, [1])

    def test_a_data_dir_spelled_with_a_trailing_slash_takes_one_lock(self):
        # "/data//" and "/data" must name one lock file: the salvage takes the lock again.
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.data_dir + "//")
        runs = []
        self.handle("on_payment", runs.append)
        post(payment("1"))
        import contextlib
        import io
        with mock.patch.object(ipn_receiver, "LOCK_TIMEOUT_SECONDS", 1), contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["repair", "--force"]), 0)
        self.assertEqual(post(payment("1")).status, 200)
        self.assertEqual(len(runs), 1)

    def test_damaged_copies_set_aside_in_the_same_second_are_all_kept(self):
        with mock.patch.object(ipn_receiver.time, "strftime", return_value="20261125-120000"):
            for number in range(3):
                post(payment(str(number)))
                with ipn_receiver.StoreLock(self.data_dir):
                    ipn_receiver.set_damaged_store_aside(ipn_receiver.settings(), "test")
        names = sorted(name for name in os.listdir(self.data_dir) if ".damaged-" in name and name[-1].isdigit())
        self.assertEqual(names, ["events.sqlite3.damaged-20261125-120000", "events.sqlite3.damaged-20261125-120000-2",
                                 "events.sqlite3.damaged-20261125-120000-3"])

    def test_the_journal_goes_aside_with_the_store(self):
        # Its last commits may be in the -wal file alone: it is moved with the store, not lost.
        post(payment("1"))
        connection = sqlite3.connect(self.store())          # another process's, kept open:
        connection.execute("SELECT count(*) FROM notifications").fetchone()     # -wal and -shm stay
        self.assertTrue(os.path.exists(self.store() + "-wal") and os.path.exists(self.store() + "-shm"))
        with open(self.store() + "-wal", "rb") as file:
            journal = file.read()
        with ipn_receiver.StoreLock(self.data_dir):
            ipn_receiver.set_damaged_store_aside(ipn_receiver.settings(), "test")
        aside = [name for name in os.listdir(self.data_dir) if name.endswith(".damaged-" + name.split(".damaged-")[-1])
                 and not name.endswith(("-wal", "-shm"))][0]
        for suffix in ("-wal", "-shm"):
            self.assertTrue(os.path.exists(os.path.join(self.data_dir, aside + suffix)), suffix)
        with open(os.path.join(self.data_dir, aside + "-wal"), "rb") as file:
            self.assertEqual(file.read(), journal)
        connection.close()


def fork_a_child_until_closed():
    """Fork a child, as a handler may, that lives until the test closes the pipe it gets:
    (its process id, the pipe's end to close)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    return child, write_end


class TheLiveStore(ReceiverTestCase):
    """OK goes out only for what the live store holds as done, whatever happens to the store while a
    handler runs; and no call waits for ever for the store's lock."""

    @unittest.skipUnless(hasattr(os, "register_at_fork"), "Python 3.6 has no os.register_at_fork: there a child "
                         "forked while another thread holds the store's lock keeps it")
    def test_a_child_forked_while_another_thread_holds_the_lock_does_not_keep_it(self):
        # A handler under a threaded server (serve, mod_wsgi, waitress) starts a background process
        # with os.fork(), as another thread holds the lock: the child gets a copy of its descriptor.
        taken, release = threading.Event(), threading.Event()

        def holder():
            with ipn_receiver.StoreLock(self.data_dir):
                taken.set()
                release.wait(30)
        thread = threading.Thread(target=holder)
        thread.start()
        self.assertTrue(taken.wait(30))
        child, write_end = fork_a_child_until_closed()
        try:
            release.set()
            thread.join(30)
            with mock.patch.object(ipn_receiver, "LOCK_TIMEOUT_SECONDS", 1):
                with ipn_receiver.StoreLock(self.data_dir):             # StoreBusy if the child held it
                    self.assertEqual(list(ipn_receiver.StoreLock.files.values()), [mock.ANY])
        finally:
            os.close(write_end)
            os.waitpid(child, 0)

    @unittest.skipUnless(hasattr(os, "register_at_fork"), "Python 3.6 has no os.register_at_fork: there a child "
                         "forked while another thread waits for the store's lock keeps it")
    def test_a_child_forked_while_another_thread_waits_for_the_lock_does_not_keep_it(self):
        # The 44th review: the waiting thread took the lock on a descriptor the child had a copy of,
        # which no one closed: the store stayed locked while the child lived (every call 503, and
        # outcomes not recorded, so handlers ran again).
        taken, release, waiting = threading.Event(), threading.Event(), threading.Event()

        def holder():
            with ipn_receiver.StoreLock(self.data_dir):
                taken.set()
                release.wait(30)

        def waiter():
            waiting.set()
            with ipn_receiver.StoreLock(self.data_dir):
                pass
        first = threading.Thread(target=holder)
        first.start()
        self.assertTrue(taken.wait(30))
        second = threading.Thread(target=waiter)
        second.start()
        self.assertTrue(waiting.wait(30))
        lock_file, deadline = os.path.join(self.data_dir, ".lock"), time.monotonic() + 30

        def descriptors_on_the_lock_file():
            found = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    found += os.readlink(os.path.join("/proc/self/fd", fd)) == lock_file
                except OSError:
                    pass
            return found
        while descriptors_on_the_lock_file() < 2 and time.monotonic() < deadline:
            time.sleep(0.001)                   # until the waiter's descriptor is open
        self.assertEqual(descriptors_on_the_lock_file(), 2)
        child, write_end = fork_a_child_until_closed()
        try:
            release.set()
            first.join(30)
            second.join(30)
            with mock.patch.object(ipn_receiver, "LOCK_TIMEOUT_SECONDS", 1):
                with ipn_receiver.StoreLock(self.data_dir):             # StoreBusy if the child held it
                    self.assertEqual(len(ipn_receiver.StoreLock.files), 1)
        finally:
            os.close(write_end)
            os.waitpid(child, 0)

    def test_a_repair_while_the_handler_runs(self):
        import contextlib
        import io

        def grant(notification):
            with contextlib.redirect_stdout(io.StringIO()):
                self.assertEqual(ipn_receiver.main(["repair", "--force"]), 0)   # the store is set aside
            return {"username": "jane"}
        self.handle("on_payment", grant)
        answer = post(payment())
        self.assertEqual((answer.status, answer.body), (200, "OK\nusername: jane"))
        row = self.rows()[0]                                # the live store holds it as done
        self.assertEqual((row["duplicate_key"], row["status"], row["answer"]),
                         ("digistore24:on_payment:3999938", "done", "OK\nusername: jane"))
        self.assertEqual(post(payment()).body, "OK\nusername: jane")

    def test_the_store_deleted_while_the_handler_runs_gets_no_ok_and_no_new_store(self):
        # Every notification handled before is gone with it: a new store, made to hold this
        # outcome, would let their copies run again. No OK either: the outcome is not held.
        def grant(notification):
            ipn_receiver.close_store()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(os.path.join(self.data_dir, "events.sqlite3" + suffix)):
                    os.remove(os.path.join(self.data_dir, "events.sqlite3" + suffix))
            return {"username": "jane"}
        self.handle("on_payment", grant)
        self.assertEqual(post(payment()).body, ipn_receiver.OUTCOME_NOT_STORED % (1, "did its work"))
        store = os.path.join(self.data_dir, "events.sqlite3")
        self.assertFalse(os.path.exists(store))
        self.assertIn(ipn_receiver.STORE_GONE % store, self.log_text())

    def move_the_store(self, to):
        ipn_receiver.close_store()
        os.makedirs(to, 0o700, exist_ok=True)
        for name in os.listdir(self.data_dir):
            if name.startswith("events.sqlite3"):
                os.replace(os.path.join(self.data_dir, name), os.path.join(to, name))

    def test_the_store_moved_to_a_new_data_dir_while_the_handler_runs_gets_the_outcome(self):
        # The README's "move the store along", done while a handler runs: the outcome follows the
        # settings, into the store that holds the claim, and none is made in the folder before.
        moved = os.path.join(self.data_dir, "new")

        def grant(notification):
            self.move_the_store(moved)
            ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=ISN_KEY, DATA_DIR=moved)
            return {"username": "jane"}
        self.handle("on_payment", grant)
        self.assertEqual(post(payment()).body, "OK\nusername: jane")
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "events.sqlite3")))
        self.data_dir = moved
        self.assertEqual([(row["status"], row["answer"]) for row in self.rows()], [("done", "OK\nusername: jane")])

    def test_no_ok_where_the_store_went_away_with_the_data_dir_of_the_claim(self):
        # Moved away, and the settings name a folder with no store: the outcome is nowhere the next
        # copy will look, so it is not OK (the sender retries), and no store is made for it.
        elsewhere, empty = os.path.join(self.data_dir, "elsewhere"), os.path.join(self.data_dir, "empty")

        def grant(notification):
            self.move_the_store(elsewhere)
            os.mkdir(empty, 0o700)
            ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=ISN_KEY, DATA_DIR=empty)
            return {"username": "jane"}
        self.handle("on_payment", grant)
        answer = post(payment())
        self.data_dir = empty                   # (where the log went on)
        self.assertEqual((answer.status, answer.body), (503, ipn_receiver.OUTCOME_NOT_STORED % (1, "did its work")))
        self.assertEqual([name for name in os.listdir(empty) if name.startswith("events")], [])
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(empty), "events.sqlite3")))
        self.assertIn("the event store %s is gone (moved or deleted while a handler ran); the handler's outcome is not "
                      "recorded elsewhere" % os.path.join(empty, "events.sqlite3"), self.log_text())

    def test_the_store_copied_to_a_new_data_dir_while_the_handler_runs_gets_the_outcome_too(self):
        # Copied, not moved: the store the settings name now is the one the sender's next copy
        # reaches. Left "processing" there, the handler would run again after PROCESSING_TIMEOUT.
        copied, ran = os.path.join(self.data_dir, "copied"), []

        def grant(notification):
            ran.append(notification.id)
            ipn_receiver.close_store()
            os.mkdir(copied, 0o700)
            for name in os.listdir(self.data_dir):
                if name.startswith("events.sqlite3"):
                    shutil.copy(os.path.join(self.data_dir, name), copied)
            ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=ISN_KEY, DATA_DIR=copied)
            return {"username": "jane"}
        self.handle("on_payment", grant)
        self.assertEqual(post(payment()).body, "OK\nusername: jane")
        for folder in (self.data_dir, copied):          # the store of the claim, and the one in use now
            self.data_dir = folder
            self.assertEqual([(row["status"], row["answer"]) for row in self.rows()], [("done", "OK\nusername: jane")])
        self.assertEqual((post(payment()).body, ran), ("OK\nusername: jane", [1]))

    def test_the_data_folder_deleted_while_the_handler_runs_is_made_anew_with_the_outcome(self):
        def delete_the_data_folder():
            ipn_receiver.close_store()
            shutil.rmtree(self.data_dir)
        self.assertGrantedWhile(delete_the_data_folder)
        self.assertEqual(os.stat(self.data_dir).st_mode & 0o777, 0o700)

    def test_settings_naming_another_folder_leave_the_outcome_in_the_store_of_the_claim(self):
        # config.ini missing for a moment while it is uploaded: the settings name the default
        # folder. The store of the claim is still there, and the outcome goes into it.
        default = os.path.join(self.data_dir, "default")

        def grant(notification):
            ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=ISN_KEY, DATA_DIR=default)
            return {"username": "jane"}
        self.handle("on_payment", grant)
        self.assertEqual(post(payment()).body, "OK\nusername: jane")
        self.assertEqual([row["status"] for row in self.rows()], ["done"])
        self.assertFalse(os.path.exists(os.path.join(default, "events.sqlite3")))

    def assertGrantedWhile(self, meanwhile):
        """A handler that grants access data while meanwhile() happens is answered OK, held as done."""
        def grant(notification):
            meanwhile()
            return {"username": "jane"}
        self.handle("on_payment", grant)
        self.assertEqual(post(payment()).body, "OK\nusername: jane")
        self.assertEqual([row["status"] for row in self.rows()], ["done"])

    def patched_from_now_on(self, target, name, **how):
        patcher = mock.patch.object(target, name, **how)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_an_outcome_goes_where_its_claim_is_while_config_ini_is_half_uploaded(self):
        self.assertGrantedWhile(lambda: self.patched_from_now_on(
            ipn_receiver, "settings", side_effect=ipn_receiver.ConfigError("cut short")))

    def test_an_outcome_is_recorded_though_the_data_folder_became_everyones(self):
        # A vendor's "chmod 777 to fix it" while a handler runs: its outcome still goes into the
        # store that holds its claim (else it would run again); new calls are refused from then.
        self.addCleanup(os.chmod, self.data_dir, 0o700)
        self.assertGrantedWhile(lambda: os.chmod(self.data_dir, 0o777))
        self.assertEqual(post(payment(transaction_id="another")).status, 503)

    def test_an_outcome_is_recorded_though_the_script_was_renamed(self):
        # Renamed for a moment, as "move the store along" says, or replaced by an upload.
        self.assertGrantedWhile(lambda: self.patched_from_now_on(
            ipn_receiver, "__file__", new=os.path.join(self.data_dir, "gone.py")))

    def test_an_outcome_that_cannot_be_stored_gets_no_ok(self):
        self.handle("on_payment", lambda notification: {"username": "jane"})
        failure = sqlite3.OperationalError("database or disk is full")
        with mock.patch.object(ipn_receiver, "record_outcome", side_effect=failure):
            answer = post(payment())
        self.assertEqual((answer.status, answer.body), (503, ipn_receiver.OUTCOME_NOT_STORED % (1, "did its work")))
        self.assertTrue(answer.body.startswith("ERROR: the handler of notification #1 did its work, but"))
        self.assertEqual(self.rows()[0]["status"], "processing")
        self.assertLogged("WARNING", "POST -> 503, digistore24 on_payment order A1B2C3D4 txn 3999938: handler ran, "
                                     "but its outcome could not be stored")
        # One that failed is not said to have done its work: recorded done by hand on that word,
        # the sale would never be handled (the 37th review).
        self.handle("on_payment", lambda notification: 1 / 0)
        with mock.patch.object(ipn_receiver, "record_outcome", side_effect=failure):
            answer = post(payment("2"))
        self.assertEqual((answer.status, answer.body), (503, ipn_receiver.OUTCOME_NOT_STORED % (
            2, "failed (ZeroDivisionError)")))
        self.assertTrue(answer.body.startswith("ERROR: the handler of notification #2 failed (ZeroDivisionError), but "
                                               "the receiver could not record that"))

    def test_the_lock_is_let_go_though_another_process_has_a_copy_of_its_descriptor(self):
        # A process forked while a thread held the lock (a handler's, under a threaded server, on
        # Python 3.6, which has no way to close the copy there) kept it for as long as it lived:
        # every call 503, and the forking call's outcome unrecorded (the 68th review).
        import fcntl
        with ipn_receiver.StoreLock(self.data_dir) as lock:
            holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                                      pass_fds=[lock.fd])
        try:
            probe = os.open(os.path.join(self.data_dir, ".lock"), os.O_RDWR)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)      # BlockingIOError while held
            finally:
                os.close(probe)
        finally:
            holder.stdin.close()
            holder.wait(30)

    def test_a_lock_held_a_moment_is_waited_for(self):
        import fcntl
        post(payment("1"))
        holder = os.open(os.path.join(self.data_dir, ".lock"), os.O_RDWR)
        self.addCleanup(os.close, holder)
        fcntl.flock(holder, fcntl.LOCK_EX)
        pauses = []
        real_sleep = time.sleep

        def sleep(seconds):                                 # the third pause: the holder lets go
            pauses.append(seconds)
            if len(pauses) == 3:
                fcntl.flock(holder, fcntl.LOCK_UN)
            real_sleep(seconds)
        with mock.patch.object(ipn_receiver.time, "sleep", sleep):
            self.assertEqual(post(payment("2")).body, "OK")
        self.assertEqual(len(pauses), 3)
        self.assertEqual(pauses[0], 0.0001)                  # a call holds it a moment: try again soon
        self.assertLessEqual(max(pauses), 0.001)             # (on a loaded machine 50 ms may pass by)

    def test_a_waiter_for_a_lock_held_long_tries_less_often(self):
        # Whoever holds the lock 50 ms is doing more than a call does (a salvage, or it is stuck):
        # a try every millisecond then, not ten, and 503 after LOCK_TIMEOUT_SECONDS.
        import fcntl
        post(payment("1"))
        holder = os.open(os.path.join(self.data_dir, ".lock"), os.O_RDWR)
        self.addCleanup(os.close, holder)
        fcntl.flock(holder, fcntl.LOCK_EX)
        clock = [1000.0]
        pauses = []

        def sleep(seconds):
            pauses.append(seconds)
            clock[0] += 0.02                                 # each pause, as if 20 ms went by

        waiter = os.open(os.path.join(self.data_dir, ".lock"), os.O_RDWR)
        self.addCleanup(os.close, waiter)
        with mock.patch.object(ipn_receiver.time, "sleep", sleep), \
                mock.patch.object(ipn_receiver.time, "monotonic", lambda: clock[0]):
            with self.assertRaises(ipn_receiver.StoreBusy):
                ipn_receiver.lock_within(waiter, 0.11)
        self.assertEqual(pauses, [0.0001, 0.0001, 0.0001, 0.001, 0.001, 0.001])   # 0, 20, 40 ms; 60, 80, 100 ms

    def test_a_lock_held_too_long_gets_503_not_a_wait_for_ever(self):
        import fcntl
        post(payment("1"))
        holder = os.open(os.path.join(self.data_dir, ".lock"), os.O_RDWR)
        self.addCleanup(os.close, holder)
        fcntl.flock(holder, fcntl.LOCK_EX)                  # a frozen process holds the lock
        answers = []
        with mock.patch.object(ipn_receiver, "LOCK_TIMEOUT_SECONDS", 0.3):
            caller = threading.Thread(target=lambda: answers.append(post(payment("2"))), daemon=True)
            caller.start()
            caller.join(20)
        fcntl.flock(holder, fcntl.LOCK_UN)
        self.assertFalse(caller.is_alive(), "the call waited for the lock without end")
        self.assertEqual((answers[0].status, answers[0].body), (503, ipn_receiver.STORE_BUSY))
        self.assertLogged("ERROR", "the store lock was held by another process for more than 0 s; if this repeats, "
                                   "look for a stuck process")
        self.assertEqual(post(payment("2")).body, "OK")       # the sender's retry, once it is free


def pid_of_a_process_gone():
    """The id of a process that has ended (and been waited for)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def integrity(path):
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def damage_a_page_in_the_middle(path):
    """Damage a page of the store's table such that reading it all fails, and its largest id
    can still be read."""
    size, page = os.path.getsize(path), 4096
    with open(path, "rb") as file:
        original = file.read()
    middle = size // page // 2
    for number in sorted(range(2, size // page), key=lambda number: abs(number - middle)):
        damaged = bytearray(original)
        damaged[number * page:number * page + page] = b"\xff" * page
        with open(path, "wb") as file:
            file.write(damaged)
        connection = sqlite3.connect(path)
        try:
            largest = connection.execute("SELECT max(id) FROM notifications").fetchone()[0]
            try:
                connection.execute("SELECT * FROM notifications").fetchall()
            except sqlite3.DatabaseError:
                return largest
        except sqlite3.DatabaseError:
            pass
        finally:
            connection.close()
    raise AssertionError("no page whose damage stops a scan and leaves max(id) readable")


def damage_where_inserts_go(path):
    """Damage the page of the store that new rows are written to, such that the row count still
    works. Returns the duplicate keys that can still be read, row by row."""
    size, page = os.path.getsize(path), 4096
    with open(path, "rb") as file:
        original = file.read()
    for number in range(size // page - 1, 0, -1):           # from the last page back
        damaged = bytearray(original)
        damaged[number * page + 8:number * page + page] = b"\xff" * (page - 8)
        with open(path, "wb") as file:
            file.write(damaged)
        connection, found = sqlite3.connect(path), False
        try:
            connection.execute("SELECT count(*) FROM notifications").fetchone()
            try:
                connection.execute("INSERT INTO notifications (received_at, provider, event, duplicate_key, "
                                   "is_test, fields, status, attempts, deliveries, updated_at) VALUES "
                                   "(0, 'x', 'x', 'probe', 0, '{}', 'done', 0, 0, 0)")
                connection.rollback()
            except sqlite3.DatabaseError:
                found = True
        except sqlite3.DatabaseError:
            pass
        finally:
            connection.close()
        if found:
            return readable_keys(path)
    raise AssertionError("no page whose damage stops inserts and leaves the count readable")


class Protection(ReceiverTestCase):
    def test_data_folder_is_private_and_denies_the_web(self):
        folder = os.path.join(self.data_dir, "new")
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=folder)
        post(payment())
        self.assertEqual(os.stat(folder).st_mode & 0o777, 0o700)
        with open(os.path.join(folder, ".htaccess")) as file:
            htaccess = file.read()
        self.assertIn("Require all denied", htaccess)            # Apache 2.4
        self.assertIn("Deny from all", htaccess)                 # Apache 2.2
        for name in os.listdir(folder):
            if name != ".htaccess":
                self.assertEqual(os.stat(os.path.join(folder, name)).st_mode & 0o077, 0, name)

    def test_a_missing_htaccess_is_put_back(self):
        post(payment("1"))
        os.remove(os.path.join(self.data_dir, ".htaccess"))
        ipn_receiver.close_store()
        post(payment("2"))
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, ".htaccess")))

    def test_an_htaccess_of_another_in_the_data_folder_is_left_alone_and_nothing_stored_there(self):
        # DATA_DIR naming a folder of the site (public_html/wp-content, say): its .htaccess holds
        # the site's rules. Replaced by one that denies all, the site would answer 403.
        htaccess = os.path.join(self.data_dir, ".htaccess")
        rules = b"RewriteEngine On\nRewriteRule ^index\\.php$ - [L]\n"
        with open(htaccess, "wb") as file:
            file.write(rules)
        answer = post(payment())
        self.assertEqual((answer.status, answer.body), (503, STORAGE_ERROR))
        with open(htaccess, "rb") as file:
            self.assertEqual(file.read(), rules)
        self.assertEqual(sorted(os.listdir(self.data_dir)), [".htaccess"])
        self.assertFalse(ipn_receiver.is_anothers(os.path.join(self.data_dir, "none")))
        with mock.patch.object(ipn_receiver.log, "to_stderr", True), \
                contextlib.redirect_stderr(io.StringIO()) as errors:
            ipn_receiver.log.reset()
            post(payment())
        self.assertIn("the data folder %s holds what the receiver did not write (.htaccess), and no .htaccess that "
                      "denies the web: set DATA_DIR to a folder of its own, outside the web root (a site's files are "
                      "left alone)" % self.data_dir, errors.getvalue())

    def test_a_folder_of_the_site_with_no_htaccess_is_not_taken_off_the_web(self):
        # DATA_DIR naming a folder of images: an .htaccess written there would deny them all, and
        # so would a chmod 700 (the web server reads them as another user).
        folder = os.path.join(self.data_dir, "uploads")
        os.makedirs(folder)
        os.chmod(folder, 0o755)
        with open(os.path.join(folder, "logo.png"), "wb") as file:
            file.write(b"\x89PNG")
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=folder)
        answer = post(payment())
        self.assertEqual((answer.status, answer.body), (503, STORAGE_ERROR))
        self.assertEqual(os.listdir(folder), ["logo.png"])
        self.assertEqual(os.stat(folder).st_mode & 0o777, 0o755)
        self.assertIn("(logo.png)", ipn_receiver.others_files_problem(folder))
        with open(os.path.join(folder, "n" * 201), "w"):                   # names cut at 200 characters
            pass
        self.assertIn("(logo.png, %s...(211 characters)), and" % ("n" * 190), ipn_receiver.others_files_problem(folder))
        os.remove(os.path.join(folder, "n" * 201))
        os.rename(os.path.join(folder, "logo.png"), os.path.join(folder, "ipn_receiver.py"))  # a script is a site's
        self.assertIn("(ipn_receiver.py)", ipn_receiver.others_files_problem(folder))
        os.rename(os.path.join(folder, "ipn_receiver.py"), os.path.join(folder, "logo.png"))
        # The receiver's own files, left by an earlier call or a damaged store set aside, are not another's.
        os.remove(os.path.join(folder, "logo.png"))
        for name in ("events.sqlite3.damaged-20261206", "ipn_receiver.log.1", ".lock", "config.ini"):
            open(os.path.join(folder, name), "w").close()
        with contextlib.redirect_stderr(io.StringIO()) as errors:
            self.assertEqual(post(payment()).body, "OK")
        self.assertEqual(errors.getvalue(), "ipn_receiver: the data folder %s had mode 755, which let other users in; "
                                            "set back to 700\n" % folder)
        self.assertTrue(ipn_receiver.denies_the_web(os.path.join(folder, ".htaccess")))

    def test_a_file_of_the_vendors_beside_the_store_is_named_to_be_moved_out(self):
        # Its .htaccess lost in a move by a client that skips dot-files, and a copy of the store
        # put beside it: "set DATA_DIR to a folder of its own" would start an empty store, in which
        # every handler would run again (the 36th review).
        post(payment("1"))
        os.remove(os.path.join(self.data_dir, ".htaccess"))
        shutil.copy(os.path.join(self.data_dir, "events.sqlite3"), os.path.join(self.data_dir, "backup-of-events.sqlite3"))
        ipn_receiver.close_store()
        self.assertEqual(post(payment("2")).body, STORAGE_ERROR)
        self.assertIn("the data folder %s holds what the receiver did not write (backup-of-events.sqlite3), and no "
                      ".htaccess that denies the web: move them out of it; the receiver then writes its .htaccess"
                      % self.data_dir, self.log_text())
        os.remove(os.path.join(self.data_dir, "backup-of-events.sqlite3"))
        self.assertEqual(post(payment("2")).body, "OK")
        self.assertEqual(len(self.rows()), 2)
        # The same where the store is gone from it: its lock file says a store was made there.
        ipn_receiver.close_store()
        ipn_receiver.remove_store_files(os.path.join(self.data_dir, "events.sqlite3"))
        open(os.path.join(self.data_dir, "notes.txt"), "w").close()
        self.assertIn("(notes.txt), and no .htaccess that denies the web: move them out of it",
                      ipn_receiver.others_files_problem(self.data_dir))

    def test_an_htaccess_of_another_that_denies_only_some_files_is_not_taken_for_one_that_denies_all(self):
        # DATA_DIR naming a site's uploads folder, whose .htaccess denies the scripts only: the store
        # and the log beside it would be served, every buyer's data in them.
        htaccess = os.path.join(self.data_dir, ".htaccess")

        def written(rules):
            with open(htaccess, "w") as file:
                file.write(rules)
            return htaccess
        for rules in ('<FilesMatch "\\.(php|py)$">\n    Require all denied\n</FilesMatch>\n',
                      "<Files wp-config.php>\nRequire all denied\n</Files>\n",
                      "# Require all denied, removed: we need the files\nOptions +Indexes\n",
                      "Require all denied\n<Files *.jpg>\nRequire all granted\n</Files>\n",
                      "Deny from all\n<Files *.jpg>\nAllow from all\n</Files>\n",
                      "<Files x>\n<IfModule a>\n</IfModule>\nRequire all denied\n</Files>\n",
                      "<Files x>\n<IfModule a>\n<IfModule b>\n</IfModule>\n</IfModule>\nRequire all denied\n</Files>\n",
                      "Require all denied for the .php files\n",
                      # What Apache 2.4 skips, or what lets someone in again:
                      "<IfModule !mod_authz_core.c>\n  Order deny,allow\n  Deny from all\n</IfModule>\n",
                      "<IfModule mod_access_compat.c>\n  Require all denied\n</IfModule>\n",
                      "Require all denied\nRequire env internal\n", "AuthMerging Or\nRequire all denied\n",
                      "Order allow,deny\nAllow from 127.0.0.1\nDeny from all\n",
                      "Require all denied\nRequire all \\\ngranted\n", "\n\n",
                      # Lines as Apache reads them: a comment goes on past a backslash, and only a line
                      # feed ends a line.
                      "# Nothing here may be served \\\nRequire all denied\n", "# note\x0cRequire all denied\n",
                      "# note\x0bRequire all denied\n", "# note\u0085Require all denied\n",
                      "# Nothing here may be served \\\r\nRequire all denied\r\n",
                      "# note\u2028Require all denied\n",
                      # Not plain (Apache may deny all with some, and serve with others): not trusted.
                      "<Files x>\nRequire all denied\n</Files>\nRequire all denied\n",
                      "<Files x>\n<IfModule a>\n<IfModule b>\n</IfModule>\n</IfModule>\n</Files>\nRequire all denied\n",
                      "Require all \\\n  denied\n", "Require all \\\r\n  denied\r\n",
                      "# keep out \\\\\n\nRequire all denied\n",     # (Apache carries the comment on twice)
                      "Require all denied\nErrorDocument 403 /ipn_data/events.sqlite3\n",
                      "\ufeff<IfModule mod_nonexistent.c>\nRequire all denied\n</IfModule>\n",
                      "Require all deniedX\n",
                      # A deny inside <IfModule !mod_authz_core.c>, however deep, is one Apache 2.4 skips.
                      "<IfModule !mod_authz_core.c>\n<IfModule mod_authz_core.c>\n</IfModule>\nRequire all denied\n"
                      "</IfModule>\n",
                      "<IfModule mod_authz_core.c>\n<IfModule !mod_authz_core.c>\n<IfModule mod_authz_core.c>\n"
                      "</IfModule>\nRequire all denied\n</IfModule>\n</IfModule>\n",
                      "Order deny,allow\nDeny from all\nSatisfy any\n"):
            with self.subTest(rules=rules):
                self.assertFalse(ipn_receiver.denies_the_web(written(rules)))
                answer = post(payment())
                self.assertEqual((answer.status, answer.body), (503, STORAGE_ERROR))
                self.assertEqual(sorted(os.listdir(self.data_dir)), [".htaccess"])
        # One that denies the whole folder is used as it is, and left alone.
        for rules in ("Require all denied\n", "  require ALL denied  \n", "Order deny,allow\nDeny from all\n",
                      "# Keep out\n\n\tRequire all denied\n\n", "\ufeffRequire all denied\n",
                      '<IfModule "mod_authz_core.c">\nRequire all denied\n</IfModule>\n',
                      "\tRequire\tall\tdenied\r\n", ipn_receiver._HTACCESS.replace("\n", "\r\n"),
                      "<IfModule authz_core_module>\nRequire all denied\n</IfModule>\n",
                      "<IfModule !mod_authz_core.c>\nDeny from all\n</IfModule>\nRequire all denied\n",
                      "<IfModule mod_authz_core.c>\nRequire all denied\n</IfModule>\n<IfModule !mod_authz_core.c>\n"
                      "Deny from all\n</IfModule>\n",
                      "<IfModule mod_authz_core.c>\n  Require all denied\n</IfModule>\nOptions -Indexes\n"):
            with self.subTest(rules=rules):
                self.assertTrue(ipn_receiver.denies_the_web(written(rules)))
        self.assertEqual(post(payment()).body, "OK")
        with open(htaccess) as file:
            self.assertEqual(file.read(), rules)
        # One that cannot be read denies nothing that can be told.
        with mock.patch("builtins.open", side_effect=PermissionError(13, "Permission denied")):
            self.assertFalse(ipn_receiver.denies_the_web(htaccess))
        # Not a file by that name: no deny, and another's (a FIFO would block an open for ever).
        os.remove(htaccess)
        for make, remove in ((os.mkdir, os.rmdir), (os.mkfifo, os.remove)):
            make(htaccess)
            self.assertFalse(ipn_receiver.denies_the_web(htaccess))
            self.assertTrue(ipn_receiver.is_anothers(htaccess))
            remove(htaccess)
        # The receiver's own, saved with CR line ends: one comment line to Apache, written anew.
        with open(htaccess, "w", newline="") as file:
            file.write(ipn_receiver._HTACCESS.replace("\n", "\r"))
        self.assertFalse(ipn_receiver.denies_the_web(htaccess))
        ipn_receiver.ensure_data_dir(self.data_dir)
        with open(htaccess, newline="") as file:
            self.assertEqual(file.read(), ipn_receiver._HTACCESS)

    def test_an_htaccess_left_empty_by_a_full_disk_is_written_again(self):
        # A full disk (a web space over its quota) let the file be made but not written: an empty
        # .htaccess denies nothing, and the store and the log would be served.
        htaccess = os.path.join(self.data_dir, ".htaccess")
        open(htaccess, "w").close()
        self.assertEqual(post(payment("1")).body, "OK")
        with open(htaccess) as file:
            self.assertIn("Require all denied", file.read())
        # A write that fails leaves no .htaccess at all (the next call writes it), never an empty one.
        os.remove(htaccess)
        with mock.patch.object(ipn_receiver.os, "replace", side_effect=OSError(28, "No space left on device")):
            with self.assertRaises(OSError):
                ipn_receiver.ensure_data_dir(self.data_dir)
        self.assertEqual([name for name in os.listdir(self.data_dir) if name.startswith(".htaccess")], [])
        ipn_receiver.ensure_data_dir(self.data_dir)
        self.assertTrue(ipn_receiver.denies_the_web(htaccess))

    def test_threads_that_write_the_htaccess_at_once_all_succeed(self):
        # The threads of a WSGI server reach a fresh data folder at once (its first calls, or after
        # the .htaccess was removed): each writes the file, and none may fail the call with a 503.
        for trial in range(20):
            folder = os.path.join(self.data_dir, "fresh%d" % trial)
            start, failures = threading.Barrier(8), []

            def write():
                start.wait()
                try:
                    ipn_receiver.ensure_data_dir(folder)
                except OSError as error:
                    failures.append(error)

            threads = [threading.Thread(target=write) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            self.assertEqual(failures, [])
            self.assertTrue(ipn_receiver.denies_the_web(os.path.join(folder, ".htaccess")))
            self.assertEqual(os.listdir(folder), [".htaccess"])             # no partial file left

    def test_the_htaccess_is_readable_by_the_web_server_and_nothing_more(self):
        # Apache reads it as its own user: 0644, not executable, and not writable by others.
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        folder = os.path.join(self.data_dir, "fresh")
        ipn_receiver.ensure_data_dir(folder)
        self.assertEqual(os.stat(os.path.join(folder, ".htaccess")).st_mode & 0o777, 0o644)
        self.assertEqual(os.stat(folder).st_mode & 0o777, 0o700)


if __name__ == "__main__":
    import unittest
    unittest.main()
