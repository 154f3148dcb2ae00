#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: audit
short_description: Record an action in a devbox's audit log, or query that log by time, type, target, actor and result
version_added: 0.1.0
description:
  - The audit log is the devbox's JSON-lines event log (by default C(~/.devbox-ops/events.jsonl)), the one the
    watchdog and the deploy role write to. One event per line, with C(ts), C(host), C(type), C(target),
    C(result) and C(actor).
  - O(state=record) appends one event (deploys, rollbacks, restarts, scales and heals are recorded this way).
    Unless O(event) has an C(actor), the actor is the controller user (E(SUDO_USER), E(USER) or E(LOGNAME)
    of C(ansible-playbook)) and the controller's host name, plus the CI and AWX job ids found in the
    controller's environment (E(CI_JOB_ID), E(GITHUB_RUN_ID), E(AWX_JOB_ID), E(TOWER_JOB_ID), E(BUILD_ID))
    and in the C(awx_job_id) or C(tower_job_id) variable that AWX sets. The module's action plugin reads
    them on the controller, so the host's user never passes for the actor.
  - O(state=query) returns the events that pass every filter given, oldest first, at most the newest
    O(limit), together with a text table.
  - Fields whose name looks secret (password, token, key, env, ...) are masked before an event is written.
author:
  - devbox.ops contributors (@devbox-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: O(state=record) writes nothing in check mode and returns the event it would write.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  state:
    description:
      - V(query) reads the log, V(record) appends O(event) to it.
    type: str
    choices: [query, record]
    default: query
  event_log:
    description:
      - Path of the JSON-lines event log. Its directory is created when an event is recorded.
    type: path
    default: ~/.devbox-ops/events.jsonl
  event:
    description:
      - The event to record (required with O(state=record)). C(type) (a lower-case word such as V(deploy),
        V(rollback), V(restart), V(scale), V(heal)), C(target) (for example the app name) and C(result) (for
        example V(ok) or V(failed)) are required; C(actor), C(host) and C(ts) have defaults; any other field
        (C(message), C(instances), C(version)...) is kept.
    type: dict
  since:
    description:
      - Events at or after this time, an ISO 8601 time (V(2024-05-01T12:00:00Z)), epoch seconds, or a time ago
        (V(30m), V(2h), V(1d), V(1w)).
    type: str
  until:
    description:
      - Events at or before this time (same forms as O(since)).
    type: str
  type:
    description:
      - Only events of these types.
    type: list
    elements: str
  target:
    description:
      - Only events about these targets (app names, V(watchdog), ...).
    type: list
    elements: str
    aliases: [app]
  result:
    description:
      - Only events with these results (V(ok), V(success), V(failed), ...).
    type: list
    elements: str
  actor:
    description:
      - Only events of this actor, given as a user (V(alice), V(watchdog@devbox1)), V(user@host), or a CI/AWX
        job id (V(4711)).
    type: str
  limit:
    description:
      - At most this many events, the newest ones. V(0) means no limit.
    type: int
    default: 50
"""

EXAMPLES = r"""
- name: Record a restart done by this play
  devbox.ops.audit:
    state: record
    event:
      type: restart
      target: api
      result: ok

- name: What happened to api in the last day
  devbox.ops.audit:
    since: 1d
    app: [api]
  register: audit

- name: Print it
  ansible.builtin.debug:
    msg: "{{ audit.table }}"

- name: Failed deploys and rollbacks started by GitHub Actions run 4711
  devbox.ops.audit:
    type: [deploy, rollback]
    result: [failed]
    actor: "4711"
"""

RETURN = r"""
event:
  description: The event recorded (secret fields masked).
  returned: state=record
  type: dict
  sample:
    ts: "2024-05-01T12:00:00.000Z"
    host: devbox1
    type: restart
    target: api
    result: ok
    actor: {user: alice, host: laptop, github_run_id: "4711"}
events:
  description: The events found, oldest first.
  returned: state=query
  type: list
  elements: dict
count:
  description: Number of events found.
  returned: state=query
  type: int
skipped:
  description: Lines of the log that could not be read (a torn last line after a crash).
  returned: state=query
  type: int
table:
  description: The events as aligned text lines, a header first (TIME HOST TYPE TARGET RESULT ACTOR DETAIL).
  returned: state=query
  type: list
  elements: str
event_log:
  description: Path of the event log.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value
from ansible_collections.devbox.ops.plugins.module_utils.events import EventLog, event_from_dict, format_table, parse_moment

QUERY_ONLY = ("since", "until", "type", "target", "result", "actor")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["query", "record"], default="query"),
            event_log=dict(type="path", default="~/.devbox-ops/events.jsonl"),
            event=dict(type="dict"),
            since=dict(type="str"),
            until=dict(type="str"),
            type=dict(type="list", elements="str"),
            target=dict(type="list", elements="str", aliases=["app"]),
            result=dict(type="list", elements="str"),
            actor=dict(type="str"),
            limit=dict(type="int", default=50),
        ),
        required_if=[("state", "record", ("event",))],
        supports_check_mode=True,
    )
    params = module.params
    try:
        log = EventLog(params["event_log"])
        if params["state"] == "record":
            given = [k for k in QUERY_ONLY if params[k] not in (None, [])]
            if given:
                raise bad_value(given[0], params[given[0]], "is a query filter: not used with state=record")
            event = event_from_dict(params["event"])
            if not module.check_mode:
                log.append(event)
            module.exit_json(changed=True, event=event, event_log=log.path)
        if params["event"] is not None:
            raise bad_value("event", "<dict>", "only used with state=record")
        if params["limit"] < 0:
            raise bad_value("limit", params["limit"], "expected a whole number >= 0 (0: no limit)")
        for param in ("since", "until"):
            if params[param] is not None:
                parse_moment(params[param], param)  # a clear error before the log is opened
        found = log.query(since=params["since"], until=params["until"], types=params["type"],
                          target=params["target"], result=params["result"], actor=params["actor"],
                          limit=params["limit"] or None)
    except DevboxOpsError as exc:
        module.fail_json(msg=str(exc), changed=False)
    module.exit_json(changed=False, events=found, count=len(found), skipped=log.skipped, table=format_table(found),
                     event_log=log.path)


if __name__ == "__main__":
    main()
