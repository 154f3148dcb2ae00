# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters for the devbox.ops app model and PM2 status.

``apps_resolved`` applies the defaults of the ``devbox_apps`` model (one place, so roles and
playbooks never disagree) and masks env values unless asked not to. ``pm2_table`` renders the
processes returned by ``devbox.ops.pm2_info`` as a fixed-width table or as JSON.
The documentation of each filter is in the YAML file of the same name.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ansible.errors import AnsibleFilterError
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import FIELD_NAMES, MASK

PROBE_KINDS = ("health", "readiness")
PROBE_OPTIONS = ("timeout", "period", "initial_delay", "failure_threshold", "success_threshold", "deadline",
                 "expected_status")
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


def apps_resolved(apps, project_dir, log_dir, probe_defaults=None, redact=True):
    """Each app of ``devbox_apps`` with its defaults applied.

    Adds ``cwd``, ``out_file``, ``error_file``, ``merge_logs`` (true: one file per stream, whatever the
    number of instances), ``instances``, ``exec_mode``, ``env.PORT`` (from
    ``port``), ``probes`` (ready for ``devbox.ops.health_check``) and ``pm2`` (the app entry of a PM2
    ecosystem file). With ``redact`` (the default) every env value is replaced by ``********``.
    """
    if apps is None:
        return []
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
        app["cwd"] = app.get("cwd") or "%s/%s" % (project_dir, name)
        app["out_file"] = app.get("out_file") or "%s/%s.out.log" % (log_dir, name)
        app["error_file"] = app.get("error_file") or "%s/%s.err.log" % (log_dir, name)
        app.setdefault("merge_logs", True)
        app["instances"] = _int_in(index, "instances", app.get("instances", 1), 1, 1024)
        app["exec_mode"] = app.get("exec_mode", "fork")
        if app["exec_mode"] not in ("fork", "cluster"):
            _fail(index, "exec_mode", app["exec_mode"], "must be one of fork, cluster")
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
