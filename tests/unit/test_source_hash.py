# SPDX-License-Identifier: GPL-3.0-or-later
"""The controller-side content hash (releases.packed_content_hash and the devbox.ops.source_hash filter)
against the release the host side really makes: the source packed with GNU tar the way
roles/deploy/tasks/stage.yml packs it, then built by ReleaseStore.create from that archive."""
import os
import subprocess

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.devbox.ops.plugins.filter.source_hash import source_hash
from ansible_collections.devbox.ops.plugins.module_utils.releases import ReleaseStore, packed_content_hash

EXCLUDE = [".git", "node_modules", "*.pyc"]


def make_source(top):
    files = {
        "server.js": ("require('http').createServer().listen(3000)\n", 0o644),
        "bin/start": ("#!/bin/sh\nexec node server.js\n", 0o755),
        "config/readonly.json": ('{"a": 1}\n', 0o444),  # the archive's extract adds owner rw: 0644
        "node_modules/dep/index.js": ("module.exports = 1\n", 0o644),
        "lib/cache.pyc": ("\0\1", 0o644),
        ".git/HEAD": ("ref: refs/heads/main\n", 0o644),
    }
    for rel, (text, mode) in files.items():
        path = os.path.join(top, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, mode)
    os.makedirs(os.path.join(top, "empty"))
    os.symlink("server.js", os.path.join(top, "main.js"))
    return top


def pack(top, dest, exclude):
    """The same tar command as roles/deploy/tasks/stage.yml."""
    subprocess.run(["tar", "-C", top, "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-czf", dest]
                   + ["--exclude=" + p for p in exclude] + ["."], check=True)
    return dest


def built_hash(tmp_path, top, exclude, name):
    store = ReleaseStore(str(tmp_path / name), app="web")
    manifest, created = store.create(pack(top, str(tmp_path / (name + ".tar.gz")), exclude), "archive",
                                     exclude=list(exclude))
    assert created
    return manifest["content_hash"]


def test_the_controller_hash_is_the_hash_of_the_release_the_host_builds(tmp_path):
    top = make_source(str(tmp_path / "src"))
    expected = built_hash(tmp_path, top, EXCLUDE, "host1")
    assert packed_content_hash(top, EXCLUDE) == expected
    assert source_hash(top, EXCLUDE) == expected

    # a changed byte, a changed mode or a file the exclusions no longer drop: another hash, on both sides
    with open(os.path.join(top, "server.js"), "a") as handle:
        handle.write("// v2\n")
    changed = packed_content_hash(top, EXCLUDE)
    assert changed != expected and changed == built_hash(tmp_path, top, EXCLUDE, "host2")
    os.chmod(os.path.join(top, "bin/start"), 0o644)
    assert packed_content_hash(top, EXCLUDE) not in (expected, changed)
    assert packed_content_hash(top, [".git"]) == built_hash(tmp_path, top, [".git"], "host3")


def test_the_filter_gives_no_hash_when_the_tree_cannot_be_walked(tmp_path):
    assert source_hash(str(tmp_path / "missing"), EXCLUDE) == ""
    top = make_source(str(tmp_path / "src"))
    os.symlink("/etc/passwd", os.path.join(top, "leak"))  # the host refuses such a release; no shortcut either
    assert source_hash(top, EXCLUDE) == ""


@pytest.mark.parametrize("path, exclude, named", [
    ("relative/dir", [], "path='relative/dir'"),
    (None, [], "path=None"),
    ("/tmp", "node_modules", "exclude='node_modules'"),
    ("/tmp", [""], "exclude=['']"),
])
def test_bad_filter_input_names_the_parameter_and_value(path, exclude, named):
    with pytest.raises(AnsibleFilterError) as err:
        source_hash(path, exclude)
    assert named in str(err.value)
