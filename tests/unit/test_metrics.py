# SPDX-License-Identifier: GPL-3.0-or-later
"""The metrics engine: cgroup fixture trees (v1 and v2), a real cgroup v1 on this machine, real
processes, real PM2 apps, real mounts, and the threshold levels."""
import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from ansible_collections.devbox.ops.plugins.module_utils import metrics
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import PM2Client
from ansible_collections.devbox.ops.plugins.module_utils.runner import SubprocessRunner

from pm2_helpers import pm2
# Fixtures, used by name:
from pm2_helpers import apps_dir, pm2_home  # noqa: F401 pylint: disable=unused-import

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "cgroup")
COLLECTIONS = os.path.join(os.path.dirname(os.path.dirname(HERE)), ".collections")
MiB = 1 << 20
IS_ROOT = os.geteuid() == 0


def fixture(name):
    base = os.path.join(FIXTURES, name)
    return os.path.join(base, "root"), os.path.join(base, "proc_self_cgroup")


def limits_of(name):
    return metrics.cgroup_limits(*fixture(name))


# ------------------------------------------------------------------------------- cgroup fixtures

def test_parse_proc_cgroup_v1_and_v2_lines():
    v1, v2 = metrics.parse_proc_cgroup("4:memory:/a/b\n3:cpu,cpuacct:/c\n1:name=systemd:/d\n0::/e\n")
    assert v1["memory"] == ("memory", "/a/b")
    assert v1["cpu"] == ("cpu,cpuacct", "/c") and v1["cpuacct"] == ("cpu,cpuacct", "/c")
    assert v2 == "/e"
    assert metrics.parse_proc_cgroup("0::/only\n") == ({}, "/only")


def test_v2_limit_on_a_parent_is_found_by_walking_up():
    lim = limits_of("v2-nested")
    root = fixture("v2-nested")[0]
    pod = os.path.join(root, "kubepods.slice", "pod-a")
    assert lim["version"] == 2 and lim["cgroup"] == "/kubepods.slice/pod-a/ctr-1"
    assert lim["memory_limit"] == 512 * MiB  # ctr-1 says "max", the pod says 512 MiB
    assert lim["cpu_limit_cores"] == 1.5  # cpu.max "150000 100000"
    # usage of the cgroup that holds the limit, minus its reclaimable inactive_file page cache
    assert lim["memory_usage"] == 300 * MiB and lim["memory_inactive_file"] == 100 * MiB
    assert lim["memory_used"] == 200 * MiB
    assert lim["sources"] == {"memory_limit": os.path.join(pod, "memory.max"),
                              "memory_usage": os.path.join(pod, "memory.current"),
                              "cpu_limit": os.path.join(pod, "cpu.max"),
                              "cpu_usage": os.path.join(pod, "cpu.stat")}
    assert metrics.cgroup_cpu_seconds(lim) == 4.0  # usage_usec 4000000


def test_v2_max_everywhere_means_unlimited():
    lim = limits_of("v2-unlimited")
    assert lim["version"] == 2
    assert lim["memory_limit"] is None and lim["cpu_limit_cores"] is None
    assert lim["memory_used"] == 48 * MiB  # 64 MiB current - 16 MiB inactive_file of the own cgroup
    assert lim["sources"]["memory_limit"] is None and lim["sources"]["cpu_usage"] is None
    assert metrics.cgroup_cpu_seconds(lim) is None


def test_v2_container_without_cgroup_namespace_uses_the_mounted_root():
    lim = limits_of("v2-container-root")
    assert lim["cgroup"] == "/kubepods/burstable/pod-x/0123abcd"  # does not exist under the root
    assert lim["memory_limit"] == 256 * MiB and lim["memory_used"] == 70 * MiB
    assert lim["cpu_limit_cores"] == 2.0
    assert lim["sources"]["memory_limit"] == os.path.join(fixture("v2-container-root")[0], "memory.max")


def test_v1_limit_on_parent_total_inactive_file_and_comounted_cpu():
    lim = limits_of("v1-nested")
    root = fixture("v1-nested")[0]
    assert lim["version"] == 1 and lim["cgroup"] == "/docker/abc"
    # the leaf has the huge "unlimited" value; /docker has 1 GiB; the root is unlimited again
    assert lim["memory_limit"] == 1024 * MiB
    assert lim["sources"]["memory_limit"] == os.path.join(root, "memory", "docker", "memory.limit_in_bytes")
    # hierarchical total_inactive_file wins over the cgroup's own inactive_file
    assert lim["memory_usage"] == 700 * MiB and lim["memory_inactive_file"] == 250 * MiB
    assert lim["memory_used"] == 450 * MiB
    assert lim["cpu_limit_cores"] == 0.5
    assert lim["sources"]["cpu_limit"] == os.path.join(root, "cpu,cpuacct", "docker", "abc", "cpu.cfs_quota_us")
    assert metrics.cgroup_cpu_seconds(lim) == 2.5  # cpuacct.usage is in nanoseconds


def test_v1_huge_limit_and_minus_one_quota_mean_unlimited():
    lim = limits_of("v1-unlimited")
    assert lim["version"] == 1 and lim["cgroup"] == "/jobs/j1"
    assert lim["memory_limit"] is None and lim["cpu_limit_cores"] is None
    assert lim["memory_used"] == 40 * MiB  # 48 MiB - total_inactive_file 8 MiB


def test_no_cgroup_files_gives_version_none(tmp_path):
    lim = metrics.cgroup_limits(str(tmp_path), str(tmp_path / "missing"))
    assert lim["version"] is None and lim["memory_limit"] is None and lim["cpu_limit_cores"] is None


def test_collect_measures_memory_against_the_cgroup_limit_of_a_fixture():
    host = psutil.virtual_memory().total
    root, proc = fixture("v2-nested")
    out = metrics.collect(cgroup_root=root, proc_self_cgroup=proc, top=0, interval=0.1)
    assert out["memory"]["limit"] == 512 * MiB < host
    assert out["memory"]["limit_source"] == "cgroup" and out["memory"]["used"] == 200 * MiB
    assert out["memory"]["percent"] == round(200 * 100.0 / 512, 1)
    assert out["memory"]["host_total"] == host
    if psutil.cpu_count() > 1.5:
        # the fixture's cpu.stat does not move: the container used no CPU in the window
        assert out["cpu"] == {"percent": 0.0, "cores": 1.5, "limit_source": "cgroup",
                              "host_cores": psutil.cpu_count()}
    assert out["top"] == {"cpu": [], "rss": []} and out["pm2"] is None


def test_collect_without_a_limit_reports_the_host():
    root, proc = fixture("v2-unlimited")
    out = metrics.collect(cgroup_root=root, proc_self_cgroup=proc, top=0, interval=0.1)
    vm = psutil.virtual_memory()
    assert out["memory"]["limit_source"] == "host" and out["memory"]["limit"] == vm.total
    assert out["cpu"]["limit_source"] == "host" and out["cpu"]["cores"] == psutil.cpu_count()
    assert 0 <= out["cpu"]["percent"] <= 100


# ------------------------------------------------------------------------------- real cgroup v1

CHILD = textwrap.dedent("""\
    import json, sys, threading
    sys.path.insert(0, sys.argv[1])
    from ansible_collections.devbox.ops.plugins.module_utils import metrics
    sys.stdin.readline()  # the parent has moved this process into the cgroup
    ballast = bytearray(64 << 20)
    for i in range(0, len(ballast), 4096):  # touch every page: charged to the new cgroup
        ballast[i] = 1
    stop = []
    def burn():
        while not stop:
            pass
    threading.Thread(target=burn, daemon=True).start()
    out = metrics.collect(interval=0.5, top=3)
    stop.append(1)
    print(json.dumps(out))
""")


class V1Cgroup:
    """A cgroup v1 group made for one test in several controllers, removed afterwards."""

    def __init__(self, name, controllers):
        self.dirs = dict((c, os.path.join(metrics.CGROUP_ROOT, c, name)) for c in controllers)

    def __enter__(self):
        for directory in self.dirs.values():
            os.mkdir(directory)
        return self

    def write(self, controller, filename, value):
        with open(os.path.join(self.dirs[controller], filename), "w") as handle:
            handle.write(str(value))

    def add(self, pid):
        for controller in self.dirs:
            self.write(controller, "cgroup.procs", pid)

    def __exit__(self, *exc):
        for directory in self.dirs.values():
            if not os.path.isdir(directory):
                continue
            with open(os.path.join(directory, "cgroup.procs")) as handle:
                left = handle.read().split()
            for pid in left:  # give leftovers back to the parent so the group can go
                try:
                    with open(os.path.join(os.path.dirname(directory), "cgroup.procs"), "w") as handle:
                        handle.write(pid)
                except OSError:
                    pass
            os.rmdir(directory)


def v1_available(controller):
    return os.path.isfile(os.path.join(metrics.CGROUP_ROOT, controller, "cgroup.procs"))


@pytest.mark.skipif(not (IS_ROOT and v1_available("memory") and v1_available("cpu") and v1_available("cpuacct")),
                    reason="needs root and cgroup v1 memory, cpu and cpuacct controllers")
def test_real_v1_cgroup_limits_memory_and_cpu_of_a_child():
    name = "devbox-ops-test-%d" % os.getpid()
    with V1Cgroup(name, ("memory", "cpu", "cpuacct")) as group:
        group.write("memory", "memory.limit_in_bytes", 256 * MiB)
        group.write("cpu", "cpu.cfs_period_us", 100000)
        group.write("cpu", "cpu.cfs_quota_us", 50000)
        child = subprocess.Popen([sys.executable, "-c", CHILD, COLLECTIONS], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        try:
            group.add(child.pid)
            out, err = child.communicate("go\n", timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 0, err
        res = json.loads(out)
    assert not os.path.exists(os.path.join(metrics.CGROUP_ROOT, "memory", name))
    host = psutil.virtual_memory().total
    assert host > 1024 * MiB  # the machine has far more than the limit
    assert res["cgroup"]["version"] == 1 and res["cgroup"]["cgroup"] == "/" + name
    assert res["memory"]["limit"] == 256 * MiB and res["memory"]["limit_source"] == "cgroup"
    assert res["memory"]["host_total"] == host
    assert 64 * MiB <= res["memory"]["used"] < 256 * MiB  # the touched ballast is charged here
    assert res["cgroup"]["memory_limit"] == 256 * MiB
    assert res["cgroup"]["sources"]["memory_limit"] == os.path.join(
        metrics.CGROUP_ROOT, "memory", name, "memory.limit_in_bytes")
    # a busy thread, throttled to half a core: near 100 % of the limit, measured from cpuacct.usage
    assert res["cpu"]["cores"] == 0.5 and res["cpu"]["limit_source"] == "cgroup"
    acct = os.path.join(metrics.CGROUP_ROOT, "cpuacct", name, "cpuacct.usage")
    assert res["cgroup"]["sources"]["cpu_usage"] == acct
    assert 50 <= res["cpu"]["percent"] <= 130, res["cpu"]


# ------------------------------------------------------------------------------- real processes

BURNER = textwrap.dedent("""\
    import os, sys
    ballast = bytearray(int(sys.argv[1]) << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    parent = os.getppid()
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    while os.getppid() == parent:  # busy until orphaned
        pass
""")


@pytest.fixture
def burner():
    """A process holding 400 MiB and burning one core, with a secret among its arguments."""
    secret = "canary-argv-%d-9f1c" % os.getpid()
    proc = subprocess.Popen([sys.executable, "-c", BURNER, "400", "--token=" + secret],
                            stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc, secret
    finally:
        proc.kill()
        proc.wait()


def test_top_processes_by_cpu_and_rss_without_command_lines(burner):
    proc, secret = burner
    out = metrics.collect(top=8, interval=0.5)
    by_cpu, by_rss = out["top"]["cpu"], out["top"]["rss"]
    assert len(by_cpu) <= 8 and len(by_rss) <= 8
    assert [r["cpu"] for r in by_cpu] == sorted((r["cpu"] for r in by_cpu), reverse=True)
    assert [r["rss"] for r in by_rss] == sorted((r["rss"] for r in by_rss), reverse=True)
    mine = [r for r in by_rss if r["pid"] == proc.pid]
    assert mine and mine[0]["rss"] >= 400 * MiB and set(mine[0]) == {"pid", "name", "cpu", "rss"}
    assert mine[0]["name"].startswith("python")
    assert proc.pid in [r["pid"] for r in by_cpu]
    assert secret not in json.dumps(out)  # never the command line


def test_default_disks_are_real_filesystems_once_each():
    out = metrics.collect(top=0, interval=0.1)
    disks = out["disk"]
    assert disks and all(d["fstype"] not in metrics.PSEUDO_FS for d in disks)
    devs = [os.stat(d["mount"]).st_dev for d in disks]
    assert len(devs) == len(set(devs))
    root = [d for d in disks if d["mount"] == "/"]
    assert root, disks
    st = os.statvfs("/")
    assert root[0]["total"] == st.f_blocks * st.f_frsize
    assert root[0]["percent"] == round(psutil.disk_usage("/").percent, 1)


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "devbox-ops-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")
def test_disk_paths_report_the_given_filesystems_tmpfs_included(small_tmpfs, tmp_path):
    (small_tmpfs / "half").write_bytes(b"x" * (4 * MiB))
    default = metrics.collect(top=0, interval=0.1)["disk"]
    assert str(small_tmpfs) not in [d["mount"] for d in default]  # tmpfs is not reported by default
    sub = small_tmpfs / "sub"
    sub.mkdir()
    out = metrics.collect(disk_paths=[str(sub), str(tmp_path)], top=0, interval=0.1)["disk"]
    assert [d["path"] for d in out] == [str(sub), str(tmp_path)]
    assert out[0]["mount"] == str(small_tmpfs) and out[0]["total"] == 8 * MiB
    assert 49 <= out[0]["percent"] <= 51


# ------------------------------------------------------------------------------- PM2 apps

PARENT_JS = textwrap.dedent("""\
    const { spawn } = require('child_process');
    spawn(process.argv[2], [process.argv[3], '120'], { stdio: ['ignore', 'ignore', 'inherit'] });
    setInterval(() => {}, 1000);
""")


@pytest.fixture
def pm2_app(pm2_home, apps_dir):
    (apps_dir / "parent.js").write_text(PARENT_JS)
    (apps_dir / "burner.py").write_text(BURNER)
    name = "metrics-app"
    res = pm2(pm2_home, "start", str(apps_dir / "parent.js"), "--name", name, "--", sys.executable,
              str(apps_dir / "burner.py"))
    assert res.returncode == 0, res.stderr
    try:
        yield name
    finally:
        pm2(pm2_home, "delete", name)


def test_pm2_app_usage_sums_the_app_and_its_children(pm2_home, pm2_app):
    client = PM2Client(SubprocessRunner(), pm2_home=pm2_home)
    deadline = time.time() + 30
    while True:
        procs = [p for p in client.jlist() if p["name"] == pm2_app]
        node = procs[0]["pid"] if procs and procs[0]["status"] == "online" else None
        children = psutil.Process(node).children(recursive=True) if node else []
        if children and children[0].memory_info().rss >= 120 * MiB:
            break
        assert time.time() < deadline, "the app's child never came up: %r" % procs
        time.sleep(0.2)
    out = metrics.collect(pm2_processes=client.jlist(), top=0, interval=0.5)
    apps = dict((a["name"], a) for a in out["pm2"])
    app = apps[pm2_app]
    assert app["instances"] == 1 and app["online"] == 1 and app["processes"] == 2
    expected = psutil.Process(node).memory_info().rss + children[0].memory_info().rss
    assert abs(app["rss"] - expected) < 0.1 * expected
    assert app["rss"] >= 120 * MiB + psutil.Process(node).memory_info().rss // 2
    # The child spins a core and node itself idles, so a figure well above zero can only come from the
    # child. 5% (not 100%): on a loaded 2-core CI runner the spinner gets far less than a core.
    assert app["cpu"] >= 5, app


def test_pm2_processes_that_are_not_running_count_as_instances_only():
    out = metrics.collect(pm2_processes=[{"name": "gone", "pid": None, "status": "stopped"},
                                         {"name": "gone", "pid": 2 ** 22 + 7, "status": "online"}],
                          top=0, interval=0.1)
    assert out["pm2"] == [{"name": "gone", "instances": 2, "online": 1, "processes": 0, "cpu": 0.0, "rss": 0}]


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, param", [
    ({"top": -1}, "top"),
    ({"top": "5"}, "top"),
    ({"top": True}, "top"),
    ({"interval": 0}, "interval"),
    ({"interval": "fast"}, "interval"),
    ({"disk_paths": "relative/dir"}, "disk_paths"),
    ({"disk_paths": ["relative/dir"]}, "disk_paths"),
    ({"disk_paths": ["/nonexistent-devbox-ops-path"]}, "disk_paths"),
    ({"pm2_processes": [{"pid": 1}]}, "pm2_processes"),
    ({"pm2_processes": "api"}, "pm2_processes"),
])
def test_collect_rejects_bad_input(kwargs, param):
    with pytest.raises(DevboxOpsError) as err:
        metrics.collect(**kwargs)
    assert err.value.param == param and param in str(err.value)
    value = list(kwargs.values())[0]
    if param != "pm2_processes":
        shown = value[0] if isinstance(value, list) else value
        assert repr(shown) in str(err.value)


# ------------------------------------------------------------------------------- evaluate

def snapshot(cpu=10.0, memory=10.0, disks=(("/", 10.0),), load5=0.5):
    return {
        "cpu": {"percent": cpu, "cores": 2, "limit_source": "host"},
        "memory": {"percent": memory, "used": 100 * MiB, "limit": 256 * MiB, "limit_source": "cgroup"},
        "disk": [{"mount": m, "percent": p, "total": 10 * MiB} for m, p in disks],
        "load": {"load5": load5 * 2, "cores": 2, "per_core": {"load5": load5}},
    }


def test_evaluate_levels_at_the_boundaries():
    res = metrics.evaluate(snapshot(cpu=79.9, memory=80.0, disks=(("/", 95.0),), load5=1.49))
    assert res["levels"] == {"cpu": "ok", "memory": "warning", "disk": "critical", "load_per_core": "ok"}
    assert res["level"] == "critical"
    assert len(res["warnings"]) == 2
    assert res["warnings"][0].startswith("memory warning: 80.0% (100.0 MiB of 256.0 MiB, cgroup limit)")
    assert "disk critical: 95.0%" in res["warnings"][1] and "on /" in res["warnings"][1]


def test_evaluate_all_ok():
    res = metrics.evaluate(snapshot())
    assert res["level"] == "ok" and res["warnings"] == [] and len(res["checks"]) == 4
    assert set(res["levels"].values()) == {"ok"}


def test_disk_level_is_the_fullest_mount_with_one_check_per_mount():
    res = metrics.evaluate(snapshot(disks=(("/", 50.0), ("/data", 90.0), ("/logs", 20.0))))
    assert res["levels"]["disk"] == "warning"
    disk = [(c["target"], c["level"]) for c in res["checks"] if c["metric"] == "disk"]
    assert disk == [("/", "ok"), ("/data", "warning"), ("/logs", "ok")]


def test_custom_thresholds_merge_with_defaults():
    res = metrics.evaluate(snapshot(memory=65.0, load5=4.0),
                           {"memory": {"warning": "60"}, "load_per_core": {"warning": 5, "critical": 150}})
    assert res["levels"]["memory"] == "warning" and res["levels"]["load_per_core"] == "ok"
    mem = [c for c in res["checks"] if c["metric"] == "memory"][0]
    assert (mem["warning"], mem["critical"]) == (60.0, 95.0)
    assert metrics.check_thresholds(None) == metrics.DEFAULT_THRESHOLDS
    assert metrics.check_thresholds({"cpu": None, "disk": {"warning": None}}) == metrics.DEFAULT_THRESHOLDS


@pytest.mark.parametrize("thresholds, param, value", [
    ({"memory": {"warning": 96, "critical": 90}}, "thresholds.memory.warning", "96"),
    ({"cpu": {"warning": 99}}, "thresholds.cpu.warning", "99"),  # above the default critical 95
    ({"disk": {"critical": -1}}, "thresholds.disk.critical", "-1"),
    ({"load_per_core": {"warning": -0.5}}, "thresholds.load_per_core.warning", "-0.5"),
    ({"memory": {"critical": 101}}, "thresholds.memory.critical", "101"),
    ({"cpu": {"warning": "high"}}, "thresholds.cpu.warning", "'high'"),
    ({"cpu": {"warning": True}}, "thresholds.cpu.warning", "True"),
    ({"cpu": {"critical": "nan"}}, "thresholds.cpu.critical", "'nan'"),
    ({"cpu": {"warn": 50}}, "thresholds.cpu", "warn"),
    ({"cpu": 50}, "thresholds.cpu", "50"),
    ({"swap": {"warning": 50}}, "thresholds", "swap"),
    ("memory=80", "thresholds", "memory=80"),
])
def test_bad_thresholds_name_the_parameter_and_value(thresholds, param, value):
    with pytest.raises(DevboxOpsError) as err:
        metrics.evaluate(snapshot(), thresholds)
    assert err.value.param == param
    assert str(err.value).startswith(param + "=") and value in str(err.value)


def test_evaluate_rejects_what_is_not_a_snapshot():
    with pytest.raises(DevboxOpsError) as err:
        metrics.evaluate(None)
    assert err.value.param == "metrics"
