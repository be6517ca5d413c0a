"""A separate process that answers notifications with ipn_receiver, for the tests that need several.

It is the "wrapper script" README.md describes: it imports the receiver, replaces the handlers with
recording ones, and then either does what the file does (a CGI request when GATEWAY_INTERFACE is
set, a command when given arguments: main() does both) or works through a job of requests given
as JSON on stdin, the way a WSGI worker process would.

The recording handler appends "<provider>:<event>:<id>" to the file IPN_TEST_RECORD for every
run (O_APPEND, so lines from many processes never mix), sleeps IPN_TEST_SLEEP seconds, prints
IPN_TEST_PRINT where it is set, raises when IPN_TEST_FAIL is set, and gives on_payment a fresh random password, so that a copy answered
with the same password proves it got the stored answer rather than a second run.

IPN_TEST_KILL="<start of an SQL statement>|<seconds>" makes the process kill itself (SIGKILL) when
the store is about to run the first statement that starts so: at once, or after that many seconds
on a timer (a timer started as a COMMIT begins may fire while SQLite is writing).
"""

import io
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.dont_write_bytecode = True      # no __pycache__ beside the script (where it is on the web, one could be served)
import ipn_receiver  # noqa: E402


def record(notification):
    line = "%s:%s:%s\n" % (notification.provider, notification.event,
                           notification.get("transaction_id") or notification.get("promopit_txn_id"))
    descriptor = os.open(os.environ["IPN_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)
    time.sleep(float(os.environ.get("IPN_TEST_SLEEP", "0")))
    if os.environ.get("IPN_TEST_PRINT"):
        print(os.environ["IPN_TEST_PRINT"])
    if os.environ.get("IPN_TEST_FAIL"):
        raise RuntimeError("told to fail")
    if notification.event == "on_payment":
        return {"username": "buyer", "password": os.urandom(6).hex()}


def kill_at(prefix, seconds):
    """Have every store connection kill this process at the first statement starting with prefix."""
    import _sqlite3

    def watch(statement):
        if statement.lstrip().startswith(prefix):
            if seconds:
                threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGKILL)).start()
            else:
                os.kill(os.getpid(), signal.SIGKILL)

    class Sqlite:
        def __getattr__(self, name):
            return getattr(_sqlite3, name)

        def connect(self, *args, **kwargs):
            connection = _sqlite3.connect(*args, **kwargs)
            connection.set_trace_callback(watch)
            return connection

    ipn_receiver.sqlite3_module = Sqlite


if os.environ.get("IPN_TEST_KILL"):
    prefix, _, seconds = os.environ["IPN_TEST_KILL"].partition("|")
    kill_at(prefix, float(seconds or 0))

for table in (ipn_receiver.DIGISTORE24_HANDLERS, ipn_receiver.PROMOPIT_HANDLERS):
    for event in table:
        table[event] = record


def answer(body):
    """POST one urlencoded body to application(); (status, body text)."""
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"] = status

    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/x-www-form-urlencoded",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
               "wsgi.errors": sys.stderr, "wsgi.multiprocess": True, "wsgi.run_once": False}
    data = b"".join(ipn_receiver.application(environ, start_response))
    return int(seen["status"][:3]), data.decode("utf-8")


def run_job(job):
    """Answer each request; retry "already being processed" like the sender does, a moment later."""
    results = []
    for tag, body in job["requests"]:
        tries = []
        while True:
            status, text = answer(body.encode("utf-8"))
            tries.append([status, text])
            if not (status == 503 and text == ipn_receiver.BUSY_ANSWER) or len(tries) > 500:
                break
            time.sleep(0.005)
        results.append({"tag": tag, "tries": tries})
    return results


if __name__ == "__main__":
    if "GATEWAY_INTERFACE" in os.environ or len(sys.argv) > 1:     # a CGI call, or a command
        sys.exit(ipn_receiver.main())
    job = json.load(sys.stdin)
    if job.get("start_at"):
        time.sleep(max(0.0, job["start_at"] - time.time()))     # all workers start together
    json.dump(run_job(job), sys.stdout)
