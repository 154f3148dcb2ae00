# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.backup through ad-hoc `ansible localhost -m devbox.ops.backup`, on real files and SQLite."""
import json
import os
import sqlite3
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASSWORD = "m0ngo-Secret"
URI = "mongodb://app:%s@127.0.0.1:27017/app" % PASSWORD


def ansible(tmp_path, args, *flags):
    """Run the module; the tree callback (-t) writes the JSON result. Returns (rc, result, all output)."""
    tree = tmp_path / ("tree-%d" % len(os.listdir(str(tmp_path))))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    proc = subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", "devbox.ops.backup", "-t", str(tree),
         "-e", "ansible_python_interpreter=" + os.path.join(REPO, ".venv", "bin", "python"),
         "-a", json.dumps(args)] + list(flags),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    with open(str(tree / "localhost")) as f:
        raw = f.read()
    return proc.returncode, json.loads(raw), raw + proc.stdout + proc.stderr


@pytest.fixture
def site(tmp_path):
    app = tmp_path / "app"
    (app / "uploads").mkdir(parents=True)
    (app / "uploads" / "logo.png").write_bytes(os.urandom(5000))
    (app / "settings.ini").write_text("[app]\nport = 3000\n")
    db = str(tmp_path / "app.db")
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    conn.commit()
    conn.close()
    root = str(tmp_path / "backups")
    paths = [dict(path=str(app)), dict(path=db, kind="sqlite", name="db")]
    return dict(root=root, app=str(app), db=db, paths=paths)


def test_create_check_mode_then_create_list_verify_restore_prune(tmp_path, site):
    root, paths = site["root"], site["paths"]
    rc, res, out = ansible(tmp_path, dict(root=root, paths=paths, label="adhoc", min_free_bytes=0), "--check",
                           "--diff")
    assert rc == 0, res
    assert res["changed"] is True and res["backup"]["path"] is None and res["backup"]["files"] == 3
    assert res["backup"]["id"].endswith("-adhoc") and res["backups"] == []
    assert '+        "%s"' % res["backup"]["id"] in out  # the diff shows the snapshot to be made
    assert not os.path.exists(root)

    rc, res, _out = ansible(tmp_path, dict(root=root, paths=paths, label="adhoc", min_free_bytes=0))
    assert rc == 0, res
    first = res["backup"]
    assert res["changed"] is True and first["files"] == 3 and first["hardlinked"] == 0
    assert os.path.isfile(os.path.join(first["path"], "COMPLETE"))
    assert [b["id"] for b in res["backups"]] == [first["id"]]

    rc, res, _out = ansible(tmp_path, dict(root=root, paths=paths, label="adhoc", min_free_bytes=0))
    second = res["backup"]
    assert rc == 0 and second["hardlinked"] == 2  # logo.png and settings.ini; the database is copied afresh

    rc, res, _out = ansible(tmp_path, dict(root=root, action="list"))
    assert rc == 0 and res["changed"] is False
    assert [b["id"] for b in res["backups"]] == [second["id"], first["id"]]

    rc, res, _out = ansible(tmp_path, dict(root=root, action="verify", backup_id=first["id"]))
    assert rc == 0 and res["verified"] is True and res["mismatches"] == [] and res["changed"] is False

    # damage the app, restore the newest backup (no backup_id), in check mode first
    with open(os.path.join(site["app"], "settings.ini"), "w") as f:
        f.write("garbage")
    conn = sqlite3.connect(site["db"])
    conn.execute("DELETE FROM t")
    conn.commit()
    conn.close()
    rc, res, out = ansible(tmp_path, dict(root=root, action="restore"), "--check", "--diff")
    want = sorted([os.path.join(site["app"], "settings.ini"), site["db"]])
    assert rc == 0 and res["changed"] is True and sorted(res["restored"]) == want
    assert "+restore %s from backup %s" % (site["db"], second["id"]) in out
    with open(os.path.join(site["app"], "settings.ini")) as f:
        assert f.read() == "garbage"
    rc, res, _out = ansible(tmp_path, dict(root=root, action="restore"))
    assert rc == 0 and res["changed"] is True and res["backup_id"] == second["id"]
    assert sorted(res["restored"]) == want and res["verified"] is True
    with open(os.path.join(site["app"], "settings.ini")) as f:
        assert f.read() == "[app]\nport = 3000\n"
    conn = sqlite3.connect(site["db"])
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 100
    conn.close()
    rc, res, _out = ansible(tmp_path, dict(root=root, action="restore"))
    assert rc == 0 and res["changed"] is False and res["restored"] == [] and res["unchanged"] == 3

    rc, res, _out = ansible(tmp_path, dict(root=root, action="prune", keep=1), "--check")
    assert rc == 0 and res["changed"] is True and res["removed"] == [first["id"]] and len(res["backups"]) == 2
    rc, res, _out = ansible(tmp_path, dict(root=root, action="prune", keep=1))
    assert rc == 0 and res["removed"] == [first["id"]] and [b["id"] for b in res["backups"]] == [second["id"]]
    rc, res, _out = ansible(tmp_path, dict(root=root, action="prune", keep=1))
    assert rc == 0 and res["changed"] is False and res["removed"] == []


def test_corrupt_backup_fails_verify_and_restore(tmp_path, site):
    rc, res, _out = ansible(tmp_path, dict(root=site["root"], paths=site["paths"][:1], min_free_bytes=0))
    assert rc == 0, res
    stored = os.path.join(res["backup"]["path"], "data", "app", "settings.ini")
    with open(stored, "r+b") as f:
        f.write(b"{")
    rc, res, _out = ansible(tmp_path, dict(root=site["root"], action="verify"))
    assert rc != 0 and res["verified"] is False
    assert res["mismatches"] == [{"path": "data/app/settings.ini", "problem": "sha256 mismatch"}]
    os.unlink(os.path.join(site["app"], "settings.ini"))
    rc, res, _out = ansible(tmp_path, dict(root=site["root"], action="restore"))
    assert rc != 0 and "is corrupt: data/app/settings.ini sha256 mismatch" in res["msg"]
    assert res["verified"] is False and res["mismatches"][0]["path"] == "data/app/settings.ini"
    assert not os.path.exists(os.path.join(site["app"], "settings.ini"))  # nothing was restored


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One store with one backup, shared by the bad-input cases (they must not change it)."""
    tmp = tmp_path_factory.mktemp("made")
    (tmp / "app").mkdir()
    (tmp / "app" / "a.txt").write_text("a")
    made = dict(root=str(tmp / "backups"), paths=[dict(path=str(tmp / "app"))])
    rc, res, _out = ansible(tmp, dict(made, min_free_bytes=0))
    assert rc == 0, res
    return made


@pytest.mark.parametrize("args, words", [
    (dict(action="verify", backup_id="../x"), ["backup_id", "../x"]),
    (dict(action="restore", backup_id="../x"), ["backup_id", "../x"]),
    (dict(label="no/slash"), ["label", "no/slash"]),
    (dict(paths=[dict(path="/etc/hostname", kind="tar")]), ["kind", "tar"]),
    (dict(paths=[dict(path="relative/path")]), ["paths[0].path", "relative/path"]),
    (dict(action="prune"), ["keep", "max_age_days"]),
    (dict(action="prune", keep=0), ["keep", "0"]),
    (dict(action="restore", target_map=dict(nope="/tmp/x")), ["target_map.nope"]),
])
def test_bad_input_names_the_parameter(tmp_path, made, args, words):
    listing = sorted(os.listdir(made["root"]))
    full = dict(root=made["root"], min_free_bytes=0)
    if args.get("action", "create") == "create":
        full["paths"] = made["paths"]
    full.update(args)
    rc, res, _out = ansible(tmp_path, full)
    assert rc != 0, res
    for word in words:
        assert word in res["msg"], res["msg"]
    assert sorted(os.listdir(made["root"])) == listing  # nothing was written


def test_missing_mongodump_is_named_and_the_uri_password_never_shows(tmp_path, site):
    # There is no MongoDB server and no mongodump on this machine: the real "not installed" path.
    args = dict(root=site["root"], min_free_bytes=0, mongodb_uri=URI,
                paths=[dict(path=site["app"]), dict(kind="mongodb", name="mongo")])
    rc, res, out = ansible(tmp_path, args)
    assert rc != 0 and "mongodump is not installed" in res["msg"]
    assert PASSWORD not in out and not os.path.exists(site["root"])
    args["paths"][1]["optional"] = True
    rc, res, out = ansible(tmp_path, args, "--diff")
    assert rc == 0, res
    assert [s["name"] for s in res["backup"]["skipped"]] == ["mongo"] and res["backup"]["files"] == 2
    assert PASSWORD not in out
    with open(os.path.join(res["backup"]["path"], "MANIFEST.json")) as f:
        assert PASSWORD not in f.read()
