"""Reading the request: content types, lengths, chunked bodies, form parsing and decoding."""

import io
import os
import random
import shutil
import subprocess
import tempfile
import unittest
import urllib.parse
from unittest import mock

from helpers import ReceiverTestCase, call, environ_for, generated, ipn_receiver, payment, promopit_sale, urlencode

parse = ipn_receiver.parse_urlencoded
Refusal = ipn_receiver.Refusal


class Urlencoded(unittest.TestCase):
    def test_plus_is_a_space_and_percent_escapes_are_bytes(self):
        self.assertEqual(parse(b"a=x+y%2Bz&b=%C3%A4%e2%82%ac"), [(b"a", b"x y+z"), (b"b", "ä€".encode())])

    def test_malformed_escapes_are_kept_as_they_are(self):
        self.assertEqual(parse(b"a=100%&b=%zz&c=%4"), [(b"a", b"100%"), (b"b", b"%zz"), (b"c", b"%4")])

    def test_a_pair_without_equals_has_an_empty_value_and_empty_names_are_dropped(self):
        self.assertEqual(parse(b"flag&=x&&b="), [(b"flag", b""), (b"b", b"")])

    def test_a_repeated_key_keeps_its_last_value(self):
        fields = ipn_receiver.decode_fields(parse(b"a=1&b=2&a=3"), "digistore24")
        self.assertEqual(fields, {"a": "3", "b": "2"})

    def test_value_with_equals_signs(self):
        self.assertEqual(parse(b"custom=m:abc+def/ghi=jkl"), [(b"custom", b"m:abc def/ghi=jkl")])

    def test_a_million_escapes_are_decoded_in_little_more_memory_than_they_take(self):
        # Before anything is verified: a piece for each "%" took 100 MiB (the 35th review).
        import tracemalloc
        for body in (b"%" * 10 ** 6, b"%41" * 333333, b"%4" * 500000):
            tracemalloc.start()
            try:
                decoded = ipn_receiver.percent_decode(body)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            self.assertEqual(decoded, urllib.parse.unquote_to_bytes(body))
            self.assertLess(peak, 3 * 2 ** 20)

    def test_nothing_is_stripped(self):
        # A value keeps what it was sent with, spaces and line breaks at the end included.
        self.assertEqual(parse(b" a=1 \n"), [(b" a", b"1 \n")])


# The bytes a form body is generated from: every character that means something to a form
# parser, escapes good and broken, and bytes that are not ASCII.
FORM_PIECES = [b"a", b"b", b"A", b"_", b"=", b"&", b"+", b" ", b"%", b"%2", b"%20", b"%3D", b"%26", b"%2B",
               b"%00", b"%zz", b"%C3%A4", b"\xc3\xa4", b"\xff", b".", b"[", b"]", b"\n", b";", b"0"]


def php_key(name):
    """What PHP's parse_str makes of a field name that is not an array ("a[x]"): it stops at a NUL
    byte, drops leading spaces, drops the field if the name then starts with "[", and turns
    spaces, dots and "[" into "_". (An empty result: the field is dropped.)"""
    name = name.split(b"\0")[0].lstrip(b" ")
    if name.startswith(b"["):
        return b""
    return name.replace(b" ", b"_").replace(b".", b"_").replace(b"[", b"_")


class UrlencodedLikeTheStandardLibrary(unittest.TestCase):
    """parse_urlencoded stands in for urllib.parse.parse_qsl, whose import (it brings `re`) costs a
    CGI call about 4.6 ms. On generated bodies the two agree pair for pair, but for one difference:
    a pair whose name is empty ("=x") is dropped, as PHP drops it, where parse_qsl keeps ("", "x")."""

    @generated(lambda st: st.lists(st.sampled_from(FORM_PIECES), max_size=40).map(b"".join), examples=2000)
    def test_the_same_pairs_as_parse_qsl(self, body):
        try:
            theirs = urllib.parse.parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1",
                                            separator="&")
        except TypeError:                   # a Python older than the "separator" parameter
            theirs = urllib.parse.parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        theirs = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in theirs if name]
        self.assertEqual(parse(body), theirs)


class UrlencodedLikePhp(unittest.TestCase):
    """The senders' samples are written against PHP's $_POST, which parse_str fills the same way.

    php-cgi parses 3,000 generated bodies in one run, and each must give the same fields as
    parse_urlencoded and decode_fields, the last of a repeated name winning, but for what PHP does to
    names and the receiver does not (php_key): PHP stops a name at a NUL byte, drops its leading
    spaces, drops a field whose name then starts with "[", turns spaces, dots and "[" into "_",
    and makes arrays of names like "a[x]".
    Neither sender uses such names; the receiver keeps names as sent, since Digistore24 signs them
    as sent.
    """

    SCRIPT = (b'<?php\nforeach (explode("\\n", trim(file_get_contents("php://stdin"))) as $line) {\n'
              b'    parse_str(hex2bin($line), $fields);\n    $out = array();\n'
              b'    foreach ($fields as $k => $v) { $out[] = bin2hex((string)$k) . ":" . (is_array($v) ? "[]" : bin2hex($v)); }\n'
              b'    echo implode(",", $out), "\\n";\n}\n')

    def test_the_same_fields_as_php_parse_str(self):
        php = shutil.which("php-cgi")
        if not php:
            self.skipTest("php-cgi is not installed (apt-get install php-cgi)")
        rng = random.Random(20261125)
        bodies = [b"x=1" + b"".join(rng.choice(FORM_PIECES) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
        folder = tempfile.mkdtemp(prefix="ipn-php-")
        self.addCleanup(shutil.rmtree, folder, True)
        script = os.path.join(folder, "parse.php")
        with open(script, "wb") as file:
            file.write(self.SCRIPT)
        done = subprocess.run([php, "-q", "-d", "max_input_vars=100000", script],
                              input=b"\n".join(body.hex().encode() for body in bodies) + b"\n",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        results = done.stdout.decode().split("\n")
        compared = 0
        for body, result in zip(bodies, results):
            theirs = [item.split(":") for item in result.split(",") if item]
            if any(value == "[]" for _, value in theirs):
                continue                    # an array: a name with "[", which neither sender sends
            ours = {}
            for name, value in parse(body):
                if php_key(name):
                    ours[php_key(name)] = value
            self.assertEqual(ours, {bytes.fromhex(name): bytes.fromhex(value) for name, value in theirs}, body)
            compared += 1
        self.assertGreater(compared, 2000)


class Multipart(unittest.TestCase):
    def body(self, fields, boundary="XyZ", closing=True, newline=b"\r\n"):
        out = b""
        for name, value in fields:
            out += b"--" + boundary.encode() + newline
            out += b'Content-Disposition: form-data; name="' + name.encode() + b'"' + newline + newline
            out += value.encode() + newline
        if closing:
            out += b"--" + boundary.encode() + b"--" + newline
        return out

    def test_fields_are_read_in_order(self):
        pairs = ipn_receiver.parse_multipart(self.body([("a", "1"), ("b", "zwei\r\nlines")]), "XyZ")
        self.assertEqual(pairs, [(b"a", b"1"), (b"b", b"zwei\r\nlines")])

    def test_bare_newlines_are_accepted(self):
        pairs = ipn_receiver.parse_multipart(self.body([("a", "1"), ("b", "two")], newline=b"\n"), "XyZ")
        self.assertEqual(pairs, [(b"a", b"1"), (b"b", b"two")])

    def test_only_spaces_and_tabs_are_stripped_around_a_name(self):
        # Headers are read as Latin-1, where the UTF-8 of "à" ends in the byte 0xa0 (a no-break
        # space to str.strip) and that of "Å" in 0x85 (a line break to it): the names stay whole.
        for name in ("voilà", "NÅ"):
            body = ("--XyZ\r\nContent-Disposition: form-data; name=%s \t\r\n\r\n1\r\n--XyZ--" % name).encode()
            self.assertEqual(ipn_receiver.parse_multipart(body, "XyZ"), [(name.encode(), b"1")])
        self.assertEqual(ipn_receiver.parse_content_type("Multipart/Form-Data ;\tboundary=\xa0b\xa0 "),
                         ("multipart/form-data", {"boundary": "\xa0b\xa0"}))
        self.assertEqual(ipn_receiver.parse_content_type("\tapplication/X ; X=X; nameX = TAX\t"),
                         ("application/x", {"x": "X", "namex": "TAX"}))        # (strip nothing else)
        self.assertEqual(ipn_receiver.parse_content_type('a/b; empty=""; one="; two=""""'),
                         ("a/b", {"empty": "", "one": '"', "two": '""'}))

    def assertRefused(self, body, boundary, message):
        with self.assertRaises(Refusal) as caught:
            ipn_receiver.parse_multipart(body, boundary)
        self.assertEqual((caught.exception.status, caught.exception.body), (400, "ERROR: " + message))

    def test_each_malformed_body_is_refused_saying_what_is_wrong(self):
        self.assertRefused(self.body([("a", "1")], closing=False), "XyZ",
                           "the multipart body is incomplete (no closing boundary)")
        self.assertRefused(b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"", "XyZ",
                           "a multipart part has no header/content separator")
        self.assertRefused(b"--XyZ\r\nContent-Type: text/plain\r\n\r\n1\r\n--XyZ--", "XyZ",
                           "a multipart part has no Content-Disposition name")

    def test_a_boundary_is_1_to_200_characters_and_any_character_is_read(self):
        for boundary in ("", "b" * 201):
            self.assertRefused(b"whatever", boundary, "multipart/form-data without a valid boundary parameter")
        for boundary in ("b" * 200, "b\u2603"):        # (a character Latin-1 cannot write: "?")
            body = self.body([("a", "1")], boundary=boundary.encode("latin-1", "replace").decode("latin-1"))
            self.assertEqual(ipn_receiver.parse_multipart(body, boundary), [(b"a", b"1")])

    def test_as_many_fields_as_a_body_may_have_are_read(self):
        body = self.body([("x", "")] * ipn_receiver.MAX_FIELDS)
        self.assertEqual(len(ipn_receiver.parse_multipart(body, "XyZ")), ipn_receiver.MAX_FIELDS)

    def test_quoted_boundary_in_content_type(self):
        self.assertEqual(ipn_receiver.parse_content_type('multipart/form-data; boundary="a b"; x=1'),
                         ("multipart/form-data", {"boundary": "a b", "x": "1"}))


class Decoding(unittest.TestCase):
    def test_digistore24_must_be_utf8(self):
        with self.assertRaises(Refusal) as caught:
            ipn_receiver.decode_fields([(b"event", b"on_payment"), (b"name", b"J\xf6rg")], "digistore24")
        self.assertEqual(caught.exception.body, "ERROR: the body is not valid UTF-8")

    def test_promopit_falls_back_to_windows_1252(self):
        fields = ipn_receiver.decode_fields([(b"isn_key", b"k"), (b"name", b"J\xf6rg \x80")], "promopit")
        self.assertEqual(fields["name"], "Jörg €")

    def test_an_empty_field_is_left_out_and_decides_nothing(self):
        # The last of a repeated name counts, as in PHP, and then an empty one is left out.
        fields = ipn_receiver.decode_fields([(b"isn_key", b"k"), (b"name", "Müller".encode()), (b"\xff", b""),
                                             (b"city", b"x"), (b"city", b"")], "promopit")
        self.assertEqual(fields, {"isn_key": "k", "name": "Müller"})

    def test_windows_1252_undefined_bytes_stand_for_themselves(self):
        self.assertEqual(ipn_receiver.decode_windows_1252(b"a\x81b\x9d"), "a\x81b\x9d")

    def test_utf8_promopit_stays_utf8(self):
        fields = ipn_receiver.decode_fields([(b"isn_key", b"k"), (b"name", "Müller".encode())], "promopit")
        self.assertEqual(fields["name"], "Müller")


class Provider(unittest.TestCase):
    def provider(self, *names):
        return ipn_receiver.provider_of([(name, b"1") for name in names])

    def test_by_content(self):
        self.assertEqual(self.provider(b"isn_key", b"event"), "promopit")
        self.assertEqual(self.provider(b"sha_sign"), "digistore24")
        self.assertEqual(self.provider(b"SHASIGN"), "digistore24")
        self.assertEqual(self.provider(b"event"), "digistore24")
        self.assertIsNone(self.provider(b"order_id"))

    def test_a_key_and_a_signature_together_are_refused(self):
        for signature in (b"sha_sign", b"SHASIGN"):
            with self.assertRaises(Refusal) as caught:
                self.provider(b"isn_key", signature, b"event")
            self.assertEqual(caught.exception.status, 400)


class Unreadable:
    """A wsgi.input that fails the test if anything reads it."""

    def read(self, *args):
        raise AssertionError("the body was read")


class Chunks(io.RawIOBase):
    """A stream that hands out a body a few bytes at a time, like a socket."""

    def __init__(self, data, size=7):
        self.data, self.size = data, size

    def read(self, n=-1):
        size = self.size if n < 0 else min(self.size, n)
        part, self.data = self.data[:size], self.data[size:]
        return part


class Lengths(ReceiverTestCase):
    settings = {"MAX_BODY_BYTES": 10000}

    def test_over_the_limit_is_refused_before_reading(self):
        for length in ("10001", "9" * 30, "9" * 5000):
            answer = call(environ_for(b"", content_length=length, **{"wsgi.input": Unreadable()}))
            self.assertEqual(answer.status, 413)
            self.assertTrue(answer.body.startswith("ERROR: the body is larger than MAX_BODY_BYTES allows; "))
            self.assertNotIn("10000", answer.body)              # no setting's value

    def test_a_length_that_is_not_a_number(self):
        # Only ASCII digits: int() would take the others, or fail on them with a 500.
        for value in ("ten", "-5", "1e3", "0x10", "+5", "1_0", "\u00b2", "\u0663", "\uff11\uff10", "1 0", "٣", "X5", "5X"):
            answer = call(environ_for(b"a=1", content_length=value, **{"wsgi.input": Unreadable()}))
            self.assertEqual((answer.status, answer.body),
                             (400, "ERROR: Content-Length is not a whole number of bytes"), value)

    def test_spaces_around_the_length_are_fine(self):
        body = urlencode(payment())
        answer = call(environ_for(body, content_length=" %d\t" % len(body)))
        self.assertEqual((answer.status, answer.body), (200, "OK"))

    def test_a_body_shorter_than_its_length(self):
        answer = call(environ_for(b"event=x", content_length="100"))
        self.assertEqual((answer.status, answer.body), (400, "ERROR: the body ended before Content-Length bytes arrived"))

    def test_a_length_of_18_digits_is_read_and_of_19_refused_unread(self):
        body = urlencode(payment())
        self.assertEqual(call(environ_for(body, content_length=str(len(body)).zfill(18))).body, "OK")
        answer = call(environ_for(body, content_length=str(len(body)).zfill(19), **{"wsgi.input": Unreadable()}))
        self.assertEqual(answer.status, 413)

    def test_a_body_of_exactly_the_limit_is_read(self):
        body = urlencode(payment())
        ipn_receiver.use_settings(SHA_PASSPHRASE=ipn_receiver.settings()["SHA_PASSPHRASE"], DATA_DIR=self.data_dir,
                                  MAX_BODY_BYTES=len(body))
        self.assertEqual(call(environ_for(body)).body, "OK")
        chunked = urlencode(payment("2"))
        chunked += b"&z" * ((len(body) - len(chunked)) // 2) + b"z" * ((len(body) - len(chunked)) % 2)
        self.assertEqual(len(chunked), len(body))
        answer = call(environ_for(chunked, content_length=False, **{"wsgi.input_terminated": True}))
        self.assertEqual((answer.status, answer.body), (200, "OK"))     # (empty padding is not signed)
        answer = call(environ_for(chunked + b"z", content_length=False, **{"wsgi.input_terminated": True}))
        self.assertEqual(answer.status, 413)

    def test_exactly_content_length_bytes_are_read_and_no_more(self):
        # A stream may hold more than the body (a server's next request, say): reading past it
        # would wait, or mix it in.
        body = urlencode(payment())
        stream = Chunks(body + b"&more=1&event=on_refund", size=1)       # one byte a read
        answer = call(environ_for(body, **{"wsgi.input": stream}))
        self.assertEqual((answer.status, answer.body), (200, "OK"))
        self.assertEqual(self.rows()[0]["event"], "on_payment")

    def test_a_body_that_cannot_be_read(self):
        # Whatever the server raises: gunicorn's errors of a malformed chunk are no OSError, and
        # were a 500 with a traceback in the errors log (the 37th review).
        class ParseException(Exception):
            pass

        for error in (OSError("connection reset"), ValueError("I/O operation on closed file"), ParseException()):
            class Broken:
                def read(self, *args):
                    raise error
            for extra in ({"CONTENT_LENGTH": "100"}, {"CONTENT_LENGTH": "", "wsgi.input_terminated": True}):
                answer = call(environ_for(b"", **dict(extra, **{"wsgi.input": Broken()})))
                self.assertEqual((answer.status, answer.body), (400, "ERROR: the body could not be read to its end"))
        with open(os.path.join(self.data_dir, ipn_receiver.ERROR_LOG_FILE_NAME)) as file:
            self.assertEqual(file.read(), "")                   # (the errors alone: no refusal)

    def test_uwsgi_hands_a_chunked_body_over_chunk_by_chunk(self):
        body = urlencode(payment())
        middle = body.index(b"&sha_sign=") + 50         # (the parts, joined with anything between, would not verify)

        class Uwsgi:
            parts = [body[:middle], body[middle:], b""]

            @classmethod
            def chunked_read(cls, timeout):
                return cls.parts.pop(0)
        uwsgi = dict(content_length=False, HTTP_TRANSFER_ENCODING="chunked", **{"uwsgi.version": b"2.0"})
        with mock.patch.dict("sys.modules", {"uwsgi": Uwsgi}):
            self.assertEqual(call(environ_for(b"", **uwsgi)).body, "OK")
            # Without "chunked" there is nothing to read to its end: refused, as elsewhere.
            answer = call(environ_for(b"", content_length=False, **{"uwsgi.version": b"2.0",
                                                                    "wsgi.input": Unreadable()}))
            self.assertEqual(answer.status, 411)
        # Under another server the same header does not mean uWSGI's API is there.
        answer = call(environ_for(b"", content_length=False, HTTP_TRANSFER_ENCODING="chunked",
                                  **{"wsgi.input": Unreadable()}))
        self.assertEqual(answer.status, 411)

    def test_uwsgi_chunks_count_towards_the_limit_and_their_failures_are_400(self):
        uwsgi = dict(content_length=False, HTTP_TRANSFER_ENCODING="chunked", **{"uwsgi.version": b"2.0"})

        def chunked(*parts):
            queue = list(parts)

            class Uwsgi:
                @staticmethod
                def chunked_read(timeout):
                    part = queue.pop(0)
                    if isinstance(part, Exception):
                        raise part
                    return part
            return mock.patch.dict("sys.modules", {"uwsgi": Uwsgi})
        with chunked(b"a" * 6000, b"a" * 4000, b""):               # exactly MAX_BODY_BYTES: read, and not a form
            self.assertEqual(call(environ_for(b"", **uwsgi)).status, 400)
        for parts in ((b"a" * 6000, b"a" * 4001, b""), (b"a" * 6000, b"a" * 6000, b"")):
            with chunked(*parts):
                answer = call(environ_for(b"", **uwsgi))
            self.assertEqual((answer.status, answer.body), (413, "ERROR: " + ipn_receiver.TOO_LARGE))
        with chunked(b"a=1", OSError("reset")):
            answer = call(environ_for(b"", **uwsgi))
        self.assertEqual((answer.status, answer.body), (400, "ERROR: the chunked body could not be read to its end"))
        # Where the uwsgi module is not there (uWSGI's environ, another server), nothing reads it.
        answer = call(environ_for(b"", **dict(uwsgi, **{"wsgi.input": Unreadable()})))
        self.assertEqual((answer.status, answer.body), (411, "ERROR: a POST needs a Content-Length header; this server "
                                                            "cannot read a chunked body to its end"))

    def test_uwsgi_gives_a_chunked_body_a_minute_in_all(self):
        # A client sending a byte just before each chunk's 30 seconds are up would hold a worker
        # for hours: the whole body gets a minute, then 400.
        clock, waits = [1000.0], []

        class Uwsgi:
            @classmethod
            def chunked_read(cls, timeout):
                waits.append(timeout)
                clock[0] += timeout - 0.5
                return b"a"
        uwsgi = dict(content_length=False, HTTP_TRANSFER_ENCODING="chunked", **{"uwsgi.version": b"2.0"})
        with mock.patch.dict("sys.modules", {"uwsgi": Uwsgi}), \
                mock.patch.object(ipn_receiver.time, "time", lambda: clock[0]):
            answer = call(environ_for(b"", **uwsgi))
        self.assertEqual((answer.status, answer.body), (400, "ERROR: the chunked body took over a minute to arrive; "
                                                            "send the whole body at once"))
        self.assertEqual(waits, [30, 30, 1])

    def test_a_body_arriving_in_small_pieces_is_read_whole(self):
        body = urlencode(payment())
        answer = call(environ_for(body, **{"wsgi.input": Chunks(body)}))
        self.assertEqual((answer.status, answer.body), (200, "OK"))

    def test_chunked_without_an_end_marker_is_refused_unread(self):
        answer = call(environ_for(b"", content_length=False, **{"wsgi.input": Unreadable()}))
        self.assertEqual(answer.status, 411)
        self.assertTrue(answer.body.startswith("ERROR: a POST needs a Content-Length"))

    def test_chunked_is_read_where_the_server_marks_its_end(self):
        for marker in ("wsgi.input_terminated", "wsgi.run_once"):
            body = urlencode(payment(transaction_id=marker))
            answer = call(environ_for(body, content_length=False, **{marker: True}))
            self.assertEqual((answer.status, answer.body), (200, "OK"), marker)

    def test_chunked_over_the_limit(self):
        answer = call(environ_for(b"a" * 10001, content_length=False, **{"wsgi.input_terminated": True}))
        self.assertEqual(answer.status, 413)

    def test_empty_content_length_is_like_none(self):
        answer = call(environ_for(b"", content_length="", **{"wsgi.input": Unreadable()}))
        self.assertEqual(answer.status, 411)


class ContentTypes(ReceiverTestCase):
    def test_unsupported_types(self):
        for content_type in (None, "", "text/plain", "application/json", "multipart/mixed; boundary=x"):
            answer = call(environ_for(b'{"event": "on_payment"}', content_type=content_type))
            self.assertEqual(answer.status, 415, content_type)
            self.assertEqual(answer.body, "ERROR: unsupported content type; send "
                                          "application/x-www-form-urlencoded or multipart/form-data")

    def test_parameters_and_case_do_not_matter(self):
        answer = call(environ_for(urlencode(payment()), content_type="Application/X-WWW-Form-Urlencoded; charset=UTF-8"))
        self.assertEqual(answer.status, 200)

    def test_multipart_without_a_boundary_parameter(self):
        answer = call(environ_for(Multipart().body([("a", "1")]), content_type="multipart/form-data"))
        self.assertEqual((answer.status, answer.body), (400, "ERROR: multipart/form-data without a valid boundary "
                                                             "parameter"))

    def test_multipart_notification(self):
        fields = payment()
        body = Multipart().body(list(fields.items()), boundary="----b0undary")
        answer = call(environ_for(body, content_type="multipart/form-data; boundary=----b0undary"))
        self.assertEqual((answer.status, answer.body), (200, "OK"))

    def test_a_body_of_more_fields_than_a_notification_has_is_refused_unparsed(self):
        # A million of them took 60 MiB to parse, before anything was verified (the 35th review).
        fields = payment()
        padded = urlencode(fields) + b"&" * (ipn_receiver.MAX_FIELDS - len(fields))     # empty pairs: dropped
        self.assertEqual(call(environ_for(padded)).status, 200)
        for body, content_type in ((padded + b"&", None), (Multipart().body(
                [("x", "")] * (ipn_receiver.MAX_FIELDS + 1)), "multipart/form-data; boundary=XyZ")):
            answer = call(environ_for(body, **{"content_type": content_type} if content_type else {}))
            self.assertEqual((answer.status, answer.body), (413, "ERROR: the body has more than 10000 fields; a "
                                                                 "notification has a few hundred"))

    def test_promopit_in_windows_1252(self):
        fields = promopit_sale(customer_name="Ana Müller")
        body = urlencode(fields).replace(b"%C3%BC", b"%FC")       # ü in Windows-1252
        self.assertIn(b"%FC", body)
        self.assertEqual(call(environ_for(body)).status, 200)
        self.assertEqual(self.rows()[0]["fields"].count("Ana Müller"), 1)


if __name__ == "__main__":
    unittest.main()
