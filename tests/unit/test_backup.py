# SPDX-License-Identifier: GPL-3.0-or-later
"""The backup engine against real files, real SQLite with a concurrent writer, a real 2 MiB tmpfs, and a
real SIGKILL in the middle of a backup. There is no MongoDB server (nor mongodump) on this machine: the
"not installed" path is the real one, and a small stand-in script plays mongodump for the argv checks."""
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.devbox.ops.plugins.module_utils import backup
from ansible_collections.devbox.ops.plugins.module_utils.backup import BackupStore
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASSWORD = "s3cr3t-Pa55"
URI = "mongodb://admin:%s@127.0.0.1:27017/app?authSource=admin" % PASSWORD


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_state(root):
    """{relative path: (kind, sha256 or link target, mode)} of everything under root."""
    state = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(top, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, root)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(full), None)
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", None, stat.S_IMODE(st.st_mode))
            else:
                state[rel] = ("file", sha(full), stat.S_IMODE(st.st_mode))
    return state


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "project"
    (root / "shared" / "uploads").mkdir(parents=True)
    (root / "shared" / "empty").mkdir()
    (root / "config.json").write_text('{"port": 3000}\n')
    (root / "shared" / "uploads" / "a.bin").write_bytes(os.urandom(70000))
    (root / "shared" / "uploads" / "b.txt").write_text("bee\n")
    os.chmod(str(root / "shared" / "uploads" / "b.txt"), 0o640)
    os.symlink("config.json", str(root / "link.json"))
    return str(root)


@pytest.fixture
def store(tmp_path):
    return BackupStore(str(tmp_path / "backups"))


def files(path, name=None):
    return [dict(path=path, name=name) if name else dict(path=path)]


# ---------------------------------------------------------------- create / list / verify


def test_create_writes_manifest_then_complete_and_lists(store, src):
    snap = store.create(files(src), label="nightly", min_free_bytes=0)
    assert backup.ID_RE.match(snap["id"]) and snap["id"].endswith("-nightly")
    assert snap["files"] == 3 and snap["hardlinked"] == 0
    base = snap["path"]
    with open(os.path.join(base, "MANIFEST.json"), "rb") as f:
        raw = f.read()
    with open(os.path.join(base, "COMPLETE")) as f:
        assert f.read().strip() == hashlib.sha256(raw).hexdigest()
    manifest = json.loads(raw.decode())
    by_path = dict((f["path"], f) for f in manifest["files"])
    expected = {"config.json", "shared/uploads/a.bin", "shared/uploads/b.txt"}
    assert set(by_path) == set("data/project/" + p for p in expected)
    for rel in expected:
        entry = by_path["data/project/" + rel]
        assert entry["sha256"] == sha(os.path.join(src, rel))
        assert entry["size"] == os.path.getsize(os.path.join(src, rel))
    assert by_path["data/project/shared/uploads/b.txt"]["mode"] == "0640"
    assert manifest["symlinks"] == [{"path": "data/project/link.json", "target": "config.json"}]
    assert "data/project/shared/empty" in [d["path"] for d in manifest["dirs"]]
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert [b["id"] for b in store.list()] == [snap["id"]]
    assert store.verify(snap["id"]) == {"id": snap["id"], "ok": True, "files": 3, "mismatches": []}


def test_list_is_newest_first_by_manifest_not_mtime(store, src):
    first = store.create(files(src), label="a", min_free_bytes=0)["id"]
    second = store.create(files(src), label="b", min_free_bytes=0)["id"]
    future = time.time() + 3600
    os.utime(os.path.join(store.root, first), (future, future))  # mtime lies; the manifest decides
    assert [b["id"] for b in store.list()] == [second, first]
    assert store.latest() == second


def test_same_second_same_label_gets_a_distinct_id(store, src):
    ids = [store.create(files(src), label="x", min_free_bytes=0)["id"] for _unused in range(3)]
    assert len(set(ids)) == 3
    assert all(backup.ID_RE.match(i) for i in ids)


def test_dry_run_writes_nothing(store, src):
    plan = store.create(files(src), label="plan", min_free_bytes=0, dry_run=True)
    assert plan["files"] == 3 and plan["path"] is None and backup.ID_RE.match(plan["id"])
    assert not os.path.exists(store.root)


# ---------------------------------------------------------------- hardlinks


def test_unchanged_files_are_hardlinked_changed_ones_copied(store, src):
    first = store.create(files(src), min_free_bytes=0)
    with open(os.path.join(src, "config.json"), "a") as f:
        f.write("changed\n")
    second = store.create(files(src), min_free_bytes=0)
    assert second["hardlinked"] == 2
    assert second["copied_bytes"] == os.path.getsize(os.path.join(src, "config.json"))
    for rel, linked in (("shared/uploads/a.bin", True), ("shared/uploads/b.txt", True), ("config.json", False)):
        a = os.stat(os.path.join(first["path"], "data", "project", rel))
        b = os.stat(os.path.join(second["path"], "data", "project", rel))
        assert (a.st_ino == b.st_ino) is linked, rel
    assert store.verify(second["id"])["ok"]
    # without hardlinks everything is copied
    third = store.create(files(src), hardlink_from_previous=False, min_free_bytes=0)
    assert third["hardlinked"] == 0
    assert os.stat(os.path.join(third["path"], "data/project/shared/uploads/a.bin")).st_nlink == 1


def test_same_size_and_mtime_but_new_content_is_copied_not_linked(store, src):
    first = store.create(files(src), min_free_bytes=0)
    path = os.path.join(src, "shared/uploads/a.bin")
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"X")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, as tar or rsync would leave it
    second = store.create(files(src), min_free_bytes=0)
    assert second["hardlinked"] == 2
    linked = [rel for rel in ("config.json", "shared/uploads/a.bin", "shared/uploads/b.txt")
              if os.stat(os.path.join(first["path"], "data/project", rel)).st_ino
              == os.stat(os.path.join(second["path"], "data/project", rel)).st_ino]
    assert linked == ["config.json", "shared/uploads/b.txt"]
    assert sha(os.path.join(second["path"], "data/project/shared/uploads/a.bin")) == sha(path)


# ---------------------------------------------------------------- incomplete snapshots (real SIGKILL)


KILL_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[3])
from ansible_collections.devbox.ops.plugins.module_utils.backup import BackupStore
BackupStore(sys.argv[1]).create([{"path": sys.argv[2]}], label="killed", min_free_bytes=0)
"""


def test_killed_create_leaves_an_incomplete_snapshot_that_is_never_used_and_then_removed(store, src, tmp_path):
    first = store.create(files(src), label="good", min_free_bytes=0)
    big = tmp_path / "big"
    big.mkdir()
    for i in range(400):  # each copy is fsynced: long enough to be killed in the middle
        (big / ("f%03d" % i)).write_bytes(os.urandom(65536))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, store.root, str(big),
                             os.path.join(REPO, ".collections")])
    deadline = time.time() + 30
    partial = None
    while time.time() < deadline and partial is None:
        for name in os.listdir(store.root):
            data = os.path.join(store.root, name, "data", "big")
            if name.endswith("-killed") and os.path.isdir(data) and len(os.listdir(data)) >= 3:
                partial = name
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial, "the backup process never started writing"
    assert not os.path.exists(os.path.join(store.root, partial, "COMPLETE"))
    # never listed, never restored, never verified as good
    assert [b["id"] for b in store.list()] == [first["id"]]
    with pytest.raises(DevboxOpsError) as err:
        store.restore(partial)
    assert err.value.param == "backup_id" and "incomplete" in str(err.value) and partial in str(err.value)
    # a COMPLETE marker that does not match the manifest does not make it valid either
    with open(os.path.join(store.root, partial, "COMPLETE"), "w") as f:
        f.write("0" * 64 + "\n")
    assert [b["id"] for b in store.list()] == [first["id"]]
    # the next create hardlinks from the valid snapshot only, and removes the partial one
    nxt = store.create(files(src), label="next", min_free_bytes=0)
    assert nxt["removed_incomplete"] == [partial]
    assert not os.path.exists(os.path.join(store.root, partial))
    assert nxt["hardlinked"] == 3
    rel = "data/project/shared/uploads/a.bin"
    assert os.stat(os.path.join(nxt["path"], rel)).st_ino == os.stat(os.path.join(first["path"], rel)).st_ino


# ---------------------------------------------------------------- SQLite


def _make_db(path, journal_mode):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=%s" % journal_mode)
    conn.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)")
    conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, payload BLOB)")
    conn.execute("CREATE TABLE meta (txns INTEGER NOT NULL)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO acct (bal) VALUES (?)", [(1000,)] * 100)
    conn.executemany("INSERT INTO log (payload) VALUES (?)", [(os.urandom(400),) for _unused in range(8000)])
    conn.execute("INSERT INTO meta VALUES (8000)")
    conn.execute("COMMIT")
    conn.close()


class Writer(threading.Thread):
    """Transfers between accounts, one log row per transaction: sum(bal) and count(log) == txns hold in
    every consistent state."""

    def __init__(self, path):
        super(Writer, self).__init__(daemon=True)
        self.path, self.stop, self.commits, self.error = path, threading.Event(), 0, None

    def run(self):
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        rnd = random.Random(7)
        try:
            while not self.stop.is_set():
                conn.execute("BEGIN IMMEDIATE")
                a, b = rnd.randint(1, 100), rnd.randint(1, 100)
                conn.execute("UPDATE acct SET bal = bal - 7 WHERE id = ?", (a,))
                conn.execute("INSERT INTO log (payload) VALUES (?)", (os.urandom(400),))
                conn.execute("UPDATE acct SET bal = bal + 7 WHERE id = ?", (b,))
                conn.execute("UPDATE meta SET txns = txns + 1")
                conn.execute("COMMIT")
                self.commits += 1
        except Exception as exc:  # reported by the test
            self.error = exc
        finally:
            conn.close()


def _check_consistent(path):
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT sum(bal) FROM acct").fetchone()[0] == 100 * 1000
        txns = conn.execute("SELECT txns FROM meta").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM log").fetchone()[0] == txns
        return txns
    finally:
        conn.close()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_sqlite_copy_is_consistent_while_another_connection_writes(store, tmp_path, journal_mode):
    db = str(tmp_path / "app.db")
    _make_db(db, journal_mode)
    writer = Writer(db)
    writer.start()
    try:
        while writer.commits < 20:
            time.sleep(0.005)
        before = writer.commits
        snap = store.create([dict(path=db, kind="sqlite", name="db")], label="db", min_free_bytes=0)
        during = writer.commits - before
        time.sleep(0.05)
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None
    assert during > 0, "the writer made no commit while the backup ran"
    copy = os.path.join(snap["path"], "data", "db")
    txns = _check_consistent(copy)
    assert 8000 + before <= txns <= 8000 + writer.commits
    # the copy stands alone: rollback journal, no -wal beside it, checksum in the manifest
    assert not os.path.exists(copy + "-wal")
    assert store.verify(snap["id"])["ok"]


def test_sqlite_restore_uses_the_backup_api_and_is_idempotent(store, tmp_path):
    db = str(tmp_path / "app.db")
    _make_db(db, "wal")
    snap = store.create([dict(path=db, kind="sqlite", name="db")], min_free_bytes=0)
    reader = sqlite3.connect(db)  # an app connection stays open through the restore
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM log WHERE id > 100")
    conn.execute("UPDATE meta SET txns = 100")
    conn.close()
    assert store.restore(snap["id"], dry_run=True)["restored"] == [db]
    assert reader.execute("SELECT txns FROM meta").fetchone()[0] == 100  # dry run changed nothing
    result = store.restore(snap["id"])
    assert result["restored"] == [db]
    assert reader.execute("SELECT txns FROM meta").fetchone()[0] == 8000  # the open connection sees it
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # the app's mode is kept
    reader.close()
    assert _check_consistent(db) == 8000
    assert store.restore(snap["id"]) == {"id": snap["id"], "restored": [], "unchanged": 1, "skipped": []}
    # into a new path with target_map
    other = str(tmp_path / "restore" / "copy.db")
    assert store.restore(snap["id"], target_map={"db": other})["restored"] == [other]
    assert _check_consistent(other) == 8000


def test_sqlite_path_that_is_not_a_database_is_refused(store, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not sqlite")
    with pytest.raises(DevboxOpsError) as err:
        store.create([dict(path=str(path), kind="sqlite")], min_free_bytes=0)
    assert err.value.param == "paths[0].path" and str(path) in str(err.value)
    assert not os.path.exists(store.root)


# ---------------------------------------------------------------- restore


def test_restore_in_place_atomically_per_file_and_reports_changes(store, src):
    snap = store.create(files(src), min_free_bytes=0)
    want = tree_state(src)
    cfg = os.path.join(src, "config.json")
    with open(cfg, "w") as f:
        f.write("broken")
    os.unlink(os.path.join(src, "shared/uploads/b.txt"))
    os.unlink(os.path.join(src, "link.json"))
    os.chmod(os.path.join(src, "shared/empty"), 0o700)
    with open(os.path.join(src, "extra.txt"), "w") as f:
        f.write("not in the backup")
    damaged = tree_state(src)
    inode = os.stat(cfg).st_ino

    plan = store.restore(snap["id"], dry_run=True)
    assert tree_state(src) == damaged
    result = store.restore(snap["id"])
    assert sorted(result["restored"]) == sorted(plan["restored"]) == sorted(
        os.path.join(src, p) for p in ("config.json", "shared/uploads/b.txt", "link.json", "shared/empty"))
    assert result["unchanged"] == 1  # a.bin
    after = tree_state(src)
    assert after.pop("extra.txt")[0] == "file"  # files not in the backup are left alone
    assert after == want
    assert os.stat(cfg).st_ino != inode  # replaced by rename, not rewritten in place
    assert not [n for n in os.listdir(src) if n.endswith(".restore")]
    again = store.restore(snap["id"])
    assert again["restored"] == [] and again["unchanged"] == 4


def test_restore_to_target_map(store, src, tmp_path):
    snap = store.create(files(src, name="proj"), min_free_bytes=0)
    dest = str(tmp_path / "elsewhere")
    result = store.restore(snap["id"], target_map={"proj": dest})
    assert tree_state(dest) == tree_state(src)
    assert dest in result["restored"]
    with pytest.raises(DevboxOpsError) as err:
        store.restore(snap["id"], target_map={"nope": dest})
    assert err.value.param == "target_map.nope" and "proj" in str(err.value)
    with pytest.raises(DevboxOpsError) as err:
        store.restore(snap["id"], target_map={"proj": "relative/dir"})
    assert err.value.param == "target_map.proj" and "relative/dir" in str(err.value)


# ---------------------------------------------------------------- corruption


def test_flipped_byte_is_reported_and_restore_refuses_changing_nothing(store, src):
    snap = store.create(files(src), min_free_bytes=0)
    stored = os.path.join(snap["path"], "data/project/shared/uploads/a.bin")
    with open(stored, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x01]))
    os.unlink(os.path.join(snap["path"], "data/project/config.json"))
    report = store.verify(snap["id"])
    assert report["ok"] is False
    assert report["mismatches"] == [
        {"path": "data/project/config.json", "problem": "missing"},
        {"path": "data/project/shared/uploads/a.bin", "problem": "sha256 mismatch"},
    ]
    with open(os.path.join(src, "shared/uploads/b.txt"), "w") as f:
        f.write("the app changed this")
    before = tree_state(src)
    with pytest.raises(DevboxOpsError) as err:
        store.restore(snap["id"])
    assert str(err.value).startswith("backup %s is corrupt: data/project/config.json missing" % snap["id"])
    assert tree_state(src) == before
    # a snapshot whose only fault is one flipped byte: restore names the file and the sha256 mismatch
    snap2 = store.create(files(src), min_free_bytes=0)
    path2 = os.path.join(snap2["path"], "data/project/config.json")
    with open(path2, "rb") as f:
        data = bytearray(f.read())
    data[0] ^= 0x20
    with open(path2, "wb") as f:
        f.write(bytes(data))
    with open(os.path.join(src, "config.json"), "w") as f:
        f.write("changed since")
    before = tree_state(src)
    with pytest.raises(DevboxOpsError) as err:
        store.restore(snap2["id"])
    assert str(err.value) == ("backup %s is corrupt: data/project/config.json sha256 mismatch; nothing was "
                              "restored" % snap2["id"])
    assert tree_state(src) == before


# ---------------------------------------------------------------- retention


def test_prune_by_count_and_age_keeps_the_newest(store, src):
    ids = [store.create(files(src), label="r%d" % i, min_free_bytes=0)["id"] for i in range(4)]
    os.mkdir(os.path.join(store.root, "20200101T000000Z-crashed"))  # incomplete
    assert store.prune(keep=2, dry_run=True) == ["20200101T000000Z-crashed", ids[1], ids[0]]
    assert len(os.listdir(store.root)) == 6  # 4 snapshots, the crashed one and .lock: a dry run removes nothing
    assert store.prune(keep=2) == ["20200101T000000Z-crashed", ids[1], ids[0]]
    assert [b["id"] for b in store.list()] == [ids[3], ids[2]]
    # files shared by hardlinks survive the removal of older snapshots
    assert store.verify(ids[2])["ok"] and store.verify(ids[3])["ok"]
    assert store.prune(max_age_days=1) == []
    # two days from now both are older than a day; the newest is kept anyway
    assert store.prune(max_age_days=1, now=time.time() + 2 * 86400) == [ids[2]]
    assert [b["id"] for b in store.list()] == [ids[3]]
    with pytest.raises(DevboxOpsError) as err:
        store.prune(keep=0)
    assert err.value.param == "keep" and "keep=0" in str(err.value)
    with pytest.raises(DevboxOpsError) as err:
        store.prune(max_age_days=-1)
    assert err.value.param == "max_age_days"


# ---------------------------------------------------------------- bad input changes nothing


@pytest.mark.parametrize("call, param, value", [
    (lambda s, src: s.verify("../x"), "backup_id", "../x"),
    (lambda s, src: s.restore("../x"), "backup_id", "../x"),
    (lambda s, src: s.restore("20240230T000000Z-x"), "backup_id", "20240230T000000Z-x"),
    (lambda s, src: s.restore("20240101T000000Z-none"), "backup_id", "20240101T000000Z-none"),
    (lambda s, src: s.create(files(src), label="../up"), "label", "../up"),
    (lambda s, src: s.create([dict(path=src, kind="tar")]), "paths[0].kind", "tar"),
    (lambda s, src: s.create([dict(path="rel/dir")]), "paths[0].path", "rel/dir"),
    (lambda s, src: s.create([dict(path=src), dict(path=src)]), "paths[1].name", "project"),
    (lambda s, src: s.create([dict(path=src + "/missing")]), "paths[0].path", "/missing"),
    (lambda s, src: s.create([dict(path=src, name="a/b")]), "paths[0].name", "a/b"),
    (lambda s, src: s.create([dict(path=os.path.dirname(s.root))]), "paths[0].path", "overlaps"),
    (lambda s, src: s.create(files(src), min_free_bytes=-1), "min_free_bytes", "-1"),
    (lambda s, src: s.create([]), "paths", "[]"),
])
def test_bad_input_names_the_parameter_and_changes_nothing(store, src, call, param, value):
    store.create(files(src), label="base", min_free_bytes=0)
    before = tree_state(store.root)
    with pytest.raises(DevboxOpsError) as err:
        call(store, src)
    assert err.value.param == param
    assert param in str(err.value) and value in str(err.value)
    assert tree_state(store.root) == before


def test_optional_missing_path_is_skipped(store, src):
    snap = store.create([dict(path=src), dict(path=src + "/gone", name="gone", optional=True)],
                        min_free_bytes=0)
    assert [s["name"] for s in snap["skipped"]] == ["gone"] and "does not exist" in snap["skipped"][0]["reason"]
    assert [e["name"] for e in snap["entries"]] == ["project"]


# ---------------------------------------------------------------- disk space (real tmpfs)


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (a skip would hide this test)", pytrace=False)
    mnt = str(tmp_path / "small")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


def _free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_create_that_does_not_fit_is_refused_before_writing(small_fs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    store = BackupStore(os.path.join(small_fs, "backups"))
    os.mkdir(store.root)
    free = _free(small_fs)
    with pytest.raises(DevboxOpsError) as err:
        store.create(files(str(data)), min_free_bytes=0)
    msg = str(err.value)
    assert store.root in msg and "%d bytes free" % free in msg and "bytes needed" in msg
    assert err.value.details["needed"] > 3 * 1024 * 1024
    assert os.listdir(store.root) == [".lock"] and _free(small_fs) == free
    # a margin counts too: this fits alone, but not with 1.5 MiB kept free
    (data / "big.bin").write_bytes(os.urandom(600 * 1024))
    with pytest.raises(DevboxOpsError) as err:
        store.create(files(str(data)), min_free_bytes=1536 * 1024)
    assert "min_free_bytes 1572864" in str(err.value)
    assert store.create(files(str(data)), min_free_bytes=0)["files"] == 1


def test_disk_full_mid_copy_removes_the_partial_snapshot(small_fs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b", "c"):
        (data / name).write_bytes(os.urandom(600 * 1024))
    store = BackupStore(os.path.join(small_fs, "backups"))
    first = store.create(files(str(data)), label="first", min_free_bytes=0)
    # rewrite every file with the same size and mtime (as an extract or rsync -t would): the estimate
    # expects hardlinks, the checksums say copy, and the 2 MiB filesystem runs out in the middle
    for name in ("a", "b", "c"):
        path = str(data / name)
        st = os.stat(path)
        with open(path, "wb") as f:
            f.write(os.urandom(600 * 1024))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DevboxOpsError) as err:
        store.create(files(str(data)), label="second", min_free_bytes=0)
    assert "disk full" in str(err.value) and store.root in str(err.value)
    assert "partial backup was removed" in str(err.value)
    assert [b["id"] for b in store.list()] == [first["id"]]
    assert sorted(os.listdir(store.root)) == [".lock", first["id"]]
    assert store.verify(first["id"])["ok"]


# ---------------------------------------------------------------- MongoDB


def test_mongodump_not_installed_fails_naming_it_without_the_password(store, src):
    # No MongoDB server and no mongodump on this machine: this is the real "not installed" path.
    assert shutil.which("mongodump") is None
    with pytest.raises(DevboxOpsError) as err:
        store.create([dict(path=src), dict(kind="mongodb", name="mongo")], mongodb_uri=URI, min_free_bytes=0)
    assert err.value.param == "mongodump" and "mongodump is not installed" in str(err.value)
    assert PASSWORD not in repr(err.value.__dict__) and URI not in str(err.value)
    assert not os.path.exists(store.root)
    # optional: skipped, the rest is backed up, and the uri is nowhere in the store or the result
    snap = store.create([dict(path=src), dict(kind="mongodb", name="mongo", optional=True)],
                        mongodb_uri=URI, min_free_bytes=0)
    assert [s["name"] for s in snap["skipped"]] == ["mongo"]
    assert PASSWORD not in json.dumps(snap) and PASSWORD not in json.dumps(store.list())
    for top, _dirs, names in os.walk(store.root):
        for name in names:
            if not os.path.islink(os.path.join(top, name)):
                with open(os.path.join(top, name), "rb") as f:
                    assert PASSWORD.encode() not in f.read()


STAND_IN = """#!%s
# Stand-in for mongodump (no MongoDB here): records its argv, writes a gzip archive or fails like the real
# tool does when it cannot connect, echoing the uri.
import gzip, json, sys
args = sys.argv[1:]
with open(%r, "w") as f:
    json.dump(args, f)
if "fail" in args[1]:
    sys.stderr.write("Failed: error connecting to db server: %%s: connection refused\\n" %% args[1])
    sys.exit(1)
archive = [a for a in args if a.startswith("--archive=")][0].split("=", 1)[1]
with gzip.open(archive, "wb") as f:
    f.write(b"archive of " + args[1].encode().split(b"@")[-1])
"""


def test_mongodump_argv_archive_and_redacted_failure(tmp_path, src):
    argv_file = str(tmp_path / "argv.json")
    exe = tmp_path / "mongodump"
    exe.write_text(STAND_IN % (sys.executable, argv_file))
    exe.chmod(0o755)
    store = BackupStore(str(tmp_path / "backups"), mongodump=str(exe))
    with pytest.raises(DevboxOpsError) as err:
        store.create([dict(kind="mongodb", name="mongo")], min_free_bytes=0)
    assert err.value.param == "mongodb_uri"
    snap = store.create([dict(kind="mongodb", name="mongo")], mongodb_uri=URI, min_free_bytes=0)
    archive = os.path.join(snap["path"], "data", "mongo")
    with open(argv_file) as f:
        assert json.load(f) == ["--uri", URI, "--archive=" + archive, "--gzip"]
    assert store.verify(snap["id"])["ok"] and snap["files"] == 1
    with open(os.path.join(snap["path"], "MANIFEST.json")) as f:
        manifest = f.read()
    assert PASSWORD not in manifest and "127.0.0.1:27017" not in manifest
    assert store.restore(snap["id"])["skipped"][0]["name"] == "mongo"
    bad_uri = URI.replace("127.0.0.1", "fail.invalid")
    with pytest.raises(DevboxOpsError) as err:
        store.create([dict(kind="mongodb", name="mongo")], mongodb_uri=bad_uri, min_free_bytes=0)
    msg = str(err.value)
    assert "mongodump for mongo" in msg and "connection refused" in msg and "rc=1" in msg
    assert PASSWORD not in msg and "admin:********@fail.invalid" in msg
    assert [b["id"] for b in store.list()] == [snap["id"]]  # the failed one left nothing
