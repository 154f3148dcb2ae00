# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters for the devbox.ops app model and PM2 status.

``apps_resolved`` applies the defaults of the ``devbox_apps`` model (one place, so roles and
playbooks never disagree), including those of an app's ``deploy`` settings, and masks env values unless
asked not to. ``pm2_table`` renders the
processes returned by ``devbox.ops.pm2_info`` as a fixed-width table or as JSON.
The documentation of each filter is in the YAML file of the same name.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re

from ansible.errors import AnsibleFilterError
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import FIELD_NAMES, MASK

PROBE_KINDS = ("health", "readiness")
PROBE_OPTIONS = ("timeout", "period", "initial_delay", "failure_threshold", "success_threshold", "deadline",
                 "expected_status")
DEPLOY_STEPS = ("lock", "preflight", "backup", "fetch", "link", "install", "build", "guards", "start", "verify",
                "switch", "post_verify", "prune", "record", "notify", "unlock")
DEPLOY_STRATEGIES = ("reload", "bluegreen", "restart")
DEPLOY_INSTALLS = ("auto", "npm", "pip", "none")
DEPLOY_SOURCE_TYPES = ("auto", "dir", "git", "archive")
DEPLOY_EXCLUDE = [".git", "node_modules", ".venv", "__pycache__", "*.pyc"]
DEPLOY_KEYS = ("strategy", "source", "source_type", "ref", "version", "keep_releases", "max_age_days",
               "shared_paths", "env_file", "install", "build", "guards", "preflight", "slo", "bluegreen",
               "backup", "hooks", "exclude", "candidate_port")
APP_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
TOOL_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
VERSION_RE = re.compile(r"\A[0-9]+(\.[0-9]+){0,2}\Z")
TABLE_COLUMNS = (("name", "name"), ("id", "pm_id"), ("mode", "exec_mode"), ("status", "status"),
                 ("pid", "pid"), ("restarts", "restarts"), ("uptime", "uptime_s"), ("cpu %", "cpu"),
                 ("memory MB", "memory_mb"))


def _fail(index, field, value, why):
    raise AnsibleFilterError("devbox_apps[%d].%s=%r: %s" % (index, field, value, why))


def _int_in(index, field, value, low, high):
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or str(number) != str(value).strip() or not low <= number <= high:
        _fail(index, field, value, "must be an integer from %d to %d" % (low, high))
    return number


def _probes(index, app, port, probe_defaults):
    probes = []
    for kind in PROBE_KINDS:
        conf = app.get(kind)
        if conf is None:
            continue
        if not isinstance(conf, dict):
            _fail(index, kind, conf, "must be a dict with at least 'path'")
        path = conf.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            _fail(index, kind + ".path", path, "must be a URL path starting with '/'")
        if port is None:
            _fail(index, "port", None, "is required when %s is set (probes use http://127.0.0.1:PORT)" % kind)
        probe = dict((k, v) for k, v in (probe_defaults or {}).items() if k in PROBE_OPTIONS)
        probe.update((k, v) for k, v in conf.items() if k in PROBE_OPTIONS and v is not None)
        probe["name"] = "%s %s" % (app["name"], kind)
        probe["url"] = "http://127.0.0.1:%d%s" % (port, path)
        probes.append(probe)
    return probes


def _dict(index, field, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(index, field, value, "must be a dict")
    return dict((k, v) for k, v in value.items() if v is not None)


def _unknown(index, field, conf, known):
    extra = sorted(set(conf) - set(known))
    if extra:
        _fail(index, "%s.%s" % (field, extra[0]), conf[extra[0]], "unknown option (known: %s)" % ", ".join(known))


def _number(index, field, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low or \
            (high is not None and value > high):
        _fail(index, field, value, "must be a number from %s%s" % (low, " to %s" % high if high is not None else ""))
    return value


def _str_list(index, field, value, check=None, why=None):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        _fail(index, field, value, "must be a list of non-empty strings")
    for item in value:
        if check and not check(item):
            _fail(index, field, item, why)
    return list(value)


def _relative(path):
    return not os.path.isabs(path) and ".." not in path.split("/") and path.strip("/") not in ("", ".")


def _port_at(index, field, value):
    return _int_in(index, field, value, 1, 65535)


def _deploy(index, app, apps_dir):
    """The ``deploy`` settings of one app with their defaults (see apps_resolved.yml)."""
    name, port = app["name"], app.get("port")
    conf = _dict(index, "deploy", app["deploy"])
    _unknown(index, "deploy", conf, DEPLOY_KEYS)
    if not APP_NAME_RE.match(name):
        _fail(index, "name", name, "a deployed app names a directory: letters, digits, '.', '_', '-' (at most 100)")
    if "cwd" in app:
        _fail(index, "cwd", app["cwd"], "a deployed app runs from %s/%s/current; remove cwd" % (apps_dir, name))
    if "src" in app:
        _fail(index, "src", app["src"], "not used with deploy: deploy.source gives the code")
    out = {"root": "%s/%s" % (apps_dir, name)}
    strategy = conf.get("strategy", "reload" if app["exec_mode"] == "cluster" else "restart")
    if strategy not in DEPLOY_STRATEGIES:
        _fail(index, "deploy.strategy", strategy, "must be one of %s" % ", ".join(DEPLOY_STRATEGIES))
    if strategy == "reload" and app["exec_mode"] != "cluster":
        _fail(index, "deploy.strategy", strategy, "needs exec_mode cluster (PM2 reload restarts a fork-mode app); "
                                                  "use restart or bluegreen")
    out["strategy"] = strategy
    for key in ("source", "ref", "version"):
        if key in conf and (not isinstance(conf[key], str) or not conf[key]):
            _fail(index, "deploy." + key, conf[key], "must be a non-empty string")
        out[key] = conf.get(key)
    out["source_type"] = conf.get("source_type", "auto")
    if out["source_type"] not in DEPLOY_SOURCE_TYPES:
        _fail(index, "deploy.source_type", out["source_type"], "must be one of %s" % ", ".join(DEPLOY_SOURCE_TYPES))
    out["keep_releases"] = _int_in(index, "deploy.keep_releases", conf.get("keep_releases", 5), 1, 1000)
    out["max_age_days"] = (_int_in(index, "deploy.max_age_days", conf["max_age_days"], 1, 36500)
                           if "max_age_days" in conf else None)
    out["shared_paths"] = _str_list(index, "deploy.shared_paths", conf.get("shared_paths", ["logs"]), _relative,
                                    "must be a path relative to the release, without '..'")
    out["env_file"] = conf.get("env_file", True)
    if not isinstance(out["env_file"], bool):
        _fail(index, "deploy.env_file", out["env_file"], "must be a boolean")
    if out["env_file"] and ".env" in out["shared_paths"]:
        _fail(index, "deploy.shared_paths", ".env", "is linked by env_file already")
    out["install"] = conf.get("install", "auto")
    if out["install"] not in DEPLOY_INSTALLS:
        _fail(index, "deploy.install", out["install"], "must be one of %s" % ", ".join(DEPLOY_INSTALLS))
    build = conf.get("build") or []
    if not isinstance(build, list):
        _fail(index, "deploy.build", build, "must be a list of argument lists, e.g. [[npm, run, build]]")
    for i, argv in enumerate(build):
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
            _fail(index, "deploy.build[%d]" % i, argv,
                  "must be an argument list such as [npm, run, build] (never a shell string)")
    out["build"] = [list(a) for a in build]
    guards = conf.get("guards") or []
    if not isinstance(guards, list):
        _fail(index, "deploy.guards", guards, "must be a list of {path, required, must_exist}")
    out["guards"] = []
    for i, guard in enumerate(guards):
        field = "deploy.guards[%d]" % i
        guard = _dict(index, field, guard)
        _unknown(index, field, guard, ("path", "required", "must_exist"))
        if not isinstance(guard.get("path"), str) or not _relative(guard["path"]):
            _fail(index, field + ".path", guard.get("path"), "must be a path relative to the release, without '..'")
        required = _str_list(index, field + ".required", guard.get("required"))
        for rx in required:
            try:
                re.compile(rx)
            except re.error as exc:
                _fail(index, field + ".required", rx, "is not a valid regex (%s)" % exc)
        out["guards"].append({"path": guard["path"], "required": required,
                              "must_exist": guard.get("must_exist", True) is not False})
    out["exclude"] = _str_list(index, "deploy.exclude", conf.get("exclude", DEPLOY_EXCLUDE))
    out["preflight"] = _preflight(index, _dict(index, "deploy.preflight", conf.get("preflight")))
    out["slo"] = _slo(index, _dict(index, "deploy.slo", conf.get("slo")))
    out["candidate_port"] = None
    bluegreen = _dict(index, "deploy.bluegreen", conf.get("bluegreen"))
    _unknown(index, "deploy.bluegreen", bluegreen, ("blue_port", "green_port", "drain_seconds"))
    out["bluegreen"] = {"drain_seconds": _number(index, "deploy.bluegreen.drain_seconds",
                                                 bluegreen.get("drain_seconds", 5), 0, 3600)}
    if port is not None:
        out["candidate_port"] = _port_at(index, "deploy.candidate_port", conf.get("candidate_port", port + 30000))
        for key, offset in (("blue_port", 10000), ("green_port", 20000)):
            out["bluegreen"][key] = _port_at(index, "deploy.bluegreen." + key, bluegreen.get(key, port + offset))
    elif strategy == "bluegreen" or "candidate_port" in conf:
        _fail(index, "port", None, "is required for deploy.strategy=%s (the new release is verified on its own "
                                   "port)" % strategy)
    if port is not None and len(set([port, out["candidate_port"], out["bluegreen"]["blue_port"],
                                     out["bluegreen"]["green_port"]])) < 4:
        _fail(index, "deploy.candidate_port", out["candidate_port"], "port, candidate_port, blue_port and "
                                                                     "green_port must all differ")
    backup = _dict(index, "deploy.backup", conf.get("backup"))
    _unknown(index, "deploy.backup", backup, ("paths", "keep", "min_free_mb"))
    paths = backup.get("paths") or []
    if not isinstance(paths, list) or not all(isinstance(p, dict) for p in paths):
        _fail(index, "deploy.backup.paths", paths, "must be a list of dicts (path, kind, name, optional)")
    out["backup"] = {"paths": paths, "keep": _int_in(index, "deploy.backup.keep", backup.get("keep", 5), 1, 1000),
                     "min_free_mb": _number(index, "deploy.backup.min_free_mb", backup.get("min_free_mb", 64), 0)}
    hooks = _dict(index, "deploy.hooks", conf.get("hooks"))
    known = ["%s_%s" % (step, when) for step in DEPLOY_STEPS for when in ("before", "after")]
    for key, value in hooks.items():
        if key not in known:
            _fail(index, "deploy.hooks." + str(key), value, "unknown hook (STEP_before or STEP_after, STEP one of %s)"
                  % ", ".join(DEPLOY_STEPS))
        if not isinstance(value, str) or not value:
            _fail(index, "deploy.hooks." + key, value, "must be the path of a task file on the controller")
    out["hooks"] = hooks
    return out


def _preflight(index, conf):
    field = "deploy.preflight"
    _unknown(index, field, conf, ("required_env", "min_free_mb", "tools", "mongodb_uri_env", "checks"))
    tools = _dict(index, field + ".tools", conf.get("tools"))
    for tool, version in tools.items():
        if not TOOL_RE.match(str(tool)):
            _fail(index, field + ".tools", tool, "must be a command name (letters, digits, '.', '_', '+', '-')")
        if not VERSION_RE.match(str(version)):
            _fail(index, field + ".tools." + str(tool), version, "must be a minimum version such as 18.0.0")
    checks = conf.get("checks") or []
    if not isinstance(checks, list) or not all(isinstance(c, list) and c and all(isinstance(a, str) and a for a in c)
                                               for c in checks):
        _fail(index, field + ".checks", checks, "must be a list of argument lists (never shell strings)")
    uri_env = conf.get("mongodb_uri_env")
    if uri_env is not None and (not isinstance(uri_env, str) or not ENV_NAME_RE.match(uri_env)):
        _fail(index, field + ".mongodb_uri_env", uri_env, "must be the NAME of an env variable of the app")
    return {
        "required_env": _str_list(index, field + ".required_env", conf.get("required_env"), ENV_NAME_RE.match,
                                  "is not an env variable name"),
        "min_free_mb": _number(index, field + ".min_free_mb", conf.get("min_free_mb", 200), 0),
        "tools": dict((str(k), str(v)) for k, v in tools.items()),
        "mongodb_uri_env": uri_env,
        "checks": [list(c) for c in checks],
    }


def _slo(index, conf):
    field = "deploy.slo"
    _unknown(index, field, conf, ("samples", "concurrency", "max_p95_ms", "max_error_rate"))
    return {
        "samples": _int_in(index, field + ".samples", conf.get("samples", 100), 0, 100000),
        "concurrency": _int_in(index, field + ".concurrency", conf.get("concurrency", 10), 1, 1000),
        "max_p95_ms": _number(index, field + ".max_p95_ms", conf.get("max_p95_ms", 1000), 0),
        "max_error_rate": _number(index, field + ".max_error_rate", conf.get("max_error_rate", 0.0), 0, 1),
    }


def apps_resolved(apps, project_dir, log_dir, probe_defaults=None, redact=True, apps_dir=None):
    """Each app of ``devbox_apps`` with its defaults applied.

    Adds ``cwd``, ``out_file``, ``error_file``, ``merge_logs`` (true: one file per stream, whatever the
    number of instances), ``instances``, ``exec_mode``, ``env.PORT`` (from
    ``port``), ``probes`` (ready for ``devbox.ops.health_check``) and ``pm2`` (the app entry of a PM2
    ecosystem file). With ``redact`` (the default) every env value is replaced by ``********``.
    An app with ``deploy`` runs from ``APPS_DIR/NAME/current`` and gets its ``deploy`` defaults;
    ``apps_dir`` defaults to the ``apps`` directory next to ``project_dir``.
    """
    if apps is None:
        return []
    apps_dir = (apps_dir or os.path.join(os.path.dirname(str(project_dir).rstrip("/")), "apps")).rstrip("/")
    if not isinstance(apps, list):
        raise AnsibleFilterError("devbox_apps: must be a list of dicts, got a %s" % type(apps).__name__)
    result, seen = [], set()
    for index, raw in enumerate(apps):
        if not isinstance(raw, dict):
            raise AnsibleFilterError("devbox_apps[%d]: must be a dict, got a %s" % (index, type(raw).__name__))
        app = dict((k, v) for k, v in raw.items() if v is not None)
        name = app.get("name")
        if not isinstance(name, str) or not name:
            _fail(index, "name", name, "is required (a non-empty string)")
        if name in seen:
            _fail(index, "name", name, "is used by another app")
        seen.add(name)
        port = _int_in(index, "port", app["port"], 1, 65535) if "port" in app else None
        app["exec_mode"] = app.get("exec_mode", "fork")
        if app["exec_mode"] not in ("fork", "cluster"):
            _fail(index, "exec_mode", app["exec_mode"], "must be one of fork, cluster")
        if "deploy" in app:
            app["deploy"] = _deploy(index, dict(app, port=port), apps_dir)
            app["cwd"] = app["deploy"]["root"] + "/current"
        app["cwd"] = app.get("cwd") or "%s/%s" % (project_dir, name)
        app["out_file"] = app.get("out_file") or "%s/%s.out.log" % (log_dir, name)
        app["error_file"] = app.get("error_file") or "%s/%s.err.log" % (log_dir, name)
        app.setdefault("merge_logs", True)
        app["instances"] = _int_in(index, "instances", app.get("instances", 1), 1, 1024)
        env = app.get("env") or {}
        if not isinstance(env, dict):
            # never echo env values: name the type only
            raise AnsibleFilterError("devbox_apps[%d].env: must be a dict, got a %s" % (index, type(env).__name__))
        env = dict(env)
        if port is not None:
            env["PORT"] = str(port)
            app["port"] = port
        if redact:
            env = dict((k, MASK) for k in env)
        app["env"] = env
        app["probes"] = _probes(index, app, port, probe_defaults)
        app["pm2"] = dict((k, app[k]) for k in ("name",) + tuple(FIELD_NAMES) if k in app)
        result.append(app)
    return result


def _uptime(seconds):
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return "0s"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return "%dd %dh" % (days, hours)
    if hours:
        return "%dh %dm" % (hours, minutes)
    if minutes:
        return "%dm %ds" % (minutes, secs)
    return "%ds" % secs


def _row(proc):
    memory = proc.get("memory")
    return {
        "name": proc.get("name"),
        "pm_id": proc.get("pm_id"),
        "exec_mode": proc.get("exec_mode"),
        "status": proc.get("status"),
        "pid": proc.get("pid") or None,
        "restarts": proc.get("restarts"),
        "uptime_s": proc.get("uptime_s"),
        "cpu": proc.get("cpu"),
        "memory_mb": round(memory / 1048576.0, 1) if isinstance(memory, (int, float)) else None,
    }


def _cell(key, value):
    if value is None:
        return "-"
    if key == "uptime_s":
        return _uptime(value)
    return str(value)


def pm2_table(processes, format="table"):
    """Render ``pm2_info`` processes as a text table (``format='table'``) or JSON (``'json'``).

    Only the table columns are rendered, so env (even masked) never appears.
    """
    if format not in ("table", "json"):
        raise AnsibleFilterError("pm2_table: format=%r: must be one of table, json" % (format,))
    if not isinstance(processes, list) or not all(isinstance(p, dict) for p in processes):
        raise AnsibleFilterError("pm2_table: expects the 'processes' list of devbox.ops.pm2_info")
    rows = [_row(p) for p in processes]
    if format == "json":
        return json.dumps(rows, indent=2, sort_keys=True)
    if not rows:
        return "no PM2 processes"
    cells = [[column[0] for column in TABLE_COLUMNS]]
    cells += [[_cell(column[1], row[column[1]]) for column in TABLE_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


class FilterModule(object):
    def filters(self):
        return {"apps_resolved": apps_resolved, "pm2_table": pm2_table}
