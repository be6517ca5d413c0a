"""CGI: the file run as a program by a web server, environment and stdin in, the answer on stdout."""

import io
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import unittest
from unittest import mock
from wsgiref.handlers import BaseCGIHandler

from helpers import (FORM, PASSPHRASE, PYTHON, REPO, SCRIPT, cgi_environment, environ_for, forget_settings,
                     generated, ipn_receiver, parse_cgi_output, payment, promopit_sale, signed, urlencode)


def run_cgi_program(environment, body=b"", argv=(), script=SCRIPT, interpreter=PYTHON):
    done = subprocess.run([interpreter, script] + list(argv), env=environment, input=body,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    return done


def write_wrapper(folder, handler):
    """A script in `folder` that runs the receiver with `handler` (its source, a function named handler) as
    on_payment: the pattern of a wrapper a vendor writes."""
    wrapper = os.path.join(folder, "wrapper.py")
    with open(wrapper, "w") as file:
        file.write("import os, subprocess, sys, time\nsys.path.insert(0, %r)\nimport ipn_receiver\n%s\n"
                   "ipn_receiver.DIGISTORE24_HANDLERS['on_payment'] = handler\n"
                   "sys.exit(ipn_receiver.main())\n" % (REPO, handler))
    return wrapper


def read_to_the_end(fds, seconds, output=None):
    """What each of `fds` gives, read to its end, as Apache reads a CGI program's stdout and
    stderr: it completes the answer only then. AssertionError where that takes over `seconds`;
    what was read by then is in `output` ({fd: bytes}), where one is given, to read on."""
    import selectors
    import time
    output = {} if output is None else output
    for fd in fds:
        output.setdefault(fd, b"")
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        for fd in output:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            ready = selector.select(max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError("the answer was still held open after %d s" % seconds)
            for key, _ in ready:
                data = os.read(key.fd, 65536)
                output[key.fd] += data
                if not data:
                    selector.unregister(key.fd)
    return [output[fd] for fd in fds]


def wait_until(condition, seconds=30):
    """Return once condition() is true; AssertionError after `seconds`."""
    import time
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("not so within %d s" % seconds)
        time.sleep(0.05)


def stored_statuses(store):
    """The status of each row of the store at `store`, [] where there is none yet."""
    if not os.path.exists(store):
        return []
    connection = sqlite3.connect(store)
    try:
        return [status for status, in connection.execute("SELECT status FROM notifications")]
    except sqlite3.OperationalError:                    # (the table not made yet)
        return []
    finally:
        connection.close()


class CgiProgram(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="ipn-cgi-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.data_dir = os.path.join(self.folder, "data")

    def run_request(self, body=b"", method="POST", **extra):
        done = run_cgi_program(cgi_environment(self.data_dir, method=method, body=body, **extra), body)
        self.assertEqual(done.returncode, 0, done.stderr.decode()[-2000:])
        return parse_cgi_output(done.stdout) + (done.stderr.decode(),)

    def test_a_notification_is_answered_with_a_cgi_status_header(self):
        status, headers, body, errors = self.run_request(urlencode(payment()))
        self.assertEqual((status, body), (200, b"OK"))
        self.assertEqual(headers["Status"], "200 OK")
        self.assertEqual(headers["Content-Type"], "text/plain; charset=utf-8")
        self.assertIn("on_payment order A1B2C3D4 txn 3999938: handled", errors)   # the log line, on stderr

    def test_promopit_refund_and_forgery(self):
        self.assertEqual(self.run_request(urlencode(promopit_sale()))[:3:2], (200, b"OK"))
        self.assertEqual(self.run_request(urlencode(payment("5", event="on_refund")))[:3:2], (200, b"OK"))
        forged = dict(payment(), sha_sign="00")
        self.assertEqual(self.run_request(urlencode(forged))[:3:2], (403, ("ERROR: " + ipn_receiver.INVALID_SIGNATURE_ANSWER).encode()))

    def test_get_head_and_other_methods(self):
        status, headers, body, _ = self.run_request(method="GET", content_type=None)
        self.assertEqual(status, 200)
        self.assertTrue(body.startswith(b"OK ipn_receiver is up"))
        status, headers, body, _ = self.run_request(method="HEAD", content_type=None)
        self.assertEqual((status, body), (200, b""))
        status, headers, body, _ = self.run_request(method="DELETE", content_type=None)
        self.assertEqual((status, headers["Allow"]), (405, "GET, HEAD, POST"))

    def test_the_part_above_the_banner_carried_over_from_an_older_version_works(self):
        # A vendor upgrades by keeping their edited part and pasting the new file's part below it.
        # Older versions' parts imported the modules of their day, or none; a later one added
        # `import _thread` there, and every call, GET too, and check, ended in a NameError (the
        # 60th review).
        with open(SCRIPT, encoding="utf-8") as file:
            source = file.read()
        top, banner, rest = source.partition("#  NOTHING BELOW NEEDS EDITING\n")
        end_of_docstring = 'README.md explains everything else.\n"""\n'
        self.assertIn(end_of_docstring, top)
        top = "".join(line for line in top.splitlines(True) if not line.startswith(("import ", "from ")))
        body = urlencode(payment())
        for imports in ("", "\nimport hashlib\nimport hmac\nimport os\nimport sys\nimport time\n"):
            with self.subTest(imports=imports):
                script = os.path.join(self.folder, "ipn_receiver.py")
                with open(script, "w", encoding="utf-8") as file:
                    file.write(top.replace(end_of_docstring, end_of_docstring + imports, 1) + banner + rest)
                done = run_cgi_program(cgi_environment(self.data_dir, body=body), body, script=script)
                self.assertEqual(parse_cgi_output(done.stdout)[::2], (200, b"OK"), done.stderr.decode()[-2000:])
                check = run_cgi_program({"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                         "PYTHONDONTWRITEBYTECODE": "1", "IPN_DATA_DIR": self.data_dir},
                                        argv=["check"], script=script)
                self.assertIn("ok       Python ", check.stdout.decode(), check.stderr.decode()[-2000:])
                self.assertNotIn(b"Traceback", check.stderr)

    def test_a_setting_misspelt_at_the_top_is_a_configuration_error_not_a_traceback(self):
        # The web server answered its own 500 page, with no word of what to do (the 59th review).
        with open(SCRIPT, encoding="utf-8") as file:
            source = file.read()
        self.assertIn("\nSHA_PASSPHRASE = r", source)
        script = os.path.join(self.folder, "ipn_receiver.py")
        with open(script, "w", encoding="utf-8") as file:
            file.write(source.replace("\nSHA_PASSPHRASE = r", "\nSHA_PASSPRASE = r", 1))
        done = run_cgi_program(cgi_environment(self.data_dir, method="GET", content_type=None), script=script)
        self.assertEqual(parse_cgi_output(done.stdout)[::2], (200, ipn_receiver.STATUS_TEXT.encode()))
        body = urlencode(payment())
        done = run_cgi_program(cgi_environment(self.data_dir, body=body), body, script=script)
        self.assertEqual(parse_cgi_output(done.stdout)[::2], (503, b"ERROR: configuration error in ipn_receiver.py; "
                                                               b"run `python3 ipn_receiver.py check` on the server to see "
                                                               b"what to change"))
        self.assertNotIn(b"Traceback", done.stderr)
        check = run_cgi_program({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"},
                                argv=["check"], script=script)
        self.assertEqual(check.returncode, 1)
        self.assertIn("PROBLEM  settings: SHA_PASSPHRASE is missing at the top of ipn_receiver.py (its line deleted, "
                      "or its name misspelt)\n", check.stdout.decode())

    def test_a_body_without_content_length_is_read_to_the_end_of_stdin(self):
        body = urlencode(payment())
        environment = cgi_environment(self.data_dir, body=body)
        del environment["CONTENT_LENGTH"]
        done = run_cgi_program(environment, body)
        self.assertEqual(parse_cgi_output(done.stdout)[::2], (200, b"OK"))

    def test_query_words_passed_as_arguments_do_not_turn_it_into_a_command(self):
        # Apache passes an "?a+b" query without "=" as command-line arguments.
        done = run_cgi_program(cgi_environment(self.data_dir, method="GET", content_type=None), b"", argv=["demo"])
        self.assertEqual(parse_cgi_output(done.stdout)[0], 200)
        self.assertNotIn(b"demo", done.stdout)

    def test_a_non_ascii_passphrase_works_where_the_web_server_sets_no_locale(self):
        # Apache gives a CGI program no LANG; Python 3.6 then reads the environment as ASCII.
        passphrase = "pässwörd-Ü1"
        fields = signed({key: value for key, value in payment().items() if key != "sha_sign"}, passphrase)
        body = urlencode(fields)
        environment = cgi_environment(self.data_dir, body=body, IPN_SHA_PASSPHRASE=passphrase.encode("utf-8"))
        self.assertFalse([name for name in environment if name.startswith(("LANG", "LC_"))])
        done = run_cgi_program(environment, body)
        self.assertEqual(parse_cgi_output(done.stdout)[::2], (200, b"OK"), done.stderr.decode()[-2000:])

    def test_a_script_reached_through_a_link_reads_the_settings_beside_the_file_itself(self):
        # The file kept outside the web space, a link to it in the web space (the 52nd review): a
        # call through the link, and `check` run on the file itself, read one config.ini and keep
        # one store, beside the file.
        own, web = os.path.join(self.folder, "ipn"), os.path.join(self.folder, "public_html")
        os.mkdir(own, 0o700)
        os.mkdir(web)
        shutil.copy(SCRIPT, own)
        os.symlink(os.path.join(own, "ipn_receiver.py"), os.path.join(web, "ipn_receiver.py"))
        with open(os.path.join(own, "config.ini"), "w") as file:
            file.write("[receiver]\ndata_dir = ipn_data\n[digistore24]\nsha_passphrase = %s\n" % PASSPHRASE)
        os.chmod(os.path.join(own, "config.ini"), 0o600)
        body = urlencode(payment())
        environment = cgi_environment(self.data_dir, body=body)
        for name in ("IPN_SHA_PASSPHRASE", "IPN_DATA_DIR"):
            del environment[name]
        done = run_cgi_program(environment, body, script=os.path.join(web, "ipn_receiver.py"))
        self.assertEqual(parse_cgi_output(done.stdout)[::2], (200, b"OK"), done.stderr.decode()[-2000:])
        self.assertEqual(sorted(os.listdir(web)), ["ipn_receiver.py"])
        self.assertTrue(os.path.isfile(os.path.join(own, "ipn_data", ipn_receiver.STORE_FILE_NAME)))
        events = run_cgi_program({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"},
                                 argv=["events"], script=os.path.join(own, "ipn_receiver.py"))
        self.assertIn("on_payment", events.stdout.decode(), events.stderr.decode())

    def test_missing_secret_is_503(self):
        status, _, body, _ = self.run_request(urlencode(payment()), IPN_SHA_PASSPHRASE="")
        self.assertEqual(status, 503)
        self.assertTrue(body.startswith(b"ERROR: SHA_PASSPHRASE cannot be used (not set, the placeholder"))

    def run_with_handler(self, handler):
        """Run a CGI call through a wrapper script whose on_payment is `handler` (its source)."""
        body = urlencode(payment())
        return run_cgi_program(cgi_environment(self.data_dir, body=body), body,
                               script=write_wrapper(self.folder, handler))

    def start_with_work_left_running(self, handler, one_socket=True):
        """(process, the fd its answer comes from) of a CGI call whose handler (its source) leaves
        work running, sent its body. As under mod_cgid, stdin and stdout are one socket (or, as
        under mod_cgi, two pipes); stderr is a pipe, as under every server."""
        import socket
        body = urlencode(payment())
        ours, theirs = socket.socketpair() if one_socket else (None, subprocess.PIPE)
        process = subprocess.Popen([PYTHON, write_wrapper(self.folder, handler)],
                                   env=cgi_environment(self.data_dir, body=body), stdin=theirs, stdout=theirs,
                                   stderr=subprocess.PIPE)
        self.addCleanup(process.stderr.close)
        if not one_socket:
            self.addCleanup(process.stdout.close)
            process.stdin.write(body)
            process.stdin.close()
            return process, process.stdout.fileno()
        theirs.close()
        self.addCleanup(ours.close)
        ours.sendall(body)
        ours.shutdown(socket.SHUT_WR)
        return process, ours.fileno()

    def answer_with_work_left_running(self, handler, release):
        """The answer (and stderr) of a CGI call whose handler (its source) leaves work running
        until the file `release` is there, read as Apache reads them, to their ends."""
        process, answer_fd = self.start_with_work_left_running(handler)
        try:
            answer, errors = read_to_the_end([answer_fd, process.stderr.fileno()], 20)
        finally:
            open(release, "w").close()
            self.assertEqual(process.wait(60), 0)
        self.assertEqual(parse_cgi_output(answer)[::2], (200, b"OK"), errors.decode()[-2000:])
        return errors

    @unittest.skipUnless(hasattr(os, "register_at_fork"), "Python 3.6 has no os.register_at_fork")
    def test_a_process_a_handler_forks_does_not_hold_the_answer_open(self):
        # A handler that forks a worker to go on after the answer (the 54th review): the answer
        # ended only when that process did, for it held the program's stderr (the 65th review)
        # and, under mod_cgid, its stdin (the 67th). What it prints goes nowhere.
        release = os.path.join(self.folder, "release")
        errors = self.answer_with_work_left_running("def handler(n):\n"
                                                    "    if os.fork() == 0:\n"
                                                    "        print('the forked worker')\n"
                                                    "        for _ in range(600):\n"
                                                    "            if os.path.exists(%r):\n"
                                                    "                break\n"
                                                    "            time.sleep(0.1)\n"
                                                    "        os._exit(0)\n" % release, release)
        self.assertNotIn(b"the forked worker", errors)

    def test_a_thread_a_handler_leaves_running_does_its_work_before_the_answer_ends(self):
        # Apache ends a CGI program once it has the answer, threads and all (SIGTERM, and SIGKILL
        # 3 s later): let go of sooner, the answer lost the thread's work (the 67th review). So
        # the program holds it until its threads are done.
        release = os.path.join(self.folder, "release")
        process, answer_fd = self.start_with_work_left_running(
            "import threading\n"
            "def work():\n"
            "    for _ in range(600):\n"
            "        if os.path.exists(%r):\n"
            "            break\n"
            "        time.sleep(0.1)\n"
            "    ipn_receiver.log.info('the thread has done its work')\n"
            "def handler(n):\n"
            "    threading.Thread(target=work).start()\n" % release, one_socket=False)
        try:
            store = os.path.join(self.data_dir, ipn_receiver.STORE_FILE_NAME)
            wait_until(lambda: stored_statuses(store) == ["done"])
            # The answer is stored, and written; its thread at work holds it.
            fds, output = [answer_fd, process.stderr.fileno()], {}
            with self.assertRaises(AssertionError):
                read_to_the_end(fds, 1, output)
        finally:
            open(release, "w").close()
        answer, _ = read_to_the_end(fds, 20, output)
        self.assertEqual(process.wait(60), 0)
        self.assertEqual(parse_cgi_output(answer)[::2], (200, b"OK"))
        with open(os.path.join(self.data_dir, ipn_receiver.LOG_FILE_NAME)) as file:
            self.assertIn("the thread has done its work", file.read())

    def test_a_program_started_as_the_readme_says_does_not_hold_the_answer_open(self):
        # README.md's "Your handlers": a program that outlives the handler, started without the
        # handler's stdout and stderr.
        release = os.path.join(self.folder, "release")
        program = ("import os, time\nfor _ in range(600):\n    if os.path.exists(%r):\n        break\n"
                   "    time.sleep(0.1)" % release)
        self.answer_with_work_left_running(
            "def handler(n):\n"
            "    subprocess.Popen([sys.executable, '-c', %r], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,\n"
            "                     stderr=subprocess.DEVNULL, start_new_session=True)\n" % program, release)

    @unittest.skipUnless(hasattr(os, "register_at_fork"), "Python 3.6 has no os.register_at_fork")
    def test_what_a_handler_wrote_before_it_forked_is_written_once(self):
        # The child's own line flushed the parent's unwritten output too (the 56th review).
        done = self.run_with_handler(
            "def handler(n):\n"
            "    sys.stderr.write('written before the fork; ')\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        ipn_receiver.log.info('the child')\n"
            "        os._exit(0)\n"
            "    os.waitpid(pid, 0)")
        self.assertEqual(parse_cgi_output(done.stdout)[::2], (200, b"OK"))
        self.assertEqual(done.stderr.count(b"written before the fork"), 1, done.stderr.decode())

    def test_a_command_a_handler_runs_runs_as_that_command(self):
        # It inherits the CGI environment (the 55th review): it answered this request again, from
        # a stdin already read, and exited 0, so the handler took it to have worked.
        done = self.run_with_handler(
            "def handler(n):\n"
            "    ran = subprocess.run([%r, ipn_receiver.__file__, '--version'], stdout=subprocess.PIPE)\n"
            "    return {'username': ran.stdout.decode().strip()}" % PYTHON)      # (the launcher of the Python tested)
        self.assertEqual(parse_cgi_output(done.stdout)[::2], (200, b"OK\nusername: ipn_receiver " +
                                                              ipn_receiver.__version__.encode()))

    def test_a_print_in_a_handler_does_not_reach_the_answer(self):
        done = self.run_with_handler("def handler(n):\n    print('debugging on_payment', n.event)")
        self.assertEqual(parse_cgi_output(done.stdout)[::2], (200, b"OK"))
        self.assertIn(b"debugging on_payment on_payment", done.stderr)

    def test_what_a_program_started_by_a_handler_writes_does_not_reach_the_answer(self):
        done = self.run_with_handler(
            "def handler(n):\n"
            "    subprocess.run(['sh', '-c', 'echo Location: https://evil.example/'])\n"
            "    os.write(1, b'Set-Cookie: x=1\\n')\n"
            "    return {'username': 'jane'}")
        self.assertTrue(done.stdout.startswith(b"Status: 200 OK\r\n"), done.stdout[:200])
        self.assertTrue(done.stdout.endswith(b"\r\n\r\nOK\nusername: jane"))
        self.assertNotIn(b"evil", done.stdout)
        self.assertNotIn(b"Set-Cookie", done.stdout)
        self.assertIn(b"Location: https://evil.example/", done.stderr)     # in the error log instead
        self.assertIn(b"Set-Cookie: x=1", done.stderr)

    def test_a_process_the_handler_forks_never_records_or_answers(self):
        # The child returns from the handler, or ends it with sys.exit() (os._exit() was meant), and
        # so comes back into the receiver. The parent waits for it, so the child gets there first.
        for ending, code in (("return None", 0), ("sys.exit(0)", 0), ("sys.exit(3)", 3), ("raise ValueError", 1)):
            with self.subTest(ending=ending):
                shutil.rmtree(self.data_dir, True)
                done = self.run_with_handler(
                    "def handler(n):\n"
                    "    child = os.fork()\n"
                    "    if child == 0:\n"
                    "        %s\n"
                    "    _, status = os.waitpid(child, 0)\n"
                    "    return {'username': 'jane', 'password': 'child-ended-%%d' %% (status >> 8)}" % ending)
                self.assertEqual(done.stdout.count(b"Status:"), 1, done.stdout)
                self.assertTrue(done.stdout.startswith(b"Status: 200 OK\r\n"), done.stdout)
                self.assertTrue(done.stdout.endswith(b"\r\n\r\nOK\nusername: jane\npassword: child-ended-%d" % code),
                                done.stdout)
                with open(os.path.join(self.data_dir, ipn_receiver.LOG_FILE_NAME)) as file:
                    self.assertIn("] a process that handler handler forked came back into the receiver and was ended "
                                  "there; end such a process with os._exit()\n", file.read())
                self.assertNotIn(b"failed", done.stderr)
                connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
                self.assertEqual(connection.execute("SELECT status, attempts, answer FROM notifications").fetchall(),
                                 [("done", 1, "OK\nusername: jane\npassword: child-ended-%d" % code)])
                connection.close()

    def test_the_line_a_forked_child_leaves_names_the_handler_in_one_line(self):
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=self.data_dir)
        self.addCleanup(forget_settings)
        ipn_receiver.log.to_stderr = False
        parent = os.getpid()
        for name in ("h" * 60, "on\npay\udc80"):
            child = os.fork()
            if child == 0:
                try:
                    ipn_receiver.end_a_forked_child(parent, name)
                finally:
                    os._exit(7)             # only if it did not end the child itself
            self.assertEqual(os.waitpid(child, 0)[1], 0)
        with open(os.path.join(self.data_dir, ipn_receiver.LOG_FILE_NAME), encoding="utf-8") as file:
            lines = file.read().splitlines()
        self.assertEqual([line.partition("] ")[2].split(" forked")[0] for line in lines], [
            "a process that handler %s" % ipn_receiver.shortened("h" * 60, 40),
            "a process that handler on\\npay\\udc80"])
        # In the process it started in, it does nothing.
        self.assertIsNone(ipn_receiver.end_a_forked_child(parent, "h"))

    def test_nothing_but_the_answer_is_on_stdout(self):
        done = run_cgi_program(cgi_environment(self.data_dir, body=urlencode(payment())), urlencode(payment()))
        self.assertTrue(done.stdout.startswith(b"Status: 200 OK\r\n"))
        self.assertTrue(done.stdout.endswith(b"\r\n\r\nOK"))


class UnderALatin1Locale(unittest.TestCase):
    """A web server that sets no LANG runs the receiver in UTF-8 (Python 3.7 and later); a WSGI
    server, or a command run over SSH, may run it under a Latin-1 locale. Python reads the
    environment and names files in the locale's encoding: one data folder and one store all the
    same, and the secrets masked in whatever form the environment holds them (the 43rd review)."""

    @classmethod
    def setUpClass(cls):
        sources = "/usr/share/i18n/locales/de_DE"
        if not shutil.which("localedef") or not os.path.exists(sources):
            raise unittest.SkipTest("no locale sources to build a Latin-1 locale from (Debian package locales)")
        cls.locales = tempfile.mkdtemp(prefix="ipn-locale-")
        subprocess.run(["localedef", "-i", "de_DE", "-f", "ISO-8859-1", os.path.join(cls.locales, "de_DE.ISO-8859-1")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=120)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.locales, True)

    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="ipn-cgi-")
        self.addCleanup(shutil.rmtree, self.folder, True)

    def latin_1(self, environment):
        """`environment` with the Latin-1 locale; the bytes of its values as they are."""
        return dict(environment, LOCPATH=self.locales, LC_ALL="de_DE.ISO-8859-1")

    def test_the_locale_is_latin_1(self):
        # (Except in UTF-8 mode, Python 3.15's default (PEP 686): it names files in UTF-8 whatever
        # the locale says.)
        done = subprocess.run([PYTHON, "-c", "import sys; print(getattr(sys.flags, 'utf8_mode', 0), "
                                         "sys.getfilesystemencoding())"],
                              env=self.latin_1({"PATH": os.environ["PATH"]}), stdout=subprocess.PIPE, timeout=60)
        mode, encoding = done.stdout.split()
        self.assertIn(encoding, (b"utf-8",) if mode == b"1" else (b"iso8859-1", b"latin-1"))

    def test_one_data_folder_and_one_handler_run_whatever_the_locale(self):
        site = os.path.join(self.folder, "site")
        os.mkdir(site)
        script = shutil.copy(SCRIPT, site)
        data_dir = os.path.join(self.folder, "d\u00e4t\u00e4")
        for where in ("config.ini", "environment"):
            with self.subTest(where=where):
                with open(os.path.join(site, "config.ini"), "w", encoding="utf-8") as file:
                    file.write("[receiver]\ndata_dir = %s\n" % data_dir if where == "config.ini" else "")
                os.chmod(os.path.join(site, "config.ini"), 0o600)
                body = urlencode(payment(where))
                environment = cgi_environment(data_dir, body=body)
                if where == "config.ini":
                    del environment["IPN_DATA_DIR"]
                else:
                    environment["IPN_DATA_DIR"] = data_dir.encode("utf-8")     # (the bytes a server sets)
                for run in (environment, self.latin_1(environment), environment):
                    done = run_cgi_program(run, body, script=script)
                    answer = parse_cgi_output(done.stdout)
                    if sys.version_info < (3, 7):
                        # Its SQLite takes the name as UTF-8, its system in the locale's encoding
                        # (ASCII without LANG): refused, in one folder as in the other.
                        self.assertEqual(answer[0], 503)
                        self.assertTrue(answer[2].startswith(b"ERROR: configuration error"), answer)
                    else:
                        self.assertEqual(answer[::2], (200, b"OK"), done.stderr.decode()[-2000:])
                if sys.version_info < (3, 7):
                    self.assertEqual(os.listdir(self.folder), ["site"])
                    continue
                self.assertEqual(sorted(os.listdir(os.fsencode(self.folder))), [b"d\xc3\xa4t\xc3\xa4", b"site"])
                with open(os.path.join(data_dir, "ipn_receiver.log"), encoding="utf-8") as file:
                    log = file.read()
                self.assertEqual(log.count("txn %s: handled as #" % where), 1, log)
                self.assertEqual(log.count("txn %s: duplicate of #" % where), 2, log)

    def test_a_passphrase_as_the_environment_holds_it_is_masked(self):
        passphrase = "p\u00e4ssphrase-lang-42"
        wrapper = write_wrapper(self.folder, "def handler(n):\n"
                                             "    ipn_receiver.log.info('environment %r', dict(os.environ))\n"
                                             "    ipn_receiver.log.info('passphrase %s', os.environ['IPN_SHA_PASSPHRASE'])\n")
        body = urlencode(signed({key: value for key, value in payment().items() if key != "sha_sign"}, passphrase))
        environment = cgi_environment(os.path.join(self.folder, "data"), body=body,
                                      IPN_SHA_PASSPHRASE=passphrase.encode("utf-8"))
        done = run_cgi_program(self.latin_1(environment), body, script=wrapper)
        self.assertEqual(parse_cgi_output(done.stdout)[::2], (200, b"OK"), done.stderr.decode()[-2000:])
        with open(os.path.join(self.folder, "data", "ipn_receiver.log"), "rb") as file:
            log = file.read()
        self.assertIn(b"passphrase [secret]", log)
        self.assertIn(b"'IPN_SHA_PASSPHRASE': '[secret]'", log)
        for form in (passphrase.encode("utf-8"), b"ssphrase-lang-42"):
            self.assertNotIn(form, log + done.stderr)


class TheFileAsUploaded(unittest.TestCase):
    def test_shebang_lf_line_endings_and_run_bit(self):
        with open(SCRIPT, "rb") as file:
            content = file.read()
        self.assertTrue(content.startswith(b"#!/usr/bin/env python3\n"))
        self.assertNotIn(b"\r", content)
        self.assertTrue(os.stat(SCRIPT).st_mode & stat.S_IXUSR, "chmod 755 ipn_receiver.py")

    def test_a_cgi_call_leaves_no_file_beside_the_script(self):
        # Nothing compiled, cached or written there: Python never caches the file it runs, and
        # the receiver writes only into DATA_DIR (here outside the script's folder).
        folder = tempfile.mkdtemp(prefix="ipn-cgi-")
        self.addCleanup(shutil.rmtree, folder, True)
        site = os.path.join(folder, "site")
        os.mkdir(site)
        shutil.copy(SCRIPT, site)
        body = urlencode(payment())
        environment = cgi_environment(os.path.join(folder, "data"), body=body)
        environment.pop("PYTHONDONTWRITEBYTECODE", None)
        for _ in range(2):
            done = run_cgi_program(environment, body, script=os.path.join(site, "ipn_receiver.py"))
            self.assertEqual(parse_cgi_output(done.stdout)[::2], (200, b"OK"), done.stderr[-2000:])
        self.assertEqual(os.listdir(site), ["ipn_receiver.py"])

    def test_it_runs_through_its_shebang(self):
        folder = tempfile.mkdtemp(prefix="ipn-cgi-")
        self.addCleanup(shutil.rmtree, folder, True)
        environment = cgi_environment(os.path.join(folder, "data"), method="GET", content_type=None)
        os.mkdir(os.path.join(folder, "bin"))            # `/usr/bin/env python3` finds this one
        os.symlink(PYTHON, os.path.join(folder, "bin", "python3"))
        environment["PATH"] = os.path.join(folder, "bin") + os.pathsep + environment["PATH"]
        done = subprocess.run([SCRIPT], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(parse_cgi_output(done.stdout)[0], 200, done.stderr)


class SameAsWsgiref(unittest.TestCase):
    """run_cgi() answers exactly as wsgiref.handlers.CGIHandler would (it replaces it for speed)."""

    def setUp(self):
        self.folder = tempfile.mkdtemp(prefix="ipn-cgi-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        ipn_receiver.use_settings(SHA_PASSPHRASE="s3cret-passphrase", DATA_DIR=self.folder)
        ipn_receiver.log.to_stderr = False
        self.addCleanup(setattr, ipn_receiver, "_settings", None)
        self.addCleanup(ipn_receiver.close_store)
        self.addCleanup(ipn_receiver.log.reset)
        self.addCleanup(setattr, sys, "stdout", sys.stdout)

    def answers(self, environ, body, app=None):
        class OneShot(BaseCGIHandler):
            wsgi_run_once = True
        theirs = io.BytesIO()
        OneShot(io.BytesIO(body), theirs, sys.stderr, dict(environ), multithread=False,
                multiprocess=True).run(app or ipn_receiver.application)
        ours = io.BytesIO()
        ipn_receiver.run_cgi(dict(environ), io.BytesIO(body), ours)
        return theirs.getvalue(), ours.getvalue()

    @generated(lambda st: st.tuples(
        st.sampled_from(["GET", "HEAD", "POST", "POST", "POST", "PUT", "OPTIONS"]),
        st.sampled_from(["signed", "forged", "bytes", "form"]), st.binary(max_size=300),
        st.sampled_from(["", "/", "/x"]), st.sampled_from([None, "on", "off", "1"]),
        st.sampled_from([FORM, "text/plain", None])), examples=300)
    def test_same_bytes_on_generated_requests(self, request):
        method, kind, data, path, https, content_type = request
        body = {"signed": urlencode(payment(data.hex()[:20] or "empty")),
                "forged": urlencode(dict(payment(data.hex()[:20]), sha_sign=data.hex())),
                "bytes": data, "form": b"event=" + data}[kind]
        environ = {key: value for key, value in environ_for(body, method=method, content_type=content_type,
                                                            SCRIPT_NAME="/ipn", PATH_INFO=path).items()
                   if not key.startswith("wsgi.")}
        if https:
            environ["HTTPS"] = https
        theirs, ours = self.answers(environ, body)
        self.assertEqual(ours, theirs)

    def test_any_wsgi_application_gets_what_cgihandler_gives_it(self):
        """run_cgi hands the application the environ CGIHandler would, and writes every piece of
        the body it returns (a probe in place of the receiver's own application)."""
        keys = ("wsgi.version", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.url_scheme",
                "REQUEST_METHOD", "CONTENT_LENGTH")

        def probe(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            seen = [repr((key, environ.get(key))).encode() for key in keys]
            seen.append(repr(environ["wsgi.errors"] is sys.stderr).encode())
            seen.append(environ["wsgi.input"].read())
            return [b"\n".join(seen[:3]), b"|", b"\n".join(seen[3:])]

        for https in (None, "on", "ON", "1", "yes", "off", "0"):
            environ = {key: value for key, value in environ_for(b"a=1").items() if not key.startswith("wsgi.")}
            if https:
                environ["HTTPS"] = https
            with mock.patch.object(ipn_receiver, "application", probe):
                theirs, ours = self.answers(environ, b"a=1", app=probe)
            self.assertEqual(ours, theirs, https)
            self.assertIn(b"'https'" if https in ("on", "1", "yes") else b"'http'", ours)

    def test_the_request_reaches_the_application_as_its_bytes_read_as_latin_1(self):
        # As under every WSGI server (PEP 3333), and as CGIHandler reads the environment: what the
        # request sent holds its bytes, read as Latin-1, whatever the locale made of them (the 43rd
        # review: a multipart boundary with an "é" was refused under CGI, and taken elsewhere).
        from wsgiref.handlers import read_environ
        body = (b"--b\xc3\xa9\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b\xc3\xa9--\r\n")
        request = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)), "SERVER_PROTOCOL": "HTTP/1.1",
                   "CONTENT_TYPE": "multipart/form-data; boundary=b\u00e9", "PATH_INFO": "/\u00e4",
                   "HTTP_X_NAME": "J\u00f6rg", "REDIRECT_HTTP_X_NAME": "J\u00f6rg", "SSL_X": "\u00e9",
                   "IPN_LOG_LEVEL": "INFO", "X_OTHER": "\u00e9", "SERVER_NAME": "x", "SERVER_PORT": "80",
                   "HTTP_X_BYTE": "\udcff"}          # (a byte the locale could not read: kept as a surrogate)
        keys = sorted(request)

        def probe(environ, start_response):
            seen = ascii([(key, environ.get(key)) for key in keys]).encode()
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(seen)))])
            return [seen]

        with mock.patch.dict(os.environ, request, clear=True):
            theirs = io.BytesIO()
            BaseCGIHandler(io.BytesIO(body), theirs, sys.stderr, read_environ(), multithread=False,
                           multiprocess=True).run(probe)
            ours = io.BytesIO()
            with mock.patch.object(ipn_receiver, "application", probe):
                ipn_receiver.run_cgi(None, io.BytesIO(body), ours)
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertIn(b"('HTTP_X_NAME', 'J\\xc3\\xb6rg')", ours.getvalue())
        self.assertIn(b"('IPN_LOG_LEVEL', 'INFO')", ours.getvalue())
        self.assertIn(b"('X_OTHER', '\\xe9')", ours.getvalue())
        self.assertIn(b"('HTTP_X_BYTE', '\\xff')", ours.getvalue())
        with mock.patch.dict(os.environ, request, clear=True):
            ours = io.BytesIO()
            ipn_receiver.run_cgi(None, io.BytesIO(body), ours)
        self.assertIn(b"Status: 400 Bad Request", ours.getvalue())         # read to its end: not a notification
        self.assertNotIn(b"incomplete", ours.getvalue())

    def test_same_bytes_for_each_kind_of_answer(self):
        cases = [("GET", b""), ("HEAD", b""), ("PUT", b""), ("POST", urlencode(payment("1"))),
                 ("POST", urlencode(payment("1"))), ("POST", urlencode(dict(payment("2"), sha_sign="0"))),
                 ("POST", b"not a form")]
        for method, body in cases:
            environ = {key: value for key, value in environ_for(body, method=method).items()
                       if not key.startswith("wsgi.")}
            theirs, ours = self.answers(environ, body)
            self.assertEqual(ours, theirs, method)
            self.assertTrue(ours.startswith(b"Status: "))


if __name__ == "__main__":
    unittest.main()
