# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""PM2 engine: validated app specs, a ``pm2 jlist`` reader, and plan/apply for one app.

Plain Python (no ``ansible`` import) so modules, the watchdog and tests share it. Every command is an
argv list given to a runner (see runner.py); app settings reach PM2 only inside a private JSON
ecosystem file, so no name or value is ever read by a shell.

Drift detection: at apply time the app's env gets ``DEVBOX_OPS_SPEC``, the JSON of the normalized
spec in which every env value is replaced by a salted sha256. A later plan compares the desired spec
with that record, so drift names fields (``env.API_KEY``, ``max_memory_restart``) without ever holding
the old values. Env values never leave this module: everything it returns goes through
:func:`redact_env`, and error text is scrubbed of the spec's env values.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import tempfile
import time

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value

MASK = "********"
SPEC_KEY = "DEVBOX_OPS_SPEC"
SPEC_VERSION = 1
STATES = ("started", "stopped", "restarted", "reloaded", "absent")
ACTIONS = ("start", "recreate", "reload", "restart", "scale", "stop", "delete", "none")
HOLD_DIR = "devbox-ops-holds"  # under PM2_HOME: apps an operator action is changing (see PM2Client.hold)
PM2_DEFAULT_MIN_UPTIME_MS = 1000

# field -> (kind, default); _normalize() checks each kind.
FIELDS = (
    ("script", "str", None),
    ("args", "argv", None),
    ("cwd", "str", None),
    ("interpreter", "str", None),
    ("interpreter_args", "argv", None),
    ("env", "env", None),
    ("instances", "count", 1),
    ("exec_mode", "exec_mode", "fork"),
    ("autorestart", "bool", True),
    ("max_memory_restart", "memory", None),
    ("min_uptime", "duration", None),
    ("max_restarts", "int0", None),
    ("restart_delay", "duration", None),
    ("exp_backoff_restart_delay", "duration", None),
    ("kill_timeout", "duration", None),
    ("listen_timeout", "duration", None),
    ("wait_ready", "bool", False),
    ("cron_restart", "cron", None),
    ("out_file", "str", None),
    ("error_file", "str", None),
    ("merge_logs", "bool", False),
    ("log_date_format", "str", None),
)
FIELD_NAMES = tuple(f[0] for f in FIELDS)

# Names PM2's CLI would not read as a plain app name: JS numbers are taken as ids, these
# substrings as config files (Common.isConfigFile), a leading '-' as an option.
_JS_NUMBER = re.compile(
    r"[+-]?(Infinity|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)|0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+"
)
_CONFIG_EXTENSIONS = (".json", ".yml", ".yaml", ".config.js", ".config.cjs", ".config.mjs")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h)?\s*$")
_MEMORY = re.compile(r"^\s*(\d+)\s*([KMG]?)B?\s*$", re.IGNORECASE)
_UNITS_MS = {None: 1, "ms": 1, "s": 1000, "m": 60000, "h": 3600000}
_UNITS_BYTES = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
# Ecosystem-file spellings PM2 also accepts.
_ALIASES = {"node_args": "interpreter_args", "exec_interpreter": "interpreter", "output": "out_file",
            "error": "error_file", "err_file": "error_file"}


# ----------------------------------------------------------------------------------------- redaction

def redact_env(obj):
    """Return a copy of ``obj`` (PM2 data) with every env value replaced by ``MASK``.

    An ``env`` dict keeps its keys. PM2 also copies env keys to the top level of ``pm2_env``, so
    in a dict that has an ``env`` dict, the top-level keys named in it are masked too.
    """
    if isinstance(obj, dict):
        env = obj.get("env")
        env_keys = set(env) if isinstance(env, dict) else set()
        out = {}
        for key, value in obj.items():
            if key == "env" and isinstance(value, dict):
                out[key] = dict((k, MASK) for k in value)
            elif key in env_keys or key == SPEC_KEY:
                out[key] = MASK
            else:
                out[key] = redact_env(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact_env(item) for item in obj]
    return obj


def redact_text(text, secrets):
    """Replace each secret (of 4 characters or more) in ``text`` with ``MASK``."""
    text = text or ""
    for secret in sorted(set(s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _hash_env(name, key, value):
    return hashlib.sha256(("%s\0%s\0%s" % (name, key, value)).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------ normalizers

def _check_name(name):
    if not isinstance(name, str) or not name:
        raise bad_value("name", name, "must be a non-empty string")
    why = None
    if name.strip() != name:
        why = "must not start or end with whitespace"
    elif _CONTROL.search(name):
        why = "must not contain newlines or control characters"
    elif "/" in name:
        why = "must not contain '/'"
    elif name == "all":
        why = "'all' means every process to PM2"
    elif name.startswith("-"):
        why = "must not start with '-' (PM2 would read it as an option)"
    elif _JS_NUMBER.fullmatch(name):
        why = "PM2 reads numeric names as process ids"
    elif any(ext in name for ext in _CONFIG_EXTENSIONS):
        why = "PM2 reads names containing %s as config files" % "/".join(_CONFIG_EXTENSIONS)
    if why:
        raise bad_value("name", name, why)
    return name


def _text(field, value):
    if not isinstance(value, str) or not value:
        raise bad_value(field, value, "must be a non-empty string")
    if _CONTROL.search(value):
        raise bad_value(field, value, "must not contain newlines or control characters")
    return value


def _argv(field, value):
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise bad_value(field, value, "cannot be split like a shell word list (%s)" % exc)
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
        raise bad_value(field, value, "must be a list of strings or a string")
    if any("\0" in a for a in value):
        raise bad_value(field, value, "must not contain NUL characters")
    return list(value)


def _env(value):
    if not isinstance(value, dict):
        # Never echo env values: name the type only.
        raise DevboxOpsError("env: must be a dict of names to strings, got a %s" % type(value).__name__,
                             param="env")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not key or "=" in key or _CONTROL.search(key):
            raise bad_value("env", key, "env names must be non-empty strings without '=' or control characters")
        if key == SPEC_KEY:
            raise bad_value("env", key, "is reserved by devbox.ops for drift detection")
        if isinstance(val, bool):
            val = "true" if val else "false"
        elif isinstance(val, (int, float)):
            val = str(val)
        elif not isinstance(val, str):
            raise DevboxOpsError("env.%s: value must be a string, number or boolean, got a %s (value hidden)"
                                 % (key, type(val).__name__), param="env.%s" % key)
        if "\0" in val:
            raise DevboxOpsError("env.%s: value must not contain NUL (value hidden)" % key, param="env.%s" % key)
        out[key] = val
    return out


def _int(field, value, minimum):
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad_value(field, value, "must be an integer >= %d" % minimum)
    return value


def _bool(field, value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise bad_value(field, value, "must be a boolean")


def _duration_ms(field, value):
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise bad_value(field, value, "must be milliseconds (int) or a duration like '500ms', '5s', '1m', '1h'")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def _memory_bytes(value):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _MEMORY.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) == 0:
        raise bad_value("max_memory_restart", value, "must be bytes (int > 0) or a size like '512K', '200M', '1G'")
    return int(match.group(1)) * _UNITS_BYTES[match.group(2).upper()]


def _cron(value):
    _text("cron_restart", value)
    if len(value.split()) not in (5, 6):
        raise bad_value("cron_restart", value, "must be a cron expression of 5 or 6 fields")
    return value


def _normalize(field, kind, value):
    if kind == "str":
        return _text(field, value)
    if kind == "argv":
        return _argv(field, value)
    if kind == "env":
        return _env(value)
    if kind == "count":
        return _int(field, value, 1)
    if kind == "int0":
        return _int(field, value, 0)
    if kind == "bool":
        return _bool(field, value)
    if kind == "duration":
        return _duration_ms(field, value)
    if kind == "memory":
        return _memory_bytes(value)
    if kind == "cron":
        return _cron(value)
    if kind == "exec_mode":
        if value not in ("fork", "cluster"):
            raise bad_value("exec_mode", value, "must be one of fork, cluster")
        return value
    raise AssertionError(kind)


# ----------------------------------------------------------------------------------------- AppSpec

class AppSpec:
    """Validated desired state of one PM2 app. ``repr`` and :meth:`public` never show env values.

    ``given`` holds the fields set explicitly. A spec without ``script`` is *partial*: it can
    control an existing app (state, ``instances``) but cannot create or reconfigure one.
    """

    def __init__(self, name, values, given):
        self.name = name
        self.given = frozenset(given)
        for field in FIELD_NAMES:
            setattr(self, field, values[field])

    @classmethod
    def from_params(cls, params):
        params = dict((k, v) for k, v in (params or {}).items() if v is not None)
        unknown = sorted(set(params) - set(FIELD_NAMES) - {"name"})
        if unknown:
            raise bad_value(unknown[0], params[unknown[0]], "is not a PM2 app option this collection supports")
        name = _check_name(params.get("name"))
        values = {}
        for field, kind, default in FIELDS:
            values[field] = _normalize(field, kind, params[field]) if field in params else default
        interpreter = values["interpreter"]
        if values["exec_mode"] == "cluster" and interpreter not in (None, "node") \
                and os.path.basename(interpreter) != "node":
            raise bad_value("exec_mode", "cluster", "cluster mode runs Node.js only (interpreter=%s)" % interpreter)
        script = values["script"]
        if script and not os.path.isabs(script) and not values["cwd"]:
            raise bad_value("script", script, "a relative script needs cwd")
        if values["cwd"] and not os.path.isabs(values["cwd"]):
            raise bad_value("cwd", values["cwd"], "must be an absolute path")
        return cls(name, values, set(params) - {"name"})

    @property
    def partial(self):
        return self.script is None

    def to_params(self):
        """The explicitly given fields with real values (for merging), name included."""
        params = dict((f, getattr(self, f)) for f in self.given)
        params["name"] = self.name
        return params

    def secrets(self):
        return list((self.env or {}).values())

    def public(self):
        """Non-secret view: every set field, env as ``{key: MASK}``."""
        out = {"name": self.name}
        for field in FIELD_NAMES:
            value = getattr(self, field)
            if value is not None:
                out[field] = dict((k, MASK) for k in value) if field == "env" else value
        return out

    def fingerprint(self):
        """What DEVBOX_OPS_SPEC records: every field but name/instances, env values hashed."""
        record = {"v": SPEC_VERSION}
        for field in FIELD_NAMES:
            if field == "instances":
                continue
            value = getattr(self, field)
            if field == "env":
                value = dict((k, _hash_env(self.name, k, v)) for k, v in (value or {}).items())
            record[field] = value
        return record

    def ecosystem_app(self):
        """The app entry for a PM2 ecosystem file (holds real env values: keep it private)."""
        app = {"name": self.name}
        for field in FIELD_NAMES:
            value = getattr(self, field)
            if value is not None and field != "env":
                app[field] = value
        if not self.cwd and self.script and os.path.isabs(self.script):
            app["cwd"] = os.path.dirname(self.script)
        env = dict(self.env or {})
        env[SPEC_KEY] = json.dumps(self.fingerprint(), sort_keys=True, separators=(",", ":"))
        app["env"] = env
        return app

    def __repr__(self):
        return "AppSpec(%r)" % (self.public(),)


def spec_drift(stored, desired, fields=None):
    """Field names that differ between two fingerprints; env keys as ``env.KEY``."""
    drift = []
    keys = fields if fields is not None else sorted((set(stored) | set(desired)) - {"v"})
    for key in keys:
        old, new = stored.get(key), desired.get(key)
        if key == "env":
            old, new = old or {}, new or {}
            drift.extend("env.%s" % k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        elif old != new:
            drift.append(key)
    return drift


# -------------------------------------------------------------------------------------------- Plan

class Plan:
    """What :meth:`PM2Client.apply` will do. Holds no env values (the spec's repr is redacted)."""

    def __init__(self, spec, state, action, drift=None, before=None, after=None, warnings=None, scale_to=None):
        if action not in ACTIONS:
            raise AssertionError(action)
        self.spec = spec
        # the app's processes (redacted dicts) as PM2Client.plan read them: what check mode reports,
        # without a second `pm2 jlist`
        self.processes = []
        self.state = state
        self.action = action
        self.drift = list(drift or [])
        self.before = before or {}
        self.after = after or {}
        self.warnings = list(warnings or [])
        self.scale_to = scale_to

    @property
    def changed(self):
        return self.action != "none"

    def as_dict(self):
        return {"action": self.action, "drift": self.drift, "before": self.before, "after": self.after,
                "warnings": self.warnings, "changed": self.changed}

    def __repr__(self):
        return "Plan(action=%r, drift=%r, state=%r, name=%r)" % (self.action, self.drift, self.state, self.spec.name)


# --------------------------------------------------------------------------------------- PM2Client

class _Proc:
    """One PM2 process: ``info`` is public (redacted); ``stored`` and ``started_ms`` stay internal."""

    def __init__(self, raw, now_ms):
        env = raw.get("pm2_env") or {}
        monit = raw.get("monit") or {}
        app_env = env.get("env") if isinstance(env.get("env"), dict) else {}
        self.stored = _parse_fingerprint(app_env.get(SPEC_KEY, env.get(SPEC_KEY)))
        self.status = env.get("status")
        self.started_ms = env.get("pm_uptime") or 0
        self.restarts = env.get("restart_time") or 0
        self.unstable = env.get("unstable_restarts") or 0
        self.pm_id = raw.get("pm_id", env.get("pm_id"))
        env_keys = sorted(self.stored["env"]) if self.stored else sorted(k for k in app_env if k != SPEC_KEY)
        online = self.status == "online"
        self.uptime_ms = max(0, now_ms - self.started_ms) if online and self.started_ms else 0
        real_cwd = _real_cwd(raw.get("pid"))
        self.info = redact_env({
            "name": raw.get("name", env.get("name")),
            "pm_id": self.pm_id,
            "namespace": env.get("namespace"),
            "status": self.status,
            "pid": raw.get("pid") or None,
            "restarts": self.restarts,
            "unstable_restarts": self.unstable,
            "exit_code": env.get("exit_code"),
            "uptime_s": int(self.uptime_ms // 1000),
            "cpu": monit.get("cpu", 0),
            "memory": monit.get("memory", 0),
            "exec_mode": str(env.get("exec_mode", "")).replace("_mode", ""),
            "instances": None,
            "cwd": env.get("pm_cwd"),
            "real_cwd": real_cwd,
            "cwd_moved": _cwd_moved(env.get("pm_cwd"), real_cwd),
            "script": env.get("pm_exec_path"),
            "interpreter": env.get("exec_interpreter"),
            "out_file": env.get("pm_out_log_path"),
            "error_file": env.get("pm_err_log_path"),
            "managed": self.stored is not None,
            "env": dict((k, MASK) for k in env_keys),
        })


def _real_cwd(pid):
    """Where process ``pid`` runs: its /proc/PID/cwd, resolved by the kernel when it started (a process
    started in APP/current keeps the release it was started in). None when it cannot be read."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        return os.readlink("/proc/%d/cwd" % pid)
    except OSError:
        return None


def _cwd_moved(cwd, real_cwd):
    """Whether ``cwd`` (as PM2 was given it, such as APP/current) now resolves to another directory than
    the process runs in: a symlink was switched after the process started, so it still runs the old
    release. None when either is unknown."""
    if not cwd or not real_cwd:
        return None
    try:
        return os.path.realpath(cwd) != real_cwd
    except OSError:
        return None


def _parse_fingerprint(text):
    try:
        record = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("env"), dict) else None


def parse_jlist(stdout):
    """Find the JSON process list in ``pm2 jlist`` output, skipping banners printed before it."""
    decoder = json.JSONDecoder()
    text = stdout or ""
    starts = [m.start(1) for m in re.finditer(r"(?m)^\s*(\[)", text)]
    if not starts:
        starts = [m.start() for m in re.finditer(r"\[", text)][:200]
    for start in starts:
        try:
            value, _end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, list) and all(isinstance(p, dict) for p in value):
            return value
    # Never quote the output: a truncated list would still hold env values.
    raise DevboxOpsError("pm2 jlist printed no JSON process list (%d characters of output)" % len(text))


def _tail_file(path, lines):
    """Last ``lines`` lines of a text file, read from the end."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            pos = handle.tell()
            data = b""
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(65536, pos)
                pos -= step
                handle.seek(pos)
                data = handle.read(step) + data
    except (IOError, OSError):
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def installed_version(executable):
    """Where ``executable`` (a command name on PATH, or a path) is, and which PM2 version it is, read from the
    package.json of the pm2 package it belongs to (up to four directories above the resolved file). Starts no
    Node.js and no PM2 daemon. Returns {"path": absolute path or None, "version": str or None}."""
    if not isinstance(executable, str) or not executable.strip():
        raise bad_value("executable", executable, "must be a command name or a path")
    path = shutil.which(executable)
    version = None
    folder = os.path.dirname(os.path.realpath(path)) if path else None
    for _level in range(4 if folder else 0):
        try:
            with open(os.path.join(folder, "package.json")) as handle:
                meta = json.load(handle)
        except (IOError, OSError, ValueError):
            meta = None
        if isinstance(meta, dict) and meta.get("name") == "pm2":
            version = meta.get("version") if isinstance(meta.get("version"), str) else None
            break
        folder = os.path.dirname(folder)
    return {"path": os.path.abspath(path) if path else None, "version": version}


def _resolve_executable(executable):
    if not isinstance(executable, str) or not executable:
        raise bad_value("executable", executable, "must be a command name or an absolute path")
    if os.sep in executable:
        path = executable if os.path.isfile(executable) and os.access(executable, os.X_OK) else None
    else:
        path = shutil.which(executable)
    if not path:
        raise bad_value("executable", executable,
                        "PM2 not found (not an executable file or not on PATH); install it "
                        "(npm install -g pm2) or set executable")
    return path


def daemon_running(pm2_home=None):
    """True when ``<pm2_home>/pm2.pid`` names a live PM2 process (so ``pm2 jlist`` starts nothing).

    ``pm2_home`` defaults like PM2's: ``$PM2_HOME``, else ``~/.pm2`` of the current user.
    """
    home = pm2_home or os.environ.get("PM2_HOME") or os.path.join(
        os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir, ".pm2")
    try:
        with open(os.path.join(home, "pm2.pid")) as handle:
            pid = int(handle.read().strip())
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().startswith("PM2")
    except (IOError, OSError, ValueError):
        return False


class PM2Client:
    """A PM2 client for one ``PM2_HOME`` that runs everything through ``runner``.

    Any ``pm2`` command starts the PM2 daemon when none runs. With ``spawn_daemon=False`` (check mode),
    reading the process list without a running daemon returns no process instead of starting one.
    """

    def __init__(self, runner, executable="pm2", pm2_home=None, poll_interval=0.2, command_timeout=120,
                 spawn_daemon=True):
        self.runner = runner
        self.spawn_daemon = spawn_daemon
        self.executable = _resolve_executable(executable)
        if pm2_home is not None:
            pm2_home = os.path.expanduser(_text("pm2_home", pm2_home))
            if not os.path.isabs(pm2_home):
                raise bad_value("pm2_home", pm2_home, "must be an absolute path")
        self.pm2_home = pm2_home
        self.poll_interval = poll_interval
        self.command_timeout = command_timeout

    # -- plumbing
    def _run(self, argv, secrets=(), what=None):
        env = {"PM2_HOME": self.pm2_home} if self.pm2_home else {}
        rc, out, err = self.runner.run(argv, env=env, timeout=self.command_timeout)
        if rc != 0:
            detail = _ANSI.sub("", (err or "").strip() or (out or "").strip())
            lines = detail.splitlines()
            # PM2 prints the cause ([PM2][ERROR] ...) first and may then crash on it (a stack trace)
            cause = [line for line in lines if "[PM2][ERROR]" in line][:3]
            detail = "\n".join(cause + [line for line in lines[-10:] if line not in cause])
            what = what or " ".join([os.path.basename(argv[0])] + argv[1:3])
            raise DevboxOpsError("%s failed (rc=%s): %s" % (what, rc, redact_text(detail, secrets)))
        return out or ""

    def _pm2(self, *args, **kwargs):
        return self._run([self.executable] + [str(a) for a in args], **kwargs)

    def _procs(self, name=None):
        if not self.spawn_daemon and not daemon_running(self.pm2_home):
            return []
        now_ms = int(time.time() * 1000)
        procs = [_Proc(raw, now_ms) for raw in parse_jlist(self._pm2("jlist"))]
        counts = {}
        for proc in procs:
            counts[proc.info["name"]] = counts.get(proc.info["name"], 0) + 1
        for proc in procs:
            proc.info["instances"] = counts[proc.info["name"]]
        if name is not None:
            procs = [p for p in procs if p.info["name"] == name]
        return sorted(procs, key=lambda p: (p.info["name"] or "", p.pm_id if p.pm_id is not None else -1))

    def _ids(self, name):
        return [p.pm_id for p in self._procs(name)]

    # -- reading
    def jlist(self, name=None):
        """Redacted process dicts (see :class:`_Proc`), optionally only those named ``name``."""
        return [p.info for p in self._procs(name)]

    def logs(self, name, lines=20):
        """Last ``lines`` lines of each distinct out/err log file of app ``name``, read directly."""
        lines = _int("lines", lines, 1)
        result, seen = [], set()
        for proc in self._procs(name):
            for stream, key in (("out", "out_file"), ("err", "error_file")):
                path = proc.info.get(key)
                if path and path not in seen and path != "/dev/null":
                    seen.add(path)
                    result.append({"stream": stream, "path": path, "lines": _tail_file(path, lines)})
        return result

    def load_ecosystem(self, path, only=None):
        """AppSpecs from a .json ecosystem file, or a .js/.cjs/.mjs one evaluated by node."""
        path = os.path.abspath(os.path.expanduser(_text("ecosystem", path)))
        if not os.path.isfile(path):
            raise bad_value("ecosystem", path, "no such file")
        if path.endswith(".json"):
            try:
                with open(path) as handle:
                    data = json.load(handle)
            except ValueError as exc:
                raise bad_value("ecosystem", path, "is not valid JSON (%s)" % exc)
        elif path.endswith((".js", ".cjs", ".mjs")):
            data = self._eval_js(path)
        else:
            raise bad_value("ecosystem", path, "must end in .json, .js, .cjs or .mjs")
        apps = data.get("apps") if isinstance(data, dict) and "apps" in data else data
        apps = apps if isinstance(apps, list) else [apps]
        specs = []
        for app in apps:
            if not isinstance(app, dict):
                raise bad_value("ecosystem", path, "apps must be objects")
            if only is not None and app.get("name") != only:
                continue
            params = dict((_ALIASES.get(k, k), v) for k, v in app.items())
            unknown = sorted(set(params) - set(FIELD_NAMES) - {"name"})
            if unknown:
                raise bad_value("ecosystem", path, "app %r uses unsupported option(s) %s"
                                % (app.get("name"), ", ".join(unknown)))
            if params.get("script") and not params.get("cwd") and not os.path.isabs(params["script"]):
                params["cwd"] = os.path.dirname(path)
            specs.append(AppSpec.from_params(params))
        if only is not None and not specs:
            raise bad_value("name", only, "no app of that name in ecosystem %s" % path)
        return specs

    def _eval_js(self, path):
        node = shutil.which("node") or os.path.join(os.path.dirname(os.path.realpath(self.executable)), "node")
        code = ("const u=require('url');import(u.pathToFileURL(process.argv[1]).href)"
                ".then(m=>{const c=(m&&m.default!==undefined)?m.default:m;"
                "process.stdout.write(JSON.stringify(c))})"
                ".catch(e=>{console.error(String(e&&e.message||e));process.exit(3)})")
        out = self._run([node, "-e", code, path])
        try:
            return json.loads(out)
        except ValueError as exc:
            raise bad_value("ecosystem", path, "did not evaluate to JSON (%s)" % exc)

    # -- planning
    def plan(self, spec, state="started"):
        if state not in STATES:
            raise bad_value("state", state, "must be one of %s" % ", ".join(STATES))
        procs = self._procs(spec.name)
        plan = self._decide(spec, state, procs)
        plan.processes = [p.info for p in procs]
        return plan

    def _decide(self, spec, state, procs):
        stored = next((p.stored for p in procs if p.stored), None)
        statuses = sorted(set(p.status for p in procs))
        warnings = []
        before = self._before(spec, procs, stored)

        if not procs:
            if state in ("stopped", "absent"):
                if state == "stopped":
                    warnings.append("app %s does not exist; nothing to stop" % spec.name)
                return Plan(spec, state, "none", before=before, after=before, warnings=warnings)
            if spec.partial:
                raise DevboxOpsError("script is required to start new app %s" % spec.name, param="script")
            return Plan(spec, state, "start", before=before, after=self._after(spec, state), warnings=warnings)

        if state == "absent":
            return Plan(spec, state, "delete", before=before, after=self._after(spec, state))
        drift = self._drift(spec, procs, stored)
        after = self._after(spec, state, drift, len(procs))
        if state == "stopped":
            action = "none" if statuses == ["stopped"] else "stop"
            if drift:
                warnings.append("app %s has drifted (%s); state=stopped does not apply it"
                                % (spec.name, ", ".join(drift)))
            return Plan(spec, state, action, drift, before, after, warnings)

        if spec.partial and set(drift) - {"instances"}:
            raise DevboxOpsError("script is required to change %s of app %s"
                                 % (", ".join(d for d in drift if d != "instances"), spec.name), param="script")
        desired_env = spec.env or {}
        env_drift = [d for d in drift if d.startswith("env.")]
        # PM2 merges env on restart, so a removed key needs a fresh process list entry.
        structural = [d for d in drift if not d.startswith("env.") and d != "instances"] + \
                     [d for d in env_drift if d[4:] not in desired_env]
        scale_to = spec.instances if "instances" in drift else None
        if structural:
            action, scale_to = "recreate", None
        elif state == "reloaded":
            action = "reload"
        elif state == "restarted":
            action = "restart"
        elif env_drift:
            action = "reload" if spec.exec_mode == "cluster" else "restart"
        elif statuses != ["online"]:
            action = "start"
        elif scale_to:
            action, scale_to = "scale", None
        else:
            action = "none"
        if "unmanaged" in drift:
            warnings.append("app %s was not started by devbox.ops; it is recreated to take it over" % spec.name)
        if action == "reload" and self._mode(spec, procs) != "cluster":
            warnings.append("app %s runs in fork mode: pm2 reload restarts it (no zero-downtime); "
                            "use exec_mode=cluster for graceful reloads" % spec.name)
        return Plan(spec, state, action, drift, before, after, warnings, scale_to)

    @staticmethod
    def _mode(spec, procs):
        return spec.exec_mode if not spec.partial else procs[0].info["exec_mode"]

    @staticmethod
    def _drift(spec, procs, stored):
        """Drifted fields. A partial spec compares only what it gives (and only the env keys it gives)."""
        count_matters = not spec.partial or "instances" in spec.given
        count_drift = ["instances"] if count_matters and len(procs) != spec.instances else []
        if spec.partial:
            fields = sorted(spec.given - {"instances"})
            if not fields:
                return count_drift
            desired = spec.fingerprint()
            if not stored:
                return fields + count_drift
            stored = dict(stored, env=dict((k, v) for k, v in stored["env"].items() if k in desired["env"]))
            return spec_drift(stored, desired, fields) + count_drift
        if stored is None:
            return ["unmanaged"] + count_drift
        return spec_drift(stored, spec.fingerprint()) + count_drift

    @staticmethod
    def _before(spec, procs, stored):
        if not procs:
            return {"name": spec.name, "state": "absent"}
        before = {"name": spec.name}
        if stored:
            for key, value in stored.items():
                if key != "v" and value is not None:
                    before[key] = dict((k, MASK) for k in value) if key == "env" else value
        before["instances"] = len(procs)
        before["state"] = "/".join(sorted(set(p.status for p in procs)))
        return before

    @staticmethod
    def _after(spec, state, drift=(), count=None):
        if state == "absent":
            return {"name": spec.name, "state": "absent"}
        after = spec.public() if not spec.partial else {"name": spec.name}
        if spec.partial:
            after["instances"] = spec.instances if "instances" in spec.given else count
        if after.get("env"):
            after["env"] = dict((k, MASK + (" (changed)" if "env.%s" % k in drift else ""))
                                for k in after["env"])
        after["state"] = "stopped" if state == "stopped" else "online"
        if drift:
            after["drift"] = list(drift)
        return after

    # -- holds: an operator action in progress, which the on-host watchdog must not fight
    def _hold_path(self, name):
        return os.path.join(self.home(), HOLD_DIR, _check_name(name) + ".hold")

    def hold(self, name, seconds):
        """Mark app ``name`` as being acted on by this process for at most ``seconds``.

        The watchdog leaves a held app alone: it neither probes nor restarts it, and the restarts the
        action causes do not count against the app's restart budget. The hold ends with :meth:`unhold`,
        at its deadline, or when the process that took it is gone."""
        path = self._hold_path(name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hold-", dir=os.path.dirname(path))
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), "until": time.time() + seconds}, handle)
        os.rename(tmp, path)
        return path

    def unhold(self, name):
        try:
            os.unlink(self._hold_path(name))
        except OSError:
            pass

    def held(self, name, now=None):
        """True while another live process holds app ``name`` (see :meth:`hold`)."""
        try:
            with open(self._hold_path(name)) as handle:
                data = json.load(handle)
            pid, until = int(data["pid"]), float(data["until"])
        except (IOError, OSError, ValueError, KeyError, TypeError):
            return False
        if pid == os.getpid() or until < (time.time() if now is None else now):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    # -- acting
    def apply(self, plan, spec=None, timeout=60, hold=True):
        """Carry out ``plan`` with argv lists, then wait until the reported state is true.

        With ``hold`` (the default) the app is held (:meth:`hold`) while the action runs, so that the
        watchdog does not count it as a failure or act on the app at the same time."""
        spec = spec or plan.spec
        if plan.action == "none":
            return self.jlist(spec.name)
        if not hold:
            return self._apply(plan, spec, timeout)
        self.hold(spec.name, timeout + 60)
        try:
            return self._apply(plan, spec, timeout)
        finally:
            self.unhold(spec.name)

    def _apply(self, plan, spec, timeout):
        secrets = spec.secrets()
        name, action = spec.name, plan.action
        if plan.scale_to:
            self.scale(name, plan.scale_to)
        procs = self._procs(name)
        ids = [p.pm_id for p in procs]
        if action == "stop":
            if ids:
                self._pm2("stop", *ids, secrets=secrets)
            return self.wait_status(name, "stopped", timeout)
        if action in ("delete", "recreate"):
            self._delete(name, ids, timeout, secrets)
            if action == "delete":
                return []
            ids = []
        if action in ("start", "recreate") and not ids:
            self._with_ecosystem(spec, "start")
        elif action == "start":
            down = [p.pm_id for p in procs if p.status != "online"]
            if down:
                self._pm2("restart", *down, secrets=secrets)
        elif action in ("restart", "reload") and not spec.partial:
            self._with_ecosystem(spec, action)
        elif action == "restart":
            self._pm2("restart", *ids, secrets=secrets)
        elif action == "reload":
            self._pm2("reload", name, secrets=secrets)
        elif action == "scale":
            self.scale(name, spec.instances)
        instances = spec.instances if not spec.partial or "instances" in spec.given else None
        min_uptime = spec.min_uptime if spec.min_uptime is not None else PM2_DEFAULT_MIN_UPTIME_MS
        return self.wait_online(name, instances, min_uptime, timeout, secrets=secrets)

    def _delete(self, name, ids, timeout, secrets):
        """``pm2 delete`` until no process of ``name`` is left. A process deleted while PM2 waits out its
        restart delay can come back online (seen on a loaded machine), so a survivor is deleted again."""
        deadline = time.monotonic() + timeout
        while ids:
            self._pm2("delete", *ids, secrets=secrets)
            try:
                self.wait_status(name, "absent", max(0.5, min(5.0, deadline - time.monotonic())))
                return
            except DevboxOpsError:
                ids = self._ids(name)
                if ids and time.monotonic() >= deadline:
                    raise DevboxOpsError("app %s did not become absent within %ss (pm_ids left: %s)"
                                         % (name, timeout, ", ".join(str(i) for i in ids)))

    def _with_ecosystem(self, spec, verb):
        """``pm2 <verb> FILE`` with a private (0600, deleted after) ecosystem holding only this app.

        No ``--only``: PM2 splits its value on commas and spaces, and the file holds one app anyway.
        """
        fd, path = tempfile.mkstemp(prefix="devbox-ops-pm2-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"apps": [spec.ecosystem_app()]}, handle)
            self._pm2(verb, path, secrets=spec.secrets(), what="pm2 %s (app %s)" % (verb, spec.name))
        finally:
            os.unlink(path)

    def scale(self, name, instances):
        """Scale to ``instances``: up with ``pm2 scale``; down by deleting the highest pm_ids, so
        instance 0 keeps running (``pm2 scale`` would delete the oldest processes first)."""
        instances = _int("instances", instances, 1)
        ids = self._ids(name)
        if not ids:
            raise DevboxOpsError("app %s does not exist; cannot scale it" % name, param="name", value=name)
        if instances > len(ids):
            self._pm2("scale", name, instances)
        elif instances < len(ids):
            self._pm2("delete", *sorted(ids)[instances:])

    def save(self):
        """``pm2 save --force``: write the dump file PM2 resurrects at boot."""
        self._pm2("save", "--force")

    def home(self):
        """The PM2_HOME this client talks to (``$PM2_HOME`` or ``~/.pm2`` when none was given)."""
        return self.pm2_home or os.environ.get("PM2_HOME") or os.path.expanduser("~/.pm2")

    def daemon_pid(self):
        """PID of this PM2_HOME's running daemon, or None. Reads ``pm2.pid`` and checks that the pid is a
        PM2 daemon (``/proc/PID/cmdline``); unlike every ``pm2`` command, it never starts a daemon."""
        try:
            with open(os.path.join(self.home(), "pm2.pid")) as handle:
                pid = int(handle.read().strip())
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                return pid if handle.read().startswith(b"PM2") else None
        except (IOError, OSError, ValueError):
            return None

    def resurrect(self):
        """``pm2 resurrect``: start the daemon and the apps of the dump file (``pm2 save``)."""
        self._pm2("resurrect")

    def wait_status(self, name, status, timeout=60):
        """Wait until every process of ``name`` is ``status`` ('stopped'), or none exist ('absent')."""
        deadline = time.monotonic() + timeout
        while True:
            procs = self._procs(name)
            if (status == "absent" and not procs) or (procs and all(p.status == status for p in procs)):
                return [p.info for p in procs]
            if time.monotonic() > deadline:
                raise DevboxOpsError("app %s did not become %s within %ss (statuses: %s)"
                                     % (name, status, timeout, ", ".join(p.status for p in procs)))
            time.sleep(self.poll_interval)

    def wait_online(self, name, instances=None, min_uptime_ms=PM2_DEFAULT_MIN_UPTIME_MS, timeout=60, secrets=()):
        """Poll until every instance is online and up >= ``min_uptime_ms`` with no new restarts.

        errored/stopped/'waiting restart', or a restart count that grows while waiting, raises
        DevboxOpsError with the tail of the app's error log.
        """
        deadline = time.monotonic() + timeout
        baseline = None
        while True:
            procs = self._procs(name)
            if baseline is None:
                baseline = dict((p.pm_id, p.restarts) for p in procs)
            failed = [p for p in procs if p.status in ("errored", "stopped", "waiting restart")
                      or p.restarts > baseline.get(p.pm_id, p.restarts)]
            if failed:
                why = "it keeps restarting" if failed[0].status == "online" else "status %s" % failed[0].status
                raise self._crash(name, failed[0], "is errored after start: %s" % why, secrets)
            if procs and (instances is None or len(procs) == instances) and \
                    all(p.status == "online" and p.uptime_ms >= min_uptime_ms for p in procs):
                return [p.info for p in procs]
            if time.monotonic() > deadline:
                statuses = ", ".join("%s:%s" % (p.pm_id, p.status) for p in procs) or "no process"
                raise self._crash(name, procs[0] if procs else None,
                                  "did not stay online for %sms within %ss (%s)" % (min_uptime_ms, timeout, statuses),
                                  secrets)
            # Sleep until the youngest online process could reach min_uptime, at least one interval.
            young = [min_uptime_ms - p.uptime_ms for p in procs if p.status == "online" and p.uptime_ms < min_uptime_ms]
            time.sleep(max(self.poll_interval, min(young) / 1000.0) if young else self.poll_interval)

    @staticmethod
    def _crash(name, proc, what, secrets):
        msg = "app %s %s" % (name, what)
        if proc is not None:
            msg += " (status=%s, restarts=%s)" % (proc.status, proc.restarts)
            path = proc.info.get("error_file")
            tail = _tail_file(path, 15) if path else []
            if tail:
                msg += "; last lines of %s:\n%s" % (path, _ANSI.sub("", "\n".join(tail)))
        return DevboxOpsError(redact_text(msg, secrets), param="name", value=name)
