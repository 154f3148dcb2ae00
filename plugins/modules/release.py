#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: release
short_description: Build, switch, roll back and prune atomic releases of an app, with a deploy lock
version_added: 0.1.0
description:
  - Manages the release layout of one app under O(root) C(releases/<id>/), a C(current) symlink,
    C(history.jsonl) and a C(.lock) file. A release id is C(YYYYmmddTHHMMSSZ-<8 hex of the content hash>).
  - O(action=create) builds a release from a directory, a git repository and O(ref), or a tar/zip archive.
    It does nothing when a release with the same content hash (and the same O(version) when given) exists
    and is not failed. Unchanged files are hardlinked from the newest non-failed release, so a release
    costs the disk of the files that changed. The build happens in C(releases/.tmp-*) and is renamed into
    place only when complete.
  - O(action=activate) switches C(current) atomically (a new symlink renamed over the old one); the release
    it replaces becomes C(verified), the new one C(active).
  - O(action=rollback_target) returns the release a rollback would activate. V(previous) is the newest
    release older than C(current) whose status is C(verified) or C(active). C(failed), C(built) (never
    ran) and C(rolled_back) (code someone rolled away from) are never picked; a C(rolled_back) release
    may be named in O(to), a C(failed) one never.
  - O(action=prune) removes releases beyond the newest O(keep) and/or older than O(max_age_days), never
    C(current) nor the rollback target, and stale C(.tmp-*) builds.
  - O(action=lock) takes the deploy lock for O(lock_owner); a lock whose holder pid on this host is gone,
    or older than O(stale_after) seconds, is taken over (RV(lock.took_over)). O(action=unlock) releases it
    only with the O(lock_token) that took it.
  - O(action=guard) checks structure guards (required regexes per file) against a release, and fails
    when one does not hold. O(action=record) appends an event to C(history.jsonl). O(action=status) sets a
    release's status. O(action=list) returns the releases, C(current) and deploy statistics.
author:
  - devbox.ops contributors (@devbox-ops)
options:
  root:
    description: The app directory that holds C(releases/), C(current), C(shared/) and C(history.jsonl).
    type: path
    required: true
  app:
    description: App name written into manifests and events. Defaults to the last component of O(root).
    type: str
  action:
    description: What to do.
    type: str
    default: create
    choices: [create, list, activate, rollback_target, prune, lock, unlock, guard, record, status]
  source:
    description:
      - For O(action=create), an absolute path to a directory or an archive (C(.tar.gz), C(.tgz), C(.tar),
        C(.zip), C(.tar.bz2), C(.tar.xz)), or a git URL (C(https://), C(ssh://), C(git@host:path)).
      - Credentials in a URL are used for the fetch but never stored nor returned.
    type: str
  source_type:
    description:
      - V(auto) picks V(git) for URLs and for a directory with C(.git) when O(ref) is given, V(archive) for
        archive files, else V(dir).
    type: str
    default: auto
    choices: [auto, dir, git, archive]
  ref:
    description: Git branch, tag or commit to release. Defaults to the remote C(HEAD).
    type: str
  version:
    description: A label stored in the manifest; with it, an existing release counts as the same only when
      its version matches too.
    type: str
  exclude:
    description: Glob patterns matched against relative paths and names at any depth; matches are left out.
    type: list
    elements: str
    default: ['.git']
  release_id:
    description: The release for O(action=activate), O(action=guard) and O(action=status).
    type: str
  status:
    description: The status O(action=status) sets.
    type: str
    choices: [built, verified, active, failed, rolled_back]
  to:
    description: For O(action=rollback_target), V(previous) or a release id.
    type: str
    default: previous
  keep:
    description: For O(action=prune), how many of the newest releases to keep.
    type: int
    default: 5
  max_age_days:
    description: For O(action=prune), also remove releases older than this many days.
    type: int
  lock_owner:
    description: Who holds the deploy lock (O(action=lock)).
    type: dict
    suboptions:
      user:
        description: User name. Defaults to the user running the module.
        type: str
      host:
        description: Host name of the holder. Defaults to this host.
        type: str
      pid:
        description:
          - Process id of the holder. When O(lock_owner.host) is this host and that process is gone, the lock
            is stale. Leave it out when the holder runs elsewhere (a controller); age alone then decides.
        type: int
      started_at:
        description: When the holder's run started (ISO 8601).
        type: str
      purpose:
        description: What the lock is for, shown to anyone who finds it held.
        type: str
        default: deploy
  lock_token:
    description:
      - Secret chosen by the caller (16-256 characters) for O(action=lock); the same token releases the lock
        with O(action=unlock). Only its sha256 is written in C(.lock); it is never returned.
    type: str
  stale_after:
    description: Seconds after which a held lock counts as stale.
    type: int
    default: 900
  guards:
    description: Structure guards for O(action=guard).
    type: list
    elements: dict
    suboptions:
      path:
        description: File path relative to the release.
        type: str
        required: true
      required:
        description: Python regexes (multiline) that must all match the file's content.
        type: list
        elements: str
        default: []
      must_exist:
        description: Fail when the file is missing; when false a missing file passes.
        type: bool
        default: true
  event:
    description:
      - The event O(action=record) appends, for example C(action), C(release), C(result), C(duration_s).
      - Keys that look secret (password, token, secret, key, auth, cookie, env) are masked.
    type: dict
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - O(action=create) stages git and archive sources in a temporary directory outside O(root), hashes the
        content and reports the release it would build; nothing under O(root) changes.
      - Other actions report what they would change and change nothing; reading actions run as usual.
  diff_mode:
    support: full
    details: Before and after of C(current) and the release ids, for create, activate, prune and status.
  platform:
    platforms: posix
notes:
  - Commands run, as argument lists, only for git sources, C(git --git-dir <root>/.cache/git/<key>.git)
    C(init --bare), C(fetch <url> +HEAD:refs/devbox/HEAD +refs/heads/*:refs/heads/* +refs/tags/*:refs/tags/*),
    C(rev-parse --verify <ref>^{commit}) and C(archive --format=tar <sha>). The URL is not stored in the cache.
  - Archives are extracted by the module itself. Absolute paths, C(..), members below a symlink, devices
    and symlinks that leave the tree are refused, for every source type.
  - Releases share unchanged files through hardlinks. An app must not edit its code in place; a changed base
    file is detected by size and mtime and copied instead of linked.
seealso:
  - name: ansistrano
    description: The release layout this follows, ordered by manifest instead of mtime.
    link: https://github.com/ansistrano/deploy
"""

EXAMPLES = r"""
- name: Take the deploy lock
  devbox.ops.release:
    root: /home/devbox/apps/web
    action: lock
    lock_owner:
      user: "{{ lookup('env', 'USER') }}"
      host: "{{ lookup('pipe', 'hostname') }}"
      purpose: deploy web {{ web_version }}
    lock_token: "{{ deploy_token }}"

- name: Build a release from git
  devbox.ops.release:
    root: /home/devbox/apps/web
    source: https://github.com/example/web.git
    ref: v1.4.2
    version: 1.4.2
  register: built

- name: Check the structure before switching
  devbox.ops.release:
    root: /home/devbox/apps/web
    action: guard
    release_id: "{{ built.release.id }}"
    guards:
      - path: app.py
        required: ['from flask import Flask', 'register_blueprint']

- name: Switch current
  devbox.ops.release:
    root: /home/devbox/apps/web
    action: activate
    release_id: "{{ built.release.id }}"

- name: Where would a rollback go
  devbox.ops.release:
    root: /home/devbox/apps/web
    action: rollback_target
  register: target

- name: Mark a release that failed its health gate
  devbox.ops.release:
    root: /home/devbox/apps/web
    action: status
    release_id: "{{ built.release.id }}"
    status: failed

- name: Record the deploy
  devbox.ops.release:
    root: /home/devbox/apps/web
    action: record
    event:
      action: deploy
      release: "{{ built.release.id }}"
      result: success
      duration_s: 42.5

- name: Keep five releases
  devbox.ops.release:
    root: /home/devbox/apps/web
    action: prune
    keep: 5

- name: Release the lock
  devbox.ops.release:
    root: /home/devbox/apps/web
    action: unlock
    lock_token: "{{ deploy_token }}"
"""

RETURN = r"""
release:
  description: The manifest of the release built or found (create), switched to (activate) or changed (status).
  returned: when action is create, activate or status
  type: dict
  contains:
    id:
      description: Release id.
      type: str
      sample: 20240501T120000Z-1a2b3c4d
    app:
      description: App name.
      type: str
    version:
      description: The O(version) given, or null.
      type: str
    sha:
      description: Git commit for git sources, else null.
      type: str
    content_hash:
      description: sha256 over sorted relative paths, file modes, file sha256s and symlink targets.
      type: str
    created_at:
      description: ISO 8601 UTC time; releases are ordered by it (then by id).
      type: str
    source:
      description: C(type), C(location) (without credentials) and C(ref).
      type: dict
    status:
      description: One of V(built), V(verified), V(active), V(failed), V(rolled_back).
      type: str
    status_history:
      description: Every status with its time.
      type: list
      elements: dict
    build:
      description: C(files), C(bytes), C(linked), C(copied), C(linked_from), C(skipped), C(seconds); absent in
        check mode.
      type: dict
    incremental:
      description: Same as RV(incremental).
      type: dict
created:
  description: Whether create built (or in check mode would build) a new release.
  returned: when action is create
  type: bool
incremental:
  description:
    - Counts of C(new), C(modified), C(deleted) and C(unchanged) files against the active release
      (C(against)), and C(files) with the names, at most C(capped_at) (50) per list.
  returned: when action is create
  type: dict
  sample: {"against": "20240501T120000Z-1a2b3c4d", "new": 1, "modified": 2, "deleted": 0, "unchanged": 812,
           "files": {"new": ["routes/health.py"], "modified": ["app.py", "routes/api.py"], "deleted": []},
           "capped_at": 50}
releases:
  description: Every release, oldest first, with C(id), C(version), C(sha), C(status), C(created_at),
    C(content_hash) and C(current).
  returned: always
  type: list
  elements: dict
current:
  description: The id C(current) points to (after the action), or null.
  returned: always
  type: str
target:
  description: The manifest of the rollback target.
  returned: when action is rollback_target
  type: dict
removed:
  description: Release ids removed by prune (or that would be, in check mode), oldest first.
  returned: when action is prune
  type: list
  elements: str
stale:
  description: Stale C(.tmp-*) build directories and temp files prune removed.
  returned: when action is prune
  type: list
  elements: str
lock:
  description:
    - For lock, C(holder) (user, host, pid, started_at, purpose, acquired_at), C(took_over) and, when a stale
      lock was taken over, C(previous) and C(reason). For unlock, the C(holder) released. The token is never
      returned.
  returned: when action is lock or unlock
  type: dict
  contains:
    holder:
      description: The lock record taken (lock) or released (unlock), or null when there was no lock.
      type: dict
      sample: {"user": "alice", "host": "devbox1", "pid": null, "started_at": "2024-05-01T12:00:00.000000Z",
               "purpose": "deploy web", "acquired_at": "2024-05-01T12:00:01.000000Z"}
    took_over:
      description: Whether a stale lock was taken over (lock only).
      type: bool
    previous:
      description: The stale holder that was replaced (lock only), or null.
      type: dict
    reason:
      description: Why the previous lock was stale, or why nothing changed (lock only).
      type: str
lock_holder:
  description:
    - Who holds the deploy lock now (user, host, pid, started_at, purpose, acquired_at), with C(stale) (older than
      O(stale_after), or its holder on this host is gone) and C(reason); null when the lock is free. The token is
      never returned.
  returned: when action is list
  type: dict
  sample: {"user": "alice", "host": "laptop", "pid": 4242, "purpose": "deploy web",
           "acquired_at": "2024-05-01T12:00:01.000000Z", "stale": false, "reason": "held for 12s by a live holder"}
guard_failures:
  description: Each guard that did not hold, with C(path), C(regex) (null for a missing file) and C(reason).
  returned: when action is guard
  type: list
  elements: dict
event:
  description: The event as written (secrets masked, C(at) and C(app) added).
  returned: when action is record
  type: dict
stats:
  description: C(events), C(deploys), C(succeeded), C(failed), C(success_rate), C(avg_duration_s), C(last),
    C(releases), C(current) from C(history.jsonl).
  returned: when action is list
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.events import redact
from ansible_collections.devbox.ops.plugins.module_utils.releases import ReleaseStore, secret_values, url_secrets
from ansible_collections.devbox.ops.plugins.module_utils.runner import AnsibleRunner


ACTIONS = ["create", "list", "activate", "rollback_target", "prune", "lock", "unlock", "guard", "record", "status"]


def summary(store):
    """Releases (oldest first) as short dicts, and the current id."""
    cur = store.current_id()
    keys = ("id", "version", "sha", "status", "created_at", "content_hash")
    releases = [dict([(k, m.get(k)) for k in keys] + [("current", m["id"] == cur)]) for m in store.list()]
    return releases, cur


def state(releases, cur):
    """What the diff shows: current and each release's status."""
    return {"current": cur, "releases": dict((r["id"], r["status"]) for r in releases)}


def planned(before, p, result):
    """The state a check-mode run would leave."""
    after = {"current": before["current"], "releases": dict(before["releases"])}
    if p["action"] == "create" and result["created"]:
        after["releases"][result["release"]["id"]] = "built"
    elif p["action"] == "activate":
        for rid, status in after["releases"].items():
            if status == "active":
                after["releases"][rid] = "verified"
        after["current"] = p["release_id"]
        after["releases"][p["release_id"]] = "active"
    elif p["action"] == "prune":
        for rid in result["removed"]:
            after["releases"].pop(rid, None)
    elif p["action"] == "status":
        after["releases"][p["release_id"]] = p["status"]
    return after


def run(store, p, check):
    """Do the action (``check``: change nothing); returns the result without releases/current."""
    action = p["action"]
    if action == "create":
        release, created = store.create(p["source"], None if p["source_type"] == "auto" else p["source_type"],
                                        p["version"], p["ref"], p["exclude"], dry_run=check)
        return dict(changed=created, created=created, release=release, incremental=release.get("incremental"))
    if action == "list":
        return dict(changed=False, stats=store.stats(), lock_holder=store.lock_status(p["stale_after"]))
    if action == "activate":
        changed = store.activate(p["release_id"], dry_run=check)["changed"]
        return dict(changed=changed, release=store.get(p["release_id"]))
    if action == "status":
        release, changed = store.set_status(p["release_id"], p["status"], dry_run=check)
        return dict(changed=changed, release=release)
    if action == "rollback_target":
        return dict(changed=False, target=store.rollback_target(p["to"]))
    if action == "prune":
        result = store.prune(p["keep"], p["max_age_days"], dry_run=check)
        return dict(result, changed=bool(result["removed"] or result["stale"]))
    if action in ("lock", "unlock"):
        if action == "lock":
            lock = store.acquire_lock(p["lock_owner"], p["lock_token"], p["stale_after"], dry_run=check)
        else:
            lock = store.release_lock(p["lock_token"], dry_run=check)
        return dict(changed=lock.pop("changed"), lock=lock)
    if action == "guard":
        return dict(changed=False, guard_failures=store.guards(p["release_id"], p["guards"]))
    return dict(changed=True, event=redact(p["event"]) if check else store.record(p["event"]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            app=dict(type="str"),
            action=dict(type="str", default="create", choices=ACTIONS),
            source=dict(type="str"),
            source_type=dict(type="str", default="auto", choices=["auto", "dir", "git", "archive"]),
            ref=dict(type="str"),
            version=dict(type="str"),
            exclude=dict(type="list", elements="str", default=[".git"]),
            release_id=dict(type="str"),
            status=dict(type="str", choices=["built", "verified", "active", "failed", "rolled_back"]),
            to=dict(type="str", default="previous"),
            keep=dict(type="int", default=5),
            max_age_days=dict(type="int"),
            lock_owner=dict(type="dict", options=dict(
                user=dict(type="str"), host=dict(type="str"), pid=dict(type="int"), started_at=dict(type="str"),
                purpose=dict(type="str", default="deploy"))),
            lock_token=dict(type="str", no_log=True),
            stale_after=dict(type="int", default=900),
            guards=dict(type="list", elements="dict", options=dict(
                path=dict(type="str", required=True),
                required=dict(type="list", elements="str", default=[]),
                must_exist=dict(type="bool", default=True))),
            event=dict(type="dict"),
        ),
        required_if=[
            ("action", "create", ("source",)),
            ("action", "activate", ("release_id",)),
            ("action", "status", ("release_id", "status")),
            ("action", "lock", ("lock_token",)),
            ("action", "unlock", ("lock_token",)),
            ("action", "guard", ("release_id", "guards")),
            ("action", "record", ("event",)),
        ],
        supports_check_mode=True,
    )
    p = module.params
    # secret-looking event values and URL credentials stay out of every output, invocation included
    module.no_log_values.update(secret_values(p["event"] or {}) + url_secrets(p["source"] or ""))
    try:
        store = ReleaseStore(p["root"], p["app"], AnsibleRunner(module))
        before = state(*summary(store))
        result = run(store, p, module.check_mode)
        releases, cur = summary(store)
    except (DevboxOpsError, OSError) as exc:
        module.fail_json(msg=str(exc), changed=False)
    after = planned(before, p, result) if module.check_mode else state(releases, cur)
    result.update(releases=releases, current=after["current"])
    if module._diff and p["action"] in ("create", "activate", "prune", "status"):
        result["diff"] = {"before": before, "after": after}
    if p["action"] == "guard" and result["guard_failures"]:
        module.fail_json(msg="structure guards failed: %s" % "; ".join(
            "%s: %s%s" % (f["path"], f["reason"], " (%s)" % f["regex"] if f["regex"] else "")
            for f in result["guard_failures"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
