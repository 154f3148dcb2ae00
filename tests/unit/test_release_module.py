# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.release through `ansible localhost -m` (a real module run, AnsibleRunner included)."""
import io
import json
import time
import os
import socket
import subprocess
import tarfile

import pytest

from ansible_collections.devbox.ops.plugins.module_utils.releases import ID_RE, ReleaseStore

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "tok-Zq9f83hd72kd91jd"


def module(tmp_path, args, *flags):
    """Run the module once; returns (rc, result, all output). The tree callback (-t) writes the result."""
    tree = tmp_path / ("tree-%d" % len(list(tmp_path.glob("tree-*"))))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", "devbox.ops.release", "-t", str(tree),
         "-a", json.dumps(args), "-e", "ansible_python_interpreter=%s" % os.path.join(REPO, ".venv", "bin", "python")]
        + list(flags), cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    with open(str(tree / "localhost")) as f:
        return proc.returncode, json.load(f), proc.stdout + proc.stderr


@pytest.fixture
def src(tmp_path):
    top = tmp_path / "src"
    (top / "routes").mkdir(parents=True)
    (top / "app.py").write_text("from flask import Flask\n")
    (top / "routes" / "api.py").write_text("bp = Blueprint('api')\n")
    return str(top)


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "app")


def test_create_check_mode_real_and_idempotent(tmp_path, src, root):
    rc, res = module(tmp_path, {"root": root, "source": src}, "--check", "--diff", "-vvv")[:2]
    assert rc == 0 and res["changed"] is True and res["created"] is True
    assert res["incremental"]["new"] == 2 and not os.path.exists(root)
    assert list(res["diff"]["after"]["releases"]) == [res["release"]["id"]]
    rc, res = module(tmp_path, {"root": root, "source": src, "version": "1.0"})[:2]
    assert rc == 0 and res["changed"] is True and res["created"] is True
    rid = res["release"]["id"]
    assert ID_RE.match(rid) and res["release"]["build"]["copied"] == 2
    assert os.path.isfile(os.path.join(root, "releases", rid, "routes", "api.py"))
    rc, res = module(tmp_path, {"root": root, "source": src, "version": "1.0"})[:2]
    assert rc == 0 and res["changed"] is False and res["created"] is False and res["release"]["id"] == rid
    assert [r["id"] for r in res["releases"]] == [rid]


def test_activate_check_diff_real_idempotent_and_bad_id(tmp_path, src, root):
    rid = ReleaseStore(root).create(src)[0]["id"]
    rc, res = module(tmp_path, {"root": root, "action": "activate", "release_id": rid}, "--check", "--diff", "-vvv")[:2]
    assert rc == 0 and res["changed"] is True and res["current"] == rid
    assert res["diff"] == {"before": {"current": None, "releases": {rid: "built"}},
                           "after": {"current": rid, "releases": {rid: "active"}}}
    assert not os.path.lexists(os.path.join(root, "current"))
    rc, res = module(tmp_path, {"root": root, "action": "activate", "release_id": rid})[:2]
    assert rc == 0 and res["changed"] is True and res["release"]["status"] == "active"
    assert os.readlink(os.path.join(root, "current")) == "releases/" + rid
    rc, res = module(tmp_path, {"root": root, "action": "activate", "release_id": rid})[:2]
    assert rc == 0 and res["changed"] is False
    rc, res = module(tmp_path, {"root": root, "action": "activate", "release_id": "../x"})[:2]
    assert rc != 0 and "release_id" in res["msg"] and "../x" in res["msg"]
    assert os.readlink(os.path.join(root, "current")) == "releases/" + rid


def test_lock_unlock_token_never_printed(tmp_path, root):
    owner = {"user": "alice", "host": socket.gethostname(), "pid": os.getpid(), "purpose": "deploy web"}
    rc, res, out = module(tmp_path, {"root": root, "action": "lock", "lock_owner": owner, "lock_token": TOKEN}, "-v")
    assert rc == 0 and res["changed"] is True and res["lock"]["holder"]["user"] == "alice"
    assert TOKEN not in out and TOKEN not in json.dumps(res)
    with open(os.path.join(root, ".lock")) as f:
        assert TOKEN not in f.read()
    rc, res, out = module(tmp_path, {"root": root, "action": "lock", "lock_owner": {"user": "bob"},
                                     "lock_token": "another-token-123456"})
    assert rc != 0
    assert "deploy lock held by alice@%s pid %d since" % (socket.gethostname(), os.getpid()) in res["msg"]
    assert "(deploy web)" in res["msg"]
    rc, res, out = module(tmp_path, {"root": root, "action": "unlock", "lock_token": TOKEN}, "--check")
    assert rc == 0 and res["changed"] is True and os.path.exists(os.path.join(root, ".lock"))
    rc, res, out = module(tmp_path, {"root": root, "action": "unlock", "lock_token": TOKEN})
    assert rc == 0 and res["changed"] is True and not os.path.exists(os.path.join(root, ".lock"))
    assert TOKEN not in out


def test_guard_fails_the_task_and_names_the_rule(tmp_path, src, root):
    rid = ReleaseStore(root).create(src)[0]["id"]
    guards = [{"path": "app.py", "required": ["from flask import Flask", "CORS\\("]},
              {"path": "routes/missing.py"}]
    rc, res = module(tmp_path, {"root": root, "action": "guard", "release_id": rid, "guards": guards})[:2]
    assert rc != 0 and "structure guards failed" in res["msg"]
    assert res["guard_failures"] == [
        {"path": "app.py", "regex": "CORS\\(", "reason": "required pattern not found"},
        {"path": "routes/missing.py", "regex": None, "reason": "missing"}]
    rc, res = module(tmp_path, {"root": root, "action": "guard", "release_id": rid,
                                "guards": [{"path": "routes/api.py", "required": ["Blueprint"]}]})[:2]
    assert rc == 0 and res["changed"] is False and res["guard_failures"] == []


def test_record_list_prune_rollback(tmp_path, root):
    store = ReleaseStore(root)
    ids = []
    for i in range(4):
        top = tmp_path / ("s%d" % i)
        top.mkdir()
        (top / "VERSION").write_text(str(i))
        ids.append(store.create(str(top))[0]["id"])
        store.activate(ids[-1])
    rc, res, out = module(tmp_path, {"root": root, "action": "record",
                                     "event": {"action": "deploy", "result": "success", "duration_s": 12,
                                               "release": ids[-1], "api_token": "do-not-print-me",
                                               "repo": "https://ci:pat-Xy12@git.example/r.git"}}, "-vvvv")
    assert rc == 0 and res["changed"] is True and res["event"]["api_token"] == "********"
    assert res["event"]["repo"] == "https://ci:********@git.example/r.git"
    assert "module_args" in out  # the invocation is printed at -vvvv ...
    assert "do-not-print-me" not in out + json.dumps(res) and "pat-Xy12" not in out + json.dumps(res)  # ... masked
    with open(os.path.join(root, "history.jsonl")) as f:
        assert "do-not-print-me" not in f.read()
    rc, res = module(tmp_path, {"root": root, "action": "list"})[:2]
    assert rc == 0 and res["changed"] is False and res["current"] == ids[-1]
    assert res["stats"]["deploys"] == 1 and res["stats"]["success_rate"] == 1.0
    assert [r["id"] for r in res["releases"]] == ids and res["releases"][-1]["current"] is True
    assert res["lock_holder"] is None
    # list shows who holds the deploy lock (never the token), and whether it is stale
    owner = {"user": "alice", "host": "laptop-9", "pid": 4242, "purpose": "deploy web"}
    assert module(tmp_path, {"root": root, "action": "lock", "lock_owner": owner,
                             "lock_token": "tok-0123456789abcdef"})[0] == 0
    rc, res, out = module(tmp_path, {"root": root, "action": "list"}, "-vvvv")
    holder = res["lock_holder"]
    assert (holder["user"], holder["host"], holder["pid"], holder["stale"]) == ("alice", "laptop-9", 4242, False)
    assert "token_sha256" not in holder and "tok-0123456789abcdef" not in out
    time.sleep(1.1)
    res = module(tmp_path, {"root": root, "action": "list", "stale_after": 1})[1]
    assert res["lock_holder"]["stale"] is True and "more than stale_after=1s" in res["lock_holder"]["reason"]
    assert module(tmp_path, {"root": root, "action": "unlock", "lock_token": "tok-0123456789abcdef"})[0] == 0
    rc, res = module(tmp_path, {"root": root, "action": "rollback_target"})[:2]
    assert rc == 0 and res["target"]["id"] == ids[2]
    rc, res = module(tmp_path, {"root": root, "action": "prune", "keep": 1}, "--check")[:2]
    assert rc == 0 and res["changed"] is True and res["removed"] == ids[:2]
    assert len(os.listdir(os.path.join(root, "releases"))) == 4
    rc, res = module(tmp_path, {"root": root, "action": "prune", "keep": 1})[:2]
    assert rc == 0 and res["removed"] == ids[:2]
    assert sorted(os.listdir(os.path.join(root, "releases"))) == sorted(ids[2:])
    rc, res = module(tmp_path, {"root": root, "action": "status", "release_id": ids[2], "status": "failed"})[:2]
    assert rc == 0 and res["changed"] is True and res["release"]["status"] == "failed"
    rc, res = module(tmp_path, {"root": root, "action": "rollback_target", "to": ids[2]})[:2]
    assert rc != 0 and "to=" in res["msg"] and ids[2] in res["msg"] and "failed" in res["msg"]


def test_git_source_through_ansible_runner(tmp_path, root):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "server.js").write_text("console.log(1)\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "one"], ["tag", "v1"]):
        subprocess.run(git + args, check=True, capture_output=True)
    sha = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    rc, res = module(tmp_path, {"root": root, "source": str(repo), "ref": "v1"})[:2]
    assert rc == 0 and res["created"] is True and res["release"]["sha"] == sha
    assert res["release"]["source"]["type"] == "git"
    with open(os.path.join(root, "releases", res["release"]["id"], "server.js")) as f:
        assert f.read() == "console.log(1)\n"


def test_malicious_archive_fails_and_changes_nothing(tmp_path, root):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    path = tmp_path / "evil.tgz"
    path.write_bytes(buf.getvalue())
    rc, res = module(tmp_path, {"root": root, "source": str(path)})[:2]
    assert rc != 0 and "source=" in res["msg"] and str(path) in res["msg"] and "'..'" in res["msg"]
    assert os.listdir(os.path.join(root, "releases")) == []
    assert not os.path.exists(str(tmp_path.parent / "escape.txt"))
