#!/usr/bin/env python3
"""Mutation testing of the security-critical code: would the tests notice a deliberate bug?

    pip install "mutmut<3"
    python3 tests/mutation.py [--jobs N] [--only NAME ...] [--list]

mutmut (2.x) makes the mutants: each is ipn_receiver.py with one small change in one of the
functions named in FUNCTIONS (an operator flipped, a constant changed, a condition negated, a
keyword argument dropped, ...). For each one, this runs the fast test modules (TESTS) against a
copy of the repository holding the mutant, and stops at the first failure. A mutant is killed when
a test fails (or the tests hang past TIMEOUT seconds); it survives when they all pass.

Not every change is a bug: some mutants do exactly what the original does (an equivalent mutant).
Each one found is in EQUIVALENT below with the reason it changes nothing; every other survivor is a
hole in the tests, and gets a test that kills it. The score printed at the end is killed /
(mutants - equivalent ones). It takes about 21 minutes on 2 cores (see README.md); it is not part of
.ci/run.
"""

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SOURCE = os.path.join(REPO, "ipn_receiver.py")
TIMEOUT = 400     # the tests take about 140 s on 2 quiet cores (most of it check run as a program); more beside other work

# The security-critical code: verification, the vouched fields and the duplicate key, the order of
# claiming and recording, masking and escaping, the answer, reading the request and CGI framing.
FUNCTIONS = [
    "digistore24_signature", "digistore24_signature_variant", "isn_key_is_valid", "vouched_fields",
    "provider_of", "Notification.__init__", "Notification.get", "duplicate_key",
    "handle_post", "dispatch", "run_and_record", "claim_notification", "record_outcome", "write_to_store",
    "lock_within", "set_damaged_store_aside", "keys_in_index", "rows_of_lost_keys", "move_store_aside",
    "finish_interrupted_swap",
    "Log.mask", "Log._log", "one_line", "shortened", "secret_forms", "json_ascii", "secret_problem",
    "refuse_unrun_result", "error_line", "answer_body", "answer_text",
    "read_body", "read_exactly", "parse_urlencoded", "percent_decode", "run_cgi", "application",
    "environment_text", "serves_only_the_scripts", "section_matches_any", "may_hold_rows", "denies_the_web",
    "ensure_data_dir", "Log._open", "options_after", "apache_wildcard", "miswritten_secrets",
    "unusable_secret_answer", "refuse_another_user", "check_owners", "web_root_of", "check_web_folder",
    "end_a_forked_child", "store_within_reach", "secret_mistake", "StoreLock.__init__", "StoreLock.__enter__",
    "StoreLock.__exit__", "StoreLock.let_go", "StoreLock.let_go_in_child", "stored_fields", "sync_folder", "settings",
    "ini_file_state",
    "Log._setup", "row_of_key", "Log._mask_the_secrets_of", "is_anothers", "schema_problem", "claim_is_abandoned",
    "check_store_files", "settled_ini_file_state", "process_is_running", "others_files_problem",
    "fields_as_stored", "is_backup_copy", "file_holds", "folder_others_control", "retry_pause",
    "promopit_answers", "users_of_group", "others_may", "folders_on_the_way", "LogFile._reopen",
    "make_private_folders", "folder_identity", "trusted_users", "outcome_stores",
    "row_damage", "keep_compiled_copies_private", "check_who_else_may_change_the_code", "readable_by_others",
    "load_settings", "create_store_file", "check_who_else_may_change_python", "migrate_store", "code_python_may_run",
    "is_answer_line", "open_store", "copy_row", "key_its_fields_make", "salvage_rows", "not_utf8", "error_text",
    "describe_storage_error", "store_is_damaged", "integrity_of", "cut_short", "store_header", "store_was_made",
    "mark_store_made", "row_of", "pages_in_journal", "read_store_file", "read_form", "parse_multipart",
    "read_uwsgi_chunks", "is_this_machine", "command_send", "cgi_environ",
    "decode_fields", "parse_content_type", "local_without_proxy", "expand_home", "why_replay_waits", "taken_over_by",
    "granted_by_a_section", "out_of_others_reach_for_a_command", "warn_of_a_miswritten_secret", "no_store_yet",
    "command_line_as", "check_handler_tables", "read_ini_file", "finish_settings", "Refusal.__init__",
    "served_beside", "get_start", "settings_written_here", "check_example_config",
    "check_what_the_store_shows_of_the_setup", "is_the_placeholder", "check_runs_as_cgi", "check_settings",
    "functions_defined_twice", "let_go_of_the_web_server", "Log.after_fork", "refuse_unless_usable",
    "log_line", "Log.exception", "Log.log",
]
# Fast first: most mutants are killed by the first module that looks at their function.
TESTS = ["tests.test_signature", "tests.test_replay", "tests.test_http", "tests.test_security",
         "tests.test_request", "tests.test_store", "tests.test_logging", "tests.test_settings", "tests.test_cgi",
         "tests.test_commands", "tests.test_server"]

# (function, the mutated line, stripped): why the mutant changes nothing that can be observed.
EQUIVALENT = {
    ("get_start", "def get_start(url, timeout=10):"):
        "only how long a server that never answers is waited for changes, by a second: no test waits 10 s a request",
    ("check_handler_tables", "like = difflib.get_close_matches(str(event), events, 1, 0.8)"):
        "only the first match is used",
    ("finish_settings", 'if not usable or sys.version_info <= (3, 7) and not utf8_names and any(ord(c) > 127 for c in '
                        'result["DATA_DIR"]):'):
        "sys.version_info is never (3, 7) itself: 3.7.0 and later compare greater",
    ("finish_settings", 'if os.path.normcase(os.path.join(os.path.realpath(HERE), "XXXX")).startswith('):
        "only a data folder named XXXX in the script's folder tells, which the rule allows either way",
    ("read_ini_file", 'section = line[1:end].strip().lower() if end > 1 else ""'):
        'end is 1 only for "[]", whose name is "" either way',
    ("cgi_environ", 'if sys.platform != "XXwin32XX" and (request in REQUEST_VARIABLES or request.startswith(("HTTP_", '
                    '"SSL_"))):'):
        "it differs on Windows only, where no test runs (nor CGI, as shared hosts run it)",
    ("is_this_machine", 'host = urllib.parse.urlsplit(url).hostname or "XXXX"'):
        'a URL without a host: "XXXX" is neither localhost, ::1 nor 127.x, as "" is not',
    ("is_this_machine", 'return host in ("localhost", "::1") or host.startswith("127.") and set(host) < '
                        'set("0123456789.")'):
        "only a host of 127. and all ten digits differs (127.0123456789), which is no address",
    ("is_this_machine", 'return host in ("localhost", "::1") or host.startswith("127.") and set(host) <= '
                        'set("XX0123456789.XX")'):
        "urlsplit gives the host in lower case: it never holds an X",
    ("migrate_store", "if version <= 1:"): "the table is made IF NOT EXISTS: for a store of schema 1, nothing",
    ("migrate_store", "if version < 2:"): "the table is made IF NOT EXISTS: for a store of schema 1, nothing",
    ("migrate_store", "if version <= 2:"): "the index is made IF NOT EXISTS: for a store of schema 2, nothing",
    ("migrate_store", "if version < 3:"): "the index is made IF NOT EXISTS: for a store of schema 2, nothing",
    ("vouched_fields", 'keys = "XXXX".join(key for key, _ in signed).encode("utf-8")'):
        "the joined keys are only searched for a lower-case letter, and XXXX holds none",
    ("vouched_fields", 'variant = "upper_keys" if keys == keys.upper() else "XXexactXX"        # bytes: ASCII only'):
        'the variant is only ever compared with "upper_keys"',
    ("isn_key_is_valid", "if not isn_key and not received:"):
        "an empty and a non-empty key never compare equal; both empty, the one case that would, is still refused",
    ("read_body", "body = read_exactly(stream, limit + 2)"):
        "one byte past the limit tells a body too large; a second one changes nothing, both are refused",
    ("read_exactly", "while missing >= 0:"):
        "with nothing missing, the one more read asks for 0 bytes and gets none",
    ("read_exactly", "part = stream.read(min(missing, 65537))"):
        "the size of each read, not what is read",
    ("lock_within", "if waited >= seconds:"):
        "differs only at the very instant of the deadline",
    ("Log._open", "return True                    # not set up: the next line tries again"):
        "settings() sets the log up again whenever it loads them, so one set up with wrong settings is "
        "set up again once they are right",
    ("lock_within", "time.sleep(0.0001 if waited <= 0.05 else 0.001)"):
        "differs only for a wait of exactly 50 ms, to the last bit of a float, and only in the pause",
    ("claim_is_abandoned", "claimed_at = 1                      "
                           "# (text or bytes where a number was: damage, taken over)"):
        "a claim time that is no number is damage; a claim at time 0 or 1 is as long past",
    ("claim_is_abandoned", "return claimed_at <= now - timeout or (claimed_at > now + timeout and not "
                           "process_is_running(claim))"):
        "differs only for a claim exactly PROCESSING_TIMEOUT old, to the last bit of a float",
    ("claim_is_abandoned", "return claimed_at < now - timeout or (claimed_at >= now + timeout and not "
                           "process_is_running(claim))"):
        "differs only for a claim exactly PROCESSING_TIMEOUT ahead, to the last bit of a float",
    ("check_store_files", "lock_within(fd, 3)"):
        "how long check waits for the lock; a lock not let go within 3 s was not within 2 s either",
    ("check_store_files", "free = None"):
        "report() takes anything false for a problem",
    ("settled_ini_file_state", "if not 0 < age < CONFIG_SETTLE_SECONDS:"):
        "differs only for a file changed at this very instant, to the last bit of a float",
    ("claim_notification", 'elif status == "failed" and has_handler and 0 < now - updated_at < retry_pause(attempts):'):
        "a copy in the very instant (to the float) of the failure: no clock tells them apart",
    ("claim_notification", 'elif status == "failed" and has_handler and 0 <= now - updated_at <= retry_pause(attempts):'):
        "a copy exactly (to the float) as the pause ends: no clock tells them apart",
    ("retry_pause", "return min(RETRY_PAUSE_SECONDS * 2 ** min(max(attempts, 1) - 1, 7), 3600)"):
        "a minute times 2 ** 6 is past the hour already; the cap only keeps the power small",
    ("claim_notification", 'decision = ("XXrunXX", claim)'):
        'dispatch tells "busy" and "answer" apart; whatever else it gets, it runs the handler',
    ("read_body", 'if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "XXXX").lower() and "uwsgi.version" in environ:'):
        'without the header, neither "" nor "xxxx" holds "chunked"',
    ("run_cgi", 'https = environ.get("HTTPS", "XXoffXX") in ("on", "1", "yes")        # as wsgiref decides it'):
        'without HTTPS, neither "off" nor "XXoffXX" is one of the values that mean https',
    ("set_damaged_store_aside", 'salvaging = path + "XX.salvageXX"'):
        "the new store's name while it is filled is the function's own; any name not in use will do",
    ("Log._log", "for file in self._files[:3 if level >= 40 else 1]:"):
        "there are two log files: the first three of them are both",
    ("folders_on_the_way", "def folders_on_the_way(path, links=41):"):
        "the system follows 40 links at most: a path through a 41st it cannot reach, so no data folder is there",
    ("folders_on_the_way", 'if part in ("XXXX", "."):'):
        "an empty part (a slash doubled, or at the end) adds the folder before it again, with a slash after it: "
        "the same folder, looked at twice",
    ("make_private_folders", "os.mkdir(path, 449)"):
        "the folder is chmod 0700 right after",
    ("serves_only_the_scripts",
     'runs_scripts = runs_scripts or any(extension.lstrip("XX.XX") == "py" for extension in words[2:])'):
        "the words are in lower case: stripping an upper-case X as well as the dot strips nothing more",
    ("options_after", 'if any(word[:1] not in "XX+-XX" for word in words):'):
        "the words are in lower case: an upper-case X among the signs is never a word's first letter",
    ("options_after", 'name = word.lstrip("XX+-XX")'):
        "the words are in lower case: stripping an upper-case X as well as the signs strips nothing more",
    ("apache_wildcard",
     'return "".join("[%s]" % character if character in "XX*?[]XX" else character for character in text)'):
        'fnmatch reads "[X]" as the letter X itself',
    ("store_within_reach",
     '% (user_name(os.geteuid()) if hasattr(os, "geteuid") else "XXthis userXX", config["DATA_DIR"],'):
        "only where Python has no os.geteuid (Windows), where no user owns a folder and the tests do not run",
    ("application", 'data = body.encode("utf-8", "XXreplaceXX")'):
        "no body holds a lone surrogate (answer lines are cleaned before they are stored, and SQLite "
        "cannot store one), so the error handler is never called",
    ("open_store", "close_store(None)"):
        "with no key it drops every thread's connection from the cache (closing another thread's fails and is "
        "passed over): each opens a new one at its next call, with the same answers",
    ("salvage_rows", "rollback(None)"):
        "rollback(None) fails and is passed over; the caller closes the connection next, which rolls back",
    ("salvage_rows", 'columns = "XX, XX".join(STORE_COLUMNS)'):
        "both scans then fail at once, and the walk, row by row, reads the same rows (only slower)",
    ("store_was_made", 'return os.path.getsize(os.path.join(data_dir, ".lock")) > 1'):
        "the lock file holds nothing, or the mark of 32 bytes: never 1 byte",
    ("mark_store_made", 'file.write(b"XXa store was made in this folder\\nXX")'):
        "only whether the lock file holds anything is read, never what",
    **{("salvage_rows", "while misses < most_misses and %s:" % bound):
       "differs only where the walk reaches id 2**63 - 2, next to the largest SQLite can hold"
       for bound in ("number <= 2 ** 63 - 1", "number < 3 ** 63 - 1", "number < 2 ** 64 - 1", "number < 2 ** 63 + 1",
                     "number < 2 ** 63 - 2")},
    ("pages_in_journal", 'page_size, pages, at = int.from_bytes(journal[9:12], "big"), set(), 32'):
        "a page size fits in three bytes (65536 at most), so the fourth from the end is 0",
    ("pages_in_journal", "while len(journal) >= at + 24 + page_size > at + 25 and journal[at + 8:at + 16] == "
                         "journal[16:24]:"):
        "differs only for a page size of 1, which no -wal file has",
    ("store_header", "header = read_store_file(path, 101)"):
        "the first 101 bytes of a file hold its first 100, and nothing past them is read",
    ("cut_short", "for look in (1, 3):"):
        "only whether a look is the first decides anything",
    ("parse_multipart", 'name = ""'):
        "a part without a name is refused where name is falsy: None and the empty string alike",
    ("read_form", 'media_type, parameters = parse_content_type(environ.get("CONTENT_TYPE", "XXXX"))'):
        "no Content-Type and one of xxxx are both no form type: 415 either way",
    ("cut_short", 'return "%d of its %d pages are left" % (size / header[1], header[0])'):
        "%d writes a float's whole part, as // gives it",
}


def function_lines(source):
    """{qualified function name: (first line, last line)}, 1-based, from the source's syntax tree."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = (node.lineno, last_line(node))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found["%s.%s" % (node.name, item.name)] = (item.lineno, last_line(item))
    return found


def last_line(node):
    return max(getattr(child, "lineno", node.lineno) for child in ast.walk(node))


def mutants(source, names):
    """[(function, line number, original line, mutated source)] for the functions named."""
    import mutmut
    spans = function_lines(source)
    missing = [name for name in names if name not in spans]
    if missing:
        raise SystemExit("not functions of ipn_receiver.py: " + ", ".join(missing))
    found = []
    for mutation_id in mutmut.list_mutations(mutmut.Context(source=source, filename=SOURCE)):
        line = mutation_id.line_number + 1
        for name in names:
            first, last = spans[name]
            if first <= line <= last:
                context = mutmut.Context(source=source, mutation_id=mutation_id, filename=SOURCE)
                mutated, _ = mutmut.mutate(context)
                found.append((name, line, mutation_id.line.strip(), mutated))
    return found


def workspace():
    """A copy of the repository's receiver, tests and the files they read, for one worker."""
    folder = tempfile.mkdtemp(prefix="ipn-mutation-")
    shutil.copytree(HERE, os.path.join(folder, "tests"), ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("ipn_receiver.py", "config.example.ini", "README.md"):
        shutil.copy(os.path.join(REPO, name), os.path.join(folder, name))
    return folder


def killed(folder, mutated, report=None):
    """Whether the tests fail (or hang) with `mutated` as ipn_receiver.py; unittest's output goes
    into the list `report`, where one is given."""
    with open(os.path.join(folder, "ipn_receiver.py"), "w", encoding="utf-8") as file:
        file.write(mutated)
    environment = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    environment.pop("GATEWAY_INTERFACE", None)
    try:
        done = subprocess.run([sys.executable, "-m", "unittest", "-f", "-q"] + TESTS, cwd=folder, env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return True
    if report is not None:
        report.append(done.stderr.decode("utf-8", "replace"))
    # Passed only where unittest says so: a mutant that ends the process early with exit code 0
    # (os._exit(0) where a forked child was to end) stops the tests without a failure.
    return done.returncode != 0 or re.search(rb"\nOK( \(.*\))?\s*$", done.stderr) is None


def mutated_line(mutated, line):
    return mutated.split("\n")[line - 1].strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="tests run side by side")
    parser.add_argument("--only", nargs="*", help="only these functions")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    args = parser.parse_args()
    import importlib.util
    if importlib.util.find_spec("mutmut") is None:
        print('mutmut is not installed: pip install "mutmut<3"', file=sys.stderr)
        return 2
    with open(SOURCE, encoding="utf-8") as file:
        source = file.read()
    todo = mutants(source, args.only or FUNCTIONS)
    if args.list:
        for name, line, original, mutated in todo:
            print("%-28s %5d  %s\n%-34s->  %s" % (name, line, original, "", mutated_line(mutated, line)))
        print("%d mutants" % len(todo))
        return 0
    folders = [workspace() for _ in range(args.jobs)]
    free = list(folders)
    started = time.time()
    output = []
    if killed(folders[0], source, output):
        # Else every mutant would count as killed.
        print("%s\nthe tests %s on ipn_receiver.py as it is, without a mutant: fix that first "
              "(python3 -m unittest %s)" % ("".join(output)[-3000:], "fail" if output else "do not end within %d s"
                                            % TIMEOUT, " ".join(TESTS)), file=sys.stderr)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        return 2
    try:
        def run(item):
            folder = free.pop()
            try:
                return item, killed(folder, item[3])
            finally:
                free.append(folder)

        survivors, done = [], 0
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for (name, line, original, mutated), was_killed in pool.map(run, todo):
                done += 1
                if not was_killed:
                    survivors.append((name, line, original, mutated_line(mutated, line)))
                if done % 25 == 0:
                    print("  %d of %d mutants run, %d survived so far (%.0f s)" % (
                        done, len(todo), len(survivors), time.time() - started), file=sys.stderr)
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    equivalent = [s for s in survivors if (s[0], s[3]) in EQUIVALENT]
    holes = [s for s in survivors if (s[0], s[3]) not in EQUIVALENT]
    print("\n%d mutants of %d functions in %.0f s: %d killed, %d equivalent, %d survived" % (
        len(todo), len(args.only or FUNCTIONS), time.time() - started, len(todo) - len(survivors),
        len(equivalent), len(holes)))
    for name, line, original, changed in equivalent:
        print("  equivalent  %s line %d: %s  ->  %s\n              %s" % (
            name, line, original, changed, EQUIVALENT[name, changed]))
    for name, line, original, changed in holes:
        print("  SURVIVED    %s line %d: %s  ->  %s" % (name, line, original, changed))
    scored = len(todo) - len(equivalent)
    print("score: %d of %d non-equivalent mutants killed (%.1f%%)" % (
        scored - len(holes), scored, 100.0 * (scored - len(holes)) / scored if scored else 100))
    return 1 if holes else 0


if __name__ == "__main__":
    sys.exit(main())
