"""Reading the request: content types, lengths, chunked bodies, form parsing and decoding."""

import io
import unittest

from helpers import ReceiverTestCase, call, environ_for, ipn_receiver, payment, promopit_sale, urlencode

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
        pairs = ipn_receiver.parse_multipart(self.body([("a", "1")], newline=b"\n"), "XyZ")
        self.assertEqual(pairs, [(b"a", b"1")])

    def test_a_body_without_its_closing_boundary_is_refused(self):
        with self.assertRaises(Refusal) as caught:
            ipn_receiver.parse_multipart(self.body([("a", "1")], closing=False), "XyZ")
        self.assertEqual(caught.exception.status, 400)

    def test_no_boundary_is_refused(self):
        with self.assertRaises(Refusal):
            ipn_receiver.parse_multipart(b"whatever", "")

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

    def test_windows_1252_undefined_bytes_stand_for_themselves(self):
        self.assertEqual(ipn_receiver.decode_windows_1252(b"a\x81b\x9d"), "a\x81b\x9d")

    def test_utf8_promopit_stays_utf8(self):
        fields = ipn_receiver.decode_fields([(b"isn_key", b"k"), (b"name", "Müller".encode())], "promopit")
        self.assertEqual(fields["name"], "Müller")


class Provider(unittest.TestCase):
    def test_by_content(self):
        self.assertEqual(ipn_receiver.provider_of({b"isn_key", b"event"}), "promopit")
        self.assertEqual(ipn_receiver.provider_of({b"sha_sign"}), "digistore24")
        self.assertEqual(ipn_receiver.provider_of({b"SHASIGN"}), "digistore24")
        self.assertEqual(ipn_receiver.provider_of({b"event"}), "digistore24")
        self.assertIsNone(ipn_receiver.provider_of({b"order_id"}))


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
        answer = call(environ_for(b"", content_length="10001", **{"wsgi.input": Unreadable()}))
        self.assertEqual((answer.status, answer.body),
                         (413, "ERROR: the body is larger than MAX_BODY_BYTES (10000 bytes)"))

    def test_a_length_that_is_not_a_number(self):
        for value in ("ten", "-5", "1e3", "0x10"):
            answer = call(environ_for(b"a=1", content_length=value))
            self.assertEqual((answer.status, answer.body), (400, "ERROR: Content-Length is not a number"))

    def test_a_body_shorter_than_its_length(self):
        answer = call(environ_for(b"event=x", content_length="100"))
        self.assertEqual(answer.status, 400)
        self.assertIn("ended before Content-Length", answer.body)

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

    def test_multipart_notification(self):
        fields = payment()
        body = Multipart().body(list(fields.items()), boundary="----b0undary")
        answer = call(environ_for(body, content_type="multipart/form-data; boundary=----b0undary"))
        self.assertEqual((answer.status, answer.body), (200, "OK"))

    def test_promopit_in_windows_1252(self):
        fields = promopit_sale(customer_name="Ana Müller")
        body = urlencode(fields).replace(b"%C3%BC", b"%FC")       # ü in Windows-1252
        self.assertIn(b"%FC", body)
        self.assertEqual(call(environ_for(body)).status, 200)
        self.assertEqual(self.rows()[0]["fields"].count("Ana Müller"), 1)


if __name__ == "__main__":
    unittest.main()
