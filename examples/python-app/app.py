# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops example app: a stdlib-only WSGI app, served by gunicorn (see gunicorn.conf.py).

    GET /            -> "hello from py-app <version>"
    GET /api/health  -> liveness: 200 {"status": "ok", "version", "pid", "uptime_s"}
    GET /api/ready   -> readiness: 200 {"status": "ready", ...} or
                        503 {"status": "not_ready", "missing": [...], "checks": {...}}

Environment: APP_VERSION (default 1.0.0), READY_REQUIRES (comma list of env var NAMES that must be set
and non-empty), MONGODB_URI (optional, see mongo_check). Env VALUES are never printed or returned.
"""

import json
import os
import re
import socket
import time

NAME = "py-app"
DEFAULT_VERSION = "1.0.0"
STARTED = time.monotonic()

_URI = re.compile(r"^mongodb://(?:[^@/]*@)?([^/?,]+)")
_HOSTPORT = re.compile(r"^(\[[^\]]+\]|[^:]+)(?::(\d+))?$")


def version():
    return os.environ.get("APP_VERSION") or DEFAULT_VERSION


def mongo_address(uri):
    """(host, port) of the first host of a mongodb:// URI, or None when it cannot be parsed."""
    m = _URI.match(uri)
    hp = _HOSTPORT.match(m.group(1)) if m else None
    if not hp:
        return None
    return hp.group(1).strip("[]"), int(hp.group(2) or 27017)


def mongo_check():
    """The app has no MongoDB driver: readiness only checks that the server accepts a TCP connection
    within 1 s. Results name the failure, never the URI (it may hold credentials)."""
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        return "not_configured"
    if uri.startswith("mongodb+srv://"):
        return "skipped: mongodb+srv needs a DNS SRV lookup"
    addr = mongo_address(uri)
    if addr is None:
        return "error: MONGODB_URI is not a mongodb:// URI"
    try:
        socket.create_connection(addr, timeout=1).close()
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return "error: %s" % (exc.__class__.__name__,)
    return "ok"


def readiness():
    required = [n.strip() for n in os.environ.get("READY_REQUIRES", "").split(",") if n.strip()]
    missing = [n for n in required if not os.environ.get(n)]
    checks = {"env": "missing" if missing else "ok", "mongodb": mongo_check()}
    if missing or checks["mongodb"].startswith(("error", "timeout")):
        return 503, {"status": "not_ready", "version": version(), "missing": missing, "checks": checks}
    return 200, {"status": "ready", "version": version(), "checks": checks}


def route(method, path):
    if method not in ("GET", "HEAD"):
        return 405, {"error": "method not allowed"}
    if path == "/":
        return 200, "hello from %s %s" % (NAME, version())
    if path == "/api/health":
        return 200, {"status": "ok", "version": version(), "pid": os.getpid(),
                     "uptime_s": round(time.monotonic() - STARTED, 3)}
    if path == "/api/ready":
        return readiness()
    return 404, {"error": "not found"}


_REASONS = {200: "200 OK", 404: "404 Not Found", 405: "405 Method Not Allowed", 503: "503 Service Unavailable"}


def application(environ, start_response):
    method = environ.get("REQUEST_METHOD", "GET")
    code, body = route(method, environ.get("PATH_INFO") or "/")
    if isinstance(body, str):
        data, ctype = (body + "\n").encode("utf-8"), "text/plain; charset=utf-8"
    else:
        data, ctype = (json.dumps(body) + "\n").encode("utf-8"), "application/json"
    start_response(_REASONS[code], [("Content-Type", ctype), ("Content-Length", str(len(data)))])
    return [b""] if method == "HEAD" else [data]
