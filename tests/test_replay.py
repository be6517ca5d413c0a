"""Only what is signed decides: a call captured once and sent again, re-encoded in every way its
signature allows, is one notification, and its handler runs once.

Digistore24's signature covers each non-empty field as `key=value`, and in its upper-case-keys
variant the keys only up to their case. So an attacker holding one genuine call may add, drop or
rename empty fields, change the case of keys (that variant), repeat a key with an earlier value
(the last one counts), reorder the fields, encode them differently, and split a value at "=" into
another key. None of that may change the event, is_test, which notification it is, or what the
handler sees (vouched_fields in ipn_receiver.py).
"""

import os
import unittest

from helpers import (ReceiverTestCase, environ_for, call, generated, ipn_receiver, payment, post, promopit_sale,
                     signed, urlencode)


def unsigned(fields):
    return {key: value for key, value in fields.items() if key not in ("sha_sign", "SHASIGN")}


def upper_signed(fields):
    return signed(unsigned(fields), upper_keys=True)


class ReplayTestCase(ReceiverTestCase):
    """Handlers that record what they see; on_payment returns fresh access data every run."""

    def setUp(self):
        ReceiverTestCase.setUp(self)
        self.runs = []
        for event in ipn_receiver.DIGISTORE24_HANDLERS:
            self.handle(event, self.record)
        self.handle("sale", self.record, "PROMOPIT_HANDLERS")

    def record(self, notification):
        self.runs.append((notification.event, notification.is_test, dict(notification.fields)))
        if notification.event == "on_payment":
            return {"username": "u%d" % len(self.runs), "password": os.urandom(4).hex()}

    def assertOneNotification(self, calls):
        """Every call (its fields, or a body) answered alike, by one run of the handler, stored as
        one row."""
        answers = [post(fields) if isinstance(fields, dict) else call(environ_for(fields)) for fields in calls]
        self.assertEqual({(answer.status, answer.body) for answer in answers}, {(200, answers[0].body)}, answers)
        self.assertEqual(len(self.runs), 1, self.runs)
        self.assertEqual([row["deliveries"] for row in self.rows()], [len(calls)])
        return self.runs[0]


class CapturedCalls(ReplayTestCase):
    def test_upper_keys_variant_renamed_and_padded_transaction_id(self):
        original = upper_signed(payment("4711"))
        replay = {("Transaction_ID" if key == "transaction_id" else key): value for key, value in original.items()}
        replay.update(transaction_id="", junk1="", junk2="")
        self.assertOneNotification([original, replay])

    def test_upper_keys_variant_cannot_make_a_test_payment_live(self):
        original = upper_signed(payment("4712", api_mode="test"))
        replay = {(key.upper() if key == "api_mode" else key): value for key, value in original.items()}
        replay["api_mode"] = ""                             # an empty api_mode, which is not signed
        self.assertEqual(post(replay).body[:2], "OK")        # (sent before the original, say)
        event, is_test, fields = self.runs[0]
        self.assertEqual((event, is_test, fields["api_mode"]), ("on_payment", True, "test"))

    def test_upper_keys_variant_keeps_its_event_in_any_case(self):
        original = upper_signed(payment("4713", event="on_refund"))
        replay = {(key if key == "sha_sign" else key.upper()): value for key, value in original.items()}
        self.assertEqual(self.assertOneNotification([original, replay])[0], "on_refund")

    def test_an_exact_signature_with_upper_case_keys_is_the_same_as_its_lower_case_copy(self):
        # With no lower-case letter in its keys, a call signs the same text in both variants.
        fields = {key.upper(): value for key, value in unsigned(payment("4714")).items()}
        original = signed(fields)
        copy = upper_signed({key.lower(): value for key, value in fields.items()})
        self.assertEqual(copy["sha_sign"], original["sha_sign"])
        self.assertOneNotification([original, copy])

    def test_empty_fields_added_to_a_call_without_a_transaction_id(self):
        # A call without transaction_id is identified by a hash of its fields: only of those signed.
        original = signed({"event": "on_rebill_cancelled", "order_id": "A1B2", "product_id": "42", "custom": ""})
        padded = dict(original, x="", custom="", other="")
        del padded["custom"]
        self.assertOneNotification([original, padded, dict(original, y="")])

    def test_empty_fields_added_to_a_promopit_sale_without_a_transaction_id(self):
        sale = promopit_sale("")
        self.assertOneNotification([sale, dict(sale, padding=""), dict(sale, custom_6="", another="")])

    def test_an_empty_field_whose_name_is_no_utf8_decides_nothing(self):
        # PromoPit's charset is guessed from the body: UTF-8, else Windows-1252. An empty field
        # added with a name that is no UTF-8 turned the whole sale into Windows-1252 ("Müller"
        # into "MÃ¼ller"), and a sale without a transaction id into another sale (the 47th review).
        sale = promopit_sale("")
        self.assertIn("ü", "".join(sale.values()))
        body = urlencode(sale)
        self.assertOneNotification([sale, body + b"&%FF=", b"%E9%80=&" + body, body + b"&x%FCy"])
        self.assertIn("ü", "".join(self.runs[0][2].values()))

    def test_an_empty_field_whose_name_is_no_utf8_is_left_out_of_a_digistore24_call_too(self):
        # Digistore24's calls are UTF-8: an empty field is left out before that is asked.
        original = signed({"event": "on_rebill_cancelled", "order_id": "A1B2", "buyer": "Jörg"})
        self.assertOneNotification([original, urlencode(original) + b"&%FF="])
        answer = call(environ_for(urlencode(original).replace(b"J%C3%B6rg", b"J%F6rg")))
        self.assertEqual((answer.status, answer.body), (400, "ERROR: the body is not valid UTF-8"))

    def test_a_value_split_at_an_equals_sign_is_refused(self):
        # "custom" = "a=b" signs the same as a key "custom=a" with the value "b".
        original = payment("4715", custom="a=b")
        self.assertEqual(post(original).body[:2], "OK")
        split = dict(original)
        del split["custom"]
        split["custom=a"] = "b"
        answer = post(split)
        self.assertEqual(answer.status, 400)
        self.assertTrue(answer.body.startswith('ERROR: a field name contains "="'))
        self.assertEqual(len(self.runs), 1)

    def test_two_keys_that_differ_only_in_case_are_refused_in_the_upper_keys_variant(self):
        fields = dict(unsigned(payment("4716")), ORDER_ID="other")
        answer = post(signed(fields, upper_keys=True))
        self.assertEqual(answer.status, 400)
        self.assertTrue(answer.body.startswith("ERROR: two field names differ only in upper and lower case"))
        self.assertEqual(self.runs, [])
        # In the exact variant both keys are signed as they are: nothing is ambiguous.
        self.assertEqual(post(signed(fields)).status, 200)

    def test_the_stored_fields_are_the_vouched_ones(self):
        post(upper_signed(payment("4717", custom="")))
        import json
        stored = json.loads(self.rows()[0]["fields"])
        self.assertEqual(stored, self.runs[0][2])
        self.assertNotIn("custom", stored)
        self.assertTrue(all(key == key.lower() for key in stored))


# ---- every re-encoding the signature allows, generated --------------------------------------------

def reencodings(st):
    """A genuine call (either variant, with or without a transaction id) and a list of edits that
    its signature allows an attacker to make."""
    edits = st.lists(st.one_of(
        st.tuples(st.just("add empty"), st.text(st.characters(whitelist_categories=("L", "N", "P", "S")), min_size=1,
                                                   max_size=8)),
        st.tuples(st.just("drop empty"), st.integers(0, 200)),
        st.tuples(st.just("recase"), st.integers(0, 200)),
        st.tuples(st.just("earlier duplicate"), st.integers(0, 200)),
        st.tuples(st.just("shuffle"), st.randoms(use_true_random=False)),
        st.tuples(st.just("SHASIGN"), st.booleans()),
        st.tuples(st.just("lower-case signature"), st.booleans()),
        st.tuples(st.just("percent-encode all"), st.booleans()),
    ), max_size=6)
    return st.tuples(st.booleans(), st.booleans(), edits)


SWAP_ASCII_CASE = str.maketrans("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def apply_edits(pairs, edits, upper_keys):
    """The call, as a list of (key, value), with the edits made; and whether to percent-encode all.
    Where a key repeats, the last of its values counts, and every edit keeps that so."""
    pairs = list(pairs)
    encode_all = False
    for kind, argument in edits:
        names = [index for index, (key, _) in enumerate(pairs) if key not in ("sha_sign", "SHASIGN")]
        keys = [key for key, _ in pairs]
        if kind == "add empty" and argument not in keys + ["sha_sign", "SHASIGN", "isn_key"]:
            pairs.append((argument, ""))
        elif kind == "drop empty":
            empty = [index for index in names if pairs[index][1] == "" and keys.count(pairs[index][0]) == 1]
            if empty:
                del pairs[empty[argument % len(empty)]]
        elif kind == "recase" and upper_keys and names:
            chosen = pairs[names[argument % len(names)]][0]          # every pair with that key
            pairs = [(key.translate(SWAP_ASCII_CASE) if key == chosen else key, value) for key, value in pairs]
        elif kind == "earlier duplicate" and names:
            key = pairs[names[argument % len(names)]][0]
            pairs.insert(0, (key, "an earlier value"))
        elif kind == "shuffle":                     # the keys in another order, each key's pairs in theirs
            order = list(dict.fromkeys(keys))
            argument.shuffle(order)
            pairs = [pair for key in order for pair in pairs if pair[0] == key]
        elif kind == "SHASIGN":
            pairs = [("SHASIGN" if key == "sha_sign" else key, value) for key, value in pairs]
        elif kind == "lower-case signature":
            pairs = [(key, value.lower() if key in ("sha_sign", "SHASIGN") else value) for key, value in pairs]
        elif kind == "percent-encode all":
            encode_all = True
    return pairs, encode_all


def body_of(pairs, encode_all):
    if not encode_all:
        return urlencode(pairs)
    return b"&".join(b"".join(b"%%%02X" % byte for byte in text.encode("utf-8")) + b"=" +
                     b"".join(b"%%%02X" % byte for byte in value.encode("utf-8")) for text, value in pairs)


class EveryReencoding(ReplayTestCase):
    @generated(reencodings, examples=300)
    def test_every_reencoding_the_signature_allows_is_one_notification(self, case):
        upper_keys, with_transaction, edits = case
        self.runs.clear()
        number = os.urandom(8).hex()                # a call never seen before
        fields = unsigned(payment("re-" + number))
        if not with_transaction:
            fields.update(transaction_id="", order_id="re-" + number, event="on_rebill_cancelled")
        original = list(signed(fields, upper_keys=upper_keys).items())
        replay, encode_all = apply_edits(original, edits, upper_keys)
        first = call(environ_for(urlencode(original)))
        again = call(environ_for(body_of(replay, encode_all)))
        self.assertEqual((again.status, again.body), (first.status, first.body), edits)
        self.assertEqual(first.status, 200)
        self.assertEqual(len(self.runs), 1, edits)


if __name__ == "__main__":
    unittest.main()
