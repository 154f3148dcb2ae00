# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.system_metrics through real `ansible localhost`: a cgroup tree given by cgroup_root,
levels and warnings, a real PM2 daemon (and none), and bad input that names the parameter."""
import json
import os
import subprocess
import time

import pytest

from pm2_helpers import pm2, raw_jlist
# Fixtures, used by name:
from pm2_helpers import apps_dir, pm2_home  # noqa: F401 pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE = os.path.join(REPO, ".venv", "bin", "ansible")
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
MiB = 1 << 20


def ansible(args, *flags):
    """Run the module on localhost; returns (rc, all output, the result dict)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="0",
               ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    argv = [ANSIBLE, "localhost", "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % PYTHON,
            "-m", "devbox.ops.system_metrics", "-a", json.dumps(args)] + list(flags)
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120, check=False)
    tail = proc.stdout[proc.stdout.rindex("localhost | "):]
    return proc.returncode, proc.stdout + proc.stderr, json.loads(tail[tail.index("=> ") + 3:])


@pytest.fixture(scope="module")
def cgroup_tree(tmp_path_factory):
    """A cgroup root holding a 256 MiB container limit, in the v1 and the v2 layout.

    The module's own /proc/self/cgroup names a path this tree lacks, so the engine falls back to the
    root, as inside a container whose cgroup is mounted at /sys/fs/cgroup.
    """
    root = tmp_path_factory.mktemp("cgroup")
    files = {
        "memory/memory.limit_in_bytes": 256 * MiB, "memory/memory.usage_in_bytes": 100 * MiB,
        "memory/memory.stat": "total_inactive_file %d" % (20 * MiB),
        "cgroup.controllers": "cpu memory", "memory.max": 256 * MiB, "memory.current": 100 * MiB,
        "memory.stat": "inactive_file %d" % (20 * MiB),
        # Half a core whose usage counter stands still: the cpu figure is the cgroup's (0%), not the
        # host's, which a busy CI machine can hold at 100% and so turn these tests' levels critical.
        "cpu/cpu.cfs_quota_us": 50000, "cpu/cpu.cfs_period_us": 100000, "cpuacct/cpuacct.usage": 0,
        "cpu.max": "50000 100000", "cpu.stat": "usage_usec 0",
    }
    for rel, value in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("%s\n" % value)
    return str(root)


def test_check_mode_reports_the_cgroup_limit_read_only(cgroup_tree):
    rc, out, res = ansible({"cgroup_root": cgroup_tree, "include_pm2": False, "top": 2}, "--check")
    assert rc == 0, out
    assert res["changed"] is False
    mem = res["metrics"]["memory"]
    assert mem["limit"] == 256 * MiB and mem["used"] == 80 * MiB and mem["limit_source"] == "cgroup"
    assert mem["percent"] == 31.2 and mem["available"] == 176 * MiB
    assert set(res["levels"]) == {"cpu", "memory", "disk", "load_per_core"}
    assert res["levels"]["memory"] == "ok" and res["level"] in ("ok", "warning", "critical")
    assert res["metrics"]["pm2"] is None and res["pm2_daemon"] is None
    assert len(res["metrics"]["top"]["cpu"]) == 2 and len(res["metrics"]["top"]["rss"]) == 2
    assert len(res["checks"]) >= 4


QUIET = {"cpu": {"warning": 100, "critical": 100}, "disk": {"warning": 100, "critical": 100},
         "load_per_core": {"warning": 1000, "critical": 1000}}


def test_thresholds_give_warning_then_critical(cgroup_tree):
    base = {"cgroup_root": cgroup_tree, "include_pm2": False, "top": 0}
    rc, out, res = ansible(dict(base, thresholds=dict(QUIET, memory={"warning": 30, "critical": 50})))
    assert rc == 0, out
    assert res["level"] == "warning" and res["levels"]["memory"] == "warning"
    assert [a["metric"] for a in res["alerts"]] == ["memory"]
    message = res["alerts"][0]["message"]
    assert message.startswith("memory warning: 31.2% (80.0 MiB of 256.0 MiB, cgroup limit)")
    assert "[WARNING]: " + message in out
    rc, out, res = ansible(dict(base, thresholds=dict(QUIET, memory={"warning": "20", "critical": "31"})))
    assert rc == 0, out
    assert res["level"] == "critical" and res["alerts"][0]["level"] == "critical"


def test_registered_result_carries_the_warnings(cgroup_tree, tmp_path):
    playbook = tmp_path / "metrics.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"devbox.ops.system_metrics": {"cgroup_root": cgroup_tree, "include_pm2": False, "top": 0,
                                       "thresholds": dict(QUIET, memory={"warning": 30})},
         "register": "res"},
        {"ansible.builtin.assert": {"that": [
            "res.level == 'warning'", "res.warnings | length == 1",
            "res.warnings[0] is search('^memory warning: 31.2%')", "res.levels.cpu == 'ok'",
            "res is not changed"]}},
    ]}]))
    proc = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter=%s" % PYTHON, str(playbook)],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=120, check=False)
    assert proc.returncode == 0 and "failed=0" in proc.stdout, proc.stdout
    assert "All assertions passed" in proc.stdout


def test_pm2_apps_of_a_running_daemon(pm2_home, apps_dir):
    name = "sm-idle"
    (apps_dir / "idle.js").write_text("setInterval(() => {}, 1000);\n")
    started = pm2(pm2_home, "start", str(apps_dir / "idle.js"), "--name", name)
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.time() + 30
        while not [p for p in raw_jlist(pm2_home) if p["name"] == name and p.get("pid")]:
            assert time.time() < deadline, "%s never got a pid" % name
            time.sleep(0.2)
        rc, out, res = ansible({"pm2_home": pm2_home, "top": 0})
        assert rc == 0, out
        assert res["pm2_daemon"] is True
        apps = dict((a["name"], a) for a in res["metrics"]["pm2"])
        assert apps[name]["instances"] == 1 and apps[name]["online"] == 1
        assert apps[name]["processes"] == 1 and apps[name]["rss"] > MiB
    finally:
        pm2(pm2_home, "delete", name)


def test_no_pm2_daemon_is_started(tmp_path):
    home = tmp_path / "pm2-never"
    home.mkdir()
    rc, out, res = ansible({"pm2_home": str(home), "top": 0})
    assert rc == 0, out
    assert res["pm2_daemon"] is False and res["metrics"]["pm2"] == []
    assert os.listdir(str(home)) == []  # pm2 was not run: no daemon, no pid file, no logs


@pytest.mark.parametrize("args, needle", [
    ({"thresholds": {"memory": {"warning": 96, "critical": 90}}}, "thresholds.memory.warning=96"),
    ({"thresholds": {"cpu": {"warning": 120}}}, "thresholds.cpu.warning=120"),
    ({"thresholds": {"disk": {"critical": -5}}}, "thresholds.disk.critical=-5"),
    ({"thresholds": {"cpu": {"warning": "high"}}}, "thresholds.cpu.warning='high'"),
    ({"thresholds": {"swap": {"warning": 5}}}, "thresholds.swap"),
    ({"disk_paths": ["relative/dir"]}, "disk_paths='relative/dir'"),
    ({"top": -1}, "top=-1"),
])
def test_bad_input_fails_naming_the_parameter(args, needle, tmp_path):
    home = tmp_path / "pm2"
    home.mkdir()
    rc, out, res = ansible(dict(args, pm2_home=str(home)))
    assert rc != 0 and "FAILED!" in out, out
    assert needle in res["msg"], res["msg"]
    assert "metrics" not in res
    assert os.listdir(str(home)) == []
