# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Errors shared by every devbox.ops engine.

Engines raise :class:`DevboxOpsError` for bad input and for failures they can explain. The message
always names the parameter and the offending value, so a module can hand it to ``fail_json`` as is.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class DevboxOpsError(Exception):
    """A failure with a message fit for a user.

    ``param`` and ``value`` are kept so callers (and tests) can check which input was rejected.
    """

    def __init__(self, msg, param=None, value=None, **details):
        super(DevboxOpsError, self).__init__(msg)
        self.msg = msg
        self.param = param
        self.value = value
        self.details = details

    def __str__(self):
        return self.msg


def bad_value(param, value, why):
    """Build the standard bad-input error: ``param=value: why``."""
    return DevboxOpsError("%s=%r: %s" % (param, value, why), param=param, value=value)
