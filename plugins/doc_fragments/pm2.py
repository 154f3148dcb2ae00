# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """``devbox.ops.pm2``: how to reach PM2. ``devbox.ops.pm2.app``: the options of one PM2 app."""

    DOCUMENTATION = r"""
options:
  pm2_home:
    description:
      - The C(PM2_HOME) directory of the PM2 daemon to talk to; set for every C(pm2) command run.
      - When omitted, PM2 uses its own default (C(~/.pm2) of the remote user).
    type: path
  executable:
    description:
      - The C(pm2) command name (looked up on C(PATH)) or an absolute path to it.
    type: str
    default: pm2
"""

    APP = r"""
options:
  script:
    description:
      - The program PM2 runs. A relative path needs O(cwd).
      - Required to start an app that does not exist yet; without it the module only controls the
        state (and O(instances)) of an existing app.
    type: str
  args:
    description:
      - Arguments for O(script), as a list, or a string split like shell words (no shell runs it).
    type: raw
  cwd:
    description:
      - Absolute working directory of the app. Defaults to the directory of an absolute O(script).
    type: path
  interpreter:
    description:
      - The interpreter PM2 runs O(script) with, for example C(node), C(python3) or C(none) for a binary.
    type: str
  interpreter_args:
    description:
      - Arguments for the interpreter (PM2's C(node_args)), as a list or a string split like shell words.
    type: raw
  env:
    description:
      - Environment variables of the app. Values are secrets; they never appear in the output, the
        diff or the logs. Drift is detected from salted sha256 digests of them.
      - A removed key makes the module recreate the app, because PM2 merges env on restart.
    type: dict
  instances:
    description:
      - Number of processes. PM2's default is 1. A change of this option alone scales the app
        without restarting the processes that stay.
    type: int
  exec_mode:
    description:
      - C(cluster) lets PM2 reload Node.js apps gracefully; C(fork) runs any interpreter.
      - PM2's default is C(fork).
    type: str
    choices: [fork, cluster]
  autorestart:
    description:
      - Restart the app when it exits. PM2's default is V(true).
    type: bool
  max_memory_restart:
    description:
      - Restart the app above this memory use, in bytes (int) or as C(512K), C(200M), C(1G).
    type: raw
  min_uptime:
    description:
      - Uptime below which an exit counts as an unstable restart, in milliseconds (int) or as C(500ms),
        C(5s), C(1m). Also how long the module waits for a started app to stay up (1000 ms when unset).
    type: raw
  max_restarts:
    description:
      - Unstable restarts in a row after which PM2 gives up and marks the app C(errored).
    type: int
  restart_delay:
    description:
      - Delay before an automatic restart, in milliseconds (int) or as C(5s).
    type: raw
  exp_backoff_restart_delay:
    description:
      - First delay of an exponential back-off between automatic restarts, in milliseconds or as C(100ms).
    type: raw
  kill_timeout:
    description:
      - Time between SIGINT and SIGKILL when stopping the app, in milliseconds or as C(5s).
    type: raw
  listen_timeout:
    description:
      - With O(wait_ready), how long PM2 waits for the ready signal, in milliseconds or as C(8s).
    type: raw
  wait_ready:
    description:
      - Wait for the app to send C(process.send('ready')) before PM2 counts it online.
    type: bool
  cron_restart:
    description:
      - A cron expression (5 or 6 fields) at which PM2 restarts the app.
    type: str
  out_file:
    description:
      - File for the app's standard output.
    type: path
  error_file:
    description:
      - File for the app's standard error.
    type: path
  merge_logs:
    description:
      - Write the logs of all instances to the same files (no C(-ID) suffix).
    type: bool
  log_date_format:
    description:
      - Prefix each log line with the time in this format, for example C(YYYY-MM-DD HH:mm:ss Z).
    type: str
"""
