# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Health probes with Kubernetes semantics.

``ProbeSpec.from_params()`` validates one probe (http/https, tcp or an argv command).
``run_probe()`` makes one attempt and says what went wrong, naming the target. ``wait_for()`` repeats
attempts every ``period`` after ``initial_delay`` until ``success_threshold`` consecutive successes,
``failure_threshold`` consecutive failures or the ``deadline``. ``sample()`` fires many requests and
returns latency percentiles and the error rate, which ``gate()`` compares with SLO limits.
``check()`` chains wait -> sample -> gate and returns the result modules and the watchdog report.

Header values and request bodies are secrets: they are never part of a result, an error or a repr.
Plain Python (3.8+); ``requests`` is imported only when an http probe runs.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import copy
import json
import math
import re
import shlex
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value
from ansible_collections.devbox.ops.plugins.module_utils.runner import SubprocessRunner

TYPES = ("http", "tcp", "command")
METHODS = ("GET", "HEAD", "POST")
TIMING = ("timeout", "period", "initial_delay", "failure_threshold", "success_threshold", "deadline")
HTTP_ONLY = ("url", "method", "headers", "body", "expected_status", "body_regex", "json_field",
             "json_equals", "validate_certs")
ONLY = {"http": HTTP_ONLY, "tcp": ("host", "port"), "command": ("argv",)}
FIELDS = ("type", "name") + TIMING + HTTP_ONLY + ("host", "port", "argv")
DEFAULT_STATUS = ((200, 399),)
MAX_BODY = 1024 * 1024  # bytes read for body checks
KEEP_ATTEMPTS = 20

# Option specs shared by every module that takes probes (plain dicts, no ansible import).
TIMING_OPTIONS = dict(
    timeout=dict(type="float"),
    period=dict(type="float"),
    initial_delay=dict(type="float"),
    failure_threshold=dict(type="int"),
    success_threshold=dict(type="int"),
    deadline=dict(type="float"),
)
PROBE_OPTIONS = dict(
    TIMING_OPTIONS,
    name=dict(type="str"),
    type=dict(type="str", choices=list(TYPES)),
    url=dict(type="str"),
    method=dict(type="str", choices=list(METHODS)),
    headers=dict(type="dict", no_log=True),
    body=dict(type="str"),
    expected_status=dict(type="list", elements="raw"),
    body_regex=dict(type="str"),
    json_field=dict(type="str"),
    json_equals=dict(type="raw"),
    validate_certs=dict(type="bool"),
    host=dict(type="str"),
    port=dict(type="int"),
    argv=dict(type="list", elements="str"),
)
SAMPLE_OPTIONS = dict(
    count=dict(type="int", default=50),
    concurrency=dict(type="int", default=5),
    max_p95_ms=dict(type="float"),
    max_error_rate=dict(type="float"),
)


class _Record(dict):
    """A dict (JSON-ready for exit_json) whose keys also read as attributes."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key)


class ProbeResult(_Record):
    """One attempt: ok, latency_ms, status_code, error, detail, target."""


class WaitResult(_Record):
    """A wait: ok, attempts (last 20), attempt_count, elapsed_s, message, reason, last, target."""


class SampleStats(_Record):
    """A sample: count, errors, error_rate, p50_ms, p95_ms, p99_ms, max_ms, error_samples."""


# ---------------------------------------------------------------- validation helpers


def _number(param, value, minimum=0.0, strict=True):
    if isinstance(value, bool):
        raise bad_value(param, value, "must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad_value(param, value, "must be a number")
    if math.isnan(number) or math.isinf(number):
        raise bad_value(param, value, "must be a finite number")
    if number < minimum or (strict and number == minimum):
        raise bad_value(param, value, "must be %s %g" % (">" if strict else ">=", minimum))
    return number


def _integer(param, value, minimum=1):
    if isinstance(value, bool):
        raise bad_value(param, value, "must be an integer")
    try:
        number = int(value)
        if number != float(value):
            raise ValueError(value)
    except (TypeError, ValueError):
        raise bad_value(param, value, "must be an integer")
    if number < minimum:
        raise bad_value(param, value, "must be >= %d" % minimum)
    return number


def _boolean(param, value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "on", "1"):
        return True
    if text in ("no", "false", "off", "0"):
        return False
    raise bad_value(param, value, "must be a boolean")


def _status_ranges(value):
    items = value if isinstance(value, (list, tuple)) else [value]
    ranges = []
    for item in items:
        match = None if isinstance(item, bool) else re.match(r"^\s*(\d{3})\s*(?:-\s*(\d{3}))?\s*$", str(item))
        low, high = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, 0)
        if not match or not 100 <= low <= high <= 599:
            raise bad_value("expected_status", value,
                            "items must be status codes (100-599) like 200 or ranges like '200-299'")
        ranges.append((low, high))
    if not ranges:
        raise bad_value("expected_status", value, "must not be empty")
    return tuple(ranges)


def _show_ranges(ranges):
    return ", ".join(str(a) if a == b else "%d-%d" % (a, b) for a, b in ranges)


def redact_url(url):
    """The URL with any password in it replaced by ``********``."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:********@", str(url))


def _probe_kind(params):
    kind = params.get("type")
    if kind is None:
        for key, guess in (("url", "http"), ("port", "tcp"), ("argv", "command")):
            if key in params:
                return guess
        raise bad_value("type", None, "give type, or one of url (http), port (tcp) or argv (command)")
    kind = str(kind).lower()
    kind = "http" if kind == "https" else kind
    if kind not in TYPES:
        raise bad_value("type", params.get("type"), "must be one of %s" % ", ".join(TYPES))
    return kind


# ---------------------------------------------------------------- the spec


class ProbeSpec:
    """A validated probe. Build it with :meth:`from_params`."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __repr__(self):  # never shows header values or the body
        return "ProbeSpec(%s)" % self.target

    @classmethod
    def from_params(cls, params, defaults=None):
        """Validate ``params`` (None values mean unset). ``defaults`` fill unset fields that apply to
        the probe's type; ``headers`` in defaults are merged under the probe's own headers."""
        if not isinstance(params, dict):
            raise bad_value("probe", params, "must be a dict of probe options")
        p = dict((k, v) for k, v in params.items() if v is not None)
        defaults = dict((k, v) for k, v in (defaults or {}).items() if v is not None)
        for key in sorted(set(p) | set(defaults)):
            if key not in FIELDS:
                raise DevboxOpsError("probe option %r is unknown (known: %s)" % (key, ", ".join(FIELDS)),
                                     param=key)
        kind = _probe_kind(p)
        for key, value in defaults.items():
            if key == "headers" and kind == "http":
                own = p.get("headers", {})
                if not isinstance(value, dict) or not isinstance(own, dict):
                    raise DevboxOpsError("headers: must be a mapping of header names to string values",
                                         param="headers")
                p["headers"] = dict(value)
                p["headers"].update(own)
            elif key not in p and key not in ("type", "name") and (key in TIMING or key in ONLY[kind]):
                p[key] = value
        for key in p:
            if key in HTTP_ONLY + ONLY["tcp"] + ONLY["command"] and key not in ONLY[kind]:
                raise DevboxOpsError("%s: only applies to %s probes, this probe has type=%s"
                                     % (key, [t for t in TYPES if key in ONLY[t]][0], kind), param=key)

        spec = dict(type=kind)
        spec["timeout"] = _number("timeout", p.get("timeout", 2.0))
        spec["period"] = _number("period", p.get("period", 2.0))
        spec["initial_delay"] = _number("initial_delay", p.get("initial_delay", 0.0), strict=False)
        spec["failure_threshold"] = _integer("failure_threshold", p.get("failure_threshold", 3))
        spec["success_threshold"] = _integer("success_threshold", p.get("success_threshold", 1))
        if "deadline" in p:
            spec["deadline"] = _number("deadline", p["deadline"])
            if spec["deadline"] <= spec["initial_delay"]:
                raise bad_value("deadline", p["deadline"],
                                "must be greater than initial_delay (%g)" % spec["initial_delay"])
        else:
            spec["deadline"] = (spec["initial_delay"] + spec["timeout"] + spec["period"]
                                * (spec["failure_threshold"] + spec["success_threshold"] - 1))
        getattr(cls, "_validate_" + kind)(p, spec)
        spec["name"] = str(p["name"]) if p.get("name") else None
        obj = cls(**spec)
        obj.name = obj.name or obj.target
        return obj

    @staticmethod
    def _validate_http(p, spec):
        url = p.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^/?#\s]+", url, re.IGNORECASE):
            raise bad_value("url", redact_url(url) if url is not None else None,
                            "must be an http:// or https:// URL with a host")
        spec["url"] = url
        method = str(p.get("method", "GET")).upper()
        if method not in METHODS:
            raise bad_value("method", p.get("method"), "must be one of %s" % ", ".join(METHODS))
        spec["method"] = method
        headers = p.get("headers", {})
        if not isinstance(headers, dict) or not all(
                isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in headers.values()):
            # the value is a secret: name the parameter only
            raise DevboxOpsError("headers: must be a mapping of header names to string values",
                                 param="headers")
        spec["headers"] = dict((str(k), str(v)) for k, v in headers.items())
        body = p.get("body")
        if body is not None and not isinstance(body, str):
            raise DevboxOpsError("body: must be a string", param="body")
        spec["body"] = body
        spec["expected_status"] = _status_ranges(p["expected_status"]) if "expected_status" in p \
            else DEFAULT_STATUS
        spec["body_regex"] = None
        if "body_regex" in p:
            try:
                spec["body_regex"] = re.compile(str(p["body_regex"]))
            except re.error as exc:
                raise bad_value("body_regex", p["body_regex"], "invalid regular expression: %s" % exc)
        field = p.get("json_field")
        if field is not None and (not isinstance(field, str) or not all(field.split("."))):
            raise bad_value("json_field", field, "must be a dotted path like 'checks.db'")
        if "json_equals" in p and field is None:
            raise bad_value("json_equals", p["json_equals"], "needs json_field")
        spec["json_field"] = field
        spec["json_equals"] = p.get("json_equals")
        spec["has_json_equals"] = "json_equals" in p
        if method == "HEAD" and (spec["body_regex"] or field):
            raise bad_value("method", method, "HEAD has no body to check with body_regex/json_field")
        spec["validate_certs"] = _boolean("validate_certs", p.get("validate_certs", True))

    @staticmethod
    def _validate_tcp(p, spec):
        if "port" not in p:
            raise bad_value("port", None, "is required for tcp probes")
        spec["port"] = _integer("port", p["port"])
        if spec["port"] > 65535:
            raise bad_value("port", p["port"], "must be <= 65535")
        host = p.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host or re.search(r"[\s/]", host):
            raise bad_value("host", host, "must be a host name or address")
        spec["host"] = host

    @staticmethod
    def _validate_command(p, spec):
        argv = p.get("argv")
        if not isinstance(argv, (list, tuple)) or not argv or not all(
                isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in argv):
            raise bad_value("argv", argv, "must be a non-empty list of arguments (it is never run by a shell)")
        spec["argv"] = [str(a) for a in argv]

    @property
    def target(self):
        """What the probe hits, safe to print: ``GET http://h/x``, ``tcp h:80`` or ``command: a b``."""
        if self.type == "http":
            return "%s %s" % (self.method, redact_url(self.url))
        if self.type == "tcp":
            host = "[%s]" % self.host if ":" in self.host else self.host
            return "tcp %s:%d" % (host, self.port)
        return "command: %s" % " ".join(shlex.quote(a) for a in self.argv)

    def with_timeout(self, timeout):
        """A copy with another per-attempt timeout (used to stop at the deadline)."""
        other = copy.copy(self)
        other.timeout = timeout
        return other


# ---------------------------------------------------------------- one attempt


class _TimedOut(Exception):
    pass


def _requests():
    try:
        import requests  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise DevboxOpsError("http probes need the Python library 'requests' on this host (%s): "
                             "pip install requests, or run the devbox.ops base role" % sys.executable,
                             param="requests")
    return requests


def _short(value, limit=200):
    text = str(value).strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _fmt_s(seconds):
    return "%ss" % round(seconds, 3)


def _connection_problem(exc):
    text = str(exc)
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if "timed out" in lowered or "timeout" in lowered:
        return None  # caller reports the timeout
    if ("name or service not known" in lowered or "name resolution" in lowered
            or "nodename nor servname" in lowered or "no address associated" in lowered):
        return "cannot resolve host"
    if "reset by peer" in lowered:
        return "connection reset by peer"
    if "remotedisconnected" in lowered or "connection aborted" in lowered:
        return "connection closed without a response"
    return "connection failed: %s" % _short(text)


def _read_body(response, until):
    chunks, size = [], 0
    for chunk in response.iter_content(65536):
        chunks.append(chunk)
        size += len(chunk)
        if time.monotonic() > until:
            raise _TimedOut()
        if size >= MAX_BODY:
            break
    return b"".join(chunks)


def _lookup(data, path):
    for part in path.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and re.match(r"^-?\d+$", part) and -len(data) <= int(part) < len(data):
            data = data[int(part)]
        else:
            raise KeyError(path)
    return data


def _same(actual, expected):
    """Compare a decoded JSON value with json_equals; a string expectation is JSON-decoded first
    when the actual value is not a string ('true' matches true, '3' matches 3)."""
    if isinstance(expected, str) and not isinstance(actual, str):
        try:
            expected = json.loads(expected)
        except ValueError:
            return False
    return actual == expected and isinstance(actual, bool) == isinstance(expected, bool)


def _check_http(spec, session):
    requests = _requests()
    if not spec.validate_certs:
        requests.packages.urllib3.disable_warnings(requests.packages.urllib3.exceptions.InsecureRequestWarning)
    until = time.monotonic() + spec.timeout
    timed_out = (None, {}, "timed out after %s" % _fmt_s(spec.timeout))
    try:
        response = (session or requests).request(
            spec.method, spec.url, headers=spec.headers, data=spec.body, timeout=spec.timeout,
            verify=spec.validate_certs, allow_redirects=False, stream=True)
        try:
            body = _read_body(response, until) if spec.method != "HEAD" else b""
        finally:
            response.close()
    except (_TimedOut, requests.exceptions.Timeout):
        return timed_out
    except requests.exceptions.SSLError as exc:
        return None, {}, "TLS error: %s" % _short(exc)
    except requests.exceptions.ConnectionError as exc:
        return None, {}, _connection_problem(exc) or timed_out[2]
    except requests.exceptions.RequestException as exc:
        return None, {}, "request failed: %s" % _short(exc)
    status = response.status_code
    detail = {"bytes": len(body)}
    if not any(low <= status <= high for low, high in spec.expected_status):
        return status, detail, "status %d not in %s" % (status, _show_ranges(spec.expected_status))
    if spec.body_regex is None and spec.json_field is None:
        return status, detail, None
    text = body.decode(response.encoding or "utf-8", "replace")
    if spec.body_regex is not None and not spec.body_regex.search(text):
        return status, detail, "body does not match regex %r" % spec.body_regex.pattern
    if spec.json_field is not None:
        try:
            value = _lookup(json.loads(text), spec.json_field)
        except ValueError:
            return status, detail, "body is not JSON (needed for json field %s)" % spec.json_field
        except KeyError:
            return status, detail, "json field %s is missing" % spec.json_field
        detail["json_value"] = value
        if spec.has_json_equals and not _same(value, spec.json_equals):
            return status, detail, "json field %s is %r, expected %r" % (spec.json_field, value, spec.json_equals)
    return status, detail, None


def _check_tcp(spec, _session):
    try:
        sock = socket.create_connection((spec.host, spec.port), timeout=spec.timeout)
        sock.close()
    except socket.timeout:
        return None, {}, "timed out after %s" % _fmt_s(spec.timeout)
    except socket.gaierror:
        return None, {}, "cannot resolve host"
    except ConnectionRefusedError:
        return None, {}, "connection refused"
    except OSError as exc:
        return None, {}, "connection failed: %s" % (exc.strerror or exc)
    return None, {}, None


def _check_command(spec, runner):
    started = time.monotonic()
    rc, _out, err = runner.run(spec.argv, timeout=spec.timeout)
    detail = {"rc": rc}
    # A runner may enforce the timeout coarsely, so an attempt that outlived its timeout fails even
    # when the command itself succeeded (Kubernetes semantics).
    if rc == 124 or time.monotonic() - started > spec.timeout:
        return None, detail, "timed out after %s" % _fmt_s(spec.timeout)
    if rc == 0:
        return None, detail, None
    err = _short(err or "")
    return None, detail, "exit status %d%s" % (rc, ": %s" % err if err else "")


def run_probe(spec, runner=None, session=None):
    """One attempt. ``session`` (a requests.Session) keeps HTTP connections alive between calls."""
    started = time.monotonic()
    if spec.type == "http":
        status, detail, problem = _check_http(spec, session)
    elif spec.type == "tcp":
        status, detail, problem = _check_tcp(spec, None)
    else:
        status, detail, problem = _check_command(spec, runner or SubprocessRunner())
    return ProbeResult(
        ok=problem is None,
        latency_ms=round((time.monotonic() - started) * 1000.0, 2),
        status_code=status,
        error=None if problem is None else "%s: %s" % (spec.target, problem),
        detail=detail,
        target=spec.target,
    )


# ---------------------------------------------------------------- waiting


def wait_for(spec, runner=None, clock=time):
    """Probe until success_threshold consecutive successes (ok), failure_threshold consecutive
    failures or the deadline (not ok). ``clock`` needs ``monotonic()`` and ``sleep()``."""
    started = clock.monotonic()
    end = started + spec.deadline
    attempts = collections.deque(maxlen=KEEP_ATTEMPTS)
    count = successes = failures = 0
    last = None
    if spec.initial_delay:
        clock.sleep(spec.initial_delay)
    while True:
        now = clock.monotonic()
        if count and now >= end:
            reason = "deadline"
            break
        last = run_probe(spec.with_timeout(min(spec.timeout, max(end - now, 0.001))), runner)
        count += 1
        attempts.append(last)
        successes, failures = (successes + 1, 0) if last.ok else (0, failures + 1)
        if successes >= spec.success_threshold:
            reason = "success"
            break
        if failures >= spec.failure_threshold:
            reason = "failure_threshold"
            break
        wake = min(now + spec.period, end)
        clock.sleep(max(0.0, wake - clock.monotonic()))
    elapsed = clock.monotonic() - started
    if reason == "success":
        message = "%s: ok after %d attempt(s) in %.1fs" % (spec.target, count, elapsed)
    elif reason == "failure_threshold":
        message = "%s (%d consecutive failures, failure_threshold=%d)" % (last.error, failures, spec.failure_threshold)
    elif last.ok:
        message = "%s: only %d of %d consecutive successes when the deadline of %gs passed" % (
            spec.target, successes, spec.success_threshold, spec.deadline)
    else:
        message = "%s (deadline of %gs passed after %d attempts)" % (last.error, spec.deadline, count)
    return WaitResult(ok=reason == "success", reason=reason, message=message, attempts=list(attempts),
                      attempt_count=count, elapsed_s=round(elapsed, 3), last=last, target=spec.target,
                      name=spec.name)


# ---------------------------------------------------------------- sampling and gates


def _nearest_rank(ordered, percent):
    if not ordered:
        return None
    return ordered[max(1, int(math.ceil(percent / 100.0 * len(ordered)))) - 1]


def sample(spec, count, concurrency, runner=None):
    """Fire ``count`` attempts from ``concurrency`` threads (one keep-alive session per thread).
    Percentiles (nearest rank) cover every attempt, failed ones included."""
    count = _integer("count", count)
    concurrency = _integer("concurrency", concurrency)
    local = threading.local()
    sessions = []

    def one(_index):
        session = None
        if spec.type == "http":
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = _requests().Session()
                sessions.append(session)
        return run_probe(spec, runner, session=session)

    try:
        with ThreadPoolExecutor(max_workers=min(concurrency, count)) as pool:
            results = list(pool.map(one, range(count)))
    finally:
        for session in sessions:
            session.close()
    latencies = sorted(r.latency_ms for r in results)
    failed = [r for r in results if not r.ok]
    distinct = []
    for result in failed:
        if result.error not in distinct and len(distinct) < 5:
            distinct.append(result.error)
    return SampleStats(
        target=spec.target, count=count, concurrency=concurrency, errors=len(failed),
        error_rate=round(len(failed) / float(count), 4),
        p50_ms=_nearest_rank(latencies, 50), p95_ms=_nearest_rank(latencies, 95),
        p99_ms=_nearest_rank(latencies, 99), max_ms=latencies[-1], error_samples=distinct,
    )


def _rate(param, value):
    rate = _number(param, value, strict=False)
    if rate > 1:
        raise bad_value(param, value, "must be between 0 and 1")
    return rate


def sample_options(options):
    """Validate sample/gate options (count, concurrency, max_p95_ms, max_error_rate; None = unset)."""
    if not isinstance(options, dict):
        raise bad_value("sample", options, "must be a dict")
    opts = dict((k, v) for k, v in options.items() if v is not None)
    unknown = sorted(set(opts) - set(SAMPLE_OPTIONS))
    if unknown:
        raise DevboxOpsError("sample option %r is unknown (known: %s)"
                             % (unknown[0], ", ".join(SAMPLE_OPTIONS)), param=unknown[0])
    result = dict(count=_integer("count", opts.get("count", SAMPLE_OPTIONS["count"]["default"])),
                  concurrency=_integer("concurrency",
                                       opts.get("concurrency", SAMPLE_OPTIONS["concurrency"]["default"])))
    if "max_p95_ms" in opts:
        result["max_p95_ms"] = _number("max_p95_ms", opts["max_p95_ms"])
    if "max_error_rate" in opts:
        result["max_error_rate"] = _rate("max_error_rate", opts["max_error_rate"])
    return result


def gate(stats, max_p95_ms=None, max_error_rate=None):
    """Compare sample stats with SLO limits. Returns ``(ok, reasons)``."""
    reasons = []
    if max_p95_ms is not None:
        limit = _number("max_p95_ms", max_p95_ms)
        if stats["p95_ms"] > limit:
            reasons.append("p95 %.1f ms > max_p95_ms %g" % (stats["p95_ms"], limit))
    if max_error_rate is not None:
        limit = _rate("max_error_rate", max_error_rate)
        if stats["error_rate"] > limit:
            reasons.append("error rate %.4g > max_error_rate %g (%d of %d failed)"
                           % (stats["error_rate"], limit, stats["errors"], stats["count"]))
    return not reasons, reasons


def check(spec, sampling=None, runner=None, clock=time):
    """wait_for, then (for an http probe that passed, when ``sampling`` options are given) sample
    and gate. Returns a JSON-ready dict: name, target, ok, attempts (count), latency_ms, status_code,
    error, elapsed_s, message and, when sampled, sample (stats) and gate_reasons."""
    options = sample_options(sampling) if sampling is not None else None
    waited = wait_for(spec, runner=runner, clock=clock)
    result = dict(name=spec.name, target=spec.target, ok=waited.ok, attempts=waited.attempt_count,
                  latency_ms=waited.last.latency_ms, status_code=waited.last.status_code,
                  error=None if waited.ok else waited.message, elapsed_s=waited.elapsed_s,
                  message=waited.message)
    if waited.ok and options and spec.type == "http":
        stats = sample(spec, options["count"], options["concurrency"], runner=runner)
        passed, reasons = gate(stats, options.get("max_p95_ms"), options.get("max_error_rate"))
        result.update(sample=dict(stats), gate_reasons=reasons, ok=passed)
        if not passed:
            result["error"] = result["message"] = "%s: sample of %d requests failed the gate: %s" % (
                spec.target, stats.count, "; ".join(reasons))
    return result
