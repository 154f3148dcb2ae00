#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: init_system
short_description: Detect what restarts apps after a devbox (container) restart
version_added: 0.1.0
description:
  - Reads C(/proc/1/comm), the C(comm) of every process and a few marker paths to tell which init
    system can start the apps at boot, the way devbox.ops installs boot persistence.
  - C(systemd) when PID 1 is systemd and C(/run/systemd/system) exists (a unit is installed).
  - C(s6) when PID 1 is C(s6-svscan) or s6-overlay is present (C(/run/s6), C(/package/admin/s6-overlay)),
    and C(/usr/start) exists; current Sealos images run every script in C(/usr/start) at boot.
  - C(cron) when a C(supercronic), C(cron) or C(crond) process runs. Vixie cron reads C(/etc/crontab) with
    a user column and supports C(@reboot). supercronic reads only the file it was started with, has no
    user column and no C(@reboot); see RV(init.crontab_format) and RV(init.cron_reboot).
  - C(none) otherwise, with a warning that nothing will restart the apps, and why.
  - Runs no command and changes nothing.
author:
  - devbox.ops contributors (@devbox-ops)
options:
  init_system:
    description:
      - V(auto) reports what was detected.
      - Any other value forces that kind in RV(init), for hosts where detection cannot see the truth (for
        example inside a PID namespace); RV(detected) still reports what was detected.
    type: str
    default: auto
    choices: [auto, systemd, s6, cron, none]
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The module only reads files, so check mode runs it in full.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - Reads C(/proc/*/comm) and C(/proc/<supercronic pid>/cmdline); runs no command.
seealso:
  - name: supercronic @reboot request
    description: supercronic has no @reboot support.
    link: https://github.com/aptible/supercronic/issues/30
"""

EXAMPLES = r"""
- name: Find out how the apps come back after a restart
  devbox.ops.init_system:
  register: boot

- name: Show the kind
  ansible.builtin.debug:
    msg: "{{ boot.init.kind }}: {{ boot.init.reason }}"

- name: Force s6 where detection cannot see PID 1
  devbox.ops.init_system:
    init_system: s6
"""

RETURN = r"""
init:
  description: The init system devbox.ops will use (the detected one, or the forced kind).
  returned: always
  type: dict
  contains:
    kind:
      description: One of V(systemd), V(s6), V(cron), V(none).
      type: str
      sample: s6
    pid1:
      description: The C(comm) of PID 1, or null when it cannot be read.
      type: str
      sample: s6-svscan
    cron:
      description: The running cron daemon (V(supercronic), V(cron), V(crond)), or null.
      type: str
      sample: supercronic
    crontab:
      description: The crontab file that daemon reads, or null.
      type: str
      sample: /etc/crontab
    crontab_format:
      description:
        - V(system) (Vixie cron C(/etc/crontab), with a user column) or V(supercronic) (5 fields, no user
          column), or null.
      type: str
      sample: system
    cron_reboot:
      description: Whether C(@reboot) lines run (false for supercronic and when no cron runs).
      type: bool
      sample: true
    boot_dir:
      description: Where boot persistence is installed (V(/usr/start) for s6, V(/etc/systemd/system) for
        systemd), or null.
      type: str
      sample: /usr/start
    reason:
      description: Why this kind was chosen; for V(none), why nothing will restart the apps.
      type: str
      sample: PID 1 is dumb-init and no cron runs (looked for supercronic, cron, crond)
detected:
  description: What detection found, with the same keys as RV(init); equal to RV(init) when
    O(init_system=auto).
  returned: always
  type: dict
  sample: {"kind": "none", "pid1": "dumb-init", "cron": null, "crontab": null, "crontab_format": null,
           "cron_reboot": false, "boot_dir": null, "reason": "PID 1 is dumb-init and no cron runs"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.initsys import CHOICES, detect, resolve


def main():
    module = AnsibleModule(
        argument_spec=dict(init_system=dict(type="str", default="auto", choices=list(CHOICES))),
        supports_check_mode=True,
    )
    try:
        detected = detect()
        init = resolve(module.params["init_system"], detected)
    except DevboxOpsError as exc:
        module.fail_json(msg=str(exc))
    if init["kind"] == "none":
        module.warn(init["reason"])
    module.exit_json(changed=False, init=init, detected=detected)


if __name__ == "__main__":
    main()
