# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action plugin of devbox.ops.audit: with state=record and no actor in the event, the actor is read HERE, on the
controller (its user, host name, CI/AWX job ids from its environment and the awx_job_id/tower_job_id
variable), then the module runs on the host as usual."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket

from ansible.plugins.action import ActionBase

from ansible_collections.devbox.ops.plugins.module_utils.events import actor


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        event = args.get("event")
        if args.get("state", "query") == "record" and isinstance(event, dict) and not event.get("actor"):
            job = task_vars.get("awx_job_id", task_vars.get("tower_job_id"))
            if isinstance(job, str) and "{{" in job:
                job = self._templar.template(job)
            args["event"] = dict(event, actor=actor(host=socket.gethostname(), awx_job_id=job))
        result.update(self._execute_module(module_name="devbox.ops.audit", module_args=args, task_vars=task_vars))
        return result
