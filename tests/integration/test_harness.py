# SPDX-License-Identifier: GPL-3.0-or-later
"""The simulated devboxes (tests/harness/harness), tested for real: namespaces, sshd, reboots, cron.

Needs root (the harness makes network, mount and pid namespaces). The hosts get a state dir of their
own under /var/tmp, so a harness someone else runs with the default state is never touched; if that
other harness already holds devbox1/devbox2, `up` here fails with a clear message instead.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import yaml

pytestmark = pytest.mark.harness

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(REPO, "tests", "harness", "harness")
TICK = 2  # seconds per simulated cron minute (HARNESS_CRON_TICK)
IPS = {"devbox1": "10.213.1.2", "devbox2": "10.213.2.2", "devbox3": "10.213.3.2"}


class Harness:
    def __init__(self, state):
        self.state = state
        self.env = dict(os.environ, DEVBOX_HARNESS_DIR=state, HARNESS_CRON_TICK=str(TICK))

    def run(self, *args, env=None, timeout=180):
        return subprocess.run([HARNESS] + list(args), env=env or self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout, check=False)

    def ok(self, *args):
        r = self.run(*args)
        assert r.returncode == 0, "harness %s failed:\n%s%s" % (" ".join(args), r.stdout, r.stderr)
        return r.stdout

    def ssh(self, host, command, timeout=60):
        argv = ["ssh", "-i", os.path.join(self.state, "id_ed25519"), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=5", "devbox@%s" % IPS[host], command]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout, check=False)

    def sh(self, host, command):
        r = self.ssh(host, command)
        assert r.returncode == 0, "ssh %s %r: rc %d\n%s%s" % (host, command, r.returncode, r.stdout, r.stderr)
        return r.stdout

    def record(self, host):
        with open(os.path.join(self.state, "hosts", host, "host.json")) as f:
            return json.load(f)

    def init_pid(self, host):
        return self.record(host)["init_pid"]


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def netns_names():
    out = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, universal_newlines=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def wait_for(predicate, timeout, step=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture(scope="module")
def harness():
    if os.geteuid() != 0:
        pytest.fail("the harness makes namespaces: run these tests as root (a skip would hide them)", pytrace=False)
    state = tempfile.mkdtemp(prefix="devbox-harness-pytest-", dir="/var/tmp")
    h = Harness(state)
    try:
        h.ok("up", "2", "--init", "devbox2=cron")
        yield h
    finally:
        h.run("down", "--purge")
        shutil.rmtree(state, ignore_errors=True)


def test_up_again_keeps_healthy_hosts(harness):
    before = {h: harness.init_pid(h) for h in ("devbox1", "devbox2")}
    out = harness.ok("up", "2")
    assert "devbox1 10.213.1.2 s6: kept" in out
    assert "devbox2 10.213.2.2 cron: kept" in out  # no --init: an existing host keeps its flavour
    assert {h: harness.init_pid(h) for h in before} == before
    assert all(pid_alive(pid) for pid in before.values())


def test_ssh_as_devbox_into_each_host_shows_its_own_address(harness):
    for host, other in (("devbox1", "devbox2"), ("devbox2", "devbox1")):
        out = harness.sh(host, "id -un; hostname; hostname -I; ip -4 -o addr show dev eth0")
        user, hostname, addresses, eth0 = out.splitlines()
        assert (user, hostname) == ("devbox", host)
        assert addresses.split() == [IPS[host]]
        assert IPS[host] + "/30" in eth0 and IPS[other] not in out


def test_hosts_have_private_disks_and_their_own_pid1(harness):
    harness.sh("devbox1", "echo only-on-1 > /home/devbox/isolation-check")
    assert harness.ssh("devbox2", "test -e /home/devbox/isolation-check").returncode == 1
    with open(os.path.join(harness.state, "hosts", "devbox1", "home", "isolation-check")) as f:
        assert f.read() == "only-on-1\n"  # the host's /home/devbox is its per-host dir
    assert not os.path.exists("/home/devbox/isolation-check")  # nothing leaks to the machine
    assert harness.sh("devbox1", "cat /proc/1/comm").strip() == "s6-svscan"
    assert harness.sh("devbox2", "cat /proc/1/comm").strip() == "dumb-init"
    comms = {h: harness.sh(h, "cat /proc/[0-9]*/comm 2>/dev/null").split() for h in ("devbox1", "devbox2")}
    assert "supercronic" in comms["devbox2"] and "supercronic" not in comms["devbox1"]
    assert "sshd" in comms["devbox1"] and len(comms["devbox1"]) < 20  # its own pid namespace only
    assert harness.sh("devbox1", "pwd; stat -c '%U %a' /home/devbox/project") == "/home/devbox\ndevbox 755\n"


def test_devbox_has_passwordless_sudo(harness):
    assert harness.ssh("devbox1", "sudo -n true").returncode == 0
    assert harness.sh("devbox2", "sudo -n id -u").strip() == "0"


def test_same_port_on_both_hosts(harness):
    pids = {}
    for host in ("devbox1", "devbox2"):
        pids[host] = harness.sh(host, "mkdir -p /tmp/www; echo %s > /tmp/www/who; "
                                      "nohup python3 -m http.server 8080 --bind 0.0.0.0 --directory /tmp/www "
                                      ">/dev/null 2>&1 & echo $!" % host).strip()

    def fetch(host):
        try:
            with urllib.request.urlopen("http://%s:8080/who" % IPS[host], timeout=2) as resp:
                return resp.read().decode().strip()
        except OSError:
            return None

    try:
        for host in pids:
            assert wait_for(lambda: fetch(host) is not None, 15), "no http.server on %s" % host
            assert fetch(host) == host
    finally:
        for host, pid in pids.items():
            harness.ssh(host, "kill %s" % pid)


def test_reboot_kills_processes_runs_boot_scripts_and_clears_tmp(harness):
    old_init = harness.init_pid("devbox1")
    sleeper = harness.sh("devbox1", "nohup sleep 1000 >/dev/null 2>&1 & echo $!").strip()
    harness.sh("devbox1", "echo kept > ~/disk-file; echo lost > /tmp/tmp-file; "
                          "printf '#!/bin/sh\\necho \"$(id -un) $(cat /proc/1/comm)\" >> /home/devbox/boot-marker\\n'"
                          " | sudo tee /usr/start/10-marker >/dev/null && sudo chmod 755 /usr/start/10-marker")
    assert harness.sh("devbox1", "pgrep -x sleep").split() == [sleeper]
    assert harness.ssh("devbox1", "test -e ~/boot-marker").returncode == 1

    out = harness.ok("reboot", "devbox1")
    assert "devbox1 10.213.1.2 s6: rebooted" in out
    # reboot returns only when sshd accepts: no retry here
    after = harness.sh("devbox1", "pgrep -x sleep; echo rc=$?; cat ~/boot-marker ~/disk-file; ls -A /tmp")
    assert after == "rc=1\nroot s6-svscan\nkept\n"
    assert harness.init_pid("devbox1") != old_init and not pid_alive(old_init)
    assert harness.sh("devbox1", "cat /proc/1/comm").strip() == "s6-svscan"


def test_hard_reboot_runs_boot_scripts_again(harness):
    out = harness.ok("reboot", "devbox1", "--hard")
    assert "rebooted" in out
    assert harness.sh("devbox1", "cat ~/boot-marker") == "root s6-svscan\nroot s6-svscan\n"


def test_cron_host_runs_crontab_lines_after_reboot(harness):
    harness.sh("devbox2", "echo '* * * * * touch /tmp/cron-ran' | sudo tee /etc/crontab >/dev/null")
    time.sleep(2 * TICK + 0.5)
    # supercronic read /etc/crontab when it started: a line added later waits for its next start
    assert harness.ssh("devbox2", "test -e /tmp/cron-ran").returncode == 1
    harness.ok("reboot", "devbox2")
    booted = time.time()
    assert wait_for(lambda: harness.ssh("devbox2", "test -e /tmp/cron-ran").returncode == 0, 3 * TICK + 5)
    assert time.time() - booted <= 3 * TICK + 5
    assert harness.sh("devbox2", "stat -c %U /tmp/cron-ran").strip() == "root"
    assert "cron-ran" not in harness.sh("devbox1", "cat /etc/crontab")  # /etc/crontab is per host
    with open("/etc/crontab") as f:
        assert "cron-ran" not in f.read()


def test_supercronic_refuses_reboot_lines_like_the_real_one(harness):
    harness.sh("devbox2", "printf '@reboot touch /tmp/at-boot\\n* * * * * touch /tmp/cron-ran\\n' "
                          "| sudo tee /etc/crontab >/dev/null")
    harness.ok("reboot", "devbox2")
    time.sleep(3 * TICK + 1)
    # one bad line is fatal: supercronic exits and runs no job at all
    assert harness.sh("devbox2", "ls -A /tmp; cat /proc/[0-9]*/comm 2>/dev/null | grep -c supercronic; true") == "0\n"
    with open(os.path.join(harness.state, "hosts", "devbox2", "init.log")) as f:
        assert "bad crontab line: '@reboot touch /tmp/at-boot'" in f.read()
    harness.sh("devbox2", "sudo truncate -s 0 /etc/crontab")


def test_dumb_init_host_runs_nothing_at_boot(harness):
    before = {h: harness.init_pid(h) for h in ("devbox1", "devbox2")}
    out = harness.ok("up", "3", "--init", "devbox3=dumb-init")
    assert "devbox3 10.213.3.2 dumb-init: started" in out
    assert {h: harness.init_pid(h) for h in before} == before
    assert harness.sh("devbox3", "cat /proc/1/comm").strip() == "dumb-init"
    harness.sh("devbox3", "printf '#!/bin/sh\\ntouch /home/devbox/boot-marker\\n' | sudo tee /usr/start/10-m "
                          ">/dev/null && sudo chmod 755 /usr/start/10-m && "
                          "echo '* * * * * touch /tmp/cron-ran' | sudo tee /etc/crontab >/dev/null")
    harness.ok("reboot", "devbox3")
    time.sleep(2 * TICK + 0.5)
    assert harness.sh("devbox3", "ls -A /tmp; test -e ~/boot-marker; echo marker=$?") == "marker=1\n"
    comms = set(harness.sh("devbox3", "cat /proc/[0-9]*/comm 2>/dev/null").split())
    assert "dumb-init" in comms and comms <= {"dumb-init", "sshd", "bash", "cat"}


def test_exec_runs_inside_the_host(harness):
    r = harness.run("exec", "devbox2", "--", "sh", "-c", "cat /proc/1/comm; hostname -I; exit 7")
    assert (r.returncode, r.stdout.split()) == (7, ["dumb-init", "10.213.2.2"])
    assert harness.ok("exec", "devbox1", "--user", "devbox", "--", "sh", "-c", "id -un; pwd; ls ~/disk-file") \
        == "devbox\n/home/devbox\n/home/devbox/disk-file\n"
    assert harness.ok("exec", "devbox1", "--", "id", "-u") == "0\n"


def test_status_ip_and_inventory(harness, tmp_path):
    lines = harness.ok("status").splitlines()
    assert [line.split()[0] for line in lines] == ["devbox1", "devbox2", "devbox3"]
    assert lines[1].split() == ["devbox2", "10.213.2.2", "pid=%d" % harness.init_pid("devbox2"), "cron", "sshd=up"]
    assert harness.ok("ip", "devbox2") == "10.213.2.2\n"

    inv = yaml.safe_load(harness.ok("inventory"))
    hosts = inv["all"]["children"]["devboxes"]["hosts"]
    assert sorted(hosts) == ["devbox1", "devbox2", "devbox3"]
    assert hosts["devbox2"] == {
        "ansible_host": "10.213.2.2", "ansible_port": 22, "ansible_user": "devbox",
        "ansible_ssh_private_key_file": os.path.join(harness.state, "id_ed25519"),
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "harness_init": "cron"}
    ini = harness.ok("inventory", "--format", "ini")
    assert "[devboxes]\n" in ini and "devbox3 ansible_host=10.213.3.2 " in ini and " harness_init=dumb-init\n" in ini

    # Ansible itself reaches every host through the written inventory (both formats)
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    for fmt in ("yaml", "ini"):
        path = str(tmp_path / ("inventory." + fmt))
        assert harness.ok("inventory", "--format", fmt, "--write", path) == "inventory: %s\n" % path
        r = subprocess.run([ansible, "-i", path, "devboxes", "-o", "-b", "-m", "ansible.builtin.command",
                            "-a", "hostname"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=120, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        for host in ("devbox1", "devbox2", "devbox3"):
            assert "%s | CHANGED | rc=0 | (stdout) %s" % (host, host) in r.stdout


def test_bad_input_is_refused_and_changes_nothing(harness):
    before = {h: harness.init_pid(h) for h in ("devbox1", "devbox2", "devbox3")}
    cases = [(("up", "2", "--init", "devbox2=bogus"), "--init 'devbox2=bogus': unknown flavour 'bogus'"),
             (("up", "2", "--init", "devbox5=cron"), "host 'devbox5' is not one of devbox1..devbox2"),
             (("up", "0"), "N=0"),
             (("reboot", "devbox9"), "HOST 'devbox9' is not a harness host"),
             (("exec", "devbox1"), "no command given"),
             (("ip", "nohost"), "HOST 'nohost'")]
    for args, message in cases:
        r = harness.run(*args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
    r = harness.run("up", "1", env=dict(harness.env, DEVBOX_HARNESS_DIR="/tmp/harness-state-in-tmp"))
    assert r.returncode == 1 and "DEVBOX_HARNESS_DIR='/tmp/harness-state-in-tmp' is under /tmp" in r.stderr
    assert not os.path.exists("/tmp/harness-state-in-tmp")
    assert {h: harness.init_pid(h) for h in before} == before and all(map(pid_alive, before.values()))


def test_another_state_cannot_take_or_remove_these_hosts(harness):
    other = tempfile.mkdtemp(prefix="devbox-harness-other-", dir="/var/tmp")
    env = dict(harness.env, DEVBOX_HARNESS_DIR=other)
    try:
        r = harness.run("up", "1", env=env)
        assert r.returncode == 1 and "netns dbx-devbox1 or link dbxh1 already exists but was not made" in r.stderr
        assert harness.run("down", "--purge", env=env).returncode == 0
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert "dbx-devbox1" in netns_names() and pid_alive(harness.init_pid("devbox1"))
    assert harness.ssh("devbox1", "true").returncode == 0


def test_down_removes_what_it_made_and_only_that(harness):
    pids = [harness.init_pid(h) for h in ("devbox1", "devbox2", "devbox3")]
    foreign = "dbxtest-keep-%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        out = harness.ok("down")
        assert out.splitlines()[:3] == ["devbox%d: stopped and removed" % i for i in (1, 2, 3)]
        names = netns_names()
        assert foreign in names
        assert not [n for n in names if n in ("dbx-devbox1", "dbx-devbox2", "dbx-devbox3")]
        links = subprocess.run(["ip", "-o", "link"], stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
        # its own links are gone (other test modules' hosts may run at the same time: dbxh11, dbxh41...)
        assert not [w for w in links.split() if w.split("@")[0].rstrip(":") in ("dbxh1", "dbxh2", "dbxh3")]
        assert not any(map(pid_alive, pids))
        assert not os.path.exists(os.path.join(harness.state, "hosts"))
        assert os.path.exists(os.path.join(harness.state, "id_ed25519"))  # the key pair is kept
        # safe to run twice: nothing left to stop (other test files' hosts, if any run now, are only noted)
        again = harness.ok("down").splitlines()
        assert [line for line in again if not (line.startswith("note: netns ") and line.endswith(" left alone"))] == []
        assert harness.ok("status") == "no hosts (state %s)\n" % harness.state
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=True)
