"""End to end under the servers vendors use: Apache (mod_cgi with .htaccess, mod_cgid with a
cgi-bin, mod_wsgi), Passenger, lighttpd, nginx with fcgiwrap, gunicorn, waitress and uWSGI.

For each target: copy the real ipn_receiver.py into a fresh web root laid out as README.md's
deployment guide says, write the server configuration from README.md's snippets, start the real
server on a free port of 127.0.0.1 (in its own session), send real signed notifications over HTTP,
check the answers, the event store and the log, check that the settings and data cannot be
downloaded and that a chunked body is handled or clearly refused, and stop the server by its own
process id. A target whose server is not installed is skipped, naming the package to install.
"""

import grp
import os
import pwd
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

from helpers import (ISN_KEY, PASSPHRASE, PYTHON, SCRIPT, fixture_fields, ipn_receiver, payment,
                     promopit_sale, snippet, urlencode)

MODULES = "/usr/lib/apache2/modules"
STATUS_LINE = b"OK ipn_receiver is up"
SECRET_MARKERS = (b"[digistore24]", b"sha_passphrase", b"SQLite format 3", b"POST ->",
                  PASSPHRASE.encode(), ISN_KEY.encode(), b"import hashlib")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def web_user():
    """The user the servers run the receiver as: www-data when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("www-data", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def request(url, body=None, method=None, timeout=30):
    """(status, body bytes) of an HTTP request; redirects are not followed."""
    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.build_opener(NoRedirects).open(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def chunked_post(host, port, path, body, timeout=20):
    """POST with Transfer-Encoding: chunked over a raw socket; (status, body) or None on a hang."""
    head = ("POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" % (path, host, port)).encode()
    middle = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:middle], body[middle:]))
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(head + chunks + b"0\r\n\r\n")
        answer = b""
        try:
            while True:
                part = connection.recv(65536)
                if not part:
                    break
                answer += part
        except socket.timeout:
            return None
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, content = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in headers.lower():
        content = dechunk(content)
    return int(status_line.split()[1]), content


def dechunk(data):
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        size = int(size.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


class Target:
    """What every deployment must do; each subclass sets up one server as README.md says."""

    name = "?"
    needs = ()              # (path that must exist, Debian/PyPI package that provides it)
    script_path = "/ipn"    # the receiver's URL path
    serves_files = True     # False for the WSGI servers: every URL is the receiver
    protected = ()          # URL paths that must never return settings or data
    discards_unread_bodies = False      # Apache in front of CGI or mod_wsgi: it reads them to their end
    # mod_cgid: a script's socket closed with over about 200 KB of the body unread is reset (Linux),
    # and the answer with it. No sender sends such a body; a refusal of a small one arrives.
    loses_answers_to_unread_bodies = False

    # ---- set up and tear down --------------------------------------------------------------
    @classmethod
    def setUpClass(cls):
        for path, package in cls.needs:
            if not os.path.exists(path):
                raise unittest.SkipTest("%s: %s is not installed (package %s)" % (cls.name, path, package))
        cls.root = tempfile.mkdtemp(prefix="ipn-e2e-%s-" % cls.name.replace(" ", "-"))
        os.chmod(cls.root, 0o755)
        cls.home = os.path.join(cls.root, "home", "youruser")
        cls.server_dir = os.path.join(cls.root, "server")
        os.makedirs(cls.home)
        os.makedirs(cls.server_dir)
        os.chmod(os.path.join(cls.root, "home"), 0o755)
        cls.port = free_port()
        cls.user = web_user()
        cls.processes = []
        try:
            cls.lay_out()
            if cls.user:
                cls.hand_over()
            cls.start()
            cls.wait_until_up()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def hand_over(cls):
        """Give the web server's user what README.md says it runs as: here, the whole home folder
        (the receiver runs as the vendor, or the vendor is the web server's user)."""
        for folder, _, files in os.walk(cls.home):
            os.chown(folder, cls.user.pw_uid, cls.user.pw_gid)
            for name in files:
                os.chown(os.path.join(folder, name), cls.user.pw_uid, cls.user.pw_gid)

    @classmethod
    def tearDownClass(cls):
        for process in reversed(cls.processes):
            stop(process)
        shutil.rmtree(cls.root, ignore_errors=True)

    @classmethod
    def url(cls, path=None):
        return "http://127.0.0.1:%d%s" % (cls.port, cls.script_path if path is None else path)

    @classmethod
    def wait_until_up(cls, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for process in cls.processes:
                if process.poll() is not None:
                    raise AssertionError("%s exited at start:\n%s" % (cls.name, cls.server_output()))
            try:
                status, body = request(cls.url(), timeout=5)
                if status == 200 and body.startswith(STATUS_LINE):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("%s did not answer within %d s:\n%s" % (cls.name, timeout, cls.server_output()))

    @classmethod
    def launch(cls, argv, env=None, cwd=None, as_user=False, name="server"):
        """Start a process in its own session; its output goes to server/<name>.log."""
        log = open(os.path.join(cls.server_dir, name + ".log"), "ab")
        # A server's environment, not the test runner's: no GATEWAY_INTERFACE, and no PYTHONHOME
        # or the like of the Python running the tests (Debian's unpacked interpreters set it).
        environment = {key: value for key, value in (os.environ if env is None else env).items()
                       if not key.startswith("PYTHON") and key != "GATEWAY_INTERFACE"}
        user = cls.user if as_user else None

        def become_the_user():
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        process = subprocess.Popen(argv, env=environment, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=become_the_user if user else None)
        log.close()
        cls.processes.append(process)
        return process

    @classmethod
    def server_output(cls):
        out = []
        for name in sorted(os.listdir(cls.server_dir)):
            if name.endswith(".log"):
                with open(os.path.join(cls.server_dir, name), errors="replace") as file:
                    out.append("--- %s\n%s" % (name, file.read()[-3000:]))
        return "\n".join(out)

    @classmethod
    def write(cls, path, text, mode=0o644):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as file:
            file.write(text)
        os.chmod(path, mode)

    @classmethod
    def place_receiver(cls, folder, config=True, data_dir=None):
        """Copy the real file (mode 755), and config.ini (mode 600) with the test secrets."""
        os.makedirs(folder, exist_ok=True)
        shutil.copy(SCRIPT, os.path.join(folder, "ipn_receiver.py"))
        os.chmod(os.path.join(folder, "ipn_receiver.py"), 0o755)
        # And what an editor leaves behind: backup copies of the script and the config file.
        shutil.copy(SCRIPT, os.path.join(folder, "ipn_receiver.py~"))
        if config:
            path = config if isinstance(config, str) else os.path.join(folder, "config.ini")
            for name in (path, path + "~", path + ".bak"):
                cls.write(name, config_text(data_dir), 0o600 if name == path else 0o644)
        cls.data_dir = data_dir or os.path.join(folder, "ipn_data")

    @classmethod
    def readme(cls, name, **extra):
        text = snippet(name).replace("/home/youruser", cls.home)
        text = text.replace("127.0.0.1:8000", "127.0.0.1:%d" % cls.port)
        for old, new in extra.items():
            text = text.replace(old, new)
        return text

    # ---- the checks ------------------------------------------------------------------------
    def rows(self):
        """The store's rows, read without ever creating the file (it must be the server's)."""
        path = os.path.join(self.data_dir, "events.sqlite3")
        if not os.path.exists(path):
            return {}
        connection = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
        try:
            return {row[0]: row[1:] for row in connection.execute(
                "SELECT duplicate_key, status, answer FROM notifications")}
        finally:
            connection.close()

    def log_text(self):
        with open(os.path.join(self.data_dir, "ipn_receiver.log"), encoding="utf-8") as file:
            return file.read()

    def test_notifications_are_answered_stored_and_logged(self):
        on_payment = fixture_fields("digistore24_on_payment")             # 173 fields
        calls = [("on_payment", on_payment), ("on_refund", fixture_fields("digistore24_on_refund")),
                 ("connection_test", fixture_fields("digistore24_connection_test")),
                 ("sale", promopit_sale("PP-%d" % self.port)), ("on_payment again", on_payment)]
        for label, fields in calls:
            with self.subTest(call=label):
                self.assertEqual(request(self.url(), urlencode(fields)), (200, b"OK"))
        rows = self.rows()
        self.assertEqual(rows["digistore24:on_payment:3999938"], ("done", "OK"))
        self.assertEqual(rows["digistore24:on_refund:3999990"], ("done", "OK"))
        self.assertEqual(rows["promopit:PP-%d" % self.port], ("done", "OK"))
        self.assertTrue(any(key.startswith("digistore24:connection_test:") for key in rows))
        log = self.log_text()
        self.assertIn("on_payment order A1B2C3D4 txn 3999938: handled", log)
        self.assertIn("duplicate of #", log)
        for secret in (PASSPHRASE, ISN_KEY, on_payment["sha_sign"]):
            self.assertFalse(secret in log, "a secret is in the log")

    def test_a_forged_call_is_refused_and_not_stored(self):
        forged = payment("forged-%d" % self.port, sha_sign="")
        forged["sha_sign"] = "A" * 128
        self.assertEqual(request(self.url(), urlencode(forged)), (403, b"ERROR: invalid sha signature: " + ipn_receiver.INVALID_SIGNATURE_ANSWER.split(": ", 1)[1].encode()))
        self.assertNotIn("digistore24:on_payment:forged-%d" % self.port, self.rows())

    def test_get_runs_the_script_and_never_shows_its_source(self):
        status, body = request(self.url())
        self.assertEqual(status, 200)
        self.assertTrue(body.startswith(STATUS_LINE), body[:200])
        self.assertNotIn(b"import ", body)

    def test_settings_and_data_cannot_be_downloaded(self):
        self.assertEqual(request(self.url(), urlencode(payment("seed-%d" % self.port)))[0], 200)
        for path in self.protected:
            with self.subTest(path=path):
                status, body = request(self.url(path))
                if self.serves_files:
                    self.assertIn(status, (403, 404), body[:200])
                else:   # every URL is the receiver: it shows its status line, never a file
                    self.assertTrue(status in (403, 404) or body.startswith(STATUS_LINE), body[:200])
                for marker in SECRET_MARKERS:
                    self.assertFalse(marker in body, "%s served content of %s" % (self.name, path))

    def test_a_body_far_over_the_limit_is_refused_and_never_stored(self):
        # Declared at 50 MB, 1 KB sent: the receiver, or the server in front of it as README.md sets
        # it up, answers 413 at once. A server that stored the body first (Passenger, waitress and
        # lighttpd do, unless told a limit) would let anyone fill its disk, the data folder's often,
        # unverified. Apache, in front of a CGI program or a mod_wsgi daemon, reads the rest of a
        # body the receiver left unread and throws it away: it answers when it has it all.
        size = 50 * 10 ** 6
        head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n" % (self.script_path, self.port, size)).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as connection:
            connection.sendall(head + b"a" * 1024)
            if self.discards_unread_bodies:
                connection.sendall(b"a" * (size - 1024))
            try:
                answer = connection.makefile("rb").read()
            except socket.timeout:
                self.fail("%s waited for the rest of a 50 MB body" % self.name)
        if not answer and self.loses_answers_to_unread_bodies:
            self.assertIn("POST -> 413, refused: the body is larger than MAX_BODY_BYTES allows", self.log_text())
            return
        self.assertEqual(answer.split()[1:2], [b"413"], answer[:200])
        if self.discards_unread_bodies:
            self.assertIn(b"\r\n\r\nERROR: the body is larger than MAX_BODY_BYTES allows", answer)

    def test_a_chunked_body_is_handled_or_clearly_refused(self):
        transaction = "chunked-%d" % self.port
        answer = chunked_post("127.0.0.1", self.port, self.script_path, urlencode(payment(transaction)))
        self.assertIsNotNone(answer, "%s hung on a chunked body" % self.name)
        status, body = answer
        stored = self.rows().get("digistore24:on_payment:" + transaction)
        if status == 200:
            self.assertEqual(body, b"OK")
            self.assertEqual(stored, ("done", "OK"))            # OK only for a body really read
            outcome = "handled"
        else:
            self.assertGreaterEqual(status, 400)
            self.assertFalse(body.startswith(b"OK"))
            self.assertIsNone(stored)
            outcome = "refused with %d" % status
        print("\n  %s: chunked POST %s" % (self.name, outcome), file=sys.stderr)


def config_text(data_dir=None):
    text = "[digistore24]\nsha_passphrase = %s\n[promopit]\nisn_key = %s\n" % (PASSPHRASE, ISN_KEY)
    if data_dir:
        text += "[receiver]\ndata_dir = %s\n" % data_dir
    return text


def stop(process):
    """Stop a server by its own process id: its whole session, SIGTERM, then SIGKILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    deadline = time.time() + 10          # children of the session (workers, CGI programs) too
    while time.time() < deadline and session_members(process.pid):
        time.sleep(0.1)
    for pid in session_members(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def session_members(session):
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session:
                    members.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return members


# ---- Apache --------------------------------------------------------------------------------

class Apache(Target):
    mpm = "event"
    modules = ()
    needs = (("/usr/sbin/apache2", "apache2"),)
    discards_unread_bodies = True

    @classmethod
    def apache_config(cls, body):
        user = ""
        if cls.user:
            user = "User %s\nGroup %s\n" % (cls.user.pw_name, grp.getgrgid(cls.user.pw_gid).gr_name)
        modules = ("mpm_%s" % cls.mpm, "authz_core", "mime", "dir", "autoindex", "alias", "env") + cls.modules
        loads = "".join("LoadModule %s_module %s/mod_%s.so\n" % (m, MODULES, m) for m in modules)
        return ("ServerRoot %(s)s\nServerName 127.0.0.1\nListen 127.0.0.1:%(port)d\n"
                "PidFile %(s)s/httpd.pid\nDefaultRuntimeDir %(s)s\nErrorLog %(s)s/error.log\n"
                "LogLevel warn\n%(user)s%(loads)sTypesConfig /etc/mime.types\n"
                "DocumentRoot %(home)s/public_html\n"
                "<Directory />\n    AllowOverride None\n    Require all denied\n</Directory>\n"
                "<Files \".ht*\">\n    Require all denied\n</Files>\n"        # as in every stock httpd.conf
                "<Directory %(home)s/public_html>\n    AllowOverride All\n    Options Indexes\n"
                "    Require all granted\n</Directory>\n%(body)s"
                % dict(s=cls.server_dir, port=cls.port, user=user, loads=loads, home=cls.home, body=body))

    @classmethod
    def start(cls):
        os.makedirs(os.path.join(cls.home, "public_html"), exist_ok=True)
        cls.write(os.path.join(cls.server_dir, "httpd.conf"), cls.apache_config(cls.server_snippet()))
        cls.launch(["/usr/sbin/apache2", "-f", os.path.join(cls.server_dir, "httpd.conf"), "-DFOREGROUND"])

    @classmethod
    def server_output(cls):
        text = Target.server_output.__func__(cls)
        path = os.path.join(cls.server_dir, "error.log")
        if os.path.exists(path):
            with open(path, errors="replace") as file:
                text += "\n--- error.log\n" + file.read()[-3000:]
        return text


class WorkLeftRunning:
    """Apache runs a wrapper whose on_payment leaves work running after it returns."""

    slow_path = "/?"

    @classmethod
    def write_slow_wrapper(cls, path, receiver_folder):
        """A wrapper (the launcher's pattern) whose on_payment forks a process that waits until the
        test lets it go, and starts a thread that marks, a second later, that its work is done."""
        cls.release, cls.marks = os.path.join(cls.root, "release"), os.path.join(cls.root, "marks")
        os.makedirs(cls.marks)
        os.chmod(cls.marks, 0o1777)
        cls.write(path, (
            "#!/usr/bin/env python3\nimport os, sys, threading, time\nsys.path.insert(0, %r)\nimport ipn_receiver\n\n\n"
            "def wait():\n    for _ in range(600):\n        if os.path.exists(%r):\n            break\n"
            "        time.sleep(0.1)\n\n\ndef work(name):\n    time.sleep(1)                   # a mail sent, slowly\n"
            "    open(os.path.join(%r, name), 'w').close()\n\n\n"
            "def handler(notification):\n    if os.fork() == 0:\n        wait()\n        os._exit(0)\n"
            "    threading.Thread(target=work, args=(notification['transaction_id'],)).start()\n\n\n"
            "ipn_receiver.DIGISTORE24_HANDLERS['on_payment'] = handler\nsys.exit(ipn_receiver.main())\n")
            % (receiver_folder, cls.release, cls.marks), 0o755)

    def test_work_a_handler_leaves_running_is_done_and_a_forked_process_holds_no_answer(self):
        # Apache completes a CGI answer once every process has let go of the program's stdout and
        # stderr, and under mod_cgid of its stdin: a forked process held it until it ended (the
        # 65th and 67th reviews). Then Apache ends the program, threads and all: a thread's work
        # is done before the answer, or not at all (the 67th review).
        transaction = "slow-%d" % self.port
        try:
            answer = request(self.url(self.slow_path), urlencode(payment(transaction)), timeout=20)
        finally:
            open(self.release, "w").close()
        self.assertEqual(answer, (200, b"OK"))
        self.assertEqual(os.listdir(self.marks), [transaction])


class ApacheCgiHtaccess(WorkLeftRunning, Apache, unittest.TestCase):
    """Shared hosting: the script in an ordinary web folder, enabled by the README's .htaccess."""

    name = "apache mod_cgi .htaccess"
    mpm = "prefork"
    modules = ("cgi",)
    needs = Apache.needs + ((MODULES + "/mod_cgi.so", "apache2"),)
    script_path = "/ipn/ipn_receiver.py"
    slow_path = "/slow/ipn.py"
    protected = ("/ipn/config.ini", "/ipn/config.ini~", "/ipn/config.ini.bak", "/ipn/ipn_receiver.py~",
                 "/ipn/ipn_data/", "/ipn/ipn_data/events.sqlite3",
                 "/ipn/ipn_data/events.sqlite3-wal", "/ipn/ipn_data/ipn_receiver.log",
                 "/ipn/ipn_data/.htaccess", "/ipn/.htaccess", "/ipn/", "/ipn/__pycache__/")

    @classmethod
    def lay_out(cls):
        folder = os.path.join(cls.home, "public_html", "ipn")
        cls.place_receiver(folder)
        cls.write(os.path.join(folder, ".htaccess"), cls.readme("apache-htaccess"))
        # The launcher of README.md: it imports ipn_receiver, so Python caches its bytecode in
        # __pycache__ beside it, the settings at the top of the file with it.
        cls.write(os.path.join(folder, "ipn.py"), cls.readme("launcher"), 0o755)
        cls.write(os.path.join(cls.home, "public_html", "slow", ".htaccess"), cls.readme("apache-htaccess"))
        cls.write_slow_wrapper(os.path.join(cls.home, "public_html", "slow", "ipn.py"), folder)
        # Two classic upload mistakes, each in a folder of its own: CRLF line endings (a text-mode
        # upload) and a missing run bit.
        with open(SCRIPT, "rb") as file:
            source = file.read()
        for name, content, mode in (("crlf", source.replace(b"\n", b"\r\n"), 0o755), ("norun", source, 0o644)):
            broken = os.path.join(cls.home, "public_html", name)
            os.makedirs(broken)
            with open(os.path.join(broken, "ipn_receiver.py"), "wb") as file:
                file.write(content)
            os.chmod(os.path.join(broken, "ipn_receiver.py"), mode)
            cls.write(os.path.join(broken, ".htaccess"), cls.readme("apache-htaccess"))
        # For each <Files> section of SECTIONS, a folder that denies everything else, holding a
        # file of each name of COPY_NAMES (world-readable: only the .htaccess decides).
        for number, section in enumerate(cls.SECTIONS):
            closing = "</FilesMatch>" if section.startswith("<FilesMatch") else "</Files>"
            folder = os.path.join(cls.home, "public_html", "sections", str(number))
            cls.write(os.path.join(folder, ".htaccess"),
                      "Require all denied\n%s\n    Require all granted\n%s\n" % (section, closing))
            for name in cls.COPY_NAMES:
                cls.write(os.path.join(folder, name), "a copy\n")
        # For each .htaccess of HANDLERS, a folder with the script: does Apache run it, or serve it?
        guide = cls.readme("apache-htaccess")
        for number, (old, new) in enumerate(cls.HANDLERS):
            folder = os.path.join(cls.home, "public_html", "handlers", str(number))
            cls.write(os.path.join(folder, ".htaccess"), guide.replace(old, new))
            shutil.copy(SCRIPT, os.path.join(folder, "ipn_receiver.py"))
            os.chmod(os.path.join(folder, "ipn_receiver.py"), 0o755)

    SECTIONS = ('<FilesMatch "^(ipn_receiver|ipn)\\.py$">', '<FilesMatch "^ipn">', '<Files "*">',
                '<Files "config.*">', '<Files "*~">', '<Files ?onfig.ini>', '<Files ~ "\\.(bak|old)$">',
                '<FilesMatch "\\.py">', '<FilesMatch "(?i)CONFIG">', '<Files "[a-d]*">', '<FilesMatch "">',
                '<Files "[^_]*">', '<Files "[^c]*">', '<Files "[!c]*">', '<Files "ipn_receiver\\.py*">',
                '<Files "config\\.ini">', '<Files "\\*">')
    COPY_NAMES = ("config.ini", "config.ini.bak", "ipn_receiver.py~", "ipn_receiver.py.old", "events.sqlite3")
    # Changes to the guide's .htaccess, some of which make Apache serve the script's source. (This
    # server has mod_cgi, not mod_cgid.)
    HANDLERS = (("", ""), ("AddHandler cgi-script .py", "AddHandler cgi-script .cgi .pl"),
                ("AddHandler cgi-script .py", "# AddHandler cgi-script .py"),
                ("AddHandler cgi-script .py", "<IfModule mod_cgid.c>\nAddHandler cgi-script .py\n</IfModule>"),
                ("AddHandler cgi-script .py", "<IfModule mod_cgi.c>\nAddHandler cgi-script .py\n</IfModule>"),
                ("AddHandler cgi-script .py", "AddHandler cgi-script .cgi py"),
                ("Options +ExecCGI -Indexes", "Options -Indexes"))

    @classmethod
    def server_snippet(cls):
        return ""

    def test_check_reads_the_patterns_of_files_sections_as_apache_does(self):
        # `check` judges an .htaccess by which names its <Files> sections grant; here Apache
        # answers for each section and name, and `check`'s reading must agree.
        for number, section in enumerate(self.SECTIONS):
            for name in self.COPY_NAMES:
                with self.subTest(section=section, name=name):
                    status, _ = request(self.url("/sections/%d/%s" % (number, name)))
                    self.assertIn(status, (200, 403))
                    self.assertEqual(ipn_receiver.section_matches_any(section, [name]), status == 200)

    def test_check_tells_whether_apache_runs_the_script_or_serves_its_source(self):
        # Where Apache hands out the source (the secrets in it) or refuses to run it, `check` must
        # not call the .htaccess safe. (It may refuse one that works: a handler within <IfModule>.)
        for number, change in enumerate(self.HANDLERS):
            with self.subTest(change=change):
                status, body = request(self.url("/handlers/%d/ipn_receiver.py" % number))
                runs = (status, body[:2]) == (200, b"OK")
                with open(os.path.join(self.home, "public_html", "handlers", str(number), ".htaccess")) as file:
                    safe = ipn_receiver.serves_only_the_scripts(file.read())
                if not runs:                        # the source, or a 403 (no ExecCGI)
                    self.assertFalse(safe, (status, body[:80]))
                elif "IfModule" not in change[1]:
                    self.assertTrue(safe)
                self.assertEqual(b"import hashlib" in body, number in (1, 2, 3))

    def test_the_launcher_answers_and_its_compiled_copies_cannot_be_downloaded(self):
        answer = request(self.url("/ipn/ipn.py"), urlencode(payment("launcher-%d" % self.port)))
        self.assertEqual(answer, (200, b"OK"))
        self.assertEqual(self.rows()["digistore24:on_payment:launcher-%d" % self.port], ("done", "OK"))
        cache = os.path.join(self.home, "public_html", "ipn", "__pycache__")
        compiled = [name for name in os.listdir(cache) if name.endswith(".pyc")]
        self.assertTrue(compiled, "the launcher's import wrote no bytecode")
        for name in compiled:
            with open(os.path.join(cache, name), "rb") as file:
                self.assertIn(b"sha_passphrase", file.read())      # what makes it worth protecting
            for path in ("/ipn/__pycache__/" + name, "/ipn/__pycache__/", "/ipn/"):
                status, body = request(self.url(path))
                self.assertIn(status, (403, 404), path)
                self.assertNotIn(b".pyc", body)                     # no folder listing names it
                self.assertNotIn(b"sha_passphrase", body)
        # And `check`, run there, says that the .htaccess denies them.
        done = subprocess.run([PYTHON, os.path.join(self.home, "public_html", "ipn", "ipn_receiver.py"), "check"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                              env=dict(os.environ, IPN_DATA_DIR=os.path.join(self.root, "check-data")))
        self.assertIn("ok       .htaccess beside the script serves the scripts only, and no folder listing",
                      done.stdout.decode())
        self.assertIn("the .htaccess denies them", done.stdout.decode())

    def test_upload_mistakes_give_500_and_check_names_the_fix(self):
        for name, problem in (("crlf", "save the file with Unix (LF) line endings"),
                              ("norun", "chmod 755")):
            with self.subTest(mistake=name):
                status, body = request(self.url("/%s/ipn_receiver.py" % name))
                self.assertEqual(status, 500)
                self.assertNotIn(b"import ", body)                 # an error page, not the source
                script = os.path.join(self.home, "public_html", name, "ipn_receiver.py")
                done = subprocess.run([PYTHON, script, "check"], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, timeout=60,
                                      env=dict(os.environ, IPN_DATA_DIR=os.path.join(self.root, name + "-data")))
                self.assertEqual(done.returncode, 1)
                self.assertIn(problem, done.stdout.decode())
        # check's command for CRLF, run as it says, and the script runs.
        crlf = os.path.join(self.home, "public_html", "crlf", "ipn_receiver.py")
        done = subprocess.run([PYTHON, crlf, "check"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                              env=dict(os.environ, IPN_DATA_DIR=os.path.join(self.root, "crlf-data")))
        fix = done.stdout.decode().split("line endings (", 1)[1].split("); with CRLF", 1)[0]
        subprocess.run(fix, shell=True, check=True)
        self.assertEqual(request(self.url("/crlf/ipn_receiver.py"))[0], 200)


class ApacheCgidScriptAlias(WorkLeftRunning, Apache, unittest.TestCase):
    name = "apache mod_cgid cgi-bin"
    modules = ("cgid",)
    needs = Apache.needs + ((MODULES + "/mod_cgid.so", "apache2"),)
    script_path = "/cgi-bin/ipn_receiver.py"
    slow_path = "/cgi-bin/slow.py"
    loses_answers_to_unread_bodies = True
    protected = ("/cgi-bin/ipn.ini", "/ipn.ini", "/ipn_data/events.sqlite3", "/ipn_data/ipn_receiver.log",
                 "/cgi-bin/ipn_data/events.sqlite3")

    @classmethod
    def lay_out(cls):
        cls.place_receiver(os.path.join(cls.home, "cgi-bin"), config=os.path.join(cls.home, "ipn.ini"),
                           data_dir=os.path.join(cls.home, "ipn_data"))
        cls.write_slow_wrapper(os.path.join(cls.home, "cgi-bin", "slow.py"), os.path.join(cls.home, "cgi-bin"))

    @classmethod
    def hand_over(cls):
        # The home folder and cgi-bin stay the vendor's (root here): the web server's user gets the
        # config file, and the data folder made for it, as README.md says. It could not make it.
        os.chown(os.path.join(cls.home, "ipn.ini"), cls.user.pw_uid, cls.user.pw_gid)
        command = cls.readme("cgi-bin-data-folder", **{"www-data": cls.user.pw_name})
        subprocess.run(command.replace("sudo ", "", 1), shell=True, check=True)

    @classmethod
    def server_snippet(cls):
        return "ScriptSock %s/cgid.sock\n" % cls.server_dir + cls.readme("apache-cgid")


class ApacheModWsgi(Apache, unittest.TestCase):
    name = "apache mod_wsgi"
    modules = ("wsgi",)
    needs = Apache.needs + ((MODULES + "/mod_wsgi.so", "libapache2-mod-wsgi-py3"),)
    protected = ("/ipn/config.ini", "/config.ini", "/ipn_data/events.sqlite3", "/ipn/ipn_data/events.sqlite3",
                 "/ipn/ipn_data/ipn_receiver.log", "/ipn~", "/ipn/config.ini~")

    @classmethod
    def lay_out(cls):
        cls.place_receiver(os.path.join(cls.home, "ipn"))

    @classmethod
    def server_snippet(cls):
        text = "WSGISocketPrefix %s/wsgi\n" % cls.server_dir + cls.readme("apache-wsgi")
        if cls.user:      # as README.md says: name the user when Apache runs as root
            text = text.replace("WSGIDaemonProcess ipn ", "WSGIDaemonProcess ipn user=%s group=%s " % (
                cls.user.pw_name, grp.getgrgid(cls.user.pw_gid).gr_name))
        return text


class ApachePassenger(Apache, unittest.TestCase):
    name = "passenger"
    modules = ("passenger",)
    needs = Apache.needs + ((MODULES + "/mod_passenger.so", "libapache2-mod-passenger"),)
    script_path = "/"
    protected = ("/config.ini", "/ipn_receiver.py", "/ipn_data/events.sqlite3", "/ipn_data/ipn_receiver.log",
                 "/passenger_wsgi.py", "/config.ini~", "/ipn_receiver.py~")
    serves_files = False       # Passenger sends every URL without a file in public/ to the app
    discards_unread_bodies = False      # it stores them: LimitRequestBody refuses them at once

    @classmethod
    def lay_out(cls):
        app = os.path.join(cls.home, "ipnapp")
        cls.place_receiver(app)
        cls.write(os.path.join(app, "passenger_wsgi.py"), cls.readme("passenger-wsgi"))
        os.makedirs(os.path.join(app, "public"))

    @classmethod
    def server_snippet(cls):
        instance = os.path.join(cls.server_dir, "passenger")
        os.makedirs(instance)
        return ("PassengerRoot /usr/lib/ruby/vendor_ruby/phusion_passenger/locations.ini\n"
                "PassengerDefaultRuby /usr/bin/ruby\nPassengerInstanceRegistryDir %s\n"
                "PassengerSpawnDir %s\n" % (instance, instance)) + cls.readme("apache-passenger")


# ---- lighttpd, nginx -----------------------------------------------------------------------

class Lighttpd(Target, unittest.TestCase):
    name = "lighttpd mod_cgi"
    needs = (("/usr/sbin/lighttpd", "lighttpd"),)
    protected = ("/ipn/config.ini", "/config.ini", "/ipn_data/events.sqlite3", "/ipn/ipn_data/events.sqlite3",
                 "/ipn_receiver.py", "/ipn/ipn_receiver.py", "/ipn~", "/ipn.bak", "/ipn/config.ini~")

    @classmethod
    def lay_out(cls):
        cls.place_receiver(os.path.join(cls.home, "ipn"))
        os.makedirs(os.path.join(cls.home, "www"))

    @classmethod
    def start(cls):
        user = 'server.username = "%s"\nserver.groupname = "%s"\n' % (
            cls.user.pw_name, grp.getgrgid(cls.user.pw_gid).gr_name) if cls.user else ""
        config = ('server.document-root = "%s/www"\nserver.bind = "127.0.0.1"\nserver.port = %d\n'
                  'server.errorlog = "%s/error.log"\n%sserver.modules = ("mod_access")\n'
                  % (cls.home, cls.port, cls.server_dir, user)) + cls.readme("lighttpd")
        cls.write(os.path.join(cls.server_dir, "lighttpd.conf"), config)
        if cls.user:
            os.chown(cls.server_dir, cls.user.pw_uid, cls.user.pw_gid)
        cls.launch(["/usr/sbin/lighttpd", "-D", "-f", os.path.join(cls.server_dir, "lighttpd.conf")])


class NginxFcgiwrap(Target, unittest.TestCase):
    name = "nginx fcgiwrap"
    needs = (("/usr/sbin/nginx", "nginx"), ("/usr/sbin/fcgiwrap", "fcgiwrap"))
    protected = ("/ipn/config.ini", "/config.ini", "/ipn_data/events.sqlite3", "/ipn/ipn_data/events.sqlite3",
                 "/ipn_receiver.py", "/ipn~")

    @classmethod
    def lay_out(cls):
        cls.place_receiver(os.path.join(cls.home, "ipn"))
        os.makedirs(os.path.join(cls.home, "www"))

    @classmethod
    def start(cls):
        socket_path = os.path.join(cls.server_dir, "fcgiwrap.socket")
        if cls.user:
            os.chown(cls.server_dir, cls.user.pw_uid, cls.user.pw_gid)
        # As Debian's fcgiwrap service does: one fcgiwrap, as www-data, on a unix socket.
        cls.launch(["/usr/sbin/fcgiwrap", "-c", "2", "-s", "unix:" + socket_path], as_user=True, name="fcgiwrap")
        deadline = time.time() + 10
        while not os.path.exists(socket_path) and time.time() < deadline:
            time.sleep(0.05)
        user = "user %s;\n" % cls.user.pw_name if cls.user else ""
        temp = os.path.join(cls.server_dir, "temp")
        os.makedirs(temp)
        config = ("daemon off;\nworker_processes 1;\npid %(s)s/nginx.pid;\nerror_log %(s)s/error.log;\n%(user)s"
                  "events {}\nhttp {\n    access_log off;\n    client_body_temp_path %(t)s/body;\n"
                  "    fastcgi_temp_path %(t)s/fastcgi;\n    proxy_temp_path %(t)s/proxy;\n"
                  "    uwsgi_temp_path %(t)s/uwsgi;\n    scgi_temp_path %(t)s/scgi;\n"
                  "    server {\n        listen 127.0.0.1:%(port)d;\n        root %(home)s/www;\n%(snippet)s\n"
                  "    }\n}\n" % dict(s=cls.server_dir, user=user, t=temp, port=cls.port, home=cls.home,
                                    snippet=cls.readme("nginx", **{"/run/fcgiwrap.socket": socket_path,
                                                                   "fastcgi_params": "/etc/nginx/fastcgi_params"})))
        cls.write(os.path.join(cls.server_dir, "nginx.conf"), config)
        cls.launch(["/usr/sbin/nginx", "-c", os.path.join(cls.server_dir, "nginx.conf"), "-p", cls.server_dir])


# ---- WSGI servers --------------------------------------------------------------------------

class WsgiServer(Target):
    """A WSGI server installed for the Python running the tests, started as README.md says, with
    its command run by that same Python."""

    serves_files = False
    script_path = "/"
    command = module = package = snippet_name = "?"
    runner = ()                 # how this Python runs the command: ["-m", "gunicorn"], ...
    protected = ("/config.ini", "/ipn_data/events.sqlite3", "/ipn_data/ipn_receiver.log", "/ipn_receiver.py",
                 "/config.ini~", "/ipn_receiver.py~")

    @classmethod
    def setUpClass(cls):
        import importlib.util
        if importlib.util.find_spec(cls.module) is None:
            raise unittest.SkipTest("%s: not installed for this Python (pip install %s)" % (cls.name, cls.package))
        Target.setUpClass.__func__(cls)

    @classmethod
    def lay_out(cls):
        cls.place_receiver(os.path.join(cls.home, "ipn"))

    @classmethod
    def start(cls):
        # The README's command line, as the vendor would type it in their own shell.
        import shlex
        command = cls.readme(cls.snippet_name).strip()
        command = command.replace(" %s " % cls.command, " %s " % " ".join(shlex.quote(part) for part in [PYTHON] + list(cls.runner)), 1)
        cls.launch(["/bin/sh", "-c", command.replace("&& ", "&& exec ")])


class Gunicorn(WsgiServer, unittest.TestCase):
    name = "gunicorn"
    command = module = package = snippet_name = "gunicorn"
    runner = ("-m", "gunicorn")


class Waitress(WsgiServer, unittest.TestCase):
    name = "waitress"
    command = "waitress-serve"
    module = package = snippet_name = "waitress"
    runner = ("-m", "waitress")


class Uwsgi(WsgiServer, unittest.TestCase):
    name = "uwsgi"
    command = snippet_name = "uwsgi"
    module = package = "pyuwsgi"
    runner = ("-c", "import sys; from pyuwsgi import run; sys.exit(run())")    # what its `uwsgi` script does


if __name__ == "__main__":
    unittest.main()
