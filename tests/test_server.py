"""The local server, `send` and `demo`, over real HTTP on 127.0.0.1.

Each test starts `python3 ipn_receiver.py serve --port 0` in its own session and stops it by its
process id."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import select
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

from helpers import PYTHON, ISN_KEY, PASSPHRASE, REPO, SCRIPT, ipn_receiver, payment, signed, urlencode

WORKER = os.path.join(REPO, "tests", "worker.py")


def clean_environment(**values):
    """The environment without any IPN_ setting of the caller's, plus `values`."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("IPN_") and key != "GATEWAY_INTERFACE"}
    environment.update(values)
    return environment


class LocalServer(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="ipn-server-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.environment = clean_environment(IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_ISN_KEY=ISN_KEY,
                                             IPN_DATA_DIR=os.path.join(self.folder, "data"))
        self.server = subprocess.Popen([PYTHON, SCRIPT, "serve", "--port", "0"], env=self.environment,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.addCleanup(self.stop)
        line = self.server.stdout.readline().decode()
        self.assertIn("listening on http://127.0.0.1:", line)
        self.url = line.split("listening on ")[1].split()[0]

    def stop(self):
        if self.server.stdout.closed:
            return
        if self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
        self.server.wait(10)
        self.console = self.server.stderr.read().decode()
        self.server.stdout.close()
        self.server.stderr.close()

    def send(self, *arguments, **environment):
        done = subprocess.run([PYTHON, SCRIPT, "send"] + list(arguments) + ["--url", self.url],
                              env=dict(self.environment, **environment), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    def test_get_says_it_is_up(self):
        with urllib.request.urlopen(self.url, timeout=10) as response:
            self.assertEqual(response.status, 200)
            self.assertTrue(response.read().startswith(b"OK ipn_receiver is up"))

    def test_send_every_event_and_sale(self):
        events = ["connection_test", "on_payment", "on_payment_missed", "on_refund", "on_chargeback",
                  "on_rebill_cancelled", "on_rebill_resumed", "last_paid_day", "on_affiliation", "sale"]
        for event in events:
            code, output, errors = self.send(event)
            self.assertEqual((code, output), (0, "HTTP 200\nOK\n"), event + errors)
        code, output, _ = self.send("sale", "--provider", "promopit")
        self.assertEqual(code, 0)
        # A misspelt event would be answered OK like a new one, stored, and run no handler: not sent
        # (the 51st review).
        self.assertEqual(self.send("on_paymnet"), (2, "", "ERROR: on_paymnet is not one of Digistore24's events: "
                                                   "%s\n" % ", ".join(ipn_receiver.DIGISTORE24_EVENTS +
                                                                       ipn_receiver.DIGISTORE24_RARER_EVENTS)))

    def test_send_sends_an_event_the_vendor_has_a_handler_for(self):
        # A handler added for an event the receiver does not know of yet: send refused it, though
        # Digistore24 sends it (the 63rd review).
        with open(SCRIPT, encoding="utf-8") as file:
            source = file.read()
        self.assertIn('    "on_affiliation": on_affiliation,\n', source)
        folder = tempfile.mkdtemp(prefix="ipn-send-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = os.path.join(folder, "ipn_receiver.py")
        with open(script, "w", encoding="utf-8") as file:
            file.write(source.replace('    "on_affiliation": on_affiliation,\n', '    "on_affiliation": on_affiliation,\n'
                                      '    "on_subscription_paused": on_rebill_cancelled,\n'))
        done = subprocess.run([PYTHON, script, "send", "on_subscription_paused", "--url", self.url],
                              env=self.environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual((done.returncode, done.stdout.decode()), (0, "HTTP 200\nOK\n"), done.stderr)
        done = subprocess.run([PYTHON, script, "send", "on_subscription_pause", "--url", self.url],
                              env=self.environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual((done.returncode, done.stderr.decode()), (2, "ERROR: on_subscription_pause is not one of "
                         "Digistore24's events: %s, on_subscription_paused\n" % ", ".join(
                             ipn_receiver.DIGISTORE24_EVENTS + ipn_receiver.DIGISTORE24_RARER_EVENTS)))

    def test_send_reads_its_arguments_as_utf8_whatever_the_locale(self):
        # Python 3.6 with no LANG read "Müller" as ASCII, and send said it "could not reach" the
        # server (the 56th review).
        no_locale = {"LANG": "", "LC_ALL": "", "LC_CTYPE": ""}
        self.assertEqual(self.send("sale", "--set", "customer_name=M\u00fcller", **no_locale)[:2], (0, "HTTP 200\nOK\n"))
        with sqlite3.connect(os.path.join(self.folder, "data", ipn_receiver.STORE_FILE_NAME)) as store:
            fields = json.loads(store.execute("SELECT fields FROM notifications").fetchone()[0])
        self.assertEqual(fields["customer_name"], "M\u00fcller")

    def test_a_handlers_print_the_console_cannot_show_does_not_fail_it(self):
        # The local server's console under a locale that cannot show "ö" (the 56th review).
        self.stop()
        record = os.path.join(self.folder, "record.txt")
        server = subprocess.Popen([PYTHON, WORKER, "serve", "--port", "0"], env=dict(
            self.environment, IPN_TEST_RECORD=record, IPN_TEST_PRINT="J\u00f6rg", PYTHONIOENCODING="ascii"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            url = server.stdout.readline().decode().split("listening on ")[1].split()[0]
            with urllib.request.urlopen(url, urlencode(signed(payment())), timeout=30) as response:
                self.assertTrue(response.read().startswith(b"OK\nusername: buyer"))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)
            errors = server.stderr.read().decode()
            server.stdout.close()
            server.stderr.close()
        self.assertIn("J\\xf6rg\n", errors)

    def test_send_with_set_fields_and_a_forgery(self):
        code, output, _ = self.send("on_payment", "--set", "order_id=ABC123", "--set", "custom=a=b")
        self.assertEqual(code, 0)
        code, output, _ = self.send("on_payment", "--set", "sha_sign=FORGED")
        # Where send and the receiver read other passphrases, it says which one it signed with.
        self.assertEqual((code, output), (1, "HTTP 403\nERROR: %s\n(send used the SHA_PASSPHRASE of this "
                                             "machine's settings, environment variable IPN_SHA_PASSPHRASE: the "
                                             "receiver's must be the same)\n" % ipn_receiver.INVALID_SIGNATURE_ANSWER))
        code, output, _ = self.send("sale", IPN_ISN_KEY="wrong-key")
        self.assertEqual((code, output), (1, "HTTP 403\nERROR: %s\n(send used the ISN_KEY of this machine's settings, "
                                             "environment variable IPN_ISN_KEY: the receiver's must be the same)\n"
                                             % ipn_receiver.INVALID_ISN_KEY_ANSWER))
        self.stop()
        self.assertIn("order ABC123", self.console)       # the server logged each request

    def test_send_without_a_secret_explains_what_to_set(self):
        code, output, errors = self.send("on_payment", IPN_SHA_PASSPHRASE="")
        self.assertEqual(code, 2)
        self.assertIn("SHA_PASSPHRASE", errors)

    def test_a_chunked_post_gets_a_clear_refusal_not_a_hang(self):
        host, port = self.url.split("//")[1].rstrip("/").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n5\r\nevent\r\n0\r\n\r\n")
            answer = b""
            while True:                                 # the server closes when it has answered
                part = connection.recv(4096)
                if not part:
                    break
                answer += part
        self.assertTrue(answer.startswith(b"HTTP/1.0 411") or answer.startswith(b"HTTP/1.1 411"), answer)
        self.assertIn(b"ERROR: a POST needs a Content-Length", answer)


class SilentClients(unittest.TestCase):
    """A client that sends half a request and then nothing must not hold a thread for ever."""

    def setUp(self):
        from unittest import mock
        self.folder = tempfile.mkdtemp(prefix="ipn-server-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.folder)
        ipn_receiver.log.to_stderr = False
        self.addCleanup(setattr, ipn_receiver, "_settings", None)
        self.addCleanup(ipn_receiver.close_store)
        self.addCleanup(ipn_receiver.log.reset)
        # (Before the settings are let go: a request cut off last still logs its line, which would
        # otherwise go to the default data folder, beside the script.)
        running = set(threading.enumerate())
        self.addCleanup(lambda: [thread.join(10) for thread in set(threading.enumerate()) - running
                                 if thread.is_alive()])     # (one still starting is joined by its starter)
        with mock.patch.object(ipn_receiver, "LOCAL_SERVER_TIMEOUT", 0.5), \
                mock.patch.object(ipn_receiver, "LOCAL_SERVER_CONNECTIONS", 3):
            self.server = ipn_receiver.make_local_server("127.0.0.1", 0)
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)

    def half_sent(self, data):
        """What the server answers to `data` followed by silence, and when it closes; None if it
        waits longer than 10 s."""
        with socket.create_connection(("127.0.0.1", self.server.server_port), timeout=10) as connection:
            connection.sendall(data)
            answer = b""
            try:
                while True:
                    part = connection.recv(4096)
                    if not part:
                        return answer
                    answer += part
            except socket.timeout:
                return None

    def test_a_body_that_stops_coming_is_refused(self):
        answer = self.half_sent(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                                b"Content-Length: 100\r\n\r\nevent=on_pay")
        self.assertIsNotNone(answer, "the server waited for the rest of the body without end")
        self.assertIn(b" 400 ", answer.split(b"\r\n")[0])
        self.assertIn(b"ERROR: the body", answer)

    def test_headers_that_stop_coming_are_dropped(self):
        self.assertIsNotNone(self.half_sent(b"POST / HTTP/1.1\r\nHost: x\r\n"),
                             "the server waited for the rest of the headers without end")

    def test_a_body_that_trickles_in_is_cut_off(self):
        # One byte now and then keeps every single read short, but not the request.
        with socket.create_connection(("127.0.0.1", self.server.server_port), timeout=10) as connection:
            connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                               b"Content-Length: 1000\r\n\r\n")
            started, answer = time.time(), b""
            try:
                while time.time() - started < 20:
                    connection.sendall(b"a")
                    ready, _, _ = select.select([connection], [], [], 0.05)  # the pause between bytes
                    if ready:
                        part = connection.recv(4096)
                        if not part:
                            break
                        answer += part
            except OSError:
                pass                                    # the server shut the connection
            self.assertLess(time.time() - started, 20, "the trickle was never cut off")

    def test_what_is_not_http_gets_one_error_line_not_an_html_page(self):
        # These never reach the application: http.server refuses them itself, with an HTML page
        # that repeats the request line.
        log = os.path.join(self.folder, ipn_receiver.LOG_FILE_NAME)
        for request, status in ((b"GARBAGE<script>\r\n\r\n", 400), (b"POST / HTTP/7.0\r\n\r\n", 505),
                                (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
                                (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431)):
            with self.subTest(status=status):
                answer = self.half_sent(request)
                head, _, body = answer.partition(b"\r\n\r\n")
                self.assertIn(b" %d " % status, head.split(b"\r\n")[0])
                self.assertIn(b"Content-Type: text/plain; charset=utf-8", head)
                self.assertEqual(body, b"ERROR: not an HTTP request this server can read (%d); send a POST with "
                                       b"the form fields of a notification" % status)
        with open(log, encoding="utf-8") as file:
            lines = [line for line in file if "not an HTTP request" in line]
        self.assertEqual(len(lines), 4)
        self.assertIn("GARBAGE<script> -> 400", lines[0])
        self.assertTrue(all(len(line) < 200 for line in lines))

    def test_each_requests_store_connection_is_closed_when_it_is_done(self):
        # Each request comes in a thread of its own: a connection kept for each thread that has
        # gone held two descriptors and a page cache, until the process ran out (the 35th review).
        url = "http://127.0.0.1:%d/" % self.server.server_port
        for number in range(5):
            with urllib.request.urlopen(url, urlencode(signed(payment(str(number)))), timeout=10) as response:
                self.assertEqual(response.read(), b"OK")
        deadline = time.monotonic() + 10
        while ipn_receiver._connections and time.monotonic() < deadline:
            threading.Event().wait(0.01)        # (the thread closes it just after it has answered)
        self.assertEqual(ipn_receiver._connections, {})

    def test_as_many_connections_wait_to_be_taken_as_it_serves(self):
        self.assertEqual(self.server.request_queue_size, 3)         # (socketserver's default: 5)

    def test_connections_beyond_the_limit_are_closed_at_once(self):
        idle = [socket.create_connection(("127.0.0.1", self.server.server_port), timeout=10) for _ in range(3)]
        try:
            with socket.create_connection(("127.0.0.1", self.server.server_port), timeout=10) as extra:
                extra.sendall(b"GET / HTTP/1.0\r\n\r\n")
                self.assertEqual(extra.recv(4096), b"")             # closed without an answer
        finally:
            for connection in idle:
                connection.close()


class Send(unittest.TestCase):
    def send(self, url):
        return subprocess.run([PYTHON, SCRIPT, "send", "on_payment", "--url", url],
                              env=clean_environment(IPN_SHA_PASSPHRASE=PASSPHRASE), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)

    def serve(self, answer, get=lambda path: (404, [], b"")):
        """A local HTTP server that answers a POST to `path` with answer(path), a GET with get(path):
        (status, headers, body). Returns its URL."""
        import http.server

        class Answering(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.answer(*answer(self.path))

            def do_GET(self):
                self.answer(*get(self.path))

            def answer(self, status, headers, body):
                self.send_response(status)
                for header in headers + [("Content-Length", str(len(body)))]:
                    self.send_header(*header)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Answering)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return "http://127.0.0.1:%d" % server.server_port

    def test_what_the_web_must_not_serve_beside_the_receiver_is_reported(self):
        # Apache ignores the .htaccess under AllowOverride None, and then serves config.ini, the
        # store and the log to anyone; check cannot see that from inside, so send asks from outside.
        with open(SCRIPT, "rb") as file:
            script = file.read()
        files = {"/ipn/ipn_receiver.py": script, "/ipn/config.ini": b"[Digistore24]\nsha_passphrase = x\n",
                 "/ipn/ipn_data/": b'<a href="events.sqlite3">events.sqlite3</a>',
                 "/ipn/ipn_data/events.sqlite3": b"SQLite format 3\x00\x10\x00",
                 "/ipn/ipn_data/ipn_receiver.log": b"2026-12-07 13:41:32,599 INFO [19576] POST -> 200, digistore24",
                 "/ipn/__pycache__/": b'<a href="ipn_receiver.cpython-311.pyc">'}
        url = self.serve(lambda path: (200, [], b"OK"),
                         get=lambda path: (200, [], files[path]) if path in files else (404, [], b""))
        done = self.send(url + "/ipn/ipn_receiver.py")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stdout.decode(), "HTTP 200\nOK\n" + "".join(
            "WARNING: the web serves %s%s to anyone: %s\n" % (url, path, what) for path, what in (
                ("/ipn/ipn_receiver.py", "the script's own text, secrets and all: the server does not run it as a "
                                         "program"),
                ("/ipn/config.ini", "your settings, secrets and all"),
                ("/ipn/ipn_data/", "a listing of the data folder"),
                ("/ipn/ipn_data/events.sqlite3", "the store, buyers' data and all"),
                ("/ipn/ipn_data/ipn_receiver.log", "the log"),
                ("/ipn/__pycache__/", "a listing of Python's compiled copies, which hold the secrets"))) +
            "(the deployment guide's .htaccess denies these; where it has no effect, the host ignores .htaccess "
            "files: ask your host, or keep config.ini and the data folder outside the web space)\n")
        # One of them is enough.
        del files["/ipn/ipn_receiver.py"], files["/ipn/ipn_data/"], files["/ipn/ipn_data/events.sqlite3"]
        del files["/ipn/ipn_data/ipn_receiver.log"], files["/ipn/__pycache__/"]
        done = self.send(url + "/ipn/ipn_receiver.py")
        self.assertEqual(done.returncode, 1)
        self.assertIn("WARNING: the web serves %s/ipn/config.ini to anyone" % url, done.stdout.decode())

        # A host's own "not found" page, sent with 200 and naming the path, is not the file; nor
        # is a redirect to a login page, or the receiver's own status line.
        def not_found(path):
            if path.endswith("ipn_data/ipn_receiver.log"):      # (only the first 64 KiB are looked at)
                return 200, [], b"x" * (65537 - len(b"] POST -> ")) + b"] POST -> "
            if path.endswith("config.ini"):
                return 302, [("Location", "/login?next=%s" % path)], b"[digistore24]"
            if path.endswith(".py"):
                return 200, [], ipn_receiver.STATUS_TEXT.encode()
            return 200, [], b"<html><h1>Sorry, %s is not here</h1></html>" % path.encode()
        url = self.serve(lambda path: (200, [], b"OK"), get=not_found)
        done = self.send(url + "/ipn/ipn_receiver.py")
        self.assertEqual((done.returncode, done.stdout.decode()), (0, "HTTP 200\nOK\n"))

    def test_an_unreachable_url_is_a_clear_error(self):
        with socket.socket() as probe:                  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        done = self.send("http://127.0.0.1:%d/" % port)
        self.assertEqual(done.returncode, 1)
        self.assertIn(b"ERROR: could not reach", done.stdout)

    def test_a_connection_closed_without_an_answer_is_said_so(self):
        # The local server closes a connection after 30 s, a slow handler going on (the 55th review):
        # send said it "could not reach" a server that had taken the call.
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen(1)

            def take_and_close():
                connection, _ = listening.accept()
                connection.recv(65536)
                connection.close()
            threading.Thread(target=take_and_close, daemon=True).start()
            url = "http://127.0.0.1:%d/" % listening.getsockname()[1]
            done = self.send(url)
        self.assertEqual((done.returncode, done.stdout.decode()), (1, "ERROR: %s closed the connection without an "
                                                                      "answer; a slow handler goes on and is recorded "
                                                                      "(`events` shows how it ended), and a sender "
                                                                      "would retry the call\n" % url))

    def test_what_the_server_answers_cannot_drive_the_terminal(self):
        # A wrong URL, or an http:// one on a path someone can intercept: the answer may hold
        # escape sequences that clear the screen or retitle the window. They are shown escaped.
        def hostile(path):
            if path == "/moved":
                return 302, [("Location", "https://example.com/\x1b[2Jcleared")], b""
            return 200, [], b"OK\n\x1b[2J\x1b]0;owned\x07\r\nusername: \xc2\x9b31m"       # (U+009B: CSI)
        url = self.serve(hostile)
        for path in ("/", "/moved"):
            done = self.send(url + path)
            output = done.stdout.decode("utf-8")
            self.assertFalse([character for character in output if ord(character) < 32 and character != "\n"
                              or 0x7f <= ord(character) < 0xa0], output)
            if path == "/":
                self.assertEqual(done.returncode, 0)
                self.assertEqual(output, "HTTP 200\nOK\n\\x1b[2J\\x1b]0;owned\\x07\\r\nusername: \\x9b31m\n")
            else:
                self.assertEqual(done.returncode, 1)
                self.assertIn("redirect to https://example.com/\\x1b[2Jcleared", output)

    def test_only_what_digistore24_counts_as_success_is_one(self):
        # "OK" alone, or followed by a line feed and answer lines; "OKAY" from another script at
        # that URL, or "OK" with something after it on its line, is a failure to Digistore24.
        url = self.serve(lambda path: (200, [], urllib.parse.unquote(path[1:]).encode("ascii")))
        for body, code in (("OK", 0), ("OK\nusername: a", 0), ("OKAY", 1), ("OK but", 1), ("ok", 1)):
            self.assertEqual(self.send(url + "/" + urllib.parse.quote(body)).returncode, code, body)

    def test_a_call_to_this_machine_never_goes_through_a_proxy(self):
        # urllib sends even to 127.0.0.1 through the proxy of http_proxy unless no_proxy names it,
        # and that proxy may be on another machine: the signed call, or the ISN key, would cross
        # the network unencrypted, which is what send refuses for http:// (the 47th review).
        through_the_proxy = []
        proxy = self.serve(lambda path: (through_the_proxy.append(path), (200, [], b"OK"))[1])
        url = self.serve(lambda path: (200, [], b"OK\nfrom the receiver"))
        environment = {key: value for key, value in clean_environment(
            IPN_SHA_PASSPHRASE=PASSPHRASE, IPN_ISN_KEY=ISN_KEY).items() if key.lower() != "no_proxy"}
        for event in ("on_payment", "sale"):
            done = subprocess.run([PYTHON, SCRIPT, "send", event, "--url", url + "/ipn"],
                                  env=dict(environment, http_proxy=proxy, HTTP_PROXY=proxy),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
            self.assertEqual((done.returncode, done.stdout), (0, b"HTTP 200\nOK\nfrom the receiver\n"),
                             done.stderr)
        self.assertEqual(through_the_proxy, [])

    def test_a_secret_check_calls_miswritten_is_warned_of(self):
        # send signs with the secret as the receiver reads it, quotes and all: its call passes
        # where Digistore24's are refused (the 48th review: "OK", and the vendor looked no further).
        url = self.serve(lambda path: (200, [], b"OK"))
        for event, name, value in (("on_payment", "SHA_PASSPHRASE", '"%s"' % PASSPHRASE),
                                   ("sale", "ISN_KEY", ISN_KEY + " ")):
            done = subprocess.run([PYTHON, SCRIPT, "send", event, "--url", url],
                                  env=clean_environment(**{"IPN_" + name: value}), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=60)
            self.assertEqual((done.returncode, done.stdout), (0, b"HTTP 200\nOK\n"))
            mistake = ipn_receiver.SECRET_MISTAKES["quotes" if '"' in value else "spaces"]
            self.assertEqual(done.stderr.decode(), "WARNING: %s (environment variable IPN_%s) %s: send uses it as the "
                             "receiver reads it, so its call may pass where the sender's fail; %s\n" % (
                                 name, name, mistake[0], mistake[1] % name))
        done = self.send(url)
        self.assertEqual((done.returncode, done.stderr), (0, b""))

    def test_a_url_that_is_not_http_is_refused(self):
        for url in ("file:///etc/hostname", "ftp://127.0.0.1/", "127.0.0.1:8000"):
            done = self.send(url)
            self.assertEqual(done.returncode, 2, url)
            self.assertEqual(done.stderr, b"ERROR: --url must start with http:// or https://, e.g. "
                                          b"https://example.com/ipn/ipn_receiver.py\n")
            self.assertEqual(done.stdout, b"")


class ServeMistakes(unittest.TestCase):
    """What a vendor gets wrong when starting the local server: one ERROR line, no traceback."""

    def serve(self, *arguments):
        folder = tempfile.mkdtemp(prefix="ipn-serve-")
        self.addCleanup(shutil.rmtree, folder, True)
        return subprocess.run([PYTHON, SCRIPT, "serve"] + list(arguments),
                              env=clean_environment(IPN_DATA_DIR=os.path.join(folder, "data")),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)

    def test_a_port_in_use(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            done = self.serve("--port", str(busy.getsockname()[1]))
        self.assertEqual(done.returncode, 1)
        self.assertRegex(done.stderr.decode(), r"^ERROR: cannot listen on 127\.0\.0\.1:\d+ \(.+\); give --host an address "
                                               r"of this machine and --port a free one\n$")

    def test_a_host_that_is_not_this_machine(self):
        done = self.serve("--host", "no-such-host.invalid", "--port", "0")
        self.assertEqual(done.returncode, 1)
        self.assertRegex(done.stderr.decode(), r"^ERROR: cannot listen on no-such-host\.invalid:0 \(.+\); ")
        self.assertNotIn(b"Traceback", done.stderr)

    def test_a_port_out_of_range(self):
        for port in ("99999", "-1", "http"):
            done = self.serve("--port", port)
            self.assertEqual(done.returncode, 2, port)
            self.assertIn("argument --port: not a port (0 to 65535): %s" % port, done.stderr.decode())
            self.assertNotIn(b"Traceback", done.stderr)


class Demo(unittest.TestCase):
    def test_demo_needs_no_setup_and_every_row_behaves(self):
        folder = tempfile.mkdtemp(prefix="ipn-demo-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        # No settings at all. A proxy set for the shell (one nobody answers at) is not used for
        # the demo's own server.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            nobody = "http://127.0.0.1:%d" % probe.getsockname()[1]
        environment = {key: value for key, value in clean_environment(http_proxy=nobody).items()
                       if key.lower() != "no_proxy"}
        done = subprocess.run([PYTHON, SCRIPT, "demo"], env=environment, cwd=folder,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        output = done.stdout.decode()
        self.assertEqual(done.returncode, 0, output + done.stderr.decode())
        self.assertIn("16 of 16 behaved as expected", output)
        self.assertNotIn("WRONG", output)
        self.assertIn("handlers run: 10", output)
        self.assertEqual(os.listdir(folder), [])                  # it left nothing behind


if __name__ == "__main__":
    unittest.main()
