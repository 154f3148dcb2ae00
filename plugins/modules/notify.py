#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: notify
short_description: Send an event to webhooks (generic, Slack, Feishu, DingTalk, WeCom) and email, and log it
version_added: 0.1.0
description:
  - Builds one event (type, target, result and any extra fields, plus C(ts), C(host) and C(actor)) and sends
    it to every notifier in O(notifiers). One failing notifier does not stop the others.
  - Webhooks are sent as one HTTP POST of JSON with the Python library C(requests); email is sent with
    Python's C(smtplib).
  - With O(event_log) the event is also appended to a JSON-lines event and audit log, together with the
    outcome of each notifier.
  - Fields of the event whose name looks secret (password, token, secret, key, env, ...) are masked, and so
    are passwords in URLs and secret-looking query parameters, before anything is sent or written.
author:
  - devbox.ops contributors (@devbox-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: In check mode nothing is sent or written; RV(results) holds the payload each notifier would get.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - requests (Python library, for webhook notifiers)
notes:
  - Webhook URLs, O(notifiers[].secret), O(notifiers[].headers) and O(notifiers[].password) are never
    returned. Results and errors name a webhook by its URL without credentials, query string and fragment,
    with every path segment of 16 characters or more masked (Slack and Feishu keep their token in the path,
    DingTalk and WeCom in the query).
  - Chat APIs that answer HTTP 200 with an error code in the body (Feishu C(code), DingTalk and WeCom
    C(errcode)) count as failures.
  - The actor is the user running the module (E(SUDO_USER), E(USER), E(LOGNAME) or the password database)
    plus CI and AWX job ids found in E(CI_JOB_ID), E(GITHUB_RUN_ID), E(AWX_JOB_ID), E(TOWER_JOB_ID) and
    E(BUILD_ID), unless O(event) has an C(actor).
options:
  notifiers:
    description:
      - Where to send the event.
    type: list
    elements: dict
    default: []
    suboptions:
      kind:
        description:
          - V(generic) posts the event itself as JSON. V(slack), V(feishu), V(dingtalk) and V(wecom) post
            the text message format of each service. V(email) sends a mail over SMTP.
        type: str
        required: true
        choices: [generic, slack, feishu, dingtalk, wecom, email]
      url:
        description:
          - Webhook URL (required for every kind but V(email)). Treated as a secret.
        type: str
      secret:
        description:
          - Signing secret. V(dingtalk) adds the C(timestamp) and C(sign) query parameters, V(feishu) the
            C(timestamp) and C(sign) body fields (HMAC-SHA256, as both services document).
        type: str
      headers:
        description:
          - Extra HTTP headers (for example an C(Authorization) token for V(generic)). Values are secrets.
        type: dict
      timeout:
        description:
          - Seconds to wait for the connection and for the answer.
        type: float
        default: 10
      blocks:
        description:
          - V(slack) only, add Block Kit blocks (the text plus actor, time, version and step) to the message.
        type: bool
        default: false
      host:
        description:
          - SMTP server (V(email)).
        type: str
      port:
        description:
          - SMTP port (V(email)). When not set, V(465) with O(notifiers[].ssl), V(587) with
            O(notifiers[].starttls), else V(25).
        type: int
      starttls:
        description:
          - Upgrade the SMTP connection with STARTTLS before logging in (V(email)). Certificates are verified.
        type: bool
        default: false
      ssl:
        description:
          - Connect with implicit TLS, SMTPS (V(email)). Certificates are verified.
        type: bool
        default: false
      username:
        description:
          - SMTP login (V(email)).
        type: str
      password:
        description:
          - SMTP password (V(email)).
        type: str
      from:
        description:
          - Sender address (V(email)). When not set, C(devbox-ops@<hostname>).
        type: str
      to:
        description:
          - Recipient addresses (required for V(email)).
        type: list
        elements: str
  event:
    description:
      - The event. C(type) (a lower-case word such as V(deploy), V(rollback), V(restart), V(scale), V(heal),
        V(alert), V(backup), V(restore)), C(target) (what it is about, for example the app name) and C(result)
        (for example V(ok) or V(failed)) are required. C(message), C(version), C(step) and C(host) show in the
        text line; any other field is kept in the JSON.
      - C(host) defaults to the host name of the machine running the module, C(ts) to now.
    type: dict
    required: true
  event_log:
    description:
      - Path of a JSON-lines event log to append the event to (with the outcome of each notifier). The
        directory is created when missing.
    type: path
  fail_on_error:
    description:
      - Fail when any notifier failed. When V(false), failures only give warnings.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Tell the team a deploy failed
  devbox.ops.notify:
    event:
      type: deploy
      target: api
      result: failed
      step: verify
      version: 1.2.3
      host: "{{ inventory_hostname }}"
    notifiers:
      - kind: slack
        url: "{{ slack_webhook_url }}"
      - kind: dingtalk
        url: "https://oapi.dingtalk.com/robot/send?access_token={{ dingtalk_token }}"
        secret: "{{ dingtalk_secret }}"
    event_log: /home/devbox/.devbox-ops/events.jsonl
  delegate_to: localhost

- name: Mail the on-call address, and fail when the mail cannot be sent
  devbox.ops.notify:
    event:
      type: backup
      target: mongodb
      result: ok
      message: nightly snapshot done
    notifiers:
      - kind: email
        host: smtp.example.com
        starttls: true
        username: alerts@example.com
        password: "{{ smtp_password }}"
        to: [oncall@example.com]
    fail_on_error: true

- name: Only record an audit event
  devbox.ops.notify:
    event:
      type: restart
      target: worker
      result: ok
    event_log: /home/devbox/.devbox-ops/events.jsonl
"""

RETURN = r"""
msg:
  description: Summary.
  returned: always
  type: str
  sample: "2 notifier(s): 1 sent, 1 failed"
event:
  description: The event as sent and logged (secret fields masked).
  returned: always
  type: dict
  sample:
    ts: "2024-05-01T12:00:00.000Z"
    host: devbox1
    type: deploy
    target: api
    result: failed
    actor: {user: alice, ci_job_id: "4711"}
    step: verify
    version: 1.2.3
text:
  description: The one-line text sent to chat services and used as mail subject.
  returned: always
  type: str
  sample: "[devbox.ops] deploy api on devbox1: failed at step verify (v1.2.3)"
results:
  description: One entry per notifier, in order.
  returned: always
  type: list
  elements: dict
  contains:
    kind:
      description: Notifier kind.
      type: str
      sample: slack
    target:
      description: The webhook URL without secrets, or C(smtp://host:port).
      type: str
      sample: "https://hooks.slack.com/services/T0001/B0001/********"
    ok:
      description: Whether it was sent (null in check mode).
      type: bool
    status:
      description: HTTP status of the answer (null for email, or when no answer came).
      type: int
      sample: 200
    error:
      description: What went wrong (null when sent).
      type: str
      sample: "dingtalk notifier https://oapi.dingtalk.com/robot/send: answered HTTP 500"
    elapsed_s:
      description: Seconds spent.
      type: float
    payload:
      description: The body that would be posted (email, C(subject) and C(text)).
      type: dict
      returned: check mode
event_log:
  description: Path of the event log written to (null when O(event_log) is not set or in check mode).
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.events import (
    KINDS, EventLog, build_payload, check_notifier, event_from_dict, format_text, notifier_target, notify_all)


def main():
    notifier_options = dict(
        kind=dict(type="str", required=True, choices=list(KINDS)),
        url=dict(type="str", no_log=True),
        secret=dict(type="str", no_log=True),
        headers=dict(type="dict", no_log=True),
        timeout=dict(type="float", default=10),
        blocks=dict(type="bool", default=False),
        host=dict(type="str"),
        port=dict(type="int"),
        starttls=dict(type="bool", default=False),
        ssl=dict(type="bool", default=False),
        username=dict(type="str"),
        password=dict(type="str", no_log=True),
        to=dict(type="list", elements="str"),
    )
    notifier_options["from"] = dict(type="str")
    module = AnsibleModule(
        argument_spec=dict(
            notifiers=dict(type="list", elements="dict", default=[], options=notifier_options),
            event=dict(type="dict", required=True),
            event_log=dict(type="path"),
            fail_on_error=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        event = event_from_dict(params["event"])
        notifiers = [check_notifier(n, "notifiers[%d]" % i) for i, n in enumerate(params["notifiers"])]
        log = EventLog(params["event_log"]) if params["event_log"] else None
        if module.check_mode:
            results = [{"kind": n["kind"], "target": notifier_target(n), "ok": None, "status": None,
                        "error": None, "elapsed_s": 0.0,
                        "payload": build_payload(n["kind"], event, blocks=bool(n.get("blocks")))}
                       for n in notifiers]
            module.exit_json(changed=bool(notifiers or log), msg="check mode: %d notifier(s) would be sent to"
                             % len(notifiers), event=event, text=format_text(event), results=results,
                             event_log=None)
        results = notify_all(notifiers, event)
        if log:
            log.append(dict(event, notified=[dict(kind=r["kind"], target=r["target"], ok=r["ok"])
                                             for r in results]))
    except DevboxOpsError as exc:
        module.fail_json(msg=str(exc), changed=False, results=[])
    failed = [r for r in results if not r["ok"]]
    sent = len(results) - len(failed)
    msg = "%d notifier(s): %d sent, %d failed" % (len(results), sent, len(failed))
    outcome = dict(changed=bool(sent or log), event=event, text=format_text(event), results=results,
                   event_log=params["event_log"] if log else None)
    if failed and params["fail_on_error"]:
        module.fail_json(msg="%s: %s" % (msg, "; ".join(r["error"] for r in failed)), **outcome)
    for result in failed:
        module.warn(result["error"])
    module.exit_json(msg=msg, **outcome)


if __name__ == "__main__":
    main()
