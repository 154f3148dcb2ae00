#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pm2_process
short_description: Keep one PM2 app in the wanted state and configuration
version_added: 0.1.0
description:
  - Compares the wanted state and options of one PM2 app with what PM2 runs, then starts, scales,
    reloads, restarts, recreates, stops or deletes it, and waits until the reported state is true.
  - Started apps must stay C(online) for O(min_uptime) without restarting, or the module fails with
    the last lines of the app's error log.
  - Options are compared with a record of the last applied spec stored in the app's env
    (C(DEVBOX_OPS_SPEC), env values as salted sha256 digests), so drift names fields such as
    C(env.API_KEY) or C(max_memory_restart) without revealing values.
author:
  - devbox.ops team (@devbox-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.ACTIONGROUPS
  - devbox.ops.pm2
  - devbox.ops.pm2.app
attributes:
  action_group:
    version_added: 0.1.0
    membership: [devbox.ops.pm2]
  check_mode:
    support: full
    details: Computes the plan, reports C(changed) and the diff, and runs nothing but C(pm2 jlist), and that only when
      the PM2 daemon runs (check mode never starts one; without it there is no process).
  diff_mode:
    support: full
    details: The diff holds the non-secret options before and after, and the list of drifted fields.
  platform:
    platforms: posix
options:
  name:
    description:
      - The PM2 app name. Any characters are kept literally (no shell is involved), except that PM2
        itself misreads some names, so these are refused. Empty, C(all), numbers (PM2 takes them as
        ids), names with C(/), control characters, a leading C(-), or C(.json)/C(.yml)/C(.config.js) are refused.
    type: str
    required: true
  state:
    description:
      - V(started) starts the app, and applies drift (scale, reload/restart for env changes,
        recreate for other options). It does nothing when the app is online and nothing drifted.
      - V(stopped) stops every instance; drift is reported but not applied.
      - V(restarted) and V(reloaded) always act. V(reloaded) is graceful in cluster mode only; in
        fork mode PM2 restarts the processes and the module warns.
      - V(absent) deletes the app from PM2.
    type: str
    choices: [started, stopped, restarted, reloaded, absent]
    default: started
  ecosystem:
    description:
      - A PM2 ecosystem file (C(.json), or C(.js)/C(.cjs)/C(.mjs) evaluated with C(node)) on the
        managed host. The app named O(name) is taken from it; options given to the module override
        the file (O(env) keys are merged).
      - Relative scripts in the file are resolved from the file's directory.
    type: path
  wait_timeout:
    description:
      - Seconds to wait for the app to reach the wanted state after acting.
    type: int
    default: 60
  save:
    description:
      - Run C(pm2 save --force) after a change, so PM2 resurrects the process list at boot.
    type: bool
    default: false
notes:
  - Commands run (argument lists, never a shell) are C(pm2 jlist), C(pm2 start FILE),
    C(pm2 restart FILE), C(pm2 reload FILE), C(pm2 restart ID...), C(pm2 reload NAME),
    C(pm2 stop ID...), C(pm2 delete ID...), C(pm2 scale NAME N) and C(pm2 save --force).
    FILE is a private temporary ecosystem file (mode 0600, deleted afterwards) that holds only this app.
  - Scaling down deletes the processes with the highest ids, so instance 0 keeps running.
  - PM2 does not apply options such as O(max_memory_restart) or O(script) on reload, so changing
    them recreates the app (delete, then start).
  - An app that exists but was not started by this module is recreated once to take it over.
seealso:
  - module: devbox.ops.pm2_info
"""

EXAMPLES = r"""
- name: Run the API as two cluster workers
  devbox.ops.pm2_process:
    name: api
    script: /home/devbox/project/current/server.js
    exec_mode: cluster
    instances: 2
    max_memory_restart: 300M
    min_uptime: 5s
    env:
      PORT: "3000"
      API_KEY: "{{ vault_api_key }}"
    pm2_home: /home/devbox/.pm2
    save: true

- name: Run a Python app under gunicorn
  devbox.ops.pm2_process:
    name: worker
    script: /usr/bin/gunicorn
    args: app:app --bind 127.0.0.1:8000
    interpreter: none
    cwd: /home/devbox/project/current

- name: Start one app from an ecosystem file, with the secret kept out of the file
  devbox.ops.pm2_process:
    name: web
    ecosystem: /home/devbox/project/ecosystem.config.js
    env:
      SESSION_SECRET: "{{ vault_session_secret }}"

- name: Reload gracefully after a deploy
  devbox.ops.pm2_process:
    name: api
    state: reloaded

- name: Stop the worker
  devbox.ops.pm2_process:
    name: worker
    state: stopped

- name: Remove an old app
  devbox.ops.pm2_process:
    name: legacy
    state: absent
"""

RETURN = r"""
action:
  description: What the module did (or would do in check mode).
  returned: always
  type: str
  choices: [start, recreate, reload, restart, scale, stop, delete, none]
  sample: reload
drift:
  description:
    - Fields whose wanted value differs from the running app. Env keys appear as C(env.KEY);
      C(unmanaged) means the app was not started by this module.
  returned: always
  type: list
  elements: str
  sample: [env.API_KEY, instances]
process:
  description:
    - The app's PM2 processes after the action (before it, in check mode). Env values are masked.
  returned: always
  type: list
  elements: dict
  sample:
    - name: api
      pm_id: 0
      namespace: default
      status: online
      pid: 4242
      restarts: 0
      unstable_restarts: 0
      uptime_s: 12
      cpu: 0
      memory: 52166656
      exec_mode: cluster
      instances: 2
      cwd: /home/devbox/project/current
      real_cwd: /home/devbox/project/releases/20261207T005221Z-7659dbe8
      cwd_moved: false
      script: /home/devbox/project/current/server.js
      interpreter: node
      out_file: /home/devbox/.pm2/logs/api-out-0.log
      error_file: /home/devbox/.pm2/logs/api-error-0.log
      managed: true
      env:
        API_KEY: "********"
        PORT: "********"
warnings:
  description: Notes such as a fork-mode reload that restarts, or drift left unapplied by O(state=stopped).
  returned: when there are any
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import FIELD_NAMES, STATES, AppSpec, PM2Client
from ansible_collections.devbox.ops.plugins.module_utils.runner import AnsibleRunner

APP_OPTIONS = dict(
    script=dict(type="str"),
    args=dict(type="raw"),
    cwd=dict(type="path"),
    interpreter=dict(type="str"),
    interpreter_args=dict(type="raw"),
    env=dict(type="dict", no_log=True),
    instances=dict(type="int"),
    exec_mode=dict(type="str", choices=["fork", "cluster"]),
    autorestart=dict(type="bool"),
    max_memory_restart=dict(type="raw"),
    min_uptime=dict(type="raw"),
    max_restarts=dict(type="int"),
    restart_delay=dict(type="raw"),
    exp_backoff_restart_delay=dict(type="raw"),
    kill_timeout=dict(type="raw"),
    listen_timeout=dict(type="raw"),
    wait_ready=dict(type="bool"),
    cron_restart=dict(type="str"),
    out_file=dict(type="path"),
    error_file=dict(type="path"),
    merge_logs=dict(type="bool"),
    log_date_format=dict(type="str"),
)


def build_spec(module, client):
    """The AppSpec from the inline options, over the ecosystem file's entry when one is given."""
    params = module.params
    inline = dict((f, params[f]) for f in FIELD_NAMES if params[f] is not None)
    inline["name"] = params["name"]
    if not params["ecosystem"]:
        return AppSpec.from_params(inline)
    merged = client.load_ecosystem(params["ecosystem"], only=params["name"])[0].to_params()
    env = dict(merged.get("env") or {})
    env.update(inline.get("env") or {})
    # Values from the file are secrets too: let Ansible mask them in anything it prints.
    module.no_log_values.update(v for v in env.values() if len(v) >= 4)
    merged.update(inline)
    if env:
        merged["env"] = env
    return AppSpec.from_params(merged)


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="started", choices=list(STATES)),
        ecosystem=dict(type="path"),
        pm2_home=dict(type="path"),
        executable=dict(type="str", default="pm2"),
        wait_timeout=dict(type="int", default=60),
        save=dict(type="bool", default=False),
    )
    argument_spec.update(APP_OPTIONS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    result = dict(changed=False, action="none", drift=[], process=[])
    try:
        client = PM2Client(AnsibleRunner(module), executable=params["executable"], pm2_home=params["pm2_home"],
                           spawn_daemon=not module.check_mode)  # check mode never starts a PM2 daemon
        spec = build_spec(module, client)
        plan = client.plan(spec, params["state"])
        for warning in plan.warnings:
            module.warn(warning)
        result.update(changed=plan.changed, action=plan.action, drift=plan.drift)
        if module._diff:
            result["diff"] = dict(before=plan.before, after=plan.after)
        if module.check_mode or not plan.changed:
            result["process"] = plan.processes  # read by the plan: no second pm2 jlist
        else:
            result["process"] = client.apply(plan, timeout=params["wait_timeout"])
            if params["save"]:
                client.save()
    except DevboxOpsError as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
