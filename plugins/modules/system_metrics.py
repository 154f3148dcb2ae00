#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: system_metrics
short_description: CPU, load, memory, disk and per-app usage of a devbox, measured against its container limits
version_added: 0.1.0
description:
  - Collects CPU percent, load average, memory, disk use per mount, the top processes and the usage
    of each PM2 app, and gives each metric a level (C(ok), C(warning) or C(critical)) from thresholds.
  - Inside a container C(/proc/meminfo) and C(free) describe the host. The memory and CPU limits come
    from the cgroup files of the module's own process instead (cgroup v2 C(memory.max), C(cpu.max);
    cgroup v1 C(memory.limit_in_bytes), C(cpu.cfs_quota_us)), walking up to the smallest limit set
    on any parent cgroup.
  - Memory used is the working set, as C(kubectl top) counts it, the cgroup's usage minus its
    C(inactive_file) page cache. Without a cgroup limit below the host's memory, the host's total
    and used memory are reported instead; the C(limit_source) of RV(metrics.memory) says which.
  - Process entries hold the pid, program name, CPU and RSS only; command lines, which can hold
    secrets, are never read.
author:
  - devbox.ops contributors (@devbox-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - devbox.ops.pm2
attributes:
  check_mode:
    support: full
    details: Read only; runs the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  thresholds:
    description:
      - Warning and critical thresholds per metric. A metric reaches a level when its value is at or
        above the threshold. An option left out keeps its default.
      - Percent thresholds must be between 0 and 100, and no threshold may be negative or have its
        O(thresholds.cpu.warning) above its critical value.
    type: dict
    suboptions:
      cpu:
        description:
          - CPU percent of the container's CPU limit (of all cores without one).
          - Defaults to C(warning=80), C(critical=95).
        type: dict
        suboptions:
          warning:
            description: Warning threshold, a number.
            type: raw
          critical:
            description: Critical threshold, a number.
            type: raw
      memory:
        description:
          - Memory percent of the container's memory limit (of the host's memory without one).
          - Defaults to C(warning=80), C(critical=95).
        type: dict
        suboptions:
          warning:
            description: Warning threshold, a number.
            type: raw
          critical:
            description: Critical threshold, a number.
            type: raw
      disk:
        description:
          - Percent used of each reported mount; the metric's level is that of the fullest mount.
          - Defaults to C(warning=85), C(critical=95).
        type: dict
        suboptions:
          warning:
            description: Warning threshold, a number.
            type: raw
          critical:
            description: Critical threshold, a number.
            type: raw
      load_per_core:
        description:
          - The 5-minute load average divided by the host's cores. The load average is not
            namespaced, so inside a container it is the host's.
          - Defaults to C(warning=1.5), C(critical=3).
        type: dict
        suboptions:
          warning:
            description: Warning threshold, a number.
            type: raw
          critical:
            description: Critical threshold, a number.
            type: raw
  disk_paths:
    description:
      - Report the filesystems holding these absolute paths (any type, C(tmpfs) included).
      - When omitted, every mounted filesystem with data is reported once (pseudo filesystems, C(tmpfs),
        C(squashfs) and further bind mounts of the same filesystem are left out).
    type: list
    elements: path
  top:
    description:
      - Number of processes in each top list (by CPU and by RSS). V(0) leaves the lists empty.
    type: int
    default: 5
  interval:
    description:
      - Seconds over which CPU use is sampled (host, cgroup and every process, in one window).
    type: float
    default: 0.5
  include_pm2:
    description:
      - Sum the CPU and RSS of each PM2 app's processes and their children into RV(metrics.pm2).
      - Only when the PM2 daemon of O(pm2_home) is running (its C(pm2.pid) names a live PM2 process);
        the module never starts a daemon, and reports an empty list without one.
    type: bool
    default: true
  cgroup_root:
    description:
      - Where the cgroup filesystem is mounted. Meant for tests with a fixture tree.
    type: path
    default: /sys/fs/cgroup
notes:
  - Reads C(/proc/self/cgroup), files under O(cgroup_root), C(/proc) through psutil, and runs
    C(pm2 jlist) only when O(include_pm2) is set and the PM2 daemon runs.
  - Needs the Python library C(psutil) on the host.
  - Each metric at C(warning) or C(critical) is also shown as an Ansible warning.
seealso:
  - module: devbox.ops.pm2_info
"""

EXAMPLES = r"""
- name: Read the devbox's resources against its container limits
  devbox.ops.system_metrics:
  register: res

- name: Fail when anything is critical
  ansible.builtin.assert:
    that: res.level != 'critical'
    fail_msg: "{{ res.alerts | map(attribute='message') | list }}"

- name: Stricter memory thresholds, one data disk, no PM2
  devbox.ops.system_metrics:
    thresholds:
      memory:
        warning: 70
        critical: 90
    disk_paths:
      - /home/devbox
    include_pm2: false

- name: Per-app usage from the devbox user's PM2
  devbox.ops.system_metrics:
    pm2_home: /home/devbox/.pm2
    top: 3
  register: res
"""

RETURN = r"""
metrics:
  description: What was measured.
  returned: always
  type: dict
  contains:
    cpu:
      description:
        - C(percent) of C(cores) used over the sample window, C(limit_source) (C(cgroup) when a CPU
          limit below the host's cores is set and measured from the cgroup's CPU time, else C(host))
          and C(host_cores).
      type: dict
      sample: {percent: 12.5, cores: 1.5, limit_source: cgroup, host_cores: 8}
    load:
      description: Load averages C(load1), C(load5), C(load15), the host's C(cores), and C(per_core).
      type: dict
      sample: {load1: 0.4, load5: 0.3, load15: 0.2, cores: 2, per_core: {load1: 0.2, load5: 0.15, load15: 0.1}}
    memory:
      description:
        - C(used) (working set), C(limit), C(available), C(percent), C(limit_source) (C(cgroup) or
          C(host)), and C(host_total), all in bytes except the percent.
      type: dict
      sample: {used: 104857600, limit: 268435456, available: 163577856, percent: 39.1,
               limit_source: cgroup, host_total: 25276502016}
    disk:
      description: One entry per filesystem with C(path), C(mount), C(device), C(fstype), C(total), C(used), C(free), C(percent).
      type: list
      elements: dict
      sample: [{path: /, mount: /, device: /dev/vda, fstype: ext4, total: 270553174016, used: 23905837056,
                free: 85038456832, percent: 21.9}]
    top:
      description: C(cpu) and C(rss), the top processes by each, with C(pid), C(name), C(cpu) (percent of one core) and C(rss).
      type: dict
      sample: {cpu: [{pid: 4242, name: node, cpu: 12.0, rss: 52166656}], rss: [{pid: 4242, name: node, cpu: 12.0, rss: 52166656}]}
    pm2:
      description:
        - One entry per PM2 app with C(name), C(instances), C(online), C(processes) (the app's processes
          and their children), C(cpu) and C(rss), their sums. Null when O(include_pm2=false).
      type: list
      elements: dict
      sample: [{name: api, instances: 2, online: 2, processes: 3, cpu: 4.1, rss: 120586240}]
    cgroup:
      description:
        - What the cgroup files said, C(version) (1, 2 or null), C(cgroup), C(memory_limit),
          C(memory_usage), C(memory_inactive_file), C(memory_used), C(cpu_limit_cores) and C(sources).
      type: dict
levels:
  description: The level of each metric (C(cpu), C(memory), C(disk), C(load_per_core)).
  returned: always
  type: dict
  sample: {cpu: ok, memory: warning, disk: ok, load_per_core: ok}
level:
  description: The worst level of all metrics.
  returned: always
  type: str
  sample: warning
alerts:
  description:
    - The checks at C(warning) or C(critical), with C(metric), C(target) (a mount for disk), C(value),
      C(level), C(warning), C(critical) and C(message). Each message is also issued as a warning.
  returned: always
  type: list
  elements: dict
  sample: [{metric: memory, target: memory, value: 91.0, level: warning, warning: 80.0, critical: 95.0,
            message: "memory warning: 91.0% (233.0 MiB of 256.0 MiB, cgroup limit); warning at 80, critical at 95"}]
checks:
  description: Every check, C(ok) ones included, in the format of RV(alerts).
  returned: always
  type: list
  elements: dict
pm2_daemon:
  description: Whether the PM2 daemon of O(pm2_home) was running (null when O(include_pm2=false)).
  returned: always
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.metrics import check_thresholds, collect, evaluate
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import PM2Client, daemon_running
from ansible_collections.devbox.ops.plugins.module_utils.runner import AnsibleRunner

# raw, so that the engine's message names the parameter and the value (Ansible's float error omits it)
LEVEL_OPTIONS = dict(warning=dict(type="raw"), critical=dict(type="raw"))
METRIC_OPTION = dict(type="dict", options=LEVEL_OPTIONS)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            thresholds=dict(type="dict", options=dict(
                cpu=METRIC_OPTION, memory=METRIC_OPTION, disk=METRIC_OPTION, load_per_core=METRIC_OPTION)),
            disk_paths=dict(type="list", elements="path"),
            top=dict(type="int", default=5),
            interval=dict(type="float", default=0.5),
            include_pm2=dict(type="bool", default=True),
            pm2_home=dict(type="path"),
            executable=dict(type="str", default="pm2"),
            cgroup_root=dict(type="path", default="/sys/fs/cgroup"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        thresholds = check_thresholds(params["thresholds"])  # bad thresholds fail before any work
        processes, daemon = None, None
        if params["include_pm2"]:
            daemon = daemon_running(params["pm2_home"])
            processes = []
            if daemon:
                client = PM2Client(AnsibleRunner(module), executable=params["executable"],
                                   pm2_home=params["pm2_home"])
                processes = client.jlist()
        metrics = collect(pm2_processes=processes, disk_paths=params["disk_paths"], top=params["top"],
                          interval=params["interval"], cgroup_root=params["cgroup_root"])
        result = evaluate(metrics, thresholds)
    except DevboxOpsError as exc:
        module.fail_json(msg=str(exc))
    for message in result["warnings"]:
        module.warn(message)
    module.exit_json(changed=False, metrics=metrics, levels=result["levels"], level=result["level"],
                     alerts=[c for c in result["checks"] if c["level"] != "ok"], checks=result["checks"],
                     pm2_daemon=daemon)


if __name__ == "__main__":
    main()
