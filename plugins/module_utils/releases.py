# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Release store: immutable releases, an atomic ``current`` switch, history and a deploy lock.

Layout under ``root`` (one app)::

    releases/<id>/                    code; <id> = YYYYmmddTHHMMSSZ-<8 hex of the content hash>
    releases/<id>/.devbox-release.json  manifest (id, app, version, sha, content_hash, created_at,
                                        source, status, status_history, build, incremental)
    releases/<id>/.devbox-files.json.gz file index (kind, mode, sha256, size, stat signature, mtime)
    releases/.tmp-<label>-<pid>-<rand>  builds and staging; invisible until renamed to releases/<id>
    current -> releases/<id>          relative symlink, replaced atomically (symlink + rename)
    shared/                           owned by the deploy role
    history.jsonl                     one JSON event per line
    .lock                             deploy lock (owner + sha256 of the owner's token)
    .cache/git/<key>.git              bare git cache, fetched without storing the URL

Decisions worth knowing:

* Releases are ordered by ``(created_at, id)`` from the manifest, never by mtime.
* Rollback ``previous`` takes the newest release older than ``current`` whose status is ``verified``
  or ``active``. ``built`` never ran healthy, ``failed`` is broken, and ``rolled_back`` is code someone
  rolled away from, so none of them is picked automatically. A ``rolled_back`` release may still be
  named explicitly (``to=<id>``); a ``failed`` one never.
* Unchanged files are hardlinked from the newest non-failed release, so releases share inodes: an app
  must not edit its own code in place. A base file whose mode, size or mtime no longer match the index
  is copied instead of linked (one ``lstat`` per base file, after the scan).
* For a directory source, a file whose (dev, inode, size, mtime, ctime) equal those recorded by the
  previous release built from the same directory reuses its recorded sha256 (the check git and rsync
  use; ctime cannot be set back by user space). Everything else is hashed; ``full_hash=True`` hashes
  every file.
* The file index is written without fsync (the manifest is fsynced): a lost index only makes the next
  build copy instead of link.
* Symlinks must be relative and stay inside the tree, for every source type.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fnmatch
import functools
import getpass
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tarfile
import tempfile
import time
import zipfile
from datetime import datetime, timezone

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value
from ansible_collections.devbox.ops.plugins.module_utils.events import MASK, is_secret_key, redact, redact_text
from ansible_collections.devbox.ops.plugins.module_utils.files import copy_hashed, fsync_dir, hash_file, inside
from ansible_collections.devbox.ops.plugins.module_utils.runner import SubprocessRunner

ID_RE = re.compile(r"\A[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}(?:-[0-9]{1,3})?\Z")
STATUSES = ("built", "verified", "active", "failed", "rolled_back")
ROLLBACK_STATUSES = ("verified", "active")
SOURCE_TYPES = ("dir", "git", "archive")
ARCHIVE_EXTS = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
DEFAULT_EXCLUDE = (".git",)
MANIFEST = ".devbox-release.json"
INDEX = ".devbox-files.json.gz"
RESERVED = (MANIFEST, INDEX)
LIST_CAP = 50
TMP_MAX_AGE_S = 86400
SUCCESS_RESULTS = ("success", "succeeded", "ok")
REF_RE = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9._/+-]{0,254}\Z")
APP_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
TOKEN_RE = re.compile(r"\A[A-Za-z0-9_.~+/=-]{16,256}\Z")
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0"}


# ---------------------------------------------------------------- small helpers

def utcnow():
    return datetime.now(timezone.utc)


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def check_release_id(value, param="release_id"):
    """Return ``value`` when it is a release id, else raise naming ``param`` and the value."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise bad_value(param, value, "not a release id (YYYYmmddTHHMMSSZ-<8 hex>)")
    return value


def redact_location(location):
    """A source location without credentials: URL user info, query and fragment are dropped."""
    if "://" not in location:
        return location
    scheme, rest = location.split("://", 1)
    host_path = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, sep, path = host_path.partition("/")
    return "%s://%s%s%s" % (scheme, netloc.rsplit("@", 1)[-1], sep, path)


def url_secrets(url):
    """The parts of a URL that may be credentials: user info, each half of it, query and fragment."""
    if "://" not in url:
        return []
    rest = url.split("://", 1)[1]
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    found = []
    if "@" in netloc:
        info = netloc.rsplit("@", 1)[0]
        found += [info] + info.split(":", 1)
    for sep in ("?", "#"):
        if sep in rest:
            found.append(rest.split(sep, 1)[1])
    return sorted((s for s in set(found) if len(s) >= 3), key=len, reverse=True)


def mask_secrets(text, secrets_):
    for secret in secrets_:
        text = text.replace(secret, MASK)
    return redact_text(text)


def secret_values(value):
    """Secret values in an event (under secret keys, or URL credentials), so a caller can hide them
    from every output; :func:`events.redact` masks the same in what is written."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if is_secret_key(k):
                found.extend(secret_leaves(v))
            else:
                found.extend(secret_values(v))
    elif isinstance(value, (list, tuple)):
        for v in value:
            found.extend(secret_values(v))
    elif isinstance(value, str):
        found.extend(url_secrets(value) if "://" in value else [])
    return found


def secret_leaves(value):
    if isinstance(value, dict):
        return [x for v in value.values() for x in secret_leaves(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in secret_leaves(v)]
    return [] if value is None or isinstance(value, bool) else [str(value)]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def write_json(path, obj, mode=0o644, fsync=True):
    """Write ``obj`` to ``path`` atomically (temp file, fsync, rename); gzip when it ends in .gz."""
    tmp = "%s.tmp-%s" % (path, secrets.token_hex(4))
    data = json.dumps(obj, sort_keys=not path.endswith(".gz"), separators=(",", ":"))
    data = data.encode("utf-8", "surrogateescape")
    if path.endswith(".gz"):
        data = gzip.compress(data, 1, mtime=0)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_json(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        return json.loads(data.decode("utf-8", "surrogateescape"))
    except (OSError, ValueError, EOFError):
        return None


def _age_s(path):
    try:
        return time.time() - os.lstat(path).st_mtime
    except OSError:
        return 0


# ---------------------------------------------------------------- trees: scan, hash, safe extraction

def _excluder(exclude):
    """``(names, match)``: literal patterns as a set, the glob patterns as one regex (or None)."""
    literal = set(p for p in exclude if not any(c in p for c in "*?["))
    globs = [p for p in exclude if p not in literal]
    return literal, re.compile("|".join(fnmatch.translate(p) for p in globs)).match if globs else None


def scan_dirs(top, exclude=(), previous=None):
    """:func:`scan_tree` plus ``layout``: relative directory ('' for ``top``) -> the ``(name, rel)`` of
    its files and symlinks, parents before children. One ``scandir`` per directory and one ``lstat``
    per entry (relative to the directory's fd); a file is read only when ``previous`` cannot vouch for
    its digest."""
    cached = (previous or {}).get
    names, match = _excluder(exclude)
    real_top = os.path.realpath(top)
    entries, skipped, layout, stack = {}, [], {}, [""]
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    s_reg, s_dir, s_lnk = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
    while stack:
        rel_dir = stack.pop()
        prefix = rel_dir + "/" if rel_dir else ""
        here = layout[rel_dir] = []
        fd = os.open(top + "/" + rel_dir if rel_dir else top, flags)
        try:
            with os.scandir(fd) as it:
                found = list(it)
            for de in found:
                name = de.name
                rel = prefix + name
                if name in names or rel in names or (match and (match(name) or match(rel))) or \
                        (not rel_dir and name in RESERVED):
                    continue
                st = de.stat(follow_symlinks=False)
                mode = st.st_mode
                fmt = mode & 0o170000
                if fmt == s_reg:
                    sig = [st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
                    size = st.st_size
                    known = cached(rel)
                    if known is not None and known[4] == sig and known[3] == size and known[0] == "f":
                        digest = known[2]
                    else:
                        digest = hash_file(top + "/" + rel)
                    entries[rel] = ["f", mode & 0o777, digest, size, sig]
                    here.append((name, rel))
                elif fmt == s_dir:
                    entries[rel] = ["d", mode & 0o777 | 0o700, None, 0, None]
                    stack.append(rel)
                elif fmt == s_lnk:
                    target = os.readlink(name, dir_fd=fd)
                    if os.path.isabs(target) or not inside(os.path.realpath(top + "/" + rel), real_top):
                        raise DevboxOpsError("symlink %r -> %r leaves the tree; only relative links inside it are "
                                             "allowed (exclude it or make it relative)" % (rel, target),
                                             param="source", value=rel)
                    entries[rel] = ["l", 0, target, 0, None]
                    here.append((name, rel))
                else:
                    skipped.append(rel)
        finally:
            os.close(fd)
    return entries, sorted(skipped), layout


def scan_tree(top, exclude=(), previous=None):
    """Walk ``top`` without following links.

    Returns ``(entries, skipped)``: ``entries`` maps a relative path to ``[kind, mode, digest, size,
    sig]`` with kind ``d`` (dir), ``f`` (file, digest = sha256) or ``l`` (symlink, digest = target);
    ``sig`` is the stat signature ``[dev, inode, mtime_ns, ctime_ns]``. ``previous`` is the ``entries``
    of an earlier scan of the same directory: a file whose signature and size equal the ones recorded
    there keeps the recorded digest without being read (the check git's index and rsync use; a
    rewrite that puts the mtime back still moves the ctime, which user space cannot set). ``exclude``
    globs match a relative path or a name at any depth. Sockets, fifos and devices are skipped.
    """
    return scan_dirs(top, exclude, previous)[:2]


def intact_files(top, index):
    """The files of the release tree ``top`` that still match their ``index`` entries: regular, with the
    recorded mode, size and mtime (one ``lstat`` each, relative to a directory fd). A release edited in
    place is caught here, so its changed files are copied, not linked."""
    by_dir = {}
    for rel, e in index.items():
        if e[0] == "f" and len(e) > 5:
            parent, _sep, name = rel.rpartition("/")
            by_dir.setdefault(parent, []).append((name, rel, e))
    intact = set()
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    for parent, items in by_dir.items():
        try:
            fd = os.open(top + "/" + parent if parent else top, flags)
        except OSError:
            continue
        try:
            for name, rel, e in items:
                try:
                    st = os.lstat(name, dir_fd=fd)
                except OSError:
                    continue
                if st.st_mtime_ns == e[5] and st.st_size == e[3] and st.st_mode & 0o170777 == stat.S_IFREG | e[1]:
                    intact.add(rel)
        finally:
            os.close(fd)
    return intact


def content_hash(entries):
    """sha256 over sorted paths, kinds, file modes and file hashes (symlinks by target)."""
    lines = []
    add = lines.append
    for rel in sorted(entries):
        e = entries[rel]
        kind = e[0]
        if kind == "f":
            add("f\0%s\0%o\0%s\n" % (rel, e[1], e[2]))
        elif kind == "l":
            add("l\0%s\0\0%s\n" % (rel, e[2]))
        else:
            add("d\0%s\n" % rel)
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def packed_content_hash(top, exclude=DEFAULT_EXCLUDE):
    """The content hash of the release the directory ``top`` makes once packed and staged as an archive
    (the deploy role's path): :func:`content_hash` of :func:`scan_tree`, with each file mode as
    :func:`extract_archive` writes it (owner read/write added). The controller uses it to see, without
    copying anything, that a host already serves this content. Raises DevboxOpsError as scan_tree does."""
    entries = scan_tree(top, exclude)[0]
    for entry in entries.values():
        if entry[0] == "f":
            entry[1] |= 0o600
    return content_hash(entries)


def _member_rel(archive, name):
    """A safe relative path for an archive member, or raise naming the member."""
    if "\0" in name or name.startswith("/"):
        raise DevboxOpsError("source=%r: archive member %r has an absolute path" % (archive, name),
                             param="source", value=archive)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DevboxOpsError("source=%r: archive member %r contains '..'" % (archive, name),
                             param="source", value=archive)
    return "/".join(parts)


def _archive_members(path):
    """Yield ``(name, kind, mode, payload)``; kind f/d/l/h/x, payload = opener, link target or None."""
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                umode = info.external_attr >> 16 if info.create_system == 3 else 0
                if stat.S_ISLNK(umode):
                    yield info.filename, "l", 0, zf.read(info).decode("utf-8", "surrogateescape")
                elif info.filename.endswith("/"):
                    yield info.filename, "d", stat.S_IMODE(umode) or 0o755, None
                else:
                    yield info.filename, "f", stat.S_IMODE(umode) or 0o644, (lambda i=info: zf.open(i))
        return
    with tarfile.open(path, "r:*") as tf:
        for m in tf:
            if m.isreg():
                yield m.name, "f", m.mode, (lambda m=m: tf.extractfile(m))
            elif m.isdir():
                yield m.name, "d", m.mode, None
            elif m.issym():
                yield m.name, "l", 0, m.linkname
            elif m.islnk():
                yield m.name, "h", m.mode, m.linkname
            elif m.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                continue
            else:
                yield m.name, "x", 0, None


def extract_archive(path, dest):
    """Extract a tar/zip archive into the empty directory ``dest``, refusing anything unsafe.

    Refused: absolute member paths, ``..``, members below a symlink member, absolute link targets,
    links resolving outside ``dest``, devices and fifos. Tar hardlinks become copies. Symlinks are
    made last, so no write can go through one.
    """
    if not os.path.isfile(path):
        raise bad_value("source", path, "archive not found")
    real_dest = os.path.realpath(dest)
    links, link_names, dir_modes = [], set(), []

    def refuse(name, why):
        raise DevboxOpsError("source=%r: archive member %r %s" % (path, name, why), param="source", value=path)

    try:
        for name, kind, mode, payload in _archive_members(path):
            rel = _member_rel(path, name)
            if not rel:
                continue
            parts = rel.split("/")
            if any("/".join(parts[:i]) in link_names for i in range(1, len(parts) + 1)):
                refuse(name, "is at or below a symlink member")
            dst = os.path.join(dest, rel)
            if kind == "x":
                refuse(name, "is a device, fifo or other special file")
            if kind == "l":
                if os.path.isabs(payload):
                    refuse(name, "is a symlink to the absolute path %r" % payload)
                links.append((name, rel, payload))
                link_names.add(rel)
                continue
            if kind == "d":
                os.makedirs(dst, exist_ok=True)
                dir_modes.append((dst, (stat.S_IMODE(mode) & 0o777) | 0o700))
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.isdir(dst):
                refuse(name, "is a file over a directory")
            if kind == "h":
                src = os.path.join(dest, _member_rel(path, payload))
                if not os.path.isfile(src):
                    refuse(name, "is a hardlink to %r, which is not a file extracted before it" % payload)
                shutil.copyfile(src, dst)
            else:
                stream = payload()
                fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
                stream.close()
            os.chmod(dst, (stat.S_IMODE(mode) & 0o777) | 0o600)
        for name, rel, target in links:
            dst = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.lexists(dst):
                refuse(name, "is a symlink over an existing member")
            os.symlink(target, dst)
        for dst, mode in dir_modes:
            os.chmod(dst, mode)
        for name, rel, target in links:
            if not inside(os.path.realpath(os.path.join(dest, rel)), real_dest):
                refuse(name, "is a symlink to %r, which leaves the archive" % target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise bad_value("source", path, "unreadable archive: %s" % exc)


def incremental_report(old, new, against):
    """Compare two file maps (rel -> entry) by kind, mode and digest; directories are ignored."""
    added, modified = [], []
    unchanged = 0
    for rel, e in new.items():
        if e[0] == "d":
            continue
        o = old.get(rel)
        if o is None or o[0] == "d":
            added.append(rel)
        elif o[2] != e[2] or o[1] != e[1] or o[0] != e[0]:
            modified.append(rel)
        else:
            unchanged += 1
    deleted = [rel for rel, o in old.items() if o[0] != "d" and new.get(rel, ("d",))[0] == "d"]
    added.sort()
    modified.sort()
    deleted.sort()
    return {
        "against": against,
        "new": len(added), "modified": len(modified), "deleted": len(deleted), "unchanged": unchanged,
        "files": {"new": added[:LIST_CAP], "modified": modified[:LIST_CAP], "deleted": deleted[:LIST_CAP]},
        "capped_at": LIST_CAP,
    }


def _fill(top, tmp, base_path, plan, movable):
    """Carry out ``plan`` (``(rel_dir, names to link, (name, rel, entry) to copy)``) in the new tree
    ``tmp``: link from ``base_path``, copy (or move) from ``top``; a copy gets the mtime of its entry."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    for rel_dir, links, others in plan:
        dst_fd = os.open(tmp + "/" + rel_dir if rel_dir else tmp, flags)
        try:
            if links:
                prev_fd = os.open(base_path + "/" + rel_dir if rel_dir else base_path, flags)
                try:
                    link = functools.partial(os.link, src_dir_fd=prev_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
                    for name in links:
                        link(name, name)
                finally:
                    os.close(prev_fd)
            for name, rel, entry in others:
                if entry[0] == "l":
                    os.symlink(entry[2], name, dir_fd=dst_fd)
                    continue
                src, dst = top + "/" + rel, tmp + "/" + rel
                if movable:
                    os.rename(src, dst)
                    os.chmod(dst, entry[1])
                    continue
                if copy_hashed(src, dst, entry[1]) != entry[2]:
                    raise DevboxOpsError("source=%r: %r changed while the release was being built; run again"
                                         % (top, rel), param="source", value=top)
                os.utime(name, ns=(entry[5], entry[5]), dir_fd=dst_fd, follow_symlinks=False)
        finally:
            os.close(dst_fd)


def detect_source_type(source, ref=None):
    """dir, git or archive for ``source`` (path or URL); raises naming ``source`` when unknown."""
    if re.match(r"\A[A-Za-z][A-Za-z0-9+.-]*://", source) or re.match(r"\A[^/\s:]+@[^/\s:]+:", source):
        return "git"
    if not os.path.isabs(source):
        raise bad_value("source", redact_location(source), "must be an absolute path or a git URL")
    if os.path.isdir(source):
        return "git" if ref and os.path.exists(os.path.join(source, ".git")) else "dir"
    if os.path.isfile(source) and source.endswith(ARCHIVE_EXTS):
        return "archive"
    raise bad_value("source", source, "not a directory, an archive (%s) or a git URL" % ", ".join(ARCHIVE_EXTS))


# ---------------------------------------------------------------- the store

class ReleaseStore:
    """Releases of one app under ``root``. Plain Python; git runs through ``runner`` argv lists."""

    def __init__(self, root, app=None, runner=None):
        if not isinstance(root, str) or not os.path.isabs(root) or root.rstrip("/") == "":
            raise bad_value("root", root, "must be an absolute path other than /")
        if app is not None and not APP_RE.match(str(app)):
            raise bad_value("app", app, "must match %s" % APP_RE.pattern)
        self.root = os.path.normpath(root)
        self.app = app or os.path.basename(self.root)
        self.runner = runner or SubprocessRunner()
        self.releases_dir = os.path.join(self.root, "releases")
        self.current_link = os.path.join(self.root, "current")
        self.history_file = os.path.join(self.root, "history.jsonl")
        self.lock_file = os.path.join(self.root, ".lock")
        self.git_cache = os.path.join(self.root, ".cache", "git")

    # -- reading

    def _path(self, release_id):
        return os.path.join(self.releases_dir, release_id)

    def _read_manifest(self, release_id):
        m = read_json(os.path.join(self._path(release_id), MANIFEST))
        if not isinstance(m, dict) or m.get("id") != release_id or m.get("status") not in STATUSES:
            return None
        return m

    def index(self, release_id):
        """The file map of a release (rel -> entry), plus the source directory it was scanned from."""
        data = read_json(os.path.join(self._path(release_id), INDEX)) or {}
        return data.get("files") or {}, data.get("source_dir")

    def list(self):
        """Valid releases (manifest present and matching), oldest first by (created_at, id)."""
        try:
            names = os.listdir(self.releases_dir)
        except FileNotFoundError:
            return []
        found = [self._read_manifest(n) for n in names if ID_RE.match(n)]
        return sorted((m for m in found if m), key=lambda m: (m["created_at"], m["id"]))

    def get(self, release_id, param="release_id"):
        check_release_id(release_id, param)
        m = self._read_manifest(release_id)
        if m is None:
            raise bad_value(param, release_id, "no such release under %s" % self.releases_dir)
        return m

    def current_id(self):
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        parent, name = os.path.split(os.path.normpath(target))
        if ID_RE.match(name) and parent in ("releases", self.releases_dir) and self._read_manifest(name):
            return name
        return None

    def current(self):
        """The manifest ``current`` points to, or None."""
        cid = self.current_id()
        return self._read_manifest(cid) if cid else None

    # -- create

    def create(self, source, source_type=None, version=None, ref=None, exclude=DEFAULT_EXCLUDE, dry_run=False,
               full_hash=False):
        """Build a release from a directory, a git repo + ref, or an archive.

        Returns ``(manifest, created)``. With ``dry_run`` nothing under ``root`` changes (git and
        archives are staged in a temporary directory) and the manifest is the one that would be built.
        With ``full_hash`` every source file is hashed, even one whose stat signature matches the
        previous scan of the same directory.
        """
        started = time.monotonic()
        if not isinstance(source, str) or not source:
            raise bad_value("source", source, "must be a path or URL")
        if version is not None and (not isinstance(version, str) or not re.match(r"\A[^\s/\\]{1,128}\Z", version)):
            raise bad_value("version", version, "must be 1-128 characters without spaces or slashes")
        if ref is not None and (not isinstance(ref, str) or not REF_RE.match(ref) or ".." in ref):
            raise bad_value("ref", ref, "not a safe git ref (branch, tag or sha)")
        if not isinstance(exclude, (list, tuple)) or not all(isinstance(p, str) and p for p in exclude):
            raise bad_value("exclude", exclude, "must be a list of glob patterns")
        if not isinstance(full_hash, bool):
            raise bad_value("full_hash", full_hash, "must be true or false")
        source_type = source_type or detect_source_type(source, ref)
        if source_type not in SOURCE_TYPES:
            raise bad_value("source_type", source_type, "must be one of %s" % ", ".join(SOURCE_TYPES))
        location = redact_location(source)
        if source_type == "dir" and not (os.path.isabs(source) and os.path.isdir(source)):
            raise bad_value("source", location, "not an absolute path to a directory")
        if not dry_run:
            os.makedirs(self.releases_dir, exist_ok=True)
            self.clean_tmp()
        work = tempfile.mkdtemp(prefix="devbox-release-") if dry_run else None
        stage = None
        try:
            sha = None
            if source_type == "dir":
                top = os.path.realpath(source)
            else:
                stage = self._mkdtemp("src", work)
                top = stage
                if source_type == "git":
                    sha = self._git_export(source, location, ref, stage, work)
                else:
                    extract_archive(source, stage)
            releases = self.list()
            base = next((m for m in reversed(releases) if m["status"] != "failed"), None)
            base_index, base_dir = self.index(base["id"]) if base else ({}, None)
            trusted = base_index if source_type == "dir" and base_dir == top and not full_hash else None
            entries, skipped, layout = scan_dirs(top, exclude, trusted)
            chash = content_hash(entries)
            for m in reversed(releases):
                if m["content_hash"] == chash and m["status"] != "failed" and version in (None, m.get("version")):
                    return m, False
            active = self.current_id()
            if active == (base and base["id"]):
                active_index = base_index
            else:
                active_index = self.index(active)[0] if active else {}
            now = utcnow()
            release_id = self._new_id(now, chash)
            manifest = {
                "id": release_id, "app": self.app, "version": version, "sha": sha, "content_hash": chash,
                "created_at": iso(now), "source": {"type": source_type, "location": location, "ref": ref},
                "status": "built", "status_history": [{"status": "built", "at": iso(now)}],
                "incremental": incremental_report(active_index, entries, active),
            }
            if dry_run:
                return manifest, True
            index = {"source_dir": top if source_type == "dir" else None, "files": entries}
            intact = intact_files(self._path(base["id"]), base_index) if base_index else ()
            build = self._build(top, entries, layout, release_id, base and base["id"], base_index, intact,
                                stage is not None, index)
            build.update(skipped=skipped[:LIST_CAP], seconds=round(time.monotonic() - started, 3))
            manifest["build"] = build
            tmp = build.pop("tmp")
            try:
                write_json(os.path.join(tmp, MANIFEST), manifest)
                os.chmod(tmp, 0o755)
                os.rename(tmp, self._path(release_id))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(self.releases_dir)
            return manifest, True
        finally:
            if stage:
                shutil.rmtree(stage, ignore_errors=True)
            if work:
                shutil.rmtree(work, ignore_errors=True)

    def _mkdtemp(self, label, work=None):
        parent = work or self.releases_dir
        return tempfile.mkdtemp(prefix=".tmp-%s-%d-" % (label, os.getpid()), dir=parent)

    def _new_id(self, now, chash):
        base = "%s-%s" % (now.strftime("%Y%m%dT%H%M%SZ"), chash[:8])
        candidate, n = base, 0
        while os.path.lexists(self._path(candidate)):
            n += 1
            candidate = "%s-%d" % (base, n)
        return candidate

    def _build(self, top, entries, layout, release_id, base_id, base_index, intact, movable, index):
        """Fill ``releases/.tmp-<id>-<pid>-<rand>``: link unchanged files from the base, copy the rest.

        A file is linked when the base index has the same kind, mode and sha256 and the base file is
        ``intact`` (see :func:`intact_files`); anything else is copied (or moved, for a staged source).
        Each directory is filled through directory fds, so a link resolves one name, not a whole path.
        A link keeps the base file's mtime and a copy gets the source's, and the file index ``index``
        records it.
        """
        base_get = base_index.get
        plan, size, linked = [], 0, 0
        for rel_dir, items in layout.items():
            links, others = [], []
            for name, rel in items:
                e = entries[rel]
                size += e[3]
                old = base_get(rel)
                if old is not None and rel in intact and old[2] == e[2] and old[1] == e[1] and e[0] == "f":
                    links.append(name)
                    e.append(old[5])
                else:
                    others.append((name, rel, e))
                    if e[0] == "f":
                        e.append(e[4][2])
            if items:
                plan.append((rel_dir, links, others))
                linked += len(links)
        tmp = self._mkdtemp(release_id)
        base_path = self._path(base_id) if base_id else None
        try:
            for rel_dir in layout:
                if rel_dir:
                    os.mkdir(tmp + "/" + rel_dir, 0o700)
            _fill(top, tmp, base_path, plan, movable)
            for rel_dir in reversed(list(layout)):
                if rel_dir:
                    os.chmod(tmp + "/" + rel_dir, entries[rel_dir][1])
            write_json(os.path.join(tmp, INDEX), index, fsync=False)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        copied = sum(1 for p in plan for o in p[2] if o[2][0] == "f")
        return {"tmp": tmp, "files": linked + copied, "bytes": size, "linked": linked, "copied": copied,
                "linked_from": base_id if linked else None}

    def _git_export(self, url, location, ref, stage, work):
        """Fetch ``url`` into the bare cache and export ``ref`` into ``stage``; returns the commit sha."""
        cache_root = os.path.join(work, "git") if work else self.git_cache
        cache = os.path.join(cache_root, hashlib.sha256(location.encode()).hexdigest()[:16] + ".git")

        def git(*args):
            rc, out, err = self.runner.run(["git", "--git-dir", cache] + list(args), env=GIT_ENV, timeout=900)
            if rc != 0:
                text = mask_secrets((err or out or "").replace(url, location), url_secrets(url))
                raise DevboxOpsError("source=%r: git %s failed (rc=%s): %s"
                                     % (location, args[0], rc, text.strip()[-400:]), param="source", value=location)
            return out

        if not os.path.isdir(cache):
            os.makedirs(cache_root, exist_ok=True)
            git("init", "--quiet", "--bare")
        git("fetch", "--quiet", "--force", "--prune", "--no-write-fetch-head", url, "+HEAD:refs/devbox/HEAD",
            "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
        rc, out, err = self.runner.run(["git", "--git-dir", cache, "rev-parse", "--verify", "--quiet",
                                        "%s^{commit}" % (ref or "refs/devbox/HEAD")], env=GIT_ENV)
        if rc != 0:
            raise bad_value("ref", ref, "not found in %s" % location)
        sha = out.strip()
        tar = stage + ".tar"
        try:
            git("archive", "--format=tar", "-o", tar, sha)
            extract_archive(tar, stage)
        finally:
            if os.path.exists(tar):
                os.unlink(tar)
        return sha

    # -- status and switching

    def set_status(self, release_id, status, dry_run=False):
        """Set a release's status; returns ``(manifest, changed)``."""
        if status not in STATUSES:
            raise bad_value("status", status, "must be one of %s" % ", ".join(STATUSES))
        m = self.get(release_id)
        if m["status"] == status or dry_run:
            return m, m["status"] != status
        m["status"] = status
        m["status_history"].append({"status": status, "at": iso(utcnow())})
        write_json(os.path.join(self._path(release_id), MANIFEST), m)
        return m, True

    def activate(self, release_id, dry_run=False):
        """Point ``current`` at ``release_id`` atomically; the replaced active release becomes verified.

        Returns ``{"changed", "previous", "current"}``; no change when it is already current and active.
        """
        m = self.get(release_id)
        if m["status"] == "failed":
            raise bad_value("release_id", release_id, "is marked failed; set another status before activating it")
        if os.path.lexists(self.current_link) and not os.path.islink(self.current_link):
            raise bad_value("root", self.root, "%s exists and is not a symlink" % self.current_link)
        previous = self.current_id()
        switch = previous != release_id
        if dry_run:
            return {"changed": switch or m["status"] != "active", "previous": previous, "current": release_id}
        if switch:
            tmp = "%s.tmp-%s" % (self.current_link, secrets.token_hex(4))
            os.symlink(os.path.join("releases", release_id), tmp)
            try:
                os.replace(tmp, self.current_link)
            except OSError:
                os.unlink(tmp)
                raise
            fsync_dir(self.root)
        for other in self.list():
            if other["id"] != release_id and other["status"] == "active":
                self.set_status(other["id"], "verified")
        changed = self.set_status(release_id, "active")[1] or switch
        return {"changed": changed, "previous": previous, "current": release_id}

    def rollback_target(self, to="previous"):
        """The release a rollback would activate (see the module docstring for the rules)."""
        releases = self.list()
        if to in (None, "previous"):
            cur = self.current_id()
            ids = [m["id"] for m in releases]
            older = releases[:ids.index(cur)] if cur in ids else releases
            for m in reversed(older):
                if m["status"] in ROLLBACK_STATUSES:
                    return m
            raise DevboxOpsError("to='previous': no %s release older than %s to roll back to"
                                 % ("/".join(ROLLBACK_STATUSES), cur or "(nothing is current)"),
                                 param="to", value="previous")
        m = self.get(to, param="to")
        if m["status"] == "failed":
            raise bad_value("to", to, "is marked failed and is never a rollback target")
        return m

    # -- pruning

    def clean_tmp(self, max_age_s=TMP_MAX_AGE_S):
        """Remove ``.tmp-*`` builds whose process is gone (or older than ``max_age_s``); returns names."""
        removed = []
        for parent in (self.releases_dir, self.root):
            try:
                names = os.listdir(parent)
            except FileNotFoundError:
                continue
            for name in names:
                if parent == self.releases_dir and name.startswith(".tmp-"):
                    parts = name.rsplit("-", 2)
                    pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
                elif parent == self.root and name.startswith(("current.tmp-", ".lock.")):
                    pid = None
                else:
                    continue
                path = os.path.join(parent, name)
                age = _age_s(path)
                if age < max_age_s and (age < 60 if pid is None else (pid == os.getpid() or pid_alive(pid))):
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
                removed.append(name)
        return sorted(removed)

    def prune(self, keep=5, max_age_days=None, dry_run=False):
        """Remove releases beyond the newest ``keep`` and/or older than ``max_age_days``.

        Never the current release nor the rollback target. Returns ``{"removed": [ids], "stale": [tmp
        names]}``; with ``dry_run`` nothing is removed.
        """
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
            raise bad_value("keep", keep, "must be an integer >= 0")
        if max_age_days is not None and (isinstance(max_age_days, bool) or
                                         not isinstance(max_age_days, (int, float)) or max_age_days < 0):
            raise bad_value("max_age_days", max_age_days, "must be a number >= 0")
        releases = self.list()
        protected = set([self.current_id()])
        try:
            protected.add(self.rollback_target()["id"])
        except DevboxOpsError:
            pass
        now = utcnow()
        removed = []
        for i, m in enumerate(reversed(releases)):
            beyond = keep is not None and i >= keep
            old = max_age_days is not None and (now - parse_iso(m["created_at"])).total_seconds() > max_age_days * 86400
            if (beyond or old) and m["id"] not in protected:
                removed.append(m["id"])
        removed.reverse()
        if dry_run:
            return {"removed": removed, "stale": []}
        for release_id in removed:
            aside = os.path.join(self.releases_dir, ".tmp-rm.%s-%d-%s" % (release_id, os.getpid(), secrets.token_hex(4)))
            os.rename(self._path(release_id), aside)
            shutil.rmtree(aside, ignore_errors=True)
        return {"removed": removed, "stale": self.clean_tmp()}

    # -- lock

    def _read_lock(self, path=None):
        data = read_json(path or self.lock_file)
        return data if isinstance(data, dict) else None

    @staticmethod
    def _public(lock):
        return dict((k, v) for k, v in (lock or {}).items() if k != "token_sha256") if lock else None

    def lock_stale(self, lock, stale_after_s=900):
        """``(stale, reason)`` for a lock record."""
        if lock is None:
            return True, "the lock file is unreadable"
        try:
            age = (utcnow() - parse_iso(lock["acquired_at"])).total_seconds()
        except (KeyError, TypeError, ValueError):
            return True, "the lock file has no valid acquired_at"
        if age > stale_after_s:
            return True, "held for %ds, more than stale_after=%ds" % (age, stale_after_s)
        pid = lock.get("pid")
        if lock.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
            return True, "holder pid %d on this host is gone" % pid
        return False, "held for %ds by a live holder" % age

    def lock_status(self, stale_after_s=900):
        """``None`` when free, else the holder (without token hash) plus ``stale`` and ``reason``."""
        if not os.path.lexists(self.lock_file):
            return None
        lock = self._read_lock()
        stale, reason = self.lock_stale(lock, stale_after_s)
        return dict(self._public(lock) or {}, stale=stale, reason=reason)

    @staticmethod
    def _token_hash(token):
        if not isinstance(token, str) or not TOKEN_RE.match(token):
            raise DevboxOpsError("lock_token=%s: must be 16-256 characters from [A-Za-z0-9_.~+/=-]" % MASK,
                                 param="lock_token", value=MASK)
        return hashlib.sha256(token.encode()).hexdigest()

    @staticmethod
    def held_message(lock):
        return "deploy lock held by %s@%s pid %s since %s (%s)" % (
            lock.get("user"), lock.get("host"), lock.get("pid"), lock.get("started_at") or lock.get("acquired_at"),
            lock.get("purpose"))

    def acquire_lock(self, owner, token, stale_after_s=900, dry_run=False):
        """Take ``.lock`` for ``owner`` (user, host, pid, started_at, purpose).

        The record is written to a temp file (O_CREAT|O_EXCL) and published with ``link()``, which fails
        like O_EXCL when ``.lock`` exists and never shows a half-written lock. A stale lock (holder pid on
        this host gone, or older than ``stale_after_s``) is taken over; a live one raises
        ``deploy lock held by <user>@<host> pid <pid> since <time> (<purpose>)``. Only sha256(token) is
        stored. Returns ``{"changed", "took_over", "holder", "previous", "reason"}``.
        """
        owner = dict(owner or {})
        unknown = set(owner) - set(("user", "host", "pid", "started_at", "purpose"))
        if unknown:
            raise bad_value("lock_owner", sorted(unknown), "unknown keys")
        pid = owner.get("pid")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
            raise bad_value("lock_owner.pid", pid, "must be a positive integer")
        if isinstance(stale_after_s, bool) or not isinstance(stale_after_s, (int, float)) or stale_after_s <= 0:
            raise bad_value("stale_after", stale_after_s, "must be a number of seconds > 0")
        now = utcnow()
        record = {
            "user": owner.get("user") or getpass.getuser(), "host": owner.get("host") or socket.gethostname(),
            "pid": pid, "started_at": owner.get("started_at") or iso(now), "purpose": owner.get("purpose") or "deploy",
            "acquired_at": iso(now), "token_sha256": self._token_hash(token),
        }
        previous = reason = None
        for _attempt in range(20):
            held = self._read_lock()
            if held is not None or os.path.lexists(self.lock_file):
                if held and held.get("token_sha256") == record["token_sha256"]:
                    return {"changed": False, "took_over": False, "holder": self._public(held), "previous": None,
                            "reason": "already held with this token"}
                stale, why = self.lock_stale(held, stale_after_s)
                if not stale:
                    raise DevboxOpsError(self.held_message(held), param="lock", value=self._public(held))
                if dry_run:
                    return {"changed": True, "took_over": True, "holder": self._public(record),
                            "previous": self._public(held), "reason": why}
                if self._replace_if(held, record):
                    return {"changed": True, "took_over": True, "holder": self._public(record),
                            "previous": self._public(held), "reason": why}
                continue
            if dry_run:
                return {"changed": True, "took_over": False, "holder": self._public(record), "previous": None,
                        "reason": None}
            if self._publish_lock(record):
                return {"changed": True, "took_over": False, "holder": self._public(record),
                        "previous": None, "reason": None}
        raise DevboxOpsError("deploy lock %s: gave up after repeated contention" % self.lock_file, param="lock")

    def _write_tmp(self, record):
        os.makedirs(self.root, exist_ok=True)
        tmp = "%s.%s" % (self.lock_file, secrets.token_hex(6))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(record, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def _publish_lock(self, record):
        """Create ``.lock`` only if there is none: ``link()`` fails like O_EXCL and never shows half a file."""
        tmp = self._write_tmp(record)
        try:
            os.link(tmp, self.lock_file)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        fsync_dir(self.root)
        return True

    @staticmethod
    def _same_lock(a, b):
        if a is None or b is None:
            return a is None and b is None
        return all(a.get(k) == b.get(k) for k in ("token_sha256", "acquired_at"))

    def _replace_if(self, expected, record):
        """Swap ``.lock`` from ``expected`` to ``record`` (``None``: remove it) if it still is ``expected``.

        Changes to an existing lock are serialised by ``.lock.break`` (O_EXCL; a breaker that died leaves
        one behind, which is cleared after 30 s). The new record replaces the old with ``rename()``, so
        ``.lock`` never goes missing in between and a plain acquirer (``link()``) cannot slip in.
        """
        breaker = self.lock_file + ".break"
        try:
            fd = os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                if time.time() - os.lstat(breaker).st_mtime > 30:
                    os.unlink(breaker)
            except FileNotFoundError:
                pass
            time.sleep(0.01)
            return False
        os.close(fd)
        try:
            current = self._read_lock()
            if not os.path.lexists(self.lock_file) or not self._same_lock(current, expected):
                return False
            if record is None:
                os.unlink(self.lock_file)
            else:
                os.rename(self._write_tmp(record), self.lock_file)
            fsync_dir(self.root)
            return True
        finally:
            os.unlink(breaker)

    def release_lock(self, token, dry_run=False):
        """Release ``.lock`` if ``token`` owns it; ``{"changed": False}`` when there is no lock."""
        digest = self._token_hash(token)
        for _attempt in range(20):
            held = self._read_lock()
            if held is None and not os.path.lexists(self.lock_file):
                return {"changed": False, "holder": None}
            if (held or {}).get("token_sha256") != digest:
                raise DevboxOpsError("lock_token=%s does not own the lock: %s" % (MASK, self.held_message(held or {})),
                                     param="lock_token", value=MASK)
            if dry_run or self._replace_if(held, None):
                return {"changed": True, "holder": self._public(held)}
        raise DevboxOpsError("deploy lock %s: gave up after repeated contention" % self.lock_file, param="lock_token",
                             value=MASK)

    # -- history

    def record(self, event):
        """Append one event (secrets masked, ``at`` and ``app`` added) to history.jsonl with fsync."""
        if not isinstance(event, dict):
            raise bad_value("event", type(event).__name__, "must be a dict")
        event = redact(event)
        event.setdefault("at", iso(utcnow()))
        event.setdefault("app", self.app)
        try:
            line = json.dumps(event, sort_keys=True, default=str) + "\n"
        except (TypeError, ValueError) as exc:
            raise bad_value("event", sorted(map(str, event)), "not serializable: %s" % exc)
        if len(line) > 65536:
            raise bad_value("event", sorted(event), "larger than 64 KiB")
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.history_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return event

    def history(self, limit=20):
        """The last ``limit`` events (all when None), oldest first; torn or invalid lines are skipped."""
        try:
            with open(self.history_file, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                events.append(ev)
        return events if limit is None else events[-limit:] if limit > 0 else []

    def stats(self):
        """Counts for status reports: events, deploys (events with a result), success rate, durations."""
        events = self.history(limit=None)
        results = [e for e in events if "result" in e]
        ok = [e for e in results if str(e["result"]).lower() in SUCCESS_RESULTS]
        durations = [e["duration_s"] for e in results
                     if isinstance(e.get("duration_s"), (int, float)) and not isinstance(e.get("duration_s"), bool)]
        return {
            "events": len(events), "deploys": len(results), "succeeded": len(ok), "failed": len(results) - len(ok),
            "success_rate": round(len(ok) / len(results), 4) if results else None,
            "avg_duration_s": round(sum(durations) / len(durations), 3) if durations else None,
            "last": events[-1] if events else None,
            "releases": len(self.list()), "current": self.current_id(),
        }

    # -- structure guards

    def guards(self, release_id, rules):
        """Check structure rules against a release; returns failures ``{path, regex, reason}``.

        ``rules``: list of ``{path, required: [regex], must_exist: bool (default true)}``; paths are
        relative to the release and must stay inside the app root.
        """
        self.get(release_id)
        top = self._path(release_id)
        if not isinstance(rules, (list, tuple)):
            raise bad_value("guards", rules, "must be a list")
        checks = []
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict) or not isinstance(rule.get("path"), str) or not rule["path"]:
                raise bad_value("guards[%d].path" % i, (rule or {}).get("path") if isinstance(rule, dict) else rule,
                                "each guard needs a relative path")
            path = rule["path"]
            parts = path.split("/")
            if os.path.isabs(path) or ".." in parts:
                raise bad_value("guards[%d].path" % i, path, "must be relative to the release without '..'")
            regexes = []
            for j, rx in enumerate(rule.get("required") or []):
                try:
                    regexes.append((rx, re.compile(rx, re.MULTILINE)))
                except (re.error, TypeError) as exc:
                    raise bad_value("guards[%d].required[%d]" % (i, j), rx, "bad regex: %s" % exc)
            checks.append((path, regexes, rule.get("must_exist", True) is not False))
        failures = []
        real_root = os.path.realpath(self.root)
        for path, regexes, must_exist in checks:
            full = os.path.join(top, path)
            if not inside(os.path.realpath(full), real_root):
                failures.append({"path": path, "regex": None, "reason": "resolves outside the app root"})
                continue
            if not os.path.isfile(full):
                if must_exist:
                    failures.append({"path": path, "regex": None, "reason": "missing"})
                continue
            with open(full, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            for rx, compiled in regexes:
                if not compiled.search(text):
                    failures.append({"path": path, "regex": rx, "reason": "required pattern not found"})
        return failures
