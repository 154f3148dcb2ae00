# SPDX-License-Identifier: GPL-3.0-or-later
"""initsys.detect against fixture trees (fake /proc and root), against this machine, and the module."""
import json
import os
import subprocess

import pytest

from ansible_collections.devbox.ops.plugins.module_utils import initsys
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_tree(tmp_path, procs, dirs=(), cmdlines=None, cwd=None):
    """procs: {pid: comm}; dirs: paths made under root; cmdlines: {pid: [argv]}; cwd: {pid: target}."""
    root, proc = tmp_path / "root", tmp_path / "proc"
    root.mkdir()
    proc.mkdir()
    (proc / "self").mkdir()  # non-numeric entries must be ignored
    (proc / "sys").mkdir()
    for pid, comm in procs.items():
        d = proc / str(pid)
        d.mkdir()
        (d / "comm").write_text(comm + "\n")
    for pid, argv in (cmdlines or {}).items():
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    for pid, target in (cwd or {}).items():
        os.symlink(target, str(proc / str(pid) / "cwd"))
    for d in dirs:
        (root / d.lstrip("/")).mkdir(parents=True)
    return str(root), str(proc)


def test_systemd(tmp_path):
    root, proc = make_tree(tmp_path, {1: "systemd", 300: "cron"}, dirs=["/run/systemd/system"])
    info = initsys.detect(root, proc)
    assert info["kind"] == "systemd"
    assert info["pid1"] == "systemd"
    assert info["boot_dir"] == "/etc/systemd/system"
    # cron is reported even when another kind wins
    assert info["cron"] == "cron" and info["crontab"] == "/etc/crontab" and info["crontab_format"] == "system"


def test_systemd_comm_without_run_dir_is_not_systemd(tmp_path):
    root, proc = make_tree(tmp_path, {1: "systemd"})
    info = initsys.detect(root, proc)
    assert info["kind"] == "none"
    assert "PID 1 is systemd" in info["reason"]


@pytest.mark.parametrize("pid1, dirs", [
    ("s6-svscan", ["/usr/start"]),
    ("dumb-init", ["/run/s6", "/usr/start"]),
    ("bash", ["/package/admin/s6-overlay", "/usr/start"]),
])
def test_s6(tmp_path, pid1, dirs):
    root, proc = make_tree(tmp_path, {1: pid1, 40: "supercronic"}, dirs=dirs)
    info = initsys.detect(root, proc)
    assert info["kind"] == "s6"
    assert info["boot_dir"] == "/usr/start"
    assert info["pid1"] == pid1
    assert info["cron"] == "supercronic"


def test_s6_without_usr_start_falls_back_and_says_why(tmp_path):
    root, proc = make_tree(tmp_path, {1: "s6-svscan"})
    info = initsys.detect(root, proc)
    assert info["kind"] == "none"
    assert info["boot_dir"] is None
    assert "/usr/start does not exist" in info["reason"]


def test_supercronic(tmp_path):
    root, proc = make_tree(tmp_path, {1: "dumb-init", 7: "sh", 9: "supercronic"},
                           cmdlines={9: ["/usr/local/bin/supercronic", "-quiet", "/etc/crontab"]})
    info = initsys.detect(root, proc)
    assert info["kind"] == "cron"
    assert info["cron"] == "supercronic"
    assert info["crontab"] == "/etc/crontab"
    assert info["crontab_format"] == "supercronic"
    assert info["cron_reboot"] is False
    assert "no @reboot" in info["reason"]
    assert info["boot_dir"] is None


def test_supercronic_reads_the_file_it_was_given(tmp_path):
    root, proc = make_tree(tmp_path, {1: "tini", 12: "supercronic"},
                           cmdlines={12: ["supercronic", "-json", "crontab"]}, cwd={12: "/home/devbox"})
    assert initsys.detect(root, proc)["crontab"] == "/home/devbox/crontab"


@pytest.mark.parametrize("name", ["cron", "crond"])
def test_system_cron(tmp_path, name):
    root, proc = make_tree(tmp_path, {1: "tini", 55: name})
    info = initsys.detect(root, proc)
    assert info["kind"] == "cron"
    assert info["cron"] == name
    assert info["crontab"] == "/etc/crontab"
    assert info["crontab_format"] == "system"
    assert info["cron_reboot"] is True


def test_supercronic_preferred_over_cron(tmp_path):
    root, proc = make_tree(tmp_path, {1: "tini", 5: "cron", 9: "supercronic"})
    assert initsys.detect(root, proc)["cron"] == "supercronic"


def test_none_explains(tmp_path):
    root, proc = make_tree(tmp_path, {1: "dumb-init", 8: "node", 9: "croner"})
    info = initsys.detect(root, proc)
    assert info["kind"] == "none"
    assert info["cron"] is None and info["crontab"] is None and info["cron_reboot"] is False
    assert "PID 1 is dumb-init and no cron runs" in info["reason"]
    assert "nothing will restart the apps" in info["reason"]


def test_unreadable_proc(tmp_path):
    info = initsys.detect(str(tmp_path), str(tmp_path / "no-proc"))
    assert info["kind"] == "none" and info["pid1"] is None
    assert "PID 1 is unknown" in info["reason"]


@pytest.mark.parametrize("value", ["auto", "systemd", "s6", "cron", "none"])
def test_validate_kind_accepts(value):
    assert initsys.validate_kind(value) == value


@pytest.mark.parametrize("value", ["upstart", "", None, "S6"])
def test_validate_kind_rejects(value):
    with pytest.raises(DevboxOpsError) as err:
        initsys.validate_kind(value)
    assert err.value.param == "init_system"
    assert "init_system" in str(err.value) and repr(value) in str(err.value)


def test_resolve_forced_keeps_detection(tmp_path):
    root, proc = make_tree(tmp_path, {1: "dumb-init"})
    detected = initsys.detect(root, proc)
    forced = initsys.resolve("s6", detected)
    assert forced["kind"] == "s6" and forced["boot_dir"] == "/usr/start"
    assert "forced by init_system=s6" in forced["reason"] and "detected none" in forced["reason"]
    assert detected["kind"] == "none"  # not mutated
    cron = initsys.resolve("cron", detected)
    assert cron["crontab"] == "/etc/crontab" and cron["cron"] is None
    assert initsys.resolve("auto", detected) == detected
    with pytest.raises(DevboxOpsError):
        initsys.resolve("bogus", detected)


def test_real_machine():
    info = initsys.detect()
    assert info["kind"] in initsys.KINDS
    with open("/proc/1/comm") as f:
        assert info["pid1"] == f.read().strip()
    assert info["reason"]


def _module(tmp_path, *args):
    """Run the module with ad-hoc `ansible` on localhost; the tree callback (-t) writes its JSON result."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    ansible = os.path.join(REPO, ".venv", "bin", "ansible")
    proc = subprocess.run([ansible, "localhost", "-m", "devbox.ops.init_system", "-t", str(tmp_path)] + list(args),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    with open(os.path.join(str(tmp_path), "localhost")) as f:
        return proc.returncode, json.load(f), proc.stderr


def test_module_runs_in_check_mode_and_forces(tmp_path):
    rc, res = _module(tmp_path, "--check", "-a", "init_system=s6")[:2]
    assert rc == 0, res
    assert res["changed"] is False
    assert res["init"]["kind"] == "s6" and res["init"]["boot_dir"] == "/usr/start"
    assert res["detected"] == initsys.detect()
    if res["detected"]["kind"] == "none":
        rc, res, stderr = _module(tmp_path)
        assert rc == 0 and res["init"]["kind"] == "none"
        assert "[WARNING]: " + res["init"]["reason"] in " ".join(stderr.split())


def test_module_rejects_bad_value_naming_it(tmp_path):
    rc, res = _module(tmp_path, "-a", "init_system=upstart")[:2]
    assert rc != 0
    assert "init" not in res
    assert "init_system" in res["msg"] and "upstart" in res["msg"]
