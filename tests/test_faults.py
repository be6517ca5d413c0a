"""Faults: a handler that raises or hangs past the sender's patience, a read-only store, a full
disk, a database deleted or damaged between calls, CGI processes killed at random moments.

After each: no OK for work that was not done, no stored notification lost, and a store that
passes PRAGMA integrity_check.
"""

import contextlib
import io
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from unittest import mock

from helpers import (PASSPHRASE, PYTHON, REPO, ReceiverTestCase, cgi_environment, close_store_files, ipn_receiver,
                     parse_cgi_output, payment, post, read_only_folder, readable_keys, urlencode)

WORKER = os.path.join(REPO, "tests", "worker.py")
STORAGE_ERROR = ipn_receiver.STORAGE_ERROR
BUSY = ipn_receiver.BUSY_ANSWER


def kill_label(point):
    statement, _, seconds = point.partition("|")
    if statement == "outside":
        return "from outside"
    return "%.0f ms into %s" % (float(seconds) * 1000, statement) if seconds else "at " + statement


def integrity(path):
    """PRAGMA integrity_check's verdict ("ok"), or what went wrong running it."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as error:
        return str(error)
    finally:
        connection.close()


class StoreFaults(ReceiverTestCase):
    def store(self):
        return os.path.join(self.data_dir, "events.sqlite3")

    def assertHealthy(self):
        ipn_receiver.close_store()
        self.assertEqual(integrity(self.store()), "ok")

    def test_a_raising_handler_gets_no_ok_and_its_notification_is_kept(self):
        self.handle("on_payment", lambda n: {}["no such key"])
        answer = post(payment())
        self.assertEqual(answer.status, 500)
        self.assertTrue(answer.body.startswith("ERROR: handler <lambda> failed (KeyError) for notification #1"))
        row = self.rows()[0]
        self.assertEqual((row["status"], row["last_error"]), ("failed", "KeyError: 'no such key'"))
        self.assertHealthy()

    def test_a_read_only_store_keeps_what_it_has_and_says_no_ok(self):
        for number in range(5):
            post(payment(str(number)))
        ipn_receiver.close_store()
        with read_only_folder(self.data_dir):
            ipn_receiver.log.reset()
            answers = [post(payment(str(number))) for number in range(5, 8)]
            copy = post(payment("1"))           # a copy of one stored before: cannot count it
        self.assertEqual({(a.status, a.body) for a in answers}, {(503, STORAGE_ERROR)})
        self.assertEqual(copy.status, 503)
        self.assertEqual(len(self.rows()), 5)
        self.assertHealthy()

    def test_a_database_deleted_between_calls(self):
        # Not made anew unasked (the copy of 1 would run again): 503 until `repair --force`.
        post(payment("1"))
        ipn_receiver.close_store()                # as between two CGI calls
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.store() + suffix):
                os.remove(self.store() + suffix)
        self.assertEqual(post(payment("2")).body, STORAGE_ERROR)
        self.assertFalse(os.path.exists(self.store()))
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(ipn_receiver.main(["repair", "--force"]), 0)
        self.assertEqual(post(payment("2")).body, "OK")
        self.assertEqual([row["duplicate_key"] for row in self.rows()], ["digistore24:on_payment:2"])
        self.assertHealthy()

    def test_a_database_damaged_in_its_pages_between_calls(self):
        for number in range(200):
            post(payment(str(number)))
        ipn_receiver.close_store()
        connection = sqlite3.connect(self.store())
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
        size = os.path.getsize(self.store())
        garbage = random.Random(1125)
        with open(self.store(), "r+b") as file:           # garbage over pages in the middle
            file.seek(size // 2)
            file.write(bytes(garbage.getrandbits(8) for _ in range(8192)))
        readable = readable_keys(self.store())
        self.assertLess(len(readable), 200)                 # rows were really destroyed
        answer = post(payment("new"))
        # The call touches pages of its own and may not meet the damage: then it is stored in the
        # damaged file, and `check` reports the damage. Either way: no OK that was not stored.
        ipn_receiver.close_store()
        if integrity(self.store()) != "ok":
            with contextlib.redirect_stdout(io.StringIO()) as output:
                self.assertEqual(ipn_receiver.main(["repair"]), 0)
            self.assertIn("the new store holds", output.getvalue())
        self.assertHealthy()
        kept = {row["duplicate_key"] for row in self.rows()}
        if answer.body == "OK":
            self.assertIn("digistore24:on_payment:new", kept)
        else:
            self.assertEqual((answer.status, answer.body), (503, STORAGE_ERROR))
        self.assertLessEqual(readable, kept)                # nothing that could be read was lost
        self.assertTrue(any(".damaged-" in name for name in os.listdir(self.data_dir)))   # kept aside
        # A copy of a notification that was kept gets its stored answer, not a second run.
        seen = []
        self.handle("on_payment", seen.append)
        self.assertEqual(post(payment(sorted(readable)[0].split(":")[-1])).body, "OK")
        self.assertEqual(seen, [])

    def test_check_reports_damage_and_repair_mends_it(self):
        for number in range(50):
            post(payment(str(number)))
        ipn_receiver.close_store()
        connection = sqlite3.connect(self.store())
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
        with open(self.store(), "r+b") as file:
            file.seek(os.path.getsize(self.store()) - 4096)
            file.write(b"\x00\xff" * 2048)
        environment = dict(os.environ, IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_DATA_DIR=self.data_dir)
        done = subprocess.run([PYTHON, os.path.join(REPO, "ipn_receiver.py"), "check"], env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"python3 ipn_receiver.py repair", done.stdout)
        done = subprocess.run([PYTHON, os.path.join(REPO, "ipn_receiver.py"), "repair"], env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout)
        self.assertIn(b"was set aside (repair: ", done.stderr)            # the log line says what happened
        self.assertEqual(integrity(self.store()), "ok")


    def test_a_full_disk(self):
        """A real full disk (a small tmpfs) where the machine allows; an injected SQLITE_FULL else."""
        mount_point = tempfile.mkdtemp(prefix="ipn-full-")
        self.addCleanup(shutil.rmtree, mount_point, True)
        mounted = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", mount_point],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        if not mounted:
            return self.full_disk_injected()
        self.addCleanup(subprocess.run, ["umount", mount_point], check=True)
        self.addCleanup(close_store_files)              # (first: a file open there keeps it mounted)
        self.addCleanup(ipn_receiver.log.reset)              # nothing may stay open on the mount
        self.addCleanup(ipn_receiver.close_store)
        data_dir = os.path.join(mount_point, "data")
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=data_dir, PROCESSING_TIMEOUT=1)
        answers = {}
        for number in range(400):                            # until the disk is full
            answers[number] = post(payment(str(number)))
            if answers[number].status != 200:
                break
        full = [n for n, a in answers.items() if a.status != 200]
        self.assertTrue(full, "the disk never filled")
        for number in full:         # the claim could not be written; or the handler's outcome (see below)
            self.assertEqual(answers[number].status, 503)
            self.assertIn(answers[number].body, (STORAGE_ERROR, ipn_receiver.OUTCOME_NOT_STORED % (
                number + 1, "did its work")))
        for number in range(len(answers), len(answers) + 5):  # and it stays refused, never OK
            answers[number] = post(payment(str(number)))
            self.assertNotEqual(answers[number].body, "OK")
        ipn_receiver.close_store()
        connection = sqlite3.connect(os.path.join(data_dir, "events.sqlite3"))
        done = {row[0] for row in connection.execute("SELECT duplicate_key FROM notifications WHERE status = 'done'")}
        self.assertEqual(connection.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        connection.close()
        for number, answer in answers.items():              # every OK was stored as done
            if answer.body == "OK":
                self.assertIn("digistore24:on_payment:%d" % number, done)
        # Space again, and the sender retries, minutes later: every refused one is taken now.
        # (One whose handler ran but whose outcome could not be written stayed "processing":
        # after PROCESSING_TIMEOUT, here 1 s, its handler runs again; it never got an OK.)
        subprocess.run(["mount", "-o", "remount,size=4m", mount_point], check=True)
        ipn_receiver.log.reset()
        time.sleep(1.1)
        for number, answer in answers.items():
            if answer.status != 200:
                self.assertEqual(post(payment(str(number))).body, "OK")
        ipn_receiver.close_store()
        self.assertEqual(integrity(os.path.join(data_dir, "events.sqlite3")), "ok")

    def full_disk_injected(self):
        post(payment("1"))
        real_open = ipn_receiver.open_store

        class Full:
            def __init__(self, connection):
                self.connection = connection

            def execute(self, sql, *args):
                if sql.startswith(("INSERT", "UPDATE")):
                    raise sqlite3.OperationalError("database or disk is full")
                return self.connection.execute(sql, *args)

        with mock.patch.object(ipn_receiver, "open_store", lambda config: Full(real_open(config))):
            answer = post(payment("2"))
        self.assertEqual((answer.status, answer.body), (503, STORAGE_ERROR))
        self.assertEqual(post(payment("2")).body, "OK")
        self.assertHealthy()


class ProcessFaults(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="ipn-faults-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.data_dir = os.path.join(self.folder, "data")
        self.record = os.path.join(self.folder, "record.txt")

    def records(self):
        if not os.path.exists(self.record):
            return []
        with open(self.record) as file:
            return file.read().splitlines()

    def test_a_handler_slower_than_the_senders_patience(self):
        """The sender gives up; the work goes on and is recorded; its retries get the answer."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        environment = dict(os.environ, IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_DATA_DIR=self.data_dir,
                           IPN_TEST_RECORD=self.record, IPN_TEST_SLEEP="2")
        environment.pop("GATEWAY_INTERFACE", None)
        server = subprocess.Popen([PYTHON, WORKER, "serve", "--port", str(port)], env=environment,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.addCleanup(lambda: (os.killpg(server.pid, signal.SIGTERM), server.wait(10)))
        url = "http://127.0.0.1:%d/" % port
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        body = urlencode(payment("slow-1"))

        def send(timeout):
            request = urllib.request.Request(url, data=body, headers={
                "Content-Type": "application/x-www-form-urlencoded"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        with self.assertRaises(OSError):               # the sender's patience ends first
            send(timeout=0.5)
        self.assertEqual(send(timeout=5), (503, BUSY))
        time.sleep(2)
        status, text = send(timeout=5)
        self.assertEqual(status, 200)
        self.assertTrue(text.startswith("OK\nusername: buyer\npassword: "))
        self.assertEqual(send(timeout=5), (status, text))    # and again: the same answer
        self.assertEqual(self.records(), ["digistore24:on_payment:slow-1"])
        self.assertEqual(integrity(os.path.join(self.data_dir, "events.sqlite3")), "ok")

    # Where a CGI process is killed (tests/worker.py, IPN_TEST_KILL): while the store is created,
    # inside the claim's transaction, after its handler ran and before the outcome is written,
    # inside that transaction, during a commit (a timer of 0 to 4 ms, started as the commit
    # begins, so that some die while SQLite writes), and at random moments from outside.
    KILL_POINTS = ["CREATE TABLE|", "INSERT OR IGNORE|", "SELECT id, status, claim|", "UPDATE notifications SET status|",
                   "COMMIT|0.001", "COMMIT|0.002", "COMMIT|0.004", "outside", "outside", "never"]

    def test_cgi_processes_killed_at_every_point_of_their_work(self):
        """SIGKILL at chosen points of 60 CGI calls: the store stays whole, every OK was stored as
        done, and the sender's retries finish every one, each answered as its first OK said."""
        rng = random.Random(1121)
        bodies = [urlencode(payment("kill-%d" % number)) for number in range(60)]
        answered, died = {}, {}
        for number, body in enumerate(bodies):
            point = rng.choice(self.KILL_POINTS) if number else "CREATE TABLE|"   # the first one creates
            environment = cgi_environment(self.data_dir, body=body, IPN_TEST_RECORD=self.record,
                                          IPN_PROCESSING_TIMEOUT="1")
            if point not in ("outside", "never"):
                environment["IPN_TEST_KILL"] = point
            process = subprocess.Popen([PYTHON, WORKER], env=environment, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
            process.stdin.write(body)
            process.stdin.close()
            if point == "outside":
                try:
                    process.wait(rng.uniform(0.005, 0.06))
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
            output = process.stdout.read()
            process.wait(30)
            process.stdout.close()
            if process.returncode == -signal.SIGKILL:
                died[point] = died.get(point, 0) + 1
            if output:
                answered[number] = parse_cgi_output(output)[::2]
        path = os.path.join(self.data_dir, "events.sqlite3")
        self.assertEqual(integrity(path), "ok")
        connection = sqlite3.connect(path)
        states = dict(connection.execute("SELECT duplicate_key, status FROM notifications"))
        connection.close()
        print("\n  faults: %d of %d CGI calls killed (%s); %d left a claim behind" % (
            sum(died.values()), len(bodies), ", ".join("%s: %d" % (kill_label(point), count)
                                                      for point, count in sorted(died.items())),
            sum(1 for state in states.values() if state == "processing")), file=sys.stderr)
        for point in self.KILL_POINTS[:4]:                 # each fixed point was really reached
            self.assertGreater(died.get(point, 0), 0, point)
        for number, (status, text) in answered.items():
            if status == 200:
                self.assertEqual(states["digistore24:on_payment:kill-%d" % number], "done")
        time.sleep(1.1)                                    # PROCESSING_TIMEOUT: claims are abandoned now
        for number, body in enumerate(bodies):             # the sender retries everything
            environment = cgi_environment(self.data_dir, body=body, IPN_TEST_RECORD=self.record,
                                          IPN_PROCESSING_TIMEOUT="1")
            done = subprocess.run([PYTHON, WORKER], env=environment, input=body, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, timeout=60)
            status, _, text = parse_cgi_output(done.stdout)
            self.assertEqual(status, 200, number)
            if number in answered and answered[number][0] == 200:
                self.assertEqual(text, answered[number][1])  # a retry gets what the first OK said
        connection = sqlite3.connect(path)
        self.assertEqual(connection.execute("SELECT count(*) FROM notifications WHERE status = 'done'").fetchone()[0],
                         len(bodies))
        connection.close()
        self.assertEqual(integrity(path), "ok")
        # A handler whose process was killed after it ran, before its outcome was stored, runs
        # again on the retry (no receiver can know it finished); every notification ran.
        self.assertEqual(set(self.records()), {"digistore24:on_payment:kill-%d" % n for n in range(len(bodies))})


if __name__ == "__main__":
    unittest.main()
