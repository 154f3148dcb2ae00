#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: backup
short_description: Snapshot, verify, restore and prune backups of files, SQLite and MongoDB
version_added: 0.1.0
description:
  - Keeps snapshots under O(root), one directory per snapshot named C(YYYYmmddTHHMMSSZ-<label>). Each holds
    the data, a C(MANIFEST.json) with the size, sha256 and mode of every file, and, written last, a
    C(COMPLETE) marker with the manifest's sha256. A snapshot without a valid marker is never listed,
    restored or hardlinked from; the next V(create) or V(prune) removes it.
  - V(create) copies every entry of O(paths). Files whose size, mtime, mode and sha256 equal those in the
    newest snapshot are hardlinked from it, so unchanged data takes no space. SQLite databases are copied
    with the sqlite3 backup API, which gives a consistent copy while the app writes. MongoDB runs
    C(mongodump --uri <uri> --archive=<file> --gzip).
  - Before writing, V(create) estimates the bytes it needs and fails, writing nothing, when the
    filesystem of O(root) has less than that plus O(min_free_bytes) free. When the disk fills anyway, the
    partial snapshot is removed and the module fails.
  - V(verify) recomputes every sha256. V(restore) verifies first and refuses a corrupt snapshot, changing
    nothing; then it replaces each differing file atomically (temporary file and rename) and restores
    SQLite databases with the backup API. Files in the target that are not in the snapshot are left alone.
  - V(prune) removes snapshots beyond the O(keep) newest and those older than O(max_age_days); the newest
    snapshot is always kept.
author:
  - devbox.ops contributors (@devbox-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: V(create) reports the snapshot it would make (and fails when it would not fit); V(restore) and
      V(prune) report what they would change. V(list) and V(verify) only read and run in full.
  diff_mode:
    support: full
    details: V(create) and V(prune) show the snapshot ids before and after; V(restore) the paths it replaces.
  platform:
    platforms: posix
requirements:
  - mongodump (MongoDB Database Tools), only for O(paths[].kind=mongodb)
notes:
  - Runs C(mongodump --uri <uri> --archive=<file> --gzip) for MongoDB entries, and no other command. The uri
    is passed on the command line, so other local users may see it in the process list while mongodump runs.
  - O(mongodb_uri) is never written to the manifest or returned; errors show it with the password masked.
  - The snapshot directories are created with mode 0700 because they hold application data.
  - Restoring MongoDB archives is not done by this module; RV(skipped) gives the C(mongorestore) command.
options:
  root:
    description:
      - Directory holding the snapshots. Created (mode 0700) by the first V(create).
    type: path
    required: true
  action:
    description:
      - What to do.
    type: str
    default: create
    choices: [create, list, verify, restore, prune]
  paths:
    description:
      - What to back up (O(action=create)).
    type: list
    elements: dict
    suboptions:
      path:
        description:
          - Absolute path of the directory, file or SQLite database. Not used for V(mongodb).
        type: path
      kind:
        description:
          - V(files) copies a directory tree or one file, V(sqlite) makes a consistent copy of a database,
            V(mongodb) runs mongodump with O(mongodb_uri).
        type: str
        default: files
        choices: [files, sqlite, mongodb]
      name:
        description:
          - Name of the entry inside the snapshot and in O(target_map). Unique.
          - When not set, the basename of O(paths[].path) (V(mongodb) for MongoDB).
        type: str
      optional:
        description:
          - Skip this entry, reported in RV(backup.skipped), when its path is missing or mongodump is not
            installed, instead of failing.
        type: bool
        default: false
  mongodb_uri:
    description:
      - MongoDB connection string for O(paths[].kind=mongodb) entries. Secret.
    type: str
  label:
    description:
      - Label that ends the new snapshot's id.
    type: str
    default: backup
  hardlink:
    description:
      - Hardlink unchanged files from the newest snapshot instead of copying them.
    type: bool
    default: true
  backup_id:
    description:
      - Snapshot to verify or restore. When not set, the newest valid one.
    type: str
  target_map:
    description:
      - For V(restore), entry name to the absolute path to restore it to. Entries not named are restored to
        the path they were backed up from.
    type: dict
  keep:
    description:
      - For V(prune), how many of the newest snapshots to keep (at least 1).
    type: int
  max_age_days:
    description:
      - For V(prune), remove snapshots older than this many days (the newest is kept anyway).
    type: float
  min_free_bytes:
    description:
      - For V(create), bytes that must stay free on the filesystem of O(root) after the snapshot.
    type: int
    default: 67108864
"""

EXAMPLES = r"""
- name: Back up the project data and the app database
  devbox.ops.backup:
    root: /home/devbox/backups
    label: nightly
    paths:
      - path: /home/devbox/project/shared/uploads
      - path: /home/devbox/project/shared/app.db
        kind: sqlite
        name: db
      - kind: mongodb
        name: mongo
        optional: true
    mongodb_uri: "{{ vault_mongodb_uri }}"
  register: snap

- name: Verify the newest snapshot
  devbox.ops.backup:
    root: /home/devbox/backups
    action: verify

- name: Restore the database from one snapshot into a scratch path first
  devbox.ops.backup:
    root: /home/devbox/backups
    action: restore
    backup_id: "{{ snap.backup.id }}"
    target_map:
      db: /home/devbox/restore-test/app.db

- name: Keep 7 snapshots, none older than 30 days
  devbox.ops.backup:
    root: /home/devbox/backups
    action: prune
    keep: 7
    max_age_days: 30
"""

RETURN = r"""
backup:
  description: The snapshot made (V(create)); in check mode the one that would be made.
  returned: when O(action=create)
  type: dict
  contains:
    id:
      description: Snapshot id.
      type: str
      sample: 20240501T020000Z-nightly
    path:
      description: Directory of the snapshot (null in check mode).
      type: str
      sample: /home/devbox/backups/20240501T020000Z-nightly
    files:
      description: Number of files in the snapshot.
      type: int
      sample: 120
    bytes:
      description: Total size of those files (null in check mode).
      type: int
      sample: 1048576
    hardlinked:
      description: Files hardlinked from the previous snapshot (in check mode, those likely to be).
      type: int
      sample: 118
    copied_bytes:
      description: Bytes actually written (in check mode, the estimate used for the space check).
      type: int
      sample: 8192
    skipped:
      description: Optional entries that were skipped, with the reason.
      type: list
      elements: dict
      sample: [{"name": "mongo", "reason": "paths[2] (kind=mongodb, name=mongo): mongodump is not installed"}]
    removed_incomplete:
      description: Incomplete snapshots removed before this one was made.
      type: list
      elements: str
      sample: []
backups:
  description: Valid snapshots after the action, newest first (in check mode, the current ones).
  returned: always
  type: list
  elements: dict
  sample: [{"id": "20240501T020000Z-nightly", "label": "nightly", "created": "2024-05-01T02:00:00.120000Z",
            "files": 120, "bytes": 1048576, "hardlinked": 118, "copied_bytes": 8192, "host": "devbox1",
            "entries": [{"name": "db", "kind": "sqlite", "path": "/home/devbox/project/shared/app.db",
                         "type": "sqlite"}]}]
backup_id:
  description: The snapshot verified or restored.
  returned: when O(action) is V(verify) or V(restore)
  type: str
  sample: 20240501T020000Z-nightly
verified:
  description: Whether every file matched its sha256.
  returned: when O(action) is V(verify) or V(restore)
  type: bool
  sample: true
mismatches:
  description: Files whose checksum differs, or that are missing, with the problem.
  returned: when O(action) is V(verify) or V(restore)
  type: list
  elements: dict
  sample: [{"path": "data/uploads/a.png", "problem": "sha256 mismatch"}]
restored:
  description: Paths replaced (in check mode, that would be replaced).
  returned: when O(action=restore)
  type: list
  elements: str
  sample: [/home/devbox/project/shared/app.db]
unchanged:
  description: Number of files that already matched the snapshot.
  returned: when O(action=restore)
  type: int
  sample: 119
skipped:
  description: Entries not restored, with the reason.
  returned: when O(action=restore)
  type: list
  elements: dict
  sample: []
removed:
  description: Snapshot ids removed (in check mode, that would be removed), incomplete ones included.
  returned: when O(action=prune)
  type: list
  elements: str
  sample: [20240401T020000Z-nightly]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.backup import DEFAULT_MIN_FREE, KINDS, BackupStore
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.runner import AnsibleRunner


def _ids(backups):
    return [b["id"] for b in backups]


def run(module, store):
    p, check = module.params, module.check_mode
    action, before = p["action"], store.list()
    result = dict(changed=False)
    if action == "create":
        paths = [dict((k, v) for k, v in item.items() if v is not None) for item in p["paths"]]
        snap = store.create(paths, label=p["label"], hardlink_from_previous=p["hardlink"],
                            mongodb_uri=p["mongodb_uri"], min_free_bytes=p["min_free_bytes"], dry_run=check)
        result.update(changed=True, backup=snap)
        result["diff"] = dict(before=dict(backups=_ids(before)), after=dict(backups=[snap["id"]] + _ids(before)))
    elif action in ("verify", "restore"):
        backup_id = p["backup_id"] or store.latest()
        if backup_id is None:
            raise DevboxOpsError("root=%r: there is no valid backup to %s" % (store.root, action), param="root")
        result["backup_id"] = backup_id
        if action == "verify":
            report = store.verify(backup_id)
            result.update(verified=report["ok"], mismatches=report["mismatches"])
            if not report["ok"]:
                bad = report["mismatches"][0]
                module.fail_json(msg="backup %s is corrupt: %s %s (%d problems)"
                                 % (backup_id, bad["path"], bad["problem"], len(report["mismatches"])),
                                 backups=before, **result)
        else:
            out = store.restore(backup_id, target_map=p["target_map"], dry_run=check)  # verifies first
            result.update(changed=bool(out["restored"]), verified=True, mismatches=[], restored=out["restored"],
                          unchanged=out["unchanged"], skipped=out["skipped"])
            result["diff"] = dict(before="", after="".join("restore %s from backup %s\n" % (path, backup_id)
                                                           for path in out["restored"]))
    elif action == "prune":
        removed = store.prune(keep=p["keep"], max_age_days=p["max_age_days"], dry_run=check)
        result.update(changed=bool(removed), removed=removed)
        result["diff"] = dict(before=dict(backups=_ids(before)),
                              after=dict(backups=[i for i in _ids(before) if i not in removed]))
    result["backups"] = before if check or action in ("list", "verify") else store.list()
    if not module._diff:
        result.pop("diff", None)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            action=dict(type="str", default="create", choices=["create", "list", "verify", "restore", "prune"]),
            paths=dict(type="list", elements="dict", options=dict(
                path=dict(type="path"),
                kind=dict(type="str", default="files", choices=list(KINDS)),
                name=dict(type="str"),
                optional=dict(type="bool", default=False),
            )),
            mongodb_uri=dict(type="str", no_log=True),
            label=dict(type="str", default="backup"),
            hardlink=dict(type="bool", default=True),
            backup_id=dict(type="str"),
            target_map=dict(type="dict"),
            keep=dict(type="int"),
            max_age_days=dict(type="float"),
            min_free_bytes=dict(type="int", default=DEFAULT_MIN_FREE),
        ),
        required_if=[("action", "create", ["paths"]), ("action", "prune", ["keep", "max_age_days"], True)],
        supports_check_mode=True,
    )
    try:
        store = BackupStore(module.params["root"], runner=AnsibleRunner(module))
        result = run(module, store)
    except DevboxOpsError as exc:
        extra = {}
        if "mismatches" in exc.details:  # restore refused a corrupt backup
            extra = dict(verified=False, mismatches=exc.details["mismatches"], backup_id=exc.value)
        module.fail_json(msg=str(exc), **extra)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
