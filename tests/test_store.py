"""The event store: every verified notification recorded durably before OK, its handler run once
per distinct notification, retries answered like the original, failures retried."""

import json
import os
import sqlite3
import time

from helpers import (ISN_KEY, PASSPHRASE, ReceiverTestCase, fixture_fields, ipn_receiver, payment, post,
                     promopit_sale, read_only_folder, signed)


class Recording(ReceiverTestCase):
    def test_the_store_is_created_on_first_use_in_wal_mode_with_a_schema_version(self):
        path = os.path.join(self.data_dir, "events.sqlite3")
        self.assertFalse(os.path.exists(path))
        post(payment())
        connection = sqlite3.connect(path)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(connection.execute("PRAGMA user_version").fetchone()[0], ipn_receiver.SCHEMA_VERSION)
        connection.close()

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
        expected_fields = dict(sent)
        del expected_fields["sha_sign"]
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
        self.handle("on_payment", lambda n: states.append(self.rows()[0]["status"]))
        self.assertEqual(post(payment()).body, "OK")
        self.assertEqual(states, ["processing"])
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


class ExactlyOnce(ReceiverTestCase):
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
        self.assertEqual((first.status, first.body), (500, "ERROR: handler failed"))
        row = self.rows()[0]
        self.assertEqual((row["status"], row["attempts"]), ("failed", 1))
        self.assertEqual(row["last_error"], "ConnectionError: mail server unreachable\\nsecond line")
        second = post(payment())
        self.assertEqual((second.status, second.body), (200, "OK\nusername: ok"))
        row = self.rows()[0]
        self.assertEqual((row["status"], row["attempts"], row["last_error"], row["deliveries"]), ("done", 2, None, 2))

    def test_a_copy_arriving_while_the_first_is_processed_gets_503_and_is_not_dispatched(self):
        answers = []

        def reentrant(notification):
            answers.append(post(payment()))          # the sender's retry, while we are still busy
        self.handle("on_payment", reentrant)
        self.assertEqual(post(payment()).body, "OK")
        self.assertEqual([(a.status, a.body) for a in answers], [(503, "ERROR: already being processed")])
        self.assertEqual(self.rows()[0]["attempts"], 1)

    def test_an_abandoned_claim_is_taken_over_after_the_timeout(self):
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.data_dir, PROCESSING_TIMEOUT=60)
        seen = []
        self.handle("on_payment", seen.append)
        connection = ipn_receiver.open_store(ipn_receiver.settings())
        notification = ipn_receiver.Notification("digistore24", "on_payment", dict(payment()))
        del notification.fields["sha_sign"]
        self.assertEqual(ipn_receiver.claim_notification(connection, ipn_receiver.settings(), notification, True)[0],
                         "run")
        # The process that claimed it died. Within the timeout, copies wait...
        self.assertEqual(post(payment()).status, 503)
        # ...after it, the next copy takes the claim over and runs the handler.
        connection.execute("UPDATE notifications SET claimed_at = claimed_at - 61")
        self.assertEqual(post(payment()).body, "OK")
        self.assertEqual(len(seen), 1)
        row = self.rows()[0]
        self.assertEqual((row["status"], row["attempts"], row["deliveries"]), ("done", 2, 3))

    def test_a_run_whose_claim_was_taken_over_does_not_overwrite_the_new_one(self):
        def slow(notification):
            # Meanwhile another process took the claim over (after PROCESSING_TIMEOUT).
            connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
            connection.execute("UPDATE notifications SET claim = 'other-process'")
            connection.commit()
            connection.close()
        self.handle("on_payment", slow)
        self.assertEqual(post(payment()).body, "OK")
        row = self.rows()[0]
        self.assertEqual((row["status"], row["claim"]), ("processing", "other-process"))
        self.assertIn("raise PROCESSING_TIMEOUT", self.log_text())


class StorageProblems(ReceiverTestCase):
    def test_a_read_only_data_folder_gives_503_and_no_ok(self):
        called = []
        self.handle("on_payment", called.append)
        os.rmdir(self.data_dir)
        os.makedirs(self.data_dir)
        with read_only_folder(self.data_dir):
            ipn_receiver.log.reset()
            answer = post(payment())
        self.assertEqual((answer.status, answer.body), (503, "ERROR: storage unavailable"))
        self.assertEqual(called, [])

    def test_a_read_only_store_gives_503_and_no_ok(self):
        post(payment("1"))
        ipn_receiver.close_store()
        with read_only_folder(self.data_dir):
            ipn_receiver.log.reset()
            answer = post(payment("2"))
        self.assertEqual((answer.status, answer.body), (503, "ERROR: storage unavailable"))
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

    def test_a_deleted_store_is_recreated_and_the_old_connection_not_used(self):
        post(payment("1"))
        for suffix in ("", "-wal", "-shm"):
            os.remove(os.path.join(self.data_dir, "events.sqlite3" + suffix))
        self.assertEqual(post(payment("2")).body, "OK")
        self.assertEqual(len(self.rows()), 1)

    def test_a_deleted_store_with_its_journal_left_behind_starts_clean(self):
        post(payment("1"))
        ipn_receiver.close_store()
        os.remove(os.path.join(self.data_dir, "events.sqlite3"))   # the -wal file stays
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
        self.assertEqual(post(payment("2")).body, "ERROR: storage unavailable")
        self.assertIn("newer ipn_receiver", self.log_text())

    def test_a_damaged_store_is_set_aside_and_its_readable_rows_kept(self):
        for number in range(30):
            post(payment(str(number)))
        ipn_receiver.close_store()
        path = os.path.join(self.data_dir, "events.sqlite3")
        connection = sqlite3.connect(path)
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
        with open(path, "r+b") as file:
            file.seek(0)
            file.write(b"this is not a database header")      # the first page is damaged
        answer = post(payment("100"))
        self.assertEqual(answer.body, "OK")
        aside = [name for name in os.listdir(self.data_dir) if ".damaged-" in name]
        self.assertEqual(len(aside), 1)
        connection = sqlite3.connect(path)
        self.assertEqual(connection.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        connection.close()
        self.assertIn("was damaged", self.log_text())


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


if __name__ == "__main__":
    import unittest
    unittest.main()
