# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Command runners: the one way engines start programs.

Every command is an argument list, never a shell string, so no value from a user can reach a shell.
``SubprocessRunner`` serves tests and the on-host watchdog; ``AnsibleRunner`` wraps
``AnsibleModule.run_command`` inside modules. Both force ``LC_ALL=C`` because engines parse output.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import subprocess

C_LOCALE = {"LC_ALL": "C", "LANG": "C"}


def _check_argv(argv):
    if not isinstance(argv, (list, tuple)) or not argv:
        raise TypeError("argv must be a non-empty list, got %r" % (argv,))
    return [str(a) for a in argv]


class SubprocessRunner:
    """Run commands with :mod:`subprocess` (no shell)."""

    def __init__(self, base_env=None):
        self.base_env = dict(base_env or {})

    def run(self, argv, env=None, cwd=None, timeout=None, data=None):
        argv = _check_argv(argv)
        full_env = dict(os.environ)
        full_env.update(self.base_env)
        full_env.update(env or {})
        full_env.update(C_LOCALE)
        try:
            proc = subprocess.run(  # noqa: S603 - argv list, no shell
                argv,
                env=full_env,
                cwd=cwd,
                input=data,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                universal_newlines=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            return 127, "", str(exc)
        except subprocess.TimeoutExpired as exc:
            return 124, exc.stdout or "", "timed out after %ss: %s" % (timeout, " ".join(argv))
        return proc.returncode, proc.stdout, proc.stderr


class AnsibleRunner:
    """Run commands through ``AnsibleModule.run_command`` with argument lists."""

    def __init__(self, module, base_env=None):
        self.module = module
        self.base_env = dict(base_env or {})

    def run(self, argv, env=None, cwd=None, timeout=None, data=None):
        argv = _check_argv(argv)
        full_env = dict(self.base_env)
        full_env.update(env or {})
        full_env.update(C_LOCALE)
        kwargs = {"environ_update": full_env, "cwd": cwd, "data": data, "binary_data": True}
        if timeout is not None:
            # run_command has no timeout; coreutils timeout keeps it an argv list.
            argv = ["timeout", "--kill-after=5", "%g" % max(float(timeout), 0.001)] + argv
        try:
            rc, out, err = self.module.run_command(argv, **kwargs)
        except (OSError, IOError) as exc:
            return 127, "", str(exc)
        return rc, out, err
