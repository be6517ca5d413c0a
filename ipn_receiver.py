#!/usr/bin/env python3
"""ipn_receiver: receive Digistore24 IPN and PromoPit ISN sale notifications.

One file, Python standard library only, CPython 3.6 or later. Put it on your web space, set your
passphrase below, and register its URL with Digistore24 and/or PromoPit. For every notification it
proves the call genuine (Digistore24's SHA-512 signature, PromoPit's ISN key), records it durably,
runs your handler for the event once (again only for a retry after it failed or was cut off), and
answers "OK" so the sender stops retrying.

Run it
    as a CGI program      upload it with the run bit set (chmod 700, or 755: `check` says); the web
                          server runs it
    as a WSGI app         point mod_wsgi, Passenger, gunicorn, waitress or uWSGI at `application`
    locally               python3 ipn_receiver.py          (a server on http://127.0.0.1:8000/)
    see it work           python3 ipn_receiver.py demo     (needs no setup at all)
    test a deployment     python3 ipn_receiver.py send on_payment --url https://example.com/ipn.py
    other commands        python3 ipn_receiver.py --help  (events, show, replay, check, ...)

Edit the two blocks marked EDIT HERE (settings, then one handler per event); nothing below the
banner "NOTHING BELOW NEEDS EDITING" does. Below it, each under a banner: the modules it imports,
loading the settings, logging, the notification, verification, reading the request, the event
store, handling a notification, the WSGI application, the commands, the entry point.
README.md explains everything else.
"""

# =================================================================================================
#  SETTINGS                                                                            EDIT HERE
# =================================================================================================
# Each setting can also be given, overriding what is written here, in an INI file (config.ini beside
# this file, or the file named by the environment variable IPN_CONFIG; see config.example.ini) and,
# overriding both, in an environment variable:
#
#   setting          INI file                          environment variable
#   SHA_PASSPHRASE   [digistore24] sha_passphrase      IPN_SHA_PASSPHRASE
#   ISN_KEY          [promopit] isn_key                IPN_ISN_KEY
#   DATA_DIR         [receiver] data_dir               IPN_DATA_DIR
#   LOG_LEVEL        [receiver] log_level              IPN_LOG_LEVEL
#   MAX_BODY_BYTES   [receiver] max_body_bytes         IPN_MAX_BODY_BYTES
#   PROCESSING_TIMEOUT [receiver] processing_timeout   IPN_PROCESSING_TIMEOUT
#
# An empty value in the INI file or the environment means "not set there".

# Digistore24: the "SHA passphrase" of your IPN connection (Digistore24 > Settings > Integrations
# (IPN)). Without it every Digistore24 call is refused with 503: the receiver never accepts a call
# it cannot verify. Paste it between the quotes and keep the r in front of them: without it, Python
# reads \t, \n, ... in a passphrase as other characters. One that holds a " or ends in \ goes into
# config.ini instead.
SHA_PASSPHRASE = r"PASTE-YOUR-DIGISTORE24-IPN-PASSPHRASE-HERE"

# PromoPit: the ISN key shown in the ISN settings of your product. Leave it as it is if you do not
# sell through PromoPit. Never the same as SHA_PASSPHRASE: PromoPit sends its key in every call.
ISN_KEY = r"PASTE-YOUR-PROMOPIT-ISN-KEY-HERE"

# The folder for the log (ipn_receiver.log) and the event store (events.sqlite3). A relative path
# is taken from the folder this file is in. Best is a folder outside your web root, for example
# "/home/youruser/ipn_data"; inside it, the receiver protects the folder with an .htaccess file.
DATA_DIR = "ipn_data"

# How much the log says: "DEBUG", "INFO", "WARNING" or "ERROR". (The receiver writes no DEBUG
# lines of its own: "DEBUG" adds your handlers' log.debug(...) lines.)
LOG_LEVEL = "INFO"

# Larger request bodies are refused (413), unread where their length is given (a chunked one is
# read up to the limit). A Digistore24 call is about 6 KB.
MAX_BODY_BYTES = 1024 * 1024

# Seconds after which a notification still marked "processing" (its process died or hangs) may be
# taken over by the sender's next retry. Must be longer than your slowest handler.
PROCESSING_TIMEOUT = 300


# =================================================================================================
#  HANDLERS: one function per event                                                    EDIT HERE
# =================================================================================================
# Each handler receives one `notification` (see class Notification below):
#     notification.event, notification.provider     "on_payment", "digistore24", ...
#     notification["order_id"]                       a field (KeyError if it is missing or was empty)
#     notification.get("email")                      a field, or "" if it is missing or was empty
#     notification.fields                            the fields the sender vouched for: a dict of str,
#                                                    no empty field, no signature, no key (README.md:
#                                                    "What a handler sees, and why")
#     notification.is_test                           True for Digistore24's api_mode=test (test payments;
#                                                    `send` marks its calls so) and PromoPit's test_mode=1
#     notification.add_info                          PromoPit only: {question: answer} by number (one
#                                                    sent without its question: "add_info_N")
#     notification.id                                its number in the store (`ipn_receiver.py show ID`)
# Keys are as sent, but all in lower case where Digistore24 signed the call with its upper-case-keys
# variant (notification.fields then holds "placeholder_title"): ask for a field by the name
# Digistore24 documents ("placeholder_TITLE"), and [] and get() find it either way. Every value is
# text: pay_sequence_no is "0", not 0.
#
# A handler runs once per distinct notification, even when the sender retries it. If it raises
# an exception, the sender gets an error naming the handler, retries later, and the handler runs
# again then, from the start; so do the work first and return only when it is done (a thread you
# start may be cut off once the answer is out: README.md, "Your handlers"), and make what must not
# happen twice (an e-mail sent, an account made) the last step, or look first whether it was done
# (by transaction_id). Only on_payment's returned dict is sent back (see on_payment); other
# handlers return nothing. Write messages to the log with log.info(...); a print() goes to the web
# server's error log. Name functions of your own my_... : a name the code below uses too would be
# replaced by the receiver's (`check` names it).
# Digistore24 sends the same order_id for every transaction of an order (first payment, rebills,
# refund); transaction_id is unique per transaction; an order of several products has the second
# one's fields as product_id_2, ... Events of one order may come out of order: a failing
# on_payment is retried for days, and may run after the order's on_refund.

def connection_test(notification):
    """Digistore24: you pressed "Test connection". Answering OK is the whole test."""
    # EDIT HERE (usually nothing to do)
    log.info("Digistore24 connection test received")


def on_payment(notification):
    """Digistore24: a payment arrived: a first payment, a rebill or an instalment.

    Fields: order_id, transaction_id, product_id, product_name, quantity, email, buyer_first_name,
    buyer_last_name, amount, currency, billing_type, pay_sequence_no ("0" = the first payment),
    custom (what you put into the buy link). Typical work: create the account or licence (first
    payment), or extend access (later payments).

    To show access data on the thank-you page and in the buyer's e-mail, return a dict, e.g.
        return {"username": "jane", "password": "s3cret", "loginurl": "https://example.com/login"}
    Keys: thankyou_url, username, password, loginurl, headline, show_on, hide_on, and username_2,
    password_2, loginurl_2, ... for more accounts. A retried call gets the same data again.
    """
    # EDIT HERE: grant or extend access.
    log.info("payment for order %s, product %s, pay_sequence_no %s: nothing done yet (edit on_payment)",
             notification.get("order_id"), notification.get("product_id"),
             notification.get("pay_sequence_no"))


def on_payment_missed(notification):
    """Digistore24: a recurring payment failed; Digistore24 will retry the charge itself.

    Fields: order_id, product_id, email. Typical work: nothing, or suspend access reversibly.
    """
    # EDIT HERE
    log.info("missed payment for order %s (edit on_payment_missed)", notification.get("order_id"))


def on_refund(notification):
    """Digistore24: a payment was refunded. Fields: order_id, transaction_id, product_id, amount.

    Typical work: revoke the access or licence that order_id granted.
    """
    # EDIT HERE: revoke access.
    log.info("refund for order %s (edit on_refund)", notification.get("order_id"))


def on_chargeback(notification):
    """Digistore24: the buyer's bank took a payment back. Fields as for on_refund.

    Typical work: revoke access, and flag the buyer (email) so you notice a repeat.
    """
    # EDIT HERE: revoke access, flag the buyer.
    log.info("chargeback for order %s (edit on_chargeback)", notification.get("order_id"))


def on_rebill_cancelled(notification):
    """Digistore24: a subscription will not be charged again. Access stays until last_paid_day.

    Fields: order_id, product_id, email. Typical work: note it; do not revoke access yet.
    """
    # EDIT HERE
    log.info("rebilling cancelled for order %s (edit on_rebill_cancelled)", notification.get("order_id"))


def on_rebill_resumed(notification):
    """Digistore24: a cancelled subscription is charged again. Typical work: note it."""
    # EDIT HERE
    log.info("rebilling resumed for order %s (edit on_rebill_resumed)", notification.get("order_id"))


def last_paid_day(notification):
    """Digistore24: the paid period of a cancelled subscription is over. Typical work: revoke access."""
    # EDIT HERE: revoke access.
    log.info("last paid day for order %s (edit last_paid_day)", notification.get("order_id"))


def on_affiliation(notification):
    """Digistore24: an affiliate was accepted for your product. Fields: affiliate_name, email.

    Typical work: optional, e.g. add the affiliate to a newsletter.
    """
    # EDIT HERE
    log.info("affiliate %s accepted (edit on_affiliation)", notification.get("affiliate_name"))


def sale(notification):
    """PromoPit: a sale was completed.

    Fields: promopit_txn_id (unique per sale), txn_amount, txn_currency, product_name,
    my_product_id, customer_name, customer_email, custom_1 ... custom_6, and the buyer's answers to
    your extra questions in notification.add_info. Typical work: deliver the product.
    """
    # EDIT HERE: deliver the product.
    log.info("PromoPit sale %s, product %s (edit sale)", notification.get("promopit_txn_id"),
             notification.get("my_product_id") or notification.get("product_name"))


# Which handler runs for which event. To handle another event, write a function and add a line.
# An event without a handler is answered OK, logged and stored, and its handler is not called.
DIGISTORE24_HANDLERS = {
    "connection_test": connection_test,
    "on_payment": on_payment,
    "on_payment_missed": on_payment_missed,
    "on_refund": on_refund,
    "on_chargeback": on_chargeback,
    "on_rebill_cancelled": on_rebill_cancelled,
    "on_rebill_resumed": on_rebill_resumed,
    "last_paid_day": last_paid_day,
    "on_affiliation": on_affiliation,
}
PROMOPIT_HANDLERS = {
    "sale": sale,
}


# =================================================================================================
# =================================================================================================
#  NOTHING BELOW NEEDS EDITING
# =================================================================================================
# =================================================================================================

# What the part above defines, before the code below defines its own: a name of yours that the
# receiver uses too (a helper post_form() of yours, say) would be replaced by the receiver's, and
# your handler would call that one, silently. So such a name is a configuration error
# (see NAMES_TAKEN_OVER).
YOUR_PART = dict(globals())

# The modules the receiver uses are imported here, below the part you edit: a vendor who upgrades
# by carrying their part over from another version (which imported other modules, or none) keeps a
# file that works. Your handlers may use them too (os, sys, time); give your own functions and
# settings names of their own (my_..., say).
import hashlib
import hmac
import _thread
import os
import sys
import time

# Raised with each release that changes what a vendor must know (README.md: Upgrading).
__version__ = "1.1.0"

# The folder of the file itself, whatever link the web server reaches it through: a call and a
# command run on the file itself then read one config.ini and keep one store.
HERE = os.path.dirname(os.path.realpath(__file__))
CONFIG_FILE_NAME = "config.ini"
LOG_FILE_NAME = "ipn_receiver.log"
ERROR_LOG_FILE_NAME = "ipn_receiver.errors.log"     # the errors alone: requests cannot flood it
STORE_FILE_NAME = "events.sqlite3"
LOG_FILE_MAX_BYTES = 1024 * 1024    # then ipn_receiver.log becomes ipn_receiver.log.1, ...
LOG_FILE_BACKUPS = 3

DIGISTORE24 = "digistore24"
PROMOPIT = "promopit"


# =================================================================================================
#  Loading the settings: the constants above, then the INI file, then the environment
# =================================================================================================

class ConfigError(Exception):
    """A setting or the INI file is wrong.

    The message is one line for the log and `check`: where, what, and the fix. `location` is the
    short part an HTTP answer may show ("config.ini line 4"): a caller who has not proved who it
    is learns no path and no value.
    """

    def __init__(self, message, location="the settings", fix=None):
        Exception.__init__(self, message)
        self.location, self.fix = location, fix


#  name                 INI section    INI key               environment variable
SETTINGS_SOURCES = (
    ("SHA_PASSPHRASE",     "digistore24", "sha_passphrase",     "IPN_SHA_PASSPHRASE"),
    ("ISN_KEY",            "promopit",    "isn_key",            "IPN_ISN_KEY"),
    ("DATA_DIR",           "receiver",    "data_dir",           "IPN_DATA_DIR"),
    ("LOG_LEVEL",          "receiver",    "log_level",          "IPN_LOG_LEVEL"),
    ("MAX_BODY_BYTES",     "receiver",    "max_body_bytes",     "IPN_MAX_BODY_BYTES"),
    ("PROCESSING_TIMEOUT", "receiver",    "processing_timeout", "IPN_PROCESSING_TIMEOUT"),
)
SECRET_SETTINGS = ("SHA_PASSPHRASE", "ISN_KEY")
SHORTEST_SECRET = 8     # characters; a shorter secret is refused (see secret_problem)
# The values shipped in this file and in config.example.ini: they count as "not set".
PLACEHOLDERS = {
    "SHA_PASSPHRASE": "PASTE-YOUR-DIGISTORE24-IPN-PASSPHRASE-HERE",
    "ISN_KEY": "PASTE-YOUR-PROMOPIT-ISN-KEY-HERE",
}
# The other settings' values as the file comes (config.example.ini has them as comments).
SHIPPED_SETTINGS = {"DATA_DIR": "ipn_data", "LOG_LEVEL": "INFO", "MAX_BODY_BYTES": 1024 * 1024,
                    "PROCESSING_TIMEOUT": 300}
LOG_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}

_settings = None            # the settings in effect, loaded on first use
_settings_read_from = None  # the state of the INI file they were read with; None after use_settings()


def settings():
    """The settings in effect in this process: a dict (ConfigError if they are wrong).

    Read on first use, and again when the INI file has changed since: a process that lives on
    (under WSGI, or `serve`) follows the vendor's edits, a new passphrase or data folder say,
    without a restart, as every worker of a server does at its next call, and as a CGI call does.
    (A file caught half uploaded is not read: see settled_ini_file_state. The environment takes a
    restart: a process keeps the one it has.)
    """
    global _settings, _settings_read_from
    if _settings is None or (_settings_read_from is not None and _settings_read_from != ini_file_state()):
        state = settled_ini_file_state()
        # Where they are wrong, ConfigError: the settings before stay in _settings, for the log to
        # mask their secrets, and the next use reads the file again.
        loaded = load_settings()
        _settings, _settings_read_from = loaded, state
        log.reset()                         # its secrets and level
    return _settings


def expand_home(path):
    """`path` with a leading "~" made the home folder of the user this process runs as.

    From the password database, not $HOME: the web server, suEXEC, sudo and cron set HOME each
    their own way, and a data folder that moved with it would be another store, where the same
    sale runs its handler again, and where a command finds nothing.
    """
    if path[:1] == "~" and path[1:2] in ("", "/") and hasattr(os, "geteuid"):
        import pwd
        try:
            return pwd.getpwuid(os.geteuid()).pw_dir + path[1:]
        except KeyError:                    # (a user the system does not name)
            pass
    return os.path.expanduser(path)


def ini_file_state():
    """The INI file the settings are read from, with its size and times (None where there is none)."""
    path = expand_home(os.environ.get("IPN_CONFIG") or os.path.join(HERE, CONFIG_FILE_NAME))
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return path, None
    return path, found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino


CONFIG_SETTLE_SECONDS = 1.0     # how long the INI file must have been unchanged before it is read


def settled_ini_file_state(most=10):
    """ini_file_state(), once the INI file has not changed for CONFIG_SETTLE_SECONDS (waiting
    `most` seconds at the most).

    An upload, or an editor saving in place, writes the file over a moment, and a call that read
    it then would take what is there so far: no data_dir line yet, or half a path. Under CGI every
    call starts afresh, with no data folder from before to keep, and it would make a second, empty
    store elsewhere, in which a copy of a notification handled before runs again. So a file changed
    less than a second ago is waited for. (A time ahead of the clock's is taken as settled: a
    file set to a future time would make every call wait.)
    """
    for _ in range(int(most * 20)):
        state = ini_file_state()
        age = time.time() - state[2] / 1e9 if state[1] is not None else CONFIG_SETTLE_SECONDS
        if not 0 <= age < CONFIG_SETTLE_SECONDS:
            return state
        time.sleep(0.05)
    return ini_file_state()


def settings_written_here():
    """{name: value} of the settings at the top of this file (ConfigError for one whose line is gone).

    A line deleted, or its name changed (SHA_PASSPRASE), would otherwise end every call, even a
    GET, in a traceback the web server answers with its own 500 page, and no word of what to do.
    """
    found = globals()
    for name, _, _, _ in SETTINGS_SOURCES:
        if name not in found:
            raise ConfigError("%s is missing at the top of ipn_receiver.py (its line deleted, or its name misspelt); "
                              "put its line back as the file came (the README's table of settings gives its default)"
                              % name, "ipn_receiver.py")
    for name in ("DIGISTORE24_HANDLERS", "PROMOPIT_HANDLERS"):
        if name not in found:               # (PromoPit's deleted by a vendor who does not use it)
            raise ConfigError("%s is missing at the top of ipn_receiver.py (its line deleted, or its name misspelt); "
                              "put it back as the file came (an empty table is {})" % name, "ipn_receiver.py")
    if NAMES_TAKEN_OVER:
        lines = [YOUR_PART[name].__code__.co_firstlineno for name in NAMES_TAKEN_OVER     # (functions of yours)
                 if getattr(YOUR_PART[name], "__module__", None) == __name__ and hasattr(YOUR_PART[name], "__code__")]
        raise ConfigError("the receiver's own code below the banner defines %s too, which replaces yours at the top "
                          "of ipn_receiver.py: your handlers would call the receiver's. Rename yours (my_%s, say), "
                          "and where your handlers use it" % (", ".join(NAMES_TAKEN_OVER), NAMES_TAKEN_OVER[0]),
                          "ipn_receiver.py line %d" % min(lines) if lines else "ipn_receiver.py")
    return {name: found[name] for name, _, _, _ in SETTINGS_SOURCES}


def load_settings(environ=None):
    """Read the settings: this file's constants, overridden by the INI file, then by the environment."""
    environ = os.environ if environ is None else environ
    values = settings_written_here()
    where = {name: ("%s at the top of ipn_receiver.py" % name, "ipn_receiver.py") for name in values}
    config_file = environ.get("IPN_CONFIG") or None
    if config_file:
        config_file = os.path.abspath(expand_home(config_file))
        if not os.path.isfile(config_file):
            raise ConfigError("IPN_CONFIG names %s, which is not a file; correct the path or unset "
                              "IPN_CONFIG" % config_file, "the environment variable IPN_CONFIG")
    elif os.path.isfile(os.path.join(HERE, CONFIG_FILE_NAME)):
        config_file = os.path.join(HERE, CONFIG_FILE_NAME)
    if config_file:
        name, lines = os.path.basename(config_file), {}
        controlled = hasattr(os, "geteuid") and folder_others_control(config_file)
        if controlled:
            # Written, or replaceable, by another user of the server (in /tmp, say, or mode 666
            # after an upload): their passphrase would verify calls they make up, and a DATA_DIR
            # of theirs start an empty store, in which every sale handled before runs again.
            raise ConfigError("%s: another user of this server could change %s, and so give the receiver a "
                              "passphrase or a data folder of their own; keep it in a folder of your own, owned by "
                              "the user the receiver runs as, chmod 600 (`python3 ipn_receiver.py check`)"
                              % (config_file, "it" if controlled == config_file else controlled), name,
                              out_of_others_reach_for_a_command(controlled))
        ini = read_ini_file(config_file, lines)
        for setting, section, key, _ in SETTINGS_SOURCES:
            value = ini.get(section, {}).pop(key, "")
            if value not in ("", PLACEHOLDERS.get(setting)):    # (config.example.ini copied as it is)
                values[setting] = value
                line = "%s line %d" % (name, lines[section, key])
                where[setting] = ("%s, [%s] %s" % (line, section, key), line)
        for section, keys in ini.items():
            known = [k for _, s, k, _ in SETTINGS_SOURCES if s == section]
            for key in keys:                    # never shown: it may be a secret pasted alone
                line = "%s line %d" % (name, lines[section, key if known else ""])
                raise ConfigError("%s: unknown %s [%s] (the settings are %s); correct its name%s" % (
                    line, "setting in" if known else "section", section, ", ".join(
                        "[%s] %s" % (s, k) for _, s, k, _ in SETTINGS_SOURCES),
                    ", or start the line with # to make it a comment" if known else ""), line)
    for setting, _, _, variable in SETTINGS_SOURCES:
        if environ.get(variable, "") != "":
            text = setting in SECRET_SETTINGS or setting == "DATA_DIR"
            values[setting] = environment_text(environ[variable]) if text else environ[variable]
            where[setting] = ("environment variable %s" % variable, "the environment variable " + variable)
    return finish_settings(values, where, config_file)


def environment_text(value):
    """The text an environment variable's value holds, read as UTF-8.

    Python decodes the environment with the locale's encoding: ASCII in Python 3.6 where a web
    server sets no LANG (3.7 and later take UTF-8 then), which would leave a non-ASCII passphrase
    as bytes no signature could match. Bytes that are not UTF-8 stay lone surrogates, and
    finish_settings refuses them.
    """
    try:
        return os.fsencode(value).decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value                        # not read from the environment's bytes: text already


def use_settings(**values):
    """Use these settings in this process from now on, in place of the configured ones.

    Settings not named keep the values written in this file (not those of the INI file or the
    environment). The demo and the tests use this; a wrapper script may too.
    """
    global _settings, _settings_read_from
    merged = settings_written_here()
    unknown = set(values) - set(merged)
    if unknown:
        raise TypeError("unknown settings: %s" % ", ".join(sorted(unknown)))
    merged.update(values)
    where = {name: ("use_settings(%s=...)" % name, "use_settings()") for name in merged}
    _settings, _settings_read_from = finish_settings(merged, where, None), None
    log.reset()
    log.secrets = ()                        # these settings from now on: theirs alone
    close_store()
    return _settings


def finish_settings(values, where, config_file):
    """Check and convert raw setting values.

    `where[name]` is (where the value came from, for messages; the short form an answer may show).
    """
    result = {"config_file": config_file, "where": {name: long for name, (long, _) in where.items()}}

    def wrong(name, text, about_a_comment=False):
        """The ConfigError that says `text` of the setting `name`, where it is set (and, where the
        value holds a # and `text` does not say so already, that a comment is a line of its own)."""
        if "#" in str(values[name]) and name not in SECRET_SETTINGS and not about_a_comment:
            text += " (with nothing after it: a comment is a line of its own, starting with #)"
        return ConfigError("%s: %s" % (where[name][0], text), where[name][1])

    for name in SECRET_SETTINGS:
        if not isinstance(values[name], (str, type(None))):
            # b"...", or a comma after the quotes (a tuple): str() of it is no one's passphrase.
            raise wrong(name, "%s is %s, not text; write it as %s = r\"...\", in quotes with nothing after them"
                        % (name, type(values[name]).__name__, name))
        secret = values[name] or ""
        try:
            secret.encode("utf-8")
        except UnicodeEncodeError:
            # The environment holds bytes; Python keeps those that are not UTF-8 as lone
            # surrogates, which no signature can be computed over. (Apache's SetEnv in a file saved
            # as Latin-1, say.)
            raise wrong(name, "%s is not valid UTF-8 text; save the file that sets it as UTF-8" % name)
        result[name] = secret
    level = str(values["LOG_LEVEL"]).strip().translate(_ASCII_UPPER)     # ("ınfo".upper() is "INFO")
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise wrong("LOG_LEVEL", "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR")
    result["LOG_LEVEL"] = level
    for name in ("MAX_BODY_BYTES", "PROCESSING_TIMEOUT"):
        text = str(values[name]).strip()
        number = int(text) if is_whole_number(text) else 0
        if number <= 0:
            raise wrong(name, "%s must be a whole number greater than 0, like %d" % (name, SHIPPED_SETTINGS[name]))
        result[name] = number
    data_dir = str(values["DATA_DIR"] or SHIPPED_SETTINGS["DATA_DIR"]).strip()
    if "\0" in data_dir:
        raise wrong("DATA_DIR", "DATA_DIR holds a NUL character, which no file name may")
    if len(data_dir) > 1 and data_dir[0] == data_dir[-1] and data_dir[0] in "\"'":
        # Taken as it is written, as config.ini takes every value: a folder whose name begins with
        # a quote, inside the script's folder, on the web.
        raise wrong("DATA_DIR", "DATA_DIR is in quotes, which would be part of the folder's name; remove them")
    if any(data_dir[at] in "#;" and data_dir[at - 1].isspace() for at in range(1, len(data_dir))):
        # "/home/you/data   # moved": a comment after a value is part of the value in config.ini,
        # and the folder so named would hold a new, empty store, where every sale runs again.
        raise wrong("DATA_DIR", "DATA_DIR has a comment after the folder's name, which would be part of the name; "
                    "put the comment on a line of its own", about_a_comment=True)
    # The folder's name on disk is the UTF-8 of the name as written, whatever the locale: else a
    # CGI call (no LANG: UTF-8), a WSGI server or a command under a Latin-1 locale would each name
    # another folder, with a store of its own, and run every handler again.
    # (Bytes of the environment that are not UTF-8, Python keeps as lone surrogates: no name.)
    usable = not any("\udc80" <= character <= "\udcff" for character in data_dir)
    data_dir = os.fsdecode(data_dir.encode("utf-8", "surrogateescape"))
    # Absolute stays absolute; normalised, so that "/data//" and "/data" name one lock file.
    result["DATA_DIR"] = os.path.normpath(os.path.join(HERE, expand_home(data_dir)))
    # Before Python 3.7, SQLite is given the name as UTF-8, and the system in the locale's encoding
    # (ASCII where a web server sets no LANG): they must be the same bytes.
    utf8_names = sys.getfilesystemencoding().lower().replace("_", "-") in ("utf-8", "utf8")
    if not usable or sys.version_info < (3, 7) and not utf8_names and any(ord(c) > 127 for c in result["DATA_DIR"]):
        raise wrong("DATA_DIR", "DATA_DIR holds characters this Python cannot use in a file name (it writes file "
                    "names as %s, as Python 3.6 does where the web server sets no LANG); use a DATA_DIR of ASCII "
                    "characters, or Python 3.7 or later" % sys.getfilesystemencoding())
    if os.path.normcase(os.path.join(os.path.realpath(HERE), "")).startswith(
            os.path.normcase(os.path.join(os.path.realpath(result["DATA_DIR"]), ""))):     # (links followed)
        # The .htaccess written into the data folder denies the web everything in and below it:
        # the receiver itself, and a whole site beside it.
        raise wrong("DATA_DIR", "DATA_DIR is the folder the script is in, or one above it; set it to a folder of "
                    "its own, outside the web root (/home/you/ipn_data)")
    return result


def is_whole_number(text):
    """True for a string of ASCII digits, at most 18 of them. (int() takes other scripts' digits,
    "1_000" and spaces too, and on newer Pythons refuses very long numbers with an error.)"""
    return 0 < len(text) <= 18 and not text.strip("0123456789")


def read_ini_file(path, lines=None):
    """Read an INI file into {section: {key: value}}; ConfigError (one line) for anything malformed.

    `lines`, when given, is filled with {(section, key): line number}, and {(section, ""): the
    line number of its header}.

    This reads what configparser.ConfigParser(interpolation=None) reads, without its import cost
    (about 3.5 ms a CGI call; tests/test_settings.py compares the two on generated files). Values are
    taken literally: no quotes needed, no inline comments, no % interpolation, so a passphrase may
    contain any character; spaces around a value are dropped, as configparser drops them. Where
    the two differ, it is on purpose:
    - section names are compared in any case ([Receiver] is [receiver]), and spaces inside the
      brackets are dropped: configparser would make those other, unknown sections;
    - a line that starts with a space is refused: configparser would take it as the continuation
      of the value above, which in a pasted passphrase is a mistake nobody sees;
    - a UTF-8 byte order mark at the start is allowed (Windows editors write one);
    - [DEFAULT] is not special: it is an unknown section.
    """
    name = os.path.basename(path)
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8-sig")    # -sig: Windows editors may add a BOM
    except OSError as error:
        fix = "check its permissions"
        if isinstance(error, PermissionError) and hasattr(os, "geteuid") and os.path.exists(path):
            # Most often run by another user than the file's (check as root, say, or the web server's).
            fix = ("it belongs to %s, and this runs as %s: run it as the user the web server runs the receiver as, "
                   "and make the file that user's (chown, chmod 600)" % (user_name(os.stat(path).st_uid),
                                                                          user_name(os.geteuid())))
        raise ConfigError("%s: cannot be read (%s); %s" % (path, error.strerror, fix), name)
    except UnicodeDecodeError:
        raise ConfigError("%s: is not UTF-8 text; save it as UTF-8" % name, name)
    sections, current, lines = {}, None, {} if lines is None else lines
    # Lines end as in Python's text files (\n, \r\n or \r), and nowhere else: str.splitlines()
    # would also break at U+2028, U+0085, form feeds, ..., which a passphrase may contain.
    for number, raw in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        line, at = raw.strip(), "%s line %d" % (name, number)
        if not line or line[0] in "#;":
            continue
        if raw[0].isspace():
            raise ConfigError("%s: starts with a space; write each setting on one line, at the start "
                              "of the line" % at, at)
        if line[0] == "[":
            end = line.rfind("]")                   # what follows the last "]" is ignored
            section = line[1:end].strip().lower() if end > 0 else ""
            if not section:
                raise ConfigError("%s: a section header is a name in square brackets, like [receiver]" % at, at)
            if section in sections:
                raise ConfigError("%s: [%s] appears a second time; keep one" % (at, section), at)
            current = sections[section] = {}
            lines[section, ""] = number             # ("": the header, as no key is named)
            continue
        cut = min(i for i in (line.find("="), line.find(":"), len(line)) if i >= 0)
        key = line[:cut].strip().lower()
        if cut == len(line) or not key:
            raise ConfigError("%s: expected `key = value`" % at, at)
        if current is None:
            raise ConfigError("%s: a setting before any [section]; put it under its section, see "
                              "config.example.ini" % at, at)
        if key in current:
            raise ConfigError("%s: this setting is set a second time in its section (line %d); keep "
                              "one" % (at, lines[section, key]), at)
        current[key] = line[cut + 1:].strip()
        lines[section, key] = number
    return sections


def where_secrets_go(name):
    """(what the secret setting `name` holds, where it may be put), for messages."""
    section, key, variable = [(s, k, v) for n, s, k, v in SETTINGS_SOURCES if n == name][0]
    return ({"SHA_PASSPHRASE": "your Digistore24 IPN passphrase", "ISN_KEY": "your PromoPit ISN key"}[name],
            "into %s at the top of ipn_receiver.py, into [%s] %s of config.ini, or into the environment variable %s"
            % (name, section, key, variable))


def sender_of(name):
    """The sender whose calls the secret setting `name` verifies."""
    return "PromoPit" if name == "ISN_KEY" else "Digistore24"


def secret_problem(config, name):
    """Why the secret setting `name` cannot be used, or None when it can. Never shows the value."""
    value = config[name]
    label, where = where_secrets_go(name)
    if not value.strip():
        state = "is not set"
    elif value.strip() == PLACEHOLDERS[name]:
        state = "is still the placeholder"
    elif len(value) < SHORTEST_SECRET:
        # One captured signature is enough to try every short passphrase offline, and the one
        # that fits signs any notification. Short secrets are also the ones the log cannot mask
        # without hiding ordinary words.
        return ("%s is too short (fewer than %d characters): one captured notification is enough to "
                "guess it. Choose a long random one, enter it in %s's settings, and put the same "
                "%s" % (name, SHORTEST_SECRET, sender_of(name), where))
    elif name == "SHA_PASSPHRASE" and value == config.get("ISN_KEY"):
        return ("SHA_PASSPHRASE is the same as ISN_KEY, and PromoPit sends its key in every call: whoever sees one "
                "could sign any Digistore24 notification. Choose another ISN key at PromoPit and put it %s"
                % where_secrets_go("ISN_KEY")[1])
    else:
        return None
    return "%s %s: put %s %s" % (name, state, label, where)


def unusable_secret_answer(name):
    """The answer to a call that needs the secret `name` when secret_problem finds it unusable: the
    same whether it is not set, the placeholder or too short. A caller who has not proved who it
    is learns that the setting is not usable, but not why: that a secret is short would tell
    whoever captured a call that guessing it is worth trying. `check` and the log say why."""
    return ("%s cannot be used (not set, the placeholder, or under %d characters%s); run `python3 ipn_receiver.py "
            "check` on the server, as the web server runs the receiver (its user, its environment): it says which, and "
            "where to put %s" % (name, SHORTEST_SECRET, ", or the same as "
            "ISN_KEY" if name == "SHA_PASSPHRASE" else "", where_secrets_go(name)[0]))


# =================================================================================================
#  Logging: one line per request to DATA_DIR/ipn_receiver.log and to stderr
# =================================================================================================

# Every control character and every Unicode line break, written as a visible escape: text from a
# request (or from a handler's exception) can neither start a line of its own nor hide what follows
# behind terminal or bidirectional-text control codes.
_ESCAPES = {code: "\\x%02x" % code for code in list(range(32)) + list(range(127, 160))}
_ESCAPES.update({9: "\\t", 10: "\\n", 13: "\\r"})
_ESCAPES.update({code: "\\u%04x" % code for code in (0x061C, 0x200E, 0x200F, 0x2028, 0x2029, 0x202A, 0x202B,
                                                    0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069)})
LEVEL_NAMES = {number: name for name, number in LOG_LEVELS.items()}
LEVEL_NAMES[50] = "CRITICAL"                # (log.critical: not a level to set LOG_LEVEL to)


def one_line(text):
    """`text` as one line of printable text: control characters and line breaks escaped (a newline
    becomes \\n), and lone surrogates (bytes that were not UTF-8) as \\udcxx."""
    return text.translate(_ESCAPES).encode("utf-8", "backslashreplace").decode("utf-8")


def shortened(text, size=80):
    """At most `size` characters of text nobody has vouched for: junk must not fill the log. Its
    secrets masked first: cut through, the first part of one would be masked no more."""
    text = log.mask(text)
    return text if len(text) <= size else "%s...(%d characters)" % (text[:size], len(text))


def log_line(level, text, when):
    """A line of the log, exactly as logging.Formatter(LOG_FORMAT) writes it for a record made at
    `when` (a time.time() value): tests/test_logging.py compares the two."""
    name = LEVEL_NAMES.get(level) or "Level %d" % level
    return "%s,%03d %s [%d] %s" % (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)),
                                   int((when - int(when)) * 1000), name, os.getpid(), text)


LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(message)s"


def traceback_lines(error, seen=None):
    """The traceback of `error`, after those of the exceptions it came from, as a list of lines.

    Only the traceback's own structure makes lines: the exception's message may hold request data,
    so it stays one line (the log escapes its line breaks like any other text's).
    """
    import traceback
    seen = set() if seen is None else seen
    seen.add(id(error))
    lines = []
    if error.__cause__ is not None and id(error.__cause__) not in seen:
        lines += traceback_lines(error.__cause__, seen)
        lines += ["", "The above exception was the direct cause of the following exception:", ""]
    elif error.__context__ is not None and not error.__suppress_context__ and id(error.__context__) not in seen:
        lines += traceback_lines(error.__context__, seen)
        lines += ["", "During handling of the above exception, another exception occurred:", ""]
    lines.append("Traceback (most recent call last):")
    for frame in traceback.format_tb(error.__traceback__):
        lines += frame.rstrip("\n").split("\n")
    lines.append("".join(traceback.format_exception_only(type(error), error)).rstrip("\n"))
    # An exception group (Python 3.11: several errors raised as one) holds its errors below it.
    grouped = getattr(error, "exceptions", None)
    if isinstance(grouped, tuple):
        for number, inner in enumerate(grouped, 1):
            if isinstance(inner, BaseException) and id(inner) not in seen:
                lines += ["", "Exception %d of %d in the group above:" % (number, len(grouped))]
                lines += traceback_lines(inner, seen)
    return lines


_URL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def secret_forms(secret):
    """The ways a secret may be written into a log line, a stored error or an answer: as it is;
    inside quotes as repr(), ascii() and json.dumps write it (a handler logging a dict, a request
    or a JSON document; with ensure_ascii=False too, as for text with umlauts), repr() and ascii()
    also inside a longer text that holds both kinds of quote (which escapes "'"); as html.escape()
    writes it (a handler building a page or a mail); as repr() writes
    its UTF-8 bytes; and percent-encoded as in a form or a URL, with upper- or lower-case hex
    digits, with "~" kept or encoded (Python before 3.7 and PHP's urlencode encode it), and with
    "/" kept (as urllib.parse.quote() keeps it)."""
    # (As os.environ holds it, where the locale is not UTF-8: a handler logging the environment.)
    environ = os.fsdecode(secret.encode("utf-8"))
    forms = {secret, repr(secret)[1:-1], ascii(secret)[1:-1], json_ascii(secret), secret.translate(_JSON_ESCAPES),
             environ, repr(environ)[1:-1], ascii(environ)[1:-1],
             repr(secret.encode("utf-8"))[2:-1], repr('"' + secret)[2:-1], ascii('"' + secret)[2:-1],
             secret.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace(
                 "'", "&#x27;")}
    for digits in ("%%%02X", "%%%02x"):
        encoded = "".join(character if character in _URL_SAFE else "".join(digits % byte for byte in
                                                                            character.encode("utf-8"))
                          for character in secret)
        for form in (encoded, encoded.replace("~", digits % ord("~"))):
            forms.update((form, form.replace("%20", "+"), form.replace(digits % ord("/"), "/")))
    return forms


def json_ascii(text):
    """`text` as json.dumps(text) writes it, without the quotes: json_string's escapes, and every
    other character outside printable ASCII as \\uxxxx (tests/test_logging.py compares them)."""
    written = []
    for character in text.translate(_JSON_ESCAPES):
        code = ord(character)
        if code < 127:                      # (json.dumps escapes DEL too)
            written.append(character)
        elif code <= 0xFFFF:
            written.append("\\u%04x" % code)
        else:                               # beyond 16 bits: two \\u escapes, a surrogate pair
            code -= 0x10000
            written.append("\\u%04x\\u%04x" % (0xD800 | code >> 10, 0xDC00 | code & 0x3FF))
    return "".join(written)


class LogFile:
    """One log file: opened for appending (created 0600), rotated when full (the file becomes .1,
    .1 becomes .2, ..., LOG_FILE_BACKUPS kept), followed when another process has rotated it."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, line):
        try:
            self._rotate_if_needed()
            os.write(self.fd, line.encode("utf-8", "replace"))
        except OSError:
            pass

    def close(self):
        try:
            os.close(self.fd)
        except OSError:
            pass

    def _reopen(self):
        # Opened before the old one is closed: should the open fail (the data folder moved away),
        # self.fd must not keep the number of a closed descriptor, which the process may give to
        # another file, a handler's, that the next line would then be written into, or closed.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.close(self.fd)
        self.fd = fd

    def _rotate_if_needed(self):
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            on_disk = None
        mine = os.fstat(self.fd)
        if on_disk is None or (on_disk.st_ino, on_disk.st_dev) != (mine.st_ino, mine.st_dev):
            self._reopen()                  # rotated (or removed) by another process: follow it
            return
        if mine.st_size < LOG_FILE_MAX_BYTES:
            return
        try:
            import fcntl                    # so that two processes do not rotate at once; one that
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # finds it busy leaves it
        except ImportError:
            pass
        except OSError:
            return
        try:
            if os.stat(self.path).st_ino == mine.st_ino:    # nobody rotated while we waited
                for number in range(LOG_FILE_BACKUPS - 1, 0, -1):
                    older = "%s.%d" % (self.path, number)
                    if os.path.exists(older):
                        os.replace(older, "%s.%d" % (self.path, number + 1))
                os.replace(self.path, self.path + ".1")
        finally:
            self._reopen()                  # closing also releases the lock


class Log:
    """The receiver's log: log.debug/info/warning/error(message, *args) and log.exception(...).

    Each call writes one line ("2026-11-21 08:10:00,123 INFO [pid] message") to
    DATA_DIR/ipn_receiver.log and to stderr (the web server's error log under CGI, and the
    server's log under WSGI); log.exception adds the traceback's lines below it. Errors go to
    DATA_DIR/ipn_receiver.errors.log too: anyone can send requests that are refused, and their
    lines could rotate ipn_receiver.log away, but not that file, where no refusal goes. The
    configured secrets are replaced by [secret] wherever they appear, and then, last, every
    control character and line break in the text is escaped, so no data from a request can make
    a line of its own.

    The lines are written as logging.Formatter(LOG_FORMAT) writes them (log_line), without
    importing logging, which would cost each CGI call about 8 ms. The threads of a process take
    turns; processes append whole lines to the same files.
    """

    def __init__(self):
        self.to_stderr = True
        self.level, self.secrets, self._files = 20, (), []
        self._ready = self._warned = False
        self._turn = _thread.RLock()

    # The methods a logging.Logger has for writing, with its keywords: exc_info=True (or an
    # exception) adds a traceback; others (extra, stack_info, ...) are taken and left unused, for
    # a log line is never worth failing a handler for after its work.

    def debug(self, message, *args, **keywords):
        self._log(10, message, args, keywords)

    def info(self, message, *args, **keywords):
        self._log(20, message, args, keywords)

    def warning(self, message, *args, **keywords):
        self._log(30, message, args, keywords)

    warn = warning

    def error(self, message, *args, **keywords):
        self._log(40, message, args, keywords)

    def critical(self, message, *args, **keywords):
        self._log(50, message, args, keywords)

    def exception(self, message, *args, exc_info=True, **keywords):
        """Log an error with the traceback of the exception being handled."""
        self._log(40, message, args, dict(keywords, exc_info=exc_info))

    def log(self, level, message, *args, **keywords):
        """Log at a level given as logging's numbers (logging.INFO is 20) or by its name."""
        if not isinstance(level, int):
            level = LOG_LEVELS.get(str(level).upper(), 40)      # (one not known: an error, to be seen)
        self._log(level, message, args, keywords)

    def mask(self, text):
        """`text` with every configured secret replaced by [secret]. (It opens no file: `events`,
        `show` and `check` make nothing, not even the data folder, and mask too.)"""
        if not self._ready:
            try:
                self._mask_the_secrets_of(settings())
            except ConfigError:
                pass                        # (those of the settings before stay masked)
        for secret in self.secrets:
            text = text.replace(secret, "[secret]")
        return text

    def after_fork(self):
        """In a process just forked: a lock of its own. Another thread may have held the old one at
        the fork, and that thread is not in this process to let go of it."""
        self._turn = _thread.RLock()

    def reset(self):
        """Forget the setup, so that the next line follows the settings in effect then."""
        with self._turn:
            for file in self._files:
                file.close()
            self._files, self._ready, self._warned = [], False, False

    def _setup(self):
        if not self._ready:                 # (set up, no lock is taken: a forked child masks too)
            with self._turn:
                if not self._ready:
                    self._ready = self._open()

    def _open(self):
        """Take the secrets and the level from the settings, and open the log files. Whether that
        worked: where it did not (the settings are wrong, the data folder cannot be written), the
        next line tries again, so a process that lives on masks and writes as soon as it can."""
        try:
            config = settings()
        except ConfigError:
            # (The error itself is logged, to stderr only.) The secrets of the settings before, a
            # config.ini that was right until it was caught half written, say, stay masked: a
            # handler's error may hold them.
            self._mask_the_secrets_of(_settings)
            return False                    # not set up: the next line tries again
        self.level = LOG_LEVELS[config["LOG_LEVEL"]]
        self._mask_the_secrets_of(config)
        files = []
        try:
            ensure_data_dir(config["DATA_DIR"])
            for name in (LOG_FILE_NAME, ERROR_LOG_FILE_NAME):
                files.append(LogFile(os.path.join(config["DATA_DIR"], name)))
        except (OSError, ValueError, StorageError) as error:
            for file in files:
                file.close()
            if self.to_stderr and not self._warned:
                self._warned = True
                sys.stderr.write("ipn_receiver: cannot write the log file in %s (%s); logging to "
                                 "stderr only. Run `python3 ipn_receiver.py check`.\n" % (config["DATA_DIR"], one_line(
                                     getattr(error, "strerror", None) or str(error) or type(error).__name__)))
            return False
        self._files = files
        return True

    def _mask_the_secrets_of(self, config):
        """Mask the secrets of these settings from now on, as well as those masked before (after a
        change of passphrase, a handler that started before it may still hold the old one)."""
        secrets = set(self.secrets)
        if config is not None:
            secrets.update(form for name in SECRET_SETTINGS if not secret_problem(config, name)
                           for form in secret_forms(config[name]))
        self.secrets = tuple(sorted(secrets, key=len, reverse=True))

    def _log(self, level, message, args, keywords):
        try:
            self._setup()
            if level < self.level:
                return
            if len(args) == 1 and isinstance(args[0], dict) and args[0]:
                args = args[0]              # log.info("%(order)s", {...}), as logging takes it
            try:
                lines = [str(message) % args if args else str(message)]
            except Exception:               # (a line is never lost to its format: at worst, its type)
                try:
                    lines = ["%s %% %s (the message does not fit its arguments)" % (message, repr(args))]
                except Exception:
                    lines = ["a %s message whose text could not be made" % type(message).__name__]
            error = keywords.get("exc_info")        # as logging takes it: True, an exception or
            if isinstance(error, tuple):            # sys.exc_info()'s three
                error = error[1]
            elif error and not isinstance(error, BaseException):
                error = sys.exc_info()[1]
            if isinstance(error, BaseException):
                lines += traceback_lines(error)
            # Masking first, escaping last: after it, each line of the record is one line of the file.
            line = log_line(level, "\n".join(one_line(self.mask(line)) for line in lines), time.time()) + "\n"
            with self._turn:
                for file in self._files[:2 if level >= 40 else 1]:
                    file.write(line)
                if self.to_stderr:
                    sys.stderr.write(line)
                    sys.stderr.flush()
        except Exception:                   # a log line is never worth failing a request for
            pass


log = Log()


# =================================================================================================
#  The notification a handler receives
# =================================================================================================

class Notification:
    """One verified notification: what a handler receives.

    provider   "digistore24" or "promopit"
    event      the event: Digistore24's field "event" ("on_payment", ...), "sale" for PromoPit
    fields     the fields the sender vouched for, a dict of str in the order sent (see
               vouched_fields): no field sent empty, and no secret (sha_sign, SHASIGN, isn_key).
               In a call signed with Digistore24's upper-case-keys variant every key is in lower
               case, since that variant signs keys only up to their case.
    is_test    True for Digistore24's api_mode=test and PromoPit's test_mode=1
    add_info   PromoPit: the buyer's answers to your extra questions, {label: answer} in order
    id         the notification's number in the event store (see `ipn_receiver.py events`)
    key        what makes two deliveries the same notification (see duplicate_key)
    """

    def __init__(self, provider, fields):
        self.provider = provider
        self.fields = fields
        self.id = None
        if provider == PROMOPIT:
            self.event = "sale"
            self.is_test = fields.get("test_mode") == "1"
            self.add_info = promopit_answers(fields)
        else:
            self.event = fields.get("event", "")
            self.is_test = fields.get("api_mode") == "test"
            self.add_info = {}
        self.key = log.mask(duplicate_key(self))     # (a secret in a PromoPit field: see fields_as_stored)

    def copy(self):
        """A copy for the handler: what it changes in it (a field made an int, the event) changes
        nothing of what the receiver goes on to log, record and answer."""
        copy = Notification.__new__(Notification)
        copy.__dict__.update(self.__dict__)
        copy.fields, copy.add_info = dict(self.fields), dict(self.add_info)
        return copy

    def get(self, name, default=""):
        """The field `name`, or `default` when the call has none or sent it empty.

        A name is looked up as written, then in lower case, so "placeholder_TITLE" is found in a
        call signed with the upper-case-keys variant too.
        """
        value = self.fields.get(name)
        if value is None and isinstance(name, str):
            value = self.fields.get(name.translate(_ASCII_LOWER))
        return default if value is None else value

    def __getitem__(self, name):
        value = self.get(name, None)
        if value is None:
            raise KeyError("%s: this %s notification has no field %r (a field sent empty is left out; "
                           "notification.get(%r) returns an empty string for it)" % (self.event, self.provider,
                                                                                    name, name))
        return value

    def __contains__(self, name):
        return self.get(name, None) is not None

    def __iter__(self):
        """The names of the fields, as a dict's: `for name in notification`, dict(notification)."""
        return iter(self.fields)

    def keys(self):
        return self.fields.keys()

    def values(self):
        return self.fields.values()

    def items(self):
        return self.fields.items()

    def __len__(self):
        return len(self.fields)

    @property
    def reference(self):
        """The order or transaction id that names this notification in the log."""
        if self.provider == PROMOPIT:
            return "txn " + shortened(self.get("promopit_txn_id", "-"), 40)
        return "order %s txn %s" % (shortened(self.get("order_id", "-"), 40),
                                    shortened(self.get("transaction_id", "-"), 40))

    def __repr__(self):                     # (escaped: it may be printed, and its text is the sender's)
        return one_line("<Notification %s %s %s>" % (self.provider, self.event, self.reference))


def promopit_answers(fields):
    """PromoPit's add_info_N (question) and add_value_N (answer) pairs, by N: every N sent, since
    a pair sent empty is left out (see vouched_fields). A question asked twice under one label
    keeps its last answer here; notification.fields holds them all."""
    numbers = set()
    for key in fields:
        kind, _, number = key.rpartition("_")
        if kind in ("add_info", "add_value") and is_whole_number(number) and number[0] != "0":
            numbers.add(int(number))        # (written as PromoPit writes numbers: ASCII, no leading 0)
    answers = {}
    for number in sorted(numbers):
        label = fields.get("add_info_%d" % number, "") or "add_info_%d" % number
        answers[label] = fields.get("add_value_%d" % number, "")
    return answers


# =================================================================================================
#  Verification: Digistore24's signature and PromoPit's ISN key
# =================================================================================================

SIGNATURE_FIELDS = ("sha_sign", "SHASIGN")
# What Digistore24 sends as the signature when its IPN connection has no passphrase.
NO_SIGNATURE = "no_signature_passphrase_provided"
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def digistore24_signature(passphrase, fields, upper_keys=False):
    """The sha_sign Digistore24 sends with `fields`: 128 uppercase hex digits (PROTOCOL.md)."""
    # 1. The signature is not part of what it signs.
    if "sha_sign" in fields or "SHASIGN" in fields:
        fields = {key: value for key, value in fields.items() if key not in SIGNATURE_FIELDS}
    # 2. A field whose value is "" is left out, key and all; "0" and " " are values, and nothing
    #    is trimmed.
    items = [item for item in fields.items() if item[1] != ""]
    # 3. Plain byte order, case-sensitive ("ORDER" < "_x" < "order"): sorting str gives exactly
    #    that, because UTF-8 keeps code point order (keys are unique, so values never decide).
    #    The upper-keys variant sorts by the key as PHP's strtoupper makes it (ASCII letters
    #    only: "ß" stays "ß") and breaks ties by the original key, as PHP's array_multisort does.
    if upper_keys:
        ordered = sorted((key.translate(_ASCII_UPPER), key, value) for key, value in items)
        items = [(upper, value) for upper, _, value in ordered]
    else:
        items.sort()
    # 4. The passphrase ends every pair, not only the last, with no separator anywhere: it is
    #    the separator of the "key=value" pairs, and comes once more at the end.
    text = passphrase.join(map("=".join, items)) + passphrase if items else ""
    # 5. SHA-512 of the UTF-8 bytes, as uppercase hex.
    return hashlib.sha512(text.encode("utf-8")).hexdigest().upper()


def digistore24_signature_variant(fields, received, passphrase):
    """Which of Digistore24's signatures `received` is for `fields` under `passphrase`: "exact"
    (the keys as sent), "upper_keys" (the variant that signs upper-cased keys), or None."""
    # 1. An empty passphrase would make the signature something anyone can compute: never accept.
    if not passphrase or not received:
        return None
    # 2. Nor a call with no non-empty field: the passphrase only follows pairs, so with none the
    #    signed text is empty, and its hash, the same for every passphrase, proves nothing.
    if not any(value != "" for key, value in fields.items() if key not in SIGNATURE_FIELDS):
        return None
    # 3. The sender may write the hex digits in either case, in ASCII (str.upper() would also
    #    turn the ligature "\ufb00" into "FF"). Compare bytes: hmac.compare_digest refuses str with
    #    non-ASCII characters, and a forged value may contain any.
    received = received.translate(_ASCII_UPPER).encode("utf-8")
    for variant in ("exact", "upper_keys"):
        expected = digistore24_signature(passphrase, fields, variant == "upper_keys").encode("ascii")
        if hmac.compare_digest(expected, received):
            return variant
    return None


def digistore24_signature_is_valid(fields, received, passphrase):
    """True when `received` is the signature of `fields` under `passphrase`, in either variant."""
    return digistore24_signature_variant(fields, received, passphrase) is not None


def vouched_fields(fields, variant=None):
    """The fields of a verified call as its sender vouched for them: what a handler sees, what is
    stored, and all that decides anything (the event, is_test, which notification it is).

    `variant` is the Digistore24 signature that verified the call; None for PromoPit. A captured
    call may be sent again re-encoded in every way its signature allows; each such copy must give
    the very same fields, or it would count as another notification and run its handler again.
    """
    # 1. An empty field carries nothing: Digistore24 does not sign it, so anyone may add, drop or
    #    rename empty fields. (PromoPit signs nothing; its empty fields are left out alike, so that
    #    padding cannot turn one sale into two.)
    signed = [(key, value) for key, value in fields.items() if value != ""]
    if variant is None:
        return dict(signed)
    # 2. The upper-keys variant signs keys only up to their ASCII case, so the case of a key
    #    carries nothing either: every key is taken in lower case. A call none of whose signed keys
    #    has a lower-case letter reads the same in both variants (its lower-case copy verifies
    #    too), so it is taken the same way.
    if variant == "exact":
        keys = "".join(key for key, _ in signed).encode("utf-8")
        variant = "upper_keys" if keys == keys.upper() else "exact"        # bytes: ASCII only
    vouched = {}
    for key, value in signed:
        # 3. The signed text "key=value" has no escaping: "custom" = "a=b" signs the same as a key
        #    "custom=a" with the value "b". Digistore24's keys never hold "=", so none may.
        if "=" in key:
            raise Refusal(400, "a field name contains \"=\"; Digistore24 never sends one, so this "
                               "call was altered on the way")
        if variant == "upper_keys":
            key = key.translate(_ASCII_LOWER)
            # 4. Two keys that differ only in case would be one key twice: which one counts?
            if key in vouched:
                raise Refusal(400, "two field names differ only in upper and lower case; Digistore24 "
                                   "never sends that, so this call was altered on the way")
        vouched[key] = value
    return vouched


def isn_key_is_valid(received, isn_key):
    """True when PromoPit's isn_key matches the configured one (compared in constant time)."""
    if not isn_key or not received:
        return False
    return hmac.compare_digest(received.encode("utf-8"), isn_key.encode("utf-8"))


# =================================================================================================
#  Reading the request: method, content type, length, body, form fields
# =================================================================================================

class Refusal(Exception):
    """The request cannot be accepted: an HTTP status and an `ERROR: ...` body for the sender."""

    def __init__(self, status, message, logged=None):
        Exception.__init__(self, logged or message)         # (what the log says of it)
        self.status = status
        self.body = "ERROR: " + message


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
TOO_LARGE = "the body is larger than MAX_BODY_BYTES allows; raise MAX_BODY_BYTES if your notifications are this large"
CHUNKED_UNREADABLE = "a POST needs a Content-Length header; this server cannot read a chunked body to its end"
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# A notification has a few hundred fields. A body of a million ("a&a&...") would take 60 MiB and
# half a second to parse, before anything is verified.
MAX_FIELDS = 10000
TOO_MANY_FIELDS = "the body has more than %d fields; a notification has a few hundred" % MAX_FIELDS


def read_body(environ, limit):
    """The request body as bytes; Refusal (411, 413, 400) when it cannot or must not be read."""
    length = environ.get("CONTENT_LENGTH", "").strip(" \t")
    stream = environ["wsgi.input"]
    if length:
        # Only ASCII digits: int() would also take "²", Arabic-Indic digits and "1_0".
        if length.strip("0123456789"):
            raise Refusal(400, "Content-Length is not a whole number of bytes")
        if len(length) > 18 or int(length) > limit:     # refused before a byte of it is read
            raise Refusal(413, TOO_LARGE)
        length = int(length)
        body = read_exactly(stream, length)
        if len(body) < length:
            raise Refusal(400, "the body ended before Content-Length bytes arrived")
        return body
    # No length: a chunked body. Read it only where its end is marked: a server that decodes
    # chunks sets wsgi.input_terminated, and a CGI program's stdin ends with the body. Elsewhere
    # reading would wait forever, or stop early and lose fields.
    if environ.get("wsgi.input_terminated") or environ.get("wsgi.run_once"):
        body = read_exactly(stream, limit + 1)
        if len(body) > limit:
            raise Refusal(413, TOO_LARGE)
        return body
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() and "uwsgi.version" in environ:
        return read_uwsgi_chunks(limit)
    raise Refusal(411, CHUNKED_UNREADABLE)


def read_uwsgi_chunks(limit):
    """A chunked body under uWSGI, which hands it over only through its own API, chunk by chunk.

    That API is the module `uwsgi`, which only the uWSGI server provides, to the processes it runs:
    it is taken from there, never installed or imported from elsewhere.
    """
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        raise Refusal(411, CHUNKED_UNREADABLE)
    parts, size, deadline = [], 0, time.time() + 60
    while True:
        # At most 30 seconds for the next chunk, and a minute for them all: a client sending a
        # byte now and then would otherwise hold a worker for hours.
        wait = int(deadline - time.time())
        if wait < 1:
            raise Refusal(400, "the chunked body took over a minute to arrive; send the whole body at once")
        try:
            part = uwsgi.chunked_read(min(wait, 30))
        except Exception:
            raise Refusal(400, "the chunked body could not be read to its end")
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > limit:
            raise Refusal(413, TOO_LARGE)
        parts.append(part)


def read_exactly(stream, size):
    """Read `size` bytes, fewer only at the end of the stream (a socket may return less per read)."""
    parts, missing = [], size
    try:
        while missing > 0:
            part = stream.read(min(missing, 65536))
            if not part:
                break
            parts.append(part)
            missing -= len(part)
    except Exception:           # whatever the server raises: gunicorn's errors of a malformed chunk are no OSError
        raise Refusal(400, "the body could not be read to its end")
    return b"".join(parts)


def parse_content_type(value):
    """("type/subtype" in lowercase, {parameter: value}) from a Content-Type header (or a
    multipart part's Content-Disposition).

    Only spaces and tabs are stripped, HTTP's whitespace: headers are read as Latin-1, and
    str.strip would also take the bytes 0xa0 and 0x85, which end the UTF-8 of "à" and "Å".
    """
    media_type, _, rest = value.partition(";")
    parameters = {}
    for item in rest.split(";"):
        name, _, item_value = item.partition("=")
        item_value = item_value.strip(" \t")
        if len(item_value) >= 2 and item_value[0] == item_value[-1] == '"':
            item_value = item_value[1:-1]
        if name.strip(" \t"):
            parameters[name.strip(" \t").lower()] = item_value
    return media_type.strip(" \t").lower(), parameters


def parse_urlencoded(body):
    """[(name, value)] as bytes from an application/x-www-form-urlencoded body.

    This stands in for urllib.parse.parse_qsl, whose import costs a CGI call about 4.6 ms, and
    decodes as PHP's $_POST does (what the senders' samples are written against): "+" is a space,
    %XX a byte, a malformed %-escape is kept as it is, a pair without "=" has the value "", and a
    pair with an empty name is dropped (parse_qsl keeps it; PHP drops it). Names are kept as sent,
    where PHP would turn spaces, dots and "[" into "_": Digistore24 signs them as sent.
    tests/test_request.py compares this with both on generated bodies.
    """
    pairs = []
    for item in body.split(b"&"):
        name, _, value = item.partition(b"=")
        name = percent_decode(name)
        if name:
            pairs.append((name, percent_decode(value)))
    return pairs


def percent_decode(data):
    # Escape by escape into one buffer: a piece for each "%" would take 100 MiB for a body of
    # a million, before anything is verified.
    data = data.replace(b"+", b" ")
    out, done, at = bytearray(), 0, data.find(b"%")
    while at >= 0:
        if at + 2 < len(data) and data[at + 1] in _HEX_DIGITS and data[at + 2] in _HEX_DIGITS:
            out += data[done:at]
            out.append(int(data[at + 1:at + 3], 16))
            done = at + 3
        at = data.find(b"%", at + 1)
    return bytes(out + data[done:]) if done else data


def parse_multipart(body, boundary):
    """[(name, value)] as bytes from a multipart/form-data body (no `cgi`: it is gone in 3.13)."""
    if not boundary or len(boundary) > 200:
        raise Refusal(400, "multipart/form-data without a valid boundary parameter")
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    if body.count(delimiter) > MAX_FIELDS + 1:          # (and the closing one)
        raise Refusal(413, TOO_MANY_FIELDS)
    parts = body.split(delimiter)
    pairs = []
    for part in parts[1:]:
        if part.startswith(b"--"):          # the closing delimiter: everything was read
            return pairs
        head, separator, content = part.partition(b"\r\n\r\n")
        if not separator:
            head, separator, content = part.partition(b"\n\n")
        if not separator:
            raise Refusal(400, "a multipart part has no header/content separator")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        name = None
        for line in head.splitlines():
            header, _, value = line.decode("latin-1").partition(":")
            if header.strip(" \t").lower() == "content-disposition":
                name = parse_content_type(value)[1].get("name")
        if not name:
            raise Refusal(400, "a multipart part has no Content-Disposition name")
        pairs.append((name.encode("latin-1"), content))
    raise Refusal(400, "the multipart body is incomplete (no closing boundary)")


def provider_of(pairs):
    """Which sender a form is from, judged by its field names: PromoPit's carry isn_key,
    Digistore24's sha_sign (or SHASIGN) and event. None if neither; Refusal if both."""
    names = {name for name, _ in pairs}
    promopit = b"isn_key" in names
    digistore24 = b"sha_sign" in names or b"SHASIGN" in names
    if promopit and digistore24:
        raise Refusal(400, "the call has both an isn_key and a sha_sign field; PromoPit sends only "
                           "the first and Digistore24 only the second")
    if promopit:
        return PROMOPIT
    if digistore24 or b"event" in names:
        return DIGISTORE24
    return None


def decode_fields(pairs, provider):
    """{name: value} as str, of the fields sent with a value.

    A repeated name keeps its last value, as PHP's $_POST does; then an empty field is left out.
    It carries nothing (see vouched_fields), so it decides nothing either, not even how the rest
    is decoded: an empty field whose name is no UTF-8, added to a PromoPit sale, would otherwise
    turn its "Müller" into "MÃ¼ller", and the sale into another one.
    """
    carried = [(name, value) for name, value in dict(pairs).items() if value]
    try:
        return {name.decode("utf-8"): value.decode("utf-8") for name, value in carried}
    except UnicodeDecodeError:
        if provider != PROMOPIT:
            raise Refusal(400, "the body is not valid UTF-8")
    # PromoPit does not document its charset; old PHP senders use Windows-1252.
    return {decode_windows_1252(name): decode_windows_1252(value) for name, value in carried}


def decode_windows_1252(data):
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        # The five bytes Windows-1252 leaves undefined stand for themselves, as browsers read them.
        return "".join(chr(byte) if byte in b"\x81\x8d\x8f\x90\x9d" else bytes((byte,)).decode("cp1252")
                       for byte in data)


def read_form(environ, limit):
    """(provider, fields) from a POST's body; Refusal for anything that is not a sender's form."""
    media_type, parameters = parse_content_type(environ.get("CONTENT_TYPE", ""))
    if media_type not in FORM_TYPES:
        raise Refusal(415, "unsupported content type; send application/x-www-form-urlencoded or "
                           "multipart/form-data")
    body = read_body(environ, limit)
    if not body.strip():
        raise Refusal(400, "the body is empty; expected the form fields of a notification")
    if media_type == FORM_TYPES[0]:
        if body.count(b"&") >= MAX_FIELDS:
            raise Refusal(413, TOO_MANY_FIELDS)
        pairs = parse_urlencoded(body)
    else:
        pairs = parse_multipart(body, parameters.get("boundary", ""))
    # An empty field carries nothing (see decode_fields), so it cannot make a call one that names
    # both senders. Where no field with a value names either, an empty isn_key or sha_sign still
    # says whose call it was meant to be, for the answer: it is refused as unsigned.
    provider = provider_of([(name, value) for name, value in dict(pairs).items() if value]) or provider_of(pairs)
    if provider is None:
        raise Refusal(400, "not a Digistore24 or PromoPit notification (it has no sha_sign, event or "
                           "isn_key field); register this URL only with Digistore24 and PromoPit")
    return provider, decode_fields(pairs, provider)


# =================================================================================================
#  The event store: every verified notification, durably, before the answer
# =================================================================================================
# One SQLite file, DATA_DIR/events.sqlite3, one row per distinct notification. A notification is
# claimed (inserted as "processing") in one write transaction, its handler runs, it becomes "done"
# with the answer that was sent, and only then does the sender get OK. The UNIQUE duplicate key
# lets the database, not a read-then-write, decide which of two simultaneous copies runs.

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id            INTEGER PRIMARY KEY,
    received_at   REAL NOT NULL,            -- Unix time of the first delivery
    provider      TEXT NOT NULL,
    event         TEXT NOT NULL,
    duplicate_key TEXT NOT NULL UNIQUE,     -- what makes two deliveries the same notification
    is_test       INTEGER NOT NULL,
    status        TEXT NOT NULL,            -- one of STATUSES
    attempts      INTEGER NOT NULL,         -- handler runs started
    deliveries    INTEGER NOT NULL,         -- how often it arrived (retries included)
    last_error    TEXT,                     -- one line, no traceback
    answer        TEXT,                     -- the body sent for it; a copy gets the same
    claim         TEXT,                     -- who runs the handler now (status processing)
    claimed_at    REAL,                     -- when that run started
    updated_at    REAL NOT NULL,
    fields        TEXT NOT NULL             -- JSON object: the vouched fields (no empty one, no secret)
)"""
# The duplicate keys are indexed twice, in two trees of their own: one flipped bit in a page of
# one (its count of entries, say) hides the keys on it, and where they decided alone, every copy
# of those notifications would run its handler again. The other still holds them; where the two
# disagree, that is damage (row_of_key).
KEY_INDEXES = ("sqlite_autoindex_notifications_1", "duplicate_keys")     # the first made by UNIQUE
SECOND_KEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS duplicate_keys ON notifications (duplicate_key)"
STATUSES = ("processing", "done", "failed", "ignored", "unknown")     # unknown: salvaged without its status
# (fields, the long one, comes last: a damaged page in the middle of it leaves the others readable.
# Stores made by version 1.0.0 have it in the middle; every query names its columns.)
BUSY_TIMEOUT_SECONDS = 30       # how long SQLite waits for another connection's write to finish
RETRY_PAUSE_SECONDS = 60        # a failed handler runs again for a copy that comes this long after, or later;
                                # twice as long after each failure after the first, an hour at most
LOCK_TIMEOUT_SECONDS = 10       # how long a call waits for the store lock; then 503, and a retry
OUTCOME_LOCK_TIMEOUT_SECONDS = 50   # how long a handler's outcome waits for it: the work is done, and
                                    # giving up would let a retry do it again (Apache ends a CGI call
                                    # after its Timeout, 60 s by default)
STORAGE_ERROR = ("ERROR: storage unavailable: the receiver could not write its event store; run "
                 "`python3 ipn_receiver.py check` on the server (the reason is in ipn_receiver.log, or in "
                 "the web server's error log where the data folder cannot be written)")
STORE_BUSY = ("ERROR: the event store is busy: another process has held it too long; the sender retries "
              "later, and if this repeats, run `python3 ipn_receiver.py check` on the server")
OUTCOME_NOT_STORED = (
    "ERROR: the handler of notification #%d %s, but the receiver could not record that (the event store was busy "
    "or could not be written); a retry after PROCESSING_TIMEOUT runs it again. Run `python3 ipn_receiver.py check` "
    "on the server; the reason is in ipn_receiver.log")
_HTACCESS = """# Written by ipn_receiver: nothing in this folder may be served on the web.
<IfModule mod_authz_core.c>
    Require all denied
</IfModule>
<IfModule !mod_authz_core.c>
    Order deny,allow
    Deny from all
</IfModule>
"""

_connections = {}    # (process id, thread id) -> (connection, (inode, device) of the file)
_store_files = {}    # (device, inode) -> a descriptor never closed: read_store_file


class StorageError(Exception):
    """The store cannot be opened or written; the call gets 503 and the sender retries."""


class StoreBusy(StorageError):
    """The store lock was not free within LOCK_TIMEOUT_SECONDS."""


def ensure_data_dir(path):
    """Create the data folder (0700) with an .htaccess that denies web access, if missing."""
    controlled = hasattr(os, "geteuid") and folder_others_control(path)
    if controlled:
        raise StorageError("another user of this server could change %s, and so move the data folder %s away or put "
                           "another in its place: %s" % (controlled, path, out_of_others_reach(controlled)))
    if not os.path.isdir(path):
        make_private_folders(path)
    found = os.stat(path)
    if hasattr(os, "geteuid") and found.st_uid != os.geteuid():
        # Made by another user, in /tmp say, before the first call: that user could read every
        # buyer's data, plant answers, or delete the store, and every handler would run again.
        raise StorageError("the data folder %s belongs to %s, not to %s, who runs the receiver: where it holds the "
                           "receiver's store and was given away by mistake, give it back (chown -R %d %s, or ask your "
                           "host to: a folder of your own would start an empty store); else set "
                           "DATA_DIR to a folder of %s's own, outside the web root (`python3 ipn_receiver.py check`)" % (
                               path, user_name(found.st_uid), user_name(os.geteuid()), os.geteuid(), quoted(path),
                               user_name(os.geteuid())))
    htaccess = os.path.join(path, ".htaccess")
    denied = denies_the_web(htaccess)
    problem = None if denied else others_files_problem(path)
    if problem:
        # A site's (its rewrite rules, its images): no .htaccess written there, which would take
        # the site's files off the web, no chmod, which would too, and nothing stored beside them.
        raise StorageError(problem)
    if hasattr(os, "geteuid") and found.st_mode & 0o077:
        # Opened to others (chmod 755 to look at the log, say), the folder would let them read
        # every buyer's data, and write to a file whose mode lets them: plant answers in the store.
        os.chmod(path, 0o700)
        sys.stderr.write("ipn_receiver: the data folder %s had mode %03o, which let other users in; set back to 700\n"
                         % (path, found.st_mode & 0o777))
    if not denied:
        # Written whole under another name, then renamed: a full disk must not leave an empty
        # .htaccess, which would deny nothing and never be written again. The name is this
        # thread's own: the threads of a WSGI server may all be writing it at once.
        partial = "%s.%d-%d.tmp" % (htaccess, os.getpid(), _thread.get_ident())
        try:
            with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w") as file:
                file.write(_HTACCESS)
            os.replace(partial, htaccess)
        finally:
            if os.path.exists(partial):
                os.remove(partial)


def make_private_folders(path):
    """Make the folder `path`, and each one missing on the way to it, with mode 0700: not as the
    umask (000 on some hosts) or a parent's default ACL would have them, which could let others in,
    and the receiver would then refuse the folders it made itself (folder_others_control)."""
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        make_private_folders(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if os.path.isdir(path):                 # (made this moment by another call, or a trailing /)
            return
        raise                                   # a file by that name
    os.chmod(path, 0o700)                       # (the mode the umask took bits from; an ACL's mask)


def folder_identity(path):
    """(device, inode) of the folder at `path` where it is there and this user's own, else None:
    a folder that was made anew, by whoever, has another."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    if hasattr(os, "geteuid") and found.st_uid != os.geteuid():
        return None
    return found.st_dev, found.st_ino


def trusted_users():
    """The users whose folders the data folder may be in: this one, root and the script's owner."""
    trusted = {os.geteuid(), 0}
    try:
        trusted.add(os.stat(os.path.abspath(__file__)).st_uid)
    except OSError:                             # renamed or being replaced this moment (an upload)
        pass
    return trusted


def folder_others_control(path):
    """The first of the folder `path` and the folders on the way to it (through every link on the
    way, and where each leads) that a user other than this one, root and the script's owner could
    change: one (or a link) that belongs to such a user, or that such a user may write to
    (others_may) and that is not sticky, as /tmp is, where only a folder's owner may move
    it. The data folder itself counts even where sticky: others could put files into it. None
    where there is none.

    In such a folder that user could move the data folder away, and every handler would run again
    in a new store, or swap in one of their own, with answers planted for sales to come.
    """
    import stat
    trusted = trusted_users()
    itself = (os.path.abspath(path), os.path.realpath(path))
    for folder in sorted(folders_on_the_way(path)):     # from the top down
        try:
            found = os.lstat(folder)
        except OSError:
            continue                            # not made yet
        # (A link's mode means nothing; its folder's does.)
        shared = not stat.S_ISLNK(found.st_mode) and others_may(stat.S_IWOTH, folder, found, trusted) and (
            folder in itself or not found.st_mode & stat.S_ISVTX)
        if found.st_uid not in trusted or shared:
            return folder
    return None


def out_of_others_reach(folder):
    """How to take `folder` (folder_others_control's) out of other users' reach: where it is this
    user's, and only its mode lets them in, by its mode. Else the data folder moves, its store with
    it: in a new, empty one every notification handled before would run its handler again."""
    if os.lstat(folder).st_uid == os.geteuid() and not os.path.islink(folder) and not is_shared(folder):
        return "chmod go-w %s (or 700, where it is the data folder)" % quoted(folder)
    return ("set DATA_DIR to a folder in your home folder, outside the web root, and move the store's files into it "
            "(events.sqlite3, and its -wal and -shm files if any) with no call running: `check` says how")


def is_shared(folder):
    """Whether `folder` is open to all by design, as /tmp is (sticky, so that each may remove only
    their own): check, run as root, must never tell anyone to close it."""
    import stat
    found = os.lstat(folder)
    return stat.S_ISDIR(found.st_mode) and bool(found.st_mode & stat.S_ISVTX)


def out_of_others_reach_for_a_command(path):
    """check's fix for a config file, or a folder on its way, that another user could change.
    Where it is that user's, it may be the web server's, and check runs as the vendor (cgi-bin
    under Apache without suEXEC): then check runs as the wrong user, and chown would break the
    receiver. (None where it is gone since.)"""
    try:
        owner = os.lstat(path).st_uid
    except OSError:
        return None
    if owner == os.geteuid() and not is_shared(path):   # (a link of this user's is never others' to change)
        return ("chmod 600 %s" if os.path.isfile(path) else "chmod go-w %s") % quoted(path)
    if owner == os.geteuid():
        return "keep the config file in a folder of your own, chmod 600 (%s is open to all by design)" % quoted(path)
    name = user_name(owner)
    return ("%s belongs to %s, and check runs as %s: if %s is the user the web server runs the receiver as, run "
            "check as %s (%s); else keep the config file in a folder of that user's own, chmod 600"
            % (path, name, user_name(os.geteuid()), name, name, command_line_as(name, "check")))


def folders_on_the_way(path, links=40):
    """Every folder (and link) that reaching `path` goes through, resolved as the system resolves
    it: at each link, on from where it leads; a ".." after one goes up from there."""
    folders, current = {os.sep}, os.sep
    # (The working folder only for a relative path: in a process that lives on, it may have been
    # deleted, and os.getcwd() would fail every call.)
    parts = (path if os.path.isabs(path) else os.path.join(os.getcwd(), path)).split(os.sep)
    for number, part in enumerate(parts):
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        step = os.path.join(current, part)
        folders.add(step)
        if links and os.path.islink(step):
            leads_to = os.path.join(current, os.readlink(step), *parts[number + 1:])
            return folders | folders_on_the_way(leads_to, links - 1)
        current = step
    return folders


def others_may(access, path, found, trusted):
    """Whether a user not `trusted` may write to (`access` stat.S_IWOTH) or read (S_IROTH) the file
    or folder `path` (`found`: its lstat): every user, the members of its group, or users and
    groups that an ACL (Linux) names."""
    if found.st_mode & access:
        return True
    try:
        acl = os.getxattr(path, "system.posix_acl_access", follow_symlinks=False)
    except (AttributeError, OSError):           # (no getxattr on this system, or no ACL)
        return bool(found.st_mode & access << 3) and not users_of_group(found.st_gid) <= trusted
    import struct
    # An ACL: a version, then (tag, permissions, id) entries; a user's (2), a group's (8) and the
    # file's group's (4) have access as far as the mask (16) lets them.
    entries = list(struct.iter_unpack("<HHI", acl[4:]))
    mask = min([permissions for tag, permissions, _ in entries if tag == 16] or [7])
    for tag, permissions, number in entries:
        if permissions & mask & access and (tag == 2 and number not in trusted or tag in (4, 8) and not users_of_group(
                found.st_gid if tag == 4 else number) <= trusted):
            return True
    return False


def users_of_group(gid):
    """The ids of the users in the group `gid`: those it names, and those whose own (primary) group
    it is. Where it is a user's own group, named as that user (as most systems make one for each
    user, and umask 002 lets write to every new folder), that user is taken for the only one whose
    own group it is; else every account is looked at (`users`, on some systems, is everyone's)."""
    import grp
    import pwd
    try:
        group = grp.getgrgid(gid)
        name, members = group.gr_name, group.gr_mem
    except KeyError:                            # (no name, no members named: those whose own it is)
        name, members = None, []
    try:
        own = pwd.getpwnam(name) if name else None
    except KeyError:
        own = None
    if own is not None and own.pw_gid == gid:
        users = {own.pw_uid}
    else:
        users = {user.pw_uid for user in pwd.getpwall() if user.pw_gid == gid}
    for name in members:
        try:
            users.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            users.add(name)                     # a member with no account here: trusted under no id
    return users


def others_files_problem(path):
    """What is wrong with a data folder that holds what the receiver did not write, and how to fix
    it; None where it holds nothing else. That is an .htaccess (is_anothers), or any file not named
    as the receiver names its own, but for settings (*.ini: a private data folder is a good place
    for config.ini). Where the receiver's store is there, the files go; else the folder is a site's,
    and the receiver another."""
    ours = (STORE_FILE_NAME, LOG_FILE_NAME, ERROR_LOG_FILE_NAME, ".lock", ".htaccess")
    names = [".htaccess"] * is_anothers(os.path.join(path, ".htaccess")) + sorted(
        name for name in os.listdir(path) if not name.startswith(ours) and not name.endswith(".ini"))
    if not names:
        return None
    return "the data folder %s holds what the receiver did not write (%s), and no .htaccess that denies the web: %s" % (
        path, one_line(shortened(", ".join(names), 200)), "move them out of it; the receiver then writes its .htaccess"
        if os.path.exists(os.path.join(path, STORE_FILE_NAME)) or store_was_made(path) else
        "set DATA_DIR to a folder of its own, outside the web root (a site's files are left alone)")


def is_anothers(htaccess):
    """Whether there is an .htaccess at that path that the receiver did not write: one that holds
    anything, and does not start with the receiver's first line, or anything else than a file (a
    folder, a FIFO) by that name. (One left empty by a full disk, or that cannot be read, is not:
    it is written anew.)"""
    if os.path.exists(htaccess) and not os.path.isfile(htaccess):
        return True
    try:
        with open(htaccess, "rb") as file:
            first = file.readline()
    except OSError:
        return False
    return first != b"" and not first.startswith(_HTACCESS.split("\n")[0].encode("ascii"))


_APACHE_SPACES = {9: " ", 11: " ", 12: " ", 13: " ", 34: ""}   # tab, VT, FF, CR: spaces; quotes: gone
# All that an .htaccess may hold for the receiver to store beside it, each line as Apache reads it
# (the case of its words and the spaces between them aside), with comments and empty lines.
DENYING_LINES = ("require all denied", "deny from all", "order deny,allow", "order allow,deny", "options -indexes",
                 "<ifmodule mod_authz_core.c>", "<ifmodule authz_core_module>", "<ifmodule !mod_authz_core.c>",
                 "<ifmodule !authz_core_module>", "</ifmodule>")


def denies_the_web(htaccess):
    """Whether the .htaccess at that path is there and denies the web every file in its folder, as
    the one this file writes does.

    Trusted only where it is plain. A site's own .htaccess (DATA_DIR naming a folder of the site)
    may deny only some files (`Require all denied` inside <Files wp-config.php>), or only where a
    module is loaded (the Apache 2.2 form inside <IfModule !mod_authz_core.c>, which 2.4 skips),
    or let someone in again (another Require, an ErrorDocument), or hold the words in a comment
    that Apache carries on into the next line (a line ending in a backslash); and the store and
    the log beside it would be served. Rather than follow Apache into every such corner, only a
    file of DENYING_LINES, comments and empty lines counts, and only with a deny outside every
    section but <IfModule mod_authz_core.c>, which Apache 2.4 always reads. Its lines are
    Apache's: ended by a line feed only.
    """
    if not os.path.isfile(htaccess):        # (a folder, or a FIFO, which would block the open)
        return False
    try:
        with open(htaccess, encoding="utf-8-sig", errors="replace", newline="") as file:    # (line ends kept)
            lines = file.read().split("\n")
    except OSError:
        return False
    sections, denied = [], False
    for line in lines:
        line = line.rstrip(" \t\r\v\f")
        directive = " ".join(word for word in line.translate(_APACHE_SPACES).lower().split(" ") if word)
        if line.endswith("\\"):
            return False                    # carried on into the next line (a comment too): not plain
        if not directive or directive.startswith("#"):
            continue
        if directive not in DENYING_LINES:
            return False
        if directive.startswith("</"):
            sections = sections[:-1]
        elif directive.startswith("<"):
            sections.append(directive)
        elif directive in ("require all denied", "deny from all"):
            denied = denied or all(section in DENYING_LINES[5:7] for section in sections)
    return denied


class StoreLock:
    """An exclusive lock on DATA_DIR/.lock, held for every write to the store.

    SQLite serializes writers by itself, but a writer that finds the store busy polls it,
    sleeping 1, 2, 5, 10, ... ms between tries, so a moment of contention can cost a call 50 ms
    and more. A writer waiting for this lock tries again every 0.1 ms. The lock also guards
    the rare operations on the store as a whole (creating, migrating, setting a damaged one
    aside), and a thread that holds it may take it again: those call each other.

    A process that holds the lock too long (frozen, stopped, or salvaging a large damaged store)
    makes the others wait LOCK_TIMEOUT_SECONDS at most: then StoreBusy, a 503, and the sender
    retries later. Where the lock cannot be taken at all (no fcntl, a file system without
    locks), SQLite's locking, which alone keeps the store correct, does the work.
    """

    held = {}       # (lock file, thread id) -> how deep this thread holds it
    files = {}      # (lock file, thread id) -> the descriptor it holds the lock with, or waits for it on
    # Held while a descriptor is opened or closed together with its line in `files`: a fork waits
    # for it, so that a child never gets a copy of one that `files` does not list.
    bookkeeping = _thread.allocate_lock()

    def __init__(self, data_dir, seconds=None):
        self.key = (os.path.normpath(os.path.join(data_dir, ".lock")), _thread.get_ident())
        self.seconds = LOCK_TIMEOUT_SECONDS if seconds is None else seconds

    def __enter__(self):
        depth = StoreLock.held.get(self.key, 0)
        if depth == 0:
            # Listed before it waits: a thread waiting for the lock when another forks gets it on
            # a descriptor the child has a copy of, and would keep it for as long as the child lived.
            with StoreLock.bookkeeping:
                self.fd = os.open(self.key[0], os.O_RDWR | os.O_CREAT, 0o600)
                StoreLock.files[self.key] = self.fd
            try:
                lock_within(self.fd, self.seconds)
            except BaseException:
                self.let_go()
                raise
        StoreLock.held[self.key] = depth + 1
        return self

    def __exit__(self, *exc):
        StoreLock.held[self.key] -= 1
        if StoreLock.held[self.key] == 0:
            del StoreLock.held[self.key]
            self.let_go()

    def let_go(self):
        with StoreLock.bookkeeping:
            del StoreLock.files[self.key]
            try:
                import fcntl
                # Let go of it first: closing alone does not where a process forked meanwhile (a
                # handler's, under a threaded server) has a copy: Python 3.6 cannot close it there.
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            except (ImportError, OSError):  # (no fcntl, or a file system without locks)
                pass
            os.close(self.fd)

    @staticmethod
    def let_go_in_child():
        """In a process just forked: close the copies of the lock files that other threads held, or
        waited for, at the fork. The lock lasts while any copy is open, so a child (a handler's,
        under a threaded server) would hold the store for as long as it lived, and every call would
        get 503."""
        StoreLock.bookkeeping.release()
        for key, fd in list(StoreLock.files.items()):
            if key[1] != _thread.get_ident():
                os.close(fd)
                del StoreLock.files[key]
                StoreLock.held.pop(key, None)


if hasattr(os, "register_at_fork"):         # Python 3.7 and later; 3.6 has no way to do it
    os.register_at_fork(before=StoreLock.bookkeeping.acquire,  # novermin (3.7+, guarded above)
                        after_in_parent=StoreLock.bookkeeping.release, after_in_child=StoreLock.let_go_in_child)
    os.register_at_fork(after_in_child=log.after_fork)     # novermin: a forked child may log


def lock_within(fd, seconds):
    """Take an exclusive flock on `fd`, trying again and again; StoreBusy after `seconds`.

    A call holds the lock for a fraction of a millisecond, so a waiter tries again every 0.1 ms
    (under gunicorn with two workers that alone took 600 calls a second to 900 and more, against
    a try every millisecond; a blocking flock made 760). One that has waited 50 ms is waiting for
    something longer (a salvage, a stuck process) and tries every millisecond, to spare the CPU.
    (A blocking flock cannot be given a timeout that works in every thread of a WSGI server.)
    """
    try:
        import fcntl
    except ImportError:
        return
    started = time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            waited = time.monotonic() - started
            if waited > seconds:
                raise StoreBusy("the store lock was held by another process for more than %d s; if this "
                                "repeats, look for a stuck process" % seconds)
            time.sleep(0.0001 if waited < 0.05 else 0.001)
        except OSError:
            return                          # a file system without locks


def store_path(config):
    return os.path.join(config["DATA_DIR"], STORE_FILE_NAME)


def sqlite3_module():
    """The sqlite3 module for the store: its C core `_sqlite3`, which is all the store uses.

    The sqlite3 package adds only adapters for dates and the like, and importing their modules
    costs each CGI call about 1 ms. The classes are the very same (sqlite3.Error is
    _sqlite3.Error), so code elsewhere may use either. Where the core cannot be imported on its
    own, the package.
    """
    try:
        import _sqlite3
        return _sqlite3
    except ImportError:
        import sqlite3
        return sqlite3


def open_store(config, create=True):
    """A connection to the event store, created on first use (unless not `create`); StorageError
    when impossible.

    A long-running process keeps one connection per thread; it opens a new one when the file was
    replaced or deleted in the meantime, so nothing is ever written to a file nobody can see.
    """
    sqlite3 = sqlite3_module()
    path = store_path(config)
    key = (os.getpid(), _thread.get_ident())
    try:
        try:
            on_disk = os.stat(path)
        except FileNotFoundError:
            on_disk = None
        if on_disk is not None and key in _connections:
            connection, identity = _connections[key]
            if identity == (on_disk.st_ino, on_disk.st_dev):
                return connection
        close_store(key)
        if on_disk is None and not create:
            raise StorageError("the event store %s is gone (moved or deleted while a handler ran); the handler's "
                               "outcome is not recorded elsewhere" % path)
        if on_disk is None:
            # Only here: a call makes sure of the data folder before each write, and a command
            # that only reads (events, show, check) makes nothing.
            ensure_data_dir(config["DATA_DIR"])
            create_store_file(path, config["DATA_DIR"])
            on_disk = os.stat(path)
        missing = cut_short(path)           # (SQLite notices it only where it reads past the end)
        if missing:
            raise StorageError(CUT_SHORT_STORE % (path, missing))
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            # FULL: a commit is on disk before it returns, so OK is never sent for a lost record.
            connection.execute("PRAGMA synchronous=FULL")
            # Commits go into the -wal file first, and into the store's own file at a checkpoint:
            # by default once the -wal holds 1,000 pages, which a WSGI worker, never closing its
            # connection, reaches after about 300 calls. Until then the store's file alone (a
            # backup, a -wal deleted for a temporary file) would lack them, and a bit flipped in
            # the -wal would drop them silently. At 8 pages, about the last three calls (and
            # no measurable cost). A CGI call's last connection checkpoints all as it closes.
            connection.execute("PRAGMA wal_autocheckpoint=8")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(NEWER_SCHEMA % version)
            if version == 0:                    # (create_store_file never leaves one so)
                raise sqlite3.DatabaseError("database disk image is malformed: it holds no schema (emptied or cut "
                                            "short, or its schema number damaged)")
            # Migrated by the user the data folder belongs to alone (a call): a command run as
            # another user (root) would make the lock file and the journal theirs, and every call
            # would fail. It reads the store as it is (schema_problem knows each version's shape).
            if version < SCHEMA_VERSION and not (hasattr(os, "geteuid") and
                                                 os.stat(config["DATA_DIR"]).st_uid != os.geteuid()):
                with StoreLock(config["DATA_DIR"]):     # one process migrates, the others wait
                    migrate_store(connection)
            problem = schema_problem(connection)
            if problem:
                raise StorageError(DAMAGED_SCHEMA % (path, problem))
            if not store_was_made(config["DATA_DIR"]):
                mark_store_made(config["DATA_DIR"])
        except Exception:
            connection.close()
            raise
        _connections[key] = (connection, (on_disk.st_ino, on_disk.st_dev))
        return connection
    except (OSError, sqlite3.Error, UnicodeDecodeError) as error:
        raise StorageError(describe_storage_error(error, path))


def schema_problem(connection, indexes=None):
    """What is wrong with the shape of the store's table, or None. `indexes`: the indexes of the
    duplicate keys it must have, by default those of its schema number (schema 1 had the first
    alone); a salvage needs the first alone, whatever that number says (one flipped bit in it).

    Its schema is kept as text in the file, and one flipped bit there (PRIMARY read as QRIMARY, a
    line break as another character that makes a column part of a comment) passes SQLite's
    integrity check, yet every id reads as NULL, or a column is gone: answers and outcomes would
    go to no row, and handlers run again. Checked by shape, not text: the text of the schema has
    changed between versions of the receiver (its comments, the order of the columns).
    """
    columns = {row[1]: row for row in connection.execute("PRAGMA table_info(notifications)")}
    if set(columns) != set(STORE_COLUMNS):
        return "its columns are not those of the receiver's table"
    if columns["id"][2].upper() != "INTEGER" or columns["id"][5] != 1:
        return "its id is not the table's INTEGER PRIMARY KEY"
    unique = [row[1] for row in connection.execute("PRAGMA index_list(notifications)") if row[2]]
    if indexes is None:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        indexes = KEY_INDEXES if version >= 2 else KEY_INDEXES[:1]
    for name in indexes:
        if name not in unique or [row[2] for row in connection.execute('PRAGMA index_info("%s")' % name)] != [
                "duplicate_key"]:
            return "its duplicate keys are not UNIQUE in their indexes"
    return None


DAMAGED_SCHEMA = (
    "event store %s: its schema is damaged (%s), so its rows cannot be told apart, and it was left as it was; "
    "recover it by hand (sqlite3 events.sqlite3 .recover), or start an empty one with "
    "`python3 ipn_receiver.py repair --force`")


NEWER_SCHEMA = (
    "the event store says it was written by a newer ipn_receiver (schema %d): upload that one again; if you never "
    "had one, that number is damaged, and `python3 ipn_receiver.py repair --force` sets the store aside and starts "
    "a new one with every row that can be read")


def create_store_file(path, data_dir):
    """Create the store, its schema and all, with mode 0600 (SQLite would make it readable by all).

    It is made whole under another name and renamed into place: so the receiver never leaves a
    store without its schema (a process ended halfway leaves the other name), and one found so,
    empty, is one that was emptied or cut short (an upload that stopped before it began), which
    open_store refuses as damaged rather than starting anew in it, and running every handler again.
    """
    with StoreLock(data_dir):             # so that no one uses the file before it is clean
        if os.path.exists(path) or finish_interrupted_swap(path):
            return
        if store_was_made(data_dir):
            raise StorageError(STORE_GONE % path)
        # A journal left behind by a deleted store would be replayed into the new one. It goes
        # first: once the file exists, other processes may already be using new journal files.
        remove_store_files(path)
        making = path + ".new"
        remove_store_files(making)              # what a process that died here left
        os.close(os.open(making, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        connection = sqlite3_module().connect(making, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            connection.execute("PRAGMA synchronous=FULL")
            migrate_store(connection)
        finally:
            connection.close()                  # (its journal goes into the file)
        os.replace(making, path)
        # Its name durable in the folder before its first rows: else, after a power cut, the
        # store could be gone while the journal holding those rows is not, and the next call,
        # making the store anew, would remove that journal as one left behind.
        sync_folder(data_dir)


def store_was_made(data_dir):
    """Whether a store was made in the data folder: its lock file says so from then on."""
    try:
        return os.path.getsize(os.path.join(data_dir, ".lock")) > 0
    except OSError:
        return False


def mark_store_made(data_dir):
    """Write into the data folder's lock file that a store was made there. Without the store, a
    call then gets 503 rather than a new store (STORE_GONE)."""
    try:
        with open(os.path.join(data_dir, ".lock"), "r+b") as file:     # (none made: it would be this user's)
            file.write(b"a store was made in this folder\n")
    except OSError:
        pass


STORE_GONE = (
    "the event store %s is gone from the data folder it was made in (deleted, moved, or not there yet where a copy "
    "or an upload of the folder stopped halfway): a new one would run every notification handled before again, "
    "so calls get 503 until you put it back (with its -wal file, where there is one), or start a new one with "
    "`python3 ipn_receiver.py repair --force`")


def migrate_store(connection):
    """Bring the schema to SCHEMA_VERSION (create it in a new store)."""
    # WAL lets the readers of `events` and `check` run while calls are written; it is a property
    # of the file, set once. It cannot work on some network file systems; then the default
    # rollback journal stays, which is as safe, only slower under load.
    set_wal_mode(connection)
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(NEWER_SCHEMA % version)
        if version < 1:
            connection.execute(SCHEMA)
        if version < 2:
            try:
                connection.execute(SECOND_KEY_INDEX)
            except sqlite3_module().IntegrityError:
                # Two rows with one key: the first index lost some (a flipped bit) while the
                # receiver before schema 2 wrote. Damage: the salvage keeps the first of them.
                raise sqlite3_module().DatabaseError("database disk image is malformed: two rows hold one "
                                                     "duplicate key")
        # Later schema changes go here: `if version < 3: ALTER TABLE ...`.
        connection.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def set_wal_mode(connection):
    """PRAGMA journal_mode=WAL, retried while other processes hold the file: SQLite answers that
    pragma "database is locked" at once, without waiting its busy timeout as other statements do."""
    sqlite3 = sqlite3_module()
    deadline = time.time() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            return connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.time() > deadline:
                raise
            time.sleep(0.005)


def close_store(key=None):
    """Close this thread's store connection (or all of this process's, with no key)."""
    keys = [key] if key is not None else [k for k in _connections if k[0] == os.getpid()]
    for k in keys:
        connection, _ = _connections.pop(k, (None, None))
        if connection is not None:
            try:
                connection.close()
            except Exception:
                pass


def describe_storage_error(error, path):
    """One line for the log: what went wrong with the store and how to fix it."""
    text = getattr(error, "strerror", None) or error_text(error)
    words = text.lower()
    hint = "check that the data folder exists, is writable by the web server's user and the disk is not full"
    if "read-only file system" in words:
        hint = "the file system is mounted read-only, as a host does with a disk that fails: ask your host"
    elif "readonly" in words or "permission" in words:
        hint = ("make the data folder and events.sqlite3 (and its -wal and -shm files, where there are any) writable "
                "by the web server's user")
    elif "full" in words or "no space" in words:
        hint = "free disk space"
    elif "locked" in words or "busy" in words:
        hint = "another process held the store longer than %d s" % BUSY_TIMEOUT_SECONDS
    elif store_is_damaged(error):
        hint = "the file is damaged: run `python3 ipn_receiver.py repair` (it keeps every row that can be read)"
    # (The file it names where it has one: the lock file, say, not the store.)
    return "event store %s: %s; %s" % (getattr(error, "filename", None) or path, text, hint)


def store_is_damaged(error):
    """True for SQLite's "malformed" and "not a database": the file itself is broken; and for text
    in it that is not UTF-8 (not_utf8)."""
    text = str(error).lower()
    return "malformed" in text or "not a database" in text or not_utf8(error)


def not_utf8(error):
    """Whether `error` says that text in the store is not UTF-8: a flipped bit in a row's text
    (sqlite3 cannot decode it), or in a name in its schema (nor SQLite's message that names it:
    UnicodeDecodeError from Python 3.11 on, a DatabaseError with no message before)."""
    return isinstance(error, UnicodeDecodeError) or "could not decode to utf-8" in str(error).lower() or (
        isinstance(error, sqlite3_module().DatabaseError) and not str(error))


def error_text(error):
    """str(error), but for text that is not UTF-8: sqlite3's message quotes the row's text, which
    may be a buyer's access data, and no log line or output may hold that."""
    return "database disk image is malformed: text in it is not UTF-8" if not_utf8(error) else str(error)


def write_to_store(config, write, lock_seconds=None, claimed_in=None, create=True):
    """Run write(connection) on the live store, under the store lock (waiting for it `lock_seconds`,
    LOCK_TIMEOUT_SECONDS by default), and return what it returns.

    The connection is taken under the lock, so it is to the store's file as it is now, never to
    one that a repair or another call's recovery has just set aside: what is written is in the
    live store. If the store turns out to be damaged, it is set aside, and `write` runs once more
    on the new one.

    A handler's outcome gives `claimed_in`, the folder_identity of the data folder its claim went
    into. In that very folder, the outcome is written whatever has become of it meanwhile (a chmod,
    the script renamed for an upload): turned away, the handler would run again. Any other folder
    (one made anew, by whoever, or another DATA_DIR) must pass ensure_data_dir first: in /tmp,
    say, another user could have made it, with a store in it whose answers they wrote. Where the
    store is gone, one is made only if `create`.
    """
    data_dir = config["DATA_DIR"]
    if claimed_in is None or claimed_in != folder_identity(data_dir):
        if create or os.path.isdir(data_dir):
            ensure_data_dir(data_dir)
    with StoreLock(config["DATA_DIR"], lock_seconds):
        try:
            return write(open_store(config, create))
        except Exception as error:
            if not store_is_damaged(error):
                raise
            damage = error_text(error)
        return write(set_damaged_store_aside(config, damage))


def set_damaged_store_aside(config, reason, start_empty=False):
    """Put a new store, holding every row still readable, in place of a damaged one, which is kept
    beside it (never deleted). Returns a connection to the new store.

    The new store is filled first, under another name, and put in place only once it holds all
    that could be salvaged. If that fails (a full disk, say), the damaged store stays where it was
    and the call gets 503: a store emptied by a failed repair would let every handler run again.
    Once filled, it is renamed to `.salvaged`: from then on it is the store, and should this
    process die before it is in place, the next call puts it there (finish_interrupted_swap).
    Where nothing at all can be read (its first page, which holds the schema, is damaged) from a
    store that held rows, no empty store takes its place, in which every notification handled
    before would run again: StorageError, until the vendor recovers it or, with `repair --force`,
    starts an empty one (`start_empty`). Nor is a store that was cut short salvaged unasked: the
    whole file is likely still where it was copied from, and its rows past the cut would be lost.
    The caller holds the store lock, so no other process replaces the store meanwhile.
    """
    path = store_path(config)
    missing = None if start_empty else cut_short(path)
    if missing:
        raise StorageError(CUT_SHORT_STORE % (path, missing))
    salvaging = path + ".salvage"
    remove_store_files(salvaging)               # what a failed attempt may have left
    try:
        os.close(os.open(salvaging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        connection = sqlite3_module().connect(salvaging, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            connection.execute("PRAGMA synchronous=FULL")
            migrate_store(connection)
            copied, keys_only = salvage_rows(path, connection)
            if not copied and not start_empty and may_hold_rows(path):
                raise StorageError(UNREADABLE_STORE % path)
        finally:
            connection.close()                  # the last connection: its journal goes into the
                                                # file, and SQLite deletes the journal
    except BaseException:
        remove_store_files(salvaging)
        raise
    # (Over a `.salvaged` left by a process that died before it moved the store aside: that one is
    # older than the store's last rows.)
    os.replace(salvaging, path + ".salvaged")
    close_store()
    aside = move_store_aside(path)
    os.replace(path + ".salvaged", path)
    sync_folder(config["DATA_DIR"])
    log.error("event store %s was set aside (%s); it was moved to %s, a new store was started and "
              "%d notifications were copied from the damaged one%s. Keep the damaged copy until "
              "`python3 ipn_receiver.py check` is clean.", path, reason, os.path.basename(aside), copied,
              UNKNOWN_NOTE % keys_only if keys_only else "")
    return open_store(config)


UNREADABLE_STORE = (
    "event store %s: damaged where its schema is kept, so the receiver cannot read its rows (they may be there "
    "still), and it was left as it was: an empty store in its place would run every notification handled before "
    "again. Recover it by hand where your sqlite3 can (3.29 or later, built with .recover: sqlite3 events.sqlite3 "
    ".recover | sqlite3 recovered.sqlite3; some builds say \"SQL logic error\"), or start an empty one with "
    "`python3 ipn_receiver.py repair --force`")


def may_hold_rows(path):
    """Whether a damaged store may have held rows: unless it shows itself a new store, it may.

    A new store is four pages (three before version 2's second index): the schema, and the table
    and its two indexes, each one page with no entry on it; a file of fewer (an empty database of
    another program's) was never one. Each of those pages says in its header what kind of page it
    is and how many entries it holds (sqlite.org/fileformat.html, 1.6), and one that held a few
    notifications is no larger, so it is these that tell, not the size, nor what text is in the
    file. A file whose header is damaged (zeros, say, where a power cut left them) does not show
    itself new.
    (A file cut short never comes here: cut_short.)
    """
    if not os.path.exists(path):
        return False
    journal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
    header = store_header(path)
    size = os.path.getsize(path)
    if journal > 0 or header is None or not 3 * header[1] <= size <= 4 * header[1] or size % header[1]:
        return True
    content = read_store_file(path, size)
    # Every page after the schema's a leaf of a table (13) or of an index (10), with 0 entries.
    pages = range(header[1], size, header[1])
    return any(content[at] not in (10, 13) or content[at + 3:at + 5] != b"\0\0" for at in pages)


def read_store_file(path, length):
    """The first `length` bytes of the store's file at `path`, read through a descriptor that stays
    open as long as the process: one for each file the store has been.

    Closing any descriptor of a file lets go of every lock this process holds on it (POSIX),
    those of SQLite's connections in the other threads of a WSGI server too. Another process
    would then take itself for the store's last user and delete its -wal file, which those
    connections go on writing into: calls answered OK, then lost (sqlite.org/howtocorrupt.html,
    2.2). SQLite keeps its own descriptors open for the same reason.
    """
    if not hasattr(os, "pread"):                # (Windows, which has no such locks)
        with open(path, "rb") as file:
            return file.read(length)
    found = os.stat(path)
    fd = _store_files.get((found.st_dev, found.st_ino))
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
        found = os.fstat(fd)                    # (the file it opened, should it have been replaced)
        _store_files[found.st_dev, found.st_ino] = fd
    return os.pread(fd, length, 0)


def store_header(path):
    """(pages, page size) as the header of the SQLite file at `path` gives them, or None where it
    has no header that SQLite would take for one (sqlite.org/fileformat.html, 1.3)."""
    header = read_store_file(path, 100)
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size      # (65536 does not fit in two bytes)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0") or page_size < 512:
        return None
    return int.from_bytes(header[28:32], "big"), page_size


def cut_short(path):
    """What is left of the store's file where it is shorter than its header says it is, or than a
    header (an upload or a copy that stopped halfway), else None. Pages its -wal file holds are
    not missing: a checkpoint that stopped halfway leaves the file's header ahead of its pages,
    which the -wal file still holds."""
    for look in (1, 2):
        size = os.path.getsize(path)
        if size < 100:
            return "%d bytes of it are left" % size
        header = store_header(path)
        missing = set(range(size // header[1] + 1, header[0] + 1)) if header else set()
        if not missing or not missing - pages_in_journal(path):     # (the -wal file read only where needed)
            return None
        # A look again, a moment later: another process's checkpoint writes the header before it
        # grows the file, and deletes the -wal file once it has (seen between the two, it is whole).
        if look == 1:
            time.sleep(0.05)
    return "%d of its %d pages are left" % (size // header[1], header[0])


def pages_in_journal(path):
    """The numbers of the pages the store's -wal file holds (sqlite.org/fileformat.html, 4.1):
    those of its frames from the first on that carry the salts of its header, which a checkpoint
    changes when the file is written anew from its start."""
    try:
        with open(path + "-wal", "rb") as file:
            journal = file.read()
    except OSError:
        return set()
    page_size, pages, at = int.from_bytes(journal[8:12], "big"), set(), 32
    while len(journal) >= at + 24 + page_size > at + 24 and journal[at + 8:at + 16] == journal[16:24]:
        pages.add(int.from_bytes(journal[at:at + 4], "big"))
        at += 24 + page_size
    return pages


CUT_SHORT_STORE = (
    "event store %s was cut short (%s), as by an upload or a copy that stopped halfway, so its rows past the cut "
    "cannot be read, and it was left as it was. Put the whole file back (copy it again from where it came from), "
    "or keep the rows that can be read with `python3 ipn_receiver.py repair --force`, knowing that copies of the "
    "notifications that are lost would then run their handlers again")


UNKNOWN_NOTE = (" (%d of them with their status lost: whether their handlers ran is unknown, so a copy "
                "is held until you decide; `python3 ipn_receiver.py events --status unknown`)")


def move_store_aside(path):
    """Rename the store at `path` and its journals to a free `<path>.damaged-<time>`; that name."""
    aside = "%s.damaged-%s" % (path, time.strftime("%Y%m%d-%H%M%S"))
    number = 1
    while os.path.exists(aside + ("" if number == 1 else "-%d" % number)):
        number += 1                             # never over an earlier damaged copy
    aside += "" if number == 1 else "-%d" % number
    for suffix in ("", "-wal", "-shm"):         # its last commits may be in the -wal file alone
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    return aside


def finish_interrupted_swap(path):
    """Where a process died while setting a damaged store aside, after the new store was filled:
    put the new store in place (and what is left of the damaged one aside). True if it did.

    Without this, the next call would start an empty store, and every notification the salvaged
    one holds would run its handler again. Called under the store lock, with no store at `path`.
    """
    if not os.path.exists(path + ".salvaged"):
        return False
    aside = move_store_aside(path)              # the damaged store's journals, where left behind
    os.replace(path + ".salvaged", path)
    sync_folder(os.path.dirname(path))
    log.error("event store %s: a process died while setting a damaged store aside; the new store it "
              "had filled was put in place (what was left of the damaged one: %s)", path, os.path.basename(aside))
    return True


def sync_folder(path):
    """Make the renames in the folder `path` durable before the store they put in place is written.

    SQLite syncs the store file on each commit, but a file's name lives in its folder: after a
    power cut, a folder not synced may still show the damaged store under the store's name, and
    the new one, holding every notification answered since, under `.salvage`, which the next
    salvage removes. (Where a folder cannot be opened or synced, as on Windows, nothing is done.)
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        import errno
        if error.errno != errno.EINVAL:         # EINVAL: a file system that cannot sync a folder
            raise
    finally:
        os.close(fd)


def remove_store_files(path):
    """Remove a store file and its journals, where they exist."""
    for suffix in ("-wal", "-shm", "-journal", ""):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


STORE_COLUMNS = ("id", "received_at", "provider", "event", "duplicate_key", "is_test", "fields", "status",
                 "attempts", "deliveries", "last_error", "answer", "claim", "claimed_at", "updated_at")
# What a column of a partly readable row becomes when it is salvaged. Such a row still answers its
# copies and keeps its handler from running again, as long as its duplicate key can be read. One
# whose status is lost too is "unknown": whether its handler ran cannot be told, so a copy of it is
# neither run (it may have been: nothing twice) nor answered OK (it may not have been: no OK for
# work the store does not hold). The copy is held with a 503 until the vendor decides (`replay`).
UNREADABLE = {"received_at": 0, "provider": "?", "event": "?", "is_test": 0, "fields": "{}", "status": "unknown",
              "attempts": 0, "deliveries": 0, "updated_at": 0,
              "last_error": "salvaged from a damaged store: some of its columns could not be read"}


def salvage_rows(damaged_path, connection):
    """Copy every row that can still be read from a damaged store into `connection`.

    Returns how many rows it holds then, and how many of them are "unknown" for want of what was
    damaged: known by their duplicate key alone (found in the store's index where the table's page
    that held the row is damaged, or held where which of two keys a row is cannot be told).
    """
    sqlite3 = sqlite3_module()
    errors = READ_ERRORS + (sqlite3.Error,)
    columns = ", ".join(STORE_COLUMNS)
    rows = {}                                   # {(id, key): row}: a flipped bit may give two rows one id
    try:
        source = sqlite3.connect(damaged_path)
        # Else SQLite reads nothing at all from a file shorter than its header says, or one
        # whose schema names a page past its end. (The source is only read, never written.)
        source.execute("PRAGMA writable_schema=ON")
    except errors:
        return 0, 0
    try:
        try:
            if schema_problem(source, KEY_INDEXES[:1]):
                return 0, 0                 # its rows cannot be told apart: not one is copied
        except errors:
            pass                            # (and where the schema cannot be read, none can be)
        try:                                # a scan reads everything before the first bad page
            for row in source.execute("SELECT %s FROM notifications ORDER BY id" % columns):
                rows[row[0], row[KEY_COLUMN]] = row
        except errors:
            try:
                source.execute("SELECT sql FROM sqlite_master").fetchall()
            except errors:
                return 0, 0                 # not even the schema: no statement can be prepared
            try:                            # and from the other end, back to the first bad page
                for row in source.execute("SELECT %s FROM notifications ORDER BY id DESC" % columns):
                    rows[row[0], row[KEY_COLUMN]] = row
            except errors:
                pass
            # Then row by row: a lookup by id passes damaged pages by, and so does asking for
            # the first id from a given one on, which steps over the ids no row has. No number
            # read from the damaged file bounds the walk: a damaged cell may claim id 2**56 (and
            # the walk then ends there, which is why the scan from the other end came first).
            # Where the lookup meets the damage itself, the walk goes on one id at a time, but
            # not further than the file has room for rows (ids are dense, a row takes more
            # than 128 bytes): a salvage must end, as it holds the store's lock.
            number, misses = 1, 0
            most_misses = max(1000, os.path.getsize(damaged_path) // 128)
            while misses < most_misses and number < 2 ** 63 - 1:
                try:
                    following = source.execute("SELECT id FROM notifications WHERE id >= ? ORDER BY id "
                                               "LIMIT 1", (number,)).fetchone()
                except errors:
                    following = (number,)
                if following is None:
                    break                   # no row from here on
                number = following[0]
                row = salvage_row(source, number)
                if row:
                    rows[number, row[KEY_COLUMN]], misses = row, 0
                else:
                    misses += 1
                number += 1
        keys = keys_in_index(source)
    finally:
        source.close()
    # A row whose key a flipped bit may have changed: one its own fields do not make, or, where
    # they cannot be read, one whose id an index holds under another key. Where the index holds
    # its id under the one key of the two, that one is right: the key its fields make (its key
    # flipped: the row is that key's), or its key (its fields flipped: dropped, a copy brings them
    # back). Else which is right cannot be told: each of the two keys is held as "unknown" (the
    # vendor decides), with neither the fields nor the answer, which may be another buyer's (txn
    # 1001's row reading 1000's key, its access data sent to the buyer of 1000, or the row of 7
    # taken for 3's); put in last, so that where the row that is that key's is there too, it stands.
    indexed = {}
    for number, key in keys:
        indexed.setdefault(number, set()).add(key)
    sure, doubted = [], []
    for row in rows.values():
        made, key, witness = key_its_fields_make(row), row[KEY_COLUMN], indexed.get(row[0], set())
        if made == key or made is None and witness <= {key}:
            sure.append(row)
        elif made is not None and witness == {made}:
            sure.append(row_of(dict(zip(STORE_COLUMNS, row), duplicate_key=made)))
        elif made is not None and witness == {key}:
            sure.append(row_of(dict(zip(STORE_COLUMNS, row), fields=UNREADABLE["fields"])))
        else:
            doubted += [row_of(dict(UNREADABLE, id=number, duplicate_key=either, last_error=DOUBTED_KEY))
                        for number, either in ((row[0], key), (None, made)) if either is not None]
    # Of two rows with one key (a store copied back over the live one while its -wal stayed), the
    # one done stands, and its answer: a row still processing would let the handler run again.
    sure.sort(key=lambda row: row[STORE_COLUMNS.index("status")] != "done")    # (else in id order)
    keys_only = rows_of_lost_keys(sure + doubted, keys)
    connection.execute("BEGIN IMMEDIATE")
    try:
        copied = [copy_row(connection, row) for row in sure + doubted + keys_only]
        connection.execute("COMMIT")
    except BaseException:
        rollback(connection)
        raise
    return sum(copied), sum(copied[len(sure):])


READ_ERRORS = (MemoryError, UnicodeDecodeError)
# (What damage shows as, besides sqlite3.Error: a cell claiming more than can be allocated, or a
# name in the schema that is no UTF-8, in the message of SQLite's error.)
KEY_COLUMN = STORE_COLUMNS.index("duplicate_key")
DOUBTED_KEY = ("salvaged from a damaged store: a row's key, its fields and the index disagree, so which "
               "notification it was cannot be told, nor whether this one was handled (the row is in the damaged copy)")


def row_of(values):
    """A row of the store (a tuple in the order of STORE_COLUMNS) from a dict of its columns: None
    for one it does not hold."""
    return tuple(values.get(column) for column in STORE_COLUMNS)


def key_its_fields_make(row):
    """The duplicate key that the fields a salvaged row holds make, a witness apart from its key
    and the indexes; None where they cannot be read."""
    fields = stored_fields(dict(zip(STORE_COLUMNS, row)))
    try:
        return Notification(row[STORE_COLUMNS.index("provider")], fields).key if fields else None
    except Exception:                           # (a value damaged into a number, say)
        return None


def copy_row(connection, row):
    """Put a salvaged row into the new store under its id, or a new one where a row holding
    another key has it already (a flipped bit may give two rows one id); nothing where its key
    is there already (the first of two rows with one key stands). 1 where it was put in, else 0."""
    insert = "INSERT OR IGNORE INTO notifications (%s) VALUES (%s)" % (", ".join(STORE_COLUMNS),
                                                                      ", ".join("?" * len(STORE_COLUMNS)))
    if connection.execute(insert, row).rowcount:
        return 1
    if connection.execute("SELECT 1 FROM notifications WHERE duplicate_key = ?", (row[KEY_COLUMN],)).fetchone():
        return 0
    return connection.execute(insert, (None,) + tuple(row[1:])).rowcount


def rows_of_lost_keys(rows, keys):
    """[row] for each key of `keys` ({(id, duplicate key)}, read from the indexes) that no row of
    `rows` (read from the table) holds: "unknown", with its id (where no row has it) and its key
    alone."""
    known = {row[KEY_COLUMN] for row in rows}
    taken = {row[0] for row in rows}
    lost = []
    for number, key in sorted(keys, key=repr):     # (in one order each time; repr: an id damaged into text)
        if key not in known:
            known.add(key)
            lost.append(row_of(dict(UNREADABLE, id=None if number in taken else number, duplicate_key=key)))
            taken.add(number)
    return lost


def keys_in_index(source):
    """{(id, duplicate key)} of every entry of the damaged store's indexes of duplicate keys.

    Each index is a tree of its own: where the page of the table that held a row is damaged, its
    entry there still tells that the notification arrived. Each is read from both ends, so that a
    damaged page of an index hides only what lies on it, and only there. (A store of schema 1
    has only the first; where the second was built from a damaged table, the two may hold one id
    under two keys: both are kept.)
    """
    sqlite3 = sqlite3_module()
    keys = set()
    for index in KEY_INDEXES:
        for order in ("", " DESC"):
            try:
                for entry in source.execute("SELECT id, duplicate_key FROM notifications INDEXED BY %s "
                                            "ORDER BY duplicate_key%s" % (index, order)):
                    keys.add(entry)
            except READ_ERRORS + (sqlite3.Error,):
                pass
    return keys


def salvage_row(source, number):
    """Row `number` of a damaged store, None when it is not there or its duplicate key is lost.

    A row is stored across several pages when its fields are long, and one damaged page may
    make some of its columns unreadable but not others: those are read one by one.
    """
    sqlite3 = sqlite3_module()
    try:
        return source.execute("SELECT %s FROM notifications WHERE id = ?" % ", ".join(STORE_COLUMNS),
                              (number,)).fetchone()
    except READ_ERRORS + (sqlite3.Error,):
        pass
    row = {}
    for column in STORE_COLUMNS:
        try:
            found = source.execute("SELECT id, %s FROM notifications WHERE id = ?" % column, (number,)).fetchone()
        except READ_ERRORS + (sqlite3.Error,):
            continue
        if found is None:
            return None
        row[column] = found[1]
    if row.get("duplicate_key") is None:
        return None
    if len(row) < len(STORE_COLUMNS):
        row = dict(UNREADABLE, **{column: value for column, value in row.items() if value is not None})
        row["last_error"] = UNREADABLE["last_error"]
    return tuple(row.get(column) for column in STORE_COLUMNS)


def fields_as_stored(fields):
    """The fields as the store keeps them: JSON (json_text), with any secret in them replaced by
    [secret]. PromoPit's key may come in any field (whoever holds it sends what they like), and a
    row keeps what it holds for as long as the store and its backups live."""
    text = json_text(fields)
    if log.mask(text) != text:      # (each value alone: a secret's form may span a value and a key)
        text = json_text({log.mask(key): log.mask(value) for key, value in fields.items()})
    return text


def json_text(fields):
    """A flat {str: str} dict as a JSON object: what json.dumps(fields, ensure_ascii=False,
    separators=(",", ":")) gives (tests/test_store.py compares them on generated dicts), without
    importing json, which costs a CGI call about 3.7 ms."""
    return "{" + ",".join(json_string(key) + ":" + json_string(value) for key, value in fields.items()) + "}"


_JSON_ESCAPES = {code: "\\u%04x" % code for code in range(32)}
_JSON_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r",
                      ord("\t"): "\\t", ord("\b"): "\\b", ord("\f"): "\\f"})


def json_string(text):
    return '"' + text.translate(_JSON_ESCAPES) + '"'


def duplicate_key(notification):
    """What makes two deliveries the same notification, and so the handler run only once.

    It is built from the vouched fields alone (see vouched_fields), so that every copy of a call
    its signature allows, re-encoded however, is the same notification.
    """
    fields = notification.fields
    # ":" separates the parts, so an event name cannot take the place of a transaction id.
    event = notification.event.replace("%", "%25").replace(":", "%3A")
    if notification.provider == PROMOPIT:
        # PromoPit's transaction id names a sale. (PromoPit signs nothing: whoever holds the ISN
        # key may send any field, so this protects against copies, not against the key's holder.)
        if fields.get("promopit_txn_id"):
            return "promopit:" + fields["promopit_txn_id"]
    elif fields.get("transaction_id"):
        return "digistore24:%s:%s" % (event, fields["transaction_id"])
    # No transaction id (a connection test, say): a hash of all the vouched fields, so only a copy
    # of the same call is the same notification.
    text = json_text(dict(sorted(fields.items())))
    return "%s:%s:sha256:%s" % (notification.provider, event, hashlib.sha256(text.encode("utf-8")).hexdigest())


def claim_notification(connection, notification, has_handler, timeout):
    """Record a delivery and decide what to do with it, in one write transaction.

    Returns ("run", claim) when this call must run the handler, ("answer", body) when the
    notification was handled before (or has no handler) and `body` is what to send, ("busy",
    None) when another process is running its handler right now, ("paused", seconds) when its
    handler failed too recently (retry_pause), or ("unknown", None) when it
    was salvaged from a damaged store without its status, or its row is damaged (row_damage; the
    vendor decides; the fields this copy brings are kept for `replay`). An abandoned claim (see
    claim_is_abandoned) is taken over.
    """
    now = time.time()
    claim = "%d-%s" % (os.getpid(), os.urandom(6).hex())
    fields = fields_as_stored(notification.fields)
    connection.execute("BEGIN IMMEDIATE")   # take the write lock first: no one decides in between
    try:
        cursor = connection.execute(
            "INSERT OR IGNORE INTO notifications (received_at, provider, event, duplicate_key, "
            "is_test, fields, status, attempts, deliveries, answer, claim, claimed_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
            (now, notification.provider, notification.event, notification.key, int(notification.is_test),
             fields, "processing" if has_handler else "ignored", int(has_handler), None if has_handler else "OK",
             claim if has_handler else None, now if has_handler else None, now))
        if cursor.rowcount == 1:
            notification.id = cursor.lastrowid
            decision = ("run", claim) if has_handler else ("answer", "OK")
        else:
            row_id, status, answer, claimed_at, claimed_by, updated_at, attempts = row_of_key(
                connection, "id, status, answer, claimed_at, claim, updated_at, attempts", notification.key)
            notification.id = row_id
            damage = row_damage(status, answer, claimed_at, claimed_by, updated_at, attempts, notification.event)
            abandoned = not damage and status == "processing" and claim_is_abandoned(
                claimed_at, now, timeout, claimed_by)
            if damage or status == "unknown":
                # "unknown": salvaged from a damaged store without its status. Or damage that
                # SQLite's integrity check cannot see (row_damage): whether its handler ran cannot
                # be told, so it is "unknown" too, and the vendor decides.
                connection.execute(
                    "UPDATE notifications SET status = 'unknown', provider = ?, event = ?, is_test = ?, "
                    "fields = ?, deliveries = deliveries + 1, updated_at = ?, last_error = COALESCE(?, last_error) "
                    "WHERE id = ?", (notification.provider, notification.event, int(notification.is_test),
                                     fields, now, None if status == "unknown" else
                                     "damaged: " + damage, row_id))
                decision = ("unknown", None)
            elif status == "failed" and has_handler and 0 <= now - updated_at < retry_pause(attempts):
                # Counted, and otherwise left as it is: a copy sent again and again (by whoever captured
                # the call) must not run the handler, and what it did before it failed, at its pace.
                connection.execute("UPDATE notifications SET deliveries = deliveries + 1 WHERE id = ?", (row_id,))
                decision = ("paused", int(updated_at + retry_pause(attempts) - now) + 1)
            elif (status == "failed" or abandoned) and not has_handler:
                # Its handler was taken out of the table since: like any event without one, it
                # is answered OK and kept (its last_error tells what happened before).
                connection.execute(
                    "UPDATE notifications SET status = 'ignored', answer = 'OK', claim = NULL, "
                    "deliveries = deliveries + 1, updated_at = ? WHERE id = ?", (now, row_id))
                decision = ("answer", "OK")
            elif status == "failed" or abandoned:
                connection.execute(
                    "UPDATE notifications SET status = 'processing', attempts = attempts + 1, "
                    "deliveries = deliveries + 1, claim = ?, claimed_at = ?, updated_at = ?, fields = "
                    "CASE WHEN fields = '{}' THEN ? ELSE fields END WHERE id = ?",
                    (claim, now, now, fields, row_id))
                decision = ("run", claim)
                if abandoned:
                    log.warning("notification #%d: the run of its handler that started %s s ago never recorded how "
                                "it ended (its process was killed, or it ran longer than PROCESSING_TIMEOUT); this "
                                "copy runs it again", row_id, "?" if claimed_at is None else int(now - claimed_at))
            else:                           # processing, done, ignored
                # (Fields lost to damage, salvaged as {}, come back with the copy: it is the same call.)
                connection.execute("UPDATE notifications SET deliveries = deliveries + 1, updated_at = ?, fields = "
                                   "CASE WHEN fields = '{}' THEN ? ELSE fields END WHERE id = ?",
                                   (now, fields, row_id))
                decision = ("busy", None) if status == "processing" else ("answer", answer or "OK")
        connection.execute("COMMIT")
        return decision
    except BaseException:
        rollback(connection)
        raise


def row_damage(status, answer, claimed_at, claim, updated_at, attempts, event):
    """What is damaged in the columns of a stored row that decide what a copy gets, as SQLite's
    integrity check cannot see it; None where nothing is, and for a row salvaged as "unknown".

    A status this receiver never writes ("fahled": a bit flipped on the disk), or a column of
    another type than the receiver writes: one bit in a record's header turns an answer's text
    into bytes, which no answer can be made of, or the number 1 into the text '', which no
    pause before a retry can be counted from.
    """
    if status == "unknown":
        return None
    if status not in STATUSES:
        return "its status read %s, which the receiver never writes" % json_string(str(status))
    number, nothing = (int, float), type(None)
    if not (isinstance(answer, (str, nothing)) and isinstance(claim, (str, nothing)) and type(attempts) is int
            and isinstance(updated_at, number) and isinstance(claimed_at, number + (nothing,))):
        return "a column of its row is not of the type the receiver writes"
    if status == "done" and answer is None and event == "on_payment":
        # Its answer was on a damaged page (a long one reaches past the row's first page): a copy
        # would get OK without the access data the first delivery got. (Other events' is OK.)
        return "its answer was lost"
    if answer is not None and (answer.split("\n")[0] != "OK" or answer != answer.translate(_ANSWER_SPACES_BUT_LF)
                               or not all(is_answer_line(line) for line in answer.split("\n")[1:])):
        # "NK": every copy would be answered with what the sender counts as a failure; a line
        # without its ": " would lose its key, another buyer's password or login URL with it.
        return "its answer is not one the receiver writes"
    return None


def is_answer_line(line):
    """Whether `line` is an answer line as answer_body writes it: `key: value`, the key not empty,
    with no colon and no space at either end."""
    key, separator, _ = line.partition(": ")
    return bool(separator) and key != "" and key == key.strip() and ":" not in key


def retry_pause(attempts):
    """How long after its last failure a notification's handler may run again for a copy: a minute
    after the first, twice as long after each one after it, an hour at most. (Digistore24's own
    retries come ever further apart: after about 3 minutes first, 20 of them over 10 days.)"""
    return min(RETRY_PAUSE_SECONDS * 2 ** min(max(attempts, 1) - 1, 6), 3600)


def claim_is_abandoned(claimed_at, now, timeout, claim):
    """True when the handler run that `claim` started at `claimed_at` counts as abandoned: it
    started more than `timeout` seconds ago (its process died, or it ran too long), or it seems
    to have started more than `timeout` seconds in the future and the process that made the claim
    is gone. A claim is never made in the future; one that seems to be was made while the clock
    was ahead, and the clock was set back since (a server that booted with a wrong clock, say).
    Waiting for the clock to catch up could outlast the sender's retries, and the sale would
    never be handled; but the clock may have been set back while the handler still runs. (No
    time at all: damage, taken over too.)"""
    if not isinstance(claimed_at, (int, float)):
        claimed_at = 0                      # (text or bytes where a number was: damage, taken over)
    return claimed_at < now - timeout or (claimed_at > now + timeout and not process_is_running(claim))


def process_is_running(claim):
    """Whether the process whose id starts `claim` ("1234-...") runs on this machine (where the
    id cannot be read, or asking is not possible, it is taken as gone)."""
    try:
        pid = int(str(claim).split("-")[0])
    except ValueError:
        return False
    if pid <= 0 or os.name != "posix":      # (0 and -1 would name groups of processes)
        return False
    try:
        os.kill(pid, 0)                     # signal 0 sends nothing: it only asks
    except PermissionError:
        return True                         # another user's process
    except OSError:
        return False
    return True


def row_of_key(connection, columns, key, may_be_missing=False):
    """The `columns` of the row whose duplicate key is `key` (None where there is none and that may
    be), read through both indexes of keys (KEY_INDEXES), then checked against the row itself.

    One flipped bit in an index can hide the key, or make it point to another row: its answer,
    another buyer's access data, would go out, or its status would run a handler again. SQLite's
    writes do not notice, so two indexes that disagree, or a row that holds another key, are
    taken for what they are, damage: the store is set aside and salvaged.
    """
    found = {connection.execute("SELECT id FROM notifications INDEXED BY %s WHERE duplicate_key = ?" % index,
                                (key,)).fetchone() for index in KEY_INDEXES}
    if len(found) > 1:
        raise sqlite3_module().DatabaseError("database disk image is malformed: the two indexes of duplicate keys "
                                             "disagree")
    found = found.pop()
    # (By its id: asked for by its key, SQLite would read the key from the index, not the row.)
    row = None if found is None else connection.execute(
        "SELECT %s, duplicate_key FROM notifications WHERE id = ?" % columns, found).fetchone()
    if (row is None and not (found is None and may_be_missing)) or (row is not None and row[-1] != key):
        raise sqlite3_module().DatabaseError("database disk image is malformed: the index of duplicate keys "
                                             "points to a row that holds another key")
    return None if row is None else row[:-1]


def record_outcome(connection, notification, claim, status, answer, error):
    """Record how a handler run ended ("done" with its answer, or "failed" with an error line).

    Returns the answer the store now holds for the notification when it is done, else None. So
    OK goes out only for what the live store holds as done, and every copy gets the same answer.
    """
    now = time.time()
    connection.execute("BEGIN IMMEDIATE")
    try:
        row = row_of_key(connection, "id, status, claim, answer", notification.key, may_be_missing=True)
        row_id, stored_status, stored_claim, stored_answer = row or (None, None, None, None)
        if row is None:
            # The store was replaced while the handler ran (a repair, or another call's recovery
            # from damage) and the row could not be salvaged: it is written anew.
            cursor = connection.execute(
                "INSERT INTO notifications (received_at, provider, event, duplicate_key, is_test, fields, "
                "status, attempts, deliveries, last_error, answer, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, "
                "1, 1, ?, ?, ?)", (now, notification.provider, notification.event, notification.key,
                                   int(notification.is_test), fields_as_stored(notification.fields), status, error,
                                   answer, now))
            notification.id = cursor.lastrowid
            result = answer if status == "done" else None
        elif stored_status == "done":
            # Another run (after PROCESSING_TIMEOUT) finished first: its answer stands.
            result = stored_answer
        elif stored_claim == claim or status == "done":
            connection.execute("UPDATE notifications SET status = ?, answer = ?, last_error = ?, claim = NULL, "
                               "updated_at = ? WHERE id = ?", (status, answer, error, now, row_id))
            result = answer if status == "done" else None
        else:
            result = None                   # this run failed; the run that took over decides
        connection.execute("COMMIT")
    except BaseException:
        rollback(connection)
        raise
    if row is not None and row[2] != claim:
        log.warning("notification #%d: while its handler ran, %s", row[0], taken_over_by(row[2]))
    return result


def taken_over_by(claim):
    """Who took a running notification over, judged by the claim the store holds now."""
    if claim is None:                       # (the other run is over, or replay --done cleared it)
        return ("replay or a copy that came after PROCESSING_TIMEOUT saw to it too (if a copy, raise "
                "PROCESSING_TIMEOUT above your slowest handler)")
    if "-replay-" in str(claim):
        return "`replay --force` ran it again"
    return ("a copy came after PROCESSING_TIMEOUT and ran it again; raise PROCESSING_TIMEOUT above your "
            "slowest handler")


def rollback(connection):
    try:
        connection.execute("ROLLBACK")
    except Exception:
        pass                                # nothing to roll back: the error ended the transaction


# =================================================================================================
#  Handling a notification: verify, store, dispatch, answer
# =================================================================================================
# Every answer below is read by a vendor in Digistore24's IPN log ("Message by server"), which
# Digistore24 tells them to read and follow: one line each, what is wrong and what to do. An
# answer to a caller who has not proved who it is names no path and no setting's value.

NO_SIGNATURE_ANSWER = (
    "no signature: Digistore24 sent none because its IPN connection has no passphrase; enter one there "
    "(Settings > Integrations (IPN), edit the connection, IPN passphrase) and the same one as "
    "SHA_PASSPHRASE of ipn_receiver")
UNSIGNED_ANSWER = (
    "unsigned call: its sha_sign (Digistore24) or isn_key (PromoPit) is missing or empty; register this URL "
    "only with Digistore24 (as an IPN connection) and PromoPit (as the ISN URL)")
INVALID_SIGNATURE_ANSWER = (
    "invalid sha signature: the passphrase of this IPN connection in Digistore24 is not the "
    "SHA_PASSPHRASE of ipn_receiver (or the call was changed on its way); enter the same passphrase in "
    "both (`python3 ipn_receiver.py check` finds quotes or spaces around it)")
MISSING_EVENT_ANSWER = (
    "missing event: the call has no event field and no valid signature, so it is not a Digistore24 IPN "
    "call; register this URL only with Digistore24 and PromoPit")
INVALID_ISN_KEY_ANSWER = (
    "invalid isn key: the ISN key sent is not the ISN_KEY of ipn_receiver; copy the ISN key from "
    "the product's ISN settings at PromoPit into ISN_KEY (`python3 ipn_receiver.py check` finds "
    "quotes or spaces around it)")
BUSY_ANSWER = ("ERROR: already being processed: a copy of this notification is being handled right now; the "
               "sender retries later, nothing to do (should that run have died, a copy coming PROCESSING_TIMEOUT "
               "after it started runs the handler again; ipn_receiver.log says how it ended)")
PAUSED_ANSWER = ("ERROR: the handler failed for notification #%d just now; a copy that comes in %d s or later runs it "
                 "again (the sender retries later; on the server, `replay %d` runs it now)")
UNKNOWN_ANSWER = (
    "ERROR: notification #%(id)d lost its record when the event store was damaged, so whether its handler "
    "ran is unknown; on the server, look at `python3 ipn_receiver.py show %(id)d`, then run `replay %(id)d` "
    "to run it, or `replay %(id)d --done` if it was handled")
ANSWER_KEYS = ("thankyou_url", "username", "password", "loginurl", "headline", "show_on", "hide_on")
ACCOUNT_KEYS = ("username", "password", "loginurl")     # more accounts: username_2, password_2, ...


def handle_post(environ):
    """Everything a POST needs: returns (status, body, what happened for the log line).

    Raises Refusal for a request that is refused before its handler could run.
    """
    config = settings()
    provider, fields = read_form(environ, config["MAX_BODY_BYTES"])
    if provider == DIGISTORE24:
        signatures = [fields.pop(name, None) for name in SIGNATURE_FIELDS]     # (neither is signed)
        signature = signatures[0] or signatures[1]
        if signature == NO_SIGNATURE:
            raise Refusal(403, NO_SIGNATURE_ANSWER)
        if not signature:                   # (not a wrong passphrase: there is nothing to compare)
            raise Refusal(403, UNSIGNED_ANSWER)
        refuse_unless_usable(config, "SHA_PASSPHRASE")
        variant = digistore24_signature_variant(fields, signature, config["SHA_PASSPHRASE"])
        if variant is None:
            raise Refusal(403, INVALID_SIGNATURE_ANSWER) if fields.get("event") else \
                Refusal(400, MISSING_EVENT_ANSWER)
        # A genuine call without an event (PROTOCOL.md's signature examples are such calls) is
        # treated as an unknown event: stored, answered OK, not dispatched.
        notification = Notification(DIGISTORE24, vouched_fields(fields, variant))
        handlers = DIGISTORE24_HANDLERS
    else:
        isn_key = fields.pop("isn_key", "")
        if not isn_key:
            raise Refusal(403, UNSIGNED_ANSWER)
        refuse_unless_usable(config, "ISN_KEY")
        if not isn_key_is_valid(isn_key, config["ISN_KEY"]):
            raise Refusal(403, INVALID_ISN_KEY_ANSWER)
        notification = Notification(PROMOPIT, vouched_fields(fields))
        handlers = PROMOPIT_HANDLERS
    status, body, outcome = dispatch(notification, handlers.get(notification.event), config)
    return status, body, "%s %s %s: %s" % (notification.provider, shortened(notification.event, 40),
                                           notification.reference, outcome)


def refuse_unless_usable(config, name):
    """Refusal (503, which the sender retries) where the secret `name` is not set or cannot be used."""
    problem = secret_problem(config, name)
    if problem:
        raise Refusal(503, unusable_secret_answer(name), problem)


def dispatch(notification, handler, config):
    """Store the notification, run its handler once, and return (status, body, outcome)."""
    try:
        decision, value = write_to_store(config, lambda connection: claim_notification(
            connection, notification, handler is not None, config["PROCESSING_TIMEOUT"]))
    except Exception as error:
        return storage_failure(error, config, "storage unavailable")
    if decision == "busy":
        return 503, BUSY_ANSWER, "a copy is being processed right now"
    if decision == "paused":
        return 503, PAUSED_ANSWER % (notification.id, value, notification.id), "held: its handler failed just now"
    if decision == "unknown":
        return 503, UNKNOWN_ANSWER % {"id": notification.id}, "held: salvaged from a damaged store, status unknown"
    if decision == "answer":
        if handler is None:
            return 200, value, "no handler for this event: stored, answered OK"
        return 200, value, "duplicate of #%d, answered as before" % notification.id
    return run_and_record(notification, handler, value, config)


def storage_failure(error, config, outcome):
    """Log why the store failed; the 503 (status, body, outcome) for the sender, who retries."""
    log.error("%s", error if isinstance(error, StorageError) else describe_storage_error(error, store_path(config)))
    return 503, STORE_BUSY if isinstance(error, StoreBusy) else STORAGE_ERROR, outcome


def run_and_record(notification, handler, claim, config):
    """Run the handler of a claimed notification and record the outcome: (status, body, outcome).

    The handler's work is done once it returns, so nothing after it may fail the call: a retry
    would run the handler again. Its answer lines are made safe to send (answer_body), and the
    outcome is written to the live store; only what the store holds as done is answered OK.
    """
    name, failure = getattr(handler, "__name__", notification.event), None
    process = os.getpid()
    claimed_in = folder_identity(config["DATA_DIR"])
    try:
        result = handler(notification.copy())
        end_a_forked_child(process, name)
        refuse_unrun_result(result)
    except BaseException as error:
        end_a_forked_child(process, name, error)
        # Whatever a handler raises fails the notification, is logged and recorded, and is
        # answered: SystemExit too, and what is not an Exception (KeyboardInterrupt, a cancelled
        # task, a library's timeout). Else the row would stay "processing" and the call unanswered.
        log.exception("%s handler %s failed for %s", notification.provider, name, notification.reference)
        failure = one_line(shortened(type(error).__name__, 40))     # (a class may be given any name)
        to_store = ("failed", None, error_line(error))        # (status, answer, last error)
    else:
        to_store = ("done", answer_body(notification, result), None)

    def record(connection):
        return record_outcome(connection, notification, claim, *to_store)

    store_config = config
    try:
        for store_config, create in outcome_stores(config):
            try:
                answer = write_to_store(store_config, record, OUTCOME_LOCK_TIMEOUT_SECONDS, claimed_in, create)
            except (KeyboardInterrupt, SystemExit):
                # `replay` stopped (Ctrl+C, a kill, a closed terminal), or a gunicorn worker by its
                # quick shutdown (SystemExit), while the outcome waits for the store: the work is done,
                # and unrecorded it would run again on the sender's next copy. So it is recorded
                # first. (The log, not print(): a closed terminal cannot be written.)
                log.warning("stopped after handler %s ran for #%d: recording its outcome first (stopped again, it "
                            "runs again later)", name, notification.id)
                answer = write_to_store(store_config, record, OUTCOME_LOCK_TIMEOUT_SECONDS, claimed_in, create)
    except Exception as error:
        # The handler's work is done but not recorded: the sender retries, and after
        # PROCESSING_TIMEOUT the handler runs again. Saying OK now could lose the record.
        status, _, outcome = storage_failure(error, store_config, "handler ran, but its outcome could not be stored")
        return status, OUTCOME_NOT_STORED % (notification.id, "failed (%s)" % failure if failure else "did its work"), \
            outcome
    if answer is not None:
        return 200, answer, "handled as #%d" % notification.id
    return 500, ("ERROR: handler %s failed (%s) for notification #%d; the traceback is in %s" % (
        one_line(shortened(name, 40)), failure, notification.id, LOG_FILE_NAME)), "handler failed: " + to_store[2]


def outcome_stores(config):
    """Where a handler's outcome goes, the claim having been made with `config`: a list of (the
    settings naming a store, whether to make the store where it is gone). The last one's answer is
    the one sent.

    First the store that holds the claim, where it is still there: the settings may name another
    folder now only because config.ini is missing for a moment, while it is uploaded. Deleted, it
    is made anew where it was. Then the store the settings name now, where that is another and
    it is there: the one moved or copied into a new DATA_DIR, which the sender's next copy
    reaches. None is made there: an OK would be for a record in a store that is not in use.
    """
    try:
        current = settings()
    except ConfigError:
        current = config                    # (config.ini caught half uploaded)
    claimed = os.path.exists(store_path(config))
    stores = [(config, True)] if claimed or current["DATA_DIR"] == config["DATA_DIR"] else []
    if current["DATA_DIR"] != config["DATA_DIR"] and (os.path.exists(store_path(current)) or not claimed):
        stores.append((current, False))
    return stores


def end_a_forked_child(process, name, error=None):
    """End this process if it is not `process` but a child that the handler forked and that came
    back here (returned, or ended with sys.exit() where os._exit() was meant): only the parent may
    record and answer the notification. Else the child would, too, first perhaps, and an answer
    would go out twice, the first one wrong. A line in the log says so (under CGI, the child's
    stderr goes nowhere: see let_go_of_the_web_server)."""
    if os.getpid() == process:
        return
    log.after_fork()
    log.warning("a process that handler %s forked came back into the receiver and was ended there; end such a "
                "process with os._exit()", shortened(name, 40))
    os._exit(error.code if isinstance(error, SystemExit) and isinstance(error.code, int) else 1 if error else 0)


def refuse_unrun_result(result):
    """Raise TypeError when a handler returned work that has not run: an `async def` handler
    returns a coroutine (an async generator, with `yield` in it), and one with `yield` in it a
    generator, before a line of it has run. Answering OK for them would lose the notification.

    Only those three: other iterators (a database cursor, map(), an open file) come from a
    handler that did run, and failing it would run its work again on every retry. So does a
    generator expression (`return (pair for pair in ...)`): the value of a plain def that ran.
    """
    import types                            # (loaded already: functools, which _sqlite3 loads, imports it)
    # (By type, not hasattr: an object's own __getattr__ may raise, KeyError say, after the work.)
    if isinstance(result, types.GeneratorType) and result.gi_code.co_name == "<genexpr>":
        return
    if isinstance(result, (types.CoroutineType, types.GeneratorType)):
        result.close()                      # (else Python warns that it was never awaited)
    if isinstance(result, (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)):
        raise TypeError("the handler returned %s without running: write it as a plain def, without "
                        "async and yield" % type(result).__name__)


def error_line(error):
    """An exception as one line for the store: its type and message, secrets masked, at most 500
    characters. (Never for an answer: the message may hold a buyer's data.)"""
    try:
        message = str(error)
    except Exception:                       # a broken __str__ must not turn a failure into a bug
        message = "(its message could not be read)"
    return one_line(log.mask("%s: %s" % (type(error).__name__, message)))[:500]


def answer_body(notification, result):
    """The body of the OK answer: "OK", and for on_payment the `key: value` lines it returned.

    The work is done when this runs, so whatever the handler returned, it never fails: a line
    break or control character in a line becomes a space, a configured secret becomes [secret],
    and anything that cannot be sent is left out, each with a warning in the log.
    """
    if result is None:
        return "OK"
    try:
        if not isinstance(result, dict):
            log.error("%s returned %s, not a dict of answer lines: answered OK without lines",
                      notification.event, type(result).__name__)
            return "OK"
        if notification.event != "on_payment":
            if result:
                log.warning("%s returned answer lines; only on_payment's are sent, these are ignored",
                            notification.event)
            return "OK"
        lines = ["OK"]
        for key, value in result.items():
            # A password left None, or a value that is bytes: the buyer gets a blank, or "b'...'".
            if isinstance(value, (bytes, bytearray)) or value is None or not str(value).strip():
                log.warning("on_payment's answer line %s is %s; sent as it is", shortened(str(key), 40),
                            "bytes, which show as b'...' (decode them first)" if isinstance(value, (
                                bytes, bytearray)) else "empty: the buyer sees nothing there")
            key, value = str(key), "" if value is None else str(value)
            line = "%s: %s" % (answer_text(key).replace(":", " ").strip(), answer_text(value))
            both = key + value
            replaced = [what for what, found in (
                ("a line break or control character", both.translate(_ANSWER_SPACES) != both),
                ("a colon in its key", ":" in key),
                ("a configured secret", log.mask(key) != key or log.mask(value) != value),
                ("bytes that were not UTF-8", any("\ud800" <= character <= "\udfff" for character in both)))
                if found]
            if replaced:
                log.warning("on_payment's answer line %s had %s; sent with that replaced", shortened(key, 40),
                            " and ".join(replaced))
            if line.startswith(":"):
                log.warning("on_payment returned an answer line without a key; it is left out")
                continue
            name, _, number = line.split(":")[0].rpartition("_")
            if line.split(":")[0] not in ANSWER_KEYS and not (
                    name in ACCOUNT_KEYS and number.strip("0123456789") == "" and number[:1] not in ("", "0")):
                log.warning("on_payment returned the answer line %s, which Digistore24 does not know; known: "
                            "%s, and username_2, password_2, loginurl_2, ...", shortened(key, 40), ", ".join(ANSWER_KEYS))
            elif "<" in value and ">" in value:
                log.warning("on_payment's answer line %s looks like HTML; Digistore24 shows it as plain text",
                            shortened(key, 40))
            lines.append(line)
        return "\n".join(lines)
    except BaseException:                   # (a value's str() may raise anything, a CancelledError too)
        # A SystemExit too (a server stopping): raised on, it would leave the work done unrecorded,
        # to run again; so the outcome is recorded, without these lines, and the answer sent.
        log.exception("%s: its answer lines could not be read; answered OK without them", notification.event)
        return "OK"


def answer_text(text):
    """`text` safe for a line of the answer: every configured secret [secret], then every control
    character and line break a space, every lone surrogate U+FFFD. (Masked first: a secret may hold
    a tab, which, made a space, would no longer be found.)"""
    text = log.mask(text).translate(_ANSWER_SPACES)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if "\ud800" <= character <= "\udfff" else character for character in text)
    return text


_ANSWER_SPACES = {code: " " for code in _ESCAPES}
_ANSWER_SPACES_BUT_LF = {code: " " for code in _ESCAPES if code != ord("\n")}     # (what a stored answer may not hold)


# =================================================================================================
#  The WSGI application (CGI and the local server use it too)
# =================================================================================================

STATUS_LINES = {
    200: "200 OK", 400: "400 Bad Request", 403: "403 Forbidden", 404: "404 Not Found",
    405: "405 Method Not Allowed",
    411: "411 Length Required", 413: "413 Payload Too Large", 415: "415 Unsupported Media Type",
    500: "500 Internal Server Error", 503: "503 Service Unavailable",
}
STATUS_TEXT = "OK ipn_receiver is up; it takes Digistore24 and PromoPit notifications by POST"
NOT_FOUND_ANSWER = "ERROR: not found: nothing is below the receiver's URL; register the URL of the script itself"
METHOD_ANSWER = "ERROR: method not allowed: notifications are sent by POST (GET and HEAD show a status line)"
CONFIG_ERROR_ANSWER = ("ERROR: configuration error in %s; run `python3 ipn_receiver.py check` on the server%s to "
                       "see what to change")
STOPPED_ANSWER = "ERROR: the server was stopping while it answered this call; the sender retries later"
INTERNAL_ERROR_ANSWER = ("ERROR: internal error in ipn_receiver; the sender retries later; the traceback is "
                         "in ipn_receiver.log, please report it with the version of ipn_receiver.py")


def application(environ, start_response):
    """The WSGI callable: answers every request with text/plain, errors starting with "ERROR:"."""
    started = time.perf_counter()
    method = environ.get("REQUEST_METHOD", "GET")     # (case-sensitive, as HTTP's methods are)
    try:
        if environ.get("SCRIPT_NAME") and environ.get("PATH_INFO", "/") not in ("", "/"):
            # A URL below the receiver's own (/ipn_receiver.py/config.ini, say): nothing is there.
            # Only where the server says where the receiver is (SCRIPT_NAME): a WSGI server
            # behind a proxy may pass any path, and the receiver answers it.
            status, body, outcome = 404, NOT_FOUND_ANSWER, "not found"
        elif method in ("GET", "HEAD"):
            status, body, outcome = 200, STATUS_TEXT, "status line"
        elif method != "POST":
            status, body, outcome = 405, METHOD_ANSWER, "method not allowed"
        else:
            status, body, outcome = handle_post(environ)
    except Refusal as refusal:
        status, body, outcome = refusal.status, refusal.body, "refused: " + str(refusal)
    except ConfigError as error:
        # The details (a path, a line of the file) go to the log only: whoever sent this request
        # has not proved who it is.
        log.error("configuration error: %s", error)
        # check, run without the web server's environment, would find nothing wrong.
        variable = error.location.partition("the environment variable ")[2]
        status, body = 503, CONFIG_ERROR_ANSWER % (
            error.location, ", with %s set as the web server sets it," % variable if variable else "")
        outcome = "configuration error"
    except SystemExit:                      # (a gunicorn worker's quick shutdown, in the middle)
        status, body, outcome = 503, STOPPED_ANSWER, "stopped by the server"
    except Exception:                       # a bug in the receiver: the log gets the traceback
        log.exception("internal error")
        status, body, outcome = 500, INTERNAL_ERROR_ANSWER, "internal error"
    milliseconds = (time.perf_counter() - started) * 1000
    # A refused or failed notification is worth a warning; a GET of a wrong path or a PUT is not.
    log_at = log.warning if status >= 400 and method == "POST" else log.info
    log_at("%s -> %d, %s (%.1f ms)", shortened(method, 20), status, outcome, milliseconds)
    data = body.encode("utf-8", "replace")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
               ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
    if status == 405:
        headers.append(("Allow", "GET, HEAD, POST"))
    start_response(STATUS_LINES[status], headers)
    return [b""] if method == "HEAD" else [data]


# =================================================================================================
#  Commands: serve, send, demo, events, show, replay, check, repair
# =================================================================================================

DIGISTORE24_EVENTS = ("connection_test", "on_payment", "on_payment_missed", "on_refund", "on_chargeback",
                      "on_rebill_cancelled", "on_rebill_resumed", "last_paid_day", "on_affiliation")
# Rarer events, with no handler in the table as it comes: a vendor who wants one adds it.
DIGISTORE24_RARER_EVENTS = ("payment_denial", "eticket", "custom_form")


class CommandFailed(Exception):
    """A command cannot do what was asked: main() prints "ERROR: <message>" and exits with `code`."""

    def __init__(self, message, code=1):
        Exception.__init__(self, message)
        self.code = code


def command_serve(args):
    """Run the local server until Ctrl+C."""
    config = settings()
    if os.path.isdir(config["DATA_DIR"]):
        refuse_another_user(config, "serve")
    for name in SECRET_SETTINGS:
        problem = secret_problem(config, name)
        if problem:
            print("note: " + problem)
    try:
        server = make_local_server(args.host, args.port)
    except OSError as error:                # the port in use, or a host that is not this machine
        raise CommandFailed("cannot listen on %s:%d (%s); give --host an address of this machine and "
                            "--port a free one" % (args.host, args.port, error.strerror or error))
    print("ipn_receiver %s listening on http://%s:%d/ (Ctrl+C stops it); data in %s"
          % (__version__, args.host, server.server_port, config["DATA_DIR"]))
    sys.stdout.flush()
    # A handler's print() to the console as to the error log under CGI: stderr writes what the
    # locale cannot as escapes, where stdout would fail the handler after its work.
    sys.stdout = sys.stderr
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


LOCAL_SERVER_TIMEOUT = 30       # seconds a connection of the local server may last, in all
LOCAL_SERVER_CONNECTIONS = 64   # connections it serves at once; one more is closed at once


def make_local_server(host, port):
    """A threaded wsgiref server for `application` on host:port (port 0: a free one).

    Each connection has a thread of its own, for LOCAL_SERVER_TIMEOUT seconds at most: then its
    socket is shut, whether the client sends nothing or a byte now and then (one that sends nothing
    for a third of that is told 400 where it stops in its body; in its headers, its connection is
    closed). Half-sent requests cannot hold threads for ever, and there are never more than
    LOCAL_SERVER_CONNECTIONS: one more while they are is closed unanswered, and the sender retries
    it. (A handler that runs longer still finishes and stores its answer, which the sender's retry
    gets.) Each thread's store connection is closed when its request is done: the next request
    comes in a new thread.
    """
    import io
    import socket
    import socketserver
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    slots, limit = threading.BoundedSemaphore(LOCAL_SERVER_CONNECTIONS), LOCAL_SERVER_TIMEOUT

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        request_queue_size = LOCAL_SERVER_CONNECTIONS       # (5 by default: a burst was reset)

        def process_request(self, request, client_address):
            if not slots.acquire(blocking=False):
                self.shutdown_request(request)          # all busy: this one is closed at once
                return
            try:
                socketserver.ThreadingMixIn.process_request(self, request, client_address)
            except BaseException:
                slots.release()
                raise

        def process_request_thread(self, request, client_address):
            try:
                socketserver.ThreadingMixIn.process_request_thread(self, request, client_address)
            finally:
                close_store((os.getpid(), _thread.get_ident()))
                slots.release()

        def handle_error(self, request, client_address):
            pass        # application answers and logs every request itself: what ends up here is
                        # the connection failing (a client gone, or cut off), with a traceback

    class Handler(WSGIRequestHandler):
        timeout = limit / 3                     # for each read; the timer below, for it all

        def setup(self):
            WSGIRequestHandler.setup(self)
            self.deadline = threading.Timer(limit, self.cut_off)
            self.deadline.daemon = True
            self.deadline.start()

        def cut_off(self):
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def finish(self):
            self.deadline.cancel()
            WSGIRequestHandler.finish(self)

        def log_message(self, format, *args):
            pass                            # application logs every request itself

        def send_error(self, code, message=None, explain=None):
            # What never reaches application: a request line, an HTTP version or headers that
            # are not HTTP. http.server would answer an HTML page that repeats the request line.
            log.warning("%s -> %d, not an HTTP request this server can read",
                        shortened(getattr(self, "requestline", ""), 40), code)
            body = ("ERROR: not an HTTP request this server can read (%d); send a POST with the form "
                    "fields of a notification" % code).encode("ascii")
            self.close_connection = True
            self.request_version = "HTTP/1.0"      # a status line and headers, whatever was sent
            try:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass                        # the client is gone

        def get_stderr(self):
            return io.StringIO()            # (wsgiref's tracebacks of a write to a closed socket)

    return make_server(host, port, application, server_class=Server, handler_class=Handler)


# The realistic notifications that `send` and `demo` post: the fields as the senders send them,
# one "key=value" a line ({...} is filled in afresh for each), then what each event changes.
EXAMPLE_DIGISTORE24 = """\
event={event}
api_mode=test
ipn_version=1.6
order_id={order_id}
transaction_id={number}
parent_transaction_id=
order_item_id={item}
order_date={today}
order_time={now}
transaction_date={today}
transaction_time={now}
product_id=512345
product_name=Example product
quantity=1
billing_type=single_payment
billing_status=completed
pay_sequence_no=0
pay_method=test
transaction_type=payment
amount=49.00
amount_brutto=49.00
amount_netto=41.18
vat_amount=7.82
vat_rate=19.00
currency=EUR
email=buyer@example.com
buyer_first_name=Jörg
buyer_last_name=Müßig
address_first_name=Jörg
address_last_name=Müßig
address_country=DE
language=de
custom=
affiliate_name=
tags=
receipt_url=https://www.checkout-ds24.com/receipt/512345/{order_id}/TEST
invoice_url=https://www.digistore24.com/invoice/{order_id}/{number}/TEST.pdf
support_url=https://www.digistore24.com/support/{order_id}/TEST"""
EXAMPLE_CHANGES = {
    "on_refund": "transaction_type=refund amount=-49.00 amount_brutto=-49.00 billing_status=aborted "
                 "parent_transaction_id={parent}",
    "on_chargeback": "transaction_type=chargeback amount=-49.00 amount_brutto=-49.00 billing_status=aborted "
                     "parent_transaction_id={parent}",
    "on_payment_missed": "billing_type=subscription billing_status=paying transaction_type= pay_sequence_no=2",
    "on_rebill_cancelled": "billing_type=subscription billing_status=aborted transaction_type=",
    "on_rebill_resumed": "billing_type=subscription billing_status=paying transaction_type=",
    "last_paid_day": "billing_type=subscription billing_status=completed transaction_type=",
    "on_affiliation": "affiliate_name=partner123 transaction_type=",
}
EXAMPLE_PROMOPIT = """\
promopit_txn_id=PP-{number}
paypal_txn_id={paypal}
txn_date={today} {now}
txn_amount=27.00
txn_net=23.65
txn_currency=USD
product_name=Example Guide
my_product_id=GUIDE-1
promopit_product_id=5521
customer_name=Ana Müller
customer_email=ana@example.com
customer_user_id=77120
test_mode=1
add_info_1=Color
add_value_1=Red
custom_1=ref=newsletter
custom_2=
custom_3=
custom_4=
custom_5=
custom_6="""


def example_notification(provider, event):
    """A realistic notification for `event` with fresh ids, unsigned: what `send` and `demo` post."""
    # 18 digits, far past any sender's ids: a call `send` puts into the live store must never have
    # a real sale's id, or the sale would be taken for its copy, answered with its answer, unrun.
    number = int.from_bytes(os.urandom(8), "big") % (9 * 10 ** 17) + 10 ** 17
    values = {"event": event, "number": number, "parent": number - 1, "item": str(number)[::-1],
              "order_id": os.urandom(4).hex().upper(), "paypal": os.urandom(8).hex().upper()[:17],
              "today": time.strftime("%Y-%m-%d"), "now": time.strftime("%H:%M:%S")}
    if provider == PROMOPIT:
        return example_fields(EXAMPLE_PROMOPIT.split("\n"), values)
    if event == "connection_test":
        return {"event": event, "api_mode": "test", "ipn_version": "1.6"}
    fields = example_fields(EXAMPLE_DIGISTORE24.split("\n"), values)
    fields.update(example_fields(EXAMPLE_CHANGES.get(event, "").split(), values))
    return fields


def example_fields(lines, values):
    """{key: value} from "key=value" lines, with the {names} in them filled in from `values`."""
    return dict(line.format(**values).split("=", 1) for line in lines)


def sign_notification(provider, fields, config):
    """Add the signature (Digistore24) or the ISN key (PromoPit), exactly as the sender does."""
    name = "ISN_KEY" if provider == PROMOPIT else "SHA_PASSPHRASE"
    problem = secret_problem(config, name)
    if problem:
        raise ConfigError("cannot sign the notification: " + problem)
    signed = dict(fields)
    if provider == PROMOPIT:
        signed.setdefault("isn_key", config["ISN_KEY"])
    else:
        signed.setdefault("sha_sign", digistore24_signature(config["SHA_PASSPHRASE"], fields))
    return signed


def opener_for(url):
    """A urllib opener for `url` that follows no redirect: Digistore24 counts a redirect as a
    failure, and a redirect to a host's login page is not the file asked for."""
    import urllib.request

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    return urllib.request.build_opener(NoRedirects, *local_without_proxy(url))


def post_form(url, fields, timeout=30):
    """POST fields urlencoded to url without following redirects: (status, body text)."""
    import urllib.error
    import urllib.parse
    import urllib.request
    data = urllib.parse.urlencode(fields).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={
        "Content-Type": "application/x-www-form-urlencoded", "User-Agent": "ipn_receiver-send"})
    opener = opener_for(url)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        body = error.read().decode("utf-8", "replace")
        if 300 <= error.code < 400:
            body += "\n(redirect to %s: register the final URL; senders count a redirect as a " \
                    "failure)" % error.headers.get("Location", "?")
        return error.code, body


# What the web must never serve beside the receiver, the bytes that show it did, and what it is.
# Only the thing itself counts: a host may send its own "not found" page with status 200.
MUST_NOT_BE_SERVED = [
    ("", (b"edit here", b"import ipn_receiver"), "the script's own text, secrets and all: the server does not "
                                                  "run it as a program"),
    ("config.ini", (b"[digistore24]", b"[promopit]", b"[receiver]"), "your settings, secrets and all"),
    ("ipn_data/", (STORE_FILE_NAME.encode(), LOG_FILE_NAME.encode()), "a listing of the data folder"),
    ("ipn_data/" + STORE_FILE_NAME, (b"sqlite format 3\0",), "the store, buyers' data and all"),
    ("ipn_data/" + LOG_FILE_NAME, (b"] post -> ",), "the log"),
    ("__pycache__/", (b".pyc",), "a listing of Python's compiled copies, which hold the secrets"),
]


def get_start(url, timeout=10):
    """GET url without following redirects: the first 64 KiB of a 200 answer, or None."""
    import http.client
    try:
        with opener_for(url).open(url, timeout=timeout) as response:
            return response.read(65536) if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):     # (an error status too: not served)
        return None


def served_beside(url):
    """[(address, what it is)] for each file or listing beside the receiver at `url` that the web
    serves to anyone. Only a request from outside shows whether the server obeys the .htaccess
    (Apache ignores it under AllowOverride None): `check` cannot see it, so `send` asks."""
    import urllib.parse
    found = []
    for name, markers, what in MUST_NOT_BE_SERVED:
        address = urllib.parse.urljoin(url, name) if name else url
        start = get_start(address)
        if start is not None and any(marker in start.lower() for marker in markers):
            found.append((address, what))
    return found


def command_send(args):
    """Build, sign and POST one notification, and ask for what must not be served beside the
    receiver; exit 0 only when the answer starts with OK and nothing of that was served."""
    import urllib.error
    if not args.url.lower().startswith(("http://", "https://")):
        raise CommandFailed("--url must start with http:// or https://, e.g. "
                            "https://example.com/ipn/ipn_receiver.py", 2)
    provider = PROMOPIT if (args.provider == PROMOPIT or args.event == "sale") else DIGISTORE24
    if args.url.lower().startswith("http://") and not is_this_machine(args.url) and not args.allow_http:
        # The call would cross the network unencrypted, before any redirect to https could say so:
        # PromoPit's key is the whole of its protection, and one signed call is enough to try
        # passphrases offline.
        raise CommandFailed("%s goes unencrypted over the network, where anyone on the way could read it: use "
                            "https://, or add --allow-http on a network you trust"
                            % ("the ISN key" if provider == PROMOPIT else "a call signed with your passphrase"), 2)
    if provider == PROMOPIT and args.event != "sale":
        raise CommandFailed("PromoPit has one event, sale; run: send sale", 2)
    known = DIGISTORE24_EVENTS + DIGISTORE24_RARER_EVENTS
    if provider == DIGISTORE24 and args.event not in known and args.event not in DIGISTORE24_HANDLERS:
        # A misspelt event would be answered OK like any new one, stored, and run no handler. (One
        # the vendor has a handler for is one Digistore24 sends, as far as the vendor knows.)
        raise CommandFailed("%s is not one of Digistore24's events: %s" % (one_line(args.event), ", ".join(
            known + tuple(sorted(set(DIGISTORE24_HANDLERS) - set(known), key=str)))), 2)
    fields = example_notification(provider, args.event)
    for item in args.set or []:
        key, separator, value = environment_text(item).partition("=")      # (3.6 reads it as ASCII)
        if not separator or not key:
            raise CommandFailed("--set takes key=value, e.g. --set order_id=ABC123", 2)
        fields[key] = value
    config, secret = settings(), "ISN_KEY" if provider == PROMOPIT else "SHA_PASSPHRASE"
    fields = sign_notification(provider, fields, config)
    warn_of_a_miswritten_secret(config, secret)
    try:
        status, body = post_form(args.url, fields)
    except (urllib.error.URLError, OSError, ValueError) as error:
        import http.client
        import socket
        reason = getattr(error, "reason", error)
        if isinstance(reason, http.client.RemoteDisconnected):     # (the local server's 30 s, say)
            print("ERROR: %s closed the connection without an answer; a slow handler goes on and is recorded "
                  "(`events` shows how it ended), and a sender would retry the call" % args.url)
        elif isinstance(reason, socket.timeout):
            print("ERROR: no answer from %s within 30 s; a slow handler goes on and is recorded (`events` shows how it "
                  "ended), but a sender would take the call as failed and retry it" % args.url)
        else:
            print("ERROR: could not reach %s (%s); check the URL and that the server runs" % (args.url,
                                                                                           one_line(str(reason))))
        return 1
    print("HTTP %d" % status)
    # Whatever answers may write anything: its control characters escaped, it cannot drive the terminal.
    print("\n".join(one_line(line) for line in body.split("\n")))
    if status == 403:
        print("(send used the %s of this machine's settings, %s: the receiver's must be the same)"
              % (secret, config["where"][secret]))
    served = served_beside(args.url)
    for address, what in served:
        print("WARNING: the web serves %s to anyone: %s" % (address, what))
    if served:
        print("(the deployment guide's .htaccess denies these; where it has no effect, the host ignores .htaccess "
              "files: ask your host, or keep config.ini and the data folder outside the web space)")
    answered_ok = body == "OK" or body.startswith("OK\n")               # what Digistore24 counts as success
    return 0 if answered_ok and not served else 1


def warn_of_a_miswritten_secret(config, name):
    """Tell on stderr what `check` says of the secret `name` when it looks miswritten: send signs
    with it as the receiver reads it, so its call may pass where the sender's fail."""
    in_the_file = config["where"][name] == "%s at the top of ipn_receiver.py" % name
    mistakes = [mistake for secret, mistake in miswritten_secrets() if secret == name and in_the_file]
    mistakes.append(secret_mistake(config[name], name in set_in_the_ini(config)))
    for mistake in filter(None, mistakes):
        sys.stderr.write("WARNING: %s (%s) %s: send uses it as the receiver reads it, so its call may pass where "
                         "the sender's fail; %s\n" % (name, config["where"][name], SECRET_MISTAKES[mistake][0],
                                                       SECRET_MISTAKES[mistake][1] % name))


def is_this_machine(url):
    """Whether the host of `url` is this machine: localhost, 127.x.x.x or ::1."""
    import urllib.parse
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.") and set(host) <= set("0123456789.")


def local_without_proxy(url):
    """The handlers a urllib opener needs to reach `url` directly where it is on this machine.

    urllib sends even to 127.0.0.1 through the proxy of http_proxy, unless no_proxy names it:
    a call signed with the passphrase, or the ISN key, would go unencrypted to a proxy that may
    be on another machine.
    """
    import urllib.request
    return [urllib.request.ProxyHandler({})] if is_this_machine(url) else []


def command_demo(args):
    """Start a throw-away receiver, send it one of everything, and show what came back."""
    import shutil
    import tempfile
    data_dir = tempfile.mkdtemp(prefix="ipn-demo-")
    try:
        return run_demo(data_dir)
    finally:                                # (Ctrl+C too)
        close_store()
        log.reset()
        shutil.rmtree(data_dir, ignore_errors=True)


def run_demo(data_dir):
    """The demo, with its data in `data_dir`: 0 when everything behaved as expected."""
    global DIGISTORE24_HANDLERS, PROMOPIT_HANDLERS
    import threading
    import urllib.request

    config = use_settings(SHA_PASSPHRASE=os.urandom(16).hex(), ISN_KEY=os.urandom(16).hex(),
                          DATA_DIR=data_dir, LOG_LEVEL="INFO")
    log.to_stderr = False
    ran = []

    def stand_in(notification):             # the demo never runs your own handlers
        ran.append(notification.event)
        log.info("demo handler for %s %s", notification.event, notification.reference)
        if notification.event == "on_payment":
            return {"username": "jane", "password": os.urandom(4).hex(),
                    "loginurl": "https://example.com/login"}

    def signed(provider, event):
        return sign_notification(provider, example_notification(provider, event), config)

    payment = signed(DIGISTORE24, "on_payment")
    # What to send, the status expected, and how the answer must start ("" for the first answer to
    # on_payment: its copy must get that very answer, access data and all).
    plan = [("Digistore24 " + event, payment if event == "on_payment" else signed(DIGISTORE24, event), 200, "OK")
            for event in DIGISTORE24_EVENTS] + [
        ("the same on_payment again", payment, 200, ""),
        ("Digistore24 new_event (no handler)", signed(DIGISTORE24, "new_event"), 200, "OK"),
        ("PromoPit sale", signed(PROMOPIT, "sale"), 200, "OK"),
        ("on_payment signed with a wrong passphrase",
         dict(payment, sha_sign=digistore24_signature("wrong passphrase", payment)), 403, "ERROR: invalid sha signature"),
        ("on_payment with the amount changed", dict(payment, amount="0.01"), 403, "ERROR: invalid sha signature"),
        ("PromoPit sale with a wrong ISN key", dict(example_notification(PROMOPIT, "sale"), isn_key="guessed-key"),
         403, "ERROR: invalid isn key"),
    ]
    saved = DIGISTORE24_HANDLERS, PROMOPIT_HANDLERS
    DIGISTORE24_HANDLERS = {event: stand_in for event in DIGISTORE24_EVENTS}
    PROMOPIT_HANDLERS = {"sale": stand_in}
    server = make_local_server("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d/" % server.server_port
    try:
        with urllib.request.build_opener(*local_without_proxy(url)).open(url, timeout=10) as response:
            rows = [("GET (the senders' URL check)", 200, "OK", (response.status, response.read().decode("utf-8")))]
        rows += [(label, status, expected, post_form(url, fields)) for label, fields, status, expected in plan]
        counts = dict(open_store(config).execute(
            "SELECT status, count(*) FROM notifications GROUP BY status").fetchall())
    finally:
        server.shutdown()
        server.server_close()
        DIGISTORE24_HANDLERS, PROMOPIT_HANDLERS = saved
    first = rows[1 + DIGISTORE24_EVENTS.index("on_payment")][3][1]
    print("ipn_receiver demo: a throw-away receiver on %s, a random passphrase, data in a temporary "
          "folder; stand-in handlers, so your own are never called.\n" % url)
    print("  %-44s %-9s %s" % ("sent", "expected", "answer"))
    good = 0
    for label, status, expected, (got_status, got_body) in rows:
        behaved = got_status == status and got_body.startswith(expected or first)
        good += behaved
        print("  %-44s %-9s %d %s%s" % (label, status, got_status, shortened(got_body.replace("\n", " | "), 57),
                                        "" if behaved else "   <-- WRONG"))
    print("\nhandlers run: %d (%s)" % (len(ran), ", ".join(ran)))
    print("stored: %s" % ", ".join("%d %s" % (n, s) for s, n in sorted(counts.items())))
    print("\nthe receiver's log of this run (%s):" % LOG_FILE_NAME)
    try:
        with open(os.path.join(data_dir, LOG_FILE_NAME), encoding="utf-8") as file:
            for line in file:
                print("  " + line.rstrip()[24:])
    except OSError:
        pass
    all_good = good == len(rows) and len(ran) == len(DIGISTORE24_EVENTS) + 1
    print("\n%d of %d behaved as expected%s" % (good, len(rows), "" if all_good else ": SOMETHING IS WRONG"))
    return 0 if all_good else 1


def store_rows(config, where, parameters=(), limit=None):
    """Rows of the event store as dicts, newest first; none where there is no store yet (a command
    makes none: see refuse_another_user)."""
    if not store_within_reach(config):
        return []
    connection = open_store(config)
    connection.row_factory = dict_row
    sql = "SELECT * FROM notifications %s ORDER BY id DESC" % where
    if limit:
        sql += " LIMIT %d" % limit
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.row_factory = None


def no_store_yet(config):
    """What a command says where the settings it read name no event store."""
    return ("no event store at %s: nothing was received with the settings this command read. If calls have come "
            "in, run it with the receiver's own: the same config.ini (IPN_CONFIG, where the web server sets it) and "
            "DATA_DIR, as the user the web server runs the receiver as" % store_path(config))


def store_within_reach(config):
    """Whether the event store is there, for a command: False where there is none yet, and
    CommandFailed where this user may not look into the data folder or read the store, or where
    DATA_DIR is not a folder. (To os.path.exists all three look like no store, and a command run
    as the wrong user would say that nothing was stored.)"""
    path = store_path(config)
    try:
        os.stat(path)
        if os.access(path, os.R_OK):
            return True
    except FileNotFoundError:
        if os.path.exists(path + ".salvaged"):
            raise CommandFailed("a repair was interrupted before it put its new store in place; run `python3 "
                                "ipn_receiver.py repair` to do that (the next call does it too)")
        return False
    except NotADirectoryError:
        raise CommandFailed("DATA_DIR %s is a file, not a folder; `python3 ipn_receiver.py check` says what to do "
                            "with it (the event store, moved there by mistake, goes into a folder)"
                            % config["DATA_DIR"])
    except PermissionError:
        pass
    try:
        owner = user_name(os.stat(config["DATA_DIR"]).st_uid)
    except OSError:                         # (where this user cannot even see the folder)
        owner = "THAT_USER"
    raise CommandFailed("this command runs as %s, who cannot read the event store in %s; run it as the user the web "
                        "server runs the receiver as (%s ...)"
                        % (user_name(os.geteuid()) if hasattr(os, "geteuid") else "this user", config["DATA_DIR"],
                           command_line_as(owner, "")))


def dict_row(cursor, row):
    return {column[0]: value for column, value in zip(cursor.description, row)}


def stored_fields(row):
    """The fields of a stored row, as a dict; {} where they cannot be read: lost in a salvage, or
    damaged on the disk where SQLite does not look (one flipped bit in the JSON, say)."""
    import json
    try:
        fields = json.loads(row["fields"])
    except (ValueError, TypeError):         # (TypeError: a number or NULL where the text was)
        return {}
    return fields if isinstance(fields, dict) else {}


def reference_of(row):
    """The order/transaction id of a stored row, for tables."""
    fields = stored_fields(row)
    if row["provider"] == PROMOPIT:
        return one_line(shortened(str(fields.get("promopit_txn_id", "")), 60))
    return one_line(shortened("/".join(str(value) for value in (fields.get("order_id", ""),
                                                                fields.get("transaction_id", "")) if value), 60))


def local_time(timestamp):
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"                          # damaged on the disk


def command_events(args):
    """List stored notifications, newest first."""
    wanted = [(column, value) for column, value in (("status", args.status), ("event", args.event)) if value]
    clauses, parameters = ["%s = ?" % column for column, _ in wanted], [value for _, value in wanted]
    config = settings()
    rows = store_rows(config, "WHERE " + " AND ".join(clauses) if clauses else "", parameters, args.limit)
    if not rows:
        print(("no stored notifications" + (" match" if clauses else "")) if store_within_reach(config) else
              no_store_yet(config))
        return 0
    print("%6s  %-19s  %-11s  %-20s  %-10s  %3s  %3s  %s" % (
        "id", "received", "provider", "event", "status", "try", "got", "order/transaction"))
    for row in rows:
        # Each as text, escaped once: a flipped bit on the disk can make any column another type.
        cells = tuple(one_line(str(value)) for value in (row["id"], local_time(row["received_at"]), row["provider"],
                                                          row["event"], row["status"], row["attempts"], row["deliveries"]))
        print("%6s  %-19s  %-11s  %-20.20s  %-10.10s  %3s  %3s  %s%s" % (
            cells + (reference_of(row), "  (test)" if row["is_test"] else "")))
    return 0


def command_show(args):
    """Print one stored notification with all its fields.

    Field values are the buyer's words (a name, an address, `custom` from the buy link): each is
    printed on one line, its control characters escaped, so none can add a line to the output
    or send the vendor's terminal an escape sequence.
    """
    row = stored_row(settings(), args.id)
    for key in ("id", "provider", "event", "status", "attempts", "deliveries", "is_test",
                "duplicate_key", "last_error"):
        print("%-14s %s" % (key, one_line(str(row[key])) if row[key] is not None else "-"))
    for key in ("received_at", "claimed_at", "updated_at"):
        print("%-14s %s" % (key, local_time(row[key])))
    answer = [one_line(line) for line in str(row["answer"] or "-").split("\n")]     # (str: bytes where damaged)
    print("answer         " + "\n               ".join(answer))
    fields = {one_line(str(key)): one_line(str(value)) for key, value in stored_fields(row).items()}
    print("fields (%d):%s" % (len(fields), "" if fields else " none can be read (damaged); the sender's next "
                                                      "delivery of it brings them back"))
    # Padded to the longest key up to 40 characters: a key of a million, sent by whoever holds the
    # ISN key, would otherwise pad each of thousands of fields to a million spaces.
    width = min(max([len(key) for key in fields] + [1]), 40)
    for key, value in fields.items():
        print("  %-*s  %s" % (width, key, value))
    return 0


def command_replay(args):
    """Run the handler of a stored notification again now, and record the outcome; or, with
    --done, record it as handled without running it (for one the vendor has seen to by hand)."""
    config = settings()
    row = stored_row(config, args.id)
    stale = row["status"] == "processing" and claim_is_abandoned(row["claimed_at"], time.time(),
                                                                 config["PROCESSING_TIMEOUT"], row["claim"])
    if row["status"] in ("processing", "done", "ignored") and not stale and not args.force:
        raise CommandFailed(why_replay_waits(row, config, args.done))
    refuse_another_user(config, "replay")
    if args.done:
        update_unless_changed(config, row, "status = 'done', answer = 'OK', last_error = ?, claim = NULL",
                              ("marked done by hand (replay --done)",))
        log.info("#%d marked done by hand (replay --done); its copies are answered OK", row["id"])
        print("#%d is done now; its copies are answered OK, and its handler does not run" % row["id"])
        return 0
    fields = stored_fields(row)
    if not fields:
        raise CommandFailed("notification #%d lost its fields when the event store was damaged; the sender's next "
                            "delivery of it brings them back. Or, if it was handled, run: replay %d --done"
                            % (row["id"], row["id"]))
    table = "PROMOPIT_HANDLERS" if row["provider"] == PROMOPIT else "DIGISTORE24_HANDLERS"
    handler = globals()[table].get(row["event"])
    if handler is None:
        raise CommandFailed("there is no handler for %s; add one to %s first" % (one_line(row["event"]), table))
    notification = Notification(row["provider"], fields)
    notification.id, notification.key = row["id"], row["duplicate_key"]
    claim = "%d-replay-%s" % (os.getpid(), os.urandom(4).hex())
    update_unless_changed(config, row, "status = 'processing', attempts = attempts + 1, claim = ?, claimed_at = ?",
                          (claim, time.time()))
    # Which code runs, said before it runs: in a wrapper deployment the wrapper's handlers run only
    # when replay runs through the wrapper; through this file, its own would (README.md, "Handlers").
    code = getattr(handler, "__code__", None)
    print("#%d: running %s%s" % (row["id"], getattr(handler, "__name__", row["event"]), " of %s, line %d" % (
        code.co_filename, code.co_firstlineno) if code else ""))
    import contextlib
    with contextlib.redirect_stdout(sys.stderr):        # (a handler's print(): see command_serve)
        status, body, outcome = run_and_record(notification, handler, claim, config)
    log.info("replay of #%d: %s", row["id"], outcome)
    print(one_line("#%d %s %s: %s" % (row["id"], row["provider"], row["event"], outcome)))
    print(body)
    return 0 if status == 200 else 1


def why_replay_waits(row, config, done):
    """What replay says of a notification it does not run (or, with --done, mark) without --force."""
    if row["status"] == "processing":
        # Its handler may be running right now: a run of replay's would be a second one.
        return ("notification #%d is being processed: its handler started %d s ago and may be running right now "
                "(`show %d` says when it is done). If that run died, replay %s it once PROCESSING_TIMEOUT (%d s) "
                "has passed since it started; --force %s" % (
                    row["id"], max(0, time.time() - row["claimed_at"]), row["id"],     # (0: a clock set back)
                    "marks" if done else "runs", config["PROCESSING_TIMEOUT"],
                    "marks it now" if done else "runs it now, a second time if it is still running"))
    if done:
        return "notification #%d is %s already: its copies are answered %s; there is nothing to mark" % (
            row["id"], row["status"], "OK with the access data it gave" if str(row.get("answer")).startswith("OK\n")
            else "OK")
    return ("notification #%d is %s; replay runs failed ones (and abandoned and unknown ones). Add --force to run "
            "its handler %s anyway" % (row["id"], row["status"], "now" if row["status"] == "ignored" else "again"))


def refuse_another_user(config, command):
    """CommandFailed unless this process runs as the user the data folder belongs to.

    What a command writes there (rows, the lock, the log, a new store) becomes the user's who runs
    it. Made by another user (root over SSH, say), the web server could not open it, and every
    call after it would fail with 503. (Windows, where the local server may run, has no owners.)
    """
    owner = os.stat(config["DATA_DIR"]).st_uid
    if hasattr(os, "geteuid") and owner != os.geteuid():
        name = user_name(owner)
        raise CommandFailed("the data folder %s belongs to %s, and this command runs as %s; run it as %s, the user "
                            "the web server runs the receiver as (%s ...)"
                            % (config["DATA_DIR"], name, user_name(os.geteuid()), name, command_line_as(name, command)))


def command_line_as(user, command):
    """How to run `command` as `user` with the config file this command read (IPN_CONFIG is not
    in what sudo passes on)."""
    import shlex
    config_file = os.environ.get("IPN_CONFIG")
    return ("sudo -u %s %spython3 ipn_receiver.py %s" % (
        user, "env IPN_CONFIG=%s " % shlex.quote(config_file) if config_file else "", command)).rstrip()


def stored_row(config, number):
    """Notification `number` of the store, as a dict; CommandFailed when there is none."""
    rows = store_rows(config, "WHERE id = ?", (number,))
    if not rows:
        raise CommandFailed(("no notification #%d; `events` lists them" % number) if store_within_reach(config)
                            else no_store_yet(config))
    return rows[0]


def update_unless_changed(config, row, changes, values):
    """Make the SQL `changes` to a stored row, unless another process changed it since it was read."""
    if not write_to_store(config, lambda connection: connection.execute(
            "UPDATE notifications SET %s, updated_at = ? WHERE id = ? AND status = ? AND updated_at = ?" % changes,
            values + (time.time(), row["id"], row["status"], row["updated_at"])).rowcount):
        raise CommandFailed("notification #%d changed meanwhile; look again with `show %d`" % (row["id"], row["id"]))


def command_check(args):
    """A health report after uploading; exit 1 when anything needs fixing."""
    problems = []

    # Each line escaped: the names of files check finds (in __pycache__, in the data folder) are
    # anyone's who could make a file there, and one could hold the escape sequences that wipe a
    # PROBLEM off the vendor's screen, or a line break that forges an "ok".
    def report(ok, text, fix=None):
        print("%-8s %s" % ("ok" if ok else "PROBLEM", one_line(text)))
        if not ok:
            print("         fix: " + one_line(fix))
            problems.append(text)

    def note(text):
        print("note     " + one_line(text))

    report(sys.version_info >= (3, 6), "Python %s (%s)" % (sys.version.split()[0], sys.executable),
           "use Python 3.6 or later: change the first line of ipn_receiver.py to its path")
    try:
        config = settings()                 # (a wrapper's use_settings() included)
    except ConfigError as error:
        what, _, fix = str(error).partition("; ")
        report(False, "settings: " + what, error.fix or fix or "correct it, then run check again")
        return 1
    check_settings(report, note, config)
    check_handler_tables(report, note)
    check_script(report, note, config)
    if check_data_folder(report, note, config):
        check_store(report, note, config)
    print("\n%s" % ("all good" if not problems else "%d problem(s) to fix" % len(problems)))
    return 1 if problems else 0


def report_private(report, path, label, fix):
    """What `check` says about a file or folder others must not read."""
    found = os.stat(path)
    if found.st_uid == os.geteuid():
        report(not found.st_mode & 0o077, label % (found.st_mode & 0o777), fix % quoted(path))
    else:                                   # check's user (the web server's) reads it through its group
        report(not found.st_mode & 0o007, label % (found.st_mode & 0o777), "chmod o-rwx %s   (the web server's "
               "user may read it as its owner or through its group; no one else may)" % quoted(path))


def secrets_in_the_script():
    """The secret settings given a value at the top of ipn_receiver.py, whether in use or not (one
    that config.ini overrides is as readable)."""
    written = settings_written_here()
    return [name for name in SECRET_SETTINGS if not secret_problem({name: str(written[name] or "")}, name)]


def set_in_the_ini(config):
    """The settings that config.ini sets."""
    return [name for name in config["where"] if config["where"][name].startswith(
        "%s line " % os.path.basename(config["config_file"] or "?"))]


def check_settings(report, note, config):
    """What `check` says about the settings: the config file's mode, the secrets, the limits."""
    if config["config_file"]:
        report_private(report, config["config_file"], "config file %s (mode %%03o)" % config["config_file"].replace(
            "%", "%%"), "chmod 600 %s   (it holds secrets; others must not read it)")
    else:
        note("no config file; the settings come from ipn_receiver.py and the environment")
    unusable = [name for name in SECRET_SETTINGS if config[name].strip() not in ("", PLACEHOLDERS[name]) and
                secret_problem(config, name)]           # too short, or the passphrase the ISN key too
    missing = [name for name in SECRET_SETTINGS if secret_problem(config, name) and name not in unusable]
    for name in SECRET_SETTINGS:
        if name in unusable:
            report(False, "%s is set (%s), but cannot be used" % (name, config["where"][name]),
                   secret_problem(config, name))
        elif name not in missing:
            report(True, "%s is set (%s)" % (name, config["where"][name]))
            if config[name].replace(" ", "").isalpha() and len(config[name]) < 16:
                # "disabled", "not used": meant as "not set", they are a key anyone may guess.
                report(False, "%s is letters alone, like a word: whoever guesses it can send calls that pass" % name,
                       "choose a long random one with digits, the same at %s; if you do not use %s, leave the "
                       "placeholder" % ((sender_of(name),) * 2))
            if len(config[name]) < 12:
                note("%s is short (%d characters); a long random one is harder to guess"
                     % (name, len(config[name])))
        elif len(missing) == 1:
            note(secret_problem(config, name) + ". Calls from %s are refused until then."
                 % sender_of(name))
    if len(missing) == 2:
        report(False, "neither SHA_PASSPHRASE nor ISN_KEY is set: every notification is refused",
               secret_problem(config, "SHA_PASSPHRASE"))
    if config["MAX_BODY_BYTES"] < 65536:
        report(False, "MAX_BODY_BYTES is %d bytes, too few for a call with many fields (8 KB and more)"
               % config["MAX_BODY_BYTES"], "set it to 65536 or more, or leave it out (1048576); it counts bytes")
    for name, mistake in miswritten_secrets():
        report(False, "%s at the top of ipn_receiver.py %s" % (name, SECRET_MISTAKES[mistake][0]),
               SECRET_MISTAKES[mistake][1] % name)
    in_the_ini = set_in_the_ini(config)
    for name in SECRET_SETTINGS:
        mistake = secret_mistake(config[name], name in in_the_ini)
        if mistake:
            report(False, "%s (%s) %s" % (name, config["where"][name], SECRET_MISTAKES[mistake][0]),
                   SECRET_MISTAKES[mistake][1] % name)
    in_the_script = secrets_in_the_script()
    apart = [name for name in SECRET_SETTINGS
             if name in in_the_script or not secret_problem(config, name) and name not in in_the_ini]
    written = settings_written_here()
    try:
        without_the_ini = finish_settings(written, {name: ("", "") for name in written}, None)["DATA_DIR"]
    except ConfigError:
        without_the_ini = None
    if "DATA_DIR" in in_the_ini and apart and without_the_ini != config["DATA_DIR"]:
        # While config.ini is missing (renamed while it is edited, deleted before an upload), the
        # secrets set elsewhere (in the file as well, say) still verify calls, and a store in the
        # default folder runs every handler again. (Not where it names the same folder, as
        # config.example.ini copied as it is does.)
        report(False, "DATA_DIR is set in %s, but %s elsewhere" % (os.path.basename(config["config_file"]),
                                                                   " and ".join(apart)),
               "set %s in %s only, not at the top of ipn_receiver.py or in the environment (or DATA_DIR where "
               "they are): should it go missing for a moment (renamed while you edit it, say), calls would be "
               "stored in another folder, and their handlers would run again"
               % (" and ".join(apart), os.path.basename(config["config_file"])))
    for name, _, _, variable in SETTINGS_SOURCES:
        if config["where"][name].startswith("environment variable"):
            # Set in the shell check runs in, perhaps, and not where the web server runs the
            # receiver: every call refused, or a store of its own in another folder.
            note("%s comes from the environment variable %s: the web server must give the receiver the same (Apache's "
                 "SetEnv does not reach it through suEXEC, nor a WSGI app; config.ini does)" % (name, variable))
    for name, shipped in sorted(SHIPPED_SETTINGS.items()):
        # Edited at the top of the file, as its comments say, but set in config.ini or the
        # environment too: the edit does nothing (a PROCESSING_TIMEOUT raised for a slow handler,
        # say, and the handler taken over and run again after the old one).
        if str(written[name]).strip() != str(shipped) and not config["where"][name].endswith(" ipn_receiver.py"):
            report(False, "%s = %r at the top of ipn_receiver.py is not in effect: %s sets it"
                   % (name, written[name], config["where"][name]), "set it in one place: there, or delete it there "
                   "to use the value at the top of the file")


def check_handler_tables(report, note):
    """What `check` says about DIGISTORE24_HANDLERS and PROMOPIT_HANDLERS."""
    import difflib
    import inspect
    for name, lines in sorted(functions_defined_twice().items()):
        # A handler of the vendor's pasted above the one the file came with: the later one takes
        # the name, and the table (made below both) sends every sale to it, answered OK, undone.
        report(False, "%s is defined %d times in %s (lines %s): Python keeps the last one, and the others never run"
               % (name, len(lines), os.path.basename(__file__), ", ".join(map(str, lines))),
               "keep one: delete the others, or rename them")
    if is_the_placeholder(DIGISTORE24_HANDLERS.get("on_payment"), "on_payment"):
        note("on_payment is the one the file came with: it logs each payment, grants nothing, and the sale is "
             "answered OK. Write yours in its place (where a wrapper puts in your handlers, run check through it)")
    for table, events in (("DIGISTORE24_HANDLERS", DIGISTORE24_EVENTS + DIGISTORE24_RARER_EVENTS),
                          ("PROMOPIT_HANDLERS", ("sale",))):
        # A misspelt event in a table: its calls are answered OK, stored as ignored, and never run.
        # (One like no event we know of may be a new one of the sender's: a note.)
        handlers = globals()[table]
        for event in sorted(set(handlers) - set(events), key=str):
            like = difflib.get_close_matches(str(event), events, 1, 0.8)
            if like:
                report(False, "%s has a line for %s, an event the sender never sends (%s misspelt?)" % (
                    table, one_line(repr(event)), like[0]), "correct it to \"%s\": until then its notifications "
                       "are answered OK and never handled" % like[0])
            else:
                note("%s has a line for %s, which is not one of the events we know of: check its spelling" % (
                    table, one_line(repr(event))))
        for event in [event for event in events if event not in handlers and callable(globals().get(event))]:
            report(False, "%s has no line for %s, whose handler is defined" % (table, event), "add `\"%s\": %s,` "
                   "to %s: until then its notifications are answered OK and the handler never runs"
                   % (event, event, table))
        for event, handler in sorted(handlers.items(), key=str):
            # "on_refund": "on_refund" (in quotes), or None: every such call fails with 500.
            if not callable(handler):
                report(False, "%s's line for %s names %s, which is not a function" % (table, one_line(repr(event)),
                                                                                     one_line(repr(handler)[:60])),
                       "write the name of the function without quotes, e.g. `\"%s\": %s,`: until then each of "
                       "its notifications fails with 500" % (event, event))
            elif inspect.iscoroutinefunction(handler) or inspect.isgeneratorfunction(handler) or \
                    inspect.isasyncgenfunction(handler):
                # Called plainly, it returns a coroutine or a generator that never runs, and the call fails.
                report(False, "the handler for %s is written %s" % (one_line(repr(event)), "with `yield` in it" if
                                                                    inspect.isgeneratorfunction(handler) else
                                                                    "`async def`"),
                       "write it as a plain `def`, without `yield`: the receiver calls handlers plainly, and until "
                       "then each of its notifications fails with 500")
            # "on_refund": on_payment, copied from the line above: a refund runs the payment's code.
            elif callable(globals().get(event)) and handler is not globals()[event]:
                note("%s sends %s to %s, though a handler %s is defined: is that meant?" % (
                    table, event, getattr(handler, "__name__", "another function"), event))


def check_script(report, note, config):
    """What `check` says about the script, the programs that use it, and copies of its secrets."""
    script = os.path.abspath(__file__)
    in_the_script = secrets_in_the_script()
    # Every .py beside the script that uses the receiver (passenger_wsgi.py too); those that run it
    # as a CGI program (the launcher) need what a script run as CGI needs.
    wrappers = [os.path.join(HERE, name) for name in sorted(os.listdir(HERE)) if name.endswith(".py") and
                name != os.path.basename(script) and os.path.isfile(os.path.join(HERE, name)) and file_holds(
                    os.path.join(HERE, name), b"ipn_receiver")]
    # One that holds `application` is a WSGI server's (passenger_wsgi.py), even where it runs main()
    # for the commands too; one that runs main() and nothing of the kind is a launcher.
    wsgi = [wrapper for wrapper in wrappers if file_holds(wrapper, b"application")]
    # The secrets each holds: the script those written at its top, in use or not (one that
    # config.ini overrides is as readable); a wrapper those in use (its use_settings(), say).
    in_use = {name: config[name].encode("utf-8") for name in SECRET_SETTINGS if not secret_problem(config, name)}
    held = {program: [name for name in in_use if file_holds(program, in_use[name])] for program in wrappers}
    held[script] = in_the_script
    if not wsgi:
        # Where a WSGI server imports it, the script itself is never run; beside a launcher, it
        # may be registered still. An .htaccess or a cgi-bin says that Apache runs it as CGI;
        # without either, a WSGI server (mod_wsgi, gunicorn) may import it, which needs neither a
        # run bit nor a shebang line, or lighttpd or nginx run it.
        runs_as_cgi = os.path.isfile(os.path.join(HERE, ".htaccess")) or "cgi-bin" in HERE.split(os.sep)

        def note_unless_ok(ok, text, fix):      # what is needed only where the web server runs it as CGI
            if not ok:
                note("%s: not so. A web server that runs it as a CGI program (Apache, lighttpd, nginx with fcgiwrap) "
                     "needs that; a WSGI server does not. Fix: %s" % (text, fix))
        check_runs_as_cgi(report, script, "700" if in_the_script else "755",
                          report if runs_as_cgi else note_unless_ok)
    for launcher in wrappers:
        if launcher not in wsgi and file_holds(launcher, b"ipn_receiver.main()"):
            check_runs_as_cgi(report, launcher, "700" if held[launcher] else "755")
    htaccesses = [os.path.join(folder, ".htaccess") for folder in sorted(folders_on_the_way(HERE))
                  if os.path.isfile(os.path.join(folder, ".htaccess"))]
    config_files = [config["config_file"]] if config["config_file"] else []
    check_who_else_may_change_python(report)
    check_who_else_may_change_the_code(report, [script] + wrappers + htaccesses + config_files +
                                       code_python_may_run(sys.path))
    for program in [script] + wrappers:
        if held[program] and readable_by_others(program):
            # Where the web server runs the script as its owner (suEXEC, as on cPanel), only the owner
            # need read it; else the web server's user must, and the secrets belong in config.ini.
            report(False, "%s, set in %s, can be read by other users of this server (mode %03o)" % (
                " and ".join(held[program]), os.path.basename(program), os.stat(program).st_mode & 0o777),
                "chmod 700 %s, where the web server runs it as its owner (suEXEC, as on cPanel); else move the "
                "secrets into config.ini, readable by the web server's user only%s" % (quoted(program), (
                    ", and put the placeholders back" if program == script else "")))
    cache = os.path.join(HERE, "__pycache__")
    compiled = [name for name in (os.listdir(cache) if os.path.isdir(cache) else ())
                if name.startswith("ipn_receiver.") and readable_by_others(os.path.join(cache, name))]
    # Copies by their names (one may hold a secret since changed), and any file beside the script
    # that holds a secret in use (config.example.ini filled in, "Copy of config.ini").
    theirs = {os.path.realpath(path) for path in [script] + wrappers + config_files}
    backups = [name for name in os.listdir(HERE) if readable_by_others(os.path.join(HERE, name)) and (
        is_backup_copy(name) and (in_the_script or name.lstrip(".#").lower().startswith("config")) or
        os.path.realpath(os.path.join(HERE, name)) not in theirs and
        any(file_holds(os.path.join(HERE, name), secret) for secret in in_use.values()))]
    if backups or (compiled and in_the_script):
        # Python gives a compiled copy the mode the script had when it was first imported, and an
        # editor's backup copy of config.ini may not keep its mode.
        fixes = ["delete %s (or chmod 600 and move out of the web space what you keep)" % ", ".join(sorted(backups))
                 ] if backups else []
        if compiled:
            fixes.append("rm -r %s (Python writes its compiled copies again with the script's mode: so chmod 700 the "
                         "script first, where it may be)" % quoted(cache))
        report(False, "copies of the settings, secrets and all, can be read by other users of this server (%s)"
               % ", ".join(sorted(compiled + backups)), "; ".join(fixes))
    elif compiled:
        note("compiled copies of %s can be read by other users of this server (%s); if it ever held a secret, "
             "delete them: rm -r %s" % (os.path.basename(script), ", ".join(sorted(compiled)), quoted(cache)))
    check_example_config(report, config)
    stores = sorted(name for name in os.listdir(HERE)
                    if ".sqlite3" in name and readable_by_others(os.path.join(HERE, name)))
    if stores:
        # A backup made where the vendor stood: `sqlite3 ... ".backup copy.sqlite3"` under umask 022.
        report(False, "copies of an event store beside the script can be read by other users of this server (%s)"
               % ", ".join(stores), "chmod 600 them and move them out of the web space (they hold every buyer's data "
               "and the access data handed out); make copies as README.md says, under umask 077")


def check_example_config(report, config):
    """What `check` says of a config.example.ini beside the script that was filled in rather than
    copied: the receiver never reads it, so the secret written there is not the one in effect."""
    example = os.path.join(HERE, "config.example.ini")
    try:
        ini = read_ini_file(example) if os.path.isfile(example) else {}
    except (ConfigError, OSError):
        return                              # (not ours to read; a copy of a secret in it is reported above)
    unread = [name for name, section, key, _ in SETTINGS_SOURCES if name in SECRET_SETTINGS and ini.get(
        section, {}).get(key, "") not in ("", PLACEHOLDERS[name], config[name])]
    if unread:
        report(False, "config.example.ini sets %s, not as in effect: the receiver reads config.ini, never the "
               "example" % " and ".join(unread), "if it is yours, copy it: install -m 600 %s %s; then delete "
               "config.example.ini, which holds a secret" % (quoted(example),
                                                             quoted(os.path.join(HERE, CONFIG_FILE_NAME))))


def check_data_folder(report, note, config):
    """What `check` says about the data folder; True when it can be read and written, and the store
    may be opened."""
    import stat
    data_dir = config["DATA_DIR"]
    controlled = folder_others_control(data_dir)
    first = None if os.path.lexists(data_dir) else data_dir
    while first and not os.path.exists(first):
        first = os.path.dirname(first)          # the folder the data folder (or one on its way) is made in
    made_in = first and os.path.realpath(first)
    # (A folder others may write to, sticky or not: one of them could make the data folder first.)
    if controlled or (made_in and others_may(stat.S_IWOTH, made_in, os.stat(made_in), trusted_users())):
        report(False, "DATA_DIR %s: another user of this server may make, move or replace folders in %s" % (
               data_dir, controlled or first), out_of_others_reach(controlled or first) + " (another user could make "
               "the data folder first, or move it away, and read or change what is stored: the receiver refuses "
               "such a folder)")
    if sys.version_info < (3, 7) and any(ord(character) > 127 for character in data_dir):
        report(False, "data folder %s is named in ASCII" % data_dir, "set DATA_DIR to a folder named in ASCII "
               "characters, or use Python 3.7 or later: where a web server sets no LANG, Python 3.6 writes "
               "file names as ASCII, and every call would fail")
    script = os.path.abspath(__file__)
    owner = os.stat(script).st_uid
    if owner == os.geteuid():
        note("check runs as %s, the owner of %s: under suEXEC, as on cPanel, the user the web server runs the "
             "receiver as. Where the web server runs it as a different user, run check as that one"
             % (user_name(owner), os.path.basename(script)))
    else:
        note("check runs as %s; %s belongs to %s. Run check as the user the web server runs the receiver as "
             "(under suEXEC, as on cPanel: the script's owner)"
             % (user_name(os.geteuid()), os.path.basename(script), user_name(owner)))
    # check makes nothing: run by another user than the web server's, it would make the data folder
    # and the store that user's, and every call would fail.
    writable = os.path.isdir(data_dir) and os.access(data_dir, os.R_OK | os.W_OK | os.X_OK)
    disk = os.statvfs(data_dir) if os.path.isdir(data_dir) and hasattr(os, "statvfs") else None
    read_only = disk and disk.f_flag & os.ST_RDONLY
    if disk:                                    # (every call writes: a commit needs a few pages)
        free = disk.f_bavail * disk.f_frsize // 2 ** 20
        report(not read_only and free >= 1, "the data folder's disk can be written (%d MiB free)" % free,
               "ask your host: the file system is mounted read-only, as a host does with a disk that fails"
               if read_only else "free disk space: less than 1 MiB is left")
    broken = [link for link in sorted(folders_on_the_way(data_dir)) if os.path.islink(link) and not
              os.path.exists(link)]
    if broken:
        report(False, "DATA_DIR %s is a folder" % data_dir, "%s is a link to %s, which does not exist: make that "
               "folder, or set DATA_DIR to the folder itself" % (broken[0], os.readlink(broken[0])))
    elif os.path.exists(data_dir) and not os.path.isdir(data_dir) and file_holds(data_dir, b"SQLite format 3\0"):
        # A store moved with mv into a folder that was not there takes the folder's name. Moved away
        # as "a file", an empty store would start in its place, and every handler run again.
        report(False, "DATA_DIR %s is a folder" % data_dir, "it is a database, most likely the event store moved "
               "there with mv before the folder was made: mv %s %s.store && mkdir -m 700 %s && mv %s.store %s"
               % ((quoted(data_dir),) * 4 + (quoted(os.path.join(data_dir, STORE_FILE_NAME)),)))
    elif os.path.exists(data_dir) and not os.path.isdir(data_dir):
        report(False, "DATA_DIR %s is a folder" % data_dir, "it is a file: set DATA_DIR to a folder, or move the "
               "file away (the receiver makes the folder)")
    elif first and not os.path.isdir(first):
        # (No folder can be made below a file: "create it" would fail.)
        report(False, "DATA_DIR %s can be made" % data_dir, "%s on its way is a file, not a folder: correct DATA_DIR, "
               "or move that file away" % first)
    elif read_only:
        pass                                    # (said above: not a matter of owners)
    elif os.path.isdir(data_dir) or not os.access(first, os.W_OK | os.X_OK):     # (it is made in `first`)
        owner = os.stat(data_dir).st_uid if os.path.isdir(data_dir) else None
        report(writable, "data folder %s can be read and written by %s" % (data_dir, user_name(os.geteuid())),
               "chmod 700 %s   (it is yours, but its mode keeps you out)" % quoted(data_dir)
               if owner == os.geteuid() else
               "it belongs to %s: run check as the user the web server runs the receiver as, and make the folder "
               "that user's (chown, chmod 700)" % user_name(owner) if owner is not None
               else "create it, owned by the user the web server runs the receiver as (chmod 700)")
    else:
        note("data folder %s does not exist yet; the receiver makes it at its first call, as the user the web server "
             "runs it as, who must be able to write to %s (where that is not you, make the folder for that user, as "
             "README.md's cgi-bin layout does). Where notifications came before into another data folder, move "
             "that folder here first: in a new, empty store their copies would run their handlers again"
             % (data_dir, first))
    if writable:
        report_private(report, data_dir, "data folder mode %03o", "chmod 700 %s")
        check_owners(report, data_dir)
        if os.listdir(data_dir):                # (an empty folder is one the receiver has yet to use)
            report(denies_the_web(os.path.join(data_dir, ".htaccess")), "data folder has its .htaccess, which denies "
                   "the web", others_files_problem(data_dir) or "restore %s/.htaccess (it denies web access); the "
                   "receiver writes it again at its next call" % data_dir)
        if os.path.dirname(data_dir) == HERE:
            note("the data folder is beside the script; outside the web root is safer (set DATA_DIR, and move the "
                 "store into it: check says how)")
    check_web_folder(report, note, data_dir)
    left_behind = os.path.join(HERE, SHIPPED_SETTINGS["DATA_DIR"])        # the default data folder
    beside_the_link = os.path.join(os.path.dirname(os.path.abspath(__file__)), SHIPPED_SETTINGS["DATA_DIR"])
    if os.path.isfile(os.path.join(beside_the_link, STORE_FILE_NAME)):
        left_behind = beside_the_link       # (check run through a link: where calls kept it before they followed links)
    elsewhere = os.path.normcase(os.path.realpath(left_behind)) != os.path.normcase(os.path.realpath(data_dir))
    stop_calls = ("rename ipn_receiver.py for a moment (calls get 404, and the senders retry them later; under WSGI, "
                  "stop the app instead), wait until no call is running (ps -ef | grep -e ipn_receiver -e ipn.py)")
    journal = os.path.join(left_behind, STORE_FILE_NAME + "-wal")
    reunite = False
    if elsewhere and os.path.isfile(os.path.join(left_behind, STORE_FILE_NAME)):
        # DATA_DIR was set after calls had come: the store they made stayed behind, on the web.
        report(False, "an event store was left in %s, beside the script; DATA_DIR is %s" % (left_behind, data_dir),
               stop_calls + ", make the folder "
               "DATA_DIR if it is not there (mkdir -m 700 %s: else mv renames the store to its name), move the "
               "store's files (events.sqlite3, and its -wal and -shm files if any) into it if it has no "
               "store yet (else keep the one with more notifications, and move the other folder out of the web root, "
               "not deleted: the sales only it holds, `sqlite3` shows), and rename the script back: a store left "
               "behind can be downloaded, and in an empty one the copies of notifications already handled run their "
               "handlers again" % quoted(data_dir))
    elif elsewhere and os.path.isfile(journal) and os.path.getsize(journal):
        # The store moved without its journal, which may hold the last notifications: SQLite reads
        # them from it only beside the store it was written for, and before that store writes anew.
        # Put beside a store written since, SQLite would lay its old pages over the new ones.
        store = os.path.join(data_dir, STORE_FILE_NAME)
        written_since = os.path.exists(store + "-wal") or (
            os.path.exists(store) and os.stat(store).st_mtime > os.stat(journal).st_mtime)
        report(False, "the event store's journal was left in %s without its store; DATA_DIR is %s" % (
            left_behind, data_dir), "keep %s (and its -shm file) out of the web space, and never put it beside the "
            "store: the store has been written since, and SQLite would lay the journal's old pages over the new "
            "ones, damaging it. It may hold the last notifications before the move, which can be recovered by hand "
            "only" % quoted(journal) if written_since else stop_calls + ", and move %s (and its -shm file) beside "
            "the store it was written for, in %s, before a call writes to that store; then rename the script back. "
            "It may hold the last notifications, which are lost to the store until then (check has not opened "
            "the store: that may write to it too)" % (quoted(journal), quoted(data_dir)))
        reunite = not written_since     # (opened, a store of an older schema is brought up to date)
    for other in stores_in_the_suggested_folder(data_dir, left_behind):
        # DATA_DIR names another folder than the one README.md suggests, which holds a store: an
        # older config.ini put back without its data_dir line, say. Calls then go into a new store,
        # where failed sales of the other are not seen, and copies of its sales run again.
        report(False, "an event store is in %s (last written %s), and DATA_DIR is %s" % (
            other, local_time(last_written(other)), data_dir), "if DATA_DIR named that folder before (an older "
            "config.ini put back, say), set it again (data_dir = %s), and keep %s, not deleted: it holds the "
            "calls that came meanwhile. If that store is no longer used, rename its folder (%s.old)" % (
                other, data_dir, other))
    for name in os.listdir(data_dir) if writable else ():
        if ".damaged-" in name and not name.endswith(("-wal", "-shm")):
            report(False, "a store was set aside (damaged, or by repair --force): %s" % name,
                   "look through it (`sqlite3 %s`), then move it out of the data folder, with its -wal and -shm "
                   "files if any" % quoted(os.path.join(data_dir, name)))
        elif name == STORE_FILE_NAME + ".salvaged":
            report(False, "an interrupted repair left %s" % name, "run `python3 ipn_receiver.py repair`, which puts it "
                   "in place if there is no store; beside a store, it is older than the store: move it out of the "
                   "data folder")
    return writable and not reunite


def check_store(report, note, config):
    """What `check` says about the event store in a data folder it can read and write."""
    sqlite3 = sqlite3_module()
    data_dir = config["DATA_DIR"]

    def report_rows(rows, what, fix):           # (the first five of them named)
        if rows:
            report(False, "%d notification%s %s: %s" % (len(rows), "" if len(rows) == 1 else "s", what,
                                                       one_line(", ".join(rows[:5]))), fix)
    if not os.path.exists(store_path(config)):
        if store_was_made(data_dir):
            report(False, "event store: " + STORE_GONE % store_path(config), "see the message")
        else:
            note("no event store yet; the receiver makes it at its first call")
        return
    try:
        connection = open_store(config)
        result = connection.execute("PRAGMA integrity_check").fetchone()[0]
        journal = connection.execute("PRAGMA journal_mode").fetchone()[0]
        counts = dict(connection.execute(
            "SELECT status, count(*) FROM notifications GROUP BY status").fetchall())
        report(result == "ok", "event store %s: integrity %s, journal %s" % (
            store_path(config), result.splitlines()[0], journal),
            "python3 ipn_receiver.py repair   (sets it aside, keeps every row that can be read)")
        # A transaction another program keeps open (a `sqlite3` session left inside one, a database
        # browser): reads go on, so the rest of check sees nothing, but every call waits, then 503.
        connection.execute("PRAGMA busy_timeout = 2000")
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            free = True
        except sqlite3.OperationalError:
            free = False
        connection.execute("PRAGMA busy_timeout = %d" % (BUSY_TIMEOUT_SECONDS * 1000))
        report(free, "no other program holds the event store's write lock", "another program (a `sqlite3` session "
               "left inside a transaction, a database browser) has held it for over 2 s: every call waits %d s for "
               "it, then gets 503. Find it (`fuser -v %s`), and end its transaction or the program"
               % (BUSY_TIMEOUT_SECONDS, quoted(store_path(config))))
        note("stored: %s" % (", ".join("%d %s" % (n, one_line(str(s))) for s, n in sorted(counts.items(), key=str))
                             or "nothing yet"))
        check_what_the_store_shows_of_the_setup(report, config, connection)
        # Calls of an event that had no handler when they came (a misspelt line in the table):
        # answered OK and never run.
        waiting = ["#%d %s" % (number, event) for number, provider, event in connection.execute(
            "SELECT id, provider, event FROM notifications WHERE status = 'ignored' ORDER BY id")
            if (PROMOPIT_HANDLERS if provider == PROMOPIT else DIGISTORE24_HANDLERS).get(event)]
        report_rows(waiting, "stored with no handler run, whose event has one now", "`replay ID "
                    "--force` runs the handler for each one that still needs it (its sender was answered OK, and "
                    "sends it no more)")
        # A handler that started and was never recorded as ended (its process killed, or its
        # outcome not stored): the sender's next copy runs it again.
        stuck = ["#%d" % number for number, claimed_at, claim in connection.execute(
            "SELECT id, claimed_at, claim FROM notifications WHERE status = 'processing' ORDER BY id")
            if claim_is_abandoned(claimed_at, time.time(), config["PROCESSING_TIMEOUT"], claim)]
        report_rows(stuck, "whose handler started over PROCESSING_TIMEOUT ago, and whose outcome was never "
                    "recorded", "ipn_receiver.log and ipn_receiver.errors.log say how each ended; `replay ID` runs "
                    "the handler again (as the sender's next copy would), `replay ID --done` records one that did "
                    "its work")
        # Damage SQLite's integrity check cannot see: a flipped bit inside a row's JSON.
        damaged = ["#%d" % number for number, fields in connection.execute("SELECT id, fields FROM notifications")
                   if fields != UNREADABLE["fields"] and not stored_fields({"fields": fields})]
        report_rows(damaged, "whose fields are damaged", "`show ID` for each; `replay ID --done` for one that was "
                    "handled, and for one that was not, the sender's next delivery runs it")
        if counts.get("failed"):
            # Its handler raised: the sender retries it for a while, and each retry fails the same
            # way until the handler is fixed.
            report(False, "%d notification%s whose handler failed, not yet handled" % (
                counts["failed"], "s" if counts["failed"] > 1 else ""),
                   "`python3 ipn_receiver.py events --status failed` lists them and `show ID` says why; fix the "
                   "handler, then `replay ID` each (or let the sender's next retry run it); `replay ID --done` for "
                   "one you handled yourself")
        if counts.get("unknown"):
            report(False, "%d notification%s salvaged from damage with the status lost" % (
                counts["unknown"], "s" if counts["unknown"] > 1 else ""),
                   "for each of `python3 ipn_receiver.py events --status unknown`: `replay ID` to run "
                   "its handler, or `replay ID --done` if it was handled")
        damaged = ["#%d" % row[0] for row in connection.execute(
            "SELECT id, status, answer, claimed_at, claim, updated_at, attempts, event FROM notifications")
            if row_damage(*row[1:])]
        report_rows(damaged, "whose row is damaged", "`show ID` for each, and your own records (was it "
                    "handled?); then `replay ID` to run its handler, or `replay ID --done` if it was handled")
    except (StorageError, sqlite3.Error, UnicodeDecodeError) as error:
        if store_is_damaged(error) and not cut_short(store_path(config)):
            damage = error_text(error).replace("event store %s: " % store_path(config), "").split("; ")[0]
            report(False, "event store %s can be read (it is damaged: %s)" % (store_path(config), damage),
                   what_repair_would_do(config))
        else:
            report(False, "event store: %s" % error_text(error), "see the message; for a damaged store: "
                   "python3 ipn_receiver.py repair")
    for name in (STORE_FILE_NAME, LOG_FILE_NAME, ERROR_LOG_FILE_NAME):
        # (A link or anything but a file: check_store_files. A chmod would go through a link to
        # whatever it names, /etc/passwd say, where check runs as root.)
        path = os.path.join(data_dir, name)
        if os.path.isfile(path) and not os.path.islink(path):
            report_private(report, path, name + " mode %03o", "chmod 600 %s")
    check_store_files(report, data_dir)


def what_repair_would_do(config):
    """What `check` advises for a store that cannot be opened for damage: `repair`, where it would
    keep rows, else what repair would say itself (set_damaged_store_aside): a store that held
    rows, none of which can be read, is left as it is, to be recovered by hand."""
    connection = sqlite3_module().connect(":memory:")
    try:
        migrate_store(connection)
        copied = salvage_rows(store_path(config), connection)[0]
    finally:
        connection.close()
    if not copied and may_hold_rows(store_path(config)):
        return UNREADABLE_STORE % store_path(config)
    return ("python3 ipn_receiver.py repair   (sets it aside, and keeps the %d notifications that can be read)"
            % copied)


def check_runs_as_cgi(report, program, mode, as_cgi_only=None):
    """What `check` says about a program a web server runs as CGI: the script, or a launcher.

    `as_cgi_only`, where given, reports what only a CGI program needs (a shebang line, the run
    bit). Windows line endings or a BOM are reported by `report` whatever runs the file: they are
    an editor's or an upload's mistake, which a CGI server cannot start, and fixing them harms
    nothing."""
    as_cgi_only = as_cgi_only or report
    with open(program, "rb") as file:
        first_line = file.readline()
    windows = first_line.startswith(b"\xef\xbb\xbf") or first_line.startswith(b"#!") and first_line.endswith(b"\r\n")
    if first_line.startswith(b"\xef\xbb\xbf"):
        fix = ("save the file as UTF-8 without a BOM (the byte order mark some Windows editors write first), with "
               "Unix (LF) line endings (sed -i '1s/^\\xef\\xbb\\xbf//; s/\\r$//' %s); with either, a CGI call "
               "fails with 500" % quoted(program))
    elif first_line.startswith(b"#!"):
        fix = ("save the file with Unix (LF) line endings (sed -i 's/\\r$//' %s); with CRLF a CGI call fails with "
               "500" % quoted(program))
    else:
        fix = "make #!/usr/bin/env python3 its first line, as in README.md; without it, a CGI call fails with 500"
    shebang_report = report if windows else as_cgi_only
    shebang_report(first_line.startswith(b"#!") and not first_line.endswith(b"\r\n"),
                   "%s starts with a shebang line ending in LF" % os.path.basename(program), fix)
    as_cgi_only(os.access(program, os.X_OK), "%s has its run bit set" % os.path.basename(program),
                "chmod %s %s   (needed to run as CGI)" % (mode, quoted(program)))


def check_who_else_may_change_the_code(report, files):
    """What `check` says about the files that decide what the receiver does (the script, its
    launchers, the config file: `files`), the folder they are in (and those on the way to it) and
    Python's compiled copies in __pycache__: another user who may change one of them could run
    their own code as the receiver's user, or give it a passphrase of their own."""
    import stat
    trusted = trusted_users()
    controlled = folder_others_control(HERE)
    if controlled:
        report(False, "another user of this server may change %s, the folder of ipn_receiver.py or one on the way "
               "to it: they could replace the script, or put a config.ini of theirs beside it" % controlled,
               "move the receiver into a folder of your own (%s is open to all by design)" % quoted(controlled)
               if is_shared(controlled) else "chmod go-w %s where it is yours; else move the receiver into a folder "
               "of your own" % quoted(controlled))
    cache = os.path.join(HERE, "__pycache__")
    if os.path.isdir(cache):
        files = files + [cache] + [os.path.join(cache, name) for name in sorted(os.listdir(cache))]
    for path in dict.fromkeys(files):         # (once each, in order: the script is on sys.path too)
        try:
            found = os.lstat(path)
        except OSError:                         # (gone this moment)
            continue
        if found.st_uid not in trusted:
            report(False, "%s belongs to %s, another user of this server" % (path, user_name(found.st_uid)),
                   "rm -r %s   (Python runs what is in it as the receiver's user; it makes the folder again, "
                   "closed to others where the umask is 022, as the launcher of README.md sets it)" % quoted(cache)
                   if path.startswith(cache) else
                   "delete it and upload your own, as the receiver's user; it decides what the receiver does")
        elif not stat.S_ISLNK(found.st_mode) and others_may(stat.S_IWOTH, path, found, trusted):
            report(False, "%s can be changed by other users of this server (mode %03o)" % (
                   path, found.st_mode & 0o777), "rm -r %s   (another user could have put code of theirs in it, which "
                   "Python would run as the receiver's user; it makes the folder again, closed to others where the "
                   "umask is 022, as the launcher of README.md sets it)" % quoted(path) if path == cache
                   else "chmod go-w %s   (it decides what the receiver does)" % quoted(path))


def check_who_else_may_change_python(report):
    """What `check` says about the folders from which Python runs code as the receiver's user:
    the interpreter's, the standard library, every site-packages, the user's own (~/.local), a
    virtual environment (cPanel's "Setup Python App" makes one) and the script's own. Another user
    who may change one of them could run their own code as the receiver's user, as much as one
    who may change the script. (What is in them: code_python_may_run.)"""
    import site
    places = [sys.executable, site.getusersitepackages()] + [path for path in sys.path if path]
    reported = set()
    for place in places:
        controlled = folder_others_control(place)
        if controlled and controlled not in reported:
            reported.add(controlled)
            report(False, "another user of this server may change %s, from where Python runs code as the receiver's "
                   "user (%s)" % (controlled, place), ("" if is_shared(controlled) else "chmod go-w %s where it "
                   "is yours; else " % quoted(controlled)) + "run the receiver with a Python, and a virtual "
                   "environment, that only you and root may change")


# The modules the receiver imports only where it needs them (a failed handler's traceback, the
# commands): a folder named like one of them is code, though check may not have imported it.
IMPORTED_WHEN_NEEDED = ("_sqlite3", "argparse", "ast", "contextlib", "difflib", "errno", "fcntl", "fnmatch", "grp", "http",
                        "inspect", "io", "json", "pwd", "re", "shlex", "shutil", "signal", "site", "socket",
                        "socketserver", "sqlite3", "stat", "struct", "tempfile", "threading", "traceback", "types",
                        "urllib", "wsgiref")


def code_python_may_run(folders):
    """What in `folders` (sys.path) Python may import, or runs at every start, as the receiver's
    user: modules (.py, .pyc, .so: one beside the script named like one the receiver imports,
    hashlib.py, say, is taken for it), .pth files (site-packages runs their import lines), and
    packages: a folder with an __init__.py, or one named like a module in use or that the receiver
    imports (another user who may write to it could add one). The folders themselves:
    check_who_else_may_change_python."""
    found = []
    for folder in folders:
        try:
            names = sorted(os.listdir(folder))
        except OSError:                         # (not there, a .zip, or "")
            continue
        for name in names:
            path = os.path.join(folder, name)
            # (A package's own name is in sys.modules once any module of it is.)
            if name.endswith((".py", ".pyc", ".so", ".pth")) or os.path.isdir(path) and (
                    name in sys.modules or name in IMPORTED_WHEN_NEEDED or
                    os.path.exists(os.path.join(path, "__init__.py"))):
                found.append(path)
    return found


def readable_by_others(path):
    """Whether `path` is a file (not a link: an editor's lock, .#config.ini, is one to nowhere)
    that other users of this server may read: every user, its group's, or one an ACL names."""
    import stat
    try:
        found = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(found.st_mode) and others_may(stat.S_IROTH, path, found, trusted_users())


def file_holds(path, text):
    """Whether the start of the file at `path` holds the bytes `text`: b"ipn_receiver.main()" for a
    launcher (or a wrapper) that runs the receiver, b"ipn_receiver" for any file that uses it
    (passenger_wsgi.py too). False where it cannot be read."""
    try:
        with open(path, "rb") as file:
            return text in file.read(65536)
    except OSError:
        return False


def check_what_the_store_shows_of_the_setup(report, config, connection):
    """What `check` says where the store shows a sender or a handler in use that the settings or
    the handlers have since lost (left behind in an upgrade, say): calls refused, or sales
    answered OK and never handled."""
    senders = dict(connection.execute("SELECT provider, count(*) FROM notifications GROUP BY provider").fetchall())
    for name in SECRET_SETTINGS:
        stored = senders.get(PROMOPIT if name == "ISN_KEY" else DIGISTORE24, 0)
        if stored and secret_problem(config, name):
            # (Where it is set, but cannot be used, the line about the settings said how to fix it.)
            set_but_unusable = config[name].strip() not in ("", PLACEHOLDERS[name])
            report(False, "%s cannot be used, though the %d %s notification%s in the store came with one" % (
                name, stored, sender_of(name), "s" if stored > 1 else ""),
                ("fix %s as said above" % name if set_but_unusable else secret_problem(config, name)) +
                "; until then each call of %s, its copies too, is refused with 503" % sender_of(name))
    if is_the_placeholder(DIGISTORE24_HANDLERS.get("on_payment"), "on_payment"):
        given = [number for number, answer in connection.execute(
            "SELECT id, answer FROM notifications WHERE provider = ? AND event = 'on_payment' AND status = 'done' "
            "ORDER BY id", (DIGISTORE24,)) if str(answer).startswith("OK\n")]
        if given:
            report(False, "on_payment is a handler of yours, as when %d payments in the store (the last #%d) were "
                   "answered with access data" % (len(given), given[-1]), "it is the one the file came with, which "
                   "grants nothing: put yours back (was it left in the file before an upgrade? where a wrapper puts "
                   "in your handlers, run check through it); then, for each "
                   "payment after #%d answered OK alone (`python3 ipn_receiver.py events --event on_payment`), "
                   "`replay ID --force`" % given[-1])


def functions_defined_twice():
    """{name: [line, ...]} of the functions and classes defined more than once at the top level of
    this file, where Python keeps the last one."""
    import ast
    with open(__file__, "rb") as file:
        tree = ast.parse(file.read())
    lines = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            lines.setdefault(node.name, []).append(node.lineno)
    return {name: found for name, found in lines.items() if len(found) > 1}


def is_the_placeholder(handler, event):
    """Whether `handler` is still the one this file comes with for `event`: a function that only
    logs a line ending "(edit <event>)", and touches no name but log.info and notification.get."""
    code = getattr(handler, "__code__", None)
    return code is not None and set(code.co_names) <= {"log", "info", "get"} and any(
        "(edit %s)" % event in constant for constant in code.co_consts if isinstance(constant, str))


def check_store_files(report, data_dir):
    """What `check` says about the files every call writes: the store, its journal, its lock and
    the logs. Each makes every call a 503 where it is not a file this user can write (a backup
    restored read-only, a folder made in its place), or, for the lock, where another process holds
    it; a log, that the lines (and the traceback an error answer points to) are not written there."""
    import stat
    names = (STORE_FILE_NAME, STORE_FILE_NAME + "-wal", STORE_FILE_NAME + "-shm", ".lock", LOG_FILE_NAME,
             ERROR_LOG_FILE_NAME)
    for name in [name for name in names if os.path.lexists(os.path.join(data_dir, name))]:
        path = os.path.join(data_dir, name)
        why = ("the receiver writes its lines to stderr alone then, and an error answer's traceback is not there"
               if name.endswith(".log") else "every call needs to write it")
        if not stat.S_ISREG(os.lstat(path).st_mode):
            report(False, "%s is a file" % name, "it is a folder or a link, which the receiver does not open (%s): "
                   "move it out of the data folder (`mv %s %s.moved`)%s" % (
                       why, quoted(path), quoted(path), "" if name == STORE_FILE_NAME
                       else "; the receiver makes it again"))
        elif not os.access(path, os.R_OK | os.W_OK):
            report(False, "%s can be read and written by %s" % (name, user_name(os.geteuid())),
                   "chmod 600 %s   (%s)" % (quoted(path), why))
        elif name == ".lock":
            fd = os.open(path, os.O_RDONLY)
            try:
                lock_within(fd, 2)
                free = True
            except StoreBusy:
                free = False
            finally:
                os.close(fd)            # (lets the lock go, if taken)
            report(free, "the store's lock is free", "another process has held %s for over 2 s, and every call "
                   "waits %d s for it, then gets 503: find that process (`fuser -v %s`) and end it if it is stuck "
                   "(a `repair` stopped with Ctrl+Z, say: `fg` goes on with it)" % (path, LOCK_TIMEOUT_SECONDS,
                                                                                   quoted(path)))


def check_owners(report, data_dir):
    """What `check` says about who the data folder and its files belong to: the user the web server
    runs the receiver as, who is the one check must run as. A file made by a command run as another
    user cannot be opened by the web server."""
    owner = os.stat(data_dir).st_uid
    report(owner == os.geteuid(), "data folder belongs to the user check runs as (it belongs to %s; check runs as %s)"
           % (user_name(owner), user_name(os.geteuid())),
           "run check as the user the web server runs the receiver as: the data folder belongs to %s, and it "
           "and its files must belong to that user" % user_name(owner))
    for name in sorted(os.listdir(data_dir)):
        path = os.path.join(data_dir, name)
        if os.lstat(path).st_uid != owner:
            report(False, "%s in the data folder belongs to %s, the folder to %s" % (
                name, user_name(os.lstat(path).st_uid), user_name(owner)),
                "chown %s%s %s   (a command run as another user made it; the web server cannot use it)"
                % ("-h " if os.path.islink(path) else "", quoted(user_name(owner)), quoted(path)))


def quoted(path):
    """`path` as a shell takes it, for a command check suggests: a file's name, which anyone who
    could make the file chose, may hold a space, a `;` or a `$(...)`."""
    import shlex
    return shlex.quote(path)


def user_name(uid):
    """The name of the user with that id (the id itself where it has none)."""
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "user %d" % uid


# What miswritten_secrets finds: what check says, and the fix (for the setting's name).
SECRET_MISTAKES = {
    "escapes": ("is written without the r before its quotes",
                "write it as %s = r\"...\": Python reads a backslash there with the character after it as "
                "something else (and Python 3.12 and later print the line, secret and all, into the web "
                "server's error log), or put it into config.ini"),
    "quote": ("holds a quote, which ends it early",
              "put %s into config.ini, where it is taken as it is: in the file, Python reads what follows the "
              "quote as a comment, so the secret in use is only what comes before it"),
    # config.ini takes a value as it is written, to the end of the line (see read_ini_file).
    "quotes": ("is in quotes, which are taken as part of it",
               "remove the quotes around %s; were they truly part of it, choose a new one without them, the same on "
               "both sides"),
    "spaces": ("begins or ends with a space, a tab or a line break",
               "remove them where %s is set; were they truly part of it, choose a new one without them, the same on "
               "both sides"),
    "ini comment": ("has what looks like a comment after it (\" ;\" or \" #\"), which config.ini takes as part of it",
                    "move the comment to a line of its own (config.ini has none after a value); were it truly part "
                    "of %s, choose a new one without it, the same on both sides"),
}


def secret_mistake(value, from_ini):
    """What looks miswritten in a secret: "quotes" around it (config.ini and the environment take
    them as part of it, where other INI readers and shells do not; typographic ones, pasted from
    a document, anywhere), "spaces" around it (config.ini strips them; the file and the
    environment do not), or an "ini comment" after it in config.ini (other INI readers allow
    one); None for nothing. Every call would be refused while the secret seemed set."""
    if len(value) > 1 and value[0] in QUOTES and value[-1] in QUOTES:
        return "quotes"
    if value.strip() != value and value.strip():
        return "spaces"
    if from_ini and any(space + mark in value for space in " \t" for mark in ";#"):
        return "ini comment"
    return None


QUOTES = "\"'\u201c\u201d\u2018\u2019\u201e\u00ab\u00bb"     # "' and typographic ones


def miswritten_secrets():
    """[(name, mistake)] for the secret settings written at the top of this file so that Python
    reads them as something else than what the vendor pasted: "escapes", a backslash in a string
    that is not raw ("\\d", "\\t"); "quote", a quote like those around it, which ends the string
    early and leaves the rest as a comment (the line then ends in that quote, where a comment of
    the vendor's would not)."""
    import re
    with open(os.path.abspath(__file__), encoding="utf-8") as file:      # (it runs: it is UTF-8)
        found = re.findall(r"^(%s) *= *([a-zA-Z]*)([\"'])(.*)$" % "|".join(SECRET_SETTINGS), file.read(), re.M)
    mistakes = []
    for name, prefix, quote, rest in found:
        if rest.count(quote) > 1 and rest.rstrip().endswith(quote):
            mistakes.append((name, "quote"))
        elif "\\" in rest and "r" not in prefix.lower():
            mistakes.append((name, "escapes"))
    return mistakes


def stores_in_the_suggested_folder(data_dir, left_behind):
    """The folders README.md suggests for DATA_DIR outside the web root (~/ipn_data of the user
    check runs as, and of the script's owner) that hold an event store, where DATA_DIR is another
    (and `left_behind`, the default data folder beside the script, which check looks at itself)."""
    if not hasattr(os, "geteuid"):
        return []
    import pwd
    homes = set()
    for uid in (os.geteuid(), os.stat(os.path.abspath(__file__)).st_uid):
        try:
            homes.add(pwd.getpwuid(uid).pw_dir)
        except KeyError:                    # (a user the system does not name)
            pass
    looked_at = {os.path.normcase(os.path.realpath(folder)) for folder in (data_dir, left_behind)}
    return sorted(folder for folder in (os.path.join(home, SHIPPED_SETTINGS["DATA_DIR"]) for home in homes)
                  if os.path.isfile(os.path.join(folder, STORE_FILE_NAME))
                  and os.path.normcase(os.path.realpath(folder)) not in looked_at)


def last_written(folder):
    """When the store in `folder` was last written: its journal's time where that is later."""
    times = [os.stat(path).st_mtime for path in (os.path.join(folder, STORE_FILE_NAME),
                                                 os.path.join(folder, STORE_FILE_NAME + "-wal"))
             if os.path.exists(path)]
    return max(times) if times else None


def check_web_folder(report, note, data_dir):
    """What `check` says about the folder of the script, which may be on the web.

    Beside the script, copies of the settings may pile up: Python writes compiled copies of the
    files it imports into __pycache__ (a launcher or wrapper that imports ipn_receiver, the
    tests, ...), and editors leave backup copies (config.ini~, ipn_receiver.py.bak, ...). They
    hold the settings, secrets included, and a web server hands them out like any other file
    unless told not to. Where an .htaccess sits beside the script, the folder is on the web,
    served by Apache: it must serve the scripts and nothing else. Where none is, check cannot tell
    whether the folder is served; in a folder named as web servers name their document roots
    (web_root_of) it most likely is, and copies there are a problem. So is the data folder there:
    the .htaccess the receiver writes into it keeps it from the web under Apache only (nginx and
    lighttpd read no .htaccess), and it holds every buyer's data and the access data handed out.
    """
    copies, receivers = [], []
    for folder, folders, files in os.walk(HERE):
        depth = os.path.relpath(folder, HERE).count(os.sep)
        folders[:] = [name for name in folders if depth < 2 and not name.startswith(".")
                      and os.path.join(folder, name) != data_dir]
        copies += [os.path.relpath(os.path.join(folder, name), HERE) for name in files
                   if name.endswith(".pyc") or (folder == HERE and is_backup_copy(name))]
        receivers += [os.path.relpath(os.path.join(folder, name), HERE) for name in files
                      if folder != HERE and name in (os.path.basename(__file__), "ipn.py")]
    rules, htaccess = None, os.path.join(HERE, ".htaccess")
    if os.path.isfile(htaccess):
        try:
            with open(htaccess, encoding="utf-8", errors="replace") as file:
                text = file.read()
            rules = serves_only_the_scripts(text, [os.path.basename(name) for name in copies])
        except OSError:
            rules = False
        else:
            report(rules, ".htaccess beside the script serves the scripts only, and no folder listing",
                   use_the_guides_htaccess())
        script = os.path.basename(__file__)
        if rules and not any(granted_by_a_section(text, name) for name in (script, "ipn.py")
                             if os.path.isfile(os.path.join(HERE, name))):
            # A script renamed (ds24_ipn.py): Apache answers every call with its own 403 page, and
            # the sender's log shows no line of ours to say why. (Or the launcher alone is served.)
            report(False, ".htaccess beside the script lets the web reach %s" % script, "rename the script "
                   "ipn_receiver.py, or write its name into the <FilesMatch> line: until then every call gets 403")
        # Apache reads it as its own user (under suEXEC not the owner), and refuses the whole folder
        # where it cannot.
        report(os.stat(htaccess).st_mode & 0o004, ".htaccess beside the script can be read by the web server (mode "
               "%03o)" % (os.stat(htaccess).st_mode & 0o777), "chmod 644 %s   (Apache refuses the whole folder, "
               "with 403, where it cannot read it)" % quoted(htaccess))
    web_root = web_root_of(HERE)
    unguarded = "with no .htaccess, in %s, which looks like web space" % web_root
    if rules is None and web_root_of(data_dir):
        report(False, "data folder %s is in %s, which looks like web space, with no .htaccess beside the script: "
               "under nginx or lighttpd the store and the log can be downloaded" % (data_dir, web_root_of(data_dir)),
               "set DATA_DIR to a folder outside the web root, and move the store into it (check says how); under "
               "Apache, use the .htaccess of README.md's deployment guide beside the script")
    if rules is None and os.path.isfile(os.path.join(HERE, CONFIG_FILE_NAME)):
        fix = "keep it outside the web root (IPN_CONFIG), or use the .htaccess of README.md's deployment guide"
        if web_root:
            report(False, "%s is beside the script, %s: its secrets can be downloaded" % (CONFIG_FILE_NAME, unguarded),
                   fix)
        else:
            note("%s is beside the script, with no .htaccess: if this folder is on the web, its secrets can be "
                 "downloaded; %s" % (CONFIG_FILE_NAME, fix))
    if receivers:
        # A copy in a folder below (a backup made before an edit: old/ipn_receiver.py) is a second
        # receiver wherever the web server runs the scripts' names, as the .htaccess does in every
        # folder below its own. With a store of its own, it runs the handler of any notification
        # sent to it again: one captured call is enough.
        text = "a copy of the receiver below the script's folder (%s)" % ", ".join(sorted(receivers))
        fix = ("move it out of the web space (keep backups outside public_html): where the web server runs it, "
               "it is a second receiver, with a store of its own, that runs the handler of a notification sent "
               "there again")
        if rules is None and not web_root:
            note("%s; if this folder is on the web, %s" % (text, fix))
        else:
            report(False, text, fix)
    if not copies:
        return
    shown = "copies of the settings beside the script (%s)" % ", ".join(sorted(copies)[:3] + (
        ["..."] if len(copies) > 3 else []))
    fix = ("delete them (rm -r __pycache__, and the backup copies) and let the web server serve the "
           "scripts only, as the .htaccess of README.md's deployment guide does: they hold your "
           "settings, secrets included")
    if rules is None and web_root:
        report(False, "%s, %s" % (shown, unguarded), fix)
    elif rules is None:
        note("%s; if this folder is on the web, %s" % (shown, fix))
    elif rules:
        note("%s; the .htaccess denies them" % shown)
    else:
        report(False, shown, fix)


def use_the_guides_htaccess():
    """How to make the .htaccess beside the script serve the scripts only: the deployment guide's,
    where the folder is the receiver's own. Where the site is in it too (a file of another kind
    than the receiver's, or the folder is the web root itself), that .htaccess would deny the
    site, in this folder and every one below it."""
    site = [name for name in sorted(os.listdir(HERE)) if os.path.isfile(os.path.join(HERE, name)) and not (
        name in ("README.md", "LICENSE") or name.startswith(".") or name.endswith((".py", ".ini")) or
        is_backup_copy(name))]
    if site or os.path.basename(HERE).lower() in WEB_ROOT_NAMES:
        shown = ", ".join(site[:3]) + (", ..." if len(site) > 3 else "")
        return ("this folder holds your site too (%s), and an .htaccess rules every folder below its own: the "
                "deployment guide's would shut the site. Make a folder of the receiver's own (mkdir %s), move "
                "ipn_receiver.py and config.ini into it, put the .htaccess of README.md's deployment guide there, "
                "and register that URL" % (shown or "its web root", quoted(os.path.join(HERE, "ipn"))))
    return ("use the .htaccess of README.md's deployment guide: Options +ExecCGI -Indexes, AddHandler cgi-script "
            ".py, Require all denied, and the scripts' names allowed")


# How web servers and hosting panels name a document root: cPanel public_html, Debian /var/www/html,
# Plesk httpdocs, Apache's own htdocs, IIS wwwroot.
WEB_ROOT_NAMES = ("public_html", "www", "html", "htdocs", "httpdocs", "wwwroot", "webroot", "docroot")


def web_root_of(path):
    """The name of the folder on `path` named as document roots are (WEB_ROOT_NAMES), or None."""
    for name in path.split(os.sep):
        if name.lower() in WEB_ROOT_NAMES:
            return name
    return None


BACKUP_ENDINGS = ("~", ".bak", ".backup", ".old", ".orig", ".save", ".swp", ".swo", ".tmp")


def is_backup_copy(name):
    """Whether `name` is a copy of the script or its config file made beside it by an editor, an
    upload tool or a vendor (config.ini~, config (1).ini, config.old.ini, ipn_receiver.py.bak,
    ipn_receiver - Copy.py): a name that starts as theirs and still says .ini or .py, but is
    neither of them, nor the example shipped, nor a compiled copy."""
    base = name.lstrip(".#").lower()
    # (The script itself by its name, whatever it is: renamed ipn_receiver_live.py, an old
    # ipn_receiver.py beside it is a copy.)
    itself = (os.path.basename(__file__), os.path.basename(os.path.realpath(__file__)))
    return name not in ("config.ini", "config.example.ini") + itself and not name.endswith(
        ".pyc") and (
        base.startswith("config") and ".ini" in base or base.startswith("ipn_receiver") and ".py" in base)


# Names that hold the settings, or what was stored: no <Files> section of an .htaccess may serve them.
NEVER_SERVED = ["config.ini", "ipn_receiver.cpython-36.pyc", "ipn_receiver.cpython-312.pyc", "events.sqlite3",
                "ipn_receiver.log", "#config.ini#", ".config.ini.swp", "#ipn_receiver.py#", ".ipn_receiver.py.swp"] + [
    name + ending for name in ("config.ini", "ipn_receiver.py") for ending in BACKUP_ENDINGS]


def serves_only_the_scripts(rules, copies=()):
    """Whether an .htaccess serves the scripts and nothing else, as README.md's does.

    Outside every section (one such as <IfModule> or <If> is not always in force) it must run .py
    files as programs (Options ExecCGI and AddHandler cgi-script .py; else Apache serves the source,
    secrets and all), turn folder listings off and deny everything. Access may be granted only
    within <Files> or <FilesMatch> sections whose pattern matches none of NEVER_SERVED and
    `copies` (the names of copies found beside the script). (A comment's first word starts with #,
    which no directive does: comments are passed over.)
    """
    denied, runs_scripts, options, sections = False, False, {"indexes"}, []
    # `sections`: the sections a line is in, each (grants a name never served, holds the script)
    # for a <Files> section, None for others. Listings count as on until the file turns them off.
    names = NEVER_SERVED + list(copies)
    for line in rules.splitlines():
        words = line.lower().split()
        if not words:
            continue
        if words[0].startswith("</"):
            sections = sections[:-1]
        elif words[0].startswith("<files"):
            sections.append((section_matches_any(line, names), section_matches_any(line, ["ipn_receiver.py"])))
        elif words[0].startswith("<"):
            sections.append(None)
        elif words == ["require", "all", "denied"]:
            denied = denied or not sections
        elif words[0] in ("require", "allow"):
            files = [section for section in sections if section is not None]
            if not files or files[-1][0]:
                return False                # it grants access to everything, or to a copy of the settings
        elif words[0] == "options" and not sections:
            options = options_after(options, words[1:])
        elif words[:2] == ["addhandler", "cgi-script"] and not sections:
            runs_scripts = runs_scripts or any(extension.lstrip(".") == "py" for extension in words[2:])
        elif words == ["sethandler", "cgi-script"] and None not in sections and all(s[1] for s in sections):
            runs_scripts = True
    return denied and runs_scripts and "execcgi" in options and "indexes" not in options


def granted_by_a_section(rules, name):
    """Whether a <Files> or <FilesMatch> section of an .htaccess matches the file `name`: where
    serves_only_the_scripts passes it, such a section is where access is granted."""
    return any(section_matches_any(line, [name]) for line in rules.splitlines()
               if line.lower().lstrip().startswith("<files"))


def options_after(options, words):
    """The set of Options in force after an Options line: "+Name" and "-Name" change the set,
    plain names make a new one. (All turns on, of what matters here, ExecCGI and Indexes.)"""
    if any(word[:1] not in "+-" for word in words):
        options = set()
    for word in words:
        name = word.lstrip("+-")
        named = {"execcgi", "indexes"} if name == "all" else {name}
        options = options - named if word.startswith("-") else options | named
    return options


def section_matches_any(line, names):
    """Whether the pattern of a <Files> or <FilesMatch> line matches any of `names`.

    <Files> takes a wildcard pattern (see apache_wildcard), or after `~` a regular expression, as
    <FilesMatch> does. Apache searches with PCRE, whose everyday patterns Python's re reads alike,
    though not its classes like [[:alpha:]]: a pattern with one, or one that cannot be read,
    counts as matching, since no one can tell what it serves.
    """
    import fnmatch
    import re
    found = re.match(r"""\s*<(files|filesmatch)\s+(~\s*)?["']?([^"'>]*)["']?\s*>""", line, re.IGNORECASE)
    if not found or "[:" in found.group(3):
        return True
    pattern = found.group(3)
    if found.group(1).lower() == "files" and not found.group(2):
        return any(fnmatch.fnmatchcase(name, apache_wildcard(pattern)) for name in names)
    try:
        return any(re.search(pattern, name) for name in names)
    except re.error:
        return True


def apache_wildcard(pattern):
    """A <Files> pattern as fnmatch reads one. Apache compares a pattern without a wildcard (*, ?
    or [) with the name as it is, backslashes and all; in one with a wildcard, a backslash takes
    the character after it as it is (fnmatch has no escapes), and [^...] is fnmatch's [!...]."""
    import re

    def as_it_is(text):
        return "".join("[%s]" % character if character in "*?[]" else character for character in text)

    parts = re.split(r"(\\.|\[\^|[*?[])", pattern)     # escapes, negations, wildcards, and the rest
    if not any(part in ("*", "?", "[", "[^") for part in parts):
        return as_it_is(pattern)
    return "".join(as_it_is(part[1]) if part[:1] == "\\" else "[!" if part == "[^" else part for part in parts)


def command_repair(args):
    """Set a damaged store aside and start a new one with every row that can still be read."""
    config = settings()
    path = store_path(config)
    if not os.path.exists(path) and os.path.exists(path + ".salvaged"):
        refuse_another_user(config, "repair")
        with StoreLock(config["DATA_DIR"]):
            finish_interrupted_swap(path)       # (as the next call would)
        print("an interrupted repair left its new store beside the old one; it is in place now")
        return 0
    if not store_within_reach(config):
        if not store_was_made(config["DATA_DIR"]):
            print("no store at %s yet; nothing to repair" % path)
            return 0
        refuse_another_user(config, "repair")
        if not args.force:
            raise CommandFailed(STORE_GONE % path)
        with StoreLock(config["DATA_DIR"]):
            os.truncate(os.path.join(config["DATA_DIR"], ".lock"), 0)     # (a new store here: asked for)
            open_store(config)
        print("started a new, empty store: copies of notifications handled before will run their handlers again")
        return 0
    refuse_another_user(config, "repair")
    with StoreLock(config["DATA_DIR"]):      # no call writes meanwhile
        result = integrity_of(path)
        if result == "ok" and not args.force:
            print("the store passes its integrity check; nothing to repair (--force sets it aside anyway, and "
                  "starts a new store with every row: for one that says a newer ipn_receiver wrote it where none did)")
            return 0
        try:
            connection = set_damaged_store_aside(config, "repair: " + result.splitlines()[0] if result != "ok" else
                                                 "repair --force, though it passed its integrity check",
                                                 start_empty=args.force)
        except (OSError, sqlite3_module().Error) as error:
            print("ERROR: the store could not be repaired (%s); it was left as it was. Free disk space, "
                  "then run repair again" % error, file=sys.stderr)
            return 1
    count = connection.execute("SELECT count(*) FROM notifications").fetchone()[0]
    check = connection.execute("PRAGMA integrity_check").fetchone()[0]
    print("set the %s store aside beside the new one; the new store holds %d notifications, "
          "integrity %s" % ("damaged" if result != "ok" else "old", count, check))
    return 0 if check == "ok" else 1


def integrity_of(path):
    """SQLite's integrity check of the store at `path`, and the shape of its table: "ok", or what
    is wrong."""
    sqlite3 = sqlite3_module()
    missing = cut_short(path)
    if missing:
        return "cut short: %s" % missing
    try:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)
        try:
            result = connection.execute("PRAGMA integrity_check").fetchone()[0]
            if result == "ok":
                # (Text that is not UTF-8 passes SQLite's check, but not sqlite3's reading of it.)
                connection.execute("SELECT %s FROM notifications" % ", ".join(STORE_COLUMNS)).fetchall()
            return result if result != "ok" else schema_problem(connection) or "ok"
        finally:
            connection.close()
    except (sqlite3.Error, UnicodeDecodeError) as error:
        return error_text(error)


def port_number(text):
    """An argument that names a TCP port: 0 (any free one) to 65535."""
    import argparse
    if not is_whole_number(text) or int(text) > 65535:
        raise argparse.ArgumentTypeError("not a port (0 to 65535): %s" % text)
    return int(text)


def whole_number(text):
    """An argument that names a stored notification, or counts them: a whole number of 1 or more
    that SQLite can hold."""
    import argparse
    if not is_whole_number(text) or int(text) < 1:
        raise argparse.ArgumentTypeError("not a whole number of 1 or more: %s" % text)
    return int(text)


def build_parser():
    """The command line: each command NAME is run by the function command_NAME."""
    import argparse
    parser = argparse.ArgumentParser(
        prog="ipn_receiver.py", description="Receive Digistore24 IPN and PromoPit ISN notifications. "
        "Without a command: the local server. As a CGI program: answers the request.")
    parser.add_argument("--version", action="version", version="ipn_receiver " + __version__)
    commands = parser.add_subparsers(dest="name", metavar="command")

    serve = commands.add_parser("serve", help="run a local server (the default)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")

    send = commands.add_parser("send", help="sign and POST a realistic notification to a receiver, and warn of "
                                            "what its web server serves that it must not")
    send.add_argument("event", help="a Digistore24 event (on_payment, on_refund, ...) or sale (PromoPit)")
    # (No default: whoever listens on a local port, another user of a shared server, say, would
    # get a call signed with the passphrase, or PromoPit's key itself.)
    send.add_argument("--url", required=True, help="the receiver's URL (the local server's: http://127.0.0.1:8000/)")
    send.add_argument("--set", action="append", metavar="KEY=VALUE", help="set a field (repeatable)")
    send.add_argument("--provider", choices=(DIGISTORE24, PROMOPIT), default=DIGISTORE24)
    send.add_argument("--allow-http", action="store_true",
                      help="send over http:// to another machine too (the call goes unencrypted)")

    commands.add_parser("demo", help="see it work: a throw-away receiver, one call of each kind")

    events = commands.add_parser("events", help="list stored notifications, newest first")
    events.add_argument("--status", choices=STATUSES)
    events.add_argument("--event", help="only this event")
    events.add_argument("--limit", type=whole_number, default=50, help="at most this many (default 50)")

    show = commands.add_parser("show", help="one stored notification with all its fields")
    show.add_argument("id", type=whole_number)

    replay = commands.add_parser("replay", help="run a stored notification's handler again now (or --done)")
    replay.add_argument("id", type=whole_number)
    replay.add_argument("--force", action="store_true", help="also for one that is done")
    replay.add_argument("--done", action="store_true", help="do not run it: record it as handled (answered OK)")

    commands.add_parser("check", help="health report: settings, folders, store; exit 1 on problems")

    repair = commands.add_parser("repair", help="set a damaged store aside, keep every readable row")
    repair.add_argument("--force", action="store_true", help="even if it passes its integrity check")
    return parser


# =================================================================================================
#  Entry point
# =================================================================================================

def run_cgi(environ=None, stdin=None, stdout=None):
    """Answer the one request of a CGI call (RFC 3875): environment and stdin in, answer on stdout.

    This is what wsgiref.handlers.CGIHandler does (tests/test_cgi.py checks that the answers are
    the same, byte for byte, on generated requests), written out because importing
    wsgiref.handlers pulls in `re` and costs every CGI call about 2.6 ms.
    """
    environ = cgi_environ() if environ is None else dict(environ)
    # A command a handler runs (`ipn_receiver.py replay ...`) inherits the environment: without this
    # variable it runs as that command, not as a second answer to this request.
    os.environ.pop("GATEWAY_INTERFACE", None)
    stdin = sys.stdin.buffer if stdin is None else stdin
    if stdout is None:
        # The answer goes out through a descriptor of its own. Descriptor 1, which a program that
        # a handler starts writes to, becomes stderr (the server's error log): such output must
        # not come before the answer's headers, or be taken for some.
        sys.stdout.flush()
        answer_fd = os.dup(1)
        stdout = os.fdopen(answer_fd, "wb")
        os.dup2(2, 1)
        if hasattr(os, "register_at_fork"):     # (3.7 and later) a process the handler forks, which
            # may live on, must not hold the answer open (see let_go_of_the_web_server). (And what
            # the handler wrote to stderr before, which the child would write again.)
            os.register_at_fork(before=sys.stderr.flush,  # novermin
                                after_in_child=lambda: let_go_of_the_web_server(answer_fd))
    sys.stdout = sys.stderr         # a print() in a handler goes to the error log, not the answer
    https = environ.get("HTTPS", "off") in ("on", "1", "yes")        # as wsgiref decides it
    environ.update({"wsgi.input": stdin, "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
                    "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": True,
                    "wsgi.url_scheme": "https" if https else "http"})
    answer = []

    def start_response(status, headers, exc_info=None):
        answer[:] = [status, headers]
        return stdout.write

    body = b"".join(application(environ, start_response))
    status, headers = answer
    head = "Status: %s\r\n%s\r\n" % (status, "".join("%s: %s\r\n" % header for header in headers))
    stdout.write(head.encode("latin-1") + body)
    stdout.flush()
    return 0


def let_go_of_the_web_server(answer_fd):
    """In a process a handler forked under CGI: point the answer's descriptor, stdin, stdout and
    stderr at /dev/null.

    Apache completes a CGI program's answer only when every process has let go of its stdout
    and its stderr (and under mod_cgid of its stdin, the answer's socket too): a forked process
    that kept copies would hold the answer, the sender, and a buyer at the checkout, until it
    ended. What it writes goes nowhere; the log file still gets its log lines. (A thread left
    running holds the answer, as it must: Apache ends a program it has the answer of, threads
    and all. A program a handler starts gets them from it: README.md's "Your handlers" says how
    one that outlives the handler lets go.)
    """
    nowhere = os.open(os.devnull, os.O_RDWR)
    for fd in (answer_fd, 0, 1, 2):
        os.dup2(nowhere, fd)
    os.close(nowhere)


# The CGI variables that carry what the request sent, as wsgiref.handlers names them.
REQUEST_VARIABLES = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "AUTH_TYPE", "CONTENT_TYPE",
                     "CONTENT_LENGTH", "HTTPS", "REMOTE_USER", "REMOTE_IDENT")


def cgi_environ():
    """os.environ as a WSGI application is to see it (PEP 3333), as wsgiref.handlers.read_environ
    makes it: the variables that carry what the request sent (and those of a redirect, REDIRECT_...)
    hold its bytes, each read as Latin-1, as under every WSGI server, whatever the locale made of
    them (a Latin-1 locale, or Python 3.6 without LANG, reads the same bytes otherwise); the others,
    the settings among them, as Python read them. (On Windows, where wsgiref guesses what each web
    server did, they are left as they are.)"""
    environ = {}
    for name, value in os.environ.items():
        request = name
        while request.startswith("REDIRECT_"):
            request = request[len("REDIRECT_"):]
        if sys.platform != "win32" and (request in REQUEST_VARIABLES or request.startswith(("HTTP_", "SSL_"))):
            value = value.encode(sys.getfilesystemencoding(), "surrogateescape").decode("latin-1")
        environ[name] = value
    return environ


def main(argv=None):
    """Do what running this file does: answer a CGI request, or run a command. Returns the exit code.

    A wrapper script can import this module, change a handler or a setting, and call main().
    """
    if argv is None:
        if "GATEWAY_INTERFACE" in os.environ:   # a web server runs us: a CGI request
            return run_cgi()
        argv = sys.argv[1:]
        if argv and argv[0] in ("replay", "repair", "check", "events", "show", "send", "demo"):
            import signal               # (the local server, threaded, ends at a kill as it always did)
            for name in ("SIGTERM", "SIGHUP"):  # (Windows has no SIGHUP)
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name), stop_as_by_ctrl_c)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve"] + list(argv)
    args = build_parser().parse_args(argv)
    try:
        code = globals()["command_" + args.name](args)
        sys.stdout.flush()                  # (a closed pipe shows here, not as Python ends)
        return code
    except KeyboardInterrupt:
        # Stopped anywhere, even halfway through making an object (http.client's answer, say), whose
        # clean-up Python 3.14 then reports as it goes: the one line is all there is to say.
        if hasattr(sys, "unraisablehook"):      # (3.8 and later)
            sys.unraisablehook = lambda unraisable: None     # novermin
        print("\nstopped", file=sys.stderr)
        return 130
    except BrokenPipeError:                 # `... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())     # (no error at exit either)
        return 1
    except (ConfigError, CommandFailed, StorageError) as error:
        message, code = str(error), 2 if isinstance(error, ConfigError) else getattr(error, "code", 1)
    except (sqlite3_module().Error, UnicodeDecodeError) as error:
        message, code = ("the event store cannot be read (%s); run `python3 ipn_receiver.py check`, and for a "
                         "damaged store `repair`" % error_text(error)), 1
    except UnicodeEncodeError:
        message, code = "this terminal cannot show the text; run the command with LANG=C.UTF-8 in front", 1
    except OSError as error:                # a file of the data folder this user may not open, say
        message, code = "%s%s; `python3 ipn_receiver.py check` says what to fix" % (
            "%s: " % error.filename if error.filename else "", error.strerror or error), 1
    except Exception as error:              # a row damaged on the disk into a shape no one expects, say
        message, code = "%s failed (%s: %s); `python3 ipn_receiver.py check` tells whether the event store is " \
                        "damaged" % (args.name, type(error).__name__, one_line(shortened(str(error), 200))), 1
    print("ERROR: " + message, file=sys.stderr)
    return code


def stop_as_by_ctrl_c(number, frame):
    """A command killed (SIGTERM) or left by its terminal (SIGHUP) stops as by Ctrl+C: what
    `replay` has run is recorded first, and the command ends with a line, not a traceback."""
    raise KeyboardInterrupt


def keep_compiled_copies_private():
    """Take others' write access away from __pycache__ beside the script, where the receiver was
    imported (by the launcher, Passenger or a WSGI server), and delete what other users put in it:
    Python makes that folder as the umask says, 0777 under umask 000 (Passenger loads
    passenger_wsgi.py with its own), and another user could put a compiled copy of their own in
    it, dated as the script is, which Python would run as this user at the next import. (`check`
    reports a compiled copy that is another user's, and the folder where it is theirs.)"""
    cache = os.path.join(HERE, "__pycache__")
    try:
        was_open = os.stat(cache).st_mode & 0o022
        os.chmod(cache, os.stat(cache).st_mode & 0o755)
        names = os.listdir(cache)
    except OSError:                             # (none; or another user's, which check reports)
        return
    trusted = trusted_users()
    for name in names:
        # (Where it was open, all of it: a hard link another user made to a file of this user's
        # that they may write to looks like this user's own.)
        try:
            if was_open or os.lstat(os.path.join(cache, name)).st_uid not in trusted:
                os.remove(os.path.join(cache, name))
        except OSError:                         # (gone; or a folder, which Python never reads)
            pass


# The names of the part you edit that the code below it gave another value (YOUR_PART): taken
# here, once the file has run, and before a wrapper or a test puts in handlers of its own.
# (A value equal to the receiver's, such as a HERE of yours worked out as the receiver does, is
# no harm.)
NAMES_TAKEN_OVER = sorted(name for name, value in YOUR_PART.items() if not name.startswith("__") and globals().get(
    name) is not value and not (isinstance(value, (str, int, float, tuple)) and globals().get(name) == value))

if __name__ == "__main__":
    sys.exit(main())
else:
    keep_compiled_copies_private()
