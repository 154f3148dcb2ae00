# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Events: a JSON-lines event and audit log, and notifiers (webhooks over ``requests``, email over SMTP).

Plain Python (3.8+). ``requests`` is imported only when a webhook is sent. Secrets never leave this
module: fields whose key looks secret are masked before an event is written or sent, URL passwords and
secret-looking query parameters are masked in every string, and errors name a notifier's URL without
its query string (webhook tokens often sit there) and with token-like path segments masked.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import datetime
import hashlib
import hmac
import json
import os
import pwd
import re
import smtplib
import socket
import ssl
import time

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value

MASK = "********"
WEBHOOK_KINDS = ("generic", "slack", "feishu", "dingtalk", "wecom")
KINDS = WEBHOOK_KINDS + ("email",)
# Environment variables that identify who or what ran an action (CI systems, AWX/Tower).
ACTOR_ENV = (("CI_JOB_ID", "ci_job_id"), ("GITHUB_RUN_ID", "github_run_id"),
             ("AWX_JOB_ID", "awx_job_id"), ("TOWER_JOB_ID", "awx_job_id"), ("BUILD_ID", "build_id"))
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
# A key is secret when it contains one of these ...
_SECRET_PARTS = ("password", "passwd", "token", "secret", "apikey", "api_key", "private_key", "credential",
                 "authorization", "cookie", "signature")
# ... or when one of its words is one of these (so ``key`` and ``env`` match but ``monkey`` does not).
_SECRET_WORDS = ("key", "pwd", "pass", "sign", "env", "environment", "dsn")
_URL_CREDS_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^/\s]*)@")
_QUERY_PARAM_RE = re.compile(r"([?&])([^=&#\s]+)=([^&#\s]*)")
_TOKEN_SEGMENT_LEN = 16


# ---------------------------------------------------------------- secrets


def is_secret_key(key):
    """Whether a field named ``key`` holds a secret (password, token, key, env, ...)."""
    lowered = str(key).lower()
    if lowered == "auth" or any(part in lowered for part in _SECRET_PARTS):
        return True
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower())
    return any(word in _SECRET_WORDS for word in words)


def redact_text(text):
    """``text`` with URL credentials (``scheme://user:pass@``) and secret-looking query values masked."""
    def creds(match):
        userinfo = match.group(2)
        user = userinfo.split(":", 1)[0]
        return "%s%s@" % (match.group(1), user + ":" + MASK if ":" in userinfo else MASK)

    def query(match):
        if is_secret_key(match.group(2)):
            return "%s%s=%s" % (match.group(1), match.group(2), MASK)
        return match.group(0)

    text = _URL_CREDS_RE.sub(creds, text)
    return _QUERY_PARAM_RE.sub(query, text) if "=" in text else text


_BEARER_RE = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}")
_PAIR_RE = re.compile(r"(?P<key>\"?[A-Za-z_][A-Za-z0-9_.-]{0,63}\"?)(?P<sep>\s*[=:]\s*)"
                      r"(?P<val>\"[^\"]*\"|'[^']*'|[^\s,;&\"'{}\[\]]+)")


_SECRET_KEY_CACHE = {}


def _secret_key_cached(key):
    """:func:`is_secret_key` with a bounded cache (log lines repeat the same few keys)."""
    found = _SECRET_KEY_CACHE.get(key)
    if found is None:
        found = is_secret_key(key)
        if len(_SECRET_KEY_CACHE) < 4096:
            _SECRET_KEY_CACHE[key] = found
    return found


def redact_pairs(text):
    """:func:`redact_text`, plus ``Bearer``/``Basic`` tokens and the values of secret-looking ``key=value``,
    ``key: value`` and ``"key": "value"`` pairs in free text (log lines, messages)."""
    text = _BEARER_RE.sub(lambda m: "%s %s" % (m.group(1), MASK), redact_text(text))

    def pair(match):
        value = match.group("val")
        if value.strip("\"'") == MASK or value.lower() in ("bearer", "basic", "token") \
                or not _secret_key_cached(match.group("key").strip('"')):
            return match.group(0)
        quote = value[0] if value[0] in "\"'" else ""
        return "%s%s%s%s%s" % (match.group("key"), match.group("sep"), quote, MASK, quote)

    return _PAIR_RE.sub(pair, text) if ("=" in text or ":" in text) else text


def redact(value, key=None):
    """A copy of ``value`` (dicts, lists, strings) with every secret masked.

    A secret key keeps its shape when it holds a dict (``env``: names stay, values are masked).
    """
    if key is not None and is_secret_key(key):
        if isinstance(value, dict):
            return dict((k, MASK) for k in value)
        return None if value is None else MASK
    if isinstance(value, dict):
        return dict((k, redact(v, k)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def public_url(url):
    """What may be shown of a webhook URL: no credentials, query or fragment; long path segments masked.

    Slack and Feishu put their token in the path (``/services/T0/B0/<token>``, ``/hook/<uuid>``);
    DingTalk and WeCom in the query (``?access_token=``, ``?key=``).
    """
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return MASK
    rest = re.split(r"[?#]", rest, 1)[0]
    netloc, slash, path = rest.partition("/")
    netloc = netloc.rpartition("@")[2]
    segments = [MASK if len(s) >= _TOKEN_SEGMENT_LEN else s for s in path.split("/")] if slash else []
    return "%s://%s%s%s" % (scheme, netloc, slash, "/".join(segments))


# ---------------------------------------------------------------- events


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(moment):
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value, param="since"):
    """An aware datetime from a datetime, epoch seconds or an ISO 8601 string (``Z`` allowed)."""
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        # Python 3.8-3.10 fromisoformat wants 0, 3 or 6 fraction digits.
        text = re.sub(r"(\.\d{1,6})\d*", lambda m: m.group(1).ljust(7, "0"), text, 1)
        try:
            return parse_time(datetime.datetime.fromisoformat(text), param)
        except ValueError:
            pass
    raise bad_value(param, value, "expected an ISO 8601 time (2024-05-01T12:00:00Z), epoch seconds or a datetime")


_RELATIVE_RE = re.compile(r"^(\d{1,6})\s*(s|sec|m|min|h|d|w)$")
_RELATIVE_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(value, param="since", now=None):
    """Like :func:`parse_time`, plus ``now`` and times relative to now: ``30s``, ``15m``, ``2h``, ``1d``, ``1w``."""
    if isinstance(value, str):
        text = value.strip().lower()
        match = _RELATIVE_RE.match(text)
        if match or text == "now":
            now = parse_time(now, param) if now is not None else utc_now()
            if not match:
                return now
            return now - datetime.timedelta(seconds=int(match.group(1)) * _RELATIVE_S[match.group(2)])
    try:
        return parse_time(value, param)
    except DevboxOpsError:
        raise bad_value(param, value, "expected an ISO 8601 time (2024-05-01T12:00:00Z), epoch seconds, now, "
                        "or a time ago such as 30s, 15m, 2h, 1d, 1w")


def actor(user=None, host=None, environ=None, awx_job_id=None):
    """The one place an actor dict is built: ``user`` (given, else ``SUDO_USER``/``USER``/``LOGNAME``/the
    password database), ``host`` when given (the controller), ``awx_job_id`` when given (AWX's
    ``awx_job_id``/``tower_job_id`` extra var), and the CI / AWX job ids found in ``environ``
    (see :data:`ACTOR_ENV`)."""
    env = os.environ if environ is None else environ
    user = user or env.get("SUDO_USER") or env.get("USER") or env.get("LOGNAME")
    if not user:
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = "uid:%d" % os.getuid()
    found = {"user": str(user)}
    if host:
        found["host"] = str(host)
    if awx_job_id not in (None, ""):
        found["awx_job_id"] = str(awx_job_id)
    for name, field in ACTOR_ENV:
        if env.get(name) and field not in found:
            found[field] = str(env[name])
    return found


def actor_matches(event_actor, wanted):
    """Whether ``wanted`` names the event's actor: its user, ``user@host``, or any of its job ids."""
    if isinstance(event_actor, dict):
        values = [str(v) for v in event_actor.values() if v not in (None, "")]
        if event_actor.get("user") and event_actor.get("host"):
            values.append("%s@%s" % (event_actor["user"], event_actor["host"]))
    else:
        values = [str(event_actor)]
    return str(wanted) in values


class Actor:
    """Who ran an action: the user, plus CI / AWX job ids found in the environment."""

    @staticmethod
    def detect(environ=None):
        return actor(environ=environ)


def make_event(type, target, result, actor=None, **fields):  # pylint: disable=redefined-builtin
    """A validated, redacted event: ``ts`` (ISO UTC), ``host``, ``type``, ``target``, ``result``, ``actor``
    and the extra ``fields`` (``ts`` and ``host`` may be given to override the defaults)."""
    if not isinstance(type, str) or not _TYPE_RE.match(type):
        raise bad_value("type", type, "expected a lower-case word such as deploy, rollback, restart, alert")
    for param, value in (("target", target), ("result", result)):
        if not isinstance(value, str) or not value.strip():
            raise bad_value(param, value, "expected a non-empty string")
    ts, host = fields.pop("ts", None), fields.pop("host", None)
    event = {"ts": iso(parse_time(ts, "ts") if ts else utc_now()), "host": host or socket.gethostname(),
             "type": type, "target": target, "result": result,
             "actor": Actor.detect() if actor is None else actor}
    event.update(fields)
    return redact(event)


def event_from_dict(data, param="event"):
    """:func:`make_event` from a dict (the module's ``event`` option); errors name ``event.<key>``."""
    if not isinstance(data, dict):
        raise bad_value(param, data, "expected a dict with type, target and result")
    fields = dict(data)
    missing = [k for k in ("type", "target", "result") if k not in fields]
    if missing:
        raise bad_value(param + "." + missing[0], None, "required")
    try:
        return make_event(fields.pop("type"), fields.pop("target"), fields.pop("result"),
                          fields.pop("actor", None), **dict((str(k), v) for k, v in fields.items()))
    except DevboxOpsError as exc:
        raise DevboxOpsError("%s.%s" % (param, exc), param="%s.%s" % (param, exc.param), value=exc.value)


class EventLog:
    """A JSON-lines event and audit log: one event per line, appended atomically."""

    def __init__(self, path, mode=0o640):
        if not path or not isinstance(path, str):
            raise bad_value("event_log", path, "expected a file path")
        self.path = path
        self.mode = mode
        self.skipped = 0  # lines the last query could not read (a torn last line after a crash)

    def record(self, type, target, result, actor=None, **fields):  # pylint: disable=redefined-builtin
        """Build an event (see :func:`make_event`), append it and return it."""
        return self.append(make_event(type, target, result, actor, **fields))

    def append(self, event):
        """Append an already built event (redacted again on the way) in one ``write`` plus ``fsync``."""
        line = (json.dumps(redact(event), sort_keys=False, default=str) + "\n").encode("utf-8")
        try:
            folder = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(folder):
                os.makedirs(folder, 0o750)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, self.mode)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a crash left a torn line: never glue the new event onto it
                written = 0
                while written < len(line):  # one write for any sane event; loop only on a short write
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise bad_value("event_log", self.path, "cannot append: %s" % (exc.strerror or exc))
        return event

    def query(self, since=None, until=None, types=None, target=None, limit=None, result=None, actor=None,
              now=None):  # pylint: disable=redefined-outer-name
        """Events in file order, filtered; ``limit`` keeps the newest ``limit``. Unreadable lines are skipped
        and counted in :attr:`skipped`. ``since``/``until`` take what :func:`parse_moment` takes (``2h`` ago
        included); ``types``, ``target`` and ``result`` a value or a list; ``actor`` a user, ``user@host`` or
        a job id (see :func:`actor_matches`)."""
        since = parse_moment(since, "since", now) if since is not None else None
        until = parse_moment(until, "until", now) if until is not None else None
        if isinstance(types, str):
            types = [types]
        targets = [target] if isinstance(target, str) else target
        results = [result] if isinstance(result, str) else result
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise bad_value("limit", limit, "expected a whole number >= 0")
        self.skipped = 0
        found = []
        if not os.path.exists(self.path):
            return found
        with open(self.path, "rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                try:
                    event = json.loads(raw.decode("utf-8"))
                    when = parse_time(event["ts"], "ts")
                except (ValueError, KeyError, TypeError, DevboxOpsError):
                    self.skipped += 1
                    continue
                if since is not None and when < since or until is not None and when > until:
                    continue
                if types and event.get("type") not in types or targets and event.get("target") not in targets:
                    continue
                if results and event.get("result") not in results:
                    continue
                if actor is not None and not actor_matches(event.get("actor"), actor):
                    continue
                found.append(event)
        if limit is not None:
            found = found[max(0, len(found) - limit):]
        return found


def actor_text(event_actor):
    """``user@host`` plus job ids, for tables: ``alice@laptop github_run_id=42``."""
    if not isinstance(event_actor, dict):
        return "-" if event_actor in (None, "") else str(event_actor)
    text = str(event_actor.get("user") or "?")
    if event_actor.get("host"):
        text += "@%s" % event_actor["host"]
    extra = ["%s=%s" % (k, v) for k, v in sorted(event_actor.items()) if k not in ("user", "host") and v]
    return " ".join([text] + extra)


_DETAIL_KEYS = ("step", "failed_step", "version", "release", "instances", "message", "reason", "error")


def format_table(found):
    """Aligned text lines (a header, then one line per event) for a list of events."""
    head = ("TIME", "HOST", "TYPE", "TARGET", "RESULT", "ACTOR", "DETAIL")
    rows = []
    for event in found:
        detail = " ".join("%s=%s" % (k, redact_pairs(str(event[k]))) for k in _DETAIL_KEYS
                          if event.get(k) not in (None, ""))
        rows.append((str(event.get("ts", "?")), str(event.get("host", "-")), str(event.get("type", "?")),
                     str(event.get("target", "?")), str(event.get("result", "?")), actor_text(event.get("actor")),
                     " ".join(detail.split())[:160]))
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head) - 1)]
    return [("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1]).rstrip() for r in [head] + rows]


# ---------------------------------------------------------------- notifiers


def format_text(event):
    """One readable line: ``[devbox.ops] deploy api on devbox1: failed at step verify (v1.2.3)``."""
    text = "[devbox.ops] %s %s" % (event.get("type", "event"), event.get("target", "?"))
    if event.get("host"):
        text += " on %s" % event["host"]
    text += ": %s" % event.get("result", "?")
    if event.get("step"):
        text += " at step %s" % event["step"]
    version = event.get("version")
    if version not in (None, ""):
        version = str(version)
        text += " (%s)" % ("v" + version if version[:1].isdigit() else version)
    if event.get("message"):
        text += " - %s" % event["message"]
    return redact_text(" ".join(text.split()))


def _slack_blocks(event, text):
    facts = [k for k in ("actor", "ts", "version", "step") if event.get(k)]
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if facts:
        elements = []
        for key in facts:
            value = event[key]
            if isinstance(value, dict):
                value = ", ".join("%s=%s" % item for item in sorted(value.items()))
            elements.append({"type": "mrkdwn", "text": "*%s*: %s" % (key, value)})
        blocks.append({"type": "context", "elements": elements})
    return blocks


def build_payload(kind, event, blocks=False):
    """The body sent for ``kind`` (a dict; for email ``subject``, ``text``). The event is redacted first."""
    if kind not in KINDS:
        raise bad_value("kind", kind, "expected one of %s" % ", ".join(KINDS))
    event = redact(event)
    text = format_text(event)
    if kind == "generic":
        return event
    if kind == "slack":
        return {"text": text, "blocks": _slack_blocks(event, text)} if blocks else {"text": text}
    if kind == "feishu":
        return {"msg_type": "text", "content": {"text": text}}
    if kind in ("dingtalk", "wecom"):
        return {"msgtype": "text", "text": {"content": text}}
    return {"subject": text, "text": text + "\n\n" + json.dumps(event, indent=2, sort_keys=True, default=str)}


def _number(param, value, default, minimum=0.0):
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= minimum:
        raise bad_value(param, value, "expected a number > %s" % minimum)
    return value


def check_notifier(notifier, param="notifier"):
    """Validate one notifier dict (before anything is sent) and return it with defaults filled in."""
    if not isinstance(notifier, dict):
        raise bad_value(param, "<%s>" % type(notifier).__name__, "expected a dict with kind and url")
    kind = notifier.get("kind")
    if kind not in KINDS:
        raise bad_value(param + ".kind", kind, "expected one of %s" % ", ".join(KINDS))
    checked = dict((k, v) for k, v in notifier.items() if v is not None)
    checked["timeout"] = _number(param + ".timeout", notifier.get("timeout"), 10.0)
    if kind == "email":
        if not notifier.get("host"):
            raise bad_value(param + ".host", notifier.get("host"), "required for kind=email")
        to = notifier.get("to")
        if isinstance(to, str):
            to = [to]
        if not to or not all(isinstance(t, str) and "@" in t for t in to):
            raise bad_value(param + ".to", to, "expected a list of email addresses")
        checked["to"] = list(to)
        port = notifier.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise bad_value(param + ".port", port, "expected a port number 1-65535")
        if notifier.get("password") and not notifier.get("username"):
            raise bad_value(param + ".username", None, "required when a password is given")
        return checked
    url = notifier.get("url")
    if not isinstance(url, str) or not re.match(r"^https?://[^/?#\s]+", url):
        raise bad_value(param + ".url", public_url(url) if url else url,
                        "expected an http:// or https:// URL")
    headers = notifier.get("headers") or {}
    if not isinstance(headers, dict):
        raise bad_value(param + ".headers", "<%s>" % type(headers).__name__, "expected a dict")
    checked["headers"] = dict((str(k), str(v)) for k, v in headers.items())
    return checked


def _requests():
    try:
        import requests  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise DevboxOpsError("webhook notifiers need the Python library 'requests' on this host "
                             "(pip install requests, or the devbox.ops base role)", param="requests")
    return requests


def _sign(kind, secret, timestamp):
    """DingTalk: HMAC-SHA256 keyed by the secret over "<ms>\\n<secret>"; Feishu: keyed by "<s>\\n<secret>" over
    nothing. Both base64-encoded, as their robot documentation shows."""
    text = ("%s\n%s" % (timestamp, secret)).encode("utf-8")
    key, message = (secret.encode("utf-8"), text) if kind == "dingtalk" else (text, b"")
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode("ascii")


def _scrub(text, notifier):
    """Remove every secret of ``notifier`` from an error text (requests puts the whole URL in them)."""
    text = str(text)
    url = notifier.get("url") or ""
    secrets = [url, url.partition("?")[2]] + [s for s in url.partition("?")[0].split("/")
                                              if len(s) >= _TOKEN_SEGMENT_LEN]
    secrets += [notifier.get(k) for k in ("secret", "password")] + list((notifier.get("headers") or {}).values())
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(str(secret), MASK)
    return redact_text(text)


def _problem(exc, timeout):
    lowered = str(exc).lower()
    if "timed out" in lowered or "timeout" in type(exc).__name__.lower():
        return "timed out after %ss" % timeout
    if "refused" in lowered:
        return "connection refused"
    if ("name or service not known" in lowered or "name resolution" in lowered
            or "nodename nor servname" in lowered or "no address associated" in lowered):
        return "cannot resolve host"
    if "reset by peer" in lowered:
        return "connection reset by peer"
    if "remotedisconnected" in lowered or "connection aborted" in lowered:
        return "connection closed without a response"
    return None


def _reply_error(kind, response):
    """Chat APIs answer 200 with an error code in the body; return that error or None."""
    if kind not in ("feishu", "dingtalk", "wecom"):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    code = body.get("code", body.get("StatusCode")) if kind == "feishu" else body.get("errcode")
    if code not in (None, 0, "0"):
        message = body.get("msg") or body.get("StatusMessage") or body.get("errmsg") or ""
        return "answered error %s: %s" % (code, str(message)[:200])
    return None


def _send_webhook(notifier, event, session=None):
    requests = _requests()
    kind = notifier["kind"]
    payload = build_payload(kind, event, blocks=bool(notifier.get("blocks")))
    params = None
    secret = notifier.get("secret")
    if secret and kind == "dingtalk":
        stamp = str(int(time.time() * 1000))
        params = {"timestamp": stamp, "sign": _sign(kind, secret, stamp)}
    elif secret and kind == "feishu":
        stamp = str(int(time.time()))
        payload = dict(payload, timestamp=stamp, sign=_sign(kind, secret, stamp))
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "devbox.ops"}
    headers.update(notifier["headers"])
    body = json.dumps(payload, default=str).encode("utf-8")
    post = (session or requests).post
    try:
        response = post(notifier["url"], data=body, headers=headers, params=params,
                        timeout=notifier["timeout"], allow_redirects=False)
    except requests.exceptions.RequestException as exc:
        reason = _problem(exc, notifier["timeout"]) or "%s: %s" % (type(exc).__name__, _scrub(exc, notifier)[:300])
        return None, reason
    if not 200 <= response.status_code < 300:
        return response.status_code, "answered HTTP %d" % response.status_code
    return response.status_code, _reply_error(kind, response)


def _send_email(notifier, event):
    from email.message import EmailMessage  # pylint: disable=import-outside-toplevel
    payload = build_payload("email", event)
    message = EmailMessage()
    message["Subject"] = payload["subject"]
    message["From"] = notifier.get("from") or "devbox-ops@%s" % socket.gethostname()
    message["To"] = ", ".join(notifier["to"])
    message.set_content(payload["text"])
    use_ssl = bool(notifier.get("ssl"))
    port = notifier.get("port") or (465 if use_ssl else 587 if notifier.get("starttls") else 25)
    timeout = notifier["timeout"]
    context = ssl.create_default_context()
    try:
        if use_ssl:
            client = smtplib.SMTP_SSL(notifier["host"], port, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(notifier["host"], port, timeout=timeout)
        try:
            client.ehlo()
            if notifier.get("starttls"):
                client.starttls(context=context)
                client.ehlo()
            if notifier.get("username"):
                client.login(notifier["username"], notifier.get("password") or "")
            client.send_message(message)
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
    except smtplib.SMTPAuthenticationError as exc:
        return "authentication failed for user %s (%s)" % (notifier.get("username"), exc.smtp_code)
    except smtplib.SMTPNotSupportedError as exc:
        text = str(exc)
        return "server does not support %s" % ("STARTTLS" if "STARTTLS" in text else "AUTH" if "AUTH" in text
                                               else _scrub(text, notifier))
    except smtplib.SMTPResponseException as exc:
        answer = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return "server answered %s: %s" % (exc.smtp_code, _scrub(answer, notifier)[:200])
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        return _problem(exc, timeout) or "%s: %s" % (type(exc).__name__, _scrub(exc, notifier)[:300])
    return None


def notifier_target(notifier):
    """How a notifier is named in results and errors (never with a secret)."""
    if notifier.get("kind") == "email":
        return "smtp://%s:%s" % (notifier.get("host"), notifier.get("port") or
                                 (465 if notifier.get("ssl") else 587 if notifier.get("starttls") else 25))
    return public_url(notifier.get("url"))


def send(notifier, event, session=None, raise_on_error=True):
    """Send ``event`` through one notifier. Returns ``{kind, target, ok, status, error, elapsed_s}``; with
    ``raise_on_error`` a failure raises :class:`DevboxOpsError` naming the target (never its token)."""
    notifier = check_notifier(notifier)
    started = time.monotonic()
    status = None
    if notifier["kind"] == "email":
        error = _send_email(notifier, event)
    else:
        status, error = _send_webhook(notifier, event, session)
    target = notifier_target(notifier)
    result = {"kind": notifier["kind"], "target": target, "ok": error is None, "status": status,
              "error": None if error is None else "%s notifier %s: %s" % (notifier["kind"], target, error),
              "elapsed_s": round(time.monotonic() - started, 3)}
    if error is not None and raise_on_error:
        raise DevboxOpsError(result["error"], param="notifier", value=target, result=result)
    return result


def notify_all(notifiers, event):
    """Validate every notifier, then send to each; one failure does not stop the others.

    Returns one result per notifier, in order (see :func:`send`).
    """
    if not isinstance(notifiers, (list, tuple)):
        raise bad_value("notifiers", "<%s>" % type(notifiers).__name__, "expected a list")
    checked = [check_notifier(n, "notifiers[%d]" % i) for i, n in enumerate(notifiers)]
    results = []
    for notifier in checked:
        try:
            results.append(send(notifier, event, raise_on_error=False))
        except DevboxOpsError as exc:  # requests missing: report it, keep going
            results.append({"kind": notifier["kind"], "target": notifier_target(notifier), "ok": False,
                            "status": None, "error": str(exc), "elapsed_s": 0.0})
    return results


# ---------------------------------------------------------------- alert dedup


class AlertState:
    """Per alert key, the last state seen and when an alert was last sent.

    :meth:`should_send` says yes on a change of state (recovery included) and, while the state is still
    bad, again every ``remind_after_s`` seconds. A first sighting of a good state sends nothing.
    """

    def __init__(self, good_states=("ok",), data=None):
        self.good_states = tuple(good_states)
        self.keys = dict(data or {})

    def should_send(self, key, state, now, remind_after_s=None):
        last = self.keys.get(key)
        bad = state not in self.good_states
        if last is None:
            send_now = bad
        elif last["state"] != state:
            send_now = True
        else:
            send_now = bool(bad and remind_after_s and last.get("sent") is not None
                            and now - last["sent"] >= remind_after_s)
        sent = now if send_now else (last or {}).get("sent")
        self.keys[key] = {"state": state, "sent": sent}
        return send_now

    def to_dict(self):
        """JSON-able state, for a watchdog's state file; ``AlertState(data=...)`` restores it."""
        return dict((k, dict(v)) for k, v in self.keys.items())
