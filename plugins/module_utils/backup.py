# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backup snapshots with a sha256 manifest.

A store is a directory ``<root>`` holding one directory per snapshot, ``<root>/<backup_id>/``, where the
id is ``YYYYmmddTHHMMSSZ-<label>``. A snapshot holds ``data/<name>`` (one per backed-up path),
``MANIFEST.json`` (every file with its relative path, size, sha256 and mode) and, written last,
``COMPLETE`` holding the manifest's sha256. A snapshot without a matching ``COMPLETE`` is never listed,
restored or hardlinked from, and the next ``create`` or ``prune`` removes it.

Kinds of path:

- ``files``: a directory tree or one file. A file whose size, mtime, mode and sha256 equal the previous
  snapshot's manifest entry is hardlinked from that snapshot instead of copied.
- ``sqlite``: a consistent copy made with the sqlite3 backup API, safe while other connections write.
  Restore uses the backup API the other way, inside one SQLite transaction.
- ``mongodb``: ``mongodump --uri <uri> --archive=<file> --gzip``, only when mongodump is installed and a
  uri is given. The uri is a secret: it never reaches the manifest, and errors show it with the
  password masked.

Plain Python (no ansible import), so the on-host watchdog can use it too.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import binascii
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import stat
import tempfile
import time
from urllib.parse import quote, unquote, urlsplit

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value
from ansible_collections.devbox.ops.plugins.module_utils.files import copy_hashed, fsync_dir, hash_file, inside, write_synced
from ansible_collections.devbox.ops.plugins.module_utils.probe import redact_url
from ansible_collections.devbox.ops.plugins.module_utils.runner import SubprocessRunner

KINDS = ("files", "sqlite", "mongodb")
FORMAT = 1
MANIFEST = "MANIFEST.json"
COMPLETE = "COMPLETE"
DATA = "data"
LOCK = ".lock"
DEFAULT_MIN_FREE = 64 * 1024 * 1024  # bytes left free on the backup filesystem after a create
MANIFEST_BYTES_PER_FILE = 300  # estimate of one manifest entry, for the space check
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ID_RE = re.compile(r"^(\d{8}T\d{6}Z)-([A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")
ID_TIME = "%Y%m%dT%H%M%SZ"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def validate_id(backup_id, param="backup_id"):
    """Return ``backup_id`` when it is a well-formed snapshot id, else raise naming ``param``."""
    match = ID_RE.match(backup_id) if isinstance(backup_id, str) else None
    if match:
        try:
            time.strptime(match.group(1), ID_TIME)
            return backup_id
        except ValueError:
            pass
    raise bad_value(param, backup_id, "not a backup id (YYYYmmddTHHMMSSZ-<label>, label of letters, digits, "
                                      "'.', '_' or '-')")


def validate_label(label):
    if not isinstance(label, str) or not LABEL_RE.match(label):
        raise bad_value("label", label, "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                                        "or digit")
    return label


def _blocks(size, block):
    return -(-size // block) * block if size else 0


def _sqlite_uri(path, readonly):
    return "file:%s%s" % (quote(os.path.abspath(path)), "?mode=ro" if readonly else "")


def sqlite_fingerprint(path):
    """sha256 of the SQL dump of a database: equal for databases with equal content."""
    conn = sqlite3.connect(_sqlite_uri(path, True), uri=True)
    try:
        digest = hashlib.sha256()
        for line in conn.iterdump():
            digest.update(line.encode("utf-8") + b"\n")
        return digest.hexdigest()
    finally:
        conn.close()


def _is_sqlite(path):
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except (IOError, OSError):
        return False


def _key(entry, rel):
    """Manifest path of ``rel`` inside entry ``name``: ``data/<name>[/<rel>]``."""
    return "/".join(p for p in (DATA, entry["name"], rel) if p)


def _safe_rel(rel):
    """A manifest path must stay inside the snapshot."""
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts or "" in parts or parts[0] != DATA:
        raise DevboxOpsError("manifest path %r leaves the backup" % (rel,))
    return rel


class _Lock:
    """Exclusive lock on ``<root>/.lock`` so two creates/prunes/restores never overlap."""

    def __init__(self, root):
        self.path = os.path.join(root, LOCK)
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (IOError, OSError):
            os.close(self.fd)
            raise DevboxOpsError("another backup operation holds %s" % self.path)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the flock


class BackupStore:
    """Snapshots under ``root``. ``runner`` runs mongodump; ``mongodump`` is its name or path."""

    def __init__(self, root, runner=None, mongodump="mongodump"):
        if not isinstance(root, str) or not os.path.isabs(root):
            raise bad_value("root", root, "must be an absolute path")
        self.root = os.path.normpath(root)
        self.runner = runner or SubprocessRunner()
        self.mongodump = mongodump

    # ------------------------------------------------------------ reading the store

    def _dir(self, backup_id):
        return os.path.join(self.root, backup_id)

    def _load(self, backup_id):
        """The manifest of a complete snapshot, or None when it is missing or incomplete."""
        path = self._dir(backup_id)
        try:
            with open(os.path.join(path, MANIFEST), "rb") as f:
                raw = f.read()
            with open(os.path.join(path, COMPLETE)) as f:
                marker = f.read().strip()
        except (IOError, OSError):
            return None
        if marker != hashlib.sha256(raw).hexdigest():
            return None
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except ValueError:
            return None
        return manifest if manifest.get("id") == backup_id else None

    def _ids(self):
        try:
            names = os.listdir(self.root)
        except (IOError, OSError):
            return []
        return [n for n in names if ID_RE.match(n) and os.path.isdir(self._dir(n))]

    def _valid(self):
        """Complete manifests, newest first (by the manifest's creation time, never by mtime)."""
        manifests = [m for m in (self._load(i) for i in self._ids()) if m is not None]
        return sorted(manifests, key=lambda m: (m["created_ts"], m["id"]), reverse=True)

    def _incomplete(self):
        return sorted(i for i in self._ids() if self._load(i) is None)

    @staticmethod
    def _summary(manifest):
        keys = ("id", "label", "created", "bytes", "hardlinked", "copied_bytes", "host")
        out = dict((k, manifest.get(k)) for k in keys)
        out["files"] = len(manifest["files"])
        out["entries"] = [dict((k, e[k]) for k in ("name", "kind", "path", "type")) for e in manifest["entries"]]
        return out

    def list(self):
        """Valid snapshots, newest first."""
        return [self._summary(m) for m in self._valid()]

    def latest(self):
        valid = self._valid()
        return valid[0]["id"] if valid else None

    def _require(self, backup_id):
        validate_id(backup_id)
        if not os.path.isdir(self._dir(backup_id)):
            raise bad_value("backup_id", backup_id, "no such backup in %s" % self.root)
        manifest = self._load(backup_id)
        if manifest is None:
            raise bad_value("backup_id", backup_id, "backup is incomplete (no valid %s marker)" % COMPLETE)
        return manifest

    # ------------------------------------------------------------ create

    def _entries(self, paths, mongodb_uri):
        """Validate ``paths``; return (entries, skipped). Raises before anything is written."""
        if not isinstance(paths, (list, tuple)) or not paths:
            raise bad_value("paths", paths, "must be a non-empty list of {path, kind, name, optional}")
        entries, skipped, names = [], [], set()
        for i, item in enumerate(paths):
            where = "paths[%d]" % i
            if not isinstance(item, dict):
                raise bad_value(where, item, "must be a dict with path, kind, name, optional")
            unknown = sorted(set(item) - {"path", "kind", "name", "optional"})
            if unknown:
                raise bad_value(where + "." + unknown[0], item[unknown[0]], "unknown key")
            kind = item.get("kind") or "files"
            if kind not in KINDS:
                raise bad_value(where + ".kind", kind, "must be one of %s" % ", ".join(KINDS))
            optional = bool(item.get("optional"))
            path = item.get("path")
            if kind != "mongodb" or path is not None:
                if not isinstance(path, str) or not os.path.isabs(path):
                    raise bad_value(where + ".path", path, "must be an absolute path")
                path = os.path.normpath(path)
                root, real = os.path.realpath(self.root), os.path.realpath(path)
                if inside(root, real) or inside(real, root):
                    raise bad_value(where + ".path", path, "overlaps the backup root %s" % self.root)
            name = item.get("name") or (os.path.basename(path) if path else "mongodb")
            if not LABEL_RE.match(name):
                raise bad_value(where + ".name", name, "must be 1-64 letters, digits, '.', '_' or '-'")
            if name in names:
                raise bad_value(where + ".name", name, "is used twice")
            names.add(name)
            entry = {"name": name, "kind": kind, "path": path}
            reason = self._unavailable(where, entry, mongodb_uri)
            if reason and not optional:
                raise reason
            if reason:
                skipped.append({"name": name, "reason": str(reason)})
                continue
            entries.append(entry)
        return entries, skipped

    def _unavailable(self, where, entry, mongodb_uri):
        """The error that stops this entry from being backed up, or None."""
        path, kind = entry["path"], entry["kind"]
        if kind == "mongodb":
            exe = self.mongodump if os.path.isabs(self.mongodump) else shutil.which(self.mongodump)
            if not exe or not os.access(exe, os.X_OK):
                return DevboxOpsError("%s (kind=mongodb, name=%s): mongodump is not installed (looked for %r "
                                      "on PATH); install the MongoDB Database Tools or set optional: true"
                                      % (where, entry["name"], self.mongodump), param="mongodump")
            if not mongodb_uri:
                return bad_value("mongodb_uri", None, "%s (kind=mongodb, name=%s) needs a MongoDB uri"
                                 % (where, entry["name"]))
            entry["exe"] = exe
            return None
        if not os.path.lexists(path):
            return bad_value(where + ".path", path, "does not exist")
        if kind == "sqlite" and not (os.path.isfile(path) and _is_sqlite(path)):
            return bad_value(where + ".path", path, "is not an SQLite database file")
        return None

    @staticmethod
    def _walk(path):
        """Yield (rel, stat) for a tree or a single file; rel is '' for the top, the only symlink followed."""
        st = os.stat(path)
        yield "", st
        if stat.S_ISDIR(st.st_mode):
            for top, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(dirs) + sorted(files):
                    full = os.path.join(top, name)
                    yield os.path.relpath(full, path), os.lstat(full)

    @staticmethod
    def _prev_files(previous):
        return dict((f["path"], f) for f in previous["files"]) if previous else {}

    @staticmethod
    def _same_meta(prev, st):
        return (prev is not None and prev["size"] == st.st_size and prev.get("mtime_ns") == st.st_mtime_ns
                and prev["mode"] == "%04o" % stat.S_IMODE(st.st_mode))

    def estimate(self, entries, previous):
        """What a create will likely do, judged by size, mtime and mode against ``previous``:
        ``{needed: bytes (files that cannot be hardlinked, sqlite copies, the manifest), files, hardlinked}``.
        """
        block = os.statvfs(self._existing_parent()).f_frsize or 4096
        prev_files = self._prev_files(previous)
        needed, count, files, linked = block * 4, 0, 0, 0
        for entry in entries:
            if entry["kind"] == "mongodb":
                files += 1  # its size is unknown until mongodump runs; a full disk is still caught (ENOSPC)
                continue
            if entry["kind"] == "sqlite":
                wal = entry["path"] + "-wal"
                size = os.path.getsize(entry["path"]) + (os.path.getsize(wal) if os.path.exists(wal) else 0)
                needed += _blocks(size, block)
                count, files = count + 1, files + 1
                continue
            for rel, st in self._walk(entry["path"]):
                count += 1
                if stat.S_ISDIR(st.st_mode):
                    needed += block
                elif stat.S_ISREG(st.st_mode):
                    files += 1
                    if self._same_meta(prev_files.get(_key(entry, rel)), st):
                        linked += 1
                    else:
                        needed += _blocks(st.st_size, block)
        return {"needed": needed + _blocks(count * MANIFEST_BYTES_PER_FILE, block), "files": files,
                "hardlinked": linked}

    def _existing_parent(self):
        path = self.root
        while not os.path.exists(path):
            path = os.path.dirname(path)
        return path

    def _check_space(self, needed, min_free):
        st = os.statvfs(self._existing_parent())
        free = st.f_bavail * st.f_frsize
        if free < needed + min_free:
            raise DevboxOpsError("not enough space for a backup in %s: %d bytes free, %d bytes needed "
                                 "(%d for the backup + min_free_bytes %d); nothing was written"
                                 % (self.root, free, needed + min_free, needed, min_free),
                                 param="root", value=self.root, free=free, needed=needed + min_free)
        return free

    def _new_id(self, label, now):
        stamp = time.strftime(ID_TIME, time.gmtime(now))
        backup_id, n = "%s-%s" % (stamp, label), 1
        while os.path.lexists(self._dir(backup_id)):
            n += 1
            backup_id = "%s-%s-%d" % (stamp, label[:60], n)
        return backup_id

    def _remove_incomplete(self):
        removed = self._incomplete()
        for backup_id in removed:
            shutil.rmtree(self._dir(backup_id))
        return removed

    def create(self, paths, label="backup", hardlink_from_previous=True, mongodb_uri=None,
               min_free_bytes=DEFAULT_MIN_FREE, dry_run=False):
        """Make a snapshot of ``paths``; return its summary.

        Returns ``{id, path, files, bytes, hardlinked, copied_bytes, skipped, removed_incomplete}``; with
        ``dry_run`` nothing is written and ``files``/``hardlinked`` are what would likely happen (by size
        and mtime).
        """
        validate_label(label)
        if not isinstance(min_free_bytes, int) or min_free_bytes < 0:
            raise bad_value("min_free_bytes", min_free_bytes, "must be an integer >= 0")
        entries, skipped = self._entries(paths, mongodb_uri)
        if dry_run:
            guess = self._previous(entries, hardlink_from_previous, min_free_bytes)[1]
            return {"id": self._new_id(label, time.time()), "label": label, "path": None, "files": guess["files"],
                    "hardlinked": guess["hardlinked"], "bytes": None, "copied_bytes": guess["needed"],
                    "skipped": skipped, "removed_incomplete": self._incomplete(),
                    "entries": [dict((k, e[k]) for k in ("name", "kind", "path")) for e in entries]}
        if not os.path.isdir(self.root):
            os.makedirs(self.root, 0o700)
        with _Lock(self.root):
            removed = self._remove_incomplete()
            previous = self._previous(entries, hardlink_from_previous, min_free_bytes)[0]
            now = time.time()
            backup_id = self._new_id(label, now)
            target = self._dir(backup_id)
            try:
                os.mkdir(target, 0o700)
                manifest = self._write(target, backup_id, label, now, entries, previous, mongodb_uri)
            except BaseException as exc:
                shutil.rmtree(target, ignore_errors=True)
                if isinstance(exc, DevboxOpsError):
                    raise
                if getattr(exc, "errno", None) in NO_SPACE or "disk is full" in str(exc):
                    raise DevboxOpsError("disk full in %s while writing backup %s (%s); the partial backup "
                                         "was removed" % (self.root, backup_id, exc), param="root",
                                         value=self.root)
                if isinstance(exc, (IOError, OSError, sqlite3.Error)):
                    raise DevboxOpsError("backup %s failed: %s; the partial backup was removed"
                                         % (backup_id, exc))
                raise
        out = self._summary(manifest)
        out.update(path=target, skipped=skipped, removed_incomplete=removed)
        return out

    def _previous(self, entries, hardlink_from_previous, min_free_bytes):
        """The snapshot to hardlink from, and the estimate (refused here when it does not fit)."""
        valid = self._valid() if hardlink_from_previous else []
        previous = valid[0] if valid else None
        guess = self.estimate(entries, previous)
        self._check_space(guess["needed"], min_free_bytes)
        return previous, guess

    def _write(self, target, backup_id, label, now, entries, previous, mongodb_uri):
        manifest = {"format": FORMAT, "id": backup_id, "label": label, "host": socket.gethostname(),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%06dZ" % ((now % 1) * 1e6),
                    "created_ts": now, "entries": [], "files": [], "dirs": [], "symlinks": [],
                    "hardlinked": 0, "copied_bytes": 0}
        os.mkdir(os.path.join(target, DATA), 0o700)
        prev_dir = self._dir(previous["id"]) if previous else None
        prev_files = self._prev_files(previous)
        for entry in entries:
            dst = os.path.join(target, DATA, entry["name"])
            record = {"name": entry["name"], "kind": entry["kind"], "path": entry["path"]}
            if entry["kind"] == "files":
                record["type"] = "dir" if os.path.isdir(entry["path"]) else "file"
                self._copy_tree(entry, target, manifest, prev_dir, prev_files)
            elif entry["kind"] == "sqlite":
                record["type"] = "sqlite"
                self._copy_sqlite(entry["path"], dst)
                record["content_sha256"] = sqlite_fingerprint(dst)
            else:
                record["type"] = "mongodb-archive"
                self._mongodump(entry, dst, mongodb_uri)
            if entry["kind"] != "files":
                manifest["copied_bytes"] += os.path.getsize(dst)
                self._add_file(manifest, target, _key(entry, ""), os.stat(dst), None)
            manifest["entries"].append(record)
        manifest["files"].sort(key=lambda f: f["path"])
        manifest["bytes"] = sum(f["size"] for f in manifest["files"])
        raw = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        write_synced(os.path.join(target, MANIFEST), raw)
        write_synced(os.path.join(target, COMPLETE), (hashlib.sha256(raw).hexdigest() + "\n").encode("ascii"))
        fsync_dir(target)
        return manifest

    @staticmethod
    def _add_file(manifest, target, rel, st, sha, src_st=None):
        src_st = src_st or st
        manifest["files"].append({
            "path": rel, "size": st.st_size, "sha256": sha or hash_file(os.path.join(target, rel)),
            "mode": "%04o" % stat.S_IMODE(src_st.st_mode), "mtime_ns": src_st.st_mtime_ns,
            "uid": src_st.st_uid, "gid": src_st.st_gid})

    def _copy_tree(self, entry, target, manifest, prev_dir, prev_files):
        for rel, st in self._walk(entry["path"]):
            src = os.path.join(entry["path"], rel) if rel else entry["path"]
            key = _key(entry, rel)
            dst = os.path.join(target, key)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(dst, 0o700)
                manifest["dirs"].append({"path": key, "mode": "%04o" % stat.S_IMODE(st.st_mode),
                                         "uid": st.st_uid, "gid": st.st_gid})
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
                manifest["symlinks"].append({"path": key, "target": os.readlink(src)})
            elif stat.S_ISREG(st.st_mode):
                prev = prev_files.get(key)
                if self._same_meta(prev, st) and self._link(prev, src, os.path.join(prev_dir, key), dst):
                    manifest["hardlinked"] += 1
                    self._add_file(manifest, target, key, st, prev["sha256"])
                    continue
                sha = copy_hashed(src, dst, stat.S_IMODE(st.st_mode), fsync=True)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                manifest["copied_bytes"] += os.path.getsize(dst)
                self._add_file(manifest, target, key, os.stat(dst), sha, st)
            # sockets, fifos and devices are not backed up
        for d in reversed(manifest["dirs"]):
            if d["path"].split("/")[1] == entry["name"]:
                os.chmod(os.path.join(target, d["path"]), int(d["mode"], 8) | 0o700)

    @staticmethod
    def _link(prev, src, prev_path, dst):
        """Hardlink ``prev_path`` to ``dst`` when the source still hashes to the previous entry."""
        try:
            pst = os.stat(prev_path)
        except OSError:
            return False
        if pst.st_size != prev["size"] or pst.st_mtime_ns != prev["mtime_ns"]:
            return False  # the stored copy was touched: copy afresh
        if hash_file(src) != prev["sha256"]:
            return False
        os.link(prev_path, dst)
        return True

    @staticmethod
    def _copy_sqlite(src, dst):
        """Consistent copy with the backup API, as a self-contained rollback-journal database."""
        source = sqlite3.connect(src, timeout=30)
        try:
            copy = sqlite3.connect(dst)
            try:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")
                copy.commit()
            finally:
                copy.close()
        finally:
            source.close()

    def _mongodump(self, entry, dst, uri):
        argv = [entry["exe"], "--uri", uri, "--archive=" + dst, "--gzip"]
        rc, out, err = self.runner.run(argv)
        if rc != 0 or not os.path.isfile(dst):
            raise DevboxOpsError("mongodump for %s (%s) failed with rc=%s: %s"
                                 % (entry["name"], redact_url(uri), rc, redact_secret((err or out).strip(), uri)))

    # ------------------------------------------------------------ verify / restore

    def verify(self, backup_id):
        """Recompute every sha256. Returns ``{id, ok, files, mismatches: [{path, problem}]}``."""
        manifest = self._require(backup_id)
        base, mismatches = self._dir(backup_id), []
        for f in manifest["files"]:
            path = os.path.join(base, _safe_rel(f["path"]))
            if not os.path.lexists(path):
                problem = "missing"
            elif not os.path.isfile(path) or os.path.islink(path):
                problem = "not a regular file"
            elif os.path.getsize(path) != f["size"]:
                problem = "size %d != %d" % (os.path.getsize(path), f["size"])
            elif hash_file(path) != f["sha256"]:
                problem = "sha256 mismatch"
            else:
                continue
            mismatches.append({"path": f["path"], "problem": problem})
        for link in manifest["symlinks"]:
            path = os.path.join(base, _safe_rel(link["path"]))
            if not os.path.islink(path) or os.readlink(path) != link["target"]:
                mismatches.append({"path": link["path"], "problem": "symlink target changed or missing"})
        return {"id": backup_id, "ok": not mismatches, "files": len(manifest["files"]), "mismatches": mismatches}

    def restore(self, backup_id, target_map=None, dry_run=False):
        """Restore a verified snapshot, in place or to ``target_map`` {name: path}.

        Returns ``{id, restored: [paths changed], unchanged: n, skipped: [...]}``; with ``dry_run`` the
        paths that would change. Refuses a corrupt snapshot before changing anything. Files present in the
        target but not in the snapshot are left alone.
        """
        manifest = self._require(backup_id)
        names = [e["name"] for e in manifest["entries"]]
        if not isinstance(target_map, (dict, type(None))):
            raise bad_value("target_map", target_map, "must be a dict of entry name to absolute path")
        target_map = dict(target_map or {})
        for name, path in sorted(target_map.items()):
            if name not in names:
                raise bad_value("target_map." + str(name), path, "backup %s has no entry named %s (it has: %s)"
                                % (backup_id, name, ", ".join(names)))
            if not isinstance(path, str) or not os.path.isabs(path):
                raise bad_value("target_map." + name, path, "must be an absolute path")
        report = self.verify(backup_id)
        if report["mismatches"]:
            bad = report["mismatches"][0]
            raise DevboxOpsError("backup %s is corrupt: %s %s; nothing was restored"
                                 % (backup_id, bad["path"], bad["problem"]), param="backup_id",
                                 value=backup_id, mismatches=report["mismatches"])
        base = self._dir(backup_id)
        result = {"id": backup_id, "restored": [], "unchanged": 0, "skipped": []}
        with _Lock(self.root):
            try:
                for entry in manifest["entries"]:
                    src = os.path.join(base, DATA, entry["name"])
                    if entry["kind"] == "mongodb":
                        result["skipped"].append({"name": entry["name"], "reason": "restore MongoDB archives "
                                                  "with mongorestore --archive=%s --gzip" % src})
                        continue
                    dest = os.path.normpath(target_map.get(entry["name"]) or entry["path"])
                    if entry["kind"] == "sqlite":
                        self._restore_sqlite(entry, src, dest, dry_run, result)
                    else:
                        self._restore_files(manifest, entry, base, dest, dry_run, result)
            except (IOError, OSError, sqlite3.Error) as exc:
                raise DevboxOpsError("restore of backup %s failed: %s (restored before the failure: %s)"
                                     % (backup_id, exc, ", ".join(result["restored"]) or "nothing"))
        return result

    @staticmethod
    def _restore_sqlite(entry, src, dest, dry_run, result):
        if os.path.exists(dest) and _is_sqlite(dest) and sqlite_fingerprint(dest) == entry["content_sha256"]:
            result["unchanged"] += 1
            return
        result["restored"].append(dest)
        if dry_run:
            return
        if not os.path.isdir(os.path.dirname(dest)):
            os.makedirs(os.path.dirname(dest))
        source = sqlite3.connect(_sqlite_uri(src, True), uri=True)
        try:
            target = sqlite3.connect(dest, timeout=30)
            try:
                source.backup(target)  # one transaction on the target: readers see old or new, never half
            finally:
                target.close()
        finally:
            source.close()

    @staticmethod
    def _same_file(path, f, owner):
        try:
            st = os.lstat(path)
        except OSError:
            return False
        return (stat.S_ISREG(st.st_mode) and st.st_size == f["size"] and "%04o" % stat.S_IMODE(st.st_mode) == f["mode"]
                and (not owner or (st.st_uid, st.st_gid) == (f["uid"], f["gid"]))
                and hash_file(path) == f["sha256"])

    def _restore_files(self, manifest, entry, base, dest, dry_run, result):
        prefix = _key(entry, "")
        owner = os.geteuid() == 0  # only root can give files back their owners

        def mine(items):
            for item in items:
                if item["path"] == prefix or item["path"].startswith(prefix + "/"):
                    yield dest if item["path"] == prefix else os.path.join(dest, item["path"][len(prefix) + 1:]), item

        for path, d in mine(manifest["dirs"]):
            mode = int(d["mode"], 8)
            if os.path.isdir(path) and stat.S_IMODE(os.stat(path).st_mode) == mode:
                continue
            result["restored"].append(path)
            if not dry_run:
                if not os.path.isdir(path):
                    os.makedirs(path)
                os.chmod(path, mode)
                if owner:
                    os.chown(path, d["uid"], d["gid"])
        for path, f in mine(manifest["files"]):
            if self._same_file(path, f, owner):
                result["unchanged"] += 1
                continue
            result["restored"].append(path)
            if dry_run:
                continue
            if not os.path.isdir(os.path.dirname(path)):
                os.makedirs(os.path.dirname(path))
            fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".restore",
                                       dir=os.path.dirname(path))
            try:
                copy_hashed(os.path.join(base, f["path"]), tmp, int(f["mode"], 8), fd=fd, fsync=True)
                os.utime(tmp, ns=(f["mtime_ns"], f["mtime_ns"]))
                if owner:
                    os.chown(tmp, f["uid"], f["gid"])
                os.rename(tmp, path)  # atomic: readers see the old file or the new one
            except BaseException:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                raise
        for path, link in mine(manifest["symlinks"]):
            if os.path.islink(path) and os.readlink(path) == link["target"]:
                result["unchanged"] += 1
                continue
            result["restored"].append(path)
            if not dry_run:
                tmp = "%s.%s.restore" % (path, binascii.hexlify(os.urandom(4)).decode("ascii"))
                os.symlink(link["target"], tmp)
                os.rename(tmp, path)

    # ------------------------------------------------------------ prune

    def prune(self, keep=None, max_age_days=None, dry_run=False, now=None):
        """Remove incomplete snapshots, then valid ones beyond ``keep`` newest or older than
        ``max_age_days``. The newest valid snapshot is never removed. Returns the removed ids."""
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
            raise bad_value("keep", keep, "must be an integer >= 1")
        if max_age_days is not None and (not isinstance(max_age_days, (int, float))
                                         or isinstance(max_age_days, bool) or max_age_days < 0):
            raise bad_value("max_age_days", max_age_days, "must be a number >= 0")
        now = time.time() if now is None else now
        if not os.path.isdir(self.root):
            return []
        valid = self._valid()
        doomed = list(self._incomplete())
        for index, manifest in enumerate(valid):
            too_many = keep is not None and index >= keep
            too_old = max_age_days is not None and now - manifest["created_ts"] > max_age_days * 86400
            if index > 0 and (too_many or too_old):
                doomed.append(manifest["id"])
        if not dry_run and doomed:
            with _Lock(self.root):
                for backup_id in doomed:
                    shutil.rmtree(self._dir(backup_id))
        return doomed


def redact_secret(text, uri):
    """``text`` with the uri, and the password inside it, masked."""
    if not text or not uri:
        return text
    text = text.replace(uri, redact_url(uri))
    password = urlsplit(uri).password or ""
    for secret in (password, unquote(password)):
        if secret:
            text = text.replace(secret, "********")
    return text
