#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: mongodb_ping
short_description: Check that a MongoDB server answers, with bounded retries and exponential backoff
version_added: 0.1.0
description:
  - Runs the C(ping) command on O(database), then C(buildInfo) for the server version, with the Python
    library C(pymongo).
  - An attempt that fails is retried up to O(retries) times. The first wait is O(backoff) seconds and each
    later wait doubles, capped at O(max_delay). Each attempt lasts at most about O(timeout) milliseconds.
  - The module only reads, so it never reports a change, and it runs in check mode too.
author:
  - devbox.ops contributors (@devbox-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The ping only reads, so it also runs in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - pymongo (Python library)
notes:
  - The failure message names the servers as C(host:port) (credentials stripped) and the reason of the last
    attempt, one of C(connection refused), C(timed out after <timeout>ms), C(cannot resolve host) or
    C(authentication failed). The password in O(uri) never appears in any output.
  - The longest run is about (O(retries) + 1) x O(timeout) plus the waits between attempts.
options:
  uri:
    description:
      - MongoDB connection string, V(mongodb://) or V(mongodb+srv://). Escape special characters of the
        user and password with C(%XX).
    type: str
    required: true
  timeout:
    description:
      - Milliseconds for server selection, connecting and each read, per attempt.
    type: int
    default: 2000
  retries:
    description:
      - Attempts after the first one when it fails. V(0) tries once.
    type: int
    default: 3
  backoff:
    description:
      - Seconds to wait before the first retry; doubled before each later retry.
    type: float
    default: 0.5
  max_delay:
    description:
      - Longest wait between two attempts, in seconds.
    type: float
    default: 5
  database:
    description:
      - Database to run C(ping) on (with credentials in O(uri), the one to check access to).
    type: str
    default: admin
"""

EXAMPLES = r"""
- name: Wait until the app's MongoDB answers
  devbox.ops.mongodb_ping:
    uri: "mongodb://app:{{ mongo_password | urlencode }}@127.0.0.1:27017/app?authSource=admin"
    database: app

- name: Fail fast when MongoDB is down
  devbox.ops.mongodb_ping:
    uri: mongodb://127.0.0.1:27017
    timeout: 500
    retries: 0
"""

RETURN = r"""
ok:
  description: Whether a ping succeeded.
  returned: always
  type: bool
attempts:
  description: Attempts made.
  returned: always
  type: int
  sample: 1
elapsed_s:
  description: Seconds spent, waits included.
  returned: always
  type: float
  sample: 0.012
server_version:
  description: Version reported by the server (null when not connected).
  returned: always
  type: str
  sample: 7.0.12
target:
  description: The servers, as C(host:port) list (C(<host> (SRV)) for V(mongodb+srv://)).
  returned: always
  type: str
  sample: 127.0.0.1:27017
reasons:
  description: Why each failed attempt failed, in order.
  returned: always
  type: list
  elements: str
  sample: [connection refused, connection refused]
msg:
  description: Summary; on failure the target, the last reason and the attempts.
  returned: always
  type: str
  sample: "mongodb 127.0.0.1:27017: connection refused (4 attempts in 11.5s)"
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.mongo import ping

try:
    import pymongo  # noqa: F401 pylint: disable=unused-import
except ImportError:
    PYMONGO_ERROR = traceback.format_exc()
else:
    PYMONGO_ERROR = None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            uri=dict(type="str", required=True, no_log=True),
            timeout=dict(type="int", default=2000),
            retries=dict(type="int", default=3),
            backoff=dict(type="float", default=0.5),
            max_delay=dict(type="float", default=5),
            database=dict(type="str", default="admin"),
        ),
        supports_check_mode=True,
    )
    if PYMONGO_ERROR:
        module.fail_json(msg=missing_required_lib("pymongo"), exception=PYMONGO_ERROR)
    params = module.params
    try:
        result = ping(params["uri"], timeout=params["timeout"], retries=params["retries"],
                      backoff=params["backoff"], max_delay=params["max_delay"], database=params["database"])
    except DevboxOpsError as exc:
        module.fail_json(msg=str(exc), changed=False, ok=False, attempts=0)
    error = result.pop("error")
    if not result["ok"]:
        module.fail_json(msg=error, changed=False, **result)
    module.exit_json(changed=False, msg="mongodb %s answered ping (server %s, %d attempt(s))"
                     % (result["target"], result["server_version"], result["attempts"]), **result)


if __name__ == "__main__":
    main()
