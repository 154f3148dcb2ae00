# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""MongoDB reachability: ``ping`` with bounded retries and exponential backoff.

Plain Python (3.8+); ``pymongo`` is imported only when a ping runs. Nothing this module returns or
raises contains the password of the URI: targets are shown as ``host:port`` and every error text from
pymongo is scrubbed before it is used.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import time

from urllib.parse import unquote

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value

SCHEMES = ("mongodb://", "mongodb+srv://")
DEFAULT_PORT = 27017
MASK = "********"
_HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._%-]+)(:\d{1,5})?$")
_BAD_DB_CHARS = re.compile(r'[/\\. "$\x00]')


def _userinfo(text):
    """``(userinfo or None, rest)``: credentials end at the last ``@`` before the query (``?``)."""
    end = text.find("?")
    at = text.rfind("@", 0, len(text) if end < 0 else end)
    return (None, text) if at < 0 else (text[:at], text[at + 1:])


def parse_uri(uri):
    """Split a MongoDB URI without pymongo: ``{scheme, hosts, srv, username, password, secrets}``.

    ``hosts`` are ``host:port`` strings (default port added, none for SRV). ``secrets`` lists every
    string that must never be shown (the password as written and decoded, also of malformed URIs).
    """
    if not isinstance(uri, str) or not uri.startswith(SCHEMES):
        shown = redact_uri(uri) if isinstance(uri, str) else "<%s>" % type(uri).__name__
        raise bad_value("uri", shown, "expected a mongodb:// or mongodb+srv:// URI")
    scheme, rest = uri.split("://", 1)
    userinfo, after = _userinfo(rest)
    username = password = None
    if userinfo is not None:
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user), (unquote(secret) if colon else None)
    # A malformed URI may hide its password behind a '?'; keep that candidate secret too.
    secrets = set([password, userinfo.partition(":")[2] if userinfo else None,
                   rest.rpartition("@")[0].partition(":")[2] if "@" in rest else None])
    srv = scheme == "mongodb+srv"
    hosts = []
    for host in re.split(r"[/?]", after, 1)[0].split(","):
        host = host.strip()
        if not host:
            continue
        match = _HOST_RE.match(host)
        if not match:
            raise bad_value("uri", redact_uri(uri),
                            "malformed host list (escape special characters of the user and password with %XX)")
        socket_path = host.endswith(".sock")
        hosts.append(host if srv or match.group(2) or socket_path else "%s:%d" % (host, DEFAULT_PORT))
    if not hosts:
        raise bad_value("uri", redact_uri(uri), "no host in the URI")
    return {"scheme": scheme, "hosts": hosts, "srv": srv, "username": username, "password": password,
            "secrets": sorted((s for s in secrets if s), key=len, reverse=True)}


def redact_uri(uri):
    """The URI with its password masked (everything after ``user:`` up to the last ``@``: errs on the
    side of hiding too much when a URI is malformed)."""
    scheme, sep, rest = str(uri).partition("://")
    if not sep:
        return MASK
    if "@" not in rest:
        return str(uri)
    userinfo, tail = rest.rsplit("@", 1)
    user = userinfo.partition(":")[0]
    return "%s://%s%s@%s" % (scheme, user, ":" + MASK if ":" in userinfo else "", tail)


def target_of(parsed):
    """How the server is named in messages: ``h1:27017,h2:27017`` or ``cluster.example.com (SRV)``."""
    return ",".join(parsed["hosts"]) + (" (SRV)" if parsed["srv"] else "")


def _pymongo():
    try:
        import pymongo  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise DevboxOpsError("mongodb checks need the Python library 'pymongo' on this host (pip install pymongo)",
                             param="pymongo")
    return pymongo


def _scrub(text, parsed):
    text = str(text)
    for secret in parsed["secrets"]:
        text = text.replace(secret, MASK)
    return text


def _reason(exc, parsed, timeout_ms):
    """A short reason for one failed attempt: refused, timed out, cannot resolve, authentication failed."""
    text = _scrub(exc, parsed)
    lowered = text.lower()
    code = getattr(exc, "code", None)
    if code == 18 or "authentication failed" in lowered or "auth failed" in lowered:
        return "authentication failed"
    if "refused" in lowered:
        return "connection refused"
    if ("name or service not known" in lowered or "does not exist" in lowered or "name resolution" in lowered
            or "nodename nor servname" in lowered or "no address associated" in lowered
            or "resolution lifetime expired" in lowered):
        return "cannot resolve host"
    if "timed out" in lowered or "timeout" in type(exc).__name__.lower():
        return "timed out after %dms" % timeout_ms
    return "%s: %s" % (type(exc).__name__, text.split(", Timeout:", 1)[0][:300])


def _check(timeout_ms, retries, backoff, max_delay, database):
    for param, value, minimum in (("timeout", timeout_ms, 1), ("retries", retries, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise bad_value(param, value, "expected a whole number >= %d" % minimum)
    for param, value in (("backoff", backoff), ("max_delay", max_delay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise bad_value(param, value, "expected a number of seconds >= 0")
    if not isinstance(database, str) or not database or _BAD_DB_CHARS.search(database):
        raise bad_value("database", database, "expected a database name (no / \\ . \" $ or spaces)")


def delays(retries, backoff, max_delay):
    """The waits between attempts: ``backoff``, doubled each retry, each capped at ``max_delay``."""
    return [min(backoff * (2 ** i), max_delay) for i in range(retries)]


def ping(uri, timeout=2000, retries=3, backoff=0.5, max_delay=5.0, database="admin"):
    """Run ``ping`` on ``database`` up to ``retries + 1`` times; never raises for an unreachable server.

    ``timeout`` (ms) bounds server selection, connection and socket reads of each attempt. Returns
    ``{ok, attempts, elapsed_s, server_version, target, error, reasons}``; ``error`` names the
    ``host:port`` and the last reason. Bad options raise :class:`DevboxOpsError`.
    """
    _check(timeout, retries, backoff, max_delay, database)
    parsed = parse_uri(uri)
    pymongo = _pymongo()
    target = target_of(parsed)
    waits = delays(retries, backoff, max_delay)
    reasons = []
    started = time.monotonic()
    while True:
        try:
            client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout, connectTimeoutMS=timeout,
                                         socketTimeoutMS=timeout, appname="devbox.ops", connect=False)
            try:
                client[database].command("ping")
                version = client.admin.command("buildInfo").get("version")
            finally:
                client.close()
        except pymongo.errors.InvalidURI as exc:
            raise bad_value("uri", redact_uri(uri), _scrub(exc, parsed))
        except pymongo.errors.PyMongoError as exc:
            reasons.append(_reason(exc, parsed, timeout))
        else:
            return {"ok": True, "attempts": len(reasons) + 1, "elapsed_s": round(time.monotonic() - started, 3),
                    "server_version": version, "target": target, "error": None, "reasons": reasons}
        if len(reasons) > retries:
            break
        time.sleep(waits[len(reasons) - 1])
    elapsed = round(time.monotonic() - started, 3)
    error = "mongodb %s: %s (%d attempt%s in %ss)" % (target, reasons[-1], len(reasons),
                                                      "" if len(reasons) == 1 else "s", elapsed)
    return {"ok": False, "attempts": len(reasons), "elapsed_s": elapsed, "server_version": None,
            "target": target, "error": error, "reasons": reasons}
