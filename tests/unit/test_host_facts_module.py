# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.host_facts through `ansible localhost -m` (a real module run): the real pm2 from npm, real
sudo, and a real unprivileged user (nobody) for whom `sudo -n true` fails."""
import json
import os
import shutil
import subprocess

from ansible_collections.devbox.ops.plugins.module_utils.pm2 import installed_version

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")


def module(tmp_path, args, *flags, python=PYTHON):
    """Run the module once; returns (rc, result, all output)."""
    tree = tmp_path / ("tree-%d" % len(list(tmp_path.glob("tree-*"))))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", "devbox.ops.host_facts", "-t", str(tree),
         "-e", "ansible_python_interpreter=%s" % python] + (["-a", json.dumps(args)] if args else []) + list(flags),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    with open(str(tree / "localhost")) as f:
        return proc.returncode, json.load(f), proc.stdout + proc.stderr


def npm_pm2_version():
    """The version npm says its global pm2 package has (an independent reader of the install; `pm2 --version`
    would start a PM2 daemon)."""
    out = subprocess.run(["npm", "ls", "--global", "--json", "pm2"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    return json.loads(out)["dependencies"]["pm2"]["version"]


def test_facts_as_root_match_setup_and_npm(tmp_path):
    missing = str(tmp_path / "nowhere" / "pm2")
    rc, res, out = module(tmp_path, {"pm2_executables": ["pm2", missing]}, "--check")
    assert rc == 0 and res["changed"] is False, out
    facts = res["ansible_facts"]
    assert facts["ansible_user_id"] == "root" and facts["devbox_can_sudo"] is True
    assert facts["devbox_host_node"] == shutil.which("node")
    assert facts["devbox_host_pm2"]["pm2"] == {"path": shutil.which("pm2"), "version": npm_pm2_version()}
    assert facts["devbox_host_pm2"][missing] == {"path": None, "version": None}
    # the shape ansible.builtin.setup gives (ansible_user_id and ansible_facts.python work after either)
    rc, setup, out = module(tmp_path, {}, "-m", "ansible.builtin.setup", "-a", "gather_subset=min")
    assert rc == 0, out
    assert facts["ansible_user_id"] == setup["ansible_facts"]["ansible_user_id"]
    assert facts["ansible_python"] == setup["ansible_facts"]["ansible_python"]


def test_an_unprivileged_user_without_sudo_rights_cannot_sudo(tmp_path):
    # pipelining: the module reaches nobody's python on stdin, no temporary files to share
    rc, res, out = module(tmp_path, {}, "--become", "--become-user", "nobody", python="/usr/bin/python3")
    assert rc == 0, out
    assert res["ansible_facts"]["ansible_user_id"] == "nobody" and res["ansible_facts"]["devbox_can_sudo"] is False
    rc, res, out = module(tmp_path, {"sudo": False}, "--become", "--become-user", "nobody", python="/usr/bin/python3")
    assert rc == 0 and "devbox_can_sudo" not in res["ansible_facts"], out


def test_a_file_outside_a_pm2_package_has_no_version(tmp_path):
    fake = tmp_path / "bin" / "pm2"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 9.9.9\n")
    fake.chmod(0o755)
    (tmp_path / "package.json").write_text(json.dumps({"name": "not-pm2", "version": "9.9.9"}))
    assert installed_version(str(fake)) == {"path": str(fake), "version": None}


def test_bad_input_names_the_parameter_and_the_value(tmp_path):
    rc, res, out = module(tmp_path, {"pm2_executables": ["pm2", " "]})
    assert rc != 0 and res["msg"] == "pm2_executables=' ': each must be a command name or a path"
    assert "ansible_facts" not in res
