"""Exactly once across processes: copies arriving at the same moment in separate CGI processes,
a process killed in the middle of its handler, and a stress run of 2,000 notifications from 8
processes at once (half of them copies) with no call failed by lock contention."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

from helpers import PYTHON, REPO, cgi_environment, ipn_receiver, parse_cgi_output, payment, promopit_sale, urlencode

BUSY = ipn_receiver.BUSY_ANSWER

WORKER = os.path.join(REPO, "tests", "worker.py")


class ProcessTestCase(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="ipn-concurrency-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.data_dir = os.path.join(self.folder, "data")
        self.record = os.path.join(self.folder, "record.txt")

    def environment(self, body=b"", **extra):
        environment = cgi_environment(self.data_dir, body=body, IPN_TEST_RECORD=self.record, **extra)
        return environment

    def start_cgi(self, body, **extra):
        """Start the wrapper as a CGI program (its own session, so we can stop just it)."""
        process = subprocess.Popen([PYTHON, WORKER], env=self.environment(body, **extra),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
        process.stdin.write(body)
        process.stdin.close()
        return process

    def finish_cgi(self, process, timeout=60):
        output = process.stdout.read()
        process.wait(timeout)
        process.stdout.close()
        process.stderr.close()
        status, _, body = parse_cgi_output(output)
        return status, body.decode("utf-8")

    def records(self):
        if not os.path.exists(self.record):
            return []
        with open(self.record) as file:
            return file.read().splitlines()

    def store(self):
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        connection.row_factory = sqlite3.Row
        self.addCleanup(connection.close)
        return connection


class CopiesAtTheSameMoment(ProcessTestCase):
    def test_two_copies_in_separate_cgi_processes_dispatch_once(self):
        body = urlencode(payment("424242"))
        first = self.start_cgi(body, IPN_TEST_SLEEP="1")
        deadline = time.time() + 30
        while not self.records() and time.time() < deadline:    # the first one is in its handler
            time.sleep(0.02)
        second = self.start_cgi(body, IPN_TEST_SLEEP="1")
        answers = [self.finish_cgi(first), self.finish_cgi(second)]
        self.assertEqual(answers[1], (503, BUSY))
        self.assertEqual(answers[0][0], 200)
        self.assertTrue(answers[0][1].startswith("OK\nusername: buyer\npassword: "))
        # The sender retries the refused copy later and gets the very same answer.
        self.assertEqual(self.finish_cgi(self.start_cgi(body)), answers[0])
        self.assertEqual(self.records(), ["digistore24:on_payment:424242"])

    def test_many_copies_started_together_dispatch_once(self):
        body = urlencode(payment("515151"))
        processes = [self.start_cgi(body, IPN_TEST_SLEEP="0.3") for _ in range(6)]
        answers = [self.finish_cgi(process) for process in processes]
        self.assertEqual(len(self.records()), 1)
        oks = [text for status, text in answers if status == 200]
        busy = [text for status, text in answers if status == 503]
        self.assertEqual(len(oks) + len(busy), 6)
        self.assertTrue(oks)
        self.assertEqual(set(oks), {oks[0]})
        self.assertEqual(set(busy), {BUSY} if busy else set())


class KilledMidHandler(ProcessTestCase):
    def test_a_killed_process_leaves_a_consistent_store_and_its_claim_is_taken_over(self):
        body = urlencode(payment("616161"))
        victim = self.start_cgi(body, IPN_TEST_SLEEP="60", IPN_PROCESSING_TIMEOUT="2")
        deadline = time.time() + 30
        while not self.records() and time.time() < deadline:
            time.sleep(0.02)
        os.killpg(victim.pid, signal.SIGKILL)                   # its own session: just this process
        victim.wait(10)
        self.assertEqual(victim.stdout.read(), b"")             # it never said OK
        victim.stdout.close()
        victim.stderr.close()
        store = self.store()
        self.assertEqual(store.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        self.assertEqual(store.execute("SELECT status FROM notifications").fetchone()[0], "processing")
        # Within the timeout a retry is told to come back later...
        self.assertEqual(self.finish_cgi(self.start_cgi(body, IPN_PROCESSING_TIMEOUT="2")),
                         (503, BUSY))
        # ...after it, the retry takes the claim over and runs the handler to the end.
        time.sleep(2.1)
        status, text = self.finish_cgi(self.start_cgi(body, IPN_PROCESSING_TIMEOUT="2"))
        self.assertEqual(status, 200)
        self.assertTrue(text.startswith("OK\nusername: buyer"))
        row = store.execute("SELECT status, attempts, deliveries FROM notifications").fetchone()
        self.assertEqual(tuple(row), ("done", 2, 3))
        self.assertEqual(len(self.records()), 2)                # the killed run and the finished one


class Stress(ProcessTestCase):
    """2,000 notifications, half of them copies, from 8 processes at once, on a fresh store."""

    PROCESSES = 8
    DISTINCT = 1000

    def test_every_distinct_notification_is_handled_exactly_once(self):
        notifications = []
        for number in range(self.DISTINCT):
            if number % 10 == 9:
                fields = promopit_sale("PP-%d" % number)
            else:
                event = ("on_payment", "on_refund", "on_rebill_cancelled")[number % 3]
                fields = payment(str(900000 + number), event=event)
            notifications.append(urlencode(fields).decode())
        # Each notification is sent twice, by two processes that work through the same list in
        # the same order (workers 0 and 1 share a list, 2 and 3 another, ...), so copies race.
        jobs = [[] for _ in range(self.PROCESSES)]
        for number, body in enumerate(notifications):
            pair = number % (self.PROCESSES // 2)
            jobs[2 * pair].append(["%d/a" % number, body])
            jobs[2 * pair + 1].append(["%d/b" % number, body])
        start_at = time.time() + 1.5
        environment = dict(os.environ, IPN_DATA_DIR=self.data_dir, IPN_TEST_RECORD=self.record,
                           IPN_SHA_PASSPHRASE="s3cret-passphrase", IPN_ISN_KEY="pp-isn-7f3a9c2e51",
                           IPN_LOG_LEVEL="WARNING", IPN_TEST_SLEEP="0.003")
        environment.pop("GATEWAY_INTERFACE", None)
        processes = []
        for number, job in enumerate(jobs):        # jobs and results go through files: every
            job_file = os.path.join(self.folder, "job%d.json" % number)       # process starts now
            with open(job_file, "w") as file:
                json.dump({"requests": job, "start_at": start_at}, file)
            with open(job_file) as stdin, open(job_file + ".out", "w") as stdout, \
                    open(job_file + ".err", "w") as stderr:
                processes.append((subprocess.Popen([PYTHON, WORKER], env=environment, stdin=stdin,
                                                   stdout=stdout, stderr=stderr, start_new_session=True),
                                  job_file))
        results = []
        for process, job_file in processes:
            process.wait(600)
            with open(job_file + ".err") as file:
                self.assertEqual(process.returncode, 0, file.read()[-2000:])
            with open(job_file + ".out") as file:
                results.extend(json.load(file))

        final = {}
        busy = storage_failures = 0
        for result in results:
            status, text = result["tries"][-1]
            busy += len(result["tries"]) - 1
            storage_failures += sum(1 for s, t in result["tries"] if t == ipn_receiver.STORAGE_ERROR)
            final[result["tag"]] = (status, text)
        print("\n  stress: %d calls from %d processes, %d distinct; %d answered 'already being "
              "processed' and retried, %d failed for storage" % (
                  sum(len(r["tries"]) for r in results), self.PROCESSES, self.DISTINCT, busy,
                  storage_failures), file=sys.stderr)
        self.assertEqual(storage_failures, 0)
        self.assertGreater(busy, 0, "the copies never met: the test did not test concurrency")
        self.assertEqual(len(final), 2 * self.DISTINCT)
        for number in range(self.DISTINCT):
            first, second = final["%d/a" % number], final["%d/b" % number]
            self.assertEqual(first[0], 200)
            self.assertEqual(second, first, number)        # both copies get the same answer
        records = self.records()
        self.assertEqual(len(records), self.DISTINCT)
        self.assertEqual(len(set(records)), self.DISTINCT)  # every distinct one exactly once
        store = self.store()
        self.assertEqual(store.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        self.assertEqual(store.execute("SELECT count(*), sum(attempts), sum(deliveries) FROM notifications "
                                       "WHERE status = 'done'").fetchone()[:],
                         (self.DISTINCT, self.DISTINCT, 2 * self.DISTINCT + busy))


if __name__ == "__main__":
    unittest.main()
