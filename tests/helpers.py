"""Shared test helpers: the module under test, fixtures, and a WSGI test client.

Every test that touches the receiver gets a fresh data folder and known secrets (ReceiverTestCase),
so tests never see each other's stores or logs.
"""

import gc
import io
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import unittest
import urllib.parse
from unittest import mock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import ipn_receiver  # noqa: E402

try:
    import hypothesis
except ImportError:
    hypothesis = None

SCRIPT = os.path.join(REPO, "ipn_receiver.py")
# The interpreter for the processes tests start. Usually this one; CI names a launcher here for
# interpreters that cannot be started by their own path (Debian's, unpacked by debian-python).
PYTHON = os.environ.get("TEST_PYTHON") or sys.executable
FIXTURES = os.path.join(REPO, "tests", "fixtures")
SHARED = os.path.join(os.path.dirname(REPO), "shared")
FORM = "application/x-www-form-urlencoded"

# The secrets the fixtures were signed with (PROTOCOL.md's samples).
PASSPHRASE = "s3cret-passphrase"
ISN_KEY = "pp-isn-7f3a9c2e51"


def generated(make_strategy, examples=500):
    """Run the decorated test once for each of `examples` inputs that hypothesis draws from
    make_strategy(hypothesis.strategies), the same inputs on every run (derandomized). Where
    hypothesis is not installed, the test is skipped with a line saying so."""
    import functools

    def decorate(test):
        if hypothesis is None:
            @functools.wraps(test)
            def skipped(self):
                self.skipTest("hypothesis is not installed (pip install hypothesis)")
            return skipped
        return hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                                   suppress_health_check=list(hypothesis.HealthCheck))(
            hypothesis.given(make_strategy(hypothesis.strategies))(test))
    return decorate


def fixture(name):
    """A fixture from tests/fixtures: {"provider", "fields", and "sha_sign"/"passphrase" or "isn_key"}."""
    with open(os.path.join(FIXTURES, name + ".json"), encoding="utf-8") as file:
        return json.load(file)


def signed(fields, passphrase=PASSPHRASE, upper_keys=False, name="sha_sign"):
    """The fields plus their Digistore24 signature."""
    result = dict(fields)
    result[name] = ipn_receiver.digistore24_signature(passphrase, fields, upper_keys)
    return result


def fixture_fields(name):
    """A fixture's fields as they are sent: with sha_sign or isn_key."""
    data = fixture(name)
    fields = dict(data["fields"])
    if data["provider"] == "promopit":
        fields["isn_key"] = data["isn_key"]
    else:
        fields["sha_sign"] = data["sha_sign"]
    return fields


def payment(transaction_id="3999938", **changes):
    """The 173-field on_payment fixture, with another transaction id and changes, signed."""
    fields = dict(fixture("digistore24_on_payment")["fields"])
    fields["transaction_id"] = transaction_id
    fields.update(changes)
    return signed(fields)


def promopit_sale(txn_id="PP-100234", **changes):
    fields = fixture_fields("promopit_sale")
    fields["promopit_txn_id"] = txn_id
    fields.update(changes)
    return fields


def urlencode(fields):
    return urllib.parse.urlencode(fields).encode("utf-8")


class Answer:
    """What application() answered: status (int), status_line, headers (dict), body (str)."""

    def __init__(self, status_line, headers, body):
        self.status_line = status_line
        self.status = int(status_line[:3])
        self.headers = dict(headers)
        self.body = body

    def __repr__(self):
        return "<Answer %s %r>" % (self.status_line, self.body[:80])


def environ_for(body=b"", method="POST", content_type=FORM, content_length=None, **extra):
    """A WSGI environ for a request with this body (Content-Length set from it unless given)."""
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": "/", "SERVER_NAME": "test", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(), "wsgi.multithread": False,
        "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    if content_length is None:
        content_length = str(len(body))
    if content_length is not False:
        environ["CONTENT_LENGTH"] = content_length
    environ.update(extra)
    return environ


def call(environ):
    """Run application() on an environ; returns an Answer."""
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers

    body = b"".join(ipn_receiver.application(environ, start_response))
    return Answer(seen["status"], seen["headers"], body.decode("utf-8"))


def post(fields, **kwargs):
    """POST form fields urlencoded to application()."""
    return call(environ_for(urlencode(fields), **kwargs))


class ReceiverTestCase(unittest.TestCase):
    """A fresh data folder, the fixtures' secrets, quiet stderr, and handlers restored afterwards."""

    settings = {}

    def setUp(self):
        self.data_dir = tempfile.mkdtemp(prefix="ipn-test-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        values = dict(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=ISN_KEY, DATA_DIR=self.data_dir)
        values.update(self.settings)
        ipn_receiver.use_settings(**values)
        ipn_receiver.log.to_stderr = False
        self.addCleanup(forget_settings)
        for table in ("DIGISTORE24_HANDLERS", "PROMOPIT_HANDLERS"):
            patcher = mock.patch.dict(getattr(ipn_receiver, table))
            patcher.start()
            self.addCleanup(patcher.stop)

    def handle(self, event, function, table="DIGISTORE24_HANDLERS"):
        """Use `function` as the handler of `event` for this test."""
        getattr(ipn_receiver, table)[event] = function

    def log_text(self):
        path = os.path.join(self.data_dir, ipn_receiver.LOG_FILE_NAME)
        if not os.path.exists(path):
            return ""
        with open(path, encoding="utf-8") as file:
            return file.read()

    def log_messages(self):
        """[(level, message)] of the log's records, without the time and process id in front and
        without the lines of tracebacks; a request line's "(... ms)" at the end is dropped."""
        import re
        found = []
        for line in self.log_text().splitlines():
            record = re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+|Level \d+) \[\d+\] (.*)$", line)
            if record:
                found.append((record.group(1), re.sub(r" \(\d+\.\d ms\)$", "", record.group(2))))
        return found

    def assertLogged(self, level, message):
        """A record of the log says exactly `message` at `level`."""
        self.assertIn((level, message), self.log_messages())

    def rows(self, where="", parameters=()):
        """The store's rows as dicts, oldest first (read with a connection of our own)."""
        path = os.path.join(self.data_dir, ipn_receiver.STORE_FILE_NAME)
        if not os.path.exists(path):
            return []
        connection = sqlite3.connect(path)
        connection.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in connection.execute(
                "SELECT * FROM notifications %s ORDER BY id" % where, parameters)]
        finally:
            connection.close()


def snippet(name):
    """The code block that follows `<!-- snippet: name -->` in README.md."""
    import re
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as file:
        text = file.read()
    found = re.search(r"<!-- snippet: %s -->\s*```[a-z]*\n(.*?)```" % re.escape(name), text, re.S)
    if not found:
        raise AssertionError("README.md has no snippet %r" % name)
    return found.group(1)


def readable_keys(path):
    """The duplicate keys of the rows a damaged store still gives up, found row by row."""
    keys = set()
    connection = sqlite3.connect(path)
    try:
        for number in range(1, 1000):
            try:
                row = connection.execute("SELECT duplicate_key FROM notifications WHERE id = ?", (number,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            if row:
                keys.add(row[0])
    finally:
        connection.close()
    return keys


def forget_settings():
    """Back to a clean module state: settings reloaded on next use, log and store closed."""
    close_store_files()
    # What a test left unreachable goes now, not in a later test: a connection that only its own
    # thread could close warns as it goes (Python 3.13 and later), into what that test reads.
    gc.collect()
    ipn_receiver.log.reset()
    ipn_receiver.log.to_stderr = True
    ipn_receiver._settings = None


def close_store_files():
    """Close the test's store connections, and the descriptors read_store_file keeps open (which
    would keep a file system from being unmounted)."""
    ipn_receiver.close_store()
    for fd in ipn_receiver._store_files.values():
        os.close(fd)
    ipn_receiver._store_files.clear()


def cgi_environment(data_dir, method="POST", body=b"", content_type=FORM, **extra):
    """The environment a web server gives a CGI program (plus our settings)."""
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": method, "SCRIPT_NAME": "/ipn_receiver.py", "SERVER_NAME": "localhost",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "IPN_SHA_PASSPHRASE": PASSPHRASE, "IPN_ISN_KEY": ISN_KEY, "IPN_DATA_DIR": data_dir,
        # (Not a web server's: a wrapper of the tests that imports the receiver from this folder
        # leaves no __pycache__ in it. tests/test_cgi.py runs the receiver without it, too.)
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if content_type:
        environment["CONTENT_TYPE"] = content_type
    if body:
        environment["CONTENT_LENGTH"] = str(len(body))
    environment.update(extra)
    return environment


def parse_cgi_output(output):
    """(status int, headers dict, body bytes) from a CGI program's stdout."""
    head, _, body = output.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return int(headers.get("Status", "200")[:3]), headers, body


class read_only_folder:
    """Make a folder read-only for this process: chmod for a normal user; for root, whom
    permissions do not stop, a read-only bind mount. SkipTest if neither can be done."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        import subprocess
        if os.geteuid() != 0:
            self.mode = os.stat(self.path).st_mode & 0o777
            os.chmod(self.path, 0o500)
            self.mounted = False
            return self
        commands = (["mount", "--bind", self.path, self.path],
                    ["mount", "-o", "remount,ro,bind", self.path])
        for number, command in enumerate(commands):
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if done.returncode != 0:
                if number:
                    subprocess.run(["umount", self.path], stderr=subprocess.DEVNULL)
                raise unittest.SkipTest("cannot make a folder read-only for root here (mount failed)")
        self.mounted = True
        return self

    def __exit__(self, *exc):
        import subprocess
        close_store_files()
        if self.mounted:
            subprocess.run(["umount", self.path], check=True)
        else:
            os.chmod(self.path, self.mode)
