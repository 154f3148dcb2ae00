# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Probe timing options (Kubernetes semantics), shared by modules that wait on health probes.
    # The matching argument_spec is TIMING_OPTIONS in plugins/module_utils/probe.py.
    DOCUMENTATION = r"""
options:
  timeout:
    description:
      - Seconds one attempt may take (connect, response and body). Must be > 0.
      - When not set, C(2).
    type: float
  period:
    description:
      - Seconds between the starts of two attempts. Must be > 0.
      - When not set, C(2).
    type: float
  initial_delay:
    description:
      - Seconds to wait before the first attempt. Must be >= 0.
      - When not set, C(0).
    type: float
  failure_threshold:
    description:
      - This many consecutive failed attempts make the probe fail. Must be >= 1.
      - When not set, C(3).
    type: int
  success_threshold:
    description:
      - This many consecutive successful attempts make the probe pass. Must be >= 1.
      - When not set, C(1).
    type: int
  deadline:
    description:
      - Overall seconds for the probe, initial delay included; the wait stops when it passes. An attempt
        that would run past it gets a shorter timeout. Must be greater than O(initial_delay).
      - When not set, O(initial_delay) + O(timeout) + O(period) * (O(failure_threshold) + O(success_threshold) - 1).
    type: float
"""
