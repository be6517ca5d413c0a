"""Fuzzing application() with 100,000 generated requests (hypothesis, fixed seed).

Three kinds of request, together 100,000: random ones (methods, content types, lengths, bodies,
paths, chunked markers), the senders' real payloads with bytes flipped, dropped, inserted,
truncated or keys duplicated, and random forms, some properly signed, some with a wrong secret,
urlencoded or multipart. For every one:

- no exception escapes application();
- the status is one the contract documents, and the body starts with "OK" or "ERROR:"
  (HEAD: empty);
- no forged payload is accepted: every notification the receiver builds (it builds one only
  after verification) must carry exactly the non-empty fields of a payload this test signed with
  the real passphrase (empty fields are unsigned by the protocol), and a PromoPit one must come
  from a body holding the real ISN key;
- a 500 only where a handler raised;
- an error answer never echoes the request: error bodies come from a small fixed set.
Over the whole run, no secret or signature reaches the log or the store.
"""

import os
import re
import shutil
import sqlite3
import tempfile
import unittest
import urllib.parse
from unittest import mock

try:
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st
except ImportError:
    raise unittest.SkipTest("hypothesis is not installed (pip install hypothesis)")

from helpers import (FORM, ISN_KEY, PASSPHRASE, call, environ_for, fixture, fixture_fields, forget_settings,
                     ipn_receiver, payment)



def holds_the_key(body):
    """Whether an urlencoded body's (last) isn_key is the real one, decoded by the standard library."""
    pairs = urllib.parse.parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    keys = [value for name, value in pairs if name == "isn_key"]
    return bool(keys) and keys[-1] == ISN_KEY


DOCUMENTED = {200, 400, 403, 404, 405, 411, 413, 415, 500, 503}
MAX_BODY = 64 * 1024
EXAMPLES = {"random": 40000, "mutated": 35000, "forms": 25000}       # 100,000 requests in all


def fuzz_settings(examples):
    return settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=list(HealthCheck))


def normalized(fields):
    """What a Digistore24 signature covers: the non-empty fields."""
    return frozenset((key, value) for key, value in fields.items() if value != "")


UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def normalized_upper(fields):
    """What an upper-keys signature covers: the non-empty fields with their keys in ASCII capitals
    (so a copy with a key's case changed verifies too: PROTOCOL.md's variant allows no more)."""
    return frozenset((key.translate(UPPER), value) for key, value in fields.items() if value != "")


class Signed:
    """The field sets this test signed with the real passphrase, in either variant."""

    def __init__(self):
        self.exact, self.upper = set(), set()

    def add(self, fields, upper_keys):
        fields = {k: v for k, v in fields.items() if k not in ("sha_sign", "SHASIGN")}
        (self.upper.add(normalized_upper(fields)) if upper_keys else self.exact.add(normalized(fields)))
        if normalized(fields) == normalized_upper(fields):
            # No signed key has a lower-case letter: both variants sign the same text, and so
            # any case of its keys is a copy of it (the receiver takes its keys in lower case).
            self.upper.add(normalized_upper(fields))

    def covers(self, fields):
        return normalized(fields) in self.exact or normalized_upper(fields) in self.upper


class Sent:
    """A generated request. Its repr (what hypothesis prints for a failing example) never shows
    a secret or a signature: test output must not either."""

    SECRET = re.compile(rb"[0-9A-Fa-f]{128}|" + re.escape(PASSPHRASE.encode()) + rb"|" + re.escape(ISN_KEY.encode()))

    def __init__(self, body, environ):
        self.body, self.environ = body, environ

    def __repr__(self):
        shown = self.SECRET.sub(b"[redacted]", self.body)
        return "Sent(%s %r, Content-Length %r, %d bytes: %r)" % (
            self.environ["REQUEST_METHOD"], self.environ.get("CONTENT_TYPE"), self.environ.get("CONTENT_LENGTH"),
            len(self.body), shown[:300] + (b"..." if len(shown) > 300 else b""))


def originals():
    """The senders' payloads (urlencoded bodies) and the field sets they sign."""
    bodies, signed_sets = [], Signed()
    upper = payment("upper-variant")
    upper["sha_sign"] = ipn_receiver.digistore24_signature(PASSPHRASE, {k: v for k, v in upper.items()
                                                                        if k != "sha_sign"}, upper_keys=True)
    shasign = payment("shasign-variant")
    shasign["SHASIGN"] = shasign.pop("sha_sign")
    for fields in (fixture_fields("digistore24_on_payment"), fixture_fields("digistore24_on_refund"),
                   fixture_fields("digistore24_connection_test"), fixture_fields("promopit_sale"),
                   upper, shasign):
        bodies.append(urllib.parse.urlencode(fields).encode("utf-8"))
        if "isn_key" not in fields:
            signed_sets.add(fields, upper_keys=fields is upper)
    return bodies, signed_sets


ORIGINAL_BODIES, ORIGINAL_SETS = originals()
SIGNATURES = [fixture(name)["sha_sign"] for name in ("digistore24_on_payment", "digistore24_on_refund",
                                                      "digistore24_connection_test")]

# ---- strategies ------------------------------------------------------------------------------

METHODS = st.sampled_from(["POST"] * 6 + ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]) | \
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)
CONTENT_TYPES = st.sampled_from([FORM, FORM + "; charset=UTF-8", "APPLICATION/X-WWW-FORM-URLENCODED",
                                 "multipart/form-data; boundary=XyZ", "multipart/form-data", "text/plain",
                                 "application/json", "", None]) | st.text(max_size=60)
LENGTHS = st.sampled_from(["exact"] * 5 + ["missing", "missing-terminated", "missing-run-once", "garbage",
                                           "negative", "huge", "shorter", "longer", "empty"])
PATHS = st.sampled_from([("", "/"), ("", ""), ("/ipn_receiver.py", ""), ("/ipn_receiver.py", "/x"),
                         ("/ipn", "/"), ("", "/config.ini")])
SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
FORM_BODIES = st.lists(st.tuples(st.sampled_from(["event", "sha_sign", "SHASIGN", "isn_key", "order_id",
                                                  "transaction_id", "a", "", "%", "+"]) | SAFE_TEXT,
                                 SAFE_TEXT), max_size=12).map(
    lambda pairs: "&".join(urllib.parse.quote(k) + "=" + urllib.parse.quote(v) for k, v in pairs).encode())
BODIES = st.binary(max_size=2000) | st.text(max_size=1000).map(lambda t: t.encode("utf-8", "surrogatepass")) | \
    FORM_BODIES


def apply_length(body, mode):
    """(body to send, CONTENT_LENGTH or False for none, extra environ)."""
    extra = {}
    if mode == "exact":
        return body, str(len(body)), extra
    if mode.startswith("missing"):
        if mode == "missing-terminated":
            extra["wsgi.input_terminated"] = True
        elif mode == "missing-run-once":
            extra["wsgi.run_once"] = True
        return body, False, extra
    return body, {"garbage": "12abc", "negative": "-5", "huge": str(10 ** 12), "empty": "",
                  "shorter": str(max(0, len(body) - 7)), "longer": str(len(body) + 7)}[mode], extra


@st.composite
def random_requests(draw):
    body = draw(BODIES)
    body, length, extra = apply_length(body, draw(LENGTHS))
    script_name, path_info = draw(PATHS)
    extra.update(SCRIPT_NAME=script_name, PATH_INFO=path_info)
    if draw(st.booleans()):
        extra["HTTP_TRANSFER_ENCODING"] = draw(st.sampled_from(["chunked", "gzip, chunked", "identity", "x"]))
    return Sent(body, environ_for(body, method=draw(METHODS), content_type=draw(CONTENT_TYPES),
                                  content_length=length, **extra))


MUTATIONS = ["flip", "delete", "insert", "truncate", "duplicate-key", "invalid-utf8", "huge-key",
             "signature", "drop-pair", "swap-pairs", "percent"]


@st.composite
def mutated_requests(draw):
    body = bytearray(draw(st.sampled_from(ORIGINAL_BODIES)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(MUTATIONS))
        at = draw(st.integers(0, max(0, len(body) - 1)))
        if kind == "flip" and body:
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete" and body:
            del body[at]
        elif kind == "insert":
            body.insert(at, draw(st.integers(0, 255)))
        elif kind == "truncate":
            del body[at:]
        elif kind == "duplicate-key":
            pairs = bytes(body).split(b"&")
            name = pairs[draw(st.integers(0, len(pairs) - 1))].split(b"=")[0]
            value = draw(st.sampled_from([b"", b"0", b"x", b"%00", b"\xff"]))
            position = draw(st.sampled_from(["end", "start"]))
            extra_pair = name + b"=" + value
            body = bytearray(bytes(body) + b"&" + extra_pair if position == "end" else extra_pair + b"&" + bytes(body))
        elif kind == "invalid-utf8":
            body[at:at] = b"%FF%FE"
        elif kind == "huge-key":
            body += b"&" + b"k" * draw(st.integers(1000, 70000)) + b"=v"
        elif kind == "signature":
            spot = bytes(body).find(b"sha_sign=")
            if spot >= 0:
                position = spot + 9 + draw(st.integers(0, 127))
                if position < len(body):
                    body[position] = draw(st.sampled_from(b"0123456789ABCDEFabcdef"))
        elif kind in ("drop-pair", "swap-pairs"):
            pairs = bytes(body).split(b"&")
            first = draw(st.integers(0, len(pairs) - 1))
            if kind == "drop-pair":
                del pairs[first]
            else:
                second = draw(st.integers(0, len(pairs) - 1))
                pairs[first], pairs[second] = pairs[second], pairs[first]
            body = bytearray(b"&".join(pairs))
        elif kind == "percent" and body:
            body[at:at + 1] = b"%" + b"%02X" % body[at]
    body = bytes(body)
    body, length, extra = apply_length(body, draw(st.sampled_from(["exact"] * 8 + ["shorter", "longer",
                                                                                    "missing-terminated"])))
    return Sent(body, environ_for(body, content_length=length, **extra))


FIELD_NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='";\r\n\\'),
                      min_size=1, max_size=20).filter(lambda k: k not in ("sha_sign", "SHASIGN", "isn_key"))


@st.composite
def form_requests(draw, signed_sets, genuine_promopit):
    fields = draw(st.dictionaries(FIELD_NAMES, SAFE_TEXT, max_size=25))
    promopit = draw(st.integers(0, 4)) == 0
    genuine = draw(st.booleans())
    if promopit:
        fields["isn_key"] = ISN_KEY if genuine else draw(st.sampled_from(["", "x", ISN_KEY + "x", ISN_KEY[:-1]]))
    else:
        fields["event"] = draw(st.sampled_from(["on_payment", "on_refund", "connection_test", "on_new", "",
                                                "last_paid_day"]) | SAFE_TEXT)
        if draw(st.integers(0, 9)) == 0:
            fields["fuzz_raise"] = "1"               # the handler raises for these
        passphrase = PASSPHRASE if genuine else draw(st.sampled_from(["", "wrong", PASSPHRASE + " "]))
        upper_keys = draw(st.booleans())
        fields["sha_sign"] = ipn_receiver.digistore24_signature(passphrase, fields, upper_keys)
        if genuine:
            signed_sets.add(fields, upper_keys)
    if draw(st.booleans()):
        body = urllib.parse.urlencode(fields).encode("utf-8")
        environ = environ_for(body)
    else:
        boundary = "fuzz" + os.urandom(8).hex()
        body = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (
            boundary.encode(), name.encode("utf-8"), value.encode("utf-8")) for name, value in fields.items())
        body += b"--%s--\r\n" % boundary.encode()
        environ = environ_for(body, content_type="multipart/form-data; boundary=" + boundary)
    if promopit and genuine:
        genuine_promopit.add(body)
    return Sent(body, environ)


# ---- the test --------------------------------------------------------------------------------

class Fuzz(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None      # fsync is not what is fuzzed
        cls.data_dir = tempfile.mkdtemp(prefix="ipn-fuzz-", dir=base)
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=ISN_KEY, DATA_DIR=cls.data_dir,
                                  LOG_LEVEL="DEBUG", MAX_BODY_BYTES=MAX_BODY)
        ipn_receiver.log.to_stderr = False
        cls.accepted, cls.error_bodies, cls.raised, cls.requests = [], set(), [], 0
        cls.signed_sets = ORIGINAL_SETS
        cls.genuine_promopit = set()
        original = ipn_receiver.Notification
        accepted = cls.accepted

        class Recorded(original):
            def __init__(self, *args):
                original.__init__(self, *args)
                accepted.append(self)

        def handler(notification):
            if notification.get("fuzz_raise") == "1":
                cls.raised.append(notification)
                raise RuntimeError("a handler failing on purpose")
            return {"username": "u"} if notification.event == "on_payment" else None

        cls.patches = [mock.patch.object(ipn_receiver, "Notification", Recorded)]
        for table in ("DIGISTORE24_HANDLERS", "PROMOPIT_HANDLERS"):
            events = list(getattr(ipn_receiver, table)) + ["on_new"]
            cls.patches.append(mock.patch.dict(getattr(ipn_receiver, table), {event: handler for event in events}))
        for patch in cls.patches:
            patch.start()

    @classmethod
    def tearDownClass(cls):
        for patch in reversed(cls.patches):
            patch.stop()
        forget_settings()
        shutil.rmtree(cls.data_dir, ignore_errors=True)

    def check(self, sent):
        body, environ = sent.body, sent.environ
        method = environ["REQUEST_METHOD"].upper()
        type(self).requests += 1
        before_accepted, before_raised = len(self.accepted), len(self.raised)
        answer = call(environ)                                  # nothing may escape
        self.assertIn(answer.status, DOCUMENTED)
        if method == "HEAD":
            self.assertEqual(answer.body, "")
        else:
            self.assertTrue(answer.body.startswith(("OK", "ERROR: ")), "an answer neither OK nor ERROR:")
        if answer.status == 500:
            self.assertGreater(len(self.raised), before_raised, "a 500 without a failing handler")
        if answer.status >= 400 and method != "HEAD":
            self.error_bodies.add(re.sub(r"\d+", "N", answer.body))     # a failed handler's number, seconds to wait
        for notification in self.accepted[before_accepted:]:
            if notification.provider == "promopit":             # a body we built with the key,
                self.assertTrue(body in self.genuine_promopit or holds_the_key(body),  # or holding it
                                "a PromoPit call was accepted without the ISN key")
            else:
                self.assertTrue(self.signed_sets.covers(notification.fields), "a forged payload was accepted")

    @fuzz_settings(EXAMPLES["random"])
    @seed(20261121)
    @given(random_requests())
    def test_1_random_requests(self, request):
        self.check(request)

    @fuzz_settings(EXAMPLES["mutated"])
    @seed(20261122)
    @given(mutated_requests())
    def test_2_mutated_real_payloads(self, request):
        self.check(request)

    @fuzz_settings(EXAMPLES["forms"])
    @seed(20261123)
    @given(st.data())
    def test_3_random_forms_signed_or_not(self, data):
        self.check(data.draw(form_requests(self.signed_sets, self.genuine_promopit)))

    def test_4_over_the_whole_run(self):
        """Runs last: the error answers were few and fixed, and no secret reached log or store."""
        if self.requests == 0:
            self.skipTest("run together with the fuzz tests above")
        print("\n  fuzz: %d requests, %d accepted notifications, %d distinct error answers, %d handler "
              "failures" % (self.requests, len(self.accepted), len(self.error_bodies), len(self.raised)),
              file=__import__("sys").stderr)
        self.assertGreaterEqual(self.requests, 100000)
        self.assertLessEqual(len(self.error_bodies), 25, sorted(self.error_bodies))      # fixed texts only
        secrets = [PASSPHRASE, ISN_KEY] + SIGNATURES
        with open(os.path.join(self.data_dir, "ipn_receiver.log"), encoding="utf-8") as file:
            log = file.read()
        self.assertIn("POST -> 200", log)
        connection = sqlite3.connect(os.path.join(self.data_dir, "events.sqlite3"))
        rows = [" ".join(str(value) for value in row) for row in connection.execute("SELECT * FROM notifications")]
        connection.close()
        self.assertGreater(len(rows), 500)
        for secret in secrets:
            self.assertFalse(secret in log, "a secret or signature is in the log")
            self.assertFalse(any(secret in row for row in rows), "a secret or signature is in the store")


if __name__ == "__main__":
    unittest.main()
