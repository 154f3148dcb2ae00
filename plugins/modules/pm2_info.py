#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pm2_info
short_description: List the processes of a PM2 daemon, with env values masked
version_added: 0.1.0
description:
  - Runs C(pm2 jlist) (tolerating banners such as C(In-memory PM2 is out-of-date)) and returns one
    entry per process. Env values never leave the host; every value is replaced by C(********).
author:
  - devbox.ops team (@devbox-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.ACTIONGROUPS
  - devbox.ops.pm2
attributes:
  action_group:
    version_added: 0.1.0
    membership: [devbox.ops.pm2]
  check_mode:
    support: full
    details: Read only; runs the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  name:
    description:
      - Return only the processes of the app with this exact name.
    type: str
notes:
  - Runs C(pm2 jlist) only. Starting the first C(pm2) command also starts the PM2 daemon of O(pm2_home).
seealso:
  - module: devbox.ops.pm2_process
"""

EXAMPLES = r"""
- name: Read every PM2 process
  devbox.ops.pm2_info:
    pm2_home: /home/devbox/.pm2
  register: pm2

- name: Fail when an instance of the API is not online
  ansible.builtin.assert:
    that: pm2.processes | selectattr('status', 'ne', 'online') | list | length == 0
    fail_msg: "{{ pm2.processes | map(attribute='status') | list }}"

- name: Read one app
  devbox.ops.pm2_info:
    name: api
"""

RETURN = r"""
processes:
  description: One entry per PM2 process, sorted by name and pm_id. Env values are masked.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: App name.
      type: str
    pm_id:
      description: PM2 process id.
      type: int
    status:
      description: PM2 status, such as C(online), C(stopped), C(errored), C(launching).
      type: str
    pid:
      description: OS process id, or null when not running.
      type: int
    restarts:
      description: PM2's restart counter (C(restart_time)).
      type: int
    unstable_restarts:
      description: Restarts that happened before the app's min_uptime.
      type: int
    exit_code:
      description: Exit code of the last exit (PM2's C(exit_code)), or null when it never exited.
      type: int
    uptime_s:
      description: Seconds since the process started, 0 unless online.
      type: int
    cpu:
      description: CPU percent.
      type: float
    memory:
      description: Resident memory in bytes.
      type: int
    exec_mode:
      description: C(fork) or C(cluster).
      type: str
    instances:
      description: Number of processes with this name.
      type: int
    cwd:
      description: Working directory PM2 resolved.
      type: str
    real_cwd:
      description:
        - The directory the process runs in, read from C(/proc/PID/cwd). The kernel resolved it when the
          process started, so a process started in C(APP/current) shows the release it runs, even after
          C(current) moved on. Null when the process is not running or its cwd cannot be read.
      type: str
    cwd_moved:
      description:
        - True when O(name)'s C(cwd) (as PM2 was given it, such as C(APP/current)) now resolves to another
          directory than RV(processes[].real_cwd). A symlink switched after the process started, so it still
          runs the old release. Null when either is unknown.
      type: bool
    script:
      description: Script path PM2 resolved.
      type: str
    interpreter:
      description: Interpreter PM2 uses.
      type: str
    out_file:
      description: Standard output log file.
      type: str
    error_file:
      description: Standard error log file.
      type: str
    managed:
      description: Whether devbox.ops started the app (its spec record is present).
      type: bool
    env:
      description: The app's env keys, each value masked as C(********).
      type: dict
  sample:
    - name: api
      pm_id: 0
      status: online
      pid: 4242
      restarts: 0
      unstable_restarts: 0
      uptime_s: 12
      cpu: 0
      memory: 52166656
      exec_mode: cluster
      instances: 1
      cwd: /home/devbox/project/current
      real_cwd: /home/devbox/project/releases/20261207T005221Z-7659dbe8
      cwd_moved: false
      script: /home/devbox/project/current/server.js
      interpreter: node
      out_file: /home/devbox/.pm2/logs/api-out-0.log
      error_file: /home/devbox/.pm2/logs/api-error-0.log
      managed: true
      env:
        PORT: "********"
names:
  description: The distinct app names, sorted.
  returned: always
  type: list
  elements: str
  sample: [api, worker]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import PM2Client
from ansible_collections.devbox.ops.plugins.module_utils.runner import AnsibleRunner


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            pm2_home=dict(type="path"),
            executable=dict(type="str", default="pm2"),
        ),
        supports_check_mode=True,
    )
    try:
        client = PM2Client(AnsibleRunner(module), executable=module.params["executable"],
                           pm2_home=module.params["pm2_home"])
        processes = client.jlist(module.params["name"])
    except DevboxOpsError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, processes=processes, names=sorted(set(p["name"] for p in processes)))


if __name__ == "__main__":
    main()
