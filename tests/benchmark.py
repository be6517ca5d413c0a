#!/usr/bin/env python3
"""Benchmark ipn_receiver against the PHP receiver it replaces; every figure from one run.

    python3 tests/benchmark.py [--runs N] [--seconds S] [--check]

Not a unit test: it prints one table. With --check (as .ci/run calls it) it exits 1 when a target
is missed or a row could not be measured. Rows:

- CGI on_payment: the 173-field sample, a distinct notification each time, answered by
  ipn_receiver.py run as a CGI program by /usr/bin/python3 with its durable store, by the PHP
  anchor (../shared/bench/receiver.php under php-cgi with IPN_STORE: verify, store in SQLite
  with WAL and synchronous=FULL, answer), and by `/usr/bin/python3 -c pass` (the floor); and, for
  reference, by README.md's optional launcher (ipn.py, which imports ipn_receiver, so Python
  caches its bytecode in __pycache__). They take turns, after a warm-up; the median of the
  runs' wall times from start to exit, and of their peak memory (maxrss). (The highest of the
  peaks is printed too. It was compared before; but over the 2026-12-04 runs PHP's highest peak
  moved between 21.5 and 21.8 MiB, the median of its peaks between 21.43 and 21.55.)
- Verification in-process: microseconds to verify the 173-field sample, against a bare
  hashlib.sha512 of the same string (the floor).
- WSGI: gunicorn with 2 workers on 127.0.0.1, durable store, distinct signed on_payment
  notifications from wrk (1 thread, 8 connections): requests per second, p50 and p99 latency.

Targets (what --check enforces): CGI at most 3.5x PHP's median time and at most 1.35x PHP's median
peak memory; verification at most 3x the bare hash; gunicorn at least 500 notifications per second
with p99 under 50 ms.

Goals (printed, not enforced): CGI at most 2.0x PHP's time and at most its peak memory, as the issue
"Plain Python" asks. How close the receiver comes depends on the machine more than on anything in
it: the code of 2026-12-04 took 1.85x to 2.00x PHP's time on an AMD EPYC and 2.69x to 2.76x on an
Intel Xeon VM, where starting Python alone takes about 0.66x PHP's whole call. Python compiles the
file it runs on every call, and keeps the parsed file until the call ends: the table prints how
many tokens, each about 1 us and 0.39 KiB of peak memory on the Xeon. README.md's Performance
section says where the rest goes, how the figures moved with the code, and why the targets are
where they are; its launcher, which lets Python cache the compiled file, is reported with no
target.
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPT = os.path.join(REPO, "ipn_receiver.py")
ANCHOR = os.path.join(os.path.dirname(REPO), "shared", "bench", "receiver.php")
SYSTEM_PYTHON = "/usr/bin/python3"
PASSPHRASE = "s3cret-passphrase"
sys.path.insert(0, REPO)
import ipn_receiver  # noqa: E402

TARGETS = {"cgi_time": 3.5, "cgi_memory": 1.35, "verify": 3.0, "rps": 500, "p99_ms": 50}
GOALS = {"cgi_time": 2.0, "cgi_memory": 1.0}


def sample_fields():
    with open(os.path.join(HERE, "fixtures", "digistore24_on_payment.json"), encoding="utf-8") as file:
        return json.load(file)["fields"]


def signed_bodies(count, prefix):
    """`count` distinct urlencoded on_payment notifications (173 fields), each freshly signed."""
    fields = sample_fields()
    bodies = []
    for number in range(count):
        fields["transaction_id"] = "%s%07d" % (prefix, number)
        signed = dict(fields, sha_sign=ipn_receiver.digistore24_signature(PASSPHRASE, fields))
        bodies.append(urllib.parse.urlencode(signed).encode("utf-8"))
    return bodies


# ---- CGI ------------------------------------------------------------------------------------

# A small process that starts one CGI program and reports its wall time and peak memory. The
# benchmark itself must not fork the programs: a forked child starts with its parent's resident
# memory, and Linux keeps that high-water mark across exec, so every program would show the
# benchmark's own size. This helper (python3 -S) is smaller than any program measured.
FORK_HELPER = """
import os, sys, time
output, body = sys.argv[1], sys.argv[2]
stdin = os.open(body, os.O_RDONLY)
stdout = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
stderr = os.open(os.devnull, os.O_WRONLY)
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(stdin, 0); os.dup2(stdout, 1); os.dup2(stderr, 2)
    os.execv(sys.argv[3], sys.argv[3:])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, status)
"""


def launcher_snippet():
    """The launcher of README.md, as a vendor copies it."""
    import re
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as file:
        text = file.read()
    return re.search(r"<!-- snippet: launcher -->\s*```[a-z]*\n(.*?)```", text, re.S).group(1)


def measure_cgi(runs, warmup, folder):
    """Median wall time and peak memory of the three CGI programs, taking turns."""
    if not os.path.exists(SYSTEM_PYTHON):
        return {"skip": "%s is missing" % SYSTEM_PYTHON}
    php = shutil.which("php-cgi")
    if not php:
        return {"skip": "php-cgi is missing (apt-get install php-cgi php-sqlite3)"}
    if not os.path.exists(ANCHOR):
        return {"skip": "the PHP anchor %s is missing" % ANCHOR}
    site = os.path.join(folder, "cgi")
    os.makedirs(site)
    script = os.path.join(site, "ipn_receiver.py")
    shutil.copy(SCRIPT, script)
    os.chmod(script, 0o755)
    launcher = os.path.join(site, "ipn.py")
    with open(launcher, "w") as file:
        file.write(launcher_snippet())
    data_dir = os.path.join(folder, "cgi-data")
    base = {"PATH": "/usr/bin:/bin", "GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": "POST",
            "CONTENT_TYPE": "application/x-www-form-urlencoded", "SERVER_PROTOCOL": "HTTP/1.1",
            "IPN_SHA_PASSPHRASE": PASSPHRASE}
    programs = {
        "php": ([php], dict(base, REDIRECT_STATUS="200", SCRIPT_FILENAME=ANCHOR,
                            IPN_STORE=os.path.join(folder, "php-store.sqlite3"))),
        "python": ([SYSTEM_PYTHON, script], dict(base, SCRIPT_FILENAME=script, IPN_DATA_DIR=data_dir)),
        "floor": ([SYSTEM_PYTHON, "-c", "pass"], dict(base)),
        "launcher": ([SYSTEM_PYTHON, launcher], dict(base, SCRIPT_FILENAME=launcher,
                                                     IPN_DATA_DIR=data_dir + "-launcher")),
    }
    bodies = signed_bodies(warmup + runs, "9")
    body_file, output_file = os.path.join(folder, "body"), os.path.join(folder, "output")
    results = {name: {"ms": [], "mib": [], "bad": 0} for name in programs}
    order = list(programs)
    for number, body in enumerate(bodies):
        with open(body_file, "wb") as file:
            file.write(body)
        turn = order[number % len(order):] + order[:number % len(order)]   # each goes first as often
        for name in turn:
            argv, environment = programs[name]
            environment = dict(environment, CONTENT_LENGTH=str(len(body)))
            report = subprocess.run([SYSTEM_PYTHON, "-S", "-c", FORK_HELPER, output_file, body_file] + argv,
                                    env=environment, stdout=subprocess.PIPE, check=True).stdout.split()
            seconds, maxrss_kib, status = float(report[0]), int(report[1]), int(report[2])
            with open(output_file, "rb") as file:
                output = file.read()
            if number < warmup:
                continue
            results[name]["ms"].append(seconds * 1000)
            results[name]["mib"].append(maxrss_kib / 1024)
            if name != "floor" and (status != 0 or not output.endswith(b"\r\n\r\nOK")):
                results[name]["bad"] += 1
    stored = 0
    for folder in (data_dir, data_dir + "-launcher"):
        connection = sqlite3.connect(os.path.join(folder, "events.sqlite3"))
        stored += connection.execute("SELECT count(*) FROM notifications WHERE status = 'done'").fetchone()[0]
        connection.close()
    summary = {name: {"ms": statistics.median(r["ms"]), "mib": statistics.median(r["mib"]),
                      "highest_mib": max(r["mib"]), "bad": r["bad"],
                      "runs": len(r["ms"])} for name, r in results.items()}
    summary["stored"] = stored
    summary["expected"] = 2 * len(bodies)       # the receiver's own runs and the launcher's
    return summary


def compiled_tokens(with_line_structure=False):
    """The tokens of ipn_receiver.py that Python parses: comments and line structure aside, or with
    the line structure (NEWLINE, INDENT, DEDENT): the tokens the parser keeps room for."""
    import io
    import tokenize
    with open(SCRIPT, encoding="utf-8") as file:
        source = file.read()
    skipped = (tokenize.COMMENT, tokenize.NL) + (
        () if with_line_structure else (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER))
    return sum(1 for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type not in skipped)


# CPython's parser (3.11 measured) keeps room for the tokens it has read, and doubles that room,
# a token's worth of memory each, when it is full: past 32,768 tokens a CGI call took 1.3 MiB
# more, in one step (measured on the Xeon: 35 tokens more made 25.9 MiB into 27.1).
def parser_room(tokens):
    """How many tokens the parser has room for when it has read `tokens`: a power of two."""
    return 2 ** (tokens - 1).bit_length()


# ---- verification --------------------------------------------------------------------------

def measure_verification():
    """Measured in /usr/bin/python3, the interpreter of the CGI rows (builds differ: a Python
    built without optimizations runs the Python-level part slower, the hash no slower)."""
    if not os.path.exists(SYSTEM_PYTHON):
        return {"skip": "%s is missing" % SYSTEM_PYTHON}
    done = subprocess.run([SYSTEM_PYTHON, os.path.abspath(__file__), "--verification-only"],
                          stdout=subprocess.PIPE, check=True)
    return json.loads(done.stdout)


def verification_figures():
    fields = sample_fields()
    signature = ipn_receiver.digistore24_signature(PASSPHRASE, fields)
    text = PASSPHRASE.join(k + "=" + v for k, v in sorted(fields.items()) if v != "") + PASSPHRASE
    data = text.encode("utf-8")
    assert hashlib.sha512(data).hexdigest().upper() == signature

    functions = {
        "verify": lambda: ipn_receiver.digistore24_signature_is_valid(fields, signature, PASSPHRASE),
        "floor": lambda: hashlib.sha512(text.encode("utf-8")).hexdigest(),
        "bytes": lambda: hashlib.sha512(data).hexdigest(),
    }
    # Taking turns, round by round, so that a slower moment of the machine (a VM's neighbours, its
    # clock) weighs on all three alike; the best round of each, in microseconds a call.
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(21):
        for name, function in functions.items():
            best[name] = min(best[name], timeit.timeit(function, number=2000) / 2000 * 1e6)
    return dict(best, length=len(data))


# ---- WSGI under gunicorn -------------------------------------------------------------------

WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("IPN_BODIES")) do bodies[#bodies + 1] = line end
local next_body = 0
request = function()
    next_body = next_body + 1
    return wrk.format("POST", "/", {["Content-Type"] = "application/x-www-form-urlencoded"},
                      bodies[(next_body - 1) % #bodies + 1])
end
done = function(summary, latency, requests)
    io.write(string.format("RESULT %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
        summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
        + summary.errors.timeout, latency:percentile(50), latency:percentile(99), #bodies))
end
"""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_gunicorn(seconds, folder):
    wrk = shutil.which("wrk")
    if not wrk:
        return {"skip": "wrk is missing (apt-get install wrk)"}
    import importlib.util
    if importlib.util.find_spec("gunicorn") is None:
        return {"skip": "gunicorn is missing (pip install gunicorn)"}
    app = os.path.join(folder, "wsgi")
    os.makedirs(app)
    shutil.copy(SCRIPT, os.path.join(app, "ipn_receiver.py"))
    with open(os.path.join(app, "config.ini"), "w") as file:
        file.write("[digistore24]\nsha_passphrase = %s\n" % PASSPHRASE)
    os.chmod(os.path.join(app, "config.ini"), 0o600)
    count = int(seconds * 2500) + 1000          # more distinct bodies than wrk can send
    bodies_file = os.path.join(folder, "bodies.txt")
    with open(bodies_file, "wb") as file:
        file.write(b"\n".join(signed_bodies(count, "7")) + b"\n")
    lua = os.path.join(folder, "bench.lua")
    with open(lua, "w") as file:
        file.write(WRK_SCRIPT)
    port = free_port()
    log = open(os.path.join(folder, "gunicorn.log"), "wb")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", "127.0.0.1:%d" % port,
                               "ipn_receiver:application"], cwd=app, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    log.close()
    try:
        url = "http://127.0.0.1:%d/" % port
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    return {"skip": "gunicorn did not start"}
                time.sleep(0.1)
        done = subprocess.run([wrk, "-t1", "-c8", "-d%ds" % seconds, "--timeout", "5s", "-s", lua, url],
                              env=dict(os.environ, IPN_BODIES=bodies_file), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=seconds + 120)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    line = [part for part in done.stdout.decode().splitlines() if part.startswith("RESULT ")]
    if not line:
        return {"skip": "wrk gave no result: " + done.stdout.decode()[-500:]}
    requests, duration_us, bad_status, socket_errors, p50_us, p99_us, distinct = map(int, line[0].split()[1:])
    connection = sqlite3.connect(os.path.join(app, "ipn_data", "events.sqlite3"))
    stored = connection.execute("SELECT count(*) FROM notifications WHERE status = 'done'").fetchone()[0]
    connection.close()
    return {"requests": requests, "rps": requests / (duration_us / 1e6), "p50": p50_us / 1000,
            "p99": p99_us / 1000, "bad": bad_status, "socket_errors": socket_errors, "stored": stored,
            "distinct": distinct, "seconds": duration_us / 1e6}


# ---- the table -----------------------------------------------------------------------------

def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as file:
            model = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    versions = []
    for argv in ([SYSTEM_PYTHON, "--version"], ["php-cgi", "-v"]):
        try:
            versions.append(subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           timeout=30).stdout.decode().splitlines()[0])
        except (OSError, IndexError):
            pass
    return "%s, %d cores, %.0f GiB, Linux %s; %s; SQLite %s" % (
        model, os.cpu_count(), memory, platform.release(), "; ".join(versions), sqlite3.sqlite_version)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=41, help="measured CGI runs per program (default 41)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10, help="gunicorn load duration (default 10)")
    parser.add_argument("--check", action="store_true", help="exit 1 unless every target is met")
    parser.add_argument("--verification-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.verification_only:
        print(json.dumps(verification_figures()))
        return 0
    folder = tempfile.mkdtemp(prefix="ipn-bench-")
    try:
        cgi = measure_cgi(args.runs, args.warmup, folder)
        verification = measure_verification()
        wsgi = measure_gunicorn(args.seconds, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    verdicts = []

    def verdict(ok):
        verdicts.append(ok)
        return "yes" if ok else "NO"

    print("ipn_receiver benchmark, %s" % time.strftime("%Y-%m-%d"))
    print("machine: %s\n" % machine())
    print("%-58s %-22s %-24s %s" % ("", "measured", "ratio (target)", "met"))
    print("CGI on_payment, 173 fields, durable store (median of %s runs after %d warm-up)"
          % (cgi.get("python", {}).get("runs", "-"), args.warmup))
    if "skip" in cgi:
        print("  skipped: " + cgi["skip"])
        verdicts.append(False)
    else:
        php, python, floor = cgi["php"], cgi["python"], cgi["floor"]
        time_ratio, memory_ratio = python["ms"] / php["ms"], python["mib"] / php["mib"]
        print("  %-56s %6.1f ms %6.1f MiB" % ("PHP anchor: php-cgi receiver.php, IPN_STORE", php["ms"], php["mib"]))
        print("  %-56s %6.1f ms %6.1f MiB   time %.2fx PHP (<= %.1fx)   %s   goal %.1fx: %s" % (
            "ipn_receiver.py as CGI, /usr/bin/python3", python["ms"], python["mib"], time_ratio,
            TARGETS["cgi_time"], verdict(time_ratio <= TARGETS["cgi_time"]), GOALS["cgi_time"],
            "met" if time_ratio <= GOALS["cgi_time"] else "missed"))
        print("  %-56s %-22s memory %.3fx PHP (<= %.2fx) %s   goal %.2fx: %s" % (
            "", "", memory_ratio, TARGETS["cgi_memory"], verdict(memory_ratio <= TARGETS["cgi_memory"]),
            GOALS["cgi_memory"], "met" if memory_ratio <= GOALS["cgi_memory"] else "missed"))
        print("  %-56s %-22s (the highest peaks: %.1f vs %.1f MiB, %.3fx)" % (
            "", "", python["highest_mib"], php["highest_mib"], python["highest_mib"] / php["highest_mib"]))
        print("  %-56s %-22s (each costs a call time and memory)" % (
            "tokens Python compiles on every call", "%d" % compiled_tokens()))
        print("  %-56s %-22s (the parser's room: %d; past it, the room doubles)" % (
            "the same with the line structure, which the parser keeps", "%d" % compiled_tokens(True),
            parser_room(compiled_tokens(True))))
        print("  %-56s %6.1f ms %6.1f MiB   receiver %.2fx the floor" % (
            "floor: /usr/bin/python3 -c pass", floor["ms"], floor["mib"], python["ms"] / floor["ms"]))
        launcher = cgi["launcher"]
        print("  %-56s %6.1f ms %6.1f MiB   time %.2fx PHP, memory %.2fx (an option, no target)" % (
            "README's launcher ipn.py (bytecode cached)", launcher["ms"], launcher["mib"],
            launcher["ms"] / php["ms"], launcher["mib"] / php["mib"]))
        answered = python["bad"] == 0 and php["bad"] == 0 and launcher["bad"] == 0 and \
            cgi["stored"] == cgi["expected"]
        print("  %-56s %-22s %-24s %s" % ("every call answered OK, each stored once (%d/%d)"
                                          % (cgi["stored"], cgi["expected"]), "", "", verdict(answered)))
    if "skip" in verification:
        print("Verification in-process\n  skipped: " + verification["skip"])
        verification = {"verify": 0, "floor": 1, "bytes": 1, "length": 0}
        verdicts.append(False)
    print("Verification in-process, the 173-field sample (%d bytes signed), /usr/bin/python3"
          % verification["length"])
    ratio = verification["verify"] / verification["floor"]
    print("  %-56s %6.1f us %-13s %.2fx the floor (<= %.0fx)   %s" % (
        "digistore24_signature_is_valid()", verification["verify"], "", ratio, TARGETS["verify"],
        verdict(ratio <= TARGETS["verify"])))
    print("  %-56s %6.1f us" % ("floor: hashlib.sha512 of the same string (encode + hash)", verification["floor"]))
    print("  %-56s %6.1f us %-13s %.2fx (for reference)" % (
        "  its bytes alone, already encoded", verification["bytes"], "", verification["verify"] / verification["bytes"]))
    print("WSGI: gunicorn --workers 2, durable store, wrk -t1 -c8 -d%ds, distinct on_payment calls" % args.seconds)
    if "skip" in wsgi:
        print("  skipped: " + wsgi["skip"])
        verdicts.append(False)
    else:
        print("  %-56s %6.0f /s %-13s >= %d/s   %s" % ("throughput (%d requests in %.1f s)" % (
            wsgi["requests"], wsgi["seconds"]), wsgi["rps"], "", TARGETS["rps"], verdict(wsgi["rps"] >= TARGETS["rps"])))
        print("  %-56s %6.1f ms / %.1f ms %-4s p99 < %d ms   %s" % ("latency p50 / p99", wsgi["p50"], wsgi["p99"], "",
                                                             TARGETS["p99_ms"], verdict(wsgi["p99"] < TARGETS["p99_ms"])))
        # wrk stops counting with up to 8 requests (one per connection) still under way; the
        # server finishes and stores those too.
        clean = (wsgi["bad"] == 0 and wsgi["socket_errors"] == 0 and wsgi["requests"] <= wsgi["distinct"]
                 and wsgi["requests"] <= wsgi["stored"] <= wsgi["requests"] + 8)
        print("  %-56s %-22s %-24s %s" % ("all 200 OK, distinct, stored (%d stored, %d counted)" % (
            wsgi["stored"], wsgi["requests"]), "", "", verdict(clean)))
    met = all(verdicts)
    print("\n%s" % ("every target met" if met else "TARGETS MISSED"))
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
