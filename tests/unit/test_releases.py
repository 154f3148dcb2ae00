# SPDX-License-Identifier: GPL-3.0-or-later
"""ReleaseStore against real files, real git repositories, real archives, real processes and signals."""
import io
import json
import multiprocessing
import os
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile

import pytest

from ansible_collections.devbox.ops.plugins.module_utils import releases as rel
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.releases import ID_RE, MANIFEST, ReleaseStore

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(REPO, ".collections")
TOKEN_A = "token-aaaaaaaaaaaaaaaa"
TOKEN_B = "token-bbbbbbbbbbbbbbbb"


def write_tree(top, files):
    """files: {relpath: text}; a value of None makes a directory."""
    for relpath, text in files.items():
        full = os.path.join(str(top), relpath)
        if text is None:
            os.makedirs(full, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
    return str(top)


@pytest.fixture
def src(tmp_path):
    return write_tree(tmp_path / "src", {
        "app.py": "from flask import Flask\napp = Flask(__name__)\napp.register_blueprint(bp)\n",
        "routes/api.py": "bp = Blueprint('api')\n@bp.route('/x')\ndef x(): pass\n",
        "static/logo.txt": "logo" * 100,
        "README.md": "hello\n",
        "logs": None,
    })


@pytest.fixture
def store(tmp_path):
    return ReleaseStore(str(tmp_path / "app"), app="web")


def release_dirs(store):
    try:
        return sorted(n for n in os.listdir(store.releases_dir) if ID_RE.match(n))
    except FileNotFoundError:
        return []


def edit(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- create from a directory

def test_create_from_dir_builds_release_with_manifest(store, src):
    m, created = store.create(src, version="1.0")
    assert created is True
    assert ID_RE.match(m["id"]) and m["id"].endswith(m["content_hash"][:8])
    assert m["app"] == "web" and m["version"] == "1.0" and m["sha"] is None
    assert m["status"] == "built" and [h["status"] for h in m["status_history"]] == ["built"]
    assert m["source"] == {"type": "dir", "location": os.path.realpath(src), "ref": None}
    assert m["created_at"].endswith("Z")
    top = os.path.join(store.releases_dir, m["id"])
    with open(os.path.join(top, "routes/api.py")) as f:
        assert "Blueprint" in f.read()
    assert os.path.isdir(os.path.join(top, "logs"))
    with open(os.path.join(top, MANIFEST)) as f:
        assert json.load(f) == m
    assert store.get(m["id"]) == m
    assert [r["id"] for r in store.list()] == [m["id"]]
    assert [n for n in os.listdir(store.releases_dir) if n.startswith(".tmp-")] == []
    assert m["build"]["copied"] == 4 and m["build"]["linked"] == 0


def test_create_is_idempotent(store, src):
    first, created = store.create(src)
    assert created
    again, created = store.create(src)
    assert created is False and again["id"] == first["id"]
    assert release_dirs(store) == [first["id"]]
    # the same content under another version is another release
    other, created = store.create(src, version="2.0")
    assert created and other["id"] != first["id"] and other["content_hash"] == first["content_hash"]
    assert store.create(src, version="2.0") == (other, False)
    # a failed release with that content is rebuilt, not reused
    store.set_status(other["id"], "failed")
    store.set_status(first["id"], "failed")
    rebuilt, created = store.create(src)
    assert created and rebuilt["id"] not in (first["id"], other["id"])


def test_unchanged_files_are_hardlinked_and_report_is_against_active(store, src):
    r1 = store.create(src)[0]
    store.activate(r1["id"])
    edit(os.path.join(src, "app.py"), "from flask import Flask\n# v2\n")
    edit(os.path.join(src, "routes/new.py"), "new\n")
    os.unlink(os.path.join(src, "README.md"))
    r2, created = store.create(src)
    assert created
    d1, d2 = (os.path.join(store.releases_dir, r["id"]) for r in (r1, r2))
    st1, st2 = os.stat(os.path.join(d1, "static/logo.txt")), os.stat(os.path.join(d2, "static/logo.txt"))
    assert st1.st_ino == st2.st_ino and st2.st_nlink == 2
    assert os.stat(os.path.join(d1, "app.py")).st_ino != os.stat(os.path.join(d2, "app.py")).st_ino
    with open(os.path.join(d1, "app.py")) as f:
        assert "v2" not in f.read()  # the old release is untouched
    assert r2["build"]["linked"] == 2 and r2["build"]["copied"] == 2 and r2["build"]["linked_from"] == r1["id"]
    inc = r2["incremental"]
    assert inc["against"] == r1["id"]
    assert (inc["new"], inc["modified"], inc["deleted"], inc["unchanged"]) == (1, 1, 1, 2)
    assert inc["files"] == {"new": ["routes/new.py"], "modified": ["app.py"], "deleted": ["README.md"]}


def test_incremental_lists_are_capped(store, tmp_path):
    src = write_tree(tmp_path / "many", dict(("f%03d.txt" % i, str(i)) for i in range(60)))
    m = store.create(src)[0]
    assert m["incremental"]["new"] == 60 and len(m["incremental"]["files"]["new"]) == rel.LIST_CAP == 50


def test_mode_change_is_a_new_release_and_mode_is_kept(store, src):
    r1 = store.create(src)[0]
    script = os.path.join(src, "app.py")
    os.chmod(script, 0o755)
    r2, created = store.create(src)
    assert created and r2["content_hash"] != r1["content_hash"]
    new = os.path.join(store.releases_dir, r2["id"], "app.py")
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o755
    assert os.stat(new).st_ino != os.stat(os.path.join(store.releases_dir, r1["id"], "app.py")).st_ino


def test_base_file_edited_in_place_is_copied_not_linked(store, src):
    r1 = store.create(src)[0]
    # someone edits the old release in place: its inode no longer holds what the index says
    edit(os.path.join(store.releases_dir, r1["id"], "static/logo.txt"), "tampered")
    edit(os.path.join(src, "README.md"), "v2\n")
    r2 = store.create(src)[0]
    with open(os.path.join(store.releases_dir, r2["id"], "static/logo.txt")) as f:
        assert f.read() == "logo" * 100
    assert r2["build"]["linked"] == 2 and r2["build"]["copied"] == 2


def test_same_size_rewrite_with_restored_mtime_is_detected(store, src):
    r1 = store.create(src)[0]
    path = os.path.join(src, "README.md")
    st = os.stat(path)
    edit(path, "HELLO\n")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime: only ctime tells
    r2, created = store.create(src)
    assert created and r2["content_hash"] != r1["content_hash"]
    with open(os.path.join(store.releases_dir, r2["id"], "README.md")) as f:
        assert f.read() == "HELLO\n"


# ---------------------------------------------------------------- fast paths (issue 3)

def hashed_paths(monkeypatch):
    """Record the files the scan reads (a spy around the real hash_file, which still runs)."""
    seen = []
    real = rel.hash_file

    def spy(path):
        seen.append(os.path.relpath(path, os.path.dirname(path).split("/src", 1)[0] + "/src"))
        return real(path)

    monkeypatch.setattr(rel, "hash_file", spy)
    return seen


def test_fast_path_reads_only_files_whose_stat_changed(store, src, monkeypatch):
    store.create(src)
    seen = hashed_paths(monkeypatch)
    edit(os.path.join(src, "routes/api.py"), "bp = Blueprint('api2')\n")
    r2, created = store.create(src)
    assert created and seen == ["routes/api.py"]
    assert r2["build"]["copied"] == 1 and r2["build"]["linked"] == 3
    # nothing changed: no file is read and the release is the same
    del seen[:]
    assert store.create(src) == (r2, False) and seen == []


def test_same_size_change_with_new_mtime_is_detected(store, src, monkeypatch):
    r1 = store.create(src)[0]
    store.activate(r1["id"])
    seen = hashed_paths(monkeypatch)
    path = os.path.join(src, "README.md")
    before = os.stat(path)
    time.sleep(0.01)
    edit(path, "HELLO\n")  # same size, new mtime
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns != before.st_mtime_ns
    r2, created = store.create(src)
    assert created and r2["content_hash"] != r1["content_hash"] and seen == ["README.md"]
    assert r2["incremental"]["files"]["modified"] == ["README.md"]


def test_fast_path_trusts_the_recorded_digest_and_full_hash_does_not(store, src):
    """What the fast path does with a change it cannot see: a file whose (dev, inode, size, mtime,
    ctime) all match keeps the digest recorded by the previous scan. User space cannot set ctime back,
    so such a change is simulated by a wrong digest in the previous release's index. full_hash=True
    reads every file and so finds the real content."""
    r1 = store.create(src)[0]
    index_path = os.path.join(store.releases_dir, r1["id"], rel.INDEX)
    data = rel.read_json(index_path)
    data["files"]["README.md"][2] = "0" * 64
    rel.write_json(index_path, data)
    edit(os.path.join(src, "app.py"), "v2\n")
    fast = store.create(src)[0]
    assert rel.read_json(os.path.join(store.releases_dir, fast["id"], rel.INDEX))["files"]["README.md"][2] == "0" * 64
    full, created = store.create(src, full_hash=True)
    assert created and full["content_hash"] == rel.content_hash(rel.scan_tree(src)[0]) != fast["content_hash"]
    files = rel.read_json(os.path.join(store.releases_dir, full["id"], rel.INDEX))["files"]
    assert files["README.md"][2] == rel.hash_file(os.path.join(src, "README.md"))
    with pytest.raises(DevboxOpsError) as err:
        store.create(src, full_hash="yes")
    assert err.value.param == "full_hash" and "'yes'" in str(err.value)


def test_full_hash_gives_the_same_release_as_the_fast_path(store, src):
    r1 = store.create(src)[0]
    assert store.create(src, full_hash=True) == (r1, False)


def test_file_moved_to_another_directory_is_read_again(store, src, monkeypatch):
    store.activate(store.create(src)[0]["id"])
    seen = hashed_paths(monkeypatch)
    os.rename(os.path.join(src, "README.md"), os.path.join(src, "routes/README.md"))
    r2, created = store.create(src)
    assert created and seen == ["routes/README.md"]
    assert r2["incremental"]["files"] == {"new": ["routes/README.md"], "modified": [], "deleted": ["README.md"]}


@pytest.mark.parametrize("tamper", ["chmod", "symlink", "remove", "touch"])
def test_intact_files_finds_every_kind_of_edit(store, src, tamper):
    r1 = store.create(src)[0]
    top = os.path.join(store.releases_dir, r1["id"])
    index = store.index(r1["id"])[0]
    assert rel.intact_files(top, index) == set(r for r, e in index.items() if e[0] == "f")
    path = os.path.join(top, "routes/api.py")
    if tamper == "chmod":
        os.chmod(path, 0o600)
    elif tamper == "symlink":
        os.unlink(path)
        os.symlink("../app.py", path)
    elif tamper == "remove":
        os.unlink(path)
    else:
        os.utime(path, ns=(1, 1))
    assert "routes/api.py" not in rel.intact_files(top, index)
    edit(os.path.join(src, "README.md"), "v2\n")
    r2 = store.create(src)[0]
    new = os.path.join(store.releases_dir, r2["id"], "routes/api.py")
    assert not os.path.islink(new) and stat.S_IMODE(os.stat(new).st_mode) == 0o644
    with open(new) as f:
        assert "Blueprint" in f.read()
    assert r2["build"]["linked"] == 2 and r2["build"]["copied"] == 2


def test_lost_index_means_a_full_copy_not_a_wrong_release(store, src):
    """The file index is not fsynced (the manifest is): after a crash it may be lost, which only costs
    the next build its hardlinks."""
    r1 = store.create(src)[0]
    os.unlink(os.path.join(store.releases_dir, r1["id"], rel.INDEX))
    edit(os.path.join(src, "README.md"), "v2\n")
    r2, created = store.create(src)
    assert created and r2["build"]["linked"] == 0 and r2["build"]["copied"] == 4
    assert r2["content_hash"] == rel.content_hash(rel.scan_tree(src)[0])


def test_wide_tree_build_is_complete_and_links(store, tmp_path):
    files = dict(("d%d/e%d/f%03d.txt" % (i % 7, i % 3, i), "file %d\n" % i) for i in range(300))
    src = write_tree(tmp_path / "wide", files)
    os.symlink("f000.txt", os.path.join(src, "d0/e0/link"))
    r1 = store.create(src)[0]
    edit(os.path.join(src, "d1/e1/f001.txt"), "changed\n")
    r2 = store.create(src)[0]
    assert r2["build"]["linked"] == 299 and r2["build"]["copied"] == 1
    d1, d2 = (os.path.join(store.releases_dir, r["id"]) for r in (r1, r2))
    assert rel.content_hash(rel.scan_tree(d2)[0]) == rel.content_hash(rel.scan_tree(src)[0]) == r2["content_hash"]
    assert os.readlink(os.path.join(d2, "d0/e0/link")) == "f000.txt"
    assert os.stat(os.path.join(d1, "d2/e2/f002.txt")).st_ino == os.stat(os.path.join(d2, "d2/e2/f002.txt")).st_ino


def test_exclude_and_symlinks(store, src):
    os.makedirs(os.path.join(src, ".git"))
    edit(os.path.join(src, ".git/config"), "x")
    edit(os.path.join(src, "node_modules/pkg/index.js"), "x")
    edit(os.path.join(src, "debug.log"), "x")
    os.symlink("routes/api.py", os.path.join(src, "api_link.py"))
    m = store.create(src, exclude=[".git", "node_modules", "*.log"])[0]
    top = os.path.join(store.releases_dir, m["id"])
    for gone in (".git", "node_modules", "debug.log"):
        assert not os.path.lexists(os.path.join(top, gone))
    assert os.readlink(os.path.join(top, "api_link.py")) == "routes/api.py"
    with open(os.path.join(top, "api_link.py")) as f:
        assert "Blueprint" in f.read()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside"])
def test_symlink_leaving_the_tree_is_refused(store, src, target):
    os.symlink(target, os.path.join(src, "routes", "evil"))
    with pytest.raises(DevboxOpsError) as err:
        store.create(src)
    assert err.value.param == "source" and "routes/evil" in str(err.value) and target in str(err.value)
    assert release_dirs(store) == []
    assert [n for n in os.listdir(store.releases_dir) if n.startswith(".tmp-")] == []


@pytest.mark.parametrize("kwargs, param", [
    ({"version": "1/2"}, "version"),
    ({"ref": "--upload-pack=touch /tmp/x"}, "ref"),
    ({"ref": "a..b"}, "ref"),
    ({"exclude": "*.log"}, "exclude"),
    ({"source_type": "svn"}, "source_type"),
])
def test_bad_create_input_names_parameter_and_changes_nothing(store, src, kwargs, param):
    with pytest.raises(DevboxOpsError) as err:
        store.create(src, **kwargs)
    assert err.value.param == param
    assert param in str(err.value) and repr(list(kwargs.values())[0]) in str(err.value)
    assert not os.path.exists(store.root)


@pytest.mark.parametrize("source", ["relative/path", "/nonexistent/dir"])
def test_bad_source_is_refused(store, source):
    with pytest.raises(DevboxOpsError) as err:
        store.create(source)
    assert err.value.param == "source" and source in str(err.value)
    assert not os.path.exists(store.root)


def test_bad_root_is_refused():
    for root in ("relative", "/", "", None):
        with pytest.raises(DevboxOpsError) as err:
            ReleaseStore(root)
        assert err.value.param == "root"


def test_dry_run_changes_nothing(store, src):
    m, created = store.create(src, dry_run=True)
    assert created and ID_RE.match(m["id"]) and m["incremental"]["new"] == 4 and "build" not in m
    assert not os.path.exists(store.root)
    real = store.create(src)[0]
    assert real["content_hash"] == m["content_hash"]
    assert store.create(src, dry_run=True) == (real, False)


# ---------------------------------------------------------------- git

def git(cwd, *args):
    out = subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@example.com"] + list(args),
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    write_tree(path, {"server.js": "console.log(1)\n", "lib/a.js": "module.exports = 1\n"})
    os.chmod(str(path / "server.js"), 0o755)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "one")
    git(path, "tag", "v1")
    edit(str(path / "lib/a.js"), "module.exports = 2\n")
    git(path, "commit", "-qam", "two")
    return str(path)


def test_create_from_git_ref(store, repo):
    v1, created = store.create(repo, ref="v1")
    assert created and v1["sha"] == git(repo, "rev-parse", "v1^{commit}")
    assert v1["source"] == {"type": "git", "location": repo, "ref": "v1"}
    top = os.path.join(store.releases_dir, v1["id"])
    with open(os.path.join(top, "lib/a.js")) as f:
        assert f.read() == "module.exports = 1\n"
    assert stat.S_IMODE(os.stat(os.path.join(top, "server.js")).st_mode) & 0o111
    assert not os.path.exists(os.path.join(top, ".git"))
    head, created = store.create("file://" + repo, source_type="git")  # remote HEAD = main
    assert created and head["sha"] == git(repo, "rev-parse", "main")
    assert store.create(repo, ref="main")[1] is False  # same content: nothing built
    by_sha, created = store.create(repo, ref=v1["sha"])
    assert created is False and by_sha["id"] == v1["id"]
    # the bare cache holds no URL (credentials would live there)
    caches = os.listdir(store.git_cache)
    assert caches and all(c.endswith(".git") for c in caches)
    for c in caches:
        with open(os.path.join(store.git_cache, c, "config")) as f:
            assert "url" not in f.read()


def test_git_unknown_ref_names_ref(store, repo):
    with pytest.raises(DevboxOpsError) as err:
        store.create(repo, ref="no-such-branch")
    assert err.value.param == "ref" and "no-such-branch" in str(err.value)
    assert release_dirs(store) == []


def test_git_url_credentials_never_leak(store):
    url = "https://deploy:s3cr3t-pass@127.0.0.1:9/org/repo.git?token=qwerty"
    with pytest.raises(DevboxOpsError) as err:
        store.create(url, ref="main")
    text = str(err.value)
    assert err.value.param == "source" and "127.0.0.1:9/org/repo.git" in text
    assert "s3cr3t" not in text and "qwerty" not in text and "deploy:" not in text
    assert rel.redact_location(url) == "https://127.0.0.1:9/org/repo.git"


def test_git_dry_run_leaves_no_cache(store, repo):
    m, created = store.create(repo, ref="v1", dry_run=True)
    assert created and m["sha"] == git(repo, "rev-parse", "v1^{commit}")
    assert not os.path.exists(store.root)


# ---------------------------------------------------------------- archives

def tar_bytes(members, mode="w:gz"):
    """members: list of (name, kind, payload); kind: file/dir/sym/hard/chr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = payload.encode()
                info.size, info.mode = len(data), 0o755 if name.endswith(".sh") else 0o644
                tf.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE}[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind in ("sym", "hard"):
                info.linkname = payload
            tf.addfile(info)
    return buf.getvalue()


def write_archive(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_create_from_tar_and_zip(store, tmp_path):
    tgz = write_archive(tmp_path, "app.tar.gz", tar_bytes([
        ("./", "dir", None), ("bin/", "dir", None), ("bin/run.sh", "file", "#!/bin/sh\n"),
        ("lib/x.js", "file", "x"), ("lib/link.js", "sym", "x.js"), ("lib/copy.js", "hard", "lib/x.js")]))
    m, created = store.create(tgz)
    assert created and m["source"]["type"] == "archive"
    top = os.path.join(store.releases_dir, m["id"])
    assert stat.S_IMODE(os.stat(os.path.join(top, "bin/run.sh")).st_mode) == 0o755
    assert os.readlink(os.path.join(top, "lib/link.js")) == "x.js"
    with open(os.path.join(top, "lib/copy.js")) as f:
        assert f.read() == "x"

    zpath = str(tmp_path / "app.zip")
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("web/index.html", "<h1>hi</h1>")
        info = zipfile.ZipInfo("web/home.html")
        info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "index.html")
    z, created = store.create(zpath)
    assert created
    assert os.readlink(os.path.join(store.releases_dir, z["id"], "web/home.html")) == "index.html"
    # the extracted zip equals the same tree built from a directory (zipfile writes mode 0600)
    src = write_tree(tmp_path / "same", {"web/index.html": "<h1>hi</h1>"})
    os.chmod(os.path.join(src, "web/index.html"), 0o600)
    os.symlink("index.html", os.path.join(src, "web/home.html"))
    assert rel.content_hash(rel.scan_tree(src)[0]) == z["content_hash"]
    os.chmod(os.path.join(src, "web/index.html"), 0o644)
    assert rel.content_hash(rel.scan_tree(src)[0]) != z["content_hash"]


@pytest.mark.parametrize("members, why", [
    ([("/etc/evil", "file", "x")], "absolute path"),
    ([("../evil", "file", "x")], "'..'"),
    ([("a/../../evil", "file", "x")], "'..'"),
    ([("l", "sym", "/etc")], "absolute path"),
    ([("l", "sym", "../../..")], "leaves the archive"),
    # each link looks harmless alone; together sub/e resolves to ../x
    ([("sub/", "dir", None), ("sub/d", "sym", ".."), ("sub/e", "sym", "d/../x")], "leaves the archive"),
    ([("l", "sym", "sub"), ("sub/", "dir", None), ("l/x", "file", "write through a link")], "below a symlink"),
    ([("dev", "chr", None)], "special file"),
    ([("h", "hard", "../../etc/passwd")], "'..'"),
    ([("h", "hard", "nowhere")], "not a file extracted before"),
])
def test_malicious_archive_is_refused(store, tmp_path, members, why):
    path = write_archive(tmp_path, "evil.tar", tar_bytes(members, mode="w"))
    with pytest.raises(DevboxOpsError) as err:
        store.create(path)
    assert err.value.param == "source" and why in str(err.value) and path in str(err.value)
    assert release_dirs(store) == []
    assert [n for n in os.listdir(store.releases_dir) if n.startswith(".tmp-")] == []
    assert not os.path.exists(str(tmp_path / "evil")) and not os.path.exists(str(tmp_path / "x"))


def test_zip_slip_is_refused(store, tmp_path):
    path = str(tmp_path / "slip.zip")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../../slip.txt", "x")
    with pytest.raises(DevboxOpsError) as err:
        store.create(path)
    assert "'..'" in str(err.value)
    assert not os.path.exists(str(tmp_path / "slip.txt"))


# ---------------------------------------------------------------- activation

def three_releases(store, tmp_path):
    ids = []
    for i in range(3):
        src = write_tree(tmp_path / ("s%d" % i), {"VERSION": "v%d\n" % i, "common.txt": "same"})
        ids.append(store.create(src, version="v%d" % i)[0]["id"])
    return ids


def test_activate_switches_and_marks_statuses(store, tmp_path):
    r0, r1, r2 = three_releases(store, tmp_path)
    assert store.current() is None
    res = store.activate(r0)
    assert res == {"changed": True, "previous": None, "current": r0}
    assert os.readlink(store.current_link) == "releases/" + r0
    assert store.activate(r0)["changed"] is False
    store.activate(r1)
    assert store.get(r0)["status"] == "verified" and store.get(r1)["status"] == "active"
    assert store.current()["id"] == r1
    with open(os.path.join(store.current_link, "VERSION")) as f:
        assert f.read() == "v1\n"
    assert [n for n in os.listdir(store.root) if n.startswith("current.tmp")] == []
    store.set_status(r2, "failed")
    with pytest.raises(DevboxOpsError) as err:
        store.activate(r2)
    assert err.value.param == "release_id" and r2 in str(err.value)
    for bad in ("../x", "20240101T000000Z-deadbeef", ".hidden", "a/b"):
        with pytest.raises(DevboxOpsError) as err:
            store.activate(bad)
        assert err.value.param == "release_id" and bad in str(err.value)
    assert store.current_id() == r1
    assert store.activate(r0, dry_run=True) == {"changed": True, "previous": r1, "current": r0}
    assert store.current_id() == r1 and store.get(r0)["status"] == "verified"


def test_activation_is_atomic_under_concurrent_readers(store, tmp_path):
    ids = three_releases(store, tmp_path)
    store.activate(ids[0])
    stop = threading.Event()
    errors, reads = [], [0] * 200
    versions = set("v%d\n" % i for i in range(3))
    path = os.path.join(store.current_link, "VERSION")

    def reader(slot):
        while not stop.is_set():
            try:
                with open(path) as f:
                    text = f.read()
                if text not in versions:
                    errors.append("bad content %r" % text)
            except OSError as exc:
                errors.append(repr(exc))
            reads[slot] += 1
            time.sleep(0.001)  # 200 busy threads would starve the switching thread of the GIL

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(200)]
    # and one tight-loop reader in another process, which no GIL slows down
    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys\nbad = n = 0\n"
        "while True:\n"
        "    try:\n"
        "        t = open(sys.argv[1]).read()\n"
        "        bad += t not in ('v0\\n', 'v1\\n', 'v2\\n')\n"
        "    except OSError:\n"
        "        bad += 1\n"
        "    n += 1\n"
        "    if n % 200 == 0:\n"
        "        try:\n"
        "            open(sys.argv[2]).close(); break\n"
        "        except OSError: pass\n"
        "print(n, bad)\n"), path, str(tmp_path / "stop")], stdout=subprocess.PIPE, text=True)
    for t in threads:
        t.start()
    try:
        for i in range(50):
            store.activate(ids[(i + 1) % 3])
            time.sleep(0.002)
    finally:
        stop.set()
        (tmp_path / "stop").write_text("")
        for t in threads:
            t.join()
        out = proc.communicate(timeout=60)[0].split()
    assert errors == []
    assert all(n > 0 for n in reads)
    n, bad = int(out[0]), int(out[1])
    assert n > 0 and bad == 0
    assert store.current_id() == ids[50 % 3]
    assert [m["id"] for m in store.list() if m["status"] == "active"] == [ids[50 % 3]]


# ---------------------------------------------------------------- rollback target

def test_rollback_target_rules(store, tmp_path):
    ids = []
    for i in range(5):
        src = write_tree(tmp_path / ("s%d" % i), {"VERSION": str(i)})
        ids.append(store.create(src)[0]["id"])
    r0, r1, r2, r3, r4 = ids
    with pytest.raises(DevboxOpsError) as err:
        store.rollback_target()  # nothing ever ran healthy
    assert err.value.param == "to"
    for rid in (r0, r1, r2, r3):
        store.activate(rid)  # each replaced release becomes verified
    assert store.rollback_target()["id"] == r2
    store.set_status(r2, "failed")
    assert store.rollback_target("previous")["id"] == r1
    store.set_status(r1, "rolled_back")
    assert store.rollback_target()["id"] == r0  # rolled_back is not picked automatically ...
    assert store.rollback_target(r1)["id"] == r1  # ... but may be named
    # built (never ran) and releases newer than current are never "previous"
    store.activate(r0)
    with pytest.raises(DevboxOpsError) as err:
        store.rollback_target()
    assert err.value.param == "to" and "previous" in str(err.value)
    for bad, why in ((r2, "failed"), ("../x", "not a release id"), ("20990101T000000Z-00000000", "no such release")):
        with pytest.raises(DevboxOpsError) as err:
            store.rollback_target(bad)
        assert err.value.param == "to" and bad in str(err.value) and why in str(err.value)
    assert store.rollback_target(r4)["id"] == r4


def test_order_comes_from_manifest_not_mtime(store, tmp_path):
    ids = three_releases(store, tmp_path)
    future = time.time() + 86400
    os.utime(os.path.join(store.releases_dir, ids[0]), (future, future))
    os.utime(os.path.join(store.releases_dir, ids[2]), (0, 0))
    assert [m["id"] for m in store.list()] == ids
    # a directory that looks like a release but has no manifest is ignored
    os.makedirs(os.path.join(store.releases_dir, "20000101T000000Z-00000000"))
    assert [m["id"] for m in store.list()] == ids


# ---------------------------------------------------------------- prune

def test_prune_keeps_current_and_rollback_target(store, tmp_path):
    ids = []
    for i in range(7):
        src = write_tree(tmp_path / ("s%d" % i), {"VERSION": str(i)})
        ids.append(store.create(src)[0]["id"])
    store.activate(ids[0])
    store.activate(ids[1])  # current = ids[1], rollback target = ids[0]
    dead = os.path.join(store.releases_dir, ".tmp-%s-%d-abcdefgh" % (ids[6], dead_pid()))
    live = os.path.join(store.releases_dir, ".tmp-%s-%d-abcdefgh" % (ids[6], os.getpid()))
    os.makedirs(dead)
    os.makedirs(live)
    plan = store.prune(keep=2, dry_run=True)
    assert plan == {"removed": ids[2:5], "stale": []}
    assert release_dirs(store) == sorted(ids) and os.path.isdir(dead)
    result = store.prune(keep=2)
    assert result["removed"] == ids[2:5]
    assert result["stale"] == [os.path.basename(dead)]
    assert release_dirs(store) == sorted([ids[0], ids[1], ids[5], ids[6]])
    assert os.path.isdir(live) and not os.path.exists(dead)
    assert store.prune(keep=2) == {"removed": [], "stale": []}
    assert store.prune(keep=0)["removed"] == ids[5:]
    assert release_dirs(store) == sorted(ids[:2])


def test_prune_by_age(store, tmp_path):
    ids = []
    for i in range(3):
        src = write_tree(tmp_path / ("s%d" % i), {"VERSION": str(i)})
        ids.append(store.create(src)[0]["id"])
    store.activate(ids[2])
    for rid, days in ((ids[0], 40), (ids[1], 10)):
        path = os.path.join(store.releases_dir, rid, MANIFEST)
        with open(path) as f:
            m = json.load(f)
        m["created_at"] = "2000-01-01T00:00:00.000000Z" if days == 40 else rel.iso(rel.utcnow())
        rel.write_json(path, m)
    assert store.prune(keep=None, max_age_days=30)["removed"] == [ids[0]]
    for bad in ({"keep": -1}, {"keep": "3"}, {"max_age_days": -2}):
        with pytest.raises(DevboxOpsError) as err:
            store.prune(**bad)
        assert err.value.param == list(bad)[0]
    assert len(release_dirs(store)) == 2


# ---------------------------------------------------------------- lock

def test_lock_acquire_refuse_release(store):
    owner = {"user": "alice", "host": socket.gethostname(), "pid": os.getpid(), "purpose": "deploy web 1.2"}
    got = store.acquire_lock(owner, TOKEN_A)
    assert got["changed"] and not got["took_over"] and got["holder"]["user"] == "alice"
    with open(store.lock_file) as f:
        text = f.read()
    assert TOKEN_A not in text and "token_sha256" in text
    assert stat.S_IMODE(os.stat(store.lock_file).st_mode) == 0o600
    assert store.acquire_lock(owner, TOKEN_A)["changed"] is False  # same token: already ours
    with pytest.raises(DevboxOpsError) as err:
        store.acquire_lock({"user": "bob"}, TOKEN_B)
    msg = str(err.value)
    assert msg.startswith("deploy lock held by alice@%s pid %d since " % (socket.gethostname(), os.getpid()))
    assert msg.endswith("(deploy web 1.2)")
    with pytest.raises(DevboxOpsError) as err:
        store.release_lock(TOKEN_B)
    assert err.value.param == "lock_token" and TOKEN_B not in str(err.value) and "alice" in str(err.value)
    assert os.path.exists(store.lock_file)
    assert store.release_lock(TOKEN_A)["changed"] is True
    assert not os.path.exists(store.lock_file)
    assert store.release_lock(TOKEN_A) == {"changed": False, "holder": None}
    with pytest.raises(DevboxOpsError) as err:
        store.acquire_lock(owner, "short")
    assert err.value.param == "lock_token" and "short" not in str(err.value)


def test_stale_lock_of_dead_pid_is_taken_over(store):
    pid = dead_pid()
    store.acquire_lock({"user": "ghost", "host": socket.gethostname(), "pid": pid}, TOKEN_A)
    plan = store.acquire_lock({"user": "bob"}, TOKEN_B, dry_run=True)
    assert plan["took_over"] and store._read_lock()["user"] == "ghost"
    got = store.acquire_lock({"user": "bob"}, TOKEN_B)
    assert got["took_over"] is True and got["previous"]["user"] == "ghost"
    assert "pid %d" % pid in got["reason"] and "gone" in got["reason"]
    assert store.lock_status()["user"] == "bob"
    with pytest.raises(DevboxOpsError):
        store.release_lock(TOKEN_A)  # the old holder cannot release the new lock


def test_dead_pid_on_another_host_is_not_stale_but_age_is(store):
    store.acquire_lock({"user": "carol", "host": "other-host", "pid": dead_pid()}, TOKEN_A)
    with pytest.raises(DevboxOpsError) as err:
        store.acquire_lock({"user": "bob"}, TOKEN_B)
    assert "carol@other-host" in str(err.value)
    time.sleep(1.2)
    got = store.acquire_lock({"user": "bob"}, TOKEN_B, stale_after_s=1)
    assert got["took_over"] and "stale_after=1" in got["reason"]


def _race_round(store, contenders):
    """``contenders`` processes released together by a barrier each try to take the lock once."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(contenders)
    wins = ctx.Queue()

    def grab(i):
        barrier.wait()
        try:
            store.acquire_lock({"user": "u%d" % i, "host": socket.gethostname(), "pid": os.getppid()},
                               "token-%016d" % i)
            wins.put(i)
        except DevboxOpsError:
            pass

    procs = [ctx.Process(target=grab, args=(i,)) for i in range(contenders)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    winners = []
    while not wins.empty():
        winners.append(wins.get())
    return winners


@pytest.mark.parametrize("start", ["free", "stale"])
def test_lock_race_has_one_winner(store, start):
    # Real processes (no GIL to serialise them) start together; 100 rounds of 8. A stale lock (holder pid
    # gone) makes every contender try the take-over path at once: still exactly one may win.
    for _round in range(100):
        if os.path.lexists(store.lock_file):
            os.unlink(store.lock_file)
        if start == "stale":
            store.acquire_lock({"user": "ghost", "host": socket.gethostname(), "pid": dead_pid()}, TOKEN_A)
        winners = _race_round(store, 8)
        assert len(winners) == 1, winners
        assert store.lock_status()["user"] == "u%d" % winners[0]
        assert not os.path.lexists(store.lock_file + ".break")
    leftovers = [n for n in os.listdir(store.root) if n.startswith(".lock.")]
    assert leftovers == []


# ---------------------------------------------------------------- history, stats

def test_record_history_stats(store):
    store.record({"action": "deploy", "result": "success", "duration_s": 10, "release": "r1",
                  "db_password": "hunter2", "source": "https://bob:pat123@git.example/r.git",
                  "nested": {"api_token": "abc"}})
    store.record({"action": "deploy", "result": "failed", "duration_s": 30})
    store.record({"action": "lock"})
    with open(store.history_file, "a") as f:
        f.write('{"action": "torn"')  # a crash mid-append
    text = open(store.history_file).read()
    assert "hunter2" not in text and "pat123" not in text and "abc" not in text
    events = store.history()
    assert [e["action"] for e in events] == ["deploy", "deploy", "lock"]
    assert events[0]["db_password"] == "********" and events[0]["source"] == "https://bob:********@git.example/r.git"
    assert events[0]["app"] == "web" and events[0]["at"].endswith("Z")
    assert [e["action"] for e in store.history(limit=1)] == ["lock"]
    stats = store.stats()
    assert (stats["events"], stats["deploys"], stats["succeeded"], stats["failed"]) == (3, 2, 1, 1)
    assert stats["success_rate"] == 0.5 and stats["avg_duration_s"] == 20
    with pytest.raises(DevboxOpsError) as err:
        store.record("deploy")
    assert err.value.param == "event"


# ---------------------------------------------------------------- guards

def test_guards(store, src):
    m = store.create(src)[0]
    ok = [{"path": "app.py", "required": ["from flask import Flask", r"register_blueprint\("]},
          {"path": "routes/api.py", "required": ["Blueprint", r"^@bp\.route"]},
          {"path": "optional.py", "required": ["x"], "must_exist": False}]
    assert store.guards(m["id"], ok) == []
    bad = [{"path": "app.py", "required": ["CORS\\(app\\)"]}, {"path": "routes/checkin.py", "required": []}]
    assert store.guards(m["id"], bad) == [
        {"path": "app.py", "regex": "CORS\\(app\\)", "reason": "required pattern not found"},
        {"path": "routes/checkin.py", "regex": None, "reason": "missing"}]
    for rules, param in (([{"path": "../x"}], "guards[0].path"), ([{"path": "/etc/passwd"}], "guards[0].path"),
                         ([{"path": "app.py", "required": ["ok", "("]}], "guards[0].required[1]")):
        with pytest.raises(DevboxOpsError) as err:
            store.guards(m["id"], rules)
        assert err.value.param == param
    with pytest.raises(DevboxOpsError) as err:
        store.guards("../x", ok)
    assert err.value.param == "release_id"


# ---------------------------------------------------------------- crash

def test_crash_mid_create_leaves_no_release_and_next_create_succeeds(store, tmp_path):
    files = dict(("d%d/f%04d.txt" % (i % 8, i), ("line %d\n" % i) * 60) for i in range(8000))
    src = write_tree(tmp_path / "big", files)
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from ansible_collections.devbox.ops.plugins.module_utils.releases import ReleaseStore\n"
        "ReleaseStore(sys.argv[2]).create(sys.argv[3])\n"), COLLECTIONS, store.root, src])
    deadline = time.time() + 120
    killed = False
    while time.time() < deadline and child.poll() is None:
        tmps = [n for n in os.listdir(store.releases_dir)
                if n.startswith(".tmp-2") and "-%d-" % child.pid in n] if os.path.isdir(store.releases_dir) else []
        first = os.path.join(store.releases_dir, tmps[0], "d0") if tmps else None
        if first and os.path.isdir(first) and len(os.listdir(first)) > 20:
            os.kill(child.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.001)
    child.wait()
    assert killed and child.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    assert release_dirs(store) == [] and store.list() == []
    leftovers = [n for n in os.listdir(store.releases_dir) if n.startswith(".tmp-")]
    assert leftovers  # the half build is there, under a name no reader takes for a release
    m, created = store.create(src)
    assert created and m["build"]["files"] == 8000
    assert release_dirs(store) == [m["id"]]
    assert [n for n in os.listdir(store.releases_dir) if n.startswith(".tmp-")] == []


def test_special_files_are_skipped_and_reported(store, src):
    os.mkfifo(os.path.join(src, "pipe"))
    m = store.create(src)[0]
    assert m["build"]["skipped"] == ["pipe"]
    assert not os.path.lexists(os.path.join(store.releases_dir, m["id"], "pipe"))


def test_file_deleted_during_build_leaves_no_half_release(store, src):
    """A developer deletes a file between the scan and the copy. That race cannot be timed for real,
    so the copy step is wrapped to delete its source first (fault injection, not a stand-in)."""
    m = store.create(src)[0]
    edit(os.path.join(src, "app.py"), "changed\n")
    original = rel.copy_hashed

    def vanish(path_from, path_to, mode):
        os.unlink(path_from)
        return original(path_from, path_to, mode)

    rel.copy_hashed = vanish
    try:
        with pytest.raises(OSError):
            store.create(src)
    finally:
        rel.copy_hashed = original
    assert release_dirs(store) == [m["id"]]
    assert [n for n in os.listdir(store.releases_dir) if n.startswith(".tmp-")] == []
