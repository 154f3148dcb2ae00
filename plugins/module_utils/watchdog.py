# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The on-host watchdog: liveness probes, restart budget with a breaker, resource rules, disk cleanup.

It runs on the devbox (supervised by PM2 like an app) and only glues the other engines together:
``probe`` (liveness attempts), ``pm2`` (the process list, restart/stop/scale/resurrect), ``metrics``
(RSS and CPU per app, disk levels) and ``events`` (the audit log, alert dedup, notifiers).

Shipping: the monitoring role copies the files named in :data:`ENGINES` into
``<watchdog dir>/lib/ansible_collections/devbox/ops/plugins/module_utils/`` (a PEP 420 namespace
package: no ``__init__.py`` needed), so the engines' absolute imports work unchanged on the host;
``files/watchdog/devbox-ops-watchdog`` puts that ``lib`` (or, in a checkout, ``.collections``) on
``sys.path`` and calls :func:`main`.

Plain Python 3.8+, no ``ansible`` import. See docs/watchdog.md for the config and state formats.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import collections
import datetime
import errno
import fcntl
import fnmatch
import json
import logging
import os
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value
from ansible_collections.devbox.ops.plugins.module_utils.events import (
    AlertState, EventLog, check_notifier, iso, make_event, notifier_target, notify_all)
from ansible_collections.devbox.ops.plugins.module_utils.metrics import collect, evaluate
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import AppSpec, Plan, PM2Client, _memory_bytes
from ansible_collections.devbox.ops.plugins.module_utils.probe import ProbeSpec, run_probe
from ansible_collections.devbox.ops.plugins.module_utils.runner import SubprocessRunner

# The module_utils files the watchdog needs on a host (the monitoring role ships exactly these).
ENGINES = ("errors", "runner", "pm2", "probe", "metrics", "events", "watchdog")
STATE_VERSION = 1
DEFAULT_CONFIG = "~/.devbox-ops/watchdog/watchdog.json"
LOG = logging.getLogger("devbox_ops.watchdog")

TOP_KEYS = ("period", "host", "state_file", "event_log", "concurrency", "metrics_period", "remind_after_s",
            "notifiers", "pm2", "disk", "apps")
PM2_KEYS = ("executable", "home", "refresh_s", "resurrect", "action_timeout_s")
DISK_KEYS = ("paths", "warning", "critical", "clean")
CLEAN_KEYS = ("root", "patterns", "older_than_s", "larger_than", "every_s")
APP_KEYS = ("name", "liveness", "grace_s", "restart_budget", "max_memory", "autoscale")
BUDGET_KEYS = ("max_restarts", "window_s", "cooldown_s")
SCALE_KEYS = ("min", "max", "up_cpu", "down_cpu", "periods", "cooldown_s")
# Clean rules may never be rooted at these directories themselves (a subdirectory is fine).
FORBIDDEN_ROOTS = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root",
                   "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var")
KEEP_ACTIONS = 10
KEEP_ERRORS = 5


# ------------------------------------------------------------------------------------------ config

def _prefixed(where, exc):
    """``exc`` (from an engine's validation) re-raised with the config path of the value in front."""
    if exc.param and exc.msg.startswith(str(exc.param)):
        return DevboxOpsError("%s.%s" % (where, exc.msg), param="%s.%s" % (where, exc.param), value=exc.value)
    return DevboxOpsError("%s: %s" % (where, exc.msg), param=where, value=exc.value)


def _obj(param, value, keys):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_value(param, value, "must be an object")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise bad_value("%s.%s" % (param, unknown[0]) if param else unknown[0], value[unknown[0]],
                        "unknown option (known: %s)" % ", ".join(keys))
    return dict((k, v) for k, v in value.items() if v is not None)


def _num(param, value, minimum=0.0, strict=True, integer=False, maximum=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        raise bad_value(param, value, "must be %s" % ("an integer" if integer else "a number"))
    if value < minimum or (strict and value == minimum) or (maximum is not None and value > maximum):
        raise bad_value(param, value, "must be %s %g%s" % (">" if strict else ">=", minimum,
                                                           "" if maximum is None else " and <= %g" % maximum))
    return int(value) if integer else float(value)


def _size(param, value):
    try:
        return _memory_bytes(value)
    except DevboxOpsError:
        raise bad_value(param, value, "must be bytes (an integer > 0) or a size like '512K', '200M', '1G'")


def _path(param, value, base):
    if not isinstance(value, str) or not value or "\0" in value:
        raise bad_value(param, value, "must be a path")
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


class CleanRule:
    """Files to delete at critical disk: regular files under ``root`` matching one of ``patterns``."""

    def __init__(self, where, raw, base):
        raw = _obj(where, raw, CLEAN_KEYS)
        if "root" not in raw:
            raise bad_value(where + ".root", None, "is required")
        self.root = _path(where + ".root", raw["root"], base)
        if self.root in FORBIDDEN_ROOTS:
            raise bad_value(where + ".root", raw["root"], "is a system directory; name a subdirectory to clean")
        patterns = raw.get("patterns")
        if not isinstance(patterns, list) or not patterns:
            raise bad_value(where + ".patterns", patterns, "must be a non-empty list of glob patterns")
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern or pattern.startswith("/") \
                    or ".." in pattern.split("/"):
                raise bad_value(where + ".patterns", pattern, "must be relative glob patterns without '..'")
        self.patterns = list(patterns)
        self.older_than_s = _num(where + ".older_than_s", raw.get("older_than_s", 0), strict=False)
        larger = raw.get("larger_than", 0)
        self.larger_than = 0 if larger == 0 else _size(where + ".larger_than", larger)
        # 0: only at critical disk; otherwise also every every_s seconds (log retention, tmp reaping)
        self.every_s = _num(where + ".every_s", raw.get("every_s", 0), strict=False)

    def matches(self, rel):
        """A pattern with '/' matches the path relative to root ('*' crosses '/'), others the file name."""
        name = os.path.basename(rel)
        return any(fnmatch.fnmatchcase(rel if "/" in p else name, p) for p in self.patterns)


class AppRule:
    """What the watchdog does for one PM2 app (see docs/watchdog.md)."""

    def __init__(self, where, raw, period):
        raw = _obj(where, raw, APP_KEYS)
        try:
            self.name = AppSpec.from_params({"name": raw.get("name")}).name
        except DevboxOpsError as exc:
            raise _prefixed(where, exc)
        self.liveness = None
        if raw.get("liveness") is not None:
            try:
                self.liveness = ProbeSpec.from_params(raw["liveness"], defaults={"period": period})
            except DevboxOpsError as exc:
                raise _prefixed(where + ".liveness", exc)
        self.grace_s = _num(where + ".grace_s", raw.get("grace_s", 10), strict=False)
        budget = _obj(where + ".restart_budget", raw.get("restart_budget"), BUDGET_KEYS)
        self.max_restarts = _num(where + ".restart_budget.max_restarts", budget.get("max_restarts", 3),
                                 minimum=1, strict=False, integer=True)
        self.window_s = _num(where + ".restart_budget.window_s", budget.get("window_s", 300))
        self.cooldown_s = _num(where + ".restart_budget.cooldown_s", budget.get("cooldown_s", 60))
        self.max_memory = _size(where + ".max_memory", raw["max_memory"]) if "max_memory" in raw else None
        self.autoscale = None
        if "autoscale" in raw:
            scale = _obj(where + ".autoscale", raw["autoscale"], SCALE_KEYS)
            lo = _num(where + ".autoscale.min", scale.get("min", 1), minimum=1, strict=False, integer=True)
            hi = _num(where + ".autoscale.max", scale.get("max", 4), minimum=lo, strict=False, integer=True)
            up = _num(where + ".autoscale.up_cpu", scale.get("up_cpu", 80), maximum=1000)
            down = _num(where + ".autoscale.down_cpu", scale.get("down_cpu", 20), strict=False, maximum=up)
            if down >= up:
                raise bad_value(where + ".autoscale.down_cpu", scale.get("down_cpu"), "must be below up_cpu (%g)" % up)
            self.autoscale = {"min": lo, "max": hi, "up_cpu": up, "down_cpu": down,
                              "periods": _num(where + ".autoscale.periods", scale.get("periods", 3), minimum=1,
                                              strict=False, integer=True),
                              "cooldown_s": _num(where + ".autoscale.cooldown_s", scale.get("cooldown_s", 60),
                                                 strict=False)}


class Config:
    """A validated watchdog.json. Relative paths are resolved against the config file's directory."""

    def __init__(self, data, path):
        self.path = os.path.abspath(path)
        base = os.path.dirname(self.path)
        raw = _obj("", data, TOP_KEYS) if isinstance(data, dict) else None
        if raw is None:
            raise bad_value("config", type(data).__name__, "must be a JSON object")
        self.period = _num("period", raw.get("period", 5.0))
        self.host = raw.get("host") or socket.gethostname()
        if not isinstance(self.host, str):
            raise bad_value("host", self.host, "must be a string")
        self.state_file = _path("state_file", raw.get("state_file", "state.json"), base)
        self.event_log = _path("event_log", raw.get("event_log", "../events.jsonl"), base)
        self.concurrency = _num("concurrency", raw.get("concurrency", 4), minimum=1, strict=False, integer=True)
        # psutil over every process costs ~10-25 ms; PM2 checks max_memory_restart every 30 s too.
        self.metrics_period = _num("metrics_period", raw.get("metrics_period", max(30.0, self.period)))
        self.remind_after_s = _num("remind_after_s", raw.get("remind_after_s", 3600), strict=False) or None
        notifiers = raw.get("notifiers", [])
        if not isinstance(notifiers, list):
            raise bad_value("notifiers", type(notifiers).__name__, "must be a list")
        self.notifiers = [check_notifier(n, "notifiers[%d]" % i) for i, n in enumerate(notifiers)]
        pm2 = _obj("pm2", raw.get("pm2"), PM2_KEYS)
        self.pm2_executable = pm2.get("executable", "pm2")
        self.pm2_home = _path("pm2.home", pm2["home"], base) if "home" in pm2 else None
        self.pm2_refresh_s = _num("pm2.refresh_s", pm2.get("refresh_s", 300))
        self.resurrect = pm2.get("resurrect", True)
        if not isinstance(self.resurrect, bool):
            raise bad_value("pm2.resurrect", self.resurrect, "must be true or false")
        self.action_timeout_s = _num("pm2.action_timeout_s", pm2.get("action_timeout_s", 60))
        disk = _obj("disk", raw.get("disk"), DISK_KEYS)
        paths = disk.get("paths", ["~"])
        if not isinstance(paths, list):
            raise bad_value("disk.paths", paths, "must be a list of paths")
        self.disk_paths = [_path("disk.paths[%d]" % i, p, base) for i, p in enumerate(paths)]
        for i, path in enumerate(self.disk_paths):
            if not os.path.exists(path):
                raise bad_value("disk.paths[%d]" % i, paths[i], "does not exist")
        critical = _num("disk.critical", disk.get("critical", 95.0), maximum=100)
        warning = _num("disk.warning", disk.get("warning", min(85.0, critical)), maximum=critical)
        self.thresholds = {"disk": {"warning": warning, "critical": critical}}
        clean = disk.get("clean", [])
        if not isinstance(clean, list):
            raise bad_value("disk.clean", type(clean).__name__, "must be a list of rules")
        self.clean = [CleanRule("disk.clean[%d]" % i, rule, base) for i, rule in enumerate(clean)]
        apps = raw.get("apps", [])
        if not isinstance(apps, list):
            raise bad_value("apps", type(apps).__name__, "must be a list")
        self.apps = [AppRule("apps[%d]" % i, app, self.period) for i, app in enumerate(apps)]
        names = [a.name for a in self.apps]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise bad_value("apps[%d].name" % i, name, "is listed twice")

    def summary(self):
        """What the state file shows of the config (no notifier URLs: they hold tokens)."""
        return {"path": self.path, "period": self.period, "metrics_period": self.metrics_period,
                "apps": [a.name for a in self.apps], "notifiers": [notifier_target(n) for n in self.notifiers],
                "disk_paths": self.disk_paths, "clean_roots": [r.root for r in self.clean]}


def load_config(path):
    """Read and validate a watchdog.json; DevboxOpsError names the bad field and value."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (IOError, OSError) as exc:
        raise bad_value("config", path, "cannot be read: %s" % (exc.strerror or exc))
    except ValueError as exc:
        raise bad_value("config", path, "is not valid JSON (%s)" % exc)
    return Config(data, path)


# ------------------------------------------------------------------------------------ disk cleanup

def clean_paths(rules):
    """Delete the regular files the rules select. Never follows a symlink (a linked directory is not
    entered, a linked file is not touched) and never leaves a rule's root. A file's age is taken as of
    now, when it is deleted.

    Returns ``{files, bytes, removed (first 20 paths), errors}``; ``bytes`` counts allocated blocks.
    """
    now = time.time()
    report = {"files": 0, "bytes": 0, "removed": [], "errors": []}
    for rule in rules:
        root = os.path.realpath(rule.root)
        if not os.path.isdir(root):
            continue
        for folder, _dirs, files in os.walk(root, followlinks=False):
            if os.path.realpath(folder) != folder:  # swapped for a link while walking
                continue
            for name in files:
                path = os.path.join(folder, name)
                if not rule.matches(os.path.relpath(path, root)):
                    continue
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < rule.older_than_s \
                        or (rule.larger_than and info.st_size <= rule.larger_than):
                    continue
                try:
                    os.unlink(path)
                except OSError as exc:
                    report["errors"].append("%s: %s" % (path, exc.strerror or exc))
                    continue
                report["files"] += 1
                report["bytes"] += info.st_blocks * 512
                if len(report["removed"]) < 20:
                    report["removed"].append(path)
    return report


# --------------------------------------------------------------------------------------- helpers

def _when(ts):
    return iso(datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)) if ts else None


def _first_line(text):
    """First line of an engine error: the rest can quote an app's own log, which is not ours to publish."""
    return str(text).strip().splitlines()[0][:300] if str(text).strip() else ""


def atomic_write_json(path, data, mode=0o640):
    """Replace ``path`` by rename, so a reader sees the old or the new file, never a part. No fsync: the
    state file is written again every tick."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        os.makedirs(folder, 0o750)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".%s." % os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True, default=str)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_procs(client, now, name=None):
    """``client.jlist(name)`` with ``started_at`` (wall time) on each online process, which stays true
    while the list is reused (``uptime_s`` does not)."""
    procs = client.jlist(name)
    for proc in procs:
        proc["started_at"] = now - (proc.get("uptime_s") or 0) if proc.get("status") == "online" else None
    return procs


class _Pm2View:
    """The PM2 process list, re-read (``pm2 jlist`` costs ~0.2 s of CPU) only when it can have changed:
    the daemon's log ``PM2_HOME/pm2.log`` grew (PM2 logs every start, exit and restart there) or a pid
    file in ``PM2_HOME/pids`` changed, an action was taken, or ``refresh_s`` passed."""

    def __init__(self, client, refresh_s):
        self.client = client
        self.refresh_s = refresh_s
        self.procs = []
        self.read_at = 0.0
        self.signature = None
        self.dirty = True
        self.daemon = None
        self.refreshes = 0

    def _signature(self):
        home = self.client.home()
        folder = os.path.join(home, "pids")
        try:
            log = os.stat(os.path.join(home, "pm2.log"))
            sig = [(log.st_size, log.st_mtime_ns, log.st_ino)]
        except OSError:
            sig = [None]
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return tuple(sig)
        for name in names:
            try:
                with open(os.path.join(folder, name)) as handle:
                    sig.append((name, handle.read(32)))
            except (IOError, OSError):
                continue
        return tuple(sig)

    def update(self, now):
        """True when the daemon runs (the list is then fresh enough); never starts a daemon."""
        self.daemon = self.client.daemon_pid()
        if self.daemon is None:
            return False
        sig = self._signature()
        if self.dirty or sig != self.signature or now - self.read_at >= self.refresh_s:
            self.procs = read_procs(self.client, now)
            self.read_at, self.signature, self.dirty = now, sig, False
            self.refreshes += 1
        return True

    def app(self, name):
        return [p for p in self.procs if p.get("name") == name]


# ----------------------------------------------------------------------------------- per-app state

class _App:
    """Breaker, restart window, liveness counters and autoscale counters of one app."""

    def __init__(self, rule):
        self.rule = rule
        self.breaker = "closed"
        self.opened_at = self.retry_at = None
        self.opens = 0
        self.restarts = collections.deque(maxlen=1000)  # wall times of observed process restarts
        self.seen_restarts = None
        self.half_open_restarts = None
        self.trial = None  # what started the half-open trial: "revive" (ours) or "operator"
        self.failures = 0
        self.last_probe = None
        self.last_ok = 0.0  # when the app last looked healthy (a passing probe, or up past grace)
        self.next_probe = 0.0
        self.grace_until = 0.0
        self.high = self.low = 0
        self.scale_after = 0.0
        self.actions = collections.deque(maxlen=KEEP_ACTIONS)
        self.procs = []
        self.usage = None
        self.session = None
        self.job = None
        self.held = False
        self.parked = False  # stopped by an operator action (see released)

    # -- persistence
    def dump(self, now):
        rule = self.rule
        procs = self.procs
        statuses = sorted(set(p.get("status") for p in procs))
        window = [t for t in list(self.restarts) if t >= now - rule.window_s]  # a job may be appending
        liveness = None
        if rule.liveness is not None:
            liveness = {"target": rule.liveness.target, "period": rule.liveness.period,
                        "failure_threshold": rule.liveness.failure_threshold, "consecutive_failures": self.failures}
            if self.last_probe:
                liveness.update(ok=self.last_probe["ok"], at=_when(self.last_probe["at"]),
                                latency_ms=self.last_probe["latency_ms"], error=self.last_probe["error"])
        return {
            "name": rule.name,
            "status": "/".join(statuses) if procs else "missing",
            "instances": len(procs),
            "pids": [p.get("pid") for p in procs if p.get("pid")],
            "restarts": sum(p.get("restarts") or 0 for p in procs),
            "uptime_s": int(now - max(p.get("started_at") or now for p in procs)) if procs else 0,
            "in_grace": now < self.grace_until,
            "held": self.held,
            "breaker": {"state": self.breaker, "opened_at": _when(self.opened_at), "retry_at": _when(self.retry_at),
                        "opens": self.opens},
            "restarts_in_window": len(window),
            "budget": {"max_restarts": rule.max_restarts, "window_s": rule.window_s, "cooldown_s": rule.cooldown_s},
            "liveness": liveness,
            "rss": self.usage["rss"] if self.usage else None,
            "cpu": self.usage["cpu"] if self.usage else None,
            "max_memory": rule.max_memory,
            "autoscale": dict(rule.autoscale, high_periods=self.high, low_periods=self.low) if rule.autoscale else None,
            "last_action": self.actions[-1] if self.actions else None,
            "actions": list(self.actions),
            "_restore": {"breaker": self.breaker, "opened_at": self.opened_at, "retry_at": self.retry_at,
                         "opens": self.opens, "restarts": window, "seen_restarts": self.seen_restarts,
                         "parked": self.parked},
        }

    def restore(self, saved):
        data = (saved or {}).get("_restore") or {}
        if data.get("breaker") in ("open", "half_open"):
            # A half-open trial was cut short: cool down again, then retry.
            self.breaker, self.opened_at, self.opens = "open", data.get("opened_at"), data.get("opens") or 1
            self.retry_at = data.get("retry_at") or time.time()
        self.restarts.extend(t for t in data.get("restarts") or [] if isinstance(t, (int, float)))
        self.parked = data.get("parked") is True
        if isinstance(data.get("seen_restarts"), int):
            self.seen_restarts = data["seen_restarts"]

    # -- observation
    def observe(self, procs, now):
        self.procs = procs
        total = sum(p.get("restarts") or 0 for p in procs)
        if procs and self.seen_restarts is not None and total > self.seen_restarts:
            self.restarts.extend([now] * min(total - self.seen_restarts, 100))
        self.seen_restarts = total if procs else self.seen_restarts
        started = max([p["started_at"] for p in procs if p.get("started_at")] or [0])
        self.grace_until = max(self.grace_until, started + self.rule.grace_s)
        while self.restarts and self.restarts[0] < now - self.rule.window_s:
            self.restarts.popleft()

    def hold(self, procs, now):
        """An operator action (deploy, manage, heal) is changing the app: watch, do not judge. Its
        restarts are not failures and do not count against the budget; a new grace starts after it."""
        self.procs = procs
        self.seen_restarts = sum(p.get("restarts") or 0 for p in procs) if procs else self.seen_restarts
        self.failures = 0
        self.next_probe = 0.0
        self.grace_until = max(self.grace_until, now + self.rule.grace_s)

    def released(self, wd, now):
        """The operator action that held the app has just ended, and takes over from the watchdog. An app
        it stopped is not ours to start: it stays stopped (a breaker closes) until something starts it again.
        An app it left online while the breaker was open or half-open is the half-open trial, judged as it
        runs: no restart of our own, and the action's restarts do not count as "restarted again"."""
        if self.statuses() == {"stopped"}:
            # PM2 keeps the exit code of the last crash on a stopped app: that is no crash of ours to revive
            self.parked = True
            if self.breaker != "closed":
                self.close(wd, now, "stopped by an operator action", "breaker closed: app stopped by an operator")
        elif self.breaker != "closed" and self.statuses() == {"online"}:
            self.breaker, self.trial, self.half_open_restarts = "half_open", "operator", self.seen_restarts
            LOG.info("app %s: an operator action started it while the breaker was open: judged as the half-open "
                     "trial", self.rule.name)

    def statuses(self):
        return set(p.get("status") for p in self.procs)

    def crashed(self):
        """Errored (PM2 gave up) or stopped by a crash (non-zero exit with autorestart off)."""
        for proc in self.procs:
            if proc.get("status") == "errored" or (proc.get("status") == "stopped"
                                                   and proc.get("exit_code") not in (0, None)):
                return "status %s (exit code %s)" % (proc.get("status"), proc.get("exit_code"))
        return None

    def failing(self):
        """Not serving: a process is not online, the probe reached its threshold, or the app restarted
        and has not been healthy since (a crash loop can look online between two crashes)."""
        threshold = self.rule.liveness.failure_threshold if self.rule.liveness else 1
        return self.statuses() != {"online"} or (self.rule.liveness is not None and self.failures >= threshold) \
            or bool(self.restarts and self.restarts[-1] > self.last_ok)

    def probe(self, wd, now):
        spec = self.rule.liveness
        if spec is None or self.statuses() != {"online"} or now < self.next_probe:
            return
        self.next_probe = now + spec.period - min(0.1 * wd.cfg.period, 0.5)
        if spec.type == "http" and self.session is None:
            import requests  # pylint: disable=import-outside-toplevel
            self.session = requests.Session()
        result = run_probe(spec, wd.runner, session=self.session)
        self.last_probe = {"ok": result.ok, "at": now, "latency_ms": result.latency_ms, "error": result.error}
        if result.ok:
            self.last_ok = now
        if result.ok or now < self.grace_until:
            self.failures = 0
        else:
            self.failures += 1
            LOG.warning("app %s: liveness failed (%d/%d): %s", self.rule.name, self.failures,
                        spec.failure_threshold, result.error)

    # -- one step (runs in a worker thread)
    def step(self, wd, usage, now):
        rule = self.rule
        self.usage = usage if usage is not None else self.usage
        if not self.procs:
            return
        if self.parked:
            if self.statuses() == {"stopped"}:
                return  # stopped by an operator action: left as it is
            self.parked = False
        if self.breaker == "open":
            if now >= self.retry_at:
                self.half_open(wd, now)
            return
        self.probe(wd, now)
        if rule.liveness is None and self.statuses() == {"online"} and now >= self.grace_until:
            self.last_ok = now
        if self.breaker == "half_open":
            self.judge(wd, now)
            return
        crash = self.crashed()
        if crash:
            return self.open(wd, now, "%s; revived after the %gs cooldown" % (crash, rule.cooldown_s))
        if self.statuses() == {"stopped"}:
            return  # stopped on purpose (pm2 stop): not ours to start
        window = len(self.restarts)
        reason = None
        if self.failures >= (rule.liveness.failure_threshold if rule.liveness else 1) and now >= self.grace_until:
            reason = "liveness: %s" % (self.last_probe or {}).get("error")
        elif rule.max_memory and usage and usage["rss"] > rule.max_memory:
            reason = "memory: rss %d > max_memory %d" % (usage["rss"], rule.max_memory)
        if (reason or self.failing()) and window >= rule.max_restarts:
            return self.open(wd, now, "%d restarts within %gs (max_restarts=%d)%s"
                             % (window, rule.window_s, rule.max_restarts, "; then %s" % reason if reason else ""))
        if reason:
            return self.restart(wd, now, reason)
        if rule.autoscale and usage:
            self.autoscale(wd, usage, now)

    # -- actions
    def _pm2_action(self, wd, action):
        """``pm2 restart`` or ``pm2 stop`` of every process of the app, then wait until it holds (the
        engine's apply). The plan is made here: a hung app needs no second ``pm2 jlist`` first."""
        spec = AppSpec.from_params({"name": self.rule.name})
        state = "restarted" if action == "restart" else "stopped"
        try:
            wd.need_daemon()
            wd.pm2.apply(Plan(spec, state, action), timeout=wd.cfg.action_timeout_s, hold=False)
            return "ok", None
        except DevboxOpsError as exc:
            return "failed", _first_line(exc)
        finally:
            wd.view.dirty = True

    def _done(self, wd, action, result, now, reason, error=None, **extra):
        """Remember and record an action decided at ``now`` (the event's time) that ends now."""
        entry = {"action": action, "result": result, "at": _when(now), "reason": reason,
                 "duration_s": round(time.time() - now, 3)}
        if error:
            entry["error"] = error
        entry.update(extra)
        self.actions.append(entry)
        log = LOG.info if result == "ok" else LOG.error
        log("app %s: %s %s (%s)%s", self.rule.name, action, result, reason, ": %s" % error if error else "")
        wd.record(action, self.rule.name, result, ts=now, reason=reason, error=error,
                  duration_s=entry["duration_s"], **extra)

    def _refresh(self, wd, now):
        wd.need_daemon()
        self.observe(read_procs(wd.pm2, now, self.rule.name), now)

    def _fresh_start(self):
        self.failures = 0
        self.next_probe = 0.0
        self.usage = None  # measured again at the next metrics period
        self.grace_until = time.time() + self.rule.grace_s

    def restart(self, wd, now, reason):
        result, error = self._pm2_action(wd, "restart")
        self._fresh_start()
        self._done(wd, "restart", result, now, reason, error)
        self._refresh(wd, time.time())

    def open(self, wd, now, reason):
        stopped, error = "ok", None
        if self.statuses() - {"stopped", "errored"}:
            stopped, error = self._pm2_action(wd, "stop")  # stop PM2's own restart loop too
        # the cooldown starts once the app is stopped
        self.breaker, self.opened_at, self.retry_at = "open", now, time.time() + self.rule.cooldown_s
        self.opens += 1
        self._done(wd, "breaker_open", stopped, now, reason, error, retry_at=_when(self.retry_at))
        wd.alert("app:%s" % self.rule.name, "breaker_open", "breaker open: %s; app stopped, retry at %s"
                 % (reason, _when(self.retry_at)), target=self.rule.name)

    def half_open(self, wd, now):
        self.breaker, self.trial = "half_open", "revive"
        result, error = self._pm2_action(wd, "restart")
        self._fresh_start()
        self._done(wd, "revive", result, now, "breaker half-open after %gs cooldown" % self.rule.cooldown_s, error)
        self._refresh(wd, time.time())
        self.half_open_restarts = self.seen_restarts
        if result != "ok":
            self.open(wd, time.time(), "half-open trial failed: %s" % error)

    def judge(self, wd, now):
        """Half-open: back to closed once the app is up past its grace and passes a probe."""
        rule = self.rule
        crash = self.crashed()
        again = self.seen_restarts is not None and self.half_open_restarts is not None \
            and self.seen_restarts > self.half_open_restarts
        failed = rule.liveness is not None and self.failures >= rule.liveness.failure_threshold
        if crash or again or failed:
            why = crash or ("it restarted again" if again else "liveness: %s" % (self.last_probe or {}).get("error"))
            return self.open(wd, now, "half-open trial failed: %s" % why)
        if now < self.grace_until or self.statuses() != {"online"}:
            return
        if rule.liveness is not None and not (self.last_probe and self.last_probe["ok"]
                                              and self.last_probe["at"] >= self.grace_until):
            return
        started_by = "operator's restart" if self.trial == "operator" else "half-open restart"
        self.close(wd, now, "healthy after the %s" % started_by, "recovered: breaker closed, app healthy")

    def close(self, wd, now, reason, message):
        self.breaker, self.opened_at, self.retry_at, self.trial = "closed", None, None, None
        self.restarts.clear()
        self._done(wd, "breaker_close", "ok", now, reason)
        wd.alert("app:%s" % self.rule.name, "ok", message, target=self.rule.name)

    def autoscale(self, wd, usage, now):
        rule = self.rule.autoscale
        count = len(self.procs)
        if self.statuses() != {"online"} or now < self.grace_until:
            self.high = self.low = 0
            return
        avg = usage["cpu"] / float(max(1, count))
        self.high = self.high + 1 if avg > rule["up_cpu"] else 0
        self.low = self.low + 1 if avg < rule["down_cpu"] else 0
        target = None
        if self.high >= rule["periods"] and count < rule["max"]:
            target = count + 1
        elif self.low >= rule["periods"] and count > rule["min"]:
            target = count - 1
        if target is None or now < self.scale_after:
            return
        reason = "average CPU %.1f%% per instance %s %g%% for %d periods" % (
            avg, ">" if target > count else "<", rule["up_cpu"] if target > count else rule["down_cpu"], rule["periods"])
        try:
            wd.need_daemon()
            wd.pm2.scale(self.rule.name, target)
            result, error = "ok", None
        except DevboxOpsError as exc:
            result, error = "failed", _first_line(exc)
        wd.view.dirty = True
        self.high = self.low = 0
        self.scale_after = now + rule["cooldown_s"]
        self._done(wd, "scale", result, now, reason, error, instances_from=count, instances_to=target)
        self._refresh(wd, time.time())


# ------------------------------------------------------------------------------------------ engine

class Watchdog:
    """The loop: :meth:`tick` once per ``period``; :meth:`run` until :meth:`stop`."""

    def __init__(self, config_path, config=None, runner=None):
        self.config_path = os.path.abspath(os.path.expanduser(config_path))
        self.runner = runner or SubprocessRunner()
        self.cfg = None
        self.config_error = None
        self.config_stamp = None
        self.apps = {}
        self.pool = None
        self.notify_pool = ThreadPoolExecutor(max_workers=1)
        self.lock = threading.Lock()
        self.alerts = AlertState(good_states=("ok",))
        self.errors = collections.deque(maxlen=KEEP_ERRORS)
        self.metrics = None
        self.metrics_at = 0.0
        self.disk = {"last_cleanup": None, "job": None, "last_retention": None, "retention_job": None}
        self.retention_at = {}  # (root, patterns) -> when the rule last ran on its schedule
        self.pm2_note = None
        self.resurrect_after = 0.0
        self.handover = False
        self.started_at = time.time()
        self.ticks = 0
        self.alerts_sent = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reload = False
        self._apply(config or load_config(self.config_path), initial=True)
        self._restore()

    # -- config
    def _stamp(self):
        try:
            info = os.stat(self.config_path)
            return (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            return None

    def _apply(self, cfg, initial=False):
        try:
            client = PM2Client(self.runner, executable=cfg.pm2_executable, pm2_home=cfg.pm2_home,
                               command_timeout=cfg.action_timeout_s)
        except DevboxOpsError as exc:
            raise _prefixed("pm2", exc)
        old = self.cfg
        self.cfg, self.config_error, self.config_stamp = cfg, None, self._stamp()
        self.pm2 = client
        self.view = _Pm2View(client, cfg.pm2_refresh_s)
        self.events = EventLog(cfg.event_log)
        self.actor = {"user": "watchdog@%s" % cfg.host}
        if old is None or old.concurrency != cfg.concurrency:
            if self.pool is not None:
                self.pool.shutdown(wait=False)
            self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency)
        apps = {}
        for rule in cfg.apps:
            app = self.apps.get(rule.name) or _App(rule)
            app.rule = rule
            apps[rule.name] = app
        self.apps = apps
        if not initial:
            LOG.info("config %s reloaded: period %gs, %d apps", cfg.path, cfg.period, len(cfg.apps))
            self.record("config", "watchdog", "reloaded", period=cfg.period, apps=[a.name for a in cfg.apps])

    def _maybe_reload(self):
        stamp = self._stamp()
        if not self._reload and stamp == self.config_stamp:
            return
        self._reload = False
        try:
            self._apply(load_config(self.config_path))
        except DevboxOpsError as exc:
            self.config_stamp = stamp  # report a bad file once, until it changes again
            self.config_error = {"error": str(exc), "at": _when(time.time())}
            LOG.error("config %s rejected, keeping the last good one: %s", self.config_path, exc)
            self.record("config", "watchdog", "rejected", error=str(exc))

    def request_reload(self):
        """Reload the config at the next tick (SIGHUP)."""
        self._reload = True
        self._wake.set()

    def stop(self):
        self._stop.set()
        self._wake.set()

    # -- records and alerts
    def record(self, type, target, result, **fields):  # pylint: disable=redefined-builtin
        fields = dict((k, v) for k, v in fields.items() if v is not None)
        try:
            return self.events.record(type, target, result, actor=self.actor, host=self.cfg.host, **fields)
        except DevboxOpsError as exc:
            LOG.error("cannot record %s event: %s", type, exc)
            return None

    def alert(self, key, state, message, target=None, now=None, settle=None):
        """Record and send an alert when AlertState says so (a change of state, or a reminder).

        ``settle`` is the state to remember after sending (a one-off such as "resurrected" -> "ok")."""
        now = time.time() if now is None else now
        with self.lock:
            if not self.alerts.should_send(key, state, now, self.cfg.remind_after_s):
                return None
            if settle is not None:
                self.alerts.keys[key]["state"] = settle
        try:
            event = make_event("alert", target or key, state, actor=self.actor, host=self.cfg.host, scope=key,
                               message=message)
        except DevboxOpsError as exc:
            LOG.error("cannot build alert %s: %s", key, exc)
            return None
        LOG.warning("ALERT %s %s: %s", key, state, message)
        try:
            self.events.append(event)
        except DevboxOpsError as exc:
            LOG.error("cannot record alert: %s", exc)
        if self.cfg.notifiers:
            self.notify_pool.submit(self._send, list(self.cfg.notifiers), event)
        return event

    def _send(self, notifiers, event):
        try:
            for result in notify_all(notifiers, event):
                if result["ok"]:
                    self.alerts_sent += 1
                else:
                    LOG.error("alert not delivered: %s", result["error"])
        except Exception as exc:  # pylint: disable=broad-except
            LOG.error("alert not delivered: %s", exc)

    # -- PM2 daemon
    def need_daemon(self):
        """Raise unless the PM2 daemon runs: any ``pm2`` command would start an empty one."""
        if self.pm2.daemon_pid() is None:
            raise DevboxOpsError("the PM2 daemon of %s is not running" % self.pm2.home(), param="pm2.home")

    def _pm2_up(self, now):
        if self.view.update(now):
            self.pm2_note = None
            self.alert("pm2", "ok", "PM2 daemon is running", now=now)
            return True
        dump = os.path.join(self.pm2.home(), "dump.pm2")
        if not self.cfg.resurrect or not os.path.isfile(dump):
            self.pm2_note = "PM2 daemon is not running and %s" % (
                "resurrect is off" if not self.cfg.resurrect else "there is no dump to resurrect (%s)" % dump)
            self.alert("pm2", "down", self.pm2_note, now=now)
            return False
        if now < self.resurrect_after:
            return False
        orphans = self._kill_orphans()
        try:
            self.pm2.resurrect()
            result, error = "ok", None
        except DevboxOpsError as exc:
            result, error = "failed", _first_line(exc)
            self.resurrect_after = now + max(30.0, self.cfg.period)
        self.view.dirty = True
        self.pm2_note = "PM2 daemon was gone: resurrect %s" % result
        LOG.warning("PM2 daemon was gone; pm2 resurrect: %s%s", result, " (%s)" % error if error else "")
        self.record("resurrect", "pm2", result, error=error, orphans_stopped=orphans)
        self.alert("pm2", "resurrected" if result == "ok" else "down", self.pm2_note, now=now,
                   settle="ok" if result == "ok" else None)
        if result == "ok" and self._replaced():
            self.handover = True
            self.stop()
        return result == "ok" and self.view.update(time.time())

    def _kill_orphans(self):
        """Processes PM2 started that outlived its daemon (PM2's Node apps exit with it, others do not)
        would hold their ports against the resurrected apps: stop the ones we last saw."""
        import psutil  # pylint: disable=import-outside-toplevel
        found = []
        for proc in self.view.procs:
            pid = proc.get("pid")
            if not pid or pid == os.getpid():
                continue
            try:
                process = psutil.Process(pid)
                if not proc.get("started_at") or abs(process.create_time() - proc["started_at"]) > 5:
                    continue  # the pid was reused: not the process PM2 listed
                process.terminate()
                found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        _gone, alive = psutil.wait_procs(found, timeout=5)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        return [p.pid for p in found]

    def _replaced(self):
        """True when this watchdog runs under PM2 and the resurrected list started a new copy of it."""
        name = os.environ.get("name")
        if os.environ.get("pm_id") is None or not name:
            return False
        try:
            return any(p.get("name") == name and p.get("pid") != os.getpid() for p in self.pm2.jlist())
        except DevboxOpsError:
            return False

    # -- the loop
    def tick(self):
        now = time.time()
        self._maybe_reload()
        cfg = self.cfg
        up = self._pm2_up(now)
        usage = None
        if now - self.metrics_at >= cfg.metrics_period - min(0.1 * cfg.period, 0.5):
            self.metrics_at = now
            usage = self._collect(up)
        for app in self.apps.values():
            if not up or (app.job is not None and not app.job.done()):
                continue
            held = self.pm2.held(app.rule.name, now)
            if held or app.held:
                # held, or the hold has just ended: what the action did is the new baseline. The list is
                # fresh after the action: its restarts changed the view's signature (PM2's log, pid files).
                app.hold(self.view.app(app.rule.name), now)
                app.held = held
                if held:
                    continue
                app.released(self, now)
            app.observe(self.view.app(app.rule.name), now)
            if not app.procs:
                self.alert("app:%s" % app.rule.name, "missing", "app is not in the PM2 process list",
                           target=app.rule.name, now=now)
                continue
            if app.breaker == "closed" and self.alerts.keys.get("app:%s" % app.rule.name, {}).get("state") == "missing":
                self.alert("app:%s" % app.rule.name, "ok", "app is back in the PM2 process list", now=now)
            app.job = self.pool.submit(self._guard, app.step, self, (usage or {}).get(app.rule.name), now)
        if usage is not None:
            self._disk(now)
        self._retention(now)
        self.ticks += 1
        self.write_state()

    def _guard(self, func, *args):
        try:
            func(*args)
        except Exception as exc:  # pylint: disable=broad-except
            self._error(exc)

    def _error(self, exc):
        if isinstance(exc, (DevboxOpsError, EnvironmentError)):
            LOG.error("watchdog error (the loop goes on): %s", exc)
        else:
            LOG.exception("watchdog error (the loop goes on): %s", exc)
        self.errors.append({"at": _when(time.time()), "error": "%s: %s" % (type(exc).__name__, _first_line(exc))})

    def _collect(self, up):
        try:
            data = collect(pm2_processes=self.view.procs if up else None, disk_paths=self.cfg.disk_paths, top=3,
                           interval=0.2)
        except DevboxOpsError as exc:
            self._error(exc)
            return None
        levels = evaluate(data, self.cfg.thresholds)
        self.metrics = {"at": _when(data["time"]), "level": levels["level"], "levels": levels["levels"],
                        "warnings": levels["warnings"], "cpu": data["cpu"], "memory": data["memory"],
                        "load": data["load"], "disk": data["disk"],
                        "disk_levels": dict((c["target"], c["level"]) for c in levels["checks"] if c["metric"] == "disk")}
        return dict((row["name"], row) for row in data["pm2"] or [])

    def _disk(self, now):
        job = self.disk["job"]
        if job is not None and not job.done():
            return
        levels = self.metrics["disk_levels"] if self.metrics else {}
        critical = sorted(mount for mount, level in levels.items() if level == "critical")
        for mount in sorted(set(levels) - set(critical)):
            self.alert("disk:%s" % mount, "ok", "disk %s is below critical again" % mount, target=mount, now=now)
        if critical:
            self.disk["job"] = self.pool.submit(self._guard, self._cleanup, critical, now)

    def _cleanup(self, mounts, now):
        import psutil  # pylint: disable=import-outside-toplevel
        before = dict((m, psutil.disk_usage(m).free) for m in mounts)
        report = clean_paths(self.cfg.clean)
        after = dict((m, psutil.disk_usage(m)) for m in mounts)
        report.update(at=_when(now), mounts=mounts,
                      freed=dict((m, max(0, after[m].free - before[m])) for m in mounts),
                      percent_after=dict((m, after[m].percent) for m in mounts))
        self.disk["last_cleanup"] = report
        if report["files"] or report["errors"]:
            self.record("cleanup", ",".join(mounts), "ok" if not report["errors"] else "partial",
                        files=report["files"], bytes=report["bytes"], freed=report["freed"],
                        errors=report["errors"][:5] or None)
        for mount in mounts:
            self.alert("disk:%s" % mount, "critical", "disk %s reached critical (>= %g%%): cleaned %d files "
                       "(%d bytes) from %s; now %.1f%% used" % (
                           mount, self.cfg.thresholds["disk"]["critical"], report["files"], report["bytes"],
                           ", ".join(r.root for r in self.cfg.clean) or "no configured path",
                           after[mount].percent), target=mount, now=now)

    def _retention(self, now):
        """Rules with ``every_s`` also run on their schedule, whatever the disk level (first at start)."""
        job = self.disk["retention_job"]
        if job is not None and not job.done():
            return
        due = [r for r in self.cfg.clean if r.every_s
               and now - self.retention_at.get((r.root, tuple(r.patterns)), 0.0) >= r.every_s]
        if due:
            for rule in due:
                self.retention_at[(rule.root, tuple(rule.patterns))] = now
            self.disk["retention_job"] = self.pool.submit(self._guard, self._retain, due, now)

    def _retain(self, rules, now):
        report = clean_paths(rules)
        report.update(at=_when(now), roots=[r.root for r in rules])
        self.disk["last_retention"] = report
        if report["files"] or report["errors"]:
            self.record("cleanup", ",".join(r.root for r in rules), "ok" if not report["errors"] else "partial",
                        reason="retention", files=report["files"], bytes=report["bytes"],
                        errors=report["errors"][:5] or None)

    def run(self, once=False):
        """Tick every ``period`` until :meth:`stop`; an exception in a tick is logged and the loop goes on."""
        LOG.info("watchdog started: %s, period %gs, %d apps", self.config_path, self.cfg.period, len(self.apps))
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception as exc:  # pylint: disable=broad-except
                self._error(exc)
            if once:
                self.drain()
                break
            self._wake.wait(max(0.0, self.cfg.period - (time.monotonic() - started)))
            self._wake.clear()
        self.write_state()
        LOG.info("watchdog stopped%s", " (handing over to the copy PM2 resurrected)" if self.handover else "")

    def drain(self, timeout=None):
        """Wait for running app and disk jobs, then write the state file (used by --once and tests)."""
        for future in [a.job for a in self.apps.values()] + [self.disk["job"], self.disk["retention_job"]]:
            if future is not None:
                future.result(timeout)
        self.write_state()

    def close(self):
        """Wait for running actions and alert deliveries, then release the threads."""
        self.pool.shutdown(wait=True)
        self.notify_pool.shutdown(wait=True)

    # -- state file
    def state(self):
        now = time.time()
        return {
            "version": STATE_VERSION, "host": self.cfg.host, "pid": os.getpid(), "tick": self.ticks,
            "started_at": _when(self.started_at), "updated_at": _when(now), "period": self.cfg.period,
            "config": dict(self.cfg.summary(), error=self.config_error),
            "pm2": {"home": self.pm2.home(), "daemon_pid": self.view.daemon, "note": self.pm2_note,
                    "list_read_at": _when(self.view.read_at), "list_reads": self.view.refreshes},
            "apps": dict((name, app.dump(now)) for name, app in self.apps.items()),
            "metrics": self.metrics,
            "disk": {"last_cleanup": self.disk["last_cleanup"], "last_retention": self.disk["last_retention"]},
            "alerts": self.alerts.to_dict(), "alerts_delivered": self.alerts_sent,
            "errors": list(self.errors),
        }

    def write_state(self):
        try:
            atomic_write_json(self.cfg.state_file, self.state())
        except (IOError, OSError) as exc:
            self._error(exc)

    def _restore(self):
        try:
            with open(self.cfg.state_file) as handle:
                saved = json.load(handle)
        except (IOError, OSError, ValueError):
            return
        if not isinstance(saved, dict) or saved.get("version") != STATE_VERSION:
            return
        for name, app in self.apps.items():
            app.restore((saved.get("apps") or {}).get(name))
        if isinstance(saved.get("alerts"), dict):
            self.alerts = AlertState(good_states=("ok",), data=saved["alerts"])


# -------------------------------------------------------------------------------------------- main

def _lock(path, stopping):
    """Hold an exclusive lock next to the state file: one watchdog per state file. Waits for it."""
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        os.makedirs(folder, 0o750)
    handle = open(path + ".lock", "a+")
    said = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            handle.seek(0)
            handle.truncate()
            handle.write("%d\n" % os.getpid())
            handle.flush()
            return handle
        except (IOError, OSError) as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if not said:
            LOG.warning("another watchdog holds %s.lock; waiting for it to exit", path)
            said = True
        if stopping.wait(0.5):
            return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="devbox-ops-watchdog", description="devbox.ops on-host watchdog")
    parser.add_argument("--config", default=os.environ.get("DEVBOX_OPS_WATCHDOG_CONFIG", DEFAULT_CONFIG))
    parser.add_argument("--check", action="store_true", help="validate the config and exit (0 ok, 2 bad)")
    parser.add_argument("--once", action="store_true", help="run one tick, wait for its actions, exit")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s devbox-ops-watchdog: %(message)s")
    path = os.path.abspath(os.path.expanduser(args.config))
    try:
        cfg = load_config(path)
    except DevboxOpsError as exc:
        sys.stderr.write("devbox-ops-watchdog: bad config: %s\n" % exc)
        return 2
    if args.check:
        sys.stdout.write("devbox-ops-watchdog: config %s ok (%d apps)\n" % (path, len(cfg.apps)))
        return 0
    try:
        watchdog = Watchdog(path, config=cfg)
    except DevboxOpsError as exc:
        sys.stderr.write("devbox-ops-watchdog: %s\n" % exc)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: watchdog.stop())
    signal.signal(signal.SIGINT, lambda *_: watchdog.stop())
    signal.signal(signal.SIGHUP, lambda *_: watchdog.request_reload())
    lock = _lock(cfg.state_file, watchdog._stop)  # pylint: disable=protected-access
    if lock is None:
        return 0
    try:
        watchdog.run(once=args.once)
    finally:
        watchdog.close()
        lock.close()
    return 0
