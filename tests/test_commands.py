"""The commands a vendor runs on the server: events, show, replay and check."""

import contextlib
import functools
import io
import json
import os
import shutil
import shlex
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import unittest

from unittest import mock

from helpers import (PYTHON, ISN_KEY, PASSPHRASE, REPO, SCRIPT, ReceiverTestCase, cgi_environment, ipn_receiver,
                     parse_cgi_output, payment, post, promopit_sale, read_only_folder, snippet)

WORKER = os.path.join(REPO, "tests", "worker.py")


class CommandTestCase(ReceiverTestCase):
    def command(self, *arguments, script=SCRIPT, **environment):
        values = {key: value for key, value in os.environ.items() if not key.startswith("IPN_")}
        values.update(IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_ISN_KEY=ISN_KEY, IPN_DATA_DIR=self.data_dir)
        values.update(environment)
        done = subprocess.run([PYTHON, script] + list(arguments), env=values, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        return done.returncode, done.stdout.decode(), done.stderr.decode()


class Inspecting(CommandTestCase):
    def test_events_lists_newest_first_and_filters(self):
        post(payment("1"))
        self.handle("on_refund", lambda n: 1 / 0)
        post(payment("2", event="on_refund"))
        post(promopit_sale())
        code, output, _ = self.command("events")
        self.assertEqual(code, 0)
        lines = output.splitlines()
        self.assertIn("status", lines[0])
        self.assertIn("promopit", lines[1])
        self.assertIn("A1B2C3D4/1", lines[3])
        code, output, _ = self.command("events", "--status", "failed")
        self.assertEqual(len(output.splitlines()), 2)
        self.assertIn("on_refund", output)
        code, output, _ = self.command("events", "--event", "sale", "--limit", "1")
        self.assertIn("PP-100234", output)
        code, output, _ = self.command("events", "--status", "processing")
        self.assertIn("no stored notifications match", output)

    def test_show_prints_every_field_and_the_answer(self):
        self.handle("on_payment", lambda n: {"username": "jane"})
        post(payment())
        code, output, _ = self.command("show", "1")
        self.assertEqual(code, 0)
        self.assertIn("fields (114):", output)
        self.assertIn("placeholder_DESCRIPTION", output)
        self.assertIn("answer         OK\n               username: jane", output)
        self.assertNotIn(PASSPHRASE, output)
        self.assertEqual(self.command("show", "99")[0], 1)


    def test_huge_keys_and_ids_do_not_make_huge_output(self):
        # Whoever holds the ISN key may send a key of 100,000 characters and 2,000 other fields:
        # show padded each field to the longest key, 200 MB (the 71st review); events printed the
        # transaction id whole on every row.
        fields = dict(promopit_sale("T" * 100000), **{"k" * 100000: "v"})
        fields.update(("f%d" % number, "x") for number in range(2000))
        self.assertEqual(post(fields).status, 200)
        code, output, _ = self.command("show", "1")
        self.assertEqual(code, 0)
        self.assertIn("\n  %s  v\n" % ("k" * 100000), output)
        self.assertIn("\n  f1999%s  x\n" % (" " * 35), output)
        self.assertLess(len(output), 400000)
        code, output, _ = self.command("events")
        self.assertIn("  %s...(100000 characters)  (test)\n" % ("T" * 60), output)
        self.assertLess(len(output), 500)

    def test_bad_numbers_a_damaged_store_and_a_terminal_without_utf8_get_one_error_line(self):
        post(payment(first_name="J\u00f6rg"))
        for arguments in (("show", "99999999999999999999"), ("events", "--limit", "99999999999999999999"),
                          ("replay", "-1"), ("show", "\u0661"), ("events", "--limit", "0")):
            with self.subTest(arguments=arguments):
                code, output, errors = self.command(*arguments)
                self.assertEqual(code, 2)
                self.assertIn("not a whole number of 1 or more: " + arguments[-1], errors)
                self.assertNotIn("Traceback", errors)
        code, output, errors = self.command("show", "1", PYTHONIOENCODING="ascii")   # as Python 3.6 with no LANG
        self.assertEqual((code, errors.strip().splitlines()),
                         (1, ["ERROR: this terminal cannot show the text; run the command with LANG=C.UTF-8 in front"]))
        ipn_receiver.close_store()
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
        with open(os.path.join(self.data_dir, "events.sqlite3"), "r+b") as file:
            file.seek(4096)
            file.write(b"\x07" * 12)                               # the table's first page
        for arguments in (("events",), ("show", "1"), ("replay", "1", "--done")):
            with self.subTest(arguments=arguments):
                code, output, errors = self.command(*arguments)
                self.assertEqual(code, 1)
                self.assertRegex(errors.strip(), r"^ERROR: the event store cannot be read \(.*\); run "
                                                 r"`python3 ipn_receiver.py check`, and for a damaged store `repair`$")

    def test_show_and_events_print_the_buyers_words_on_one_line_each(self):
        # A buyer chooses name, address and `custom`; Digistore24 signs whatever was entered.
        post(payment(custom="x\nemail          attacker@evil.example\x1b]0;pwned\x07\u2028",
                     event="on_payment\x1b[2J", order_id="A1\rB"))
        code, output, _ = self.command("show", "1")
        self.assertEqual(code, 0)
        self.assertNotIn("\x1b", output)
        self.assertNotIn("\u2028", output)
        self.assertNotIn("\nemail          attacker", output)
        self.assertIn("x\\nemail          attacker@evil.example\\x1b]0;pwned\\x07\\u2028", output)
        code, output, _ = self.command("events")
        self.assertNotIn("\x1b", output)
        self.assertIn("A1\\rB/3999938", output)
        self.assertEqual(len(output.splitlines()), 2)


class Replaying(CommandTestCase):
    def test_replay_runs_a_failed_notification_again_and_records_it(self):
        self.handle("on_payment", lambda n: 1 / 0)
        self.assertEqual(post(payment()).status, 500)
        code, output, _ = self.command("replay", "1")        # the default handler, which logs
        self.assertEqual(code, 0, output)
        self.assertIn("handled as #1", output)
        # Which handler ran, and from which file, said first: in a wrapper deployment replay must
        # run through the wrapper, or it runs this file's placeholder.
        self.assertEqual(output.splitlines()[0], "#1: running on_payment of %s, line %d" % (
            SCRIPT, ipn_receiver.on_payment.__code__.co_firstlineno))
        row = self.rows()[0]
        self.assertEqual((row["status"], row["attempts"], row["last_error"]), ("done", 2, None))
        # A retry of the sender now gets the stored answer.
        self.assertEqual(post(payment()).body, "OK")
        code, output, _ = self.command("replay", "1", "--force", script=WORKER, IPN_TEST_RECORD=os.devnull)
        with open(WORKER, encoding="utf-8") as file:
            line = file.read().split("\n").index("def record(notification):") + 1
        self.assertEqual(output.splitlines()[0], "#1: running record of %s, line %d" % (WORKER, line))

    def test_replay_refuses_a_done_one_unless_forced(self):
        post(payment())
        code, _, errors = self.command("replay", "1")
        self.assertEqual(code, 1)
        self.assertIn("--force", errors)
        code, output, _ = self.command("replay", "1", "--force")
        self.assertEqual(code, 0)
        self.assertEqual(self.rows()[0]["attempts"], 2)

    def test_replay_of_a_failing_handler_records_the_failure(self):
        self.handle("on_payment", lambda n: 1 / 0)
        post(payment())
        record = os.path.join(self.data_dir, "record.txt")
        code, output, _ = self.command("replay", "1", script=WORKER, IPN_TEST_FAIL="1", IPN_TEST_RECORD=record)
        self.assertEqual((code, output.splitlines()[-1]), (1, "ERROR: handler record failed (RuntimeError) for "
                                                              "notification #1; the traceback is in ipn_receiver.log"))
        row = self.rows()[0]
        self.assertEqual((row["status"], row["attempts"], row["last_error"]), ("failed", 2, "RuntimeError: told to fail"))

    def test_a_handlers_print_the_terminal_cannot_show_does_not_fail_it(self):
        # Python 3.6 with no LANG, or any Python under a Latin-1 locale (the 56th review): stdout
        # refused "ö", and the handler failed after its work, to run again on the next copy.
        self.handle("on_payment", lambda n: 1 / 0)
        post(payment())
        record = os.path.join(self.data_dir, "record.txt")
        code, output, errors = self.command("replay", "1", script=WORKER, IPN_TEST_RECORD=record,
                                            IPN_TEST_PRINT="J\u00f6rg \u20ac", PYTHONIOENCODING="ascii")
        self.assertEqual((code, self.rows()[0]["status"]), (0, "done"), output + errors)
        self.assertIn("J\\xf6rg \\u20ac\n", errors)            # (where a print() in a handler goes)

    def test_replay_of_an_unknown_id(self):
        post(payment())
        self.assertEqual(self.command("replay", "7"), (1, "", "ERROR: no notification #7; `events` lists them\n"))


class Interrupted(CommandTestCase):
    """Ctrl+C, a closed pipe: a command ends with a line, not a traceback, and leaves nothing
    half done behind."""

    def environment(self):
        values = {key: value for key, value in os.environ.items() if not key.startswith("IPN_")}
        values.update(IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_ISN_KEY=ISN_KEY, IPN_DATA_DIR=self.data_dir)
        return values

    def test_ctrl_c_a_kill_or_a_closed_terminal_ends_a_command_with_one_line(self):
        for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with self.subTest(signal=stop):
                self.stop_send(stop)

    def stop_send(self, stop):
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        # (As from a terminal: a shell runs a job started in the background with Ctrl+C ignored, and
        # Python then leaves it so. The tests may run as such a job: mutation.py's, say.)
        process = subprocess.Popen([PYTHON, SCRIPT, "send", "on_payment", "--url", "http://127.0.0.1:%d/"
                                    % listener.getsockname()[1]], env=self.environment(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        connection, _ = listener.accept()           # it has started, and waits for an answer that never comes
        self.addCleanup(connection.close)
        process.send_signal(stop)
        output, errors = process.communicate(timeout=60)
        self.assertEqual((process.returncode, errors.decode()), (130, "\nstopped\n"))

    def test_a_closed_pipe_ends_a_command_quietly(self):
        # `events | head -1`: the reader has all it wanted.
        post(payment())
        read, write = os.pipe()
        os.close(read)
        try:
            done = subprocess.run([PYTHON, SCRIPT, "events"], env=self.environment(), stdout=write,
                                  stderr=subprocess.PIPE, timeout=60)
        finally:
            os.close(write)
        self.assertEqual((done.returncode, done.stderr), (1, b""))

    def test_the_calls_send_makes_have_ids_no_sender_gives(self):
        # A call send put into the live store with a real sale's id (8 digits) made the sale its
        # copy: answered with the test's access data, its handler never run (the 65th review).
        for provider, event, name in (("digistore24", "on_payment", "transaction_id"),
                                      ("promopit", "sale", "promopit_txn_id")):
            number = ipn_receiver.example_notification(provider, event)[name].replace("PP-", "")
            self.assertRegex(number, r"^[1-9][0-9]{17}$")

    def test_send_has_no_default_url(self):
        # A default on a local port would send a call signed with the passphrase, or PromoPit's key
        # itself, to whoever listens there: another user of a shared server, say.
        code, output, errors = self.command("send", "sale")
        self.assertEqual(code, 2)
        self.assertIn("the following arguments are required: --url", errors)

    def test_send_sends_no_secret_unencrypted_to_another_machine_unless_told_to(self):
        # PromoPit's key is the whole of its protection, and one signed call is enough to try
        # passphrases offline: over http:// they would cross the network for anyone to read, before
        # a redirect to https:// could say so. The command refuses before it connects.
        for event, secret in (("sale", "the ISN key"), ("on_payment", "a call signed with your passphrase")):
            with self.subTest(event=event):
                code, output, errors = self.command("send", event, "--url", "HTTP://192.0.2.1:9/ipn.py")
                self.assertEqual((code, output), (2, ""))
                self.assertEqual(errors, "ERROR: %s goes unencrypted over the network, where anyone on the way could "
                                         "read it: use https://, or add --allow-http on a network you trust\n" % secret)
        sent = []
        with mock.patch.object(ipn_receiver, "post_form", lambda url, fields: sent.append(url) or (200, "OK")), \
                mock.patch.object(ipn_receiver, "get_start", lambda url: None), contextlib.redirect_stdout(io.StringIO()):
            for url in ("http://localhost:8000/", "http://127.0.0.2/", "http://[::1]:8000/", "https://example.com/"):
                self.assertEqual(ipn_receiver.main(["send", "sale", "--url", url]), 0)
            self.assertEqual(ipn_receiver.main(["send", "sale", "--url", "http://192.0.2.1/", "--allow-http"]), 0)
            for url in ("http://127.example.com/", "http://127.0.0.1.example.com/", "http://10.0.0.1/"):
                with contextlib.redirect_stderr(io.StringIO()):
                    self.assertEqual(ipn_receiver.main(["send", "sale", "--url", url]), 2)
        self.assertEqual(sent, ["http://localhost:8000/", "http://127.0.0.2/", "http://[::1]:8000/",
                                "https://example.com/", "http://192.0.2.1/"])
        # This machine is reached directly, whatever http_proxy says (tests/test_server.py sends so).
        import urllib.request
        for url, direct in (("http://127.0.0.1:8000/", True), ("https://localhost/", True),
                            ("https://example.com/", False)):
            handlers = ipn_receiver.local_without_proxy(url)
            self.assertEqual([(type(handler), handler.proxies) for handler in handlers],
                             [(urllib.request.ProxyHandler, {})] if direct else [], url)

    def test_send_says_what_went_wrong_and_exits_0_only_on_ok(self):
        import urllib.error
        sent = []

        def run(*arguments, answer=(200, "OK")):
            def post_form(url, fields):
                sent.append(fields)
                if isinstance(answer, Exception):
                    raise answer
                return answer
            output, errors = io.StringIO(), io.StringIO()
            with mock.patch.object(ipn_receiver, "post_form", post_form), contextlib.redirect_stdout(output), \
                    mock.patch.object(ipn_receiver, "get_start", lambda url: None), contextlib.redirect_stderr(errors):
                code = ipn_receiver.main(["send"] + list(arguments))
            return code, output.getvalue(), errors.getvalue()
        url = "https://example.com/ipn.py"
        for arguments, error in (
                (("on_payment", "--url", "ftp://example.com/"), "--url must start with http:// or https://, e.g. "
                                                                "https://example.com/ipn/ipn_receiver.py"),
                (("on_refund", "--provider", "promopit", "--url", url), "PromoPit has one event, sale; run: send sale"),
                (("on_payment", "--url", url, "--set", "order_id"), "--set takes key=value, e.g. --set order_id=ABC123"),
                (("on_payment", "--url", url, "--set", "=x"), "--set takes key=value, e.g. --set order_id=ABC123")):
            with self.subTest(arguments=arguments):
                self.assertEqual(run(*arguments), (2, "", "ERROR: %s\n" % error))
        self.assertEqual(sent, [])
        self.assertEqual(run("on_payment", "--url", url, "--set", "custom=a=b", "--set", "order_id=X1"),
                         (0, "HTTP 200\nOK\n", ""))
        self.assertEqual((sent[-1]["custom"], sent[-1]["order_id"]), ("a=b", "X1"))
        self.assertEqual(sent[-1]["sha_sign"], ipn_receiver.digistore24_signature(PASSPHRASE, {
            key: value for key, value in sent[-1].items() if key != "sha_sign"}))
        for answer, printed, code in (((200, "OK\nusername: jane\nline\x1b[2J"), "HTTP 200\nOK\nusername: jane\n"
                                       "line\\x1b[2J\n", 0), ((200, "OKAY"), "HTTP 200\nOKAY\n", 1),
                                      ((500, "ERROR: handler on_payment failed"), "HTTP 500\nERROR: handler on_payment "
                                       "failed\n", 1)):
            self.assertEqual(run("on_payment", "--url", url, answer=answer), (code, printed, ""))
        for failure, reason in ((urllib.error.URLError("connection refused"), "connection refused"),
                                (OSError("timed out"), "timed out")):
            self.assertEqual(run("on_payment", "--url", url, answer=failure),
                             (1, "ERROR: could not reach %s (%s); check the URL and that the server runs\n"
                              % (url, reason), ""))
        # No answer in time is not "could not reach": the handler may be slow (the 48th review).
        for failure in (urllib.error.URLError(socket.timeout("timed out")), socket.timeout("timed out")):
            self.assertEqual(run("on_payment", "--url", url, answer=failure),
                             (1, "ERROR: no answer from %s within 30 s; a slow handler goes on and is recorded "
                              "(`events` shows how it ended), but a sender would take the call as failed and retry "
                              "it\n" % url, ""))

    def test_demo_stopped_with_ctrl_c_leaves_no_folder(self):
        made, make = [], tempfile.mkdtemp

        def mkdtemp(*args, **kwargs):
            made.append(make(*args, **kwargs))
            return made[-1]
        with mock.patch.object(tempfile, "mkdtemp", mkdtemp), mock.patch.object(
                ipn_receiver, "run_demo", side_effect=KeyboardInterrupt), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["demo"]), 130)
        self.assertEqual(len(made), 1)
        self.assertFalse(os.path.exists(made[0]))

    def test_ctrl_c_while_replay_waits_to_record_the_outcome_records_it_first(self):
        # The handler has run: left "processing", its notification would run again once
        # PROCESSING_TIMEOUT has passed, on the sender's next copy.
        self.handle("on_payment", lambda n: 1 / 0)
        post(payment())
        ran, interrupted, write_to_store = [], [], ipn_receiver.write_to_store
        self.addCleanup(os.chmod, self.data_dir, 0o700)
        # (And the data folder opened to every user meanwhile: the outcome goes in all the same.)
        self.handle("on_payment", lambda n: (ran.append(n.id), os.chmod(self.data_dir, 0o777)) and None)

        def interrupted_once(config, write, lock_seconds=None, *outcome):
            if lock_seconds == ipn_receiver.OUTCOME_LOCK_TIMEOUT_SECONDS and not interrupted:
                interrupted.append("Ctrl+C")
                raise KeyboardInterrupt
            return write_to_store(config, write, lock_seconds, *outcome)
        with mock.patch.object(ipn_receiver, "write_to_store", interrupted_once), contextlib.redirect_stdout(
                io.StringIO()):
            self.assertEqual(ipn_receiver.main(["replay", "1"]), 0)
        self.assertEqual((ran, interrupted, self.rows()[0]["status"]), ([1], ["Ctrl+C"], "done"))
        self.assertIn("WARNING [%d] stopped after handler <lambda> ran for #1: recording its outcome first (stopped "
                      "again, it runs again later)\n" % os.getpid(), self.log_text())


class AnInterruptedRepair(CommandTestCase):
    def test_the_commands_name_it_and_repair_finishes_it(self):
        # Stopped between its renames, a repair leaves its new store as events.sqlite3.salvaged and
        # none in place, until the next call puts it there: the commands must not say nothing was
        # stored.
        post(payment())
        ipn_receiver.close_store()
        store = os.path.join(self.data_dir, "events.sqlite3")
        os.replace(store, store + ".salvaged")
        code, output, errors = self.command("events")
        self.assertEqual((code, errors), (1, "ERROR: a repair was interrupted before it put its new store in place; "
                                             "run `python3 ipn_receiver.py repair` to do that (the next call does "
                                             "it too)\n"))
        code, output, _ = self.command("check")
        self.assertIn("PROBLEM  an interrupted repair left events.sqlite3.salvaged\n", output)
        code, output, _ = self.command("repair")
        self.assertEqual((code, output), (0, "an interrupted repair left its new store beside the old one; it is in "
                                             "place now\n"))
        self.assertEqual(self.command("events")[0], 0)
        self.assertEqual([row["status"] for row in self.rows()], ["done"])
        self.assertFalse(os.path.exists(store + ".salvaged"))


class WhatReplayRuns(CommandTestCase):
    """Which stored notifications replay runs without --force, and what it says and records."""

    def set_row(self, status, claimed_ago):
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        connection.execute("UPDATE notifications SET status = ?, claim = 'another', claimed_at = ?",
                           (status, time.time() - claimed_ago))
        connection.commit()
        connection.close()

    def test_a_payment_done_with_access_data_is_said_to_answer_them(self):
        # Its copies get the access data too, and replay --done says so (the 70th review).
        self.handle("on_payment", lambda notification: {"username": "jane"})
        post(payment())
        self.assertEqual(self.command("replay", "1", "--done"), (1, "", "ERROR: notification #1 is done already: its "
                                                                     "copies are answered OK with the access data it "
                                                                     "gave; there is nothing to mark\n"))

    def test_an_abandoned_one_runs_and_one_being_processed_or_done_is_refused(self):
        # "processing" for longer than PROCESSING_TIMEOUT (300 s): its process died. Claimed a
        # moment ago, it is being run right now; done, it was handled, however long ago.
        post(payment())
        refusal = ("ERROR: notification #1 is done; replay runs failed ones (and abandoned and unknown ones). Add "
                   "--force to run its handler again anyway\n")
        for claimed_ago in (5, 400):
            self.set_row("done", claimed_ago)
            self.assertEqual(self.command("replay", "1"), (1, "", refusal), claimed_ago)
            self.assertEqual(self.command("replay", "1", "--done"), (1, "", "ERROR: notification #1 is done already: "
                                                                         "its copies are answered OK; there is "
                                                                         "nothing to mark\n"))
        # Being processed, its handler may be running right now: replay says so, and that --force
        # would run it twice (the 48th review: --force was all it suggested).
        for claimed_ago, shown in ((5, "5|6"), (-5, "0")):     # (-5: claimed before the clock was set back)
            self.set_row("processing", claimed_ago)
            code, output, error = self.command("replay", "1")
            self.assertEqual((code, output), (1, ""))
            self.assertRegex(error, "^ERROR: notification #1 is being processed: its handler started (%s) s ago "
                             "and may be running right now \\(`show 1` says when it is done\\). If that run died, "
                             "replay runs it once PROCESSING_TIMEOUT \\(300 s\\) has passed since it started; "
                             "--force runs it now, a second time if it is still running\n$" % shown)
            self.assertIn("replay marks it once PROCESSING_TIMEOUT (300 s) has passed since it started; --force marks "
                          "it now\n", self.command("replay", "1", "--done")[2])
        self.assertEqual(self.rows()[0]["attempts"], 1)
        self.set_row("processing", 400)
        code, output, _ = self.command("replay", "1")
        self.assertEqual((code, output.splitlines()[1:]), (0, ["#1 digistore24 on_payment: handled as #1", "OK"]))
        self.assertEqual([(row["status"], row["attempts"]) for row in self.rows()], [("done", 2)])
        self.set_row("processing", -400)        # claimed while the clock was ahead: abandoned too
        self.assertEqual(self.command("replay", "1")[0], 0)
        self.assertEqual([(row["status"], row["attempts"]) for row in self.rows()], [("done", 3)])
        self.assertIn("INFO [", self.log_text())
        self.assertTrue(self.log_text().rstrip().endswith("replay of #1: handled as #1"), self.log_text())

    def test_done_by_hand_says_so_and_logs_it(self):
        self.handle("on_payment", lambda n: 1 / 0)
        post(payment())
        self.assertEqual(self.command("replay", "1", "--done")[:2],
                         (0, "#1 is done now; its copies are answered OK, and its handler does not run\n"))
        self.assertTrue(self.log_text().rstrip().endswith("#1 marked done by hand (replay --done); its copies are "
                                                          "answered OK"), self.log_text())

    def test_a_promopit_sale_runs_promopits_handler_and_an_event_without_one_is_refused(self):
        post(promopit_sale())
        code, output, _ = self.command("replay", "1", "--force")
        self.assertEqual((code, output.splitlines()[0]), (0, "#1: running sale of %s, line %d" % (
            SCRIPT, ipn_receiver.sale.__code__.co_firstlineno)))
        post(payment(event="new_event"))
        self.assertEqual(self.command("replay", "2", "--force"), (1, "", "ERROR: there is no handler for new_event; add "
                                                                         "one to DIGISTORE24_HANDLERS first\n"))

    def test_the_claim_of_a_replay_and_a_handler_without_code_of_its_own(self):
        post(payment())
        claims = []

        def record_the_claim(notification):
            claims.append(self.rows()[0]["claim"])
        self.handle("on_payment", functools.partial(record_the_claim))
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            self.assertEqual(ipn_receiver.main(["replay", "1", "--force"]), 0)
        self.assertEqual(output.getvalue().splitlines()[0], "#1: running on_payment")
        self.assertRegex(claims[0], r"^%d-replay-[0-9a-f]{8}$" % os.getpid())


class DamageTheIntegrityCheckCannotSee(CommandTestCase):
    def damage(self, statement, parameters=()):
        """Change the store's rows as a bit flipped on the disk would, with a connection of our own."""
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        connection.execute(statement, parameters)
        connection.commit()
        connection.close()

    def test_a_claim_time_damaged_into_text_is_taken_as_abandoned_by_check_and_replay(self):
        # check ended in a TypeError at such a row, before the rest of its checks, and so did
        # replay (the 72nd review).
        post(payment())
        self.damage("UPDATE notifications SET status = 'processing', claimed_at = 'x', claim = '1-abc'")
        code, output, errors = self.command("check")
        self.assertEqual((code, errors), (1, ""), output)
        self.assertIn("PROBLEM  1 notification whose handler started over PROCESSING_TIMEOUT ago, and whose outcome "
                      "was never recorded: #1\n", output)
        self.assertIn("the store's lock is free", output)               # (the checks after it ran)
        code, output, errors = self.command("replay", "1")
        self.assertEqual(code, 0, errors)
        self.assertNotIn("Traceback", errors)
        self.assertEqual(self.rows()[0]["status"], "done")

    def test_a_row_whose_fields_are_damaged_is_listed_shown_and_reported_without_a_traceback(self):
        # One bit flipped on the disk inside a row's JSON: SQLite's integrity check says ok.
        self.handle("on_payment", lambda n: 1 / 0)
        post(payment())
        self.damage("UPDATE notifications SET fields = '{#' || substr(fields, 3)")
        code, output, errors = self.command("events")
        self.assertEqual((code, errors), (0, ""))
        self.assertIn("on_payment", output)
        code, output, errors = self.command("show", "1")
        self.assertEqual((code, errors), (0, ""))
        self.assertIn("fields (0): none can be read (damaged); the sender's next delivery of it brings them back",
                      output)
        self.assertEqual(self.command("replay", "1")[2], "ERROR: notification #1 lost its fields when the event store "
                         "was damaged; the sender's next delivery of it brings them back. Or, if it was handled, run: "
                         "replay 1 --done\n")
        code, output, errors = self.command("check")
        self.assertEqual((code, errors), (1, ""))
        self.assertIn("PROBLEM  1 notification whose fields are damaged: #1\n         fix: `show ID` for each;", output)


    def test_a_row_whose_status_is_damaged_is_held_not_answered_ok(self):
        # A bit flipped in a row's status ("failed" read as "fahled"): SQLite's integrity check
        # says ok. Whether its handler ran cannot be told: like a row salvaged without its
        # status, a copy is neither run nor answered OK, and the vendor decides.
        for damaged in ("fahled", "dona", "processinf", "fa\x1b[2Jled"):
            with self.subTest(status=damaged):
                self.setUp()
                runs = []
                self.handle("on_payment", runs.append)
                post(payment())
                self.damage("UPDATE notifications SET status = ?", (damaged,))
                code, output, errors = self.command("check")
                self.assertEqual((code, errors), (1, ""))
                self.assertIn("PROBLEM  1 notification whose row is damaged: #1\n         fix: `show ID` for each",
                              output)
                for command in (["check"], ["events"], ["show", "1"]):              # shown escaped
                    self.assertNotIn("\x1b", self.command(*command)[1], command)
                answer = post(payment())
                self.assertEqual((answer.status, answer.body), (503, ipn_receiver.UNKNOWN_ANSWER % {"id": 1}))
                self.assertEqual(len(runs), 1)
                row = self.rows()[0]
                self.assertEqual((row["status"], row["last_error"], row["deliveries"]),
                                 ("unknown", "damaged: its status read %s, which the receiver never writes"
                                  % ipn_receiver.json_string(damaged), 2))
                self.assertEqual(self.command("replay", "1")[0], 0)            # no --force needed
                self.assertEqual(self.rows()[0]["status"], "done")

    def test_a_row_whose_answer_or_numbers_are_damaged_into_other_types_is_held_not_answered(self):
        # One bit in a record's header: an answer's text read as bytes (no answer can be made of
        # them), a failed row's attempts 1 read as '' (no pause can be counted from it), a time as
        # text. SQLite's integrity check says ok. Held as "unknown", as a damaged status is.
        for column, value in (("answer", "X'4f4b0a757365726e616d653a206a616e65'"), ("answer", "'NK\nusername: jane'"),
                              ("answer", "'OK\nusername: ja\rne'"), ("answer", "'OKAY'"),
                              ("answer", "'OK\nusername;0jane'"), ("answer", "'OK\nusername: jane\npassword> pw'"),
                              ("answer", "'OK\nusername:0jane'"), ("answer", "'OK\n: jane'"), ("answer", "'OK\n\njane'"),
                              ("answer", "'OK\nuser:name: jane'"), ("answer", "'OK\n username: jane'"), ("attempts", "''"),
                              ("updated_at", "'x'"), ("claimed_at", "'x'"), ("claim", "X'00'")):
            with self.subTest(column=column):
                self.setUp()
                runs = []
                self.handle("on_payment", lambda n: runs.append(n) or {"username": "jane"})
                post(payment())
                self.damage("UPDATE notifications SET %s = %s" % (column, value))
                code, output, errors = self.command("check")
                self.assertEqual((code, errors), (1, ""))
                self.assertIn("PROBLEM  1 notification whose row is damaged: #1\n", output)
                self.assertEqual(self.command("show", "1")[::2], (0, ""))
                answer = post(payment())
                self.assertEqual((answer.status, answer.body), (503, ipn_receiver.UNKNOWN_ANSWER % {"id": 1}))
                self.assertEqual(len(runs), 1)
                self.assertEqual((self.rows()[0]["status"], self.rows()[0]["last_error"]), (
                    "unknown", "damaged: " + ("its answer is not one the receiver writes" if value[0] == "'" and column ==
                                              "answer" else "a column of its row is not of the type the receiver writes")))
        # A failed one, its attempts damaged, after the pause: held too, not a 503 "storage unavailable".
        self.setUp()
        self.handle("on_payment", lambda n: 1 / 0)
        post(payment())
        self.damage("UPDATE notifications SET attempts = '', updated_at = updated_at - 7200")
        self.assertEqual(post(payment()).body, ipn_receiver.UNKNOWN_ANSWER % {"id": 1})

    def test_a_done_row_whose_answer_was_lost_is_held_and_a_copy_brings_its_fields_back(self):
        # A long answer (40 accounts) reaches past its row's first page: damaged there, the row is
        # salvaged "done" with no answer, and every copy would get OK without the access data.
        runs = []
        self.handle("on_payment", lambda n: runs.append(n) or {"username": "jane"})
        post(payment())
        self.damage("UPDATE notifications SET answer = NULL, fields = '{}'")
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  1 notification whose row is damaged: #1\n", output)
        self.assertEqual(post(payment()).body, ipn_receiver.UNKNOWN_ANSWER % {"id": 1})
        self.assertEqual(len(runs), 1)
        row = self.rows()[0]
        self.assertEqual((row["status"], row["last_error"]), ("unknown", "damaged: its answer was lost"))
        self.assertEqual(json.loads(row["fields"])["transaction_id"], payment()["transaction_id"])
        # A done row whose fields alone were lost gets them back from a copy too, and is answered.
        self.setUp()
        post(payment())
        self.damage("UPDATE notifications SET fields = '{}'")
        self.assertEqual(post(payment()).body, "OK\nusername: jane")
        self.assertEqual(len(runs), 2)
        self.assertEqual(json.loads(self.rows()[0]["fields"])["transaction_id"], payment()["transaction_id"])

    def test_every_answer_the_receiver_writes_reads_as_undamaged(self):
        # Whatever a handler returns, the answer stored is "OK" and `key: value` lines.
        for result in (None, {}, {"username": "jane", "password": "a: b:c", "loginurl": ""}, {" key ": " v "},
                       {"a:b": "x"}, {"username\n": "ja\u2028ne"}, {"": "no key"}, {None: None}, {"k": "\ud800"}):
            with self.subTest(result=result):
                notification = ipn_receiver.Notification("digistore24", {"event": "on_payment", "transaction_id": "1"})
                answer = ipn_receiver.answer_body(notification, result)
                self.assertIsNone(ipn_receiver.row_damage("done", answer, None, None, 0.0, 1, "on_payment"), answer)

    def test_a_row_salvaged_without_its_status_is_reported_once_whatever_its_columns(self):
        post(payment())
        self.damage("UPDATE notifications SET status = 'unknown', answer = X'4f4b'")
        code, output, errors = self.command("check")
        self.assertEqual((code, errors), (1, ""))
        self.assertIn("PROBLEM  1 notification salvaged from damage with the status lost\n", output)
        self.assertNotIn("whose row is damaged", output)

    def test_columns_damaged_into_other_types_are_shown_not_a_traceback(self):
        # A flipped bit in a record's header makes a column another type: text a blob, a number
        # text, the fields NULL-like. SQLite's integrity check does not always see it.
        post(payment())
        self.damage("UPDATE notifications SET event = X'6f6e5f7061796d656e74', attempts = 'x', "
                           "received_at = 'y', fields = 4.5")
        for command in (["events"], ["show", "1"]):
            code, output, errors = self.command(*command)
            self.assertEqual((code, errors), (0, ""), command)
            self.assertNotIn("Traceback", output)
        self.assertIn("     1  ?                    digistore24  b'on_payment'         done          x    1    (test)\n",
                      self.command("events")[1])

    def test_whatever_else_goes_wrong_in_a_command_is_one_line(self):
        with mock.patch.object(ipn_receiver, "command_events", side_effect=TypeError("unexpected")), \
                contextlib.redirect_stderr(io.StringIO()) as errors:
            self.assertEqual(ipn_receiver.main(["events"]), 1)
        self.assertEqual(errors.getvalue(), "ERROR: events failed (TypeError: unexpected); `python3 ipn_receiver.py "
                                            "check` tells whether the event store is damaged\n")

class CommandsMakeNothingForAnotherUser(CommandTestCase):
    """A command run as another user than the web server's (root over SSH, say) would make what it
    writes that user's: a data folder, a store, a lock or a log the web server cannot open, and
    every call after it would fail. So the commands that read make nothing, and those that write
    refuse to run as another user than the one the data folder belongs to."""

    NOBODY = 65534

    def test_events_show_and_replay_make_no_data_folder_and_no_store(self):
        missing = os.path.join(self.data_dir, "not-yet")
        os.makedirs(os.path.join(self.data_dir, "empty"), 0o700)
        for data_dir in (missing, os.path.join(self.data_dir, "empty")):
            # Nor do they say that nothing was stored: the settings they read name no store (the
            # 48th review: run without the web server's IPN_CONFIG, "no notification #12").
            nothing_there = ("no event store at %s: nothing was received with the settings this command read. If "
                             "calls have come in, run it with the receiver's own: the same config.ini (IPN_CONFIG, "
                             "where the web server sets it) and DATA_DIR, as the user the web server runs the "
                             "receiver as\n" % os.path.join(data_dir, "events.sqlite3"))
            self.assertEqual(self.command("events", IPN_DATA_DIR=data_dir), (0, nothing_there, ""))
            for command in (["show", "1"], ["replay", "1"], ["replay", "1", "--done"]):
                self.assertEqual(self.command(*command, IPN_DATA_DIR=data_dir), (1, "", "ERROR: " + nothing_there))
        self.assertFalse(os.path.exists(missing))
        self.assertEqual(os.listdir(os.path.join(self.data_dir, "empty")), [])

    @unittest.skipUnless(os.geteuid() == 0, "needs root, to give the data folder to another user")
    def test_replay_repair_and_serve_refuse_to_write_as_another_user(self):
        post(payment())
        os.chown(self.data_dir, self.NOBODY, self.NOBODY)
        before = sorted(os.listdir(self.data_dir))
        refusal = ("ERROR: the data folder %s belongs to nobody, and this command runs as root; run it as nobody, the "
                   "user the web server runs the receiver as (sudo -u nobody python3 ipn_receiver.py %%s ...)\n"
                   % self.data_dir)
        for command in (["replay", "1", "--force"], ["replay", "1", "--done", "--force"], ["repair", "--force"],
                        ["serve", "--port", "0"]):
            self.assertEqual(self.command(*command), (1, "", refusal % command[0]), command)
        self.assertEqual(sorted(os.listdir(self.data_dir)), before)
        self.assertEqual([(row["status"], row["attempts"]) for row in self.rows()], [("done", 1)])
        # The way to run it says which config.ini, as the web server sets it (sudo passes no
        # IPN_CONFIG on): without it, the command would read other settings (the 48th review).
        folder = tempfile.mkdtemp(prefix="ipn test ")
        self.addCleanup(shutil.rmtree, folder, True)
        ini = os.path.join(folder, "ipn's.ini")
        with open(ini, "w") as file:
            file.write("[receiver]\ndata_dir = %s\n" % self.data_dir)
        self.assertEqual(self.command("repair", IPN_CONFIG=ini), (1, "", refusal.replace(
            "sudo -u nobody python3", "sudo -u nobody env IPN_CONFIG=%s python3" % shlex.quote(ini)) % "repair"))
        # Reading is safe: SQLite gives the journal files it makes as root to the store's owner.
        code, output, _ = self.command("events")
        self.assertEqual(code, 0)
        self.assertIn("on_payment", output)

    @unittest.skipUnless(os.geteuid() == 0, "needs root, to give the data folder to another user")
    def test_events_show_and_check_write_nothing_into_another_users_data_folder(self):
        post(payment())
        ipn_receiver.close_store()
        os.remove(os.path.join(self.data_dir, ".htaccess"))             # (the receiver writes it again)
        for name in [""] + os.listdir(self.data_dir):
            os.chown(os.path.join(self.data_dir, name), self.NOBODY, self.NOBODY)
        for command in (["events"], ["show", "1"], ["check"]):
            code, _, errors = self.command(*command)
            self.assertEqual(errors, "", command)
            self.assertFalse(os.path.exists(os.path.join(self.data_dir, ".htaccess")), command)
            self.assertEqual({name: os.stat(os.path.join(self.data_dir, name)).st_uid
                              for name in os.listdir(self.data_dir)},
                             dict.fromkeys(os.listdir(self.data_dir), self.NOBODY), command)

    @unittest.skipUnless(os.geteuid() == 0, "needs root, to give files to another user")
    def test_check_reports_files_of_another_user_in_the_data_folder(self):
        post(payment())
        store = os.path.join(self.data_dir, "events.sqlite3")
        os.chown(store, self.NOBODY, self.NOBODY)
        code, output, _ = self.command("check")
        self.assertEqual(code, 1)
        self.assertIn("PROBLEM  events.sqlite3 in the data folder belongs to nobody, the folder to root\n"
                      "         fix: chown root %s   (a command run as another user made it; the web server "
                      "cannot use it)" % store, output)
        os.chown(store, 0, 0)
        # A link another user planted, to a file of root's: a plain chown, run as root, would give
        # that file away (the 73rd review); chown -h changes the link alone.
        target = tempfile.NamedTemporaryFile(prefix="ipn-root-file-")
        self.addCleanup(target.close)
        link = os.path.join(self.data_dir, "notes")
        os.symlink(target.name, link)
        os.lchown(link, self.NOBODY, self.NOBODY)
        code, output, _ = self.command("check")
        self.assertIn("PROBLEM  notes in the data folder belongs to nobody, the folder to root\n         fix: chown -h "
                      "root %s   (a command run as another user made it" % link, output)
        os.remove(link)
        os.chown(self.data_dir, self.NOBODY, self.NOBODY)
        code, output, _ = self.command("check")
        self.assertEqual(code, 1)
        self.assertIn("PROBLEM  data folder belongs to the user check runs as (it belongs to nobody; check runs as "
                      "root)\n         fix: run check as the user the "
                      "web server runs the receiver as: the data folder belongs to nobody, and it and its files must "
                      "belong to that user", output)


@unittest.skipUnless(os.geteuid() == 0, "needs root, to run the commands as another user")
class CommandsRunAsAUserWhoCannotRead(CommandTestCase):
    """The vendor's own login over SSH, where the web server's user owns the data folder (mode
    700, as the receiver makes it): a command cannot look in. Not seeing the store is not the same
    as there being none: a command must not say that nothing was stored, nor end in a traceback."""

    NOBODY = 65534

    def setUp(self):
        CommandTestCase.setUp(self)
        post(payment())                     # the data folder and the store are root's, mode 700
        # The script and an interpreter that user can reach (pyenv's live in /root, mode 700).
        self.folder = tempfile.mkdtemp(prefix="ipn-script-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        os.chmod(self.folder, 0o755)
        self.script = os.path.join(self.folder, "ipn_receiver.py")
        shutil.copy(SCRIPT, self.script)
        os.chmod(self.script, 0o755)
        self.python = next(python for python in (PYTHON, "/usr/bin/python3") if self.nobody_can_run(python))

    def nobody_can_run(self, python):
        try:
            return self.as_nobody([python, "-c", "pass"])[0] == 0
        except PermissionError:
            return False

    def as_nobody(self, argv, **environment):
        def become_nobody():
            os.setgid(self.NOBODY)
            os.setuid(self.NOBODY)
        values = {key: value for key, value in os.environ.items() if not key.startswith(("IPN_", "PYTHON"))}
        values.update(IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_ISN_KEY=ISN_KEY, IPN_DATA_DIR=self.data_dir)
        values.update(environment)
        done = subprocess.run(argv, env=values, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              preexec_fn=become_nobody, timeout=60)
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    def test_a_lock_file_of_another_user_ends_replay_and_repair_in_a_line_not_a_traceback(self):
        ipn_receiver.close_store()
        lock = os.path.join(self.data_dir, ".lock")
        for name in [""] + os.listdir(self.data_dir):                  # the folder the user's own, but
            if name != ".lock":                                         # the lock root's, from an
                os.chown(os.path.join(self.data_dir, name), self.NOBODY, self.NOBODY)   # earlier command
        os.chmod(lock, 0o600)
        for command in (["replay", "1", "--force"], ["repair", "--force"]):
            self.assertEqual(self.as_nobody([self.python, self.script] + command),
                             (1, "", "ERROR: %s: Permission denied; `python3 ipn_receiver.py check` says what to "
                                     "fix\n" % lock), command)

    def test_events_show_replay_and_repair_say_whom_to_run_as_instead_of_finding_nothing(self):
        refusal = ("ERROR: this command runs as nobody, who cannot read the event store in %s; run it as the user the "
                   "web server runs the receiver as (sudo -u root python3 ipn_receiver.py ...)\n" % self.data_dir)
        for command in (["events"], ["show", "1"], ["replay", "1"], ["repair"]):
            self.assertEqual(self.as_nobody([self.python, self.script] + command), (1, "", refusal), command)
        os.chmod(self.data_dir, 0o755)                  # the folder open, the store still not
        os.chmod(os.path.join(self.data_dir, "events.sqlite3"), 0o600)
        self.assertEqual(self.as_nobody([self.python, self.script, "events"]), (1, "", refusal))
        self.assertEqual([(row["status"], row["attempts"]) for row in self.rows()], [("done", 1)])
        # A data folder inside one this user cannot even look into: whose it is cannot be told.
        os.chmod(self.data_dir, 0o700)
        inner = os.path.join(self.data_dir, "inner")
        os.makedirs(inner)
        code, output, errors = self.as_nobody([self.python, self.script, "events"], IPN_DATA_DIR=inner)
        self.assertEqual((code, output, errors), (1, "", "ERROR: this command runs as nobody, who cannot read the event "
                         "store in %s; run it as the user the web server runs the receiver as (sudo -u THAT_USER "
                         "python3 ipn_receiver.py ...)\n" % inner))

    def test_check_says_that_it_cannot_look_in_and_whose_the_folder_is(self):
        code, output, errors = self.as_nobody([self.python, self.script, "check"])
        self.assertEqual((code, errors), (1, ""))
        self.assertIn("PROBLEM  data folder %s can be read and written by nobody\n         fix: it belongs to root: run "
                      "check as the user the web server runs the receiver as, and make the folder that user's "
                      "(chown, chmod 700)\n" % self.data_dir, output)

    def test_check_says_chmod_where_the_folder_is_its_users_and_only_its_mode_keeps_it_out(self):
        # Not "run check as another user, and chown" (the 38th review).
        os.chown(self.data_dir, self.NOBODY, self.NOBODY)
        os.chmod(self.data_dir, 0o500)
        code, output, errors = self.as_nobody([self.python, self.script, "check"])
        self.assertEqual((code, errors), (1, ""))
        self.assertIn("PROBLEM  data folder %s can be read and written by nobody\n         fix: chmod 700 %s   (it is "
                      "yours, but its mode keeps you out)\n" % (self.data_dir, self.data_dir), output)

    def test_check_reports_a_store_that_cannot_be_written(self):
        # A backup restored read-only: the store reads well, and every call is a 503.
        for folder, _, files in os.walk(self.data_dir):
            for name in [folder] + [os.path.join(folder, name) for name in files]:
                os.chown(name, self.NOBODY, self.NOBODY)
        store = os.path.join(self.data_dir, "events.sqlite3")
        os.chmod(store, 0o400)
        code, output, _ = self.as_nobody([self.python, self.script, "check"])
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  events.sqlite3 can be read and written by nobody\n         fix: chmod 600 %s   (every "
                      "call needs to write it)\n" % store, output)
        self.assertTrue(output.endswith("\n1 problem(s) to fix\n"), output)
        # A log it cannot write: the lines, and the traceback an error answer points to, go to
        # stderr alone, where check said all good (the 72nd review).
        os.chmod(store, 0o600)
        log = os.path.join(self.data_dir, "ipn_receiver.log")
        os.chmod(log, 0o400)
        code, output, _ = self.as_nobody([self.python, self.script, "check"])
        self.assertIn("PROBLEM  ipn_receiver.log can be read and written by nobody\n         fix: chmod 600 %s   (the "
                      "receiver writes its lines to stderr alone then, and an error answer's traceback is not there)\n"
                      % log, output)
        self.assertTrue(output.endswith("\n1 problem(s) to fix\n"), output)


class Check(CommandTestCase):
    def test_file_names_check_finds_cannot_hide_a_problem_or_run_a_command(self):
        # A file name is whoever made the file's to choose: escape sequences in one erased the
        # PROBLEM lines on the vendor's screen, a line break forged "all good", and a `;` in the
        # name made the suggested command two (the 71st review).
        name = "events.sqlite3.damaged-x;touch pwned\r\x1b[2K\x1b[A\nall good\n\x1b[8m"
        open(os.path.join(self.data_dir, name), "w").close()
        post(payment())
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertNotIn("\x1b", output)
        self.assertNotIn("\r", output)
        shown = "events.sqlite3.damaged-x;touch pwned\\r\\x1b[2K\\x1b[A\\nall good\\n\\x1b[8m"
        self.assertIn("\nPROBLEM  a store was set aside (damaged, or by repair --force): %s\n         fix: look through "
                      "it (`sqlite3 '%s/%s'`), then move it out of the data folder, with its -wal and -shm files if "
                      "any\n" % (shown, self.data_dir, shown), output)
        self.assertTrue(output.endswith("\n1 problem(s) to fix\n"), output)
        for line in output.splitlines():
            self.assertRegex(line, r"^(ok       |PROBLEM  |note     |         fix: |$|1 problem\(s\) to fix$)")

    def test_a_store_in_the_folder_the_readme_suggests_while_data_dir_names_another_is_a_problem(self):
        # An older config.ini put back without its data_dir line: calls go into a new store beside
        # the script, and check said "all good" with the failed sales of the other out of sight
        # (the 70th review).
        home = tempfile.mkdtemp(prefix="ipn-home-")
        self.addCleanup(shutil.rmtree, home, True)
        suggested = os.path.join(home, "ipn_data")
        os.mkdir(suggested, 0o700)
        open(os.path.join(suggested, ipn_receiver.STORE_FILE_NAME), "w").close()
        os.utime(os.path.join(suggested, ipn_receiver.STORE_FILE_NAME), (1767225600, 1767225600))
        post(payment())

        def problems_of_check():
            said = []
            account = mock.Mock(pw_dir=home, pw_name="vendor")
            with mock.patch("pwd.getpwuid", return_value=account), contextlib.redirect_stdout(io.StringIO()):
                ipn_receiver.check_data_folder(lambda ok, text, fix=None: said.append((text, fix)) if not ok else None,
                                               lambda text: None, ipn_receiver.settings())
            return said
        self.assertIn(("an event store is in %s (last written %s), and DATA_DIR is %s" % (
            suggested, ipn_receiver.local_time(1767225600), self.data_dir), "if DATA_DIR named that folder before (an "
            "older config.ini put back, say), set it again (data_dir = %s), and keep %s, not deleted: it holds the "
            "calls that came meanwhile. If that store is no longer used, rename its folder (%s.old)" % (
                suggested, self.data_dir, suggested)), problems_of_check())
        # Where DATA_DIR names it, or it holds no store, there is nothing to say.
        os.rename(suggested, suggested + ".old")
        self.assertEqual([text for text, _ in problems_of_check() if "an event store is in" in text], [])
        os.rename(suggested + ".old", suggested)
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=ISN_KEY, DATA_DIR=suggested)
        self.assertEqual([text for text, _ in problems_of_check() if "an event store is in" in text], [])

    def test_a_sender_the_store_shows_in_use_whose_secret_is_gone_is_a_problem(self):
        # An upgrade that left the ISN key behind: every PromoPit call, copies too, refused with 503,
        # and check said "all good" with a note (the 60th review).
        post(payment("1"))
        self.assertNotIn("cannot be used, though", self.command("check", IPN_ISN_KEY="")[1])   # (no PromoPit yet)
        post(payment("2"))
        post(promopit_sale())
        code, output, _ = self.command("check", IPN_ISN_KEY="")
        self.assertEqual(code, 1, output)
        self.assertIn("\nPROBLEM  ISN_KEY cannot be used, though the 1 PromoPit notification in the store came with "
                      "one\n"
                      "         fix: %s; until then each call of PromoPit, its copies too, is refused with 503\n"
                      % ipn_receiver.secret_problem({"ISN_KEY": ipn_receiver.ISN_KEY}, "ISN_KEY"), output)
        self.assertNotIn("SHA_PASSPHRASE cannot be used, though", output)
        output = self.command("check", IPN_SHA_PASSPHRASE="short")[1]
        # Its fix is said once, on the line about the setting (the 70th review).
        self.assertIn("\nPROBLEM  SHA_PASSPHRASE cannot be used, though the 2 Digistore24 notifications in the "
                      "store came with one\n         fix: fix SHA_PASSPHRASE as said above; until then each call of "
                      "Digistore24, its copies too, is refused with 503\n", output)
        self.assertEqual(output.count("fewer than 8 characters"), 1, output)
        self.assertNotIn("cannot be used, though", self.command("check")[1])

    def test_the_placeholder_on_payment_where_yours_gave_access_data_before_is_a_problem(self):
        # An upgrade that left the vendor's on_payment behind: each sale answered OK and never
        # handled, and check said nothing (the 60th review).
        self.handle("on_payment", lambda notification: {"username": "jane"})
        post(payment("1"))
        post(payment("2"))
        self.handle("on_payment", lambda notification: None)
        post(payment("3"))
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("\nPROBLEM  on_payment is a handler of yours, as when 2 payments in the store (the last #2) were "
                      "answered with access data\n         fix: it is the one the file came with, which grants nothing: "
                      "put yours back (was it left in the file before an upgrade? where a wrapper puts in your "
                      "handlers, run check through it); then, for each payment after #2 "
                      "answered OK alone (`python3 ipn_receiver.py events --event on_payment`), `replay ID --force`\n",
                      output)
        script = self.edited_copy("    # EDIT HERE: grant or extend access.\n", "    # EDIT HERE: grant or extend access.\n"
                                  "    notification.get('email')\n    grant(notification)\n", "def on_payment(",
                                  "def grant(notification):\n    pass\n\n\ndef on_payment(")
        self.assertNotIn("on_payment is a handler of yours", self.command("check", script=script)[1])
        for edited in (ipn_receiver.on_payment, ipn_receiver.on_refund):
            self.assertEqual(ipn_receiver.is_the_placeholder(edited, "on_payment"), edited is ipn_receiver.on_payment)
        self.assertFalse(ipn_receiver.is_the_placeholder("on_payment", "on_payment"))

    def test_notifications_whose_handler_failed_are_a_problem_until_handled(self):
        # The sender's retries fail the same way until the handler is fixed: check said "all good"
        # with a note (the 59th review).
        self.handle("on_refund", lambda n: 1 / 0)
        post(payment("1", event="on_refund"))
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("\nPROBLEM  1 notification whose handler failed, not yet handled\n         fix: `python3 "
                      "ipn_receiver.py events --status failed` lists them and `show ID` says why; fix the handler, "
                      "then `replay ID` each (or let the sender's next retry run it); `replay ID --done` for one you "
                      "handled yourself\n", output)
        post(payment("2", event="on_refund"))
        self.assertIn("\nPROBLEM  2 notifications whose handler failed", self.command("check")[1])
        for number in ("1", "2"):
            self.assertEqual(self.command("replay", number, "--done")[0], 0)
        code, output, _ = self.command("check")
        self.assertEqual(code, 0, output)

    def test_data_dir_below_a_file_is_a_problem_check_does_not_say_to_create(self):
        # "create it" could not be done (the 59th review).
        with open(os.path.join(self.data_dir, "afile"), "w") as file:
            file.write("not a folder")
        data_dir = os.path.join(self.data_dir, "afile", "ipn_data")
        code, output, _ = self.command("check", IPN_DATA_DIR=data_dir)
        self.assertEqual(code, 1)
        self.assertIn("PROBLEM  DATA_DIR %s can be made\n         fix: %s on its way is a file, not a folder: correct "
                      "DATA_DIR, or move that file away\n" % (data_dir, os.path.dirname(data_dir)), output)
        self.assertNotIn("create it", output)

    def test_data_dir_naming_a_file_is_a_problem_for_check_and_the_commands(self):
        data_dir = os.path.join(self.data_dir, "ipn_data")
        with open(data_dir, "w") as file:
            file.write("not a folder")
        code, output, _ = self.command("check", IPN_DATA_DIR=data_dir)
        self.assertEqual(code, 1)
        self.assertIn("PROBLEM  DATA_DIR %s is a folder\n         fix: it is a file: set DATA_DIR to a folder, or move "
                      "the file away (the receiver makes the folder)\n" % data_dir, output)
        for command in (["events"], ["show", "1"], ["repair"]):
            self.assertEqual(self.command(*command, IPN_DATA_DIR=data_dir), (1, "", "ERROR: DATA_DIR %s is a file, not "
                             "a folder; `python3 ipn_receiver.py check` says what to do with it (the event store, moved "
                             "there by mistake, goes into a folder)\n" % data_dir), command)

    def test_a_store_moved_to_the_data_folders_name_is_put_into_the_folder(self):
        # `mv events.sqlite3 /home/you/ipn_data` before the folder was made renames the store to the
        # folder's name (the 40th review). "Move the file away" would start an empty store, and every
        # handler would run again: check says how to put it into the folder, and the way works.
        post(payment())
        ipn_receiver.close_store()
        data_dir = os.path.join(tempfile.mkdtemp(prefix="ipn-moved-"), "ipn_data")
        self.addCleanup(shutil.rmtree, os.path.dirname(data_dir), True)
        os.rename(os.path.join(self.data_dir, "events.sqlite3"), data_dir)
        code, output, _ = self.command("check", IPN_DATA_DIR=data_dir)
        self.assertEqual(code, 1, output)
        fix = ("mv {0} {0}.store && mkdir -m 700 {0} && mv {0}.store {0}/events.sqlite3".format(data_dir))
        self.assertIn("PROBLEM  DATA_DIR %s is a folder\n         fix: it is a database, most likely the event store "
                      "moved there with mv before the folder was made: %s\n" % (data_dir, fix), output)
        subprocess.run(fix, shell=True, check=True)
        code, output, _ = self.command("events", IPN_DATA_DIR=data_dir)
        self.assertEqual(code, 0, output)
        self.assertIn("on_payment", output)

    def test_a_healthy_setup_passes(self):
        post(payment())
        code, output, _ = self.command("check")
        self.assertEqual(code, 0, output)
        self.assertIn("all good", output)
        self.assertIn("integrity ok, journal wal", output)
        self.assertIn("stored: 1 done", output)
        self.assertNotIn(PASSPHRASE, output)

    def test_problems_are_reported_with_their_fix(self):
        post(payment())
        os.chmod(self.data_dir, 0o755)
        code, output, _ = self.command("check", IPN_SHA_PASSPHRASE="", IPN_ISN_KEY="")
        self.assertEqual(code, 1)
        self.assertIn("PROBLEM  neither SHA_PASSPHRASE nor ISN_KEY is set", output)
        self.assertIn("PROBLEM  data folder mode 755", output)
        self.assertIn("fix: chmod 700 " + self.data_dir, output)

    def test_one_secret_is_enough_but_noted(self):
        code, output, _ = self.command("check", IPN_ISN_KEY="")
        self.assertEqual(code, 0, output)
        self.assertIn("note     ISN_KEY is still the placeholder", output)

    def test_a_secret_too_short_to_be_used_is_a_problem(self):
        code, output, _ = self.command("check", IPN_SHA_PASSPHRASE="abc12", IPN_ISN_KEY="")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  SHA_PASSPHRASE is set (environment variable IPN_SHA_PASSPHRASE), but cannot be used\n"
                      "         fix: SHA_PASSPHRASE is too short", output)
        self.assertIn("note     ISN_KEY is still the placeholder", output)
        self.assertNotIn("abc12", output)

    def test_a_secret_of_letters_alone_is_a_problem(self):
        # "disabled" written where PromoPit is not used (the 52nd review): a key anyone may guess.
        for key, problem in (("disabled", True), ("not used", True), ("Verkaufsaktion", True),
                             ("disabled2024", False), ("a-long-word-like-key", False),
                             ("abcdefghijklmnop", False)):
            with self.subTest(key=key):
                code, output, _ = self.command("check", IPN_ISN_KEY=key)
                self.assertEqual(("PROBLEM  ISN_KEY is letters alone, like a word: whoever guesses it can send calls "
                                  "that pass\n         fix: choose a long random one with digits, the same at PromoPit; "
                                  "if you do not use PromoPit, leave the placeholder\n" in output, code), (problem, int(
                                      problem)), output)

    def test_the_same_secret_for_both_senders_is_a_problem(self):
        # PromoPit sends its ISN key in every call: as the passphrase too, it would sign anything.
        code, output, _ = self.command("check", IPN_ISN_KEY=PASSPHRASE)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  SHA_PASSPHRASE is set (environment variable IPN_SHA_PASSPHRASE), but cannot be used\n"
                      "         fix: SHA_PASSPHRASE is the same as ISN_KEY", output)
        self.assertNotIn(PASSPHRASE, output)

    def test_a_disk_that_is_read_only_or_full_is_said_to_be_so(self):
        # Not "make the folder that user's", nor "run repair" for a store that is whole (the 36th review).
        post(payment("1"))
        environment = mock.patch.dict(os.environ, IPN_DATA_DIR=self.data_dir, IPN_SHA_PASSPHRASE=PASSPHRASE)
        environment.start()
        self.addCleanup(environment.stop)
        real = os.statvfs(self.data_dir)
        for flags, free, found, fix in (
                (os.ST_RDONLY, 10 ** 9, "the data folder's disk can be written (953 MiB free)", "ask your host: the "
                 "file system is mounted read-only, as a host does with a disk that fails"),
                (0, 2 ** 19, "the data folder's disk can be written (0 MiB free)", "free disk space: less than 1 MiB "
                 "is left")):
            disk = os.statvfs_result(real[:1] + (1,) + real[2:4] + (free,) + real[5:8] + (flags,) + real[9:])
            output = io.StringIO()
            with self.subTest(found=found), mock.patch.object(os, "statvfs", return_value=disk), \
                    contextlib.redirect_stdout(output):
                self.assertEqual(ipn_receiver.main(["check"]), 1)
            self.assertIn("PROBLEM  %s\n         fix: %s\n" % (found, fix), output.getvalue())
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            ipn_receiver.main(["check"])
        self.assertRegex(output.getvalue(), "\nok       the data folder's disk can be written \\([0-9]+ MiB free\\)\n")

    def test_a_read_only_file_system_is_not_said_to_be_a_matter_of_owners(self):
        post(payment("1"))
        with read_only_folder(self.data_dir) as folder:
            if not folder.mounted:
                self.skipTest("needs root, to mount the data folder read-only")
            code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  the data folder's disk can be written", output)
        self.assertIn("fix: ask your host: the file system is mounted read-only", output)
        self.assertNotIn("can be read and written by", output)

    def test_a_handler_started_long_ago_whose_outcome_was_never_recorded_is_a_problem(self):
        # Its process killed, or its outcome not stored: check said all good (the 37th review).
        post(payment("1"))
        post(payment("2"))
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        connection.execute("UPDATE notifications SET status = 'processing', claim = '1-x', claimed_at = ? - ? * id",
                           (time.time(), 200))           # #1 200 s ago, #2 400 s: PROCESSING_TIMEOUT is 300
        connection.commit()
        connection.close()
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  1 notification whose handler started over PROCESSING_TIMEOUT ago, and whose outcome "
                      "was never recorded: #2\n         fix: ipn_receiver.log and ipn_receiver.errors.log say how each "
                      "ended; `replay ID` runs", output)

    def test_a_misspelt_event_in_a_handler_table_is_a_problem(self):
        # Its calls were answered OK, stored as ignored, and never run (the 36th review).
        script = self.edited_copy('"on_payment": on_payment,', '"on_paymnet": on_payment,')
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("\nPROBLEM  DIGISTORE24_HANDLERS has a line for 'on_paymnet', an event the sender never sends "
                      "(on_payment misspelt?)\n         fix: correct it to \"on_payment\": until then its notifications "
                      "are answered OK and never handled\nPROBLEM  DIGISTORE24_HANDLERS has no line for on_payment, "
                      "whose handler is defined\n         fix: add `\"on_payment\": on_payment,` to "
                      "DIGISTORE24_HANDLERS: until then its notifications are answered OK and the handler never runs\n",
                      output)
        self.assertEqual(self.command("check")[0], 0)                   # (as shipped: every line there)

    def test_the_rarer_events_are_known_to_check_and_send(self):
        # payment_denial, eticket and custom_form: a handler added for one under a misspelt line
        # was only a note, and send refused the event (the 59th review).
        script = self.edited_copy('"on_affiliation": on_affiliation,', '"on_affiliation": on_affiliation,\n'
                                  '    "payment_denail": payment_denial,\n    "eticket": on_payment,\n'
                                  '    "new_event_2027": on_payment,', 'def on_payment(', 'def payment_denial(n):\n'
                                  '    pass\n\n\ndef on_payment(')
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("\nPROBLEM  DIGISTORE24_HANDLERS has a line for 'payment_denail', an event the sender never "
                      "sends (payment_denial misspelt?)\n", output)
        self.assertIn("\nPROBLEM  DIGISTORE24_HANDLERS has no line for payment_denial, whose handler is defined\n",
                      output)
        # Like none we know of: maybe a new event of Digistore24's.
        self.assertIn("\nnote     DIGISTORE24_HANDLERS has a line for 'new_event_2027', which is not one of the events "
                      "we know of: check its spelling\n", output)
        self.assertNotIn("'eticket'", output)
        sent = []
        with mock.patch.object(ipn_receiver, "post_form", lambda url, fields: sent.append(fields) or (200, "OK")), \
                mock.patch.object(ipn_receiver, "get_start", lambda url: None), contextlib.redirect_stdout(io.StringIO()):
            for event in ipn_receiver.DIGISTORE24_RARER_EVENTS:
                self.assertEqual(ipn_receiver.main(["send", event, "--url", "https://example.com/ipn.py"]), 0)
        self.assertEqual([fields["event"] for fields in sent], ["payment_denial", "eticket", "custom_form"])

    def test_a_handler_written_async_def_or_with_yield_is_a_problem(self):
        # Called plainly, it returns a coroutine that never runs: every call of its event a 500.
        script = self.edited_copy("def on_refund(", "async def on_refund(")
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        fix = ("\n         fix: write it as a plain `def`, without `yield`: the receiver calls handlers plainly, and "
               "until then each of its notifications fails with 500\n")
        self.assertIn("\nPROBLEM  the handler for 'on_refund' is written `async def`" + fix, output)
        # One with yield in it returns a generator as plainly (the 70th review: check said nothing).
        script = self.edited_copy("def on_refund(notification):", "def on_refund(notification):\n    yield")
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("\nPROBLEM  the handler for 'on_refund' is written with `yield` in it" + fix, output)

    def test_a_line_of_a_handler_table_that_names_no_function_or_another_handler(self):
        # In quotes, every refund failed with 500; copied from the line above, a refund ran the
        # payment's code, and check said nothing of either (the 48th review).
        script = self.edited_copy('"on_refund": on_refund,', '"on_refund": "on_refund",')
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("\nPROBLEM  DIGISTORE24_HANDLERS's line for 'on_refund' names 'on_refund', which is not a "
                      "function\n         fix: write the name of the function without quotes, e.g. `\"on_refund\": "
                      "on_refund,`: until then each of its notifications fails with 500\n", output)
        script = self.edited_copy('"on_refund": on_refund,', '"on_refund": on_payment,')
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 0, output)
        self.assertIn("\nnote     DIGISTORE24_HANDLERS sends on_refund to on_payment, though a handler on_refund is "
                      "defined: is that meant?\n", output)
        output = self.command("check")[1]
        for told in ("DIGISTORE24_HANDLERS sends", "PROMOPIT_HANDLERS sends", "not one of the events we know of"):
            self.assertNotIn(told, output)                  # (as shipped)
        # A handler with no name of its own, and a long value, in another's table: named so.
        said = []
        with mock.patch.dict(ipn_receiver.PROMOPIT_HANDLERS, {"sale": functools.partial(ipn_receiver.on_payment)}), \
                mock.patch.dict(ipn_receiver.DIGISTORE24_HANDLERS, {"on_refund": "x" * 100}):
            ipn_receiver.check_handler_tables(lambda ok, text, fix: said.append(text), said.append)
        self.assertEqual(said[1:], ["DIGISTORE24_HANDLERS's line for 'on_refund' names '%s, which is not a function"
                                % ("x" * 59), "PROMOPIT_HANDLERS sends sale to another function, though a handler "
                                               "sale is defined: is that meant?"])

    def test_notifications_stored_while_their_event_had_no_handler_are_a_problem_once_it_has(self):
        with mock.patch.dict(ipn_receiver.DIGISTORE24_HANDLERS):
            del ipn_receiver.DIGISTORE24_HANDLERS["on_payment"]
            self.assertEqual(post(payment("1")).body, "OK")
        post(payment("2"))
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  1 notification stored with no handler run, whose event has one now: "
                      "#1 on_payment\n         fix: `replay ID --force` runs", output)
        code, _, error = self.command("replay", "1")
        self.assertIn("notification #1 is ignored; replay runs failed ones (and abandoned and unknown ones). Add "
                      "--force to run its handler now anyway", error)

    def test_a_name_of_the_vendors_that_the_code_below_defines_too_is_a_configuration_error(self):
        # A helper of the vendor's named like one of the receiver's: the receiver's replaced it, and
        # the handler called that one, silently (the 63rd review: a CRM call sent no token, and the
        # buyer got OK and login data though the CRM granted nothing).
        helper = ("\n\ndef post_form(url, fields):\n    return my_crm(url, fields)\n\n\n"
                  "from time import time\n\n\ndef sale(notification):")
        script = self.edited_copy("\n\ndef sale(notification):", helper)
        with open(script, encoding="utf-8") as file:
            line = file.read().split("\n").index("def post_form(url, fields):") + 1
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  settings: the receiver's own code below the banner defines post_form, time too, "
                      "which replaces yours at the top of ipn_receiver.py: your handlers would call the receiver's. "
                      "Rename yours (my_post_form, say), and where your handlers use it\n", output)
        body = b"&".join(b"%s=%s" % (key.encode(), value.encode()) for key, value in payment().items())
        done = subprocess.run([PYTHON, script], input=body, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=cgi_environment(self.data_dir, body=body), timeout=60)
        status, _, answer = parse_cgi_output(done.stdout)
        # The caller is told the file and the line (of the first name that is a function of the
        # vendor's: time is another module's); the names go to the error log only.
        self.assertEqual((status, answer.decode()), (503, "ERROR: configuration error in ipn_receiver.py line %d; run "
                         "`python3 ipn_receiver.py check` on the server to see what to change" % line))
        self.assertNotIn(b"post_form", done.stdout)
        self.assertIn(b"configuration error: the receiver's own code below the banner defines post_form, time too",
                      done.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "events.sqlite3")))
        # A class of the vendor's: named, with no line (only a function's is told).
        script = self.edited_copy("\n\ndef sale(notification):", "\n\nclass Log:\n    pass\n\n\n"
                                  "def sale(notification):")
        done = subprocess.run([PYTHON, script], input=body, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=cgi_environment(self.data_dir, body=body), timeout=60)
        self.assertEqual(parse_cgi_output(done.stdout)[2].decode(), "ERROR: configuration error in ipn_receiver.py; "
                         "run `python3 ipn_receiver.py check` on the server to see what to change")
        self.assertIn(b"defines Log too", done.stderr)
        # A name of the vendor's that is the receiver's own thing (import os, as the code below
        # does), or equal to it (the 64th review: a HERE worked out as the receiver does), is no
        # clash; nor are handlers a wrapper or a test puts in after the file has run.
        script = self.edited_copy("\n\ndef sale(notification):", "\n\nimport os\nHERE = os.path.dirname("
                                  "os.path.realpath(__file__))\nLOG_FILE_BACKUPS = 3\n\n\ndef sale(notification):")
        self.assertNotIn("name", self.command("check", script=script)[1].partition("PROBLEM  settings")[2])
        self.assertEqual(ipn_receiver.NAMES_TAKEN_OVER, [])
        with mock.patch.object(ipn_receiver, "on_payment", lambda notification: None):
            self.assertEqual(ipn_receiver.settings_written_here()["DATA_DIR"], ipn_receiver.DATA_DIR)

    def test_a_handler_defined_twice_is_a_problem(self):
        # The vendor's on_payment pasted above the one the file came with: Python kept the later,
        # every sale was answered OK and granted nothing, and check said "all good" (the 64th review).
        mine = "def on_payment(notification):\n    grant(notification)\n\n\ndef connection_test(notification):"
        script = self.edited_copy("def connection_test(notification):", mine)
        with open(script, encoding="utf-8") as file:
            lines = [number for number, line in enumerate(file.read().split("\n"), 1)
                     if line == "def on_payment(notification):"]
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  on_payment is defined 2 times in ipn_receiver.py (lines %d, %d): Python keeps the "
                      "last one, and the others never run\n         fix: keep one: delete the others, or rename them\n"
                      % tuple(lines), output)
        # The one the file came with, alone, is a note: it answers every sale OK and grants nothing.
        placeholder = ("note     on_payment is the one the file came with: it logs each payment, grants nothing, and the "
                       "sale is answered OK. Write yours in its place")
        self.assertIn(placeholder, output)
        code, output, _ = self.command("check")
        self.assertNotIn("defined 2 times", output)
        self.assertIn(placeholder, output)
        script = self.edited_copy('    log.info("payment for order %s, product %s, pay_sequence_no %s: nothing done '
                                  'yet (edit on_payment)",', '    grant(notification)\n    log.info("payment %s %s %s",')
        self.assertNotIn("on_payment is the one the file came with", self.command("check", script=script)[1])

    def test_settings_from_the_environment_are_named_as_the_web_servers_to_give(self):
        # The passphrase set in the shell alone: check said all good, and every call was refused
        # with "run check" (the 64th review).
        code, output, _ = self.command("check", IPN_LOG_LEVEL="DEBUG")
        for name, variable in (("SHA_PASSPHRASE", "IPN_SHA_PASSPHRASE"), ("LOG_LEVEL", "IPN_LOG_LEVEL")):
            self.assertIn("note     %s comes from the environment variable %s: the web server must give the receiver "
                          "the same (Apache's SetEnv does not reach it through suEXEC, nor a WSGI app; config.ini "
                          "does)\n" % (name, variable), output)
        self.assertNotIn("MAX_BODY_BYTES comes from", output)

    def test_a_setting_edited_at_the_top_but_set_in_config_ini_too_is_a_problem(self):
        # config.example.ini copied whole set all four [receiver] settings: a PROCESSING_TIMEOUT
        # raised at the top of the script for a slow handler did nothing, and the handler was taken
        # over and run twice (the 63rd review).
        script = self.edited_copy("\nPROCESSING_TIMEOUT = 300\n", "\nPROCESSING_TIMEOUT = 900\n")
        config_file = os.path.join(os.path.dirname(script), "config.ini")
        with open(os.open(config_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
            file.write("[receiver]\nprocessing_timeout = 300\n")
        os.utime(config_file, (time.time() - 2, time.time() - 2))
        problem = ("PROBLEM  PROCESSING_TIMEOUT = 900 at the top of ipn_receiver.py is not in effect: %s sets it\n"
                   "         fix: set it in one place: there, or delete it there to use the value at the top of the "
                   "file\n")
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn(problem % "config.ini line 2, [receiver] processing_timeout", output)
        code, output, _ = self.command("check", script=script, IPN_PROCESSING_TIMEOUT="600")
        self.assertIn(problem % "environment variable IPN_PROCESSING_TIMEOUT", output)
        # As shipped, the value at the top is the default: config.ini may set it, as it is for.
        os.remove(config_file)
        self.assertNotIn("not in effect", self.command("check", script=script)[1])
        self.assertNotIn("not in effect", self.command("check", IPN_PROCESSING_TIMEOUT="600")[1])

    def edited_copy(self, old, new, *more):
        """A copy of the script, in a folder of its own, with `old` replaced by `new` (and each pair of `more`)."""
        with open(SCRIPT, encoding="utf-8") as file:
            source = file.read()
        for old, new in [(old, new)] + list(zip(more[::2], more[1::2])):
            self.assertIn(old, source)
            source = source.replace(old, new)
        folder = tempfile.mkdtemp(prefix="ipn-site-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = os.path.join(folder, "ipn_receiver.py")
        with open(script, "w", encoding="utf-8") as file:
            file.write(source)
        os.chmod(script, 0o755)
        return script

    def check_with_the_passphrase_written(self, line):
        """check's output for a copy of the script whose SHA_PASSPHRASE line is `line`."""
        script = self.last_script = self.edited_copy('SHA_PASSPHRASE = r"PASTE-YOUR-DIGISTORE24-IPN-PASSPHRASE-HERE"',
                                                     line)
        code, output, _ = self.command("check", script=script, IPN_SHA_PASSPHRASE="", PYTHONWARNINGS="ignore")
        self.assertNotIn("secretZ", output)
        return output

    def assert_the_problem_told_only_where_it_is(self, line, problem, told, not_told):
        """check tells `told` about the passphrase written as `line` if `problem`, and never `not_told`."""
        with self.subTest(line=line):
            output = self.check_with_the_passphrase_written(line)
            self.assertEqual("PROBLEM  SHA_PASSPHRASE at the top of ipn_receiver.py " + told in output, problem,
                             output)
            self.assertNotIn(not_told, output)

    def test_send_warns_of_what_check_finds_in_the_secret_it_uses_and_only_that(self):
        # It signs with the secret as the receiver reads it, so its call may pass where the
        # sender's fail (the 48th review). The other secret's mistakes are check's to tell.
        script = self.edited_copy('ISN_KEY = r"PASTE-YOUR-PROMOPIT-ISN-KEY-HERE"', 'ISN_KEY = "isn\\dkey-secretZ"')
        with socket.socket() as probe:                  # (a port nobody listens on: the warning comes first)
            probe.bind(("127.0.0.1", 0))
            url = "http://127.0.0.1:%d/" % probe.getsockname()[1]
        warnings = {}
        for event, environment in (("sale", {}), ("on_payment", {}), ("on_payment", {"IPN_SHA_PASSPHRASE": "a-long-passphrase #b"}),
                                   ("sale", {"IPN_ISN_KEY": "an-isn-key-in-use"})):
            code, output, errors = self.command("send", event, "--url", url, script=script, PYTHONWARNINGS="ignore",
                                                **dict({"IPN_ISN_KEY": ""}, **environment))
            self.assertTrue(output.startswith("ERROR: could not reach"), output + errors)
            warnings[event, bool(environment)] = errors
        self.assertEqual(warnings["sale", False], "WARNING: ISN_KEY (ISN_KEY at the top of ipn_receiver.py) is "
                         "written without the r before its quotes: send uses it as the receiver reads it, so its call "
                         "may pass where the sender's fail; %s\n" % (ipn_receiver.SECRET_MISTAKES["escapes"][1] %
                                                                     "ISN_KEY"))
        self.assertEqual(warnings["on_payment", False], "")
        self.assertEqual(warnings["on_payment", True], "")          # (" #" starts no comment but in config.ini)
        # The key in use comes from elsewhere: the one miswritten in the file is check's to tell.
        self.assertEqual(warnings["sale", True], "")
        ini = os.path.join(os.path.dirname(script), "config.ini")
        with open(ini, "w") as file:
            file.write("[digistore24]\nsha_passphrase = a-passphrase #b\n")
        os.chmod(ini, 0o600)
        errors = self.command("send", "on_payment", "--url", url, script=script, IPN_SHA_PASSPHRASE="")[2]
        self.assertIn("WARNING: SHA_PASSPHRASE (config.ini line 2, [digistore24] sha_passphrase) has what looks like a "
                      "comment after it", errors)

    def test_a_passphrase_written_in_the_file_without_r_is_a_problem(self):
        # In a plain string Python reads "\d" as a backslash and d, but warns (3.12 and later, with
        # the line, secret and all, in the error log), and reads "\t" as a tab: not what was pasted.
        for line, problem in (('SHA_PASSPHRASE = "Xy7\\dQ9#pL2\\wsecretZ"', True),
                              ("SHA_PASSPHRASE = 'tab\\thereZsecretZ'", True),
                              ('SHA_PASSPHRASE = r"Xy7\\dQ9#pL2\\wsecretZ"', False),
                              ('SHA_PASSPHRASE = "plain-passphrase-secretZ"', False)):
            self.assert_the_problem_told_only_where_it_is(line, problem, "is written without the r before its "
                                                          "quotes", not_told="holds a quote")

    def test_a_passphrase_with_a_quote_in_the_file_is_a_problem(self):
        # r"Kx9vQ2mZ7pL"#4wR8tY": the string ends at the second quote, and the rest is a comment, so
        # every genuine call would be refused with 403 while the passphrase seemed set.
        for line, problem in (('SHA_PASSPHRASE = r"Kx9vQ2mZ7pL"#4wR8tYsecretZ"', True),
                              ("SHA_PASSPHRASE = r'Kx9vQ2mZ7pL'#4wR8tYsecretZ' ", True),
                              ('SHA_PASSPHRASE = r"Kx9vQ2mZ7pL4wR8tYsecretZ"  # from Digistore24', False),
                              ("SHA_PASSPHRASE = r'Kx9vQ2\"mZ7pL4wR8tYsecretZ'", False)):
            self.assert_the_problem_told_only_where_it_is(line, problem, "holds a quote, which ends it early",
                                                          not_told="without the r")

    def test_a_secret_with_spaces_around_it_from_the_environment_or_the_file_is_a_problem(self):
        # config.ini strips a value; the environment and the file do not: a line break at the end of
        # IPN_SHA_PASSPHRASE makes every call a 403 while the passphrase seems set.
        for value in (PASSPHRASE + "\n", " " + PASSPHRASE, PASSPHRASE + "\t"):
            code, output, _ = self.command("check", IPN_SHA_PASSPHRASE=value)
            self.assertEqual(code, 1, output)
            self.assertIn("PROBLEM  SHA_PASSPHRASE (environment variable IPN_SHA_PASSPHRASE) begins or ends with a "
                          "space, a tab or a line break\n         fix: remove them where SHA_PASSPHRASE is set", output)
            self.assertNotIn(PASSPHRASE, output)
        output = self.check_with_the_passphrase_written('SHA_PASSPHRASE = r"passphrase-secretZ "')
        self.assertIn("PROBLEM  SHA_PASSPHRASE (SHA_PASSPHRASE at the top of ipn_receiver.py) begins or ends with a "
                      "space", output)
        self.assertEqual(self.command("check", IPN_SHA_PASSPHRASE="pass phrase-in-the-middle")[0], 0)

    def test_a_secret_in_a_script_every_user_can_read_is_a_problem(self):
        # chmod 755, as CGI wants: where the folder can be reached, every user of a shared server
        # reads the passphrase. (In config.ini the same secret gets "chmod 600".)
        output = self.check_with_the_passphrase_written('SHA_PASSPHRASE = r"passphrase-secretZ"')
        script_problem = ("PROBLEM  SHA_PASSPHRASE, set in ipn_receiver.py, can be read by other users of this server "
                          "(mode 755)\n         fix: chmod 700 ")
        self.assertIn(script_problem, output)
        self.assertIn(", where the web server runs it as its owner (suEXEC, as on cPanel); else move the secrets into "
                      "config.ini, readable by the web server's user only, and put the placeholders back\n", output)
        # Readable through a group another user is in (the 53rd review; nobody's own group here).
        if os.geteuid() == 0:
            os.chown(self.last_script, -1, 65534)
            for mode, problem in ((0o750, True), (0o710, False)):
                os.chmod(self.last_script, mode)
                output = self.command("check", script=self.last_script, IPN_SHA_PASSPHRASE="", PYTHONWARNINGS="ignore")[1]
                self.assertEqual(script_problem.replace("755", "%03o" % mode) in output, problem, output)
            os.chmod(self.last_script, 0o755)
        # Moved into config.ini, but left in the script too: as readable as before.
        config = os.path.join(os.path.dirname(self.last_script), "config.ini")
        with open(config, "w") as file:
            file.write("[digistore24]\nsha_passphrase = %s\n" % PASSPHRASE)
        os.chmod(config, 0o600)
        code, output, _ = self.command("check", script=self.last_script, IPN_SHA_PASSPHRASE="", PYTHONWARNINGS="ignore")
        self.assertIn("SHA_PASSPHRASE is set (config.ini line 2, [digistore24] sha_passphrase)", output)
        self.assertIn(script_problem, output)
        os.remove(config)
        # Its compiled copies (a launcher imports it) have the mode it had then: readable too.
        cache = os.path.join(os.path.dirname(self.last_script), "__pycache__")
        os.makedirs(cache)
        for name, mode in (("ipn_receiver.cpython-311.pyc", 0o644), ("ipn_receiver.cpython-36.pyc", 0o600),
                           ("other.cpython-311.pyc", 0o644)):
            open(os.path.join(cache, name), "w").close()
            os.chmod(os.path.join(cache, name), mode)
        os.chmod(self.last_script, 0o750)
        code, output, _ = self.command("check", script=self.last_script, IPN_SHA_PASSPHRASE="", PYTHONWARNINGS="ignore")
        self.assertNotIn("ipn_receiver.py, can be read by every user", output)
        self.assertIn("PROBLEM  copies of the settings, secrets and all, can be read by other users of this server "
                      "(ipn_receiver.cpython-311.pyc)\n         fix: rm -r %s (Python writes its compiled copies "
                      "again with the script's mode: so chmod 700 the script first, where it may be)\n" % cache, output)
        os.chmod(self.last_script, 0o600)         # no run bit: the fix keeps the secret private
        code, output, _ = self.command("check", script=self.last_script, IPN_SHA_PASSPHRASE="", PYTHONWARNINGS="ignore")
        self.assertIn("ipn_receiver.py has its run bit set: not so. A web server that runs it as a CGI program "
                      "(Apache, lighttpd, nginx with fcgiwrap) needs that; a WSGI server does not. Fix: chmod 700 ",
                      output)   # not 755
        os.chmod(self.last_script, 0o750)
        os.chmod(os.path.join(cache, "ipn_receiver.cpython-311.pyc"), 0o640)
        code, output, _ = self.command("check", script=self.last_script, IPN_SHA_PASSPHRASE="", PYTHONWARNINGS="ignore")
        self.assertNotIn("can be read by every user", output)
        # A placeholder, or a secret from the environment, is not in the script.
        os.chmod(self.last_script, 0o755)
        for environment in ({"IPN_SHA_PASSPHRASE": PASSPHRASE}, {"IPN_SHA_PASSPHRASE": ""}):
            code, output, _ = self.command("check", script=SCRIPT, **environment)
            self.assertNotIn("PROBLEM  SHA_PASSPHRASE, set in", output)
            self.assertNotIn("PROBLEM  copies of the settings", output)    # (the tests' own compiled copy: a note)

    def test_copies_of_the_settings_other_users_can_read_are_a_problem_or_a_note(self):
        # An editor's backup copy of config.ini holds the secrets; a compiled copy of the script holds
        # them where the script did (once, maybe: only a note where it holds none now).
        folder = tempfile.mkdtemp(prefix="ipn-site-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = shutil.copy(SCRIPT, folder)
        os.makedirs(os.path.join(folder, "__pycache__"))
        for name in ("__pycache__/ipn_receiver.cpython-311.pyc", "#config.ini#", "config (1).ini"):
            with open(os.path.join(folder, name), "w") as file:
                file.write("x")
            os.chmod(os.path.join(folder, name), 0o644)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  copies of the settings, secrets and all, can be read by other users of this server "
                      "(#config.ini#, config (1).ini, ipn_receiver.cpython-311.pyc)\n", output)
        os.chmod(os.path.join(folder, "#config.ini#"), 0o600)
        os.chmod(os.path.join(folder, "config (1).ini"), 0o600)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 0, output)
        self.assertIn("note     compiled copies of ipn_receiver.py can be read by other users of this server "
                      "(ipn_receiver.cpython-311.pyc); if it ever held a secret, delete them: rm -r %s\n"
                      % os.path.join(folder, "__pycache__"), output)

    def site_with(self, files):
        """A folder with the script (mode 755) and `files` ({name: text}), which every user may read:
        (the folder, the script)."""
        folder = tempfile.mkdtemp(prefix="ipn-site-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = shutil.copy(SCRIPT, folder)
        os.chmod(script, 0o755)
        for name, text in files.items():
            with open(os.path.join(folder, name), "w") as file:
                file.write(text)
            os.chmod(os.path.join(folder, name), 0o644)
        return folder, script

    def test_any_file_beside_the_script_that_holds_a_secret_in_use_is_a_problem(self):
        # Whatever its name: config.example.ini filled in rather than copied, a file manager's
        # "Copy of config.ini", a note. Each one other users can read gives them the secret.
        folder, script = self.site_with({name: "[digistore24]\nsha_passphrase = %s\n" % secret for name, secret in (
            ("config.example.ini", PASSPHRASE), ("Copy of config.ini", PASSPHRASE), ("notes.txt", ISN_KEY),
            ("other.txt", "no secret here"))})
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  copies of the settings, secrets and all, can be read by other users of this server "
                      "(Copy of config.ini, config.example.ini, notes.txt)\n         fix: delete Copy of config.ini, "
                      "config.example.ini, notes.txt (or chmod 600 and move out of the web space what you keep)\n",
                      output)     # (nothing of compiled copies: the 59th review)
        for name in ("config.example.ini", "Copy of config.ini", "notes.txt"):
            os.chmod(os.path.join(folder, name), 0o600)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 0, output)

    def test_config_example_ini_filled_in_rather_than_copied_is_a_problem(self):
        # The receiver never reads it: the vendor's secret is not the one in effect, and check said
        # only "no config file" (the 59th review). Private or not, it is named.
        with open(os.path.join(REPO, "config.example.ini"), encoding="utf-8") as file:
            example = file.read()
        filled = example.replace("PASTE-YOUR-DIGISTORE24-IPN-PASSPHRASE-HERE", PASSPHRASE)
        self.assertNotEqual(filled, example)
        folder, script = self.site_with({"config.example.ini": filled})
        os.chmod(os.path.join(folder, "config.example.ini"), 0o600)
        problem = ("PROBLEM  config.example.ini sets SHA_PASSPHRASE, not as in effect: the receiver reads config.ini, "
                   "never the example\n         fix: if it is yours, copy it: install -m 600 %s %s; then delete "
                   "config.example.ini, which holds a secret\n" % (os.path.join(folder, "config.example.ini"),
                                                                    os.path.join(folder, "config.ini")))
        for environment, reported in (({"IPN_SHA_PASSPHRASE": ""}, True), ({"IPN_SHA_PASSPHRASE": "another-one-42"},
                                                                          True), ({}, False)):
            with self.subTest(environment=environment):
                code, output, _ = self.command("check", script=script, **environment)
                self.assertEqual(problem in output, reported, output)
        both = filled.replace("PASTE-YOUR-PROMOPIT-ISN-KEY-HERE", ISN_KEY)
        with open(os.path.join(folder, "config.example.ini"), "w", encoding="utf-8") as file:
            file.write(both)
        output = self.command("check", script=script, IPN_SHA_PASSPHRASE="", IPN_ISN_KEY="")[1]
        self.assertIn("PROBLEM  config.example.ini sets SHA_PASSPHRASE and ISN_KEY, not as in effect", output)
        # Copied as the fix says: config.ini is read, and the example left as shipped says nothing.
        os.rename(os.path.join(folder, "config.example.ini"), os.path.join(folder, "config.ini"))
        with open(os.path.join(folder, "config.example.ini"), "w", encoding="utf-8") as file:
            file.write(example)
        code, output, _ = self.command("check", script=script, IPN_SHA_PASSPHRASE="", IPN_DATA_DIR="", IPN_ISN_KEY="")
        self.assertNotIn("config.example.ini sets", output)
        self.assertIn("SHA_PASSPHRASE is set (config.ini line ", output)

    def test_a_copy_of_the_store_beside_the_script_that_others_may_read_is_a_problem(self):
        # `sqlite3 ipn_data/events.sqlite3 ".backup copy.sqlite3"` under umask 022 (the 42nd review):
        # every buyer's data and the access data handed out, for every user of the server.
        folder, script = self.site_with({"copy.sqlite3": "x", "events.sqlite3.bak": "x", "notes.txt": "x"})
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  copies of an event store beside the script can be read by other users of this server "
                      "(copy.sqlite3, events.sqlite3.bak)\n         fix: chmod 600 them and move them out of the web "
                      "space (they hold every buyer's data and the access data handed out); make copies as README.md "
                      "says, under umask 077\n", output)
        for name in ("copy.sqlite3", "events.sqlite3.bak"):
            os.chmod(os.path.join(folder, name), 0o600)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 0, output)

    def test_a_data_dir_where_other_users_may_make_or_move_folders_is_a_problem(self):
        # Another user could make the data folder first (the receiver then refuses it: 503 for every
        # call), or move it away where the folder above is not sticky (and every handler runs again).
        shared = os.path.join(self.data_dir, "shared")
        os.mkdir(shared)
        os.mkdir(os.path.join(shared, "made"), 0o700)
        problem = "PROBLEM  DATA_DIR %s: another user of this server may make, move or replace folders in %s\n"
        for mode, name, reported in ((0o777, "made", True), (0o777, "not-yet", True), (0o1777, "made", False),
                                     (0o1777, "not-yet", True), (0o1777, "not-yet/below", True),
                                     (0o755, "not-yet", False), (0o755, "not-yet/below", False),
                                     (0o775, "made", False), (0o3775, "made", False)):
            # (0o775: its group is this user's own, and no one else's)
            with self.subTest(mode=oct(mode), name=name):
                os.chmod(shared, mode)
                data_dir = os.path.join(shared, name)
                code, output, _ = self.command("check", IPN_DATA_DIR=data_dir)
                self.assertEqual(problem % (data_dir, shared) in output, reported, output)
                self.assertEqual(code, 1 if reported else 0, output)      # (the receiver makes both folders)
                # A folder open to all by design (sticky, as /tmp is) is never to be closed: check run
                # as root told the vendor to chmod go-w /tmp (the 72nd review).
                self.assertEqual("fix: chmod go-w %s " % shared in output, reported and mode == 0o777, output)
                if reported and mode == 0o1777:
                    self.assertIn("fix: set DATA_DIR to a folder in your home folder", output)
        if os.geteuid() == 0:                   # (root's, or this user's: those may)
            os.chmod(shared, 0o755)
            os.chown(shared, 65534, 65534)      # nobody's: nobody may move what is in it
            data_dir = os.path.join(shared, "made")
            code, output, _ = self.command("check", IPN_DATA_DIR=data_dir)
            self.assertIn(problem % (data_dir, shared), output)
            os.chown(shared, 0, 65534)
            os.chmod(shared, 0o775)             # root's, but nobody's group (nobody's own) may write to it
            code, output, _ = self.command("check", IPN_DATA_DIR=data_dir)
            self.assertIn(problem % (data_dir, shared), output)
            os.chmod(shared, 0o1775)            # sticky: nobody may not move "made", but may make "not-yet"
            for name, reported in (("made", False), ("not-yet", True)):
                data_dir = os.path.join(shared, name)
                code, output, _ = self.command("check", IPN_DATA_DIR=data_dir)
                self.assertEqual((problem % (data_dir, shared) in output, code), (reported, int(reported)), output)

    def test_data_dir_in_config_ini_with_a_secret_set_elsewhere_is_a_problem(self):
        # While config.ini is missing (renamed while it is edited, deleted before an upload), the
        # secret set elsewhere still verifies calls, and a store in another folder runs them again.
        folder = tempfile.mkdtemp(prefix="ipn-config-")
        self.addCleanup(shutil.rmtree, folder, True)
        config = os.path.join(folder, "config.ini")
        with open(config, "w") as file:
            file.write("[digistore24]\nsha_passphrase = %s\n[receiver]\ndata_dir = %s\n" % (PASSPHRASE, self.data_dir))
        os.chmod(config, 0o600)
        code, output, _ = self.command("check", IPN_CONFIG=config, IPN_DATA_DIR="", IPN_SHA_PASSPHRASE="")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  DATA_DIR is set in config.ini, but ISN_KEY elsewhere\n         fix: set ISN_KEY in "
                      "config.ini only, not at the top of ipn_receiver.py or in the environment (or DATA_DIR where "
                      "they are)", output)
        code, output, _ = self.command("check", IPN_CONFIG=config, IPN_DATA_DIR="", IPN_SHA_PASSPHRASE="",
                                       IPN_ISN_KEY="")
        self.assertEqual(code, 0, output)
        code, output, _ = self.command("check", IPN_CONFIG=config)      # DATA_DIR from the environment
        self.assertNotIn("DATA_DIR is set in", output)

    def test_data_dir_in_config_ini_naming_the_folder_it_would_be_without_is_no_problem(self):
        # config.example.ini copied as the README says, its data_dir = ipn_data the default, and the
        # passphrase at the top of the script as step 1 says: nothing moves should config.ini go
        # missing (the 59th review: check failed the README's own setup).
        script = self.edited_copy('SHA_PASSPHRASE = r"PASTE-YOUR-DIGISTORE24-IPN-PASSPHRASE-HERE"',
                                  'SHA_PASSPHRASE = r"%s"' % PASSPHRASE)
        folder = os.path.dirname(script)
        os.chmod(script, 0o700)
        config = shutil.copy(os.path.join(REPO, "config.example.ini"), os.path.join(folder, "config.ini"))
        os.chmod(config, 0o600)
        for data_dir, reported in (("ipn_data", False), (os.path.join(folder, "ipn_data"), False),
                                   (os.path.join(folder, "elsewhere"), True)):
            with open(config, "w") as file:
                file.write("[receiver]\ndata_dir = %s\n" % data_dir)
            code, output, _ = self.command("check", script=script, IPN_DATA_DIR="", IPN_SHA_PASSPHRASE="",
                                           IPN_ISN_KEY="")
            self.assertEqual("PROBLEM  DATA_DIR is set in config.ini, but SHA_PASSPHRASE elsewhere\n" in output,
                             reported, output)

    def test_data_dir_in_config_ini_with_a_secret_left_in_the_script_too_is_a_problem(self):
        # config.ini holds both, and the script still holds the passphrase: while config.ini is
        # missing for a moment, calls verify, and go to the store in the default folder.
        script = self.edited_copy('SHA_PASSPHRASE = r"PASTE-YOUR-DIGISTORE24-IPN-PASSPHRASE-HERE"',
                                  'SHA_PASSPHRASE = r"%s"' % PASSPHRASE)
        folder = os.path.dirname(script)
        os.chmod(script, 0o700)
        with open(os.path.join(folder, "config.ini"), "w") as file:
            file.write("[receiver]\ndata_dir = %s\n[digistore24]\nsha_passphrase = %s\n[promopit]\nisn_key = %s\n"
                       % (self.data_dir, PASSPHRASE, ISN_KEY))
        os.chmod(os.path.join(folder, "config.ini"), 0o600)
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR="", IPN_SHA_PASSPHRASE="", IPN_ISN_KEY="")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  DATA_DIR is set in config.ini, but SHA_PASSPHRASE elsewhere\n", output)

    def test_a_launcher_that_cannot_run_as_cgi_is_a_problem(self):
        folder = tempfile.mkdtemp(prefix="ipn-site-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = shutil.copy(SCRIPT, folder)
        launcher = os.path.join(folder, "ipn.py")
        with open(launcher, "w", newline="\r\n") as file:
            file.write(snippet("launcher"))
        os.chmod(launcher, 0o644)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  ipn.py starts with a shebang line ending in LF\n         fix: save the file with Unix "
                      "(LF) line endings", output)
        self.assertIn("PROBLEM  ipn.py has its run bit set\n         fix: chmod 755 %s" % launcher, output)
        with open(launcher, "w") as file:
            file.write(snippet("launcher"))
        os.chmod(launcher, 0o755)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 0, output)
        self.assertIn("ok       ipn.py has its run bit set\n", output)

    def test_the_scripts_run_bit_is_a_problem_only_where_it_is_run_as_cgi(self):
        # Apache's .htaccess, or a cgi-bin, runs the script as CGI: without its run bit, every call
        # is a 500. A WSGI server imports it; lighttpd and nginx may run it: check cannot tell, and
        # notes it. Where passenger_wsgi.py imports it, the script itself never runs; beside a
        # launcher, it may still be the URL registered.
        root = tempfile.mkdtemp(prefix="ipn-site-")
        self.addCleanup(shutil.rmtree, root, True)
        problem = "PROBLEM  ipn_receiver.py has its run bit set\n         fix: chmod 755 "
        noted = "note     ipn_receiver.py has its run bit set: not so. A web server that runs it as a CGI program"
        for folder, beside, found in (("ipn", None, noted), ("ipn-htaccess", ".htaccess", problem),
                                      (os.path.join("cgi-bin", "ipn"), None, problem),
                                      ("ipn-passenger", "passenger_wsgi.py", None), ("ipn-launcher", "ipn.py", noted)):
            with self.subTest(folder=folder):
                os.makedirs(os.path.join(root, folder))
                script = shutil.copy(SCRIPT, os.path.join(root, folder))
                os.chmod(script, 0o644)
                if beside:
                    with open(os.path.join(root, folder, beside), "w") as file:
                        file.write(snippet({".htaccess": "apache-htaccess", "ipn.py": "launcher"}.get(beside, "passenger-wsgi")))
                    os.chmod(os.path.join(root, folder, beside), 0o755 if beside == "ipn.py" else 0o644)
                code, output, _ = self.command("check", script=script)
                self.assertEqual(code, 1 if found == problem else 0, output)
                for text in (problem, noted):
                    (self.assertIn if text == found else self.assertNotIn)(text, output)
                self.assertNotIn("ipn_receiver.py has its run bit set", output.replace(found or "-", ""))

    def test_check_through_a_wrapper_looks_at_the_settings_the_wrapper_gives(self):
        # README's "Your handlers" says to run check through the wrapper; where the wrapper calls
        # use_settings(), check looked at the file's settings instead (the 66th review).
        folder, data_dir = tempfile.mkdtemp(prefix="ipn-site-"), tempfile.mkdtemp(prefix="ipn-wrapped-")
        self.addCleanup(shutil.rmtree, folder, True)
        self.addCleanup(shutil.rmtree, data_dir, True)
        shutil.copy(SCRIPT, folder)
        wrapper = os.path.join(folder, "wrapper.py")
        with open(wrapper, "w") as file:
            file.write("import sys\nimport ipn_receiver\nipn_receiver.use_settings(SHA_PASSPHRASE=%r, DATA_DIR=%r)\n"
                       'if __name__ == "__main__":\n    sys.exit(ipn_receiver.main())\n'
                       % ("a-wrapper-passphrase-secretZ", data_dir))
        os.chmod(wrapper, 0o644)
        output = self.command("check", script=wrapper, IPN_SHA_PASSPHRASE="", IPN_ISN_KEY="", IPN_DATA_DIR="")[1]
        self.assertIn("data folder %s" % data_dir, output)
        self.assertNotIn("neither SHA_PASSPHRASE nor ISN_KEY is set", output)
        self.assertNotIn("secretZ", output)
        # The passphrase it holds: the wrapper is kept from other users as the script would be, not
        # taken for a copy to delete.
        self.assertIn("PROBLEM  SHA_PASSPHRASE, set in wrapper.py, can be read by other users of this server (mode "
                      "644)\n         fix: chmod 700 %s, where" % wrapper, output)
        self.assertIn("fix: chmod 700 %s   (needed to run as CGI)" % wrapper, output)
        self.assertNotIn("delete wrapper.py", output)

    def test_a_wsgi_wrapper_that_runs_the_commands_too_is_no_launcher(self):
        # README's "Your handlers": passenger_wsgi.py that changes a handler, and runs main() for
        # `replay` through it. A WSGI server imports it: no shebang line, no run bit needed.
        folder = tempfile.mkdtemp(prefix="ipn-site-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = shutil.copy(SCRIPT, folder)
        wrapper = os.path.join(folder, "passenger_wsgi.py")
        with open(wrapper, "w") as file:
            file.write(snippet("passenger-wsgi") + 'if __name__ == "__main__":\n    sys.exit(ipn_receiver.main())\n')
        os.chmod(wrapper, 0o644)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 0, output)
        self.assertNotIn("passenger_wsgi.py starts with", output)
        self.assertNotIn("passenger_wsgi.py has its run bit", output)
        # A launcher without its shebang line is told to get one, not to change its line endings.
        launcher = os.path.join(folder, "ipn.py")
        with open(launcher, "w") as file:
            file.write(snippet("launcher").split("\n", 1)[1])
        os.chmod(launcher, 0o755)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  ipn.py starts with a shebang line ending in LF\n         fix: make #!/usr/bin/env "
                      "python3 its first line, as in README.md; without it, a CGI call fails with 500\n", output)

    def test_a_script_with_crlf_beside_a_launcher_in_an_htaccess_folder_is_a_problem(self):
        # The launcher is optional: the URL registered may be the script's own, as README.md's step 3 says.
        folder = tempfile.mkdtemp(prefix="ipn-site-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = os.path.join(folder, "ipn_receiver.py")
        with open(SCRIPT, "rb") as source, open(script, "wb") as copy:
            copy.write(source.read().replace(b"\n", b"\r\n", 1))
        os.chmod(script, 0o755)
        for name, text in (("ipn.py", snippet("launcher")), (".htaccess", snippet("apache-htaccess"))):
            with open(os.path.join(folder, name), "w") as file:
                file.write(text)
        os.chmod(os.path.join(folder, "ipn.py"), 0o755)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  ipn_receiver.py starts with a shebang line ending in LF\n         fix: save the file with "
                      "Unix (LF) line endings", output)
        self.assertIn("ok       ipn.py starts with a shebang line ending in LF\n", output)

    def test_crlf_line_endings_are_a_problem_wherever_the_script_is_and_a_missing_run_bit_a_note(self):
        # In a folder that tells nothing of how it runs (lighttpd, nginx, or a WSGI server): check said
        # "all good" for a file every CGI call of which failed (the 62nd review). A WSGI server
        # reads CRLF, but the line endings are an upload's mistake, and fixing them harms nothing.
        folder = tempfile.mkdtemp(prefix="ipn-site-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = os.path.join(folder, "ipn_receiver.py")
        with open(SCRIPT, "rb") as source, open(script, "wb") as copy:
            copy.write(source.read().replace(b"\n", b"\r\n"))
        os.chmod(script, 0o644)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  ipn_receiver.py starts with a shebang line ending in LF\n         fix: save the file "
                      "with Unix (LF) line endings (sed -i 's/\\r$//' %s); with CRLF a CGI call fails with 500\n"
                      % script, output)
        self.assertIn("note     ipn_receiver.py has its run bit set: not so. A web server that runs it as a CGI "
                      "program (Apache, lighttpd, nginx with fcgiwrap) needs that; a WSGI server does not.", output)
        with open(script, "wb") as copy, open(SCRIPT, "rb") as source:
            copy.write(b"\xef\xbb\xbf" + source.read())
        self.assertIn("PROBLEM  ipn_receiver.py starts with a shebang line ending in LF\n         fix: save the file "
                      "as UTF-8 without a BOM (the byte order mark some Windows editors write first), with Unix (LF) "
                      "line endings (sed -i '1s/^\\xef\\xbb\\xbf//; s/\\r$//' %s); with either, a CGI call fails "
                      "with 500\n" % script, self.command("check", script=script)[1])
        # A shebang line that is right is no news where nothing tells that it runs as CGI.
        shutil.copy(SCRIPT, script)
        self.assertNotIn("shebang line", self.command("check", script=script)[1])
        with open(script, "wb") as copy, open(SCRIPT, "rb") as source:
            copy.write(source.read().partition(b"\n")[2])          # no shebang line: a CGI program's need
        self.assertIn("note     ipn_receiver.py starts with a shebang line ending in LF: not so.",
                      self.command("check", script=script)[1])

    def test_a_healthy_store_set_aside_by_repair_force_is_not_called_damaged(self):
        post(payment())
        ipn_receiver.close_store()
        code, output, errors = self.command("repair", "--force")
        self.assertEqual(code, 0, errors)
        self.assertEqual(output, "set the old store aside beside the new one; the new store holds 1 notifications, "
                                 "integrity ok\n")     # (it said "the damaged store": the 48th review)
        self.assertIn("was set aside (repair --force, though it passed its integrity check); it was moved to "
                      "events.sqlite3.damaged-", self.log_text())
        self.assertNotIn("was damaged", self.log_text())
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  a store was set aside (damaged, or by repair --force): events.sqlite3.damaged-", output)

    def test_a_data_dir_that_is_a_broken_link_is_a_problem(self):
        link = os.path.join(self.data_dir, "data")
        os.symlink(os.path.join(self.data_dir, "nowhere"), link)
        code, output, _ = self.command("check", IPN_DATA_DIR=link)
        self.assertEqual(code, 1, output)
        problem = ("PROBLEM  DATA_DIR %s is a folder\n         fix: %s is a link to %s, which does not exist: make that "
                   "folder, or set DATA_DIR to the folder itself\n")
        nowhere = os.path.join(self.data_dir, "nowhere")
        self.assertIn(problem % (link, link, nowhere), output)
        # One on the way to it: the receiver could not make the data folder there either.
        below = os.path.join(link, "below")
        code, output, _ = self.command("check", IPN_DATA_DIR=below)
        self.assertEqual(code, 1, output)
        self.assertIn(problem % (below, link, nowhere), output)

    def test_a_config_file_the_web_server_reads_through_its_group_is_not_told_to_chmod_600(self):
        # check runs as the web server's user; the file is the vendor's, mode 640: chmod 600 would
        # lock the web server out, and every call would get 503.
        if os.geteuid() != 0:
            self.skipTest("needs root, to give the file another owner")
        folder = tempfile.mkdtemp(prefix="ipn-config-")
        self.addCleanup(shutil.rmtree, folder, True)
        config, script = os.path.join(folder, "ipn.ini"), os.path.join(folder, "ipn_receiver.py")
        with open(config, "w") as file:
            file.write("[receiver]\nlog_level = INFO\n")
        shutil.copy(SCRIPT, script)
        for path in (config, script):
            os.chown(path, 65534, 0)            # the vendor's, as the script is
        for mode, problem in ((0o640, None), (0o644, "PROBLEM  config file %s (mode 644)\n         fix: chmod o-rwx %s   "
                                                    "(the web server's user may read it as its owner or through its "
                                                    "group; no one else may)\n" % (config, config))):
            os.chmod(config, mode)
            code, output, _ = self.command("check", script=script, IPN_CONFIG=config)
            self.assertEqual(code, 1 if problem else 0, output)
            self.assertIn(problem or "ok       config file %s (mode 640)\n" % config, output)
        self.assertIn("note     check runs as root; ipn_receiver.py belongs to nobody. Run check as the user the web "
                      "server runs the receiver as (under suEXEC, as on cPanel: the script's owner)\n", output)

    def test_a_bom_before_the_shebang_is_named_as_such(self):
        # A Windows editor's byte order mark: the file is no longer a program the web server can run.
        root = tempfile.mkdtemp(prefix="ipn-site-")
        self.addCleanup(shutil.rmtree, root, True)
        folder = os.path.join(root, "cgi-bin")
        os.mkdir(folder)
        script = os.path.join(folder, "ipn_receiver.py")
        with open(SCRIPT, "rb") as source, open(script, "wb") as copy:
            copy.write(b"\xef\xbb\xbf" + source.read())
        os.chmod(script, 0o755)
        code, output, _ = self.command("check", script=script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  ipn_receiver.py starts with a shebang line ending in LF\n         fix: save the file "
                      "as UTF-8 without a BOM", output)

    def test_a_secret_in_config_ini_in_quotes_or_with_a_comment_after_it_is_a_problem(self):
        # config.ini takes a value as it is written; other INI readers drop quotes and comments, so
        # a vendor may write them, and every call is refused while the secret seems set.
        folder = tempfile.mkdtemp(prefix="ipn-config-")
        self.addCleanup(shutil.rmtree, folder, True)
        config = os.path.join(folder, "config.ini")
        for value, mistake in (('"%s"' % PASSPHRASE, "is in quotes, which are taken as part of it\n"
                                "         fix: remove the quotes around SHA_PASSPHRASE"),
                               ("'%s'" % PASSPHRASE, "is in quotes"),
                               (PASSPHRASE + " ; from Digistore24", "has what looks like a comment after it"),
                               (PASSPHRASE + "\t# IPN", "has what looks like a comment after it"),
                               (PASSPHRASE + "#x;y'", None), ('"' + PASSPHRASE, None)):
            with self.subTest(value=value):
                with open(config, "w") as file:
                    file.write("[digistore24]\nsha_passphrase = %s\n" % value)
                os.chmod(config, 0o600)
                code, output, _ = self.command("check", IPN_CONFIG=config, IPN_SHA_PASSPHRASE="")
                self.assertEqual(code, 1 if mistake else 0, output)
                if mistake:
                    self.assertIn("PROBLEM  SHA_PASSPHRASE (config.ini line 2, [digistore24] sha_passphrase) "
                                  + mistake, output)
                self.assertNotIn(PASSPHRASE, output)
        for value, mistake in (("x", None), ('"', None), ('""', "quotes"), ("''", "quotes"), ("XsecretX", None),
                               ("secret;x#", None), ("secretX;", None), ("pass Xword", None), ("a\t;b", "ini comment"),
                               ("\u201csecret\u201d", "quotes"), ("'secret\u2019", "quotes"), ("\u00absecret", None),
                               (" secret", "spaces"), ("secret\n", "spaces"), (" ", None)):
            self.assertEqual(ipn_receiver.secret_mistake(value, True), mistake, value)
        # Only config.ini has comments after a value; elsewhere " ;" may be part of a secret.
        self.assertIsNone(ipn_receiver.secret_mistake("a\t;b", False))
        self.assertEqual(ipn_receiver.secret_mistake("'secret'", False), "quotes")

    def test_a_secret_in_quotes_in_the_environment_or_in_typographic_quotes_in_the_file_is_a_problem(self):
        # A shell or SetEnv line written with quotes inside quotes, or a passphrase pasted from a
        # document with its typographic quotes: every call is refused while the secret seems set.
        code, output, _ = self.command("check", IPN_SHA_PASSPHRASE='"%s"' % PASSPHRASE)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  SHA_PASSPHRASE (environment variable IPN_SHA_PASSPHRASE) is in quotes", output)
        self.assertNotIn(PASSPHRASE, output)
        output = self.check_with_the_passphrase_written('SHA_PASSPHRASE = r"\u201cXy7dQ9pL2m-secretZ\u201d"')
        self.assertIn("PROBLEM  SHA_PASSPHRASE (SHA_PASSPHRASE at the top of ipn_receiver.py) is in quotes", output)

    def test_a_secret_written_as_bytes_or_with_a_comma_after_it_is_a_configuration_error(self):
        # str() of b"..." or of a tuple is no one's passphrase: every call would be refused.
        for written, kind in (('b"Xy7dQ9pL2m-secretZ"', "bytes"), ('r"Xy7dQ9pL2m-secretZ",', "tuple")):
            with self.subTest(written=written):
                output = self.check_with_the_passphrase_written("SHA_PASSPHRASE = " + written)
                # What is wrong on the PROBLEM line, the fix on the fix line (the 51st review).
                self.assertIn("PROBLEM  settings: SHA_PASSPHRASE at the top of ipn_receiver.py: SHA_PASSPHRASE is %s, "
                              "not text\n         fix: write it as SHA_PASSPHRASE = r\"...\", in quotes with nothing "
                              "after them\n" % kind, output)

    def test_the_shipped_file_writes_its_secrets_as_raw_strings_and_compiles_without_a_warning(self):
        with open(SCRIPT, encoding="utf-8") as file:
            source = file.read()
        for name in ("SHA_PASSPHRASE", "ISN_KEY"):
            self.assertIn("\n%s = r\"PASTE-" % name, source)
        done = subprocess.run([PYTHON, "-W", "error", "-c", "import sys; compile(open(sys.argv[1]).read(), "
                               "sys.argv[1], 'exec')", SCRIPT], stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_check_makes_nothing_and_says_who_it_runs_as(self):
        # Run by another user than the web server's, check would make the data folder that user's.
        data_dir = os.path.join(self.data_dir, "not-yet")
        code, output, _ = self.command("check", IPN_DATA_DIR=data_dir)
        self.assertEqual(code, 0, output)
        self.assertFalse(os.path.exists(data_dir))
        self.assertIn("note     data folder %s does not exist yet; the receiver makes it at its first call, as the user "
                      "the web server runs it as, who must be able to write to %s (where that is not you, make the "
                      "folder for that user, as README.md's cgi-bin layout does). Where notifications came before "
                      "into another data folder, move that folder here first: in a new, empty store their copies "
                      "would run their handlers again\n" % (data_dir, self.data_dir), output)   # (the 64th review)
        # Where check runs as the script's owner, it says so, rather than to run it as the owner (the
        # 70th review); another user is told whose the script is (test_a_script_of_another_user...).
        self.assertIn("note     check runs as %s, the owner of ipn_receiver.py: under suEXEC, as on cPanel, the user "
                      "the web server runs the receiver as. Where the web server runs it as a different user, run "
                      "check as that one\n" % ipn_receiver.user_name(os.geteuid()), output)
        os.makedirs(data_dir, 0o700)
        code, output, _ = self.command("check", IPN_DATA_DIR=data_dir)
        self.assertEqual((code, os.listdir(data_dir)), (0, []))
        self.assertIn("note     no event store yet; the receiver makes it at its first call", output)

    def test_a_percent_sign_in_the_config_files_path_is_only_a_character(self):
        folder = os.path.join(self.data_dir, "conf 100%s")
        os.makedirs(folder)
        config = os.path.join(folder, "ipn.ini")
        with open(config, "w") as file:
            file.write("[receiver]\nlog_level = INFO\n")
        os.chmod(config, 0o600)
        code, output, errors = self.command("check", IPN_CONFIG=config, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
        self.assertEqual((code, errors), (0, ""), output)
        self.assertIn("ok       config file %s (mode 600)" % config, output)

    def test_a_body_limit_too_small_for_real_calls_is_a_problem(self):
        # Read as kilobytes, say: every call with many fields would get 413.
        for limit, problem in (("1024", True), ("65535", True), ("65536", False)):
            code, output, _ = self.command("check", IPN_MAX_BODY_BYTES=limit)
            self.assertEqual(code, 1 if problem else 0, output)
            self.assertEqual("PROBLEM  MAX_BODY_BYTES is %s bytes, too few for a call with many fields (8 KB and more)"
                             "\n         fix: set it to 65536 or more, or leave it out (1048576); it counts bytes"
                             % limit in output, problem, output)

    def test_a_config_file_readable_by_others(self):
        config = os.path.join(self.data_dir, "ipn.ini")
        with open(config, "w") as file:
            file.write("[receiver]\nlog_level = INFO\n")
        os.chmod(config, 0o644)
        code, output, _ = self.command("check", IPN_CONFIG=config)
        self.assertEqual(code, 1)
        self.assertIn("fix: chmod 600 " + config, output)

    def test_a_malformed_config_is_one_clear_line(self):
        config = os.path.join(self.data_dir, "ipn.ini")
        with open(config, "w") as file:
            file.write("[receiver]\nmax_body_bytes = big\n")
        code, output, _ = self.command("check", IPN_CONFIG=config)
        self.assertEqual(code, 1)
        self.assertIn("ipn.ini line 2, [receiver] max_body_bytes: MAX_BODY_BYTES must be a whole number", output)
        code, output, errors = self.command("events", IPN_CONFIG=config)
        self.assertEqual(code, 2)
        self.assertEqual(errors.count("\n"), 1)
        self.assertTrue(errors.startswith("ERROR: ipn.ini"))


class CheckWhoElseMayChangeTheCode(CommandTestCase):
    """Another user who may change the script, its launcher, its folder, the config file or the
    compiled copies in __pycache__ runs their own code as the receiver's user, or gives it a
    passphrase of their own: check says so."""

    def setUp(self):
        super().setUp()
        self.site = tempfile.mkdtemp(prefix="ipn-site-")
        self.addCleanup(shutil.rmtree, self.site, True)
        os.chmod(self.site, 0o755)
        self.script, self.launcher = os.path.join(self.site, "ipn_receiver.py"), os.path.join(self.site, "ipn.py")
        self.config = os.path.join(self.site, "config.ini")
        shutil.copy(SCRIPT, self.script)
        with open(self.launcher, "w") as file:
            file.write(snippet("launcher"))
        with open(self.config, "w") as file:
            file.write("[receiver]\nlog_level = INFO\n")
        for path, mode in ((self.script, 0o755), (self.launcher, 0o755), (self.config, 0o600)):
            os.chmod(path, mode)

    def check(self):
        return self.command("check", script=self.script, IPN_CONFIG=self.config)

    def test_all_of_it_the_receivers_users_own(self):
        code, output, _ = self.check()
        self.assertEqual(code, 0, output)
        self.assertNotIn("another user", output)

    def test_a_folder_others_may_write_to(self):
        os.chmod(self.site, 0o777)
        code, output, _ = self.check()          # the receiver would refuse config.ini there
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  settings: %s: another user of this server could change %s, and so give the receiver "
                      "a passphrase or a data folder of their own" % (self.config, self.site), output)
        self.assertIn("\n         fix: chmod go-w %s\n" % self.site, output)        # (it said "correct the setting")
        os.chmod(self.site, 0o755)
        os.chmod(self.config, 0o666)
        self.assertIn("\n         fix: chmod 600 %s\n" % self.config, self.check()[1])
        os.chmod(self.config, 0o600)
        if os.geteuid() == 0:
            # The web server's (cgi-bin under Apache without suEXEC): check runs as another user,
            # and chown would break the receiver (the 48th review).
            os.chown(self.config, 65534, 65534)
            self.assertIn("\n         fix: %s belongs to nobody, and check runs as root: if nobody is the user the "
                          "web server runs the receiver as, run check as nobody (sudo -u nobody env IPN_CONFIG=%s "
                          "python3 ipn_receiver.py check); else keep the config file in a folder of that user's own, "
                          "chmod 600\n" % (self.config, self.config), self.check()[1])
        os.chmod(self.site, 0o777)
        os.remove(self.config)                  # (the secrets in the environment)
        code, output, _ = self.command("check", script=self.script)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  another user of this server may change %s, the folder of ipn_receiver.py or one on the "
                      "way to it: they could replace the script, or put a config.ini of theirs beside it\n         fix: "
                      "chmod go-w %s where it is yours" % (self.site, self.site), output)
        # Sticky, as /tmp is: open to all by design, never to be closed (the 73rd review: check run
        # as root told to chmod go-w such a folder).
        os.chmod(self.site, 0o1777)
        code, output, _ = self.command("check", script=self.script)
        self.assertIn("way to it: they could replace the script, or put a config.ini of theirs beside it\n         fix: "
                      "move the receiver into a folder of your own (%s is open to all by design)\n" % self.site, output)
        self.assertNotIn("chmod go-w %s " % self.site, output)

    def test_files_others_may_write_to(self):
        for path in (self.script, self.launcher, self.config):
            with self.subTest(path=path):
                mode = os.stat(path).st_mode & 0o777
                os.chmod(path, mode | 0o002)
                code, output, _ = self.check()
                os.chmod(path, mode)
                self.assertEqual(code, 1, output)
                self.assertIn("PROBLEM  %s can be changed by other users of this server (mode %03o)\n         fix: "
                              "chmod go-w %s   (it decides what the receiver does)\n" % (path, mode | 0o002, path)
                              if path != self.config else "PROBLEM  settings: %s: another user of this server could "
                              "change it," % path, output)

    def test_a_folder_python_runs_code_from_that_others_may_write_to(self):
        # Python runs every .pth file in a site-packages at its start, and imports from its path,
        # as the receiver's user: the user's own site-packages (~/.local), a virtual environment,
        # or a folder on PYTHONPATH that every user may write to is as good as the script to them.
        shared = tempfile.mkdtemp(prefix="ipn-shared-")
        self.addCleanup(shutil.rmtree, shared, True)
        os.chmod(shared, 0o777)
        for environment, place in (({"PYTHONPATH": os.path.join(shared, "lib")}, os.path.join(shared, "lib")),
                                   ({"PYTHONUSERBASE": shared}, None)):
            with self.subTest(environment=environment):
                code, output, _ = self.command("check", script=self.script, IPN_CONFIG=self.config, **environment)
                self.assertEqual(code, 1, output)
                self.assertIn("PROBLEM  another user of this server may change %s, from where Python runs code as the "
                              "receiver's user (%s" % (shared, place or shared), output)
                self.assertIn("fix: chmod go-w %s where it is yours; else run the receiver with a Python, and a virtual "
                              "environment, that only you and root may change\n" % shared, output)
                self.assertEqual(output.count("from where Python runs code"), 1, output)   # once for each folder
        os.chmod(shared, 0o755)
        code, output, _ = self.command("check", script=self.script, IPN_CONFIG=self.config, PYTHONUSERBASE=shared)
        self.assertEqual(code, 0, output)

    def test_code_python_runs_from_those_folders_that_others_may_write_to(self):
        # A folder of one's own may still hold a file every user may write to: a .pth file in a
        # site-packages (Python runs its import lines at every start), a handler's helper module
        # beside the script, a module named like one the receiver imports (hashlib.py beside the
        # script is taken for the standard one), a package.
        packages = tempfile.mkdtemp(prefix="ipn-venv-")
        self.addCleanup(shutil.rmtree, packages, True)
        os.chmod(packages, 0o755)
        for folder, name in ((packages, "vendorlib.pth"), (self.site, "mailer.py"), (self.site, "hashlib.py"),
                             (packages, "helpers"), (self.site, "sqlite3"), (packages, "legacy.pyc"),
                             (packages, "fast.cpython-311-x86_64-linux-gnu.so")):
            with self.subTest(name=name):
                path = os.path.join(folder, name)
                if "." in name:
                    with open(path, "w") as file:
                        file.write("import os\n")
                else:
                    os.mkdir(path)
                    if name == "helpers":
                        open(os.path.join(path, "__init__.py"), "w").close()
                os.chmod(path, 0o777 if "." not in name else 0o666)
                # (A folder on the path that is not there, or a .zip, is passed over, not the end.)
                code, output, _ = self.command("check", script=self.script, IPN_CONFIG=self.config,
                                               PYTHONPATH=os.pathsep.join([packages + ".zip", packages]))
                self.assertEqual(code, 1, output)
                self.assertIn("PROBLEM  %s can be changed by other users of this server (mode %s)\n         fix: chmod "
                              "go-w %s   (it decides what the receiver does)\n" % (
                                  path, "777" if "." not in name else "666", path), output)
                self.assertEqual(output.count("PROBLEM"), 1, output)
                os.chmod(path, 0o755 if "." not in name else 0o644)
        # Not code: a folder that is neither a package nor named like a module in use, and other files.
        for name in ("uploads", "notes.txt"):
            path = os.path.join(self.site, name)
            if name == "uploads":
                os.mkdir(path)
            else:
                open(path, "w").close()
            os.chmod(path, 0o777)
        code, output, _ = self.command("check", script=self.script, IPN_CONFIG=self.config, PYTHONPATH=packages)
        self.assertEqual(code, 0, output)

    def test_every_module_the_receiver_imports_where_it_needs_it_is_named_among_those_in_use(self):
        # A folder named like one of them, beside the script, is code the receiver may import
        # later (a traceback, a command), though check has not imported it: the list must not lag.
        import ast
        with open(SCRIPT, encoding="utf-8") as file:
            tree = ast.parse(file.read())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        at_the_top = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        self.assertEqual(imported - at_the_top, set(ipn_receiver.IMPORTED_WHEN_NEEDED))

    def test_an_htaccess_or_a_wrapper_others_may_write_to(self):
        # An .htaccess on the way (Apache reads them all) may send the calls elsewhere, or set the
        # passphrase; passenger_wsgi.py runs as the receiver's user.
        wrapper, htaccess = os.path.join(self.site, "passenger_wsgi.py"), os.path.join(self.site, ".htaccess")
        for path, name in ((wrapper, "passenger-wsgi"), (htaccess, "apache-htaccess")):
            with open(path, "w") as file:
                file.write(snippet(name))
        for path in (htaccess, wrapper):
            with self.subTest(path=path):
                os.chmod(path, 0o644)
                self.assertEqual(self.check()[0], 0)
                os.chmod(path, 0o666)
                code, output, _ = self.check()
                self.assertEqual(code, 1, output)
                self.assertIn("PROBLEM  %s can be changed by other users of this server (mode 666)\n" % path, output)
                os.chmod(path, 0o644)

    def test_a_pycache_others_may_write_to_or_a_compiled_copy_another_user_made(self):
        cache = os.path.join(self.site, "__pycache__")
        os.mkdir(cache)
        os.chmod(cache, 0o777)
        code, output, _ = self.check()
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  %s can be changed by other users of this server (mode 777)\n         fix: rm -r %s   "
                      "(another user could have put code of theirs in it, which Python would run as the receiver's "
                      "user; it makes the folder again, closed to others where the umask is 022, as the launcher of "
                      "README.md sets it)\n" % (cache, cache), output)
        os.chmod(cache, 0o755)
        if os.geteuid() == 0:
            planted = os.path.join(cache, "ipn_receiver.cpython-311.pyc")
            with open(planted, "wb") as file:
                file.write(b"not Python's")
            os.chown(planted, 65534, 65534)
            code, output, _ = self.check()
            self.assertEqual(code, 1, output)
            self.assertIn("PROBLEM  %s belongs to nobody, another user of this server\n         fix: rm -r %s   (Python "
                          "runs what is in it as the receiver's user; it makes the folder again, closed to others where "
                          "the umask is 022, as the launcher of README.md sets it)\n" % (planted, cache), output)

    def test_importing_the_receiver_takes_others_write_access_from_pycache(self):
        # Under umask 000, Python makes __pycache__ 0777: the launcher sets the umask before it
        # imports the receiver, and anything else that imports it, the receiver closes it after,
        # and deletes what was in it, its own copy too (what was open, nothing in it is sure).
        environment = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        cache = os.path.join(self.site, "__pycache__")
        for command in ("%s %s --version" % (PYTHON, self.launcher), "%s -c 'import ipn_receiver'" % PYTHON):
            with self.subTest(command=command):
                shutil.rmtree(cache, True)
                done = subprocess.run("umask 000 && " + command, shell=True, env=environment, cwd=self.site,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
                self.assertEqual(done.returncode, 0, done.stderr)
                self.assertEqual(os.stat(cache).st_mode & 0o777, 0o755)
                self.assertEqual([name.split(".")[0] for name in os.listdir(cache)],
                                 ["ipn_receiver"] if "--version" in command else [])

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root, to give a file another owner")
    def test_importing_the_receiver_deletes_compiled_copies_another_user_put_into_pycache(self):
        # Passenger makes __pycache__ with its own umask, when it loads passenger_wsgi.py, before
        # that file sets one: what another user put into it meanwhile would run at the next start.
        # Open, all of it goes (a hard link of theirs to a file of ours looks like ours); closed,
        # what is theirs. A folder stays: Python never reads one there.
        cache = os.path.join(self.site, "__pycache__")
        for mode, left in ((0o777, ["a-folder"]), (0o755, ["a-folder", "other.cpython-311.pyc"])):
            with self.subTest(mode=oct(mode)):
                shutil.rmtree(cache, True)
                os.mkdir(cache)
                os.chmod(cache, mode)
                for name, owner in (("passenger_wsgi.cpython-311.pyc", 65534), ("ipn_receiver.cpython-36.pyc", 65534),
                                    ("other.cpython-311.pyc", 0), ("a-folder", 65534)):
                    if name == "a-folder":
                        os.mkdir(os.path.join(cache, name))
                    else:
                        with open(os.path.join(cache, name), "wb") as file:
                            file.write(b"planted")
                    os.chown(os.path.join(cache, name), owner, owner)
                done = subprocess.run([PYTHON, "-c", "import ipn_receiver"], cwd=self.site, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, timeout=60)
                self.assertEqual(done.returncode, 0, done.stderr)
                self.assertEqual(os.stat(cache).st_mode & 0o777, 0o755)
                self.assertEqual(sorted(os.listdir(cache)), left)

    def plant_a_compiled_copy(self, cache, marker):
        """Another user's compiled copy of the receiver in `cache`, which Python takes for the
        script's (dated and sized as the script is): it makes the file `marker` when it runs."""
        fake = os.path.join(tempfile.mkdtemp(prefix="ipn-planted-"), "ipn_receiver.py")
        self.addCleanup(shutil.rmtree, os.path.dirname(fake), True)
        payload = "open(%r, 'w').close()\n" % marker
        with open(fake, "w") as file:
            file.write(payload + "#" * (os.path.getsize(self.script) - len(payload) - 1) + "\n")
        os.utime(fake, (os.stat(self.script).st_atime, os.stat(self.script).st_mtime))
        subprocess.run([PYTHON, "-c", "import importlib.util, py_compile, sys; py_compile.compile(sys.argv[1], "
                        "cfile=importlib.util.cache_from_source(sys.argv[2]))", fake, self.script], check=True)
        self.assertTrue(os.listdir(cache))

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root, to give a file another owner")
    def test_the_launcher_refuses_and_passenger_wsgi_closes_a_pycache_others_may_write_to(self):
        # Made 0777 by another program (Passenger makes it with its own umask, before
        # passenger_wsgi.py runs): another user's compiled copy in it would run as the receiver's
        # user, at every call, and the receiver could not delete it: it would be that copy.
        # (Passenger's own compiled copy of passenger_wsgi.py is read from there too: so that file
        # closes the folder and deletes what is another user's in it, where the launcher refuses.)
        cache, marker = os.path.join(self.site, "__pycache__"), os.path.join(self.site, "planted-copy-ran")
        environment = dict(os.environ, IPN_DATA_DIR=self.data_dir, IPN_SHA_PASSPHRASE=PASSPHRASE)
        with open(os.path.join(self.site, "passenger_wsgi.py"), "w") as file:
            file.write(snippet("passenger-wsgi"))
        # (It prints what is in __pycache__ as the receiver is imported: what the receiver itself
        # deletes, once it runs, would have been read by then.)
        load_as_passenger_does = [PYTHON, "-c", "import builtins, os, importlib.util; real_import = builtins.__import__; "
                                  "builtins.__import__ = lambda name, *args: (name == 'ipn_receiver' and print(sorted("
                                  "os.listdir('__pycache__'))), real_import(name, *args))[1]; "
                                  "spec = importlib.util.spec_from_file_location("
                                  "'passenger_wsgi', 'passenger_wsgi.py'); module = importlib.util.module_from_spec("
                                  "spec); spec.loader.exec_module(module); print(module.application)"]
        for command in ([PYTHON, "-c", "import ipn_receiver"], [PYTHON, self.launcher, "--version"],
                        load_as_passenger_does):
            with self.subTest(command=command[-1][:40]):
                shutil.rmtree(cache, True)
                os.mkdir(cache)
                os.chmod(cache, 0o777)
                self.plant_a_compiled_copy(cache, marker)
                os.mkdir(os.path.join(cache, "a-folder"))
                with open(os.path.join(cache, "ours.cpython-311.pyc"), "wb") as file:      # (or a hard link of theirs)
                    file.write(b"planted")
                # (And a link to a folder: swapped for a compiled copy at the right moment, it would be read.)
                os.symlink(tempfile.gettempdir(), os.path.join(cache, "ipn_receiver.cpython-1.pyc"))
                for name in os.listdir(cache):
                    if name != "ours.cpython-311.pyc":
                        os.lchown(os.path.join(cache, name), 65534, 65534)
                done = subprocess.run(command, cwd=self.site, env=environment, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, timeout=60)
                if command[-1] == "import ipn_receiver":    # what the copy does where nothing stops it
                    self.assertTrue(os.path.exists(marker), done.stderr)
                    os.remove(marker)
                    continue
                self.assertFalse(os.path.exists(marker))
                if command == load_as_passenger_does:
                    self.assertEqual(done.returncode, 0, done.stderr)
                    self.assertIn(b"['a-folder']\n", done.stdout)      # (all else gone before the import)
                    self.assertIn(b"<function application", done.stdout)
                    self.assertEqual(os.stat(cache).st_mode & 0o777, 0o755)
                    self.assertEqual(os.listdir(cache), ["a-folder"])      # (a folder Python never reads)
                    continue
                self.assertEqual((done.returncode, done.stdout), (1, b""))
                self.assertIn("other users may write to %s, and Python would run what they put there: delete it"
                              % cache, done.stderr.decode())
                # Made as the guide says (mkdir -m 755) and left alone, it is used.
                shutil.rmtree(cache)
                os.mkdir(cache, 0o755)
                done = subprocess.run(command, cwd=self.site, env=environment, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, timeout=60)
                self.assertEqual(done.returncode, 0, done.stderr)
                self.assertIn(b"ipn_receiver", done.stdout)

    def test_each_file_is_looked_at_whatever_became_of_the_one_before(self):
        # (Called here directly: a file gone between the listing and the look is a race.)
        problems = []
        os.chmod(self.launcher, 0o757)
        ipn_receiver.check_who_else_may_change_the_code(lambda ok, text, fix=None: problems.append((ok, text, fix)),
                                                        [os.path.join(self.site, "gone.py"), self.launcher])
        self.assertEqual(problems, [(False, "%s can be changed by other users of this server (mode 757)" % self.launcher,
                                     "chmod go-w %s   (it decides what the receiver does)" % self.launcher)])

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root, to give a file another owner")
    def test_a_launcher_another_user_owns(self):
        os.chown(self.launcher, 65534, 65534)
        code, output, _ = self.check()
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  %s belongs to nobody, another user of this server\n         fix: delete it and upload "
                      "your own, as the receiver's user; it decides what the receiver does\n" % self.launcher, output)

    def test_what_counts_as_readable_by_other_users(self):
        path = os.path.join(self.site, "copy")
        for mode, readable in ((0o604, True), (0o644, True), (0o640, False), (0o601, False), (0o600, False)):
            with open(path, "w"):
                pass
            os.chmod(path, mode)
            self.assertEqual(ipn_receiver.readable_by_others(path), readable, oct(mode))
        # Its group's, where another user is in it; or a user or group an ACL names (the 53rd review).
        me = os.geteuid()
        for users, mode, readable in (({me, 4242}, 0o640, True), ({me}, 0o640, False), ({me, 4242}, 0o620, False)):
            os.chmod(path, mode)
            with mock.patch.object(ipn_receiver, "users_of_group", lambda gid: users):
                self.assertEqual(ipn_receiver.readable_by_others(path), readable, (users, oct(mode)))
        import struct
        os.chmod(path, 0o640)
        for entries, readable in ((((2, 4, 4242), (16, 4, 0xFFFFFFFF)), True), (((2, 4, 4242), (16, 2, 0xFFFFFFFF)), False),
                                  (((2, 4, me),), False), (((8, 4, 4343),), True)):
            acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in ((1, 6, 0xFFFFFFFF),) +
                                                  entries + ((32, 0, 0xFFFFFFFF),))
            with mock.patch.object(os, "getxattr", lambda *args, **kwargs: acl, create=True), \
                    mock.patch.object(ipn_receiver, "users_of_group", lambda gid: {me, 4242} if gid == 4343 else {me}):
                self.assertEqual(ipn_receiver.readable_by_others(path), readable, entries)
        os.symlink(path, path + ".link")
        os.chmod(path, 0o644)
        self.assertFalse(ipn_receiver.readable_by_others(path + ".link"))        # a link: its target is looked at
        self.assertFalse(ipn_receiver.readable_by_others(self.site))             # a folder
        self.assertFalse(ipn_receiver.readable_by_others(os.path.join(self.site, "none")))

    def test_an_editors_lock_link_to_nowhere_does_not_stop_check(self):
        os.symlink("vendor@host.1234:1700000000", os.path.join(self.site, ".#config.ini"))     # Emacs's
        code, output, _ = self.check()
        self.assertEqual(code, 0, output)
        self.assertIn("data folder", output)


class CheckTheStoreAndItsLock(CommandTestCase):
    """What makes every call a 503 though the store reads well: check names it."""

    def test_a_lock_another_process_holds_is_a_problem(self):
        import fcntl
        post(payment())
        lock = os.path.join(self.data_dir, ".lock")
        holder = os.open(lock, os.O_RDWR)
        self.addCleanup(os.close, holder)
        fcntl.flock(holder, fcntl.LOCK_EX)                  # a process stopped while holding it
        ipn_receiver.close_store()                          # (no -wal and -shm files left: check goes on)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "events.sqlite3-wal")))
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  the store's lock is free\n         fix: another process has held %s for over 2 s, and "
                      "every call waits 10 s for it, then gets 503: find that process (`fuser -v %s`) and end it if it "
                      "is stuck (a `repair` stopped with Ctrl+Z, say: `fg` goes on with it)\n" % (lock, lock), output)
        fcntl.flock(holder, fcntl.LOCK_UN)
        code, output, _ = self.command("check")
        self.assertEqual(code, 0, output)
        self.assertIn("ok       the store's lock is free\n", output)

    def test_a_folder_in_place_of_the_lock_or_the_store_is_a_problem_and_the_log_names_it(self):
        post(payment("1"))
        lock = os.path.join(self.data_dir, ".lock")
        os.remove(lock)
        os.mkdir(lock)
        self.assertEqual(post(payment("2")).status, 503)
        self.assertLogged("ERROR", "event store %s: Is a directory; check that the data folder exists, is writable by "
                                   "the web server's user and the disk is not full" % lock)
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  .lock is a file\n         fix: it is a folder or a link, which the receiver does not "
                      "open (every call needs to write it): move it out of the data folder (`mv %s %s.moved`); the "
                      "receiver makes it again\n" % (lock, lock), output)
        os.rmdir(lock)
        for suffix in ("-wal", "-shm"):                     # the journal's files, each on its own
            journal = os.path.join(self.data_dir, "events.sqlite3" + suffix)
            moved = os.path.exists(journal) and shutil.move(journal, journal + ".real")
            os.mkdir(journal)
            code, output, _ = self.command("check")
            self.assertIn("PROBLEM  events.sqlite3%s is a file\n" % suffix, output)
            os.rmdir(journal)
            if moved:
                os.rename(journal + ".real", journal)
        store = os.path.join(self.data_dir, "events.sqlite3")
        ipn_receiver.close_store()
        os.rename(store, store + ".real")
        os.symlink(store + ".real", store)
        code, output, _ = self.command("check")
        self.assertIn("PROBLEM  events.sqlite3 is a file\n         fix: it is a folder or a link, which the receiver "
                      "does not open (every call needs to write it): move it out of the data folder (`mv %s "
                      "%s.moved`)\n" % (store, store), output)

    def test_a_transaction_another_program_keeps_open_is_a_problem(self):
        # A sqlite3 session left inside a transaction: every call waited 30 s, then got 503, and
        # check, which only reads, said all good (the 73rd review).
        post(payment())
        store = os.path.join(self.data_dir, "events.sqlite3")
        other = sqlite3.connect(store, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN EXCLUSIVE")
        other.execute("UPDATE notifications SET attempts = attempts")
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  no other program holds the event store's write lock\n         fix: another program (a "
                      "`sqlite3` session left inside a transaction, a database browser) has held it for over 2 s: every "
                      "call waits 30 s for it, then gets 503. Find it (`fuser -v %s`), and end its transaction or the "
                      "program\n" % store, output)
        other.execute("ROLLBACK")
        code, output, _ = self.command("check")
        self.assertEqual(code, 0, output)
        self.assertIn("ok       no other program holds the event store's write lock\n", output)

    def test_a_log_the_receiver_cannot_write_is_a_problem(self):
        # Its lines, and the traceback an error answer points to, went to stderr alone, and check
        # said all good; a folder in its place was to be "chmod 600" (the 72nd review).
        post(payment())
        log = os.path.join(self.data_dir, "ipn_receiver.log")
        why = "the receiver writes its lines to stderr alone then, and an error answer's traceback is not there"
        # A link in its place, to a file of someone else's: never a chmod, which would go through the
        # link to that file (/etc/passwd, where check runs as root: the 73rd review).
        target = tempfile.NamedTemporaryFile(prefix="ipn-other-file-")
        self.addCleanup(target.close)
        os.chmod(target.name, 0o644)
        os.remove(log)
        os.symlink(target.name, log)
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertNotIn("chmod 600 %s" % log, output)
        self.assertIn("PROBLEM  ipn_receiver.log is a file\n", output)
        self.assertEqual(os.stat(target.name).st_mode & 0o777, 0o644)
        os.remove(log)                          # (one it cannot write: test_check_reports_a_store_that_cannot_...)
        os.mkdir(log)
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  ipn_receiver.log is a file\n         fix: it is a folder or a link, which the receiver "
                      "does not open (%s): move it out of the data folder (`mv %s %s.moved`); the receiver makes it "
                      "again\n" % (why, log, log), output)
        self.assertNotIn("ipn_receiver.log mode", output)

    def test_a_sites_htaccess_in_the_data_folder_that_denies_some_files_only_is_a_problem(self):
        post(payment())
        with open(os.path.join(self.data_dir, ".htaccess"), "w") as file:
            file.write('<FilesMatch "\\.php$">\n  Require all denied\n</FilesMatch>\n')
        code, output, _ = self.command("check")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  data folder has its .htaccess, which denies the web\n         fix: the data folder %s "
                      "holds what the receiver did not write (.htaccess), and no .htaccess that denies the web: move "
                      "them out of it; the receiver then writes its .htaccess\n" % self.data_dir, output)

    def test_a_store_left_beside_the_script_when_data_dir_moved_is_a_problem(self):
        # The vendor set DATA_DIR after calls had come, as check advises for a data folder on the
        # web, and did not move the store: copies of handled notifications would run again.
        site = os.path.join(self.data_dir, "site")
        os.makedirs(os.path.join(site, "ipn_data"))
        script = shutil.copy(SCRIPT, site)
        elsewhere = os.path.join(self.data_dir, "elsewhere")
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR=elsewhere)
        self.assertNotIn("left", output)                    # no store there: nothing left behind
        with open(os.path.join(site, "ipn_data", "events.sqlite3"), "w"):
            pass
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR=elsewhere)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  an event store was left in %s, beside the script; DATA_DIR is %s\n         fix: rename "
                      "ipn_receiver.py for a moment (calls get 404, and the senders retry them later; under WSGI, stop "
                      "the app instead), wait until no call is running (ps -ef | grep -e ipn_receiver -e ipn.py), make "
                      "the folder DATA_DIR if it is not there (mkdir -m 700 %s: else mv renames the store to its name), move the "
                      "store's files" % (os.path.join(site, "ipn_data"), elsewhere, elsewhere), output)
        # Where both hold notifications, the other is moved away, not deleted (the 37th review).
        self.assertIn("keep the one with more notifications, and move the other folder out of the web root, not "
                      "deleted", output)
        self.assertNotIn("delete the other", output)
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(site, "ipn_data"))
        self.assertNotIn("left in", output)                 # the store in use is not left behind

    def test_a_store_left_beside_a_link_to_the_script_is_a_problem_where_check_runs_through_it(self):
        # Calls through a link kept their store beside the link until they followed links (the 52nd
        # review): now they keep it beside the file, and the one beside the link is left behind.
        own, web = os.path.join(self.data_dir, "ipn"), os.path.join(self.data_dir, "public_html")
        os.makedirs(os.path.join(web, "ipn_data"))
        os.mkdir(own)
        script = shutil.copy(SCRIPT, own)
        os.symlink(script, os.path.join(web, "ipn_receiver.py"))
        code, output, _ = self.command("check", script=os.path.join(web, "ipn_receiver.py"), IPN_DATA_DIR="")
        self.assertNotIn("left in", output)                 # no store there: nothing left behind
        with open(os.path.join(web, "ipn_data", "events.sqlite3"), "w"):
            pass
        code, output, _ = self.command("check", script=os.path.join(web, "ipn_receiver.py"), IPN_DATA_DIR="")
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  an event store was left in %s, beside the script; DATA_DIR is %s\n"
                      % (os.path.join(web, "ipn_data"), os.path.join(own, "ipn_data")), output)


    def test_a_journal_left_behind_without_its_store_is_a_problem(self):
        # The store moved while a call was writing, without its -wal file (the 42nd review): the
        # last notifications are in that file, and only beside its store can SQLite read them.
        site = os.path.join(self.data_dir, "site")
        os.makedirs(os.path.join(site, "ipn_data"))
        script = shutil.copy(SCRIPT, site)
        elsewhere = os.path.join(self.data_dir, "elsewhere")
        journal = os.path.join(site, "ipn_data", "events.sqlite3-wal")
        open(journal, "w").close()
        self.assertNotIn("journal", self.command("check", script=script, IPN_DATA_DIR=elsewhere)[1])  # (empty)
        with open(journal, "wb") as file:
            file.write(b"\x37\x7f\x06\x82" + bytes(28))
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR=elsewhere)
        self.assertEqual(code, 1, output)
        self.assertIn("PROBLEM  the event store's journal was left in %s without its store; DATA_DIR is %s\n         "
                      "fix: rename ipn_receiver.py for a moment (calls get 404, and the senders retry them later; under "
                      "WSGI, stop the app instead), wait until no call is running (ps -ef | grep -e ipn_receiver -e "
                      "ipn.py), and move %s (and its -shm file) beside the store it was written for, in %s, before "
                      "a call writes to that store" % (os.path.dirname(journal), elsewhere, journal, elsewhere),
                      output)
        # Once the store has been written there, the journal would lay its old pages over the new
        # ones: following that fix damaged the store (the 72nd review).
        os.mkdir(elsewhere, 0o700)
        # The store moved there, not written since: check leaves it closed, for opening it may write
        # to it (a store of an older schema is brought up to date: the 73rd review).
        store = os.path.join(elsewhere, "events.sqlite3")
        open(store, "w").close()
        before = os.stat(journal).st_mtime - 60
        os.utime(store, (before, before))
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR=elsewhere)
        self.assertIn("before a call writes to that store; then rename the script back. It may hold the last "
                      "notifications, which are lost to the store until then (check has not opened the store: that "
                      "may write to it too)\n", output)
        self.assertNotIn("event store %s: integrity" % store, output)
        self.assertEqual((os.stat(store).st_mtime, sorted(os.listdir(elsewhere))), (before, ["events.sqlite3"]))
        os.remove(store)
        for moved in ("events.sqlite3", "events.sqlite3-wal"):
            open(os.path.join(elsewhere, moved), "w").close()
            code, output, _ = self.command("check", script=script, IPN_DATA_DIR=elsewhere)
            self.assertIn("PROBLEM  the event store's journal was left in %s without its store; DATA_DIR is %s\n     "
                          "    fix: keep %s (and its -shm file) out of the web space, and never put it beside the "
                          "store: the store has been written since" % (os.path.dirname(journal), elsewhere, journal),
                          output)
        self.assertNotIn("journal was left", self.command("check", script=script,
                                                          IPN_DATA_DIR=os.path.join(site, "ipn_data"))[1])

class CheckTheWebFolder(CommandTestCase):
    """Copies of the settings pile up beside the script: compiled copies of the receiver
    (__pycache__, written wherever something imports it) and editors' backup copies of it and of
    config.ini. They hold the secrets: `check` reports them where the folder may be on the web,
    and an .htaccess that serves more than the scripts."""

    def web_folder(self, htaccess=None, name="public_html", copies=True):
        folder = os.path.join(self.data_dir, name, "ipn")
        os.makedirs(os.path.join(folder, "__pycache__"))
        shutil.copy(SCRIPT, folder)
        for name in ("__pycache__/ipn_receiver.cpython-311.pyc", "config.ini~", "ipn_receiver.py.bak") if copies else ():
            with open(os.path.join(folder, name), "w") as file:
                file.write("sha_passphrase = " + PASSPHRASE)
            os.chmod(os.path.join(folder, name), 0o600)     # (on the web; what other users read: see Check)
        if htaccess is not None:
            with open(os.path.join(folder, ".htaccess"), "w") as file:
                file.write(htaccess)
        return os.path.join(folder, "ipn_receiver.py")

    def test_an_htaccess_that_denies_some_files_only_is_a_problem(self):
        # The deployment guide's .htaccess before: it denied .ini, .pyc, ... but served config.ini~.
        for htaccess in ("Options +ExecCGI\nAddHandler cgi-script .py\n",
                         'Options +ExecCGI -Indexes\nAddHandler cgi-script .py\n'
                         '<FilesMatch "\\.(ini|log|sqlite3|pyc)$">\n    Require all denied\n</FilesMatch>\n',
                         # The guide's, with the scripts' pattern loosened to let a renamed launcher
                         # work: it serves ipn_receiver.py.bak too.
                         snippet("apache-htaccess").replace('"^(ipn_receiver|ipn)\\.py$"', '"^ipn"')):
            with self.subTest(htaccess=htaccess):
                script = self.web_folder(htaccess)
                code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
                self.assertEqual(code, 1)
                self.assertIn("PROBLEM  .htaccess beside the script serves the scripts only, and no folder listing",
                              output)
                self.assertIn("PROBLEM  copies of the settings beside the script (__pycache__/ipn_receiver.cpython-311"
                              ".pyc, config.ini~, ipn_receiver.py.bak)", output)
                shutil.rmtree(os.path.dirname(script))

    def test_the_deployment_guides_htaccess_denies_them(self):
        script = self.web_folder(snippet("apache-htaccess"))
        with open(os.path.join(os.path.dirname(script), "config.ini"), "w") as file:
            file.write("[receiver]\n")
        os.chmod(os.path.join(os.path.dirname(script), "config.ini"), 0o600)
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
        self.assertEqual(code, 0, output)
        self.assertIn("ok       .htaccess beside the script serves the scripts only, and no folder listing", output)
        self.assertIn("note     copies of the settings beside the script (__pycache__/ipn_receiver.cpython-311.pyc, "
                      "config.ini~, ipn_receiver.py.bak); the .htaccess denies them", output)
        self.assertNotIn("config.ini is beside the script", output)        # the .htaccess denies it

    def test_a_renamed_script_the_htaccess_does_not_serve_is_a_problem(self):
        # Apache answered every call with its own 403 page, no line of ours in the sender's log,
        # while check said all good (the 48th review).
        script = self.web_folder(snippet("apache-htaccess"), copies=False)
        renamed = os.path.join(os.path.dirname(script), "ds24_ipn.py")
        os.rename(script, renamed)
        code, output, _ = self.command("check", script=renamed, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
        self.assertEqual(code, 1, output)
        self.assertIn("ok       .htaccess beside the script serves the scripts only, and no folder listing\nPROBLEM  "
                      ".htaccess beside the script lets the web reach ds24_ipn.py\n         fix: rename the script "
                      "ipn_receiver.py, or write its name into the <FilesMatch> line: until then every call gets 403\n",
                      output)
        for name in ("ipn_receiver.py", "ipn.py"):
            self.assertTrue(ipn_receiver.granted_by_a_section(snippet("apache-htaccess"), name))
        # Its name written into the <FilesMatch> line, as the fix says: check took the live script,
        # so named, for a backup copy of it, said the .htaccess served a copy, and told the vendor to
        # delete it (the 64th review).
        live = os.path.join(os.path.dirname(script), "ipn_receiver_live.py")
        os.rename(renamed, live)
        with open(os.path.join(os.path.dirname(live), ".htaccess"), "w") as file:
            file.write(snippet("apache-htaccess").replace("^(ipn_receiver|ipn)", "^(ipn_receiver_live|ipn)"))
        code, output, _ = self.command("check", script=live, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
        self.assertEqual(code, 0, output)
        self.assertIn("ok       .htaccess beside the script serves the scripts only, and no folder listing\n", output)
        self.assertNotIn("copies of the settings", output)
        self.assertTrue(ipn_receiver.is_backup_copy("ipn_receiver_live.py"))       # (from another script's view)
        # Beside it, the file under its old name is a copy, as any other.
        shutil.copy(live, os.path.join(os.path.dirname(live), "ipn_receiver.py"))
        code, output, _ = self.command("check", script=live, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
        self.assertIn("note     copies of the settings beside the script (ipn_receiver.py); the .htaccess denies them",
                      output)
        os.remove(os.path.join(os.path.dirname(live), "ipn_receiver.py"))
        os.rename(live, renamed)
        # Where the launcher is the one registered, it alone need be served.
        with open(os.path.join(os.path.dirname(renamed), "ipn.py"), "w") as file:
            file.write("#!/usr/bin/python3\nimport ipn_receiver\nipn_receiver.main()\n")
        os.chmod(os.path.join(os.path.dirname(renamed), "ipn.py"), 0o755)
        self.assertNotIn("lets the web reach", self.command("check", script=renamed,
                                                           IPN_DATA_DIR=os.path.join(self.data_dir, "d"))[1])
        for rules in ("Require all denied\n", "<Files ipn.py>\nRequire all granted\n</Files>\n"):
            self.assertFalse(ipn_receiver.granted_by_a_section(rules, "ipn_receiver.py"), rules)
        self.assertTrue(ipn_receiver.granted_by_a_section("  <files  ipn_receiver.py>\n", "ipn_receiver.py"))

    def test_a_copy_of_the_receiver_in_a_folder_below_is_a_second_receiver(self):
        # A backup made before an edit: the .htaccess runs the scripts' names in every folder below
        # its own too, and the copy, with a store of its own, runs a captured call's handler again.
        for name, htaccess, reported in (("public_html", snippet("apache-htaccess"), True),
                                         ("public_html", None, True), ("apps", None, False)):
            with self.subTest(name=name, htaccess=htaccess is not None):
                script = self.web_folder(htaccess, name=name, copies=False)
                folder = os.path.dirname(script)
                for copy in ("old/ipn_receiver.py", "a/b/ipn.py", "old/notes.py", "ipn_data/ipn_receiver.py"):
                    os.makedirs(os.path.dirname(os.path.join(folder, copy)), exist_ok=True)
                    shutil.copy(SCRIPT, os.path.join(folder, copy))
                code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(folder, "ipn_data"))
                text = "a copy of the receiver below the script's folder (a/b/ipn.py, old/ipn_receiver.py)"
                fix = ("move it out of the web space (keep backups outside public_html): where the web server runs it, "
                       "it is a second receiver, with a store of its own, that runs the handler of a notification "
                       "sent there again")
                if reported:
                    self.assertEqual(code, 1, output)
                    self.assertIn("PROBLEM  %s\n         fix: %s\n" % (text, fix), output)
                else:
                    self.assertIn("note     %s; if this folder is on the web, %s\n" % (text, fix), output)
                shutil.rmtree(os.path.dirname(folder))

    def test_an_htaccess_the_site_shares_is_not_to_be_replaced_by_the_guides(self):
        # The script uploaded into the web root itself, beside a site: the guide's .htaccess there
        # would deny the whole site, in every folder below it too (the 42nd review). Nor is a site's
        # readable .htaccess called unreadable.
        for site in (("index.php", "wp-content"), ()):
            with self.subTest(site=site):
                root = os.path.join(self.data_dir, "public_html")
                os.makedirs(root)
                for name in site:
                    os.mkdir(os.path.join(root, name)) if "." not in name else open(os.path.join(root, name), "w").close()
                script = shutil.copy(SCRIPT, root)
                with open(os.path.join(root, ".htaccess"), "w") as file:
                    file.write("RewriteEngine On\nRewriteRule . /index.php [L]\n")
                os.chmod(os.path.join(root, ".htaccess"), 0o644)
                code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
                self.assertEqual(code, 1, output)
                self.assertIn("PROBLEM  .htaccess beside the script serves the scripts only, and no folder listing\n"
                              "         fix: this folder holds your site too (%s), and an .htaccess rules every folder "
                              "below its own: the deployment guide's would shut the site. Make a folder of the receiver's "
                              "own (mkdir %s), move ipn_receiver.py and config.ini into it, put the .htaccess of "
                              "README.md's deployment guide there, and register that URL\n"
                              % (site[0] if site else "its web root", os.path.join(root, "ipn")), output)
                self.assertIn("ok       .htaccess beside the script can be read by the web server (mode 644)\n", output)
                shutil.rmtree(root)

    def test_an_htaccess_only_its_owner_can_read_is_a_problem(self):
        # Apache reads it as its own user, under suEXEC not the owner, and refuses the whole folder.
        script = self.web_folder(snippet("apache-htaccess"), copies=False)
        htaccess = os.path.join(os.path.dirname(script), ".htaccess")
        for mode, reported in ((0o600, True), (0o640, True), (0o644, False), (0o604, False)):
            os.chmod(htaccess, mode)
            code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
            self.assertEqual(code, 1 if reported else 0, output)
            self.assertIn("%s .htaccess beside the script can be read by the web server (mode %03o)\n" % (
                "PROBLEM " if reported else "ok      ", mode), output)

    def test_where_it_looks_for_copies(self):
        # Compiled copies three folders down at most (a web root can be large), not in hidden folders
        # or the data folder; backup copies beside the script only. Three are named, then "...".
        script = self.web_folder("Options +ExecCGI\n")
        folder = os.path.dirname(script)
        for name in ("a/b/c/deep.pyc", "a/b/c/d/deeper.pyc", ".git/hidden.pyc", "data/stored.pyc", "a/config.ini~"):
            os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
            with open(os.path.join(folder, name), "w") as file:
                file.write("x")
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(folder, "data"))
        self.assertEqual(code, 1)
        self.assertIn("PROBLEM  copies of the settings beside the script (__pycache__/ipn_receiver.cpython-311.pyc, "
                      "a/b/c/deep.pyc, config.ini~, ...)\n         fix: delete them (rm -r __pycache__, and the backup "
                      "copies) and let the web server serve the scripts only, as the .htaccess of README.md's deployment "
                      "guide does: they hold your settings, secrets included\n", output)
        self.assertIn("PROBLEM  .htaccess beside the script serves the scripts only, and no folder listing\n"
                      "         fix: use the .htaccess of README.md's deployment guide: Options +ExecCGI -Indexes, "
                      "AddHandler cgi-script .py, Require all denied, and the scripts' names allowed\n", output)
        for name in ("deeper.pyc", "hidden.pyc", "a/config.ini~"):
            self.assertNotIn(name, output)
        self.assertIn("holds what the receiver did not write (stored.pyc)", output)    # (said of the data folder)
        self.assertEqual(output.count("stored.pyc"), 1)
        os.remove(os.path.join(folder, "ipn_receiver.py.bak"))
        os.remove(os.path.join(folder, "a", "b", "c", "deep.pyc"))
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(folder, "data"))
        self.assertIn("PROBLEM  copies of the settings beside the script (__pycache__/ipn_receiver.cpython-311.pyc, "
                      "config.ini~)\n", output)

    @unittest.skipUnless(os.geteuid() == 0 and os.path.exists("/usr/bin/python3"),
                         "needs root, to run check as another user, and /usr/bin/python3, which that user can run")
    def test_an_htaccess_check_cannot_read_is_a_problem_not_a_traceback(self):
        # ... and what it would deny cannot be told: copies of the settings are a problem too.
        script = self.web_folder(snippet("apache-htaccess"))
        folder = os.path.dirname(script)
        os.chmod(os.path.join(folder, ".htaccess"), 0o600)
        for path in (self.data_dir, os.path.join(self.data_dir, "public_html"), folder, script):
            os.chmod(path, 0o755)
        done = subprocess.run(["/usr/bin/python3", script, "check"], env=dict(
            PATH="/usr/bin:/bin", IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_ISN_KEY=ISN_KEY, IPN_DATA_DIR="/nonexistent/d"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", timeout=60,
            preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
        self.assertEqual((done.returncode, done.stderr), (1, b""))
        self.assertIn("PROBLEM  .htaccess beside the script can be read by the web server (mode 600)\n         fix: "
                      "chmod 644 %s   (Apache refuses the whole folder, with 403, where it cannot read it)\n"
                      % os.path.join(folder, ".htaccess"), done.stdout.decode())
        self.assertIn("PROBLEM  copies of the settings beside the script (__pycache__/ipn_receiver.cpython-311.pyc, "
                      "config.ini~, ipn_receiver.py.bak)\n", done.stdout.decode())

    def test_an_htaccess_not_in_utf8_is_read_all_the_same(self):
        htaccess = snippet("apache-htaccess").encode("utf-8") + b"# Ge\xe4ndert von J\xf6rg\n"
        script = self.web_folder(copies=False)
        with open(os.path.join(os.path.dirname(script), ".htaccess"), "wb") as file:
            file.write(htaccess)
        code, output, errors = self.command("check", script=script, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
        self.assertEqual((code, errors), (0, ""), output)
        self.assertIn("ok       .htaccess beside the script serves the scripts only, and no folder listing", output)

    def test_without_an_htaccess_they_are_a_problem_in_a_web_root_and_noted_elsewhere(self):
        # Where no .htaccess is, check cannot tell whether the folder is served; in one named as web
        # servers name their document roots it most likely is.
        for name in ("public_html", "www", "htdocs", "httpdocs"):
            script = self.web_folder(name=name)
            code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
            self.assertEqual(code, 1, output)
            self.assertIn("PROBLEM  copies of the settings beside the script (__pycache__/ipn_receiver.cpython-311.pyc, "
                          "config.ini~, ipn_receiver.py.bak), with no .htaccess, in %s, which looks like web space\n"
                          "         fix: delete them" % name, output)
        script = self.web_folder(name="apps")
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
        self.assertEqual(code, 0, output)
        self.assertIn("note     copies of the settings beside the script (__pycache__/ipn_receiver.cpython-311.pyc, "
                      "config.ini~, ipn_receiver.py.bak); if this folder is on the web, delete them", output)

    def test_without_an_htaccess_a_config_file_beside_the_script_is_a_problem_in_a_web_root(self):
        for name, verdict in (("public_html", "PROBLEM  config.ini is beside the script, with no .htaccess, in "
                                              "public_html, which looks like web space: its secrets can be downloaded"
                                              "\n         fix: keep it outside the web root"),
                              ("apps", "note     config.ini is beside the script, with no .htaccess: if this folder "
                                       "is on the web, its secrets can be downloaded; keep it outside the web root")):
            script = self.web_folder(name=name, copies=False)
            config = os.path.join(os.path.dirname(script), "config.ini")
            with open(config, "w") as file:
                file.write("[digistore24]\nsha_passphrase = %s\n" % PASSPHRASE)
            os.chmod(config, 0o600)
            code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
            self.assertEqual(code, 1 if name == "public_html" else 0, output)
            self.assertIn(verdict, output)
            self.assertNotIn(PASSPHRASE, output)

    def test_without_an_htaccess_a_data_folder_in_a_web_root_is_a_problem(self):
        # nginx and lighttpd read no .htaccess: there the one the receiver writes into its data folder
        # denies nothing, and the store (buyers' data, access data handed out) and the log download.
        problem = ("PROBLEM  data folder %s is in public_html, which looks like web space, with no .htaccess beside the "
                   "script: under nginx or lighttpd the store and the log can be downloaded\n         fix: set DATA_DIR "
                   "to a folder outside the web root, and move the store into it (check says how); under Apache, use the .htaccess of README.md's deployment guide "
                   "beside the script\n")
        for name, htaccess, verdict in (("public_html", None, True), ("apps", None, False),
                                        ("public_html", snippet("apache-htaccess"), False)):
            with self.subTest(name=name, htaccess=htaccess is not None):
                script = self.web_folder(name=name, htaccess=htaccess, copies=False)
                data_dir = os.path.join(os.path.dirname(script), "ipn_data")
                if name == "apps":
                    os.makedirs(data_dir, 0o700)        # (made, or yet to be made: the same)
                code, output, _ = self.command("check", script=script, IPN_DATA_DIR=data_dir)
                shutil.rmtree(os.path.dirname(os.path.dirname(script)))
                self.assertEqual(code, 1 if verdict else 0, output)
                self.assertEqual(problem % data_dir in output, verdict, output)
        # Outside the web root: no problem, whatever the script's folder looks like.
        script = self.web_folder(name="public_html", copies=False)
        code, output, _ = self.command("check", script=script, IPN_DATA_DIR=os.path.join(self.data_dir, "d"))
        self.assertEqual(code, 0, output)

    def test_which_names_are_backup_copies(self):
        for name in ("config.ini~", "config.ini.bak", "config.ini.save", "ipn_receiver.py~", "ipn_receiver.py.orig",
                     ".config.ini.swp", "#config.ini#", "ipn_receiver.py.old",
                     # ... and those a vendor or an upload tool makes: copied, renamed, half uploaded.
                     "config.old.ini", "config (1).ini", "config.ini.1", "config.ini.txt", "config - Copy.ini",
                     "config.ini.filepart", "ipn_receiver - Copy.py", "ipn_receiver.py.txt", "ipn_receiver.py.1",
                     "Config.INI.bak", "ipn_receiver (2).py"):
            self.assertTrue(ipn_receiver.is_backup_copy(name), name)
        # Not copies: the two files themselves, the example, compiled copies (found in __pycache__),
        # and a site's own files (its config.php).
        for name in ("config.ini", "ipn_receiver.py", "ipn.py", "config.example.ini", "notes.txt~", "README.md",
                     "#notes#", "config.php", "configuration.json", "ipn_receiver.cpython-311.pyc", "wrapper.py",
                     "Xconfig.ini", "x.ipn_receiver.py"):
            self.assertFalse(ipn_receiver.is_backup_copy(name), name)

    def test_what_counts_as_serving_the_scripts_only(self):
        self.assertTrue(ipn_receiver.serves_only_the_scripts(snippet("apache-htaccess")))
        # A denial inside a <Files> section, or no -Indexes, does not count.
        self.assertFalse(ipn_receiver.serves_only_the_scripts(
            'Options -Indexes\n<FilesMatch "\\.ini$">\n  Require all denied\n</FilesMatch>\n'))
        self.assertFalse(ipn_receiver.serves_only_the_scripts("Require all denied\n"))
        self.assertFalse(ipn_receiver.serves_only_the_scripts("Options -Indexes\n# Require all denied\n"))
        # What the <Files> and <FilesMatch> sections grant: the scripts, or more.
        top = "Options +ExecCGI -Indexes\nAddHandler cgi-script .py\nRequire all denied\n"
        for section, scripts_only in (('<FilesMatch "^(ipn_receiver|ipn)\\.py$">', True),
                                      ('<Files "ipn_receiver.py">', True), ("<Files ipn.py>", True),
                                      ('<FilesMatch "\\.py$">', True), ('<Files "*.py">', True),
                                      ('<FilesMatch "^ipn">', False), ('<FilesMatch "\\.(py|ini)$">', False),
                                      ('<Files "*">', False), ('<Files "*.py*">', False), ('<Files ~ "\\.py">', False),
                                      ('<FilesMatch "(">', False)):        # (a pattern no one can read)
            with self.subTest(section=section):
                self.assertEqual(ipn_receiver.serves_only_the_scripts(
                    top + section + "\n    Require all granted\n</Files>\n"), scripts_only)
        self.assertFalse(ipn_receiver.serves_only_the_scripts(snippet("apache-htaccess") + "Require all granted\n"))
        self.assertFalse(ipn_receiver.serves_only_the_scripts(snippet("apache-htaccess") + "Allow from all\n"))
        # Blank lines, comments, and the top-level denial after the sections, in either quotes:
        self.assertTrue(ipn_receiver.serves_only_the_scripts(
            "Options +ExecCGI -Indexes\nAddHandler  cgi-script .py\n\n# Require all granted\n<Files 'ipn.py'>\n"
            "  Require all granted\n</Files>\n\nRequire all denied\n"))
        self.assertFalse(ipn_receiver.serves_only_the_scripts(
            "Options +ExecCGI -Indexes\nAddHandler cgi-script .py\n<Files 'ipn.py'>\n  Require all granted\n"
            "</Files>\nRequire all granted\nRequire all denied\n"))
        # What the fourth review tried: the denial only within <Limit> or <If> (then in force for
        # some requests only), a grant within them, and no handler (the source is served).
        guide = snippet("apache-htaccess")
        for changed in (guide.replace("Require all denied", "<Limit PUT DELETE>\nRequire all denied\n</Limit>"),
                        guide.replace("Require all denied", '<If "%{REQUEST_METHOD} == \'PUT\'">\nRequire all '
                                                            "denied\n</If>"),
                        guide + "<IfModule mod_authz_core.c>\n  Require all granted\n</IfModule>\n",
                        guide.replace("AddHandler cgi-script .py\n", ""),
                        guide.replace("+ExecCGI ", "")):
            with self.subTest(changed=changed):
                self.assertFalse(ipn_receiver.serves_only_the_scripts(changed))
        self.assertTrue(ipn_receiver.serves_only_the_scripts(guide.replace("AddHandler cgi-script .py",
                                                                           "<Files ipn_receiver.py>\nSetHandler "
                                                                           "cgi-script\n</Files>")))
        # A section whose pattern cannot be read may serve anything.
        for line in ("<Files>", '<FilesMatch "(">', "<Files ~>"):
            self.assertTrue(ipn_receiver.section_matches_any(line, ["ipn.py"]), line)
        self.assertFalse(ipn_receiver.section_matches_any("  <files   ipn.py  >", ["config.ini"]))
        self.assertTrue(ipn_receiver.section_matches_any("<Files ~ 'ini$'>", ["config.ini"]))
        self.assertFalse(ipn_receiver.section_matches_any("<Files 'ini$'>", ["config.ini"]))   # a wildcard pattern
        # A denial within a section that encloses the scripts' is not at the top either.
        self.assertFalse(ipn_receiver.serves_only_the_scripts(
            "Options +ExecCGI -Indexes\nAddHandler cgi-script .py\n<IfModule mod_authz_core.c>\n<Files ipn.py>\n"
            "Require all granted\n</Files>\nRequire all denied\n</IfModule>\n"))
        # Apache's negation in a wildcard is [^...] (fnmatch's, [!...]); PCRE's classes like
        # [[:alpha:]] are not Python's: such a pattern may serve anything.
        self.assertTrue(ipn_receiver.section_matches_any('<Files "[^_]*">', ["config.ini"]))
        self.assertFalse(ipn_receiver.section_matches_any('<Files "[^c]*">', ["config.ini"]))
        self.assertTrue(ipn_receiver.section_matches_any('<FilesMatch "^[[:alnum:]_]+\\.[[:alpha:]]+$">', ["x"]))
        # What the fifth review tried: the handler for other extensions only, commented out, or
        # within <IfModule> (a server with mod_cgid has no mod_cgi.c); -Indexes in a comment, or
        # turned on again; a <Files> wildcard whose backslash Apache reads as an escape.
        for changed in (guide.replace("AddHandler cgi-script .py", "AddHandler cgi-script .cgi .pl"),
                        guide.replace("AddHandler cgi-script .py", "# AddHandler cgi-script .py"),
                        guide.replace("AddHandler cgi-script .py", "<IfModule mod_cgi.c>\nAddHandler cgi-script .py\n"
                                                                   "</IfModule>"),
                        guide.replace("Options +ExecCGI -Indexes", "Options +ExecCGI\n# Options -Indexes"),
                        guide.replace("Options +ExecCGI -Indexes", "Options +ExecCGI -Indexes\nOptions +Indexes"),
                        guide.replace("Options +ExecCGI -Indexes", "Options -Indexes\n<IfModule mod_cgi.c>\n"
                                                                   "Options +ExecCGI\n</IfModule>"),
                        guide.replace('<FilesMatch "^(ipn_receiver|ipn)\\.py$">', '<Files "ipn_receiver\\.py*">')
                             .replace("</FilesMatch>", "</Files>")):
            with self.subTest(changed=changed):
                self.assertFalse(ipn_receiver.serves_only_the_scripts(changed))
        for changed in (guide.replace("AddHandler cgi-script .py", "DirectoryIndex ipn_receiver.py"),
                        guide.replace("Options +ExecCGI -Indexes", "Options All")):     # All: listings too
            with self.subTest(changed=changed):
                self.assertFalse(ipn_receiver.serves_only_the_scripts(changed))
        for same in (guide.replace("AddHandler cgi-script .py", "AddHandler cgi-script .cgi py"),
                     guide.replace("Options +ExecCGI -Indexes", "Options All -Indexes"),
                     guide.replace("Options +ExecCGI -Indexes", "Options ExecCGI"),   # plain names: a new set
                     guide.replace("Options +ExecCGI -Indexes", "Options +ExecCGI\nOptions -Indexes"),
                     guide.replace('<FilesMatch "^(ipn_receiver|ipn)\\.py$">', '<Files "ipn_receiver\\.py">')
                          .replace("</FilesMatch>", "</Files>")):
            with self.subTest(same=same):
                self.assertTrue(ipn_receiver.serves_only_the_scripts(same))
        self.assertEqual(ipn_receiver.apache_wildcard("ipn_receiver\\.py*"), "ipn_receiver.py*")
        self.assertEqual(ipn_receiver.apache_wildcard("\\*[^c]\\[x\\]?"), "[*][!c][[]x[]]?")
        self.assertEqual(ipn_receiver.apache_wildcard("config\\.ini"), "config\\.ini")      # no wildcard: as it is
        for pattern in ("?onfig.ini", "[cd]onfig.ini", "c*"):                         # each a wildcard alone
            self.assertEqual(ipn_receiver.apache_wildcard(pattern), pattern)
        self.assertEqual(ipn_receiver.apache_wildcard("[^x]onfig.ini"), "[!x]onfig.ini")
        self.assertEqual(ipn_receiver.apache_wildcard("a\\*b"), "a\\[*]b")
        # A copy found beside the script is judged by its own name too.
        loose = top + '<FilesMatch "\\.py(\\.old)?$">\n    Require all granted\n</FilesMatch>\n'
        self.assertFalse(ipn_receiver.serves_only_the_scripts(loose.replace("old", "new"), ["ipn_receiver.py.new"]))
        self.assertTrue(ipn_receiver.serves_only_the_scripts(loose.replace("old", "new"), ["ipn_receiver.py.bak"]))

    def test_python_36_is_enough(self):
        import contextlib
        import io
        import sys
        for version, verdict in (((3, 6, 0, "final", 0), "ok      "), ((3, 5, 10, "final", 0), "PROBLEM ")):
            output = io.StringIO()
            with mock.patch.object(sys, "version_info", version), contextlib.redirect_stdout(output):
                ipn_receiver.main(["check"])
            self.assertIn(verdict + " Python ", output.getvalue())
        self.assertIn("use Python 3.6 or later", output.getvalue())

    def test_under_python_36_a_data_dir_not_named_in_ascii_is_a_problem(self):
        # Run over SSH in a UTF-8 locale it works; run by a web server that sets no LANG, Python
        # 3.6 names files in ASCII and every call fails.
        import contextlib
        import io
        import sys
        folder = os.fsdecode(os.path.join(self.data_dir, "zahlungs-").encode() + "\u00e4".encode("utf-8"))
        for version, verdict in (((3, 6, 15, "final", 0), "PROBLEM "), ((3, 7, 0, "final", 0), None)):
            output = io.StringIO()
            with mock.patch.dict(os.environ, IPN_DATA_DIR=folder), mock.patch.object(sys, "version_info", version), \
                    mock.patch.object(ipn_receiver, "_settings", None), contextlib.redirect_stdout(output):
                ipn_receiver.main(["check"])
            line = "data folder %s is named in ASCII" % folder
            if verdict and sys.getfilesystemencoding().lower() in ("utf-8", "utf8"):
                self.assertIn(verdict + " " + line, output.getvalue())
                self.assertIn("set DATA_DIR to a folder named in ASCII", output.getvalue())
            elif verdict:       # (this very Python names files in ASCII: the settings say so first)
                self.assertIn("DATA_DIR holds characters this Python cannot use in a file name", output.getvalue())
            else:
                self.assertNotIn(line, output.getvalue())


class Help(unittest.TestCase):
    def test_help_lists_the_commands(self):
        done = subprocess.run([PYTHON, SCRIPT, "--help"], stdout=subprocess.PIPE, timeout=60)
        for command in ("serve", "send", "demo", "events", "show", "replay", "check"):
            self.assertIn(command.encode(), done.stdout)

    def test_main_can_be_called_by_a_wrapper(self):
        import contextlib
        import io
        folder = tempfile.mkdtemp(prefix="ipn-main-")
        self.addCleanup(shutil.rmtree, folder, True)
        output = io.StringIO()
        with mock.patch.dict(os.environ, {"IPN_DATA_DIR": folder}), contextlib.redirect_stdout(output):
            ipn_receiver._settings = None
            self.assertEqual(ipn_receiver.main(["events"]), 0)
        ipn_receiver.close_store()
        ipn_receiver.log.reset()
        ipn_receiver._settings = None
        self.assertTrue(output.getvalue().startswith("no event store at %s: nothing was received" % os.path.join(
            folder, "events.sqlite3")), output.getvalue())


if __name__ == "__main__":
    unittest.main()
