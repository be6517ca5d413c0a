"""Verification: Digistore24's SHA-512 signature and PromoPit's ISN key, as PROTOCOL.md defines them.

The worked examples below were computed by an independent PHP implementation (PROTOCOL.md); the
sample signatures come from the senders' own field sets (tests/fixtures).
"""

import hashlib
import hmac
import os
import unittest
from unittest import mock

from helpers import PASSPHRASE, fixture, ipn_receiver

sign = ipn_receiver.digistore24_signature
is_valid = ipn_receiver.digistore24_signature_is_valid

# (passphrase, fields, upper_keys, expected sha_sign): PROTOCOL.md's table, row by row.
WORKED_EXAMPLES = [
    ("s3cret-passphrase", {"order_id": "ORD-1", "product_id": "42"}, False,
     "9A23DE2603A33D17D935908580B5DB90C452DE8E68556E2A4AD96F1C3EC3BFD2"
     "EE3AE47B819B96286812224FBCED943D0ACF48C8C20CA57570E2263B6ABAF099"),
    ("s3cret-passphrase", {"order_id": "ORD-1", "product_id": "42"}, True,
     "650DFA85696C764CF5276397D48D5F1E7D1D0D42D2836E459CAE83A36814DF67"
     "E90C59A508B73D98280400758A65381D09BFA36D7F575345639D24F269A666A2"),
    ("s3cret-passphrase", {"order_id": "ORD-1", "note": "", "quantity": "0", "product_id": "42"}, False,
     "A8C1B7BB92C7A38977F17FCFA939F4C39A48CE18963FA8FEE2D8CAA19765B400"
     "7036F5AAEE899BD7B09A54B53D8F0F6D114010A1C695C6A07DDFFF497A6C4752"),
    ("s3cret-passphrase", {"order_id": "A1B2C3D4", "orderform_id": "1", "event": "on_payment",
                           "placeholder_TITLE": "Hi"}, False,
     "9BFEE2A5103174B7A90D0E1B71BE2B6BDDDB70383795F11ACF5500D64E7CB419"
     "39F6F7B2EB3F0913D80BC7FABAA60648B3CB5F912AFCC479ADE1B198F69E3720"),
    ("s3cret-passphrase", {"order_id": "A1B2C3D4", "orderform_id": "1", "event": "on_payment",
                           "placeholder_TITLE": "Hi"}, True,
     "3893705C94CFA9EDA7783638CF4965C692C52EE960FCEAFE7AB41B147BEDC61E"
     "B31E6C8C983C611E16F84E46DB8A6D4818A39FF0C8B02C48FC95C706D7ACCAC0"),
    ("pässwörd", {"event": "on_payment", "address_first_name": "Jörg",
                  "custom": "m:abc+def/ghi=jkl", "email": "a+b@example.de"}, False,
     "96AE36D8B6D07A9A1630D0599CE5B1E74215918A32739FB77C9CFC200503F80A"
     "35B2DAB1864ED07C109D58ECBBB8316AAE59E164F362F221C171A2362E4B5C0D"),
]


def reference_signature(passphrase, pairs):
    """The signature text written out by hand for a list of (key, value) already in order."""
    text = "".join(key + "=" + value + passphrase for key, value in pairs)
    return hashlib.sha512(text.encode("utf-8")).hexdigest().upper()


class WorkedExamples(unittest.TestCase):
    def test_every_worked_example_of_the_protocol(self):
        for passphrase, fields, upper_keys, expected in WORKED_EXAMPLES:
            with self.subTest(fields=fields, upper_keys=upper_keys):
                self.assertEqual(sign(passphrase, fields, upper_keys), expected)

    def test_every_worked_example_verifies_and_a_flipped_digit_does_not(self):
        for passphrase, fields, upper_keys, expected in WORKED_EXAMPLES:
            with self.subTest(fields=fields, upper_keys=upper_keys):
                self.assertTrue(is_valid(fields, expected, passphrase))
                flipped = ("0" if expected[0] != "0" else "1") + expected[1:]
                self.assertFalse(is_valid(fields, flipped, passphrase))

    def test_the_signature_is_128_uppercase_hex_digits(self):
        value = sign("x", {"a": "b"})
        self.assertEqual(len(value), 128)
        self.assertEqual(value, value.upper())
        int(value, 16)


class Samples(unittest.TestCase):
    """The real-shaped calls in tests/fixtures carry the signature their sender computed."""

    def test_each_sample_signature_is_reproduced(self):
        for name in ("digistore24_on_payment", "digistore24_on_refund", "digistore24_connection_test"):
            data = fixture(name)
            with self.subTest(sample=name):
                self.assertEqual(sign(data["passphrase"], data["fields"]), data["sha_sign"])
                self.assertTrue(is_valid(data["fields"], data["sha_sign"], data["passphrase"]))

    def test_on_payment_sample_has_173_fields_with_its_signature(self):
        self.assertEqual(len(fixture("digistore24_on_payment")["fields"]) + 1, 173)

    def test_changing_any_single_field_of_the_sample_breaks_the_signature(self):
        data = fixture("digistore24_on_payment")
        for key, value in data["fields"].items():
            changed = dict(data["fields"])
            changed[key] = value + "x" if value else "x"
            with self.subTest(field=key):
                self.assertFalse(is_valid(changed, data["sha_sign"], data["passphrase"]))

    def test_a_wrong_passphrase_does_not_verify(self):
        data = fixture("digistore24_on_payment")
        self.assertFalse(is_valid(data["fields"], data["sha_sign"], data["passphrase"] + " "))


class Rules(unittest.TestCase):
    """Each step of PROTOCOL.md's algorithm, checked against the text written out by hand."""

    def test_keys_are_sorted_in_plain_byte_order_case_sensitive(self):
        fields = {"order": "3", "_x": "2", "ORDER": "1"}
        expected = reference_signature("p", [("ORDER", "1"), ("_x", "2"), ("order", "3")])
        self.assertEqual(sign("p", fields), expected)

    def test_non_ascii_keys_sort_by_their_utf8_bytes(self):
        fields = {"é": "1", "z": "2", "Ω": "3"}
        expected = reference_signature("p", sorted(fields.items(), key=lambda kv: kv[0].encode("utf-8")))
        self.assertEqual(sign("p", fields), expected)

    def test_empty_values_are_skipped_but_zero_and_space_are_not(self):
        fields = {"a": "", "b": "0", "c": " ", "d": ""}
        self.assertEqual(sign("p", fields), reference_signature("p", [("b", "0"), ("c", " ")]))

    def test_nothing_is_trimmed(self):
        self.assertNotEqual(sign("p", {"a": " 1"}), sign("p", {"a": "1"}))

    def test_the_passphrase_follows_every_pair(self):
        text = "a=1pb=2p"
        self.assertEqual(sign("p", {"b": "2", "a": "1"}),
                         hashlib.sha512(text.encode()).hexdigest().upper())

    def test_signature_fields_are_not_signed(self):
        base = {"order_id": "1"}
        self.assertEqual(sign("p", dict(base, sha_sign="X", SHASIGN="Y")), sign("p", base))
        self.assertEqual(sign("p", dict(base, SHASIGN="Y")), sign("p", base))
        self.assertEqual(sign("p", dict(base, sha_sign="X")), sign("p", base))

    def test_upper_keys_variant_sorts_by_the_uppercased_key(self):
        # "_" sorts after uppercase letters but before lowercase ones: uppercasing moves it.
        fields = {"order_id": "1", "orderform_id": "2"}
        expected = reference_signature("p", [("ORDERFORM_ID", "2"), ("ORDER_ID", "1")])
        self.assertEqual(sign("p", fields, upper_keys=True), expected)

    def test_upper_keys_variant_keeps_keys_equal_when_uppercased_in_original_key_order(self):
        fields = {"a": "lower", "A": "upper"}
        expected = reference_signature("p", [("A", "upper"), ("A", "lower")])   # "A" < "a"
        self.assertEqual(sign("p", fields, upper_keys=True), expected)

    def test_upper_keys_variant_uppercases_ascii_letters_only_as_php_does(self):
        fields = {"straße": "1", "é": "2"}
        expected = reference_signature("p", [("STRAßE", "1"), ("é", "2")])   # ß is not ASCII
        self.assertEqual(sign("p", fields, upper_keys=True), expected)

    def test_both_key_cases_are_accepted_and_received_value_is_uppercased(self):
        fields = {"order_id": "ORD-1", "product_id": "42"}
        for upper_keys in (False, True):
            value = sign(PASSPHRASE, fields, upper_keys)
            self.assertTrue(is_valid(fields, value, PASSPHRASE))
            self.assertTrue(is_valid(fields, value.lower(), PASSPHRASE))

    def test_no_signed_fields_sign_the_empty_string(self):
        empty = hashlib.sha512(b"").hexdigest().upper()
        self.assertEqual(sign("p", {}), empty)
        self.assertEqual(sign("p", {"a": "", "sha_sign": "X"}), empty)
        self.assertEqual(sign("p", {"a": ""}, upper_keys=True), empty)

    def test_html_entities_are_not_decoded(self):
        self.assertNotEqual(sign("p", {"a": "&amp;"}), sign("p", {"a": "&"}))


class NeverWithoutASecret(unittest.TestCase):
    def test_an_empty_passphrase_never_verifies_even_a_matching_signature(self):
        fields = {"order_id": "1"}
        forged = sign("", fields)                     # what anyone can compute
        self.assertFalse(is_valid(fields, forged, ""))
        self.assertFalse(is_valid(fields, forged, None))

    def test_a_call_with_nothing_signed_never_verifies(self):
        # With no non-empty field the signed text is empty: its hash is the same for every
        # passphrase, so anyone can compute it. (Found by fuzzing.)
        for fields in ({}, {"event": ""}, {"a": "", "b": "", "sha_sign": "X"}):
            nothing = sign("anything at all", fields)
            self.assertEqual(nothing, hashlib.sha512(b"").hexdigest().upper())
            self.assertFalse(is_valid(fields, nothing, PASSPHRASE))
            self.assertFalse(is_valid(fields, sign(PASSPHRASE, fields, upper_keys=True), PASSPHRASE))

    def test_a_missing_or_empty_signature_never_verifies(self):
        self.assertFalse(is_valid({"a": "1"}, "", "p"))
        self.assertFalse(is_valid({"a": "1"}, None, "p"))

    def test_a_signature_with_non_ascii_characters_is_refused_not_an_error(self):
        self.assertFalse(is_valid({"a": "1"}, "ÄÖÜ" * 40, "p"))

    def test_only_ascii_letters_are_taken_in_either_case(self):
        # str.upper() turns the ligature U+FB00 into "FF": a value no sender writes would verify.
        fields = {"order_id": "ORD-2", "product_id": "42"}
        value = sign(PASSPHRASE, fields)
        self.assertIn("FF", value, "the example needs a signature with FF in it")
        self.assertFalse(is_valid(fields, value.replace("FF", "\ufb00", 1), PASSPHRASE))
        self.assertTrue(is_valid(fields, value.replace("FF", "ff", 1), PASSPHRASE))

    def test_isn_key(self):
        self.assertTrue(ipn_receiver.isn_key_is_valid("pp-isn-1", "pp-isn-1"))
        self.assertFalse(ipn_receiver.isn_key_is_valid("pp-isn-2", "pp-isn-1"))
        self.assertFalse(ipn_receiver.isn_key_is_valid("", ""))
        self.assertFalse(ipn_receiver.isn_key_is_valid("x", ""))
        self.assertFalse(ipn_receiver.isn_key_is_valid("ключ", "pp-isn-1"))


class ConstantTimeComparison(unittest.TestCase):
    """Every secret is compared with hmac.compare_digest (the security test of issue 5)."""

    def test_signature_comparison_goes_through_compare_digest(self):
        fields = {"order_id": "1"}
        good = sign("p", fields)
        with mock.patch.object(hmac, "compare_digest", wraps=hmac.compare_digest) as spy:
            self.assertTrue(is_valid(fields, good, "p"))
        self.assertEqual(spy.call_args[0][1], good.encode("ascii"))
        # And its answer is what decides: a comparison that says "no" refuses a good signature.
        with mock.patch.object(hmac, "compare_digest", return_value=False):
            self.assertFalse(is_valid(fields, good, "p"))

    def test_isn_key_comparison_goes_through_compare_digest(self):
        with mock.patch.object(hmac, "compare_digest", wraps=hmac.compare_digest) as spy:
            self.assertTrue(ipn_receiver.isn_key_is_valid("pp-isn-1", "pp-isn-1"))
        self.assertEqual(spy.call_count, 1)
        with mock.patch.object(hmac, "compare_digest", return_value=False):
            self.assertFalse(ipn_receiver.isn_key_is_valid("pp-isn-1", "pp-isn-1"))


class SharedSamples(unittest.TestCase):
    """The fixtures are the samples of ../shared/samples, rebuilt; this checks nothing was lost."""

    def test_fixtures_match_the_shared_samples(self):
        import json
        folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                              "shared", "samples")
        if not os.path.isdir(folder):
            self.skipTest("../shared/samples is not beside this checkout")
        for sample, name in (("digistore24-on_payment", "digistore24_on_payment"),
                             ("digistore24-on_refund", "digistore24_on_refund"),
                             ("digistore24-connection_test", "digistore24_connection_test"),
                             ("promopit-sale", "promopit_sale")):
            with open(os.path.join(folder, sample + ".json"), encoding="utf-8") as file:
                original = json.load(file)["params"]
            rebuilt = fixture(name)
            secret = {"sha_sign": rebuilt.get("sha_sign")} if "sha_sign" in original else \
                {"isn_key": rebuilt.get("isn_key")}
            self.assertEqual(dict(rebuilt["fields"], **secret), original)


if __name__ == "__main__":
    unittest.main()
