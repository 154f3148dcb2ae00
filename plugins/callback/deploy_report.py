# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: deploy_report
type: aggregate
short_description: Run summary per host (counts, duration, deployed version), a JSON run record and notifications
version_added: 0.2.0
description:
  - At the end of every playbook, prints one table with a line per host - ok, changed, failed, unreachable,
    skipped and rescued tasks, the duration from the host's first task to its last, and the app, version and
    result where a deploy ran (the C(devbox_deploy_result) fact the C(devbox.ops.deploy) role sets).
  - With O(output_dir), writes the run record as JSON - playbook, start and end, per-host figures, which hosts
    run which version, the actor (controller user and host, CI and AWX job ids) and the notification results.
  - With O(notify), sends the run's outcome through the devbox.ops events engine (generic JSON webhook, Slack,
    Feishu, DingTalk, WeCom or email), when O(notify_on) says so.
  - Secrets never reach the table, the record or a notification - events are redacted by the events engine,
    and notifiers are named by their public URL only (no credentials, query or token path segments).
author:
  - devbox.ops contributors (@devbox-ops)
requirements:
  - enable it in C(callbacks_enabled) (ansible.cfg) or C(ANSIBLE_CALLBACKS_ENABLED=devbox.ops.deploy_report)
  - the Python library C(requests) on the controller for webhook notifications
options:
  output_dir:
    description:
      - Directory where the JSON run record is written (C(PLAYBOOK-YYYYmmddTHHMMSSZ-PID.json), mode 0600).
        It is created when missing. No record when not set.
    type: path
    ini:
      - section: devbox_deploy_report
        key: output_dir
    env:
      - name: DEVBOX_DEPLOY_REPORT_DIR
    vars:
      - name: devbox_deploy_report_dir
  notify:
    description:
      - Notifiers, as the events engine (M(devbox.ops.notify)) takes them - a list of dicts with C(kind)
        (generic, slack, feishu, dingtalk, wecom, email), C(url) and the kind's options.
      - From the environment or ansible.cfg, give the list as JSON.
      - URLs and secrets are never printed nor recorded.
    type: raw
    default: []
    ini:
      - section: devbox_deploy_report
        key: notify
    env:
      - name: DEVBOX_DEPLOY_REPORT_NOTIFY
    vars:
      - name: devbox_deploy_report_notify
  notify_on:
    description:
      - When to notify - V(always), V(failure) (a host failed or was unreachable) or V(change) (a failure, or a
        host reported a change).
    type: str
    default: failure
    choices: [always, failure, change]
    ini:
      - section: devbox_deploy_report
        key: notify_on
    env:
      - name: DEVBOX_DEPLOY_REPORT_NOTIFY_ON
    vars:
      - name: devbox_deploy_report_notify_on
notes:
  - Variables (C(-e devbox_deploy_report_dir=...)) are read from the extra vars when each play starts.
  - The duration of a host runs from the start of its first task to the end of its last one.
"""

EXAMPLES = r"""
# ansible.cfg: a table at the end of every run, a JSON record per run, Slack on failure
# [defaults]
# callbacks_enabled = devbox.ops.deploy_report
#
# [devbox_deploy_report]
# output_dir = ~/.cache/devbox-ops/runs
# notify_on = failure
# notify = [{"kind": "slack", "url": "https://hooks.slack.com/services/T000/B000/XXXX"}]

# One run, from the command line:
# ANSIBLE_CALLBACKS_ENABLED=devbox.ops.deploy_report DEVBOX_DEPLOY_REPORT_DIR=/tmp/runs \
#   ansible-playbook -i inventory.yml devbox.ops.deploy -e app=api -e version=v2
"""

RETURN = r"""
# The JSON run record written to output_dir (one file per run, mode 0600).
playbook:
  description: Base name of the playbook file.
  type: str
  sample: deploy.yml
started:
  description: UTC start of the run, ISO 8601.
  type: str
  sample: "2026-12-05T21:40:12Z"
ended:
  description: UTC end of the run, ISO 8601.
  type: str
duration_s:
  description: Wall time of the run in seconds.
  type: float
result:
  description: V(failed) when a host failed or was unreachable, else V(success).
  type: str
changed:
  description: Whether any host reported a change.
  type: bool
actor:
  description: Who ran it - controller user and host, and CI/AWX job ids when present.
  type: dict
hosts:
  description:
    - Per host - ok, changed, failed, unreachable, skipped, rescued and ignored task counts, duration_s, and
      app, version, release and deploy_result where the deploy role ran.
  type: dict
versions:
  description: Which hosts run which version, keyed by C(APP VERSION).
  type: dict
  sample: {"node-web v2": ["devbox-01", "devbox-02"]}
notifications:
  description: One result per notifier (ok, kind, public URL or error); present when notifications were due.
  type: list
  elements: dict
"""

import datetime
import json
import os
import socket
import time

from ansible.errors import AnsibleError
from ansible.plugins.callback import CallbackBase

from ansible_collections.devbox.ops.plugins.module_utils import events
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError

COUNTS = ("ok", "changed", "failures", "unreachable", "skipped", "rescued", "ignored")
FACT = "devbox_deploy_result"


def _plain(value):
    """JSON-ready copy of a fact value (ansible-core may wrap strings and dicts)."""
    return json.loads(json.dumps(value, default=str))


def _iso(stamp):
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "devbox.ops.deploy_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.playbook = None
        self.started = time.time()
        self.times = {}  # host -> [first, last]
        self.deploys = {}  # host -> last devbox_deploy_result
        self.extra_vars = {}

    # ------------------------------------------------------------------ events

    def v2_playbook_on_start(self, playbook):
        self.playbook = getattr(playbook, "_file_name", None) or "playbook"
        self.started = time.time()

    def v2_playbook_on_play_start(self, play):
        try:
            self.extra_vars = dict(play.get_variable_manager().extra_vars)
        except (AttributeError, TypeError):
            self.extra_vars = {}
        self.set_options(var_options=self.extra_vars)

    def _seen(self, host):
        now = time.time()
        span = self.times.setdefault(host, [now, now])
        span[1] = now

    def v2_runner_on_start(self, host, task):
        self._seen(host.get_name())

    def _result(self, result, *args, **kwargs):
        host = result._host.get_name() if hasattr(result, "_host") else result.host.get_name()
        self._seen(host)
        data = getattr(result, "result", None)
        if data is None:
            data = result._result
        facts = data.get("ansible_facts") or {}
        if FACT in facts and isinstance(facts[FACT], dict):
            self.deploys[host] = _plain(facts[FACT])

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_skipped = v2_runner_on_unreachable = _result

    # ------------------------------------------------------------------ the report

    def _record(self, stats):
        hosts = {}
        for host in sorted(stats.processed):
            counts = stats.summarize(host)
            first, last = self.times.get(host, [self.started, self.started])
            deploy = self.deploys.get(host, {})
            hosts[host] = dict(
                ok=counts["ok"], changed=counts["changed"], failed=counts["failures"],
                unreachable=counts["unreachable"], skipped=counts["skipped"], rescued=counts["rescued"],
                ignored=counts["ignored"], duration_s=round(last - first, 2),
                app=deploy.get("app"), version=deploy.get("version"), release=deploy.get("release"),
                deploy_result=deploy.get("result"))
        versions = {}
        for host, figures in hosts.items():
            if figures["app"]:
                key = "%s %s" % (figures["app"], figures["version"])
                versions.setdefault(key, []).append(host)
        failed = any(h["failed"] or h["unreachable"] for h in hosts.values())
        ended = time.time()
        awx = self.extra_vars.get("awx_job_id") or self.extra_vars.get("tower_job_id")
        return dict(
            playbook=os.path.basename(self.playbook or "playbook"), playbook_path=self.playbook,
            started=_iso(self.started), ended=_iso(ended), duration_s=round(ended - self.started, 2),
            result="failed" if failed else "success",
            changed=any(h["changed"] for h in hosts.values()),
            actor=self._actor(awx), hosts=hosts, versions=versions)

    @staticmethod
    def _actor(awx_job_id):
        found = dict(events.Actor.detect(), host=socket.gethostname())
        if awx_job_id not in (None, ""):
            found["awx_job_id"] = str(awx_job_id)
        return found

    def _table(self, record):
        rows = [("HOST", "OK", "CHANGED", "FAILED", "UNREACH", "SKIPPED", "RESCUED", "DURATION", "VERSION")]
        for host, h in record["hosts"].items():
            version = "-"
            if h["app"]:
                version = "%s %s%s" % (h["app"], h["version"] or "?",
                                       " (%s)" % h["deploy_result"] if h["deploy_result"] else "")
            rows.append((host, str(h["ok"]), str(h["changed"]), str(h["failed"]), str(h["unreachable"]),
                         str(h["skipped"]), str(h["rescued"]), "%.1fs" % h["duration_s"], version))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
        head = "DEPLOY REPORT %s: %s in %.1fs" % (record["playbook"], record["result"], record["duration_s"])
        return [head] + lines + ["version %s: %s" % (k, ", ".join(v)) for k, v in sorted(record["versions"].items())]

    def _notifiers(self):
        notify = self.get_option("notify") or []
        if isinstance(notify, str):
            try:
                notify = json.loads(notify)
            except ValueError:
                raise DevboxOpsError("notify: expected a JSON list of notifier dicts", param="notify")
        if isinstance(notify, dict):
            notify = [notify]
        return _plain(notify)

    def _notify(self, record):
        when = self.get_option("notify_on")
        wanted = (when == "always" or record["result"] == "failed"
                  or when == "change" and record["changed"])
        notifiers = self._notifiers()
        if not notifiers or not wanted:
            return []
        failed = sorted(h for h, f in record["hosts"].items() if f["failed"] or f["unreachable"])
        message = "%d host(s), %d failed%s; %s" % (
            len(record["hosts"]), len(failed), " (%s)" % ", ".join(failed) if failed else "",
            "; ".join("%s on %s" % (k, ", ".join(v)) for k, v in sorted(record["versions"].items())) or "no deploy")
        event = events.make_event("playbook", record["playbook"], record["result"], actor=record["actor"],
                                  host=socket.gethostname(), message=message, started=record["started"],
                                  duration_s=record["duration_s"], hosts=record["hosts"],
                                  versions=record["versions"])
        return events.notify_all(notifiers, event)

    def _write(self, record):
        directory = self.get_option("output_dir")
        if not directory:
            return None
        os.makedirs(directory, exist_ok=True)
        stem = os.path.splitext(record["playbook"])[0]
        stamp = record["started"].replace("-", "").replace(":", "")
        path = os.path.join(directory, "%s-%s-%d.json" % (stem, stamp, os.getpid()))
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(events.redact(record), handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
        os.rename(path + ".tmp", path)
        return path

    def v2_playbook_on_stats(self, stats):
        record = self._record(stats)
        try:
            record["notifications"] = self._notify(record)
        except (DevboxOpsError, AnsibleError) as exc:
            record["notifications"] = [{"ok": False, "error": str(exc)}]
            self._display.warning("deploy_report: %s" % exc)
        for sent in record["notifications"]:
            if not sent.get("ok"):
                self._display.warning("deploy_report: notification failed: %s" % sent.get("error"))
        for line in self._table(record):
            self._display.display(line)
        try:
            path = self._write(record)
        except OSError as exc:
            self._display.warning("deploy_report: cannot write the run record in %s: %s"
                                  % (self.get_option("output_dir"), exc))
            path = None
        if path:
            self._display.display("deploy_report: run record %s" % path)
