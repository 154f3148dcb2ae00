#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: host_facts
short_description: Read the few host facts the devbox.ops roles need, in one call
version_added: 0.1.0
description:
  - Reads who the module runs as, which Python runs it, whether root actions are possible (root, or
    C(sudo -n true) succeeds), where C(node) is, and where each given PM2 executable is and which version
    it is (from the package.json of its pm2 package, without starting Node.js or a PM2 daemon).
  - One module run instead of M(ansible.builtin.setup) plus a C(sudo -n true) command plus a PM2 lookup.
    Each module run costs a Python start on the host, so a fleet run that needs only these facts is
    cheaper with this module. The roles' C(facts.yml) uses it.
  - RV(ansible_facts.ansible_user_id) and RV(ansible_facts.ansible_python) are the facts M(ansible.builtin.setup)
    gives under those names, in the same shape, so C(ansible_user_id) and C(ansible_facts.python.executable)
    work after either.
  - Changes nothing.
author:
  - devbox.ops contributors (@devbox-ops)
options:
  pm2_executables:
    description:
      - PM2 executables to look up, each a command name (searched on C(PATH)) or a path.
    type: list
    elements: str
    default: [pm2]
  sudo:
    description:
      - Whether to find out if root actions are possible, which sets RV(ansible_facts.devbox_can_sudo).
      - As root that is true without a command. Otherwise the module runs C(sudo -n true), which never asks for
        a password.
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
    details: The module only reads, so check mode runs it in full.
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: posix
seealso:
  - module: ansible.builtin.setup
"""

EXAMPLES = r"""
- name: Read the user, Python, sudo, node and pm2 of the host
  devbox.ops.host_facts:
    pm2_executables: [pm2, /home/devbox/.local/pm2/node_modules/.bin/pm2]

- name: Show them
  ansible.builtin.debug:
    msg: >-
      {{ ansible_user_id }} runs {{ ansible_facts.python.executable }}; sudo {{ devbox_can_sudo }};
      pm2 {{ ansible_facts.devbox_host_pm2.pm2.version | default('none') }}
"""

RETURN = r"""
ansible_facts:
  description: The facts, set on the host.
  returned: always
  type: dict
  contains:
    ansible_user_id:
      description: Name of the user the module runs as (as M(ansible.builtin.setup) has it).
      type: str
      sample: devbox
    ansible_python:
      description: The Python that runs the modules (as M(ansible.builtin.setup) has it).
      type: dict
      sample:
        executable: /usr/bin/python3
        type: cpython
        has_sslcontext: true
        version: {major: 3, minor: 11, micro: 2, releaselevel: final, serial: 0}
        version_info: [3, 11, 2, final, 0]
    devbox_can_sudo:
      description: True as root, or when C(sudo -n true) succeeds. Only when O(sudo) is true.
      type: bool
      sample: true
    devbox_host_node:
      description: Absolute path of C(node) on C(PATH), null when there is none.
      type: str
      sample: /usr/bin/node
    devbox_host_pm2:
      description:
        - For each of O(pm2_executables), its absolute path (null when not found) and its PM2 version (null
          when it is not part of a pm2 package).
      type: dict
      sample:
        pm2: {path: /usr/bin/pm2, version: 6.0.8}
        /home/devbox/.local/pm2/node_modules/.bin/pm2: {path: null, version: null}
"""

import os
import platform
import pwd
import shutil
import ssl
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.errors import bad_value
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import installed_version


def python_facts():
    """The ``python`` fact the way ansible.builtin.setup reports it."""
    info = sys.version_info
    return {
        "executable": sys.executable,
        "type": platform.python_implementation().lower(),
        "has_sslcontext": hasattr(ssl, "SSLContext"),
        "version": {"major": info[0], "minor": info[1], "micro": info[2], "releaselevel": info[3], "serial": info[4]},
        "version_info": list(info),
    }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pm2_executables=dict(type="list", elements="str", default=["pm2"]),
            sudo=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    for exe in module.params["pm2_executables"]:
        if not exe.strip():
            module.fail_json(msg=str(bad_value("pm2_executables", exe, "each must be a command name or a path")))
    pm2 = dict((exe, installed_version(exe)) for exe in module.params["pm2_executables"])
    euid = os.geteuid()
    try:
        user = pwd.getpwuid(euid).pw_name
    except KeyError:
        user = str(euid)
    facts = {"ansible_user_id": user, "ansible_python": python_facts(), "devbox_host_node": shutil.which("node"),
             "devbox_host_pm2": pm2}
    if module.params["sudo"]:
        if euid == 0:
            facts["devbox_can_sudo"] = True
        elif shutil.which("sudo"):
            rc = module.run_command(["sudo", "-n", "true"])[0]
            facts["devbox_can_sudo"] = rc == 0
        else:
            facts["devbox_can_sudo"] = False
    module.exit_json(changed=False, ansible_facts=facts)


if __name__ == "__main__":
    main()
