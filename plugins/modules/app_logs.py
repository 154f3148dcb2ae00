#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: app_logs
short_description: The last lines of PM2 app logs (or any log file), filtered by level, time and regex
version_added: 0.1.0
description:
  - Reads the last O(lines) lines of the out and/or err log of one PM2 app, of every app, or of the files in
    O(paths), and keeps only those that pass O(level), O(since), O(until) and O(regex).
  - Files are read backwards from their end in 64 KiB blocks, so a large log costs what is shown, not its
    size. When the live file holds too few matching lines, the rotated files beside it are read too,
    newest first (logrotate's C(app.log.1), C(app.log.2.gz), C(app.log-20240501) and pm2-logrotate's
    C(app__2024-05-01_12-00-00.log[.gz])).
  - Levels come from JSON logs (C(level), pino's numbers), or from the text (C(ERROR), C([error]), C(Warn:),
    C(level=warn), Python logging's C(- ERROR -)). A line that names no level is taken as V(error) in an
    err log and V(info) in an out log. An indented line without time or level (a stack frame) belongs to
    the line above it.
  - Times come from an ISO 8601 time at the start of the line (PM2's C(--time) prefix, gunicorn's
    C([2024-05-01 12:00:00 +0000])) or from JSON C(time)/C(timestamp) fields (epoch milliseconds too). A
    time without an offset is the host's local time.
  - Secrets are masked in every line before the regex sees it, so a regex cannot probe for them. Masked are
    the values of the app's environment variables whose name looks secret (read from C(pm2 jlist)), URL
    passwords, C(Bearer) tokens, and the values of secret-looking keys in C(key=value), C(key:value) and
    JSON pairs (password, token, secret, key and alike).
author:
  - devbox.ops contributors (@devbox-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The module only reads; check mode returns the same lines.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - Runs C(pm2 jlist) (with E(PM2_HOME) set to O(pm2_home)) to find the log files of the apps, unless
    O(paths) is given. No other command is run.
options:
  name:
    description:
      - PM2 app name, or V(all) for every app PM2 knows. Required unless O(paths) is given.
      - The PM2 apps named C(NAME--<something>) count as the app too (the blue-green colours and the
        candidate of a deploy, C(NAME--blue), C(NAME--green), run by the deploy role).
    type: str
  out_file:
    description:
      - The out log of O(name) to read when PM2 runs no process of that app (deleted, or not deployed yet).
    type: path
  error_file:
    description:
      - The err log of O(name) to read when PM2 runs no process of that app.
    type: path
  paths:
    description:
      - Log files to read instead of PM2 apps' logs (for example the watchdog log or nginx's error log).
    type: list
    elements: path
  stream:
    description:
      - Which log of each app, V(out), V(err), or V(both).
    type: str
    choices: [out, err, both]
    default: both
  lines:
    description:
      - How many lines (that pass the filters) to return per log file, at most 100000.
    type: int
    default: 50
  level:
    description:
      - Keep lines of this level and more severe ones.
    type: str
    choices: [debug, info, warn, warning, error]
  since:
    description:
      - Keep lines at or after this time, an ISO 8601 time (V(2024-05-01T12:00:00Z)), epoch seconds, or a
        time ago (V(30s), V(15m), V(2h), V(1d), V(1w)). Lines without a time are left out.
    type: str
  until:
    description:
      - Keep lines at or before this time (same forms as O(since)).
    type: str
  regex:
    description:
      - Keep lines in which this Python regular expression is found; start it with the inline flag "(?i)"
        to ignore case. At most 512 characters; a nested quantifier such as "(a+)+" is refused.
    type: str
  rotated:
    description:
      - Read the rotated files too when the live file holds too few matching lines.
    type: bool
    default: true
  max_bytes:
    description:
      - Read at most this many bytes per log file (rotated files included) while looking for matching lines.
        RV(logs[].truncated) says when it ran out.
    type: int
    default: 268435456
  pm2_home:
    description:
      - E(PM2_HOME) of the daemon to ask. Default is PM2's own (C(~/.pm2)).
    type: path
  executable:
    description:
      - The pm2 command (a name on E(PATH) or an absolute path).
    type: str
    default: pm2
"""

EXAMPLES = r"""
- name: The last 100 error lines of api from the last two hours
  devbox.ops.app_logs:
    name: api
    lines: 100
    level: error
    since: 2h

- name: Requests that answered 5xx, from every app's out log
  devbox.ops.app_logs:
    name: all
    stream: out
    regex: '" 5\d\d '
  register: server_errors

- name: The watchdog's own log
  devbox.ops.app_logs:
    paths: [/home/devbox/.devbox-ops/logs/watchdog.log]
    lines: 20
"""

RETURN = r"""
logs:
  description: One entry per log file read, in app order, out before err.
  returned: always
  type: list
  elements: dict
  contains:
    app:
      description: PM2 app name (null for O(paths)).
      type: str
      sample: api
    stream:
      description: V(out), V(err), or V(file) for O(paths).
      type: str
      sample: err
    path:
      description: The live log file.
      type: str
      sample: /home/devbox/.devbox-ops/logs/api-error.log
    files:
      description: Files read, live file first, then rotated files.
      type: list
      elements: str
    lines:
      description: Matching lines, oldest first.
      type: list
      elements: dict
      contains:
        line:
          description: The line, secrets masked.
          type: str
        file:
          description: The file it came from.
          type: str
        time:
          description: Its time (ISO 8601, UTC), null when it has none.
          type: str
        level:
          description: V(debug), V(info), V(warn), V(error), or null.
          type: str
    scanned_bytes:
      description: Bytes read.
      type: int
    truncated:
      description: Whether O(max_bytes) ran out before O(lines) lines were found.
      type: bool
    untimed:
      description: Lines left out by O(since)/O(until) because they have no time.
      type: int
    missing:
      description: Whether the log file does not exist (yet).
      type: bool
count:
  description: Number of lines returned, over every file.
  returned: always
  type: int
  sample: 42
apps:
  description: App names whose logs were read.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value
from ansible_collections.devbox.ops.plugins.module_utils.events import is_secret_key
from ansible_collections.devbox.ops.plugins.module_utils.logs import DEFAULT_MAX_BYTES, LogFilter, tail
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import PM2Client, parse_jlist
from ansible_collections.devbox.ops.plugins.module_utils.runner import AnsibleRunner

STREAM_KEYS = (("out", "pm_out_log_path", "info"), ("err", "pm_err_log_path", "error"))


def pm2_sources(module, params):
    """[(app, stream, path, default_level)] and the secret env values of the selected apps."""
    client = PM2Client(AnsibleRunner(module), executable=params["executable"], pm2_home=params["pm2_home"])
    env = {"PM2_HOME": client.pm2_home} if client.pm2_home else {}
    rc, out, err = client.runner.run([client.executable, "jlist"], env=env, timeout=client.command_timeout)
    if rc != 0:
        raise DevboxOpsError("pm2 jlist failed (rc=%s): %s" % (rc, (err or out or "").strip()[-500:]))
    procs = parse_jlist(out)
    name = params["name"]
    streams = ("out", "err") if params["stream"] == "both" else (params["stream"],)
    if name != "all":
        procs = [p for p in procs if str(p.get("name")) == name or str(p.get("name")).startswith(name + "--")]
        given = [(name, stream, params[key], level) for (stream, _unused, level), key
                 in zip(STREAM_KEYS, ("out_file", "error_file")) if stream in streams and params[key]]
        if not procs and given:
            return given, []
        if not procs:
            raise bad_value("name", name, "PM2 has no app of that name (is it started? see pm2_info)")
    sources, seen, secrets = [], set(), set()
    for proc in sorted(procs, key=lambda p: (p.get("name") or "", p.get("pm_id") or 0)):
        pm2_env = proc.get("pm2_env") or {}
        app_env = pm2_env.get("env") if isinstance(pm2_env.get("env"), dict) else {}
        secrets.update(v for k, v in app_env.items() if is_secret_key(k) and isinstance(v, str))
        for stream, key, default_level in STREAM_KEYS:
            path = pm2_env.get(key)
            if stream in streams and path and path != "/dev/null" and path not in seen:
                seen.add(path)
                sources.append((proc.get("name") if name == "all" else name, stream, path, default_level))
    return sources, sorted(secrets)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            out_file=dict(type="path"),
            error_file=dict(type="path"),
            paths=dict(type="list", elements="path"),
            stream=dict(type="str", choices=["out", "err", "both"], default="both"),
            lines=dict(type="int", default=50),
            level=dict(type="str", choices=["debug", "info", "warn", "warning", "error"]),
            since=dict(type="str"),
            until=dict(type="str"),
            regex=dict(type="str"),
            rotated=dict(type="bool", default=True),
            max_bytes=dict(type="int", default=DEFAULT_MAX_BYTES),
            pm2_home=dict(type="path"),
            executable=dict(type="str", default="pm2"),
        ),
        required_one_of=[("name", "paths")],
        mutually_exclusive=[("name", "paths"), ("paths", "out_file"), ("paths", "error_file")],
        supports_check_mode=True,
    )
    params = module.params
    try:
        LogFilter(lines=params["lines"], level=params["level"], since=params["since"], until=params["until"],
                  regex=params["regex"], max_bytes=params["max_bytes"])  # bad input fails before PM2 is asked
        if params["paths"]:
            sources, secrets = [(None, "file", p, None) for p in params["paths"]], []
        else:
            sources, secrets = pm2_sources(module, params)
        flt = LogFilter(lines=params["lines"], level=params["level"], since=params["since"], until=params["until"],
                        regex=params["regex"], max_bytes=params["max_bytes"], secrets=secrets)
        found = []
        for app, stream, path, default_level in sources:
            missing = not os.path.exists(path)
            if missing and params["paths"]:
                raise bad_value("paths", path, "no such log file")
            result = tail(path, flt, default_level=default_level, rotated=params["rotated"], missing_ok=True)
            found.append(dict(result, app=app, stream=stream, missing=missing))
    except DevboxOpsError as exc:
        module.fail_json(msg=str(exc), logs=[])
    module.exit_json(changed=False, logs=found, count=sum(len(f["lines"]) for f in found),
                     apps=sorted(set(f["app"] for f in found if f["app"])))


if __name__ == "__main__":
    main()
