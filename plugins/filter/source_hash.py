# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""``source_hash``: the content hash of the release a controller directory makes, computed on the
controller by the release engine (releases.packed_content_hash). The deploy role compares it with the
release a host serves to skip a deploy that has nothing to do. Documentation in source_hash.yml."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.errors import AnsibleFilterError
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.releases import packed_content_hash


def source_hash(path, exclude=None):
    if not isinstance(path, str) or not os.path.isabs(path):
        raise AnsibleFilterError("source_hash: path=%r: must be an absolute path to a directory" % (path,))
    if exclude is None:
        exclude = []
    if not isinstance(exclude, (list, tuple)) or not all(isinstance(p, str) and p for p in exclude):
        raise AnsibleFilterError("source_hash: exclude=%r: must be a list of glob patterns" % (exclude,))
    if not os.path.isdir(path):
        return ""
    try:
        return packed_content_hash(path, list(exclude))
    except (DevboxOpsError, OSError):
        # No hash, no shortcut: the deploy takes its full path, where the host reports the problem in context.
        return ""


class FilterModule(object):
    def filters(self):
        return {"source_hash": source_hash}
