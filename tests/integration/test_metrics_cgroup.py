# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.system_metrics inside a simulated devbox held in a 256 MiB memory cgroup, over real SSH.

A real cgroup v1 memory group is made on this machine, the memory hierarchy is mounted inside the
host as a container runtime mounts it, and every process of the harness host (its PID 1
and sshd included) is moved into it before the SSH session starts, so the module's Python inherits it,
as a container's processes do. The reported memory limit must be 256 MiB, not the machine's memory.
Needs root, the harness and a cgroup v1 memory controller (as on this CI machine).
"""
import json
import os
import subprocess

import pytest

pytestmark = [pytest.mark.harness, pytest.mark.integration]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(REPO, "tests", "harness", "harness")
ANSIBLE = os.path.join(REPO, ".venv", "bin", "ansible")
STATE = "/var/tmp/devbox-ops-it-metrics"
HOST, FIRST = "devbox81", "81"
MEMORY = "/sys/fs/cgroup/memory"
MiB = 1 << 20

if os.geteuid() != 0 or not os.path.isfile(os.path.join(MEMORY, "cgroup.procs")):
    pytest.fail("needs root and a cgroup v1 memory controller at %s (a skip would hide this test)" % MEMORY,
                pytrace=False)


def harness(*args):
    proc = subprocess.run([HARNESS] + list(args), env=dict(os.environ, DEVBOX_HARNESS_DIR=STATE),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=240, check=False)
    assert proc.returncode == 0, "harness %s: rc %d\n%s%s" % (
        " ".join(args), proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def pid_namespace(pid):
    try:
        return os.readlink("/proc/%s/ns/pid" % pid)
    except OSError:
        return None


def host_pids(init_pid):
    """Every process of the harness host: those in the pid namespace of its PID 1, PID 1 first."""
    ns = pid_namespace(init_pid)
    assert ns, "init pid %s is gone" % init_pid
    others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != init_pid and pid_namespace(p) == ns]
    return [init_pid] + sorted(int(p) for p in others)


def cgroup_pids(group):
    with open(os.path.join(group, "cgroup.procs")) as handle:
        return [int(p) for p in handle.read().split()]


def move(group, pid):
    try:
        with open(os.path.join(group, "cgroup.procs"), "w") as handle:
            handle.write(str(pid))
    except OSError:  # the process has exited meanwhile
        pass


def mount_cgroup_in_host():
    """Mount the memory hierarchy read-only at /sys/fs/cgroup/memory of the host, as Docker does.

    `ip netns exec` gives the host a fresh /sys without the cgroup mounts; these mounts live in the
    host's private mount namespace only and end with it.
    """
    harness("exec", HOST, "--", "mount", "-t", "tmpfs", "-o", "mode=755,size=64k", "cgroup-root", "/sys/fs/cgroup")
    harness("exec", HOST, "--", "mkdir", "/sys/fs/cgroup/memory")
    harness("exec", HOST, "--", "mount", "-t", "cgroup", "-o", "ro,memory", "cgroup", "/sys/fs/cgroup/memory")


def remove_group(group):
    if os.path.isdir(group):
        for pid in cgroup_pids(group):  # whatever outlived the host goes back to the root group
            move(MEMORY, pid)
        os.rmdir(group)


@pytest.fixture(scope="module")
def limited_host():
    """The harness host, all its processes in a new 256 MiB memory cgroup; both removed afterwards."""
    group = os.path.join(MEMORY, "devbox-ops-it-metrics-%d" % os.getpid())
    try:
        harness("up", "1", "--first", FIRST)
        mount_cgroup_in_host()
        os.mkdir(group)
        with open(os.path.join(group, "memory.limit_in_bytes"), "w") as handle:
            handle.write(str(256 * MiB))
        with open(os.path.join(STATE, "hosts", HOST, "host.json")) as handle:
            init_pid = json.load(handle)["init_pid"]
        for pid in host_pids(init_pid):
            move(group, pid)
        assert init_pid in cgroup_pids(group)
        yield group, os.path.join(STATE, "inventory.yml")
    finally:
        try:
            harness("down")
        finally:
            remove_group(group)


def run_module(inventory, args):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    proc = subprocess.run([ANSIBLE, HOST, "-i", inventory, "-m", "devbox.ops.system_metrics", "-a", json.dumps(args)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=180, check=False)
    out = proc.stdout + proc.stderr
    tail = proc.stdout[proc.stdout.rindex("%s | " % HOST):]
    return proc.returncode, out, json.loads(tail[tail.index("=> ") + 3:])


def test_memory_limit_reported_inside_the_host_is_the_cgroup_limit(limited_host):
    group, inventory = limited_host
    rc, out, res = run_module(inventory, {"top": 3})
    assert rc == 0, out
    mem, cg = res["metrics"]["memory"], res["metrics"]["cgroup"]
    assert mem["limit"] == 256 * MiB and mem["limit_source"] == "cgroup", mem
    assert mem["host_total"] > 4 * 256 * MiB  # the machine's memory is what a naive reading would show
    assert 0 < mem["used"] < 256 * MiB
    assert cg["version"] == 1 and cg["cgroup"] == "/" + os.path.basename(group)
    assert cg["sources"]["memory_limit"] == os.path.join(group, "memory.limit_in_bytes")
    assert res["changed"] is False and res["levels"]["memory"] in ("ok", "warning", "critical")
    assert res["metrics"]["pm2"] == [] and res["pm2_daemon"] is False  # no PM2 daemon was started
    assert len(cgroup_pids(group)) >= 2  # PID 1 and sshd at least
