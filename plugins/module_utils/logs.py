# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Logs: the last lines of a log file, read from the end, across its rotated files, filtered by level, time
and regex, with secrets masked.

Plain Python (3.8+). A plain file is read backwards in 64 KiB blocks, so the cost follows what is shown,
not the size of the file; a rotated ``.gz`` is decompressed (streamed) into a temporary file and read the
same way. Every read counts towards ``max_bytes``, so a filter that matches nothing cannot make a request
read gigabytes. Lines are redacted before the regex sees them: a regex cannot probe for a secret.

Rotated files are found beside the log: logrotate's ``app.log.1``, ``app.log.2.gz``, ``app.log-20240501``
(dateext) and pm2-logrotate's ``app__2024-05-01_12-00-00.log[.gz]``; newest first (mtime, then number or
name).

An indented line with no time and no level of its own (a stack frame, a traceback line) belongs to the line
above it: it takes that line's time and level, so ``level=error`` keeps the whole stack trace.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import gzip
import json
import os
import re
import tempfile
import zlib

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value
from ansible_collections.devbox.ops.plugins.module_utils.events import MASK, iso, parse_moment, redact_pairs

LEVELS = ("debug", "info", "warn", "error")
LEVEL_ALIASES = {"trace": "debug", "debug": "debug", "verbose": "debug", "info": "info", "notice": "info",
                 "information": "info", "warn": "warn", "warning": "warn", "error": "error", "err": "error",
                 "fatal": "error", "critical": "error", "crit": "error", "alert": "error", "emerg": "error",
                 "panic": "error", "severe": "error"}
BLOCK = 65536
MAX_LINE = 65536            # longer lines are cut (their start is kept)
MAX_LINES = 100000
MAX_PATTERN = 512
MAX_FILES = 20               # rotated files looked at, newest first
MAX_PENDING = 1000           # continuation lines waiting for their first line
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

_WORDS = "trace|debug|verbose|info|notice|warn|warning|error|err|fatal|critical|crit|alert|emerg|panic|severe"
_TIME_RE = re.compile(r"^\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:\s?(?:Z|[+-]\d{2}:?\d{2}))?)\]?:?\s*")
_TIME_PARTS_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?(?:[.,](\d{1,9}))?\s?(Z|z|[+-]\d{2}:?\d{2})?$")
_LEVEL_HEAD_RE = re.compile(r"^(?:\[[^\]]{0,40}\]\s*)*[\[<(]?(%s)\b[\]>)]?(?:[:\s|-]|$)" % _WORDS, re.I)
_LEVEL_BRACKET_RE = re.compile(r"[\[<(](%s)[\]>)]" % _WORDS, re.I)
_LEVEL_KV_RE = re.compile(r"\b(?:level|lvl|severity)[=:]\s*\"?(%s)\b" % _WORDS, re.I)
_LEVEL_DASH_RE = re.compile(r" - (%s) - " % _WORDS.upper())  # Python logging: "time - name - ERROR - msg"
_PINO = ((60, "error"), (50, "error"), (40, "warn"), (30, "info"), (20, "debug"), (10, "debug"))
_JSON_LEVEL_KEYS = ("level", "severity", "levelname", "lvl", "log.level")
_JSON_TIME_KEYS = ("time", "timestamp", "ts", "@timestamp", "datetime", "date")
# Nested quantifiers such as (a+)+ or (a|aa)* can take exponential time on a line that almost matches.
_NESTED_QUANTIFIER_RE = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)[+*{]")
_NUMBERED_RE = re.compile(r"^(\d{1,4})(\.gz)?$")
_DATEEXT_RE = re.compile(r"^\d{8}(?:[-_]?\d{2,6})?(\.gz)?$")
_PM2_ROTATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")


# ------------------------------------------------------------------------------------------ parsing

def normalize_level(value, param="level"):
    """``error``/``warn``/``info``/``debug`` from a name (``WARNING``, ``fatal``...) or a pino number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        for floor, name in _PINO:
            if value >= floor:
                return name
        return "debug"
    if isinstance(value, str):
        return LEVEL_ALIASES.get(value.strip().lower())
    return None


def _time_from_text(text):
    match = _TIME_PARTS_RE.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                                   int((fraction or "0")[:6].ljust(6, "0")))
    except ValueError:
        return None
    if offset is None:  # no offset: the host's local time (PM2's --time prefix is local time)
        return moment.astimezone(datetime.timezone.utc)
    if offset in ("Z", "z"):
        return moment.replace(tzinfo=datetime.timezone.utc)
    sign = -1 if offset[0] == "-" else 1
    delta = datetime.timedelta(hours=int(offset[1:3]), minutes=int(offset[-2:]))
    return moment.replace(tzinfo=datetime.timezone(sign * delta)).astimezone(datetime.timezone.utc)


def _time_from_value(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = value / 1000.0 if value > 1e11 else float(value)  # pino writes epoch milliseconds
        try:
            return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        match = _TIME_RE.match(value.strip())
        return _time_from_text(match.group(1)) if match else None
    return None


def parse_line(text):
    """``(time, level)`` of one log line; either is None when the line does not say.

    JSON lines: ``level`` (names or pino numbers) and ``time``/``timestamp``/``ts``. Text lines: an ISO time
    at the start (PM2's ``--time`` prefix ``2024-05-01T12:00:00:``, ``[2024-05-01 12:00:00 +0000]``), then a
    level word at the start (``ERROR``, ``[warn]``, ``Error:``), in brackets, as ``level=``, or between
    `` - `` as Python's logging writes it.
    """
    when = level = None
    match = _TIME_RE.match(text)
    rest = text
    if match:
        when = _time_from_text(match.group(1))
        rest = text[match.end():]
    if rest.startswith("{") and rest.rstrip().endswith("}"):
        try:
            doc = json.loads(rest)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            for key in _JSON_LEVEL_KEYS:
                if key in doc:
                    level = normalize_level(doc[key])
                    break
            if when is None:
                for key in _JSON_TIME_KEYS:
                    if key in doc:
                        when = _time_from_value(doc[key])
                        break
            return when, level
    head = rest[:160]
    for pattern in (_LEVEL_HEAD_RE, _LEVEL_BRACKET_RE, _LEVEL_KV_RE, _LEVEL_DASH_RE):
        found = pattern.match(head) if pattern is _LEVEL_HEAD_RE else pattern.search(head)
        if found:
            level = LEVEL_ALIASES[found.group(1).lower()]
            break
    return when, level


def redact_line(text, secrets=()):
    """``text`` with known secret values masked, then :func:`events.redact_pairs` (URL credentials, secret
    query values, ``Bearer`` tokens, values of secret-looking ``key=value`` / ``key: value`` / JSON pairs)."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return redact_pairs(text)


# ------------------------------------------------------------------------------------------ files

def rotated_files(path, limit=MAX_FILES):
    """Rotated siblings of ``path``, newest first: ``.1``, ``.2.gz``, ``-20240501[.gz]``, ``__<date>.log[.gz]``."""
    folder, base = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(base)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        number = None
        if name.startswith(base + "."):
            match = _NUMBERED_RE.match(name[len(base) + 1:])
            if not match:
                continue
            number = int(match.group(1))
        elif name.startswith(base + "-"):
            if not _DATEEXT_RE.match(name[len(base) + 1:]):
                continue
        elif name.startswith(stem + "__"):
            suffix = name[len(stem) + 2:]
            if not (_PM2_ROTATE_RE.match(suffix) and suffix.endswith((ext, ext + ".gz"))):
                continue
        else:
            continue
        full = os.path.join(folder, name)
        try:
            mtime = int(os.stat(full).st_mtime)
        except OSError:
            continue
        found.append((mtime, number, name, full))
    found.sort(key=lambda f: f[2], reverse=True)                   # dated names: newest first
    found.sort(key=lambda f: f[1] if f[1] is not None else 0)      # numbered: .1 before .2
    found.sort(key=lambda f: f[0], reverse=True)                   # then by age
    return [f[3] for f in found[:limit]]


class _Budget:
    def __init__(self, max_bytes):
        self.left = max_bytes
        self.scanned = 0
        self.truncated = False

    def take(self, count):
        self.left -= count
        self.scanned += count


def _reverse_lines(handle, budget):
    """The lines of an open binary file, last first, read in blocks from the end."""
    handle.seek(0, os.SEEK_END)
    pos = handle.tell()
    rest = b""
    while pos > 0:
        if budget.left <= 0:
            budget.truncated = True
            return
        step = min(BLOCK, pos)
        pos -= step
        handle.seek(pos)
        chunk = handle.read(step)
        budget.take(len(chunk))
        parts = (chunk + rest).split(b"\n")
        rest = parts[0][:MAX_LINE + BLOCK]
        yield from reversed(parts[1:])
    yield rest


def _file_lines(path, budget):
    """Lines of ``path`` (plain or .gz), last first. A .gz is streamed into a temporary file first."""
    try:
        if not path.endswith(".gz"):
            with open(path, "rb") as handle:
                yield from _reverse_lines(handle, budget)
            return
        with tempfile.TemporaryFile(prefix="devbox-ops-log-") as plain:
            with gzip.open(path, "rb") as packed:
                while True:
                    chunk = packed.read(BLOCK)
                    if not chunk:
                        break
                    if plain.tell() + len(chunk) > budget.left:
                        budget.truncated = True  # its end cannot be reached within the budget
                        return
                    plain.write(chunk)
            yield from _reverse_lines(plain, budget)
    except (OSError, EOFError, zlib.error) as exc:
        if path.endswith(".gz"):  # a damaged or half-written rotated file: skip it, keep the rest
            return
        raise bad_value("path", path, "cannot read: %s" % (getattr(exc, "strerror", None) or exc))


# ------------------------------------------------------------------------------------------ filter

class LogFilter:
    """What to show: the last ``lines`` lines that pass ``level`` (this level or more severe), ``since`` /
    ``until`` (ISO 8601, epoch seconds, or ``15m``/``2h``/``1d`` ago) and ``regex`` (searched in the redacted
    line). Every value is checked here; errors name the parameter and the value."""

    def __init__(self, lines=50, level=None, since=None, until=None, regex=None, max_bytes=DEFAULT_MAX_BYTES,
                 now=None, secrets=()):
        if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= MAX_LINES:
            raise bad_value("lines", lines, "expected a whole number from 1 to %d" % MAX_LINES)
        self.lines = lines
        self.level = None
        if level not in (None, ""):
            self.level = LEVEL_ALIASES.get(str(level).lower()) if isinstance(level, str) else None
            if self.level is None:
                raise bad_value("level", level, "expected one of %s (this level and more severe ones are shown)"
                                % ", ".join(LEVELS))
        self.since = parse_moment(since, "since", now) if since not in (None, "") else None
        self.until = parse_moment(until, "until", now) if until not in (None, "") else None
        if self.since and self.until and self.since > self.until:
            raise bad_value("until", until, "is before since=%s" % since)
        self.regex = compile_regex(regex)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < BLOCK:
            raise bad_value("max_bytes", max_bytes, "expected a whole number >= %d" % BLOCK)
        self.max_bytes = max_bytes
        self.secrets = sorted(set(s for s in secrets if isinstance(s, str) and len(s) >= 4), key=len, reverse=True)

    @property
    def by_time(self):
        return self.since is not None or self.until is not None

    def keeps(self, when, level):
        if self.level is not None and (level is None or LEVELS.index(level) < LEVELS.index(self.level)):
            return False
        if self.by_time:
            if when is None:
                return False
            if self.since is not None and when < self.since or self.until is not None and when > self.until:
                return False
        return True


def compile_regex(pattern, param="regex"):
    """A compiled pattern, or None; a bad, too long or exponential-looking pattern is an error naming it."""
    if pattern in (None, ""):
        return None
    if not isinstance(pattern, str):
        raise bad_value(param, pattern, "expected a regular expression (a string)")
    if len(pattern) > MAX_PATTERN:
        raise bad_value(param, pattern[:40] + "...", "longer than %d characters" % MAX_PATTERN)
    if _NESTED_QUANTIFIER_RE.search(pattern):
        raise bad_value(param, pattern, "a repeated group that itself repeats, such as (a+)+, can take "
                        "exponential time: rewrite it without the nested quantifier")
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise bad_value(param, pattern, "not a valid regular expression: %s" % exc)


def tail(path, flt, default_level=None, rotated=True, missing_ok=False):
    """The last ``flt.lines`` lines of ``path`` (and of its rotated files when more are needed) that pass
    ``flt``. ``default_level`` is the level of a line that names none (``error`` for an error log).

    Returns ``{path, files, lines: [{line, file, time, level}], scanned_bytes, truncated, untimed}``, lines
    oldest first. ``truncated``: ``flt.max_bytes`` ran out before enough lines were found; ``untimed``:
    lines left out by since/until because they carry no time. A missing ``path`` is an error unless
    ``missing_ok`` (then its rotated files are still read).
    """
    if not isinstance(flt, LogFilter):
        raise DevboxOpsError("tail() needs a LogFilter")
    path = os.path.abspath(os.path.expanduser(path))
    exists = os.path.exists(path)
    if not exists and not missing_ok:
        raise bad_value("path", path, "no such log file")
    budget = _Budget(flt.max_bytes)
    found, files, pending = [], [], []
    untimed = 0
    done = False

    def take(group, when, level):
        """Keep the lines of one entry (``group``: newest first) that pass; True once enough are kept."""
        if not flt.keeps(when, level):
            return False
        for source, text in group:
            text = redact_line(text, flt.secrets)  # before the regex: a regex cannot probe for a secret
            if flt.regex is None or flt.regex.search(text):
                found.append({"line": text, "file": source, "time": iso(when) if when else None, "level": level})
                if len(found) >= flt.lines:
                    return True
        return False

    candidates = ([path] if exists else []) + (rotated_files(path) if rotated else [])
    for source in candidates:
        if done or budget.truncated:
            break
        files.append(source)
        for raw in _file_lines(source, budget):
            text = raw.decode("utf-8", "replace").rstrip("\r")
            if not text.strip():
                continue
            text = text[:MAX_LINE]
            when, level = parse_line(text)
            if when is None and level is None and text[:1] in " \t" and len(pending) < MAX_PENDING:
                pending.append((source, text))
                continue
            level = level or default_level
            if flt.since is not None and when is not None and when < flt.since:
                done = True  # older than since: so is everything before it
                break
            if flt.by_time and when is None:
                untimed += 1 + len(pending)
            done = take(pending + [(source, text)], when, level)
            pending = []
            if done:
                break
    if pending and not done:  # continuation lines whose first line was never seen
        untimed += len(pending) if flt.by_time else 0
        take(pending, None, default_level)
    found.reverse()
    return {"path": path, "files": files, "lines": found, "scanned_bytes": budget.scanned,
            "truncated": budget.truncated and len(found) < flt.lines, "untimed": untimed}
