"""Security properties, end to end through application(); the fuzz run checks them at scale.

- every secret is compared with hmac.compare_digest, and its verdict is what decides;
- no secret in any answer, log line, stored row or exception message, whatever the request;
- error answers never repeat the request's data;
- the status line reveals no setting.
"""

import contextlib
import hmac
import io
import json
import os
import unittest
from unittest import mock

from helpers import (ISN_KEY, PASSPHRASE, ReceiverTestCase, call, environ_for, ipn_receiver, payment, post,
                     promopit_sale)


class TimingSafeComparison(ReceiverTestCase):
    def test_the_signature_and_the_isn_key_go_through_compare_digest(self):
        for fields, secret_kind in ((payment(), "signature"), (promopit_sale(), "isn key")):
            with mock.patch.object(hmac, "compare_digest", wraps=hmac.compare_digest) as spy:
                self.assertEqual(post(fields).body, "OK")
            self.assertGreaterEqual(spy.call_count, 1, secret_kind)
            for args, _ in spy.call_args_list:
                self.assertIsInstance(args[0], bytes)         # bytes: any received value compares
            # The comparison's verdict decides: told "different", the same genuine call is refused.
            with mock.patch.object(hmac, "compare_digest", return_value=False):
                answer = post(dict(fields, transaction_id="other", promopit_txn_id="other"))
            self.assertEqual(answer.status, 403, secret_kind)

    def test_no_plain_comparison_of_secrets_in_the_code(self):
        with open(ipn_receiver.__file__, encoding="utf-8") as file:
            source = file.read()
        # The one plain comparison: with the public text Digistore24 sends in place of a signature.
        source = source.replace("received == NO_SIGNATURE", "")
        for plain in ("== passphrase", "passphrase ==", "== isn_key", "isn_key ==", "== received",
                      "received ==", "== expected", "expected =="):
            self.assertFalse(plain in source, plain)


class NothingLeaks(ReceiverTestCase):
    settings = {"LOG_LEVEL": "DEBUG"}

    def test_no_secret_in_any_answer(self):
        requests = [environ_for(method="GET", content_type=None), environ_for(method="HEAD", content_type=None)]
        answers = [call(environ) for environ in requests]
        answers += [post(payment()), post(dict(payment(), sha_sign="0")), post(promopit_sale(isn_key="x")),
                    post({"order_id": "1"})]
        ipn_receiver.use_settings(SHA_PASSPHRASE=ipn_receiver.PLACEHOLDERS["SHA_PASSPHRASE"], DATA_DIR=self.data_dir)
        answers.append(post(payment()))
        for answer in answers:
            for secret in (PASSPHRASE, ISN_KEY, ipn_receiver.PLACEHOLDERS["SHA_PASSPHRASE"], payment()["sha_sign"]):
                self.assertFalse(secret in answer.body, "a secret in an answer")
                self.assertFalse(any(secret in value for value in answer.headers.values()), "a secret in a header")

    def test_the_isn_key_sent_in_another_field_is_not_stored(self):
        # Whoever holds the key may send it in any field, the transaction id too; the log masks it,
        # and so must the store, which lives on in its backups.
        answer = post(promopit_sale(custom_2="x" + ISN_KEY + "x", promopit_txn_id=ISN_KEY))
        self.assertEqual(answer.status, 200, answer.body)
        row = self.rows()[0]
        self.assertEqual(row["duplicate_key"], "promopit:[secret]")
        self.assertIn('"custom_2":"x[secret]x"', row["fields"])
        self.assertEqual(json.loads(row["fields"])["promopit_txn_id"], "[secret]")
        self.assertNotIn(ISN_KEY, str(row))
        self.assertEqual(post(promopit_sale(custom_2="x" + ISN_KEY + "x", promopit_txn_id=ISN_KEY)).body, "OK")
        self.assertEqual(len(self.rows()), 1)                     # its copy is still a copy

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root, to give the folder another owner")
    def test_a_data_folder_another_user_made_is_not_used(self):
        # Made first by another user of the server (in /tmp, say): that user could read every
        # buyer's data, plant an answer for a sale to come, or delete the store.
        folder = os.path.join(self.data_dir, "theirs")
        os.mkdir(folder)
        os.chmod(folder, 0o777)
        os.chown(folder, 65534, 65534)
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=folder)
        ran = []
        self.handle("on_payment", ran.append)
        answer = post(payment())
        self.assertEqual((answer.status, answer.body, ran, os.listdir(folder)), (503, ipn_receiver.STORAGE_ERROR, [], []))
        with self.assertRaises(ipn_receiver.StorageError) as raised:
            ipn_receiver.ensure_data_dir(folder)
        self.assertEqual(str(raised.exception), "another user of this server could change %s, and so move the data "
                         "folder %s away or put another in its place: set DATA_DIR to a folder in your home folder, "
                         "outside the web root, and move the store's files into it (events.sqlite3, and its -wal and "
                         "-shm files if any) with no call running: `check` says how" % (folder, folder))
        # Root's (or the script owner's), where the receiver runs as another user: no one else may
        # change it, but the receiver could not write its files into it either.
        os.chown(folder, 0, 0)
        os.chmod(folder, 0o755)
        with mock.patch.object(os, "geteuid", return_value=4444), self.assertRaises(
                ipn_receiver.StorageError) as raised:
            ipn_receiver.ensure_data_dir(folder)
        self.assertEqual(str(raised.exception), "the data folder %s belongs to root, not to user 4444, who runs the "
                         "receiver: where it holds the receiver's store and was given away by mistake, give it back "
                         "(chown -R 4444 %s, or ask your host to: a folder of your own would start an empty store); else "
                         "set DATA_DIR to a folder of user 4444's own, outside the web "
                         "root (`python3 ipn_receiver.py check`)" % (folder, folder))

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root, to give the folder another owner")
    def test_an_outcome_goes_into_no_data_folder_another_user_made_while_the_handler_ran(self):
        # DATA_DIR right in /tmp: the folder is deleted while a handler runs (a clean-up of /tmp,
        # say), and another user makes it again at once, with a store of their own in which this
        # sale is done and its answer is theirs. Neither their answer nor the outcome may go there.
        import shutil
        sticky = os.path.join(self.data_dir, "tmp")
        folder, planted = os.path.join(sticky, "ipn"), os.path.join(self.data_dir, "planted")
        os.mkdir(sticky)
        os.chmod(sticky, 0o1777)
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=planted)
        self.handle("on_payment", lambda notification: {"username": "mallory"})
        self.assertEqual(post(payment()).body, "OK\nusername: mallory")
        ipn_receiver.close_store()

        def grant(notification):
            ipn_receiver.close_store()
            shutil.rmtree(folder)
            shutil.copytree(planted, folder)
            for name in [""] + os.listdir(folder):
                os.chown(os.path.join(folder, name), 65534, 65534)
            return {"username": "jane"}
        self.handle("on_payment", grant)
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=folder)
        answer = post(payment())
        self.assertEqual((answer.status, answer.body), (503, ipn_receiver.OUTCOME_NOT_STORED % (1, "did its work")))
        self.data_dir = folder
        self.assertEqual([(row["status"], row["answer"]) for row in self.rows()], [("done", "OK\nusername: mallory")])

    def test_an_outcome_goes_into_the_data_folder_of_its_claim_only_while_it_is_this_users(self):
        identity = ipn_receiver.folder_identity(self.data_dir)
        self.assertEqual(identity, (os.stat(self.data_dir).st_dev, os.stat(self.data_dir).st_ino))
        self.assertIsNone(ipn_receiver.folder_identity(os.path.join(self.data_dir, "none")))
        with mock.patch.object(os, "geteuid", return_value=os.geteuid() + 1):
            self.assertIsNone(ipn_receiver.folder_identity(self.data_dir))      # made anew by another user

    def test_a_deleted_working_folder_fails_no_call(self):
        # A process that lives on (a WSGI server) whose working folder was deleted under it.
        gone = os.path.join(self.data_dir, "gone")
        os.mkdir(gone)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(gone)
        os.rmdir(gone)
        self.assertEqual(post(payment()).status, 200)

    def test_folders_made_on_the_way_to_the_data_folder_are_private_whatever_the_umask(self):
        # Made as umask 000 has them (0777), they would be every user's: the next call refused.
        previous = os.umask(0)
        self.addCleanup(os.umask, previous)
        made = os.path.join(self.data_dir, "a", "b", "data")
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=made)
        self.assertEqual([post(payment(number)).status for number in ("1", "2")], [200, 200])
        for folder in (os.path.join(self.data_dir, "a"), os.path.join(self.data_dir, "a", "b"), made):
            self.assertEqual(os.stat(folder).st_mode & 0o777, 0o700, folder)
        ipn_receiver.ensure_data_dir(made + "2/")       # (with a / at the end)
        self.assertEqual(os.stat(made + "2").st_mode & 0o777, 0o700)

    def test_a_data_folder_below_one_another_user_may_change_is_not_used(self):
        # There that user could move the data folder away (every handler would run again in a new
        # store), or swap in one of their own, with answers planted for sales to come.
        shared = os.path.join(self.data_dir, "shared")
        os.mkdir(shared)
        ran = []
        self.handle("on_payment", ran.append)
        cases = [(0o777, None, False), (0o1777, None, True), (0o755, None, True), (0o775, None, True)]
        if os.geteuid() == 0:
            cases += [(0o755, 65534, False), (0o1777, 65534, False)]        # nobody's folder, sticky or not
        for number, (mode, owner, used) in enumerate(cases, 1):
            with self.subTest(mode=oct(mode), owner=owner):
                os.chmod(shared, mode)
                if owner is not None:
                    os.chown(shared, owner, owner)
                folder = os.path.join(shared, "data%d" % number)
                ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=folder)
                answer = post(payment(str(number)))
                self.assertEqual((answer.status, os.path.isdir(folder)), (200, True) if used else (503, False))
                self.assertEqual(len(ran), sum(used for _, _, used in cases[:number]))
                ipn_receiver.close_store()
        # The way there through a link counts too: where it leads is what is used.
        os.chmod(shared, 0o777)
        os.symlink(shared, os.path.join(self.data_dir, "link"))
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=os.path.join(self.data_dir, "link", "data"))
        self.assertEqual(post(payment("99")).status, 503)
        self.assertEqual(ipn_receiver.folder_others_control(os.path.join(self.data_dir, "link", "data")), shared)
        # ... and past a folder on the way that is not made yet ("link/new" sorts before "shared").
        self.assertEqual(ipn_receiver.folder_others_control(os.path.join(self.data_dir, "link", "new", "data")),
                         shared)
        os.chown(shared, os.geteuid(), os.getegid())
        with self.assertRaises(ipn_receiver.StorageError) as raised:
            ipn_receiver.ensure_data_dir(os.path.join(shared, "data"))
        # Where the folder is this user's, its mode is the fix: moving the data folder would leave
        # its store behind, and in a new one every handler would run again (the 37th review).
        self.assertEqual(str(raised.exception), "another user of this server could change %s, and so move the data "
                         "folder %s away or put another in its place: chmod go-w %s (or 700, where it is the data "
                         "folder)" % (shared, os.path.join(shared, "data"), shared))
        # The data folder itself, where every user may write to it (made so before the receiver's first call).
        opened = os.path.join(self.data_dir, "open")
        os.mkdir(opened)
        os.chmod(opened, 0o777)
        self.assertEqual(ipn_receiver.folder_others_control(opened), opened)

    def test_a_data_folder_made_meanwhile_by_another_call_is_fine(self):
        # Two first calls at once: the other one makes the folder between this one's look and its own.
        isdir, looks = os.path.isdir, []

        def not_yet_at_first(path):
            looks.append(path)
            return len(looks) > 1 and isdir(path)
        with mock.patch.object(os.path, "isdir", not_yet_at_first):
            ipn_receiver.ensure_data_dir(self.data_dir)
        self.assertTrue(os.path.isfile(os.path.join(self.data_dir, ".htaccess")))

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root, to give a link another owner")
    def test_a_link_another_user_made_as_the_data_folder_is_not_used(self):
        # In /tmp, say, before the first call: it leads to a folder of this user's, but its maker
        # may remove it (a new, empty store) or make it lead elsewhere at any time.
        sticky = os.path.join(self.data_dir, "tmp")
        os.mkdir(sticky)
        os.chmod(sticky, 0o1777)
        spare = os.path.join(self.data_dir, "spare")
        os.mkdir(spare, 0o700)
        link = os.path.join(sticky, "ipn_data")
        os.symlink(spare, link)
        os.lchown(link, 65534, 65534)
        self.assertEqual(ipn_receiver.folder_others_control(link), link)
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, DATA_DIR=link)
        self.assertEqual(post(payment()).status, 503)
        self.assertEqual(os.listdir(spare), [])
        os.lchown(link, 0, 0)                               # this user's own link: fine
        self.assertIsNone(ipn_receiver.folder_others_control(link))

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root, to give files other owners")
    def test_folders_of_root_and_of_the_scripts_owner_are_trusted(self):
        # Run as a user who is neither: / and /tmp are root's, and the data folder's parent the
        # script's owner's (the vendor's, where the web server runs the receiver as www-data).
        script = os.path.join(self.data_dir, "ipn_receiver.py")
        parent = os.path.join(self.data_dir, "vendor")
        with open(script, "w"):
            pass
        os.mkdir(parent)
        for path in (script, parent):
            os.chown(path, 4242, 4242)
        os.chown(self.data_dir, 4343, 4343)
        with mock.patch.object(ipn_receiver, "__file__", script), mock.patch.object(os, "geteuid", return_value=4444):
            self.assertEqual(ipn_receiver.folder_others_control(os.path.join(parent, "data")), self.data_dir)
            os.chown(self.data_dir, 4444, 4444)             # this user's own
            self.assertIsNone(ipn_receiver.folder_others_control(os.path.join(parent, "data")))
            os.chown(parent, 4545, 4545)                    # neither root's, nor this user's, nor the script owner's
            self.assertEqual(ipn_receiver.folder_others_control(os.path.join(parent, "data")), parent)
            os.chown(parent, 4242, 4242)
            os.remove(script)               # renamed for an upload: its owner unknown, trusted no more
            self.assertEqual(ipn_receiver.folder_others_control(os.path.join(parent, "data")), parent)
            os.chown(parent, 4444, 4444)    # ... and this user's folders are trusted still
            self.assertIsNone(ipn_receiver.folder_others_control(os.path.join(parent, "data")))

    def test_a_folder_its_group_may_write_to_is_anothers_where_others_are_in_the_group(self):
        # umask 002 gives every new folder to its group to write to: where that group is its
        # owner's alone (most systems), no one else may; where it is `users` (some), everyone may.
        parent = os.path.join(self.data_dir, "shared")
        data = os.path.join(parent, "data")
        os.mkdir(parent)
        os.chmod(parent, 0o775)
        me, group = os.geteuid(), os.stat(parent).st_gid

        def account(uid, gid):
            return mock.Mock(pw_uid=uid, pw_gid=gid, pw_name="user%d" % uid)
        for accounts, members, controlled in (([account(me, group)], [], None),           # this user's alone
                                              ([account(me, group), account(4242, group)], [], parent),  # users
                                              ([account(me, 9), account(4242, 9)], ["user4242"], parent),
                                              ([account(me, 9)], ["user%d" % me], None),
                                              ([account(me, 9)], ["ghost"], parent),        # no account here
                                              ([account(me, 9)], [], None)):                # no one's
            def by_name(name):
                for found in accounts:
                    if found.pw_name == name:
                        return found
                raise KeyError(name)
            with mock.patch("pwd.getpwall", return_value=accounts), mock.patch("pwd.getpwnam", by_name), \
                    mock.patch("grp.getgrgid", return_value=mock.Mock(gr_mem=members)):
                self.assertEqual(ipn_receiver.folder_others_control(data), controlled, (accounts, members))
                os.chmod(parent, 0o1775)                                               # sticky
                self.assertIsNone(ipn_receiver.folder_others_control(data))
                os.chmod(parent, 0o755)                                                # not group-writable
                self.assertIsNone(ipn_receiver.folder_others_control(data))
                os.chmod(parent, 0o775)
        with mock.patch("grp.getgrgid", side_effect=KeyError(group)):      # a group with no entry: its users'
            self.assertIsNone(ipn_receiver.folder_others_control(data))

    def test_a_folder_with_an_acl_is_anothers_where_it_lets_another_write(self):
        # An ACL's entries: (tag, permissions, id); 1 the owner, 2 a user, 4 the folder's group,
        # 8 a group, 16 the mask (the most that 2, 4 and 8 get), 32 everyone else.
        import struct
        parent = os.path.join(self.data_dir, "acl")
        data, me = os.path.join(parent, "data"), os.geteuid()
        os.mkdir(parent)
        os.chmod(parent, 0o775)                 # (the group bits of a folder with an ACL are its mask)

        def reading(entries):                   # os.getxattr, for a folder with these entries
            def getxattr(path, name, follow_symlinks=True):
                if path == parent and name == "system.posix_acl_access" and not follow_symlinks:
                    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
                raise OSError(61, "No data available")
            return getxattr
        owner, others, mine = (1, 7, 0xFFFFFFFF), (32, 5, 0xFFFFFFFF), (4, 7, 0xFFFFFFFF)
        for entries, controlled in (((owner, (2, 7, 4242), mine, (16, 7, 0xFFFFFFFF), others), parent),
                                    ((owner, (2, 5, 4242), mine, (16, 7, 0xFFFFFFFF), others), None),   # nginx's x
                                    ((owner, (2, 7, me), mine, (16, 7, 0xFFFFFFFF), others), None),    # this user
                                    ((owner, (2, 7, 4242), mine, (16, 5, 0xFFFFFFFF), others), None),  # masked
                                    ((owner, (8, 7, 4343), mine, (16, 7, 0xFFFFFFFF), others), parent),
                                    ((owner, (8, 7, 4444), mine, (16, 7, 0xFFFFFFFF), others), None),
                                    ((owner, (2, 5, 4242), (4, 7, 4545), (16, 7, 0xFFFFFFFF), others), None),
                                    ((owner, (2, 7, 4242), mine, others), parent)):                    # no mask
            def users_of_group(gid):            # 4343: another user's too; the rest this user's
                return {me, 4242} if gid == 4343 else {me}
            with mock.patch.object(os, "getxattr", reading(entries), create=True), \
                    mock.patch.object(ipn_receiver, "users_of_group", users_of_group):
                self.assertEqual(ipn_receiver.folder_others_control(data), controlled, entries)
        entries = (owner, (4, 7, 0xFFFFFFFF), (16, 7, 0xFFFFFFFF), others)        # the folder's group writes
        with mock.patch.object(os, "getxattr", reading(entries), create=True):
            for users, controlled in (({me, 4242}, parent), ({me}, None)):
                with mock.patch.object(ipn_receiver, "users_of_group", lambda gid: users if gid == os.stat(
                        parent).st_gid else {me, 4242}):
                    self.assertEqual(ipn_receiver.folder_others_control(data), controlled, users)
        with mock.patch.object(ipn_receiver, "users_of_group", lambda gid: {me, 4242}):
            with mock.patch.object(os, "getxattr", reading(entries), create=True):
                self.assertEqual(ipn_receiver.folder_others_control(data), parent)     # its group's others
            os.chmod(parent, 0o755)
            self.assertIsNone(ipn_receiver.folder_others_control(data))     # no ACL, no group write

    def test_a_users_own_group_is_taken_for_that_user_alone_without_looking_at_every_account(self):
        # A server with thousands of accounts: every call would read them all.
        import grp
        import pwd
        group = mock.Mock(gr_name="vend", gr_mem=[])
        with mock.patch.object(grp, "getgrgid", return_value=group), mock.patch.object(
                pwd, "getpwnam", return_value=mock.Mock(pw_uid=77, pw_gid=1077)), mock.patch.object(
                pwd, "getpwall", side_effect=AssertionError("every account read")):
            self.assertEqual(ipn_receiver.users_of_group(1077), {77})
        everyone = [mock.Mock(pw_uid=77, pw_gid=100), mock.Mock(pw_uid=78, pw_gid=100), mock.Mock(pw_uid=79, pw_gid=5)]
        with mock.patch.object(grp, "getgrgid", return_value=mock.Mock(gr_name="users", gr_mem=[])), \
                mock.patch.object(pwd, "getpwnam", side_effect=KeyError("users")), \
                mock.patch.object(pwd, "getpwall", return_value=everyone):
            self.assertEqual(ipn_receiver.users_of_group(100), {77, 78})
        with mock.patch.object(grp, "getgrgid", return_value=group), mock.patch.object(
                pwd, "getpwnam", return_value=mock.Mock(pw_uid=77, pw_gid=5)), mock.patch.object(
                pwd, "getpwall", return_value=everyone + [mock.Mock(pw_uid=80, pw_gid=1077)]):
            self.assertEqual(ipn_receiver.users_of_group(1077), {80})      # named as a user, not that user's own

    def test_the_folders_on_the_way_go_through_every_link(self):
        # pub -> mid/l2 -> real/site: mid, another user's, could make l2 lead anywhere.
        base = os.path.realpath(self.data_dir)
        for folder in ("real/site", "mid", "home"):
            os.makedirs(os.path.join(base, folder))
        os.symlink(os.path.join(base, "real", "site"), os.path.join(base, "mid", "l2"))
        os.symlink(os.path.join("..", "mid", "l2"), os.path.join(base, "home", "pub"))
        os.symlink(os.path.join(base, "real", "site"), os.path.join(base, "home", "up"))
        on_the_way = ipn_receiver.folders_on_the_way(os.path.join(base, "home", "pub", "ipn_data"))
        for folder in ("home", "home/pub", "mid", "mid/l2", "real", "real/site", "real/site/ipn_data"):
            self.assertIn(os.path.join(base, folder), on_the_way)
        on_the_way = ipn_receiver.folders_on_the_way(os.path.join(base, "home", "up", "..", "x"))
        self.assertIn(os.path.join(base, "real", "x"), on_the_way)      # ".." after a link: up from where it leads
        self.assertNotIn(os.path.join(base, "home", "x"), on_the_way)
        on_the_way = ipn_receiver.folders_on_the_way(os.path.join(base, "home", "up", ".", "..", "x"))
        self.assertIn(os.path.join(base, "real", "x"), on_the_way)      # (a "." goes nowhere)
        os.symlink("loop", os.path.join(base, "loop"))
        self.assertIn(os.path.join(base, "loop"), ipn_receiver.folders_on_the_way(os.path.join(base, "loop", "x")))
        for number in range(40):                # as many links as the system follows
            os.symlink(os.path.join(base, "chain%d" % (number + 1)) if number < 39 else os.path.join(base, "real"),
                       os.path.join(base, "chain%d" % number))
        self.assertIn(os.path.join(base, "real", "x"), ipn_receiver.folders_on_the_way(os.path.join(base, "chain0", "x")))

    def test_a_folder_not_made_yet_does_not_end_the_look_at_the_others(self):
        # On the way to the data folder (not made yet), through a link, a folder every user may
        # write to comes after it in the order looked at.
        base = os.path.realpath(self.data_dir)
        os.makedirs(os.path.join(base, "aaa"))
        os.makedirs(os.path.join(base, "home"))
        os.symlink(os.path.join(base, "aaa"), os.path.join(base, "home", "link"))
        os.chmod(os.path.join(base, "home"), 0o777)
        self.assertEqual(ipn_receiver.folder_others_control(os.path.join(base, "home", "link", "ipn_data")),
                         os.path.join(base, "home"))

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0, "needs root, to give a folder another owner")
    def test_a_folder_another_user_owns_between_two_links_is_found(self):
        base = os.path.realpath(self.data_dir)
        for folder in ("real/site", "mid", "home"):
            os.makedirs(os.path.join(base, folder))
        os.symlink(os.path.join(base, "real", "site"), os.path.join(base, "mid", "l2"))
        os.symlink(os.path.join(base, "mid", "l2"), os.path.join(base, "home", "pub"))
        data = os.path.join(base, "home", "pub", "ipn_data")
        self.assertIsNone(ipn_receiver.folder_others_control(data))
        os.chown(os.path.join(base, "mid"), 4242, 4242)
        self.assertEqual(ipn_receiver.folder_others_control(data), os.path.join(base, "mid"))

    def test_a_sticky_data_folder_is_still_one_others_may_write_into(self):
        os.chmod(self.data_dir, 0o1777)
        self.addCleanup(os.chmod, self.data_dir, 0o700)
        self.assertEqual(ipn_receiver.folder_others_control(self.data_dir), self.data_dir)
        for written in (self.data_dir + "/.", self.data_dir + "/", self.data_dir + "//."):
            self.assertIn(ipn_receiver.folder_others_control(written), (self.data_dir, self.data_dir + "/"), written)
        self.assertIsNone(ipn_receiver.folder_others_control(os.path.join(self.data_dir, "below")))
        self.assertEqual(post(payment()).status, 503)

    def test_a_new_data_folder_is_made_700_without_a_word(self):
        made = os.path.join(self.data_dir, "new")
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=ISN_KEY, DATA_DIR=made)
        with contextlib.redirect_stderr(io.StringIO()) as errors:
            self.assertEqual(post(payment()).status, 200)
        self.assertEqual((os.stat(made).st_mode & 0o777, errors.getvalue()), (0o700, ""))

    def test_a_data_folder_opened_to_others_is_closed_again(self):
        post(payment())
        os.chmod(self.data_dir, 0o755)                      # to look at the log, say
        with contextlib.redirect_stderr(io.StringIO()) as errors:
            self.assertEqual(post(payment(transaction_id="another")).status, 200)
        self.assertEqual(os.stat(self.data_dir).st_mode & 0o777, 0o700)
        self.assertEqual(errors.getvalue(), "ipn_receiver: the data folder %s had mode 755, which let other users in; "
                                            "set back to 700\n" % self.data_dir)
        with contextlib.redirect_stderr(io.StringIO()) as errors:
            post(payment(transaction_id="third"))
        self.assertEqual(errors.getvalue(), "")

    def test_the_status_line_names_no_setting(self):
        body = call(environ_for(method="GET", content_type=None)).body
        for setting in ("SHA_PASSPHRASE", "ISN_KEY", "DATA_DIR", self.data_dir, "LOG_LEVEL", ipn_receiver.__version__):
            self.assertNotIn(setting, body)

    def test_no_secret_in_exception_messages(self):
        errors = []
        for name in ipn_receiver.SECRET_SETTINGS:
            config = {"SHA_PASSPHRASE": "", "ISN_KEY": ""}
            errors.append(ipn_receiver.secret_problem(config, name))
        where = {name: ("x", "x") for name, _, _, _ in ipn_receiver.SETTINGS_SOURCES}
        for bad in ({"LOG_LEVEL": PASSPHRASE}, {"MAX_BODY_BYTES": PASSPHRASE}, {"PROCESSING_TIMEOUT": PASSPHRASE}):
            try:
                ipn_receiver.finish_settings(dict(ipn_receiver.load_settings({}), SHA_PASSPHRASE=PASSPHRASE, **bad),
                                             where, None)
            except ipn_receiver.ConfigError as error:
                errors.append(str(error))
        self.assertEqual(len(errors), 5)
        self.handle("on_payment", lambda n: (_ for _ in ()).throw(ValueError("key " + PASSPHRASE)))
        post(payment())
        errors.append(self.rows()[0]["last_error"])
        for text in errors:
            self.assertFalse(PASSPHRASE in text or ISN_KEY in text, "a secret in an error message")

    def test_a_secret_with_a_tab_or_a_colon_is_masked_in_the_answer_too(self):
        secret = "Vend0r\tPass:2026-xyz"
        ipn_receiver.use_settings(SHA_PASSPHRASE=PASSPHRASE, ISN_KEY=secret, DATA_DIR=self.data_dir)
        self.handle("on_payment", lambda notification: {"password": "token " + secret, secret: "x"})
        answer = post(payment())
        self.assertEqual((answer.status, answer.body), (200, "OK\npassword: token [secret]\n[secret]: x"))

    def test_no_secret_in_any_stored_row_whatever_a_handler_does(self):
        # Its exception's message, its answer lines, their keys: masked wherever they are stored.
        self.handle("on_payment", lambda n: {PASSPHRASE + "\n": "x " + ISN_KEY, "password": PASSPHRASE})
        self.handle("on_refund", lambda n: (_ for _ in ()).throw(ValueError("a%sb%sc" % (PASSPHRASE, PASSPHRASE))))
        self.handle("sale", lambda n: (_ for _ in ()).throw(SystemExit(ISN_KEY)), "PROMOPIT_HANDLERS")
        post(payment())
        post(payment(event="on_refund"))
        post(promopit_sale())
        self.assertEqual(len(self.rows()), 3)
        for row in self.rows():
            for value in row.values():
                self.assertFalse(PASSPHRASE in str(value) or ISN_KEY in str(value), "a secret in a stored row")
        self.assertEqual(self.rows()[1]["last_error"], "ValueError: a[secret]b[secret]c")

    def test_configuration_errors_show_no_path_and_no_value_to_callers(self):
        # A secret pasted as a line of its own, in a config file named by IPN_CONFIG: the caller
        # learns the file's base name, the line and what to run, nothing else; the log has it all.
        config = os.path.join(self.data_dir, "private-folder", "ipn.ini")
        os.makedirs(os.path.dirname(config))
        with open(config, "w") as file:
            file.write("[promopit]\nisn_key =\nPasted-Secret-Value:1234\n")
        # Without settings there is no data folder for the log: it goes to stderr, the server's error log.
        ipn_receiver.log.reset()
        ipn_receiver.log.to_stderr = True
        ipn_receiver._settings = None
        stderr = io.StringIO()
        with mock.patch.dict(os.environ, {"IPN_CONFIG": config, "IPN_DATA_DIR": self.data_dir}), \
                contextlib.redirect_stderr(stderr):
            answer = post(payment())
        self.assertEqual((answer.status, answer.body), (503, "ERROR: configuration error in ipn.ini line 3; run "
                                                             "`python3 ipn_receiver.py check` on the server to see "
                                                             "what to change"))
        self.assertRegex(stderr.getvalue(), r"ERROR \[\d+\] configuration error: ipn\.ini line 3: unknown setting in "
                                            r"\[promopit\] \(the settings are ")
        self.assertRegex(stderr.getvalue(), r"WARNING \[\d+\] POST -> 503, configuration error \(\d+\.\d ms\)")
        self.assertNotIn("pasted-secret-value", stderr.getvalue().lower())
        ipn_receiver.log.reset()
        ipn_receiver._settings = None
        with mock.patch.dict(os.environ, {"IPN_CONFIG": config + ".missing", "IPN_DATA_DIR": self.data_dir}), \
                contextlib.redirect_stderr(stderr):
            answer = post(payment())
        self.assertEqual(answer.status, 503)
        self.assertNotIn("private-folder", answer.body)
        self.assertIn("private-folder", stderr.getvalue())
        ipn_receiver.log.reset()

    def test_nothing_secret_in_the_data_folder_but_where_it_must_be(self):
        post(payment())
        post(promopit_sale())
        ipn_receiver.close_store()
        for name in os.listdir(self.data_dir):
            with open(os.path.join(self.data_dir, name), "rb") as file:
                content = file.read()
            for secret in (PASSPHRASE, ISN_KEY, payment()["sha_sign"]):
                self.assertFalse(secret.encode() in content, "a secret in " + name)


if __name__ == "__main__":
    import unittest
    unittest.main()
