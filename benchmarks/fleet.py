# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet benchmark: wall time of a no-op deploy.yml (the same version again) on 1, 10 and 20 devboxes.

Run as root from the repository: `.venv/bin/python benchmarks/fleet.py`. It makes 20 simulated devboxes
(tests/harness, hosts devbox131..devbox150, state /var/tmp/devbox-ops-bench-fleet), deploys the example Node
app (cluster mode, one worker, reload strategy) to all of them once (not timed), then times
`deploy.yml -e app=node-app` again - nothing to do, every host already serves that release - on the first
1, 10 and 20 hosts with `--forks` equal to the number of hosts:

  ours    pipelining on and SSH ControlPersist (ControlMaster=auto, ControlPersist=60s): one ssh
          connection per host for the whole run, and modules fed to python on stdin
  naive   pipelining off and no ControlMaster: a new ssh connection, and an sftp upload, per task

  floor   the same number of task results per host as our no-op deploy, but every task a set_fact: no
          module, no SSH, nothing on the hosts. This is what Ansible itself costs per task and host on this
          machine, the lowest any playbook of that length can reach; its ratio shows how far the target is
          a property of the machine rather than of the deploy

Each figure is the best of --rounds runs (default 2), in alternating order. It prints the times, the
ratio to one host, and the CPU the whole machine spent (controller and simulated devboxes share its
cores); the target is 20 hosts <= 3x one host with ours. The hosts are taken down at the end.
It exits 1 when a deploy fails or the target is missed.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(REPO, "tests", "harness", "harness")
PLAYBOOK = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
EXAMPLE = os.path.join(REPO, "examples", "node-app")
SSH_BASE = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
MODES = {
    "ours": {"ANSIBLE_PIPELINING": "True",
             "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s " + SSH_BASE},
    "naive": {"ANSIBLE_PIPELINING": "False", "ANSIBLE_SSH_ARGS": "-o ControlMaster=no " + SSH_BASE},
}
TARGET = 3.0


def harness(state, *argv):
    env = dict(os.environ, DEVBOX_HARNESS_DIR=state)
    proc = subprocess.run([HARNESS] + list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError("harness %s failed:\n%s" % (" ".join(argv), proc.stdout))
    return proc.stdout


def write_inventory(state, workdir):
    """The harness inventory plus group_vars with the example app (its source copied to workdir)."""
    src = os.path.join(workdir, "node-app")
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("node_modules"))
    os.makedirs(os.path.join(workdir, "group_vars"))
    shutil.copy(os.path.join(state, "inventory.yml"), os.path.join(workdir, "hosts.yml"))
    with open(os.path.join(workdir, "group_vars", "devboxes.yml"), "w") as f:
        f.write("""devbox_probe_defaults: {timeout: 2, period: 0.5, failure_threshold: 40}
devbox_apps:
  - name: node-app
    port: 3000
    script: server.js
    interpreter: node
    exec_mode: cluster
    instances: 1
    wait_ready: true
    listen_timeout: 8000
    health: {path: /api/health}
    readiness: {path: /api/ready}
    deploy: {source: %s, slo: {samples: 20, concurrency: 4}}
""" % src)
    return os.path.join(workdir, "hosts.yml")


def busy_seconds():
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
    return (sum(fields[:8]) - fields[3] - fields[4]) / float(os.sysconf("SC_CLK_TCK"))


def floor_playbook(workdir, tasks):
    """A play of ``tasks`` set_fact tasks on the hosts given with -l: Ansible's own cost per task and host."""
    path = os.path.join(workdir, "floor.yml")
    with open(path, "w") as f:
        f.write("- name: Floor\n  hosts: all\n  gather_facts: false\n  tasks:\n")
        for i in range(tasks):
            f.write("    - name: Task %d\n      ansible.builtin.set_fact:\n        floor_%d: \"{{ inventory_hostname }}\"\n"
                    % (i, i))
    return path


def floor(inventory, playbook, hosts):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS=str(len(hosts)), **MODES["ours"])
    argv = [PLAYBOOK, "-i", inventory, playbook, "-l", ":".join(hosts)]
    busy, started = busy_seconds(), time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=1800, check=False)
    elapsed, cpu = time.monotonic() - started, busy_seconds() - busy
    if proc.returncode != 0:
        raise RuntimeError("floor play on %d host(s) failed (rc %d):\n%s" % (len(hosts), proc.returncode, proc.stdout[-4000:]))
    return elapsed, cpu


def deploy(inventory, hosts, forks, mode):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORKS=str(forks), **MODES[mode])
    argv = [PLAYBOOK, "-i", inventory, os.path.join(REPO, "playbooks", "deploy.yml"), "-e", "app=node-app",
            "-e", "devbox_target=%s" % ":".join(hosts)]
    busy, started = busy_seconds(), time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=1800, check=False)
    elapsed = time.monotonic() - started
    deploy.cpu = busy_seconds() - busy
    changed = [int(n) for n in re.findall(r"changed=(\d+)", proc.stdout)]
    if proc.returncode != 0 or len(changed) != len(hosts):
        raise RuntimeError("deploy on %d host(s) failed (rc %d):\n%s" % (len(hosts), proc.returncode, proc.stdout[-4000:]))
    # task results of the first host in the recap: what the controller spends per host
    recap = re.search(r"ok=(\d+)\s+changed=\d+\s+unreachable=\d+\s+failed=\d+\s+skipped=(\d+)", proc.stdout)
    deploy.results = (int(recap.group(1)), int(recap.group(2))) if recap else None
    return elapsed, sum(changed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--first", type=int, default=131, help="first harness host number (default 131)")
    parser.add_argument("--state", default="/var/tmp/devbox-ops-bench-fleet", help="harness state dir")
    parser.add_argument("--sizes", default="1,10,20", help="fleet sizes (default 1,10,20)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per figure, the best is kept (default 2)")
    parser.add_argument("--keep", action="store_true", help="leave the hosts up at the end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the harness makes namespaces")
    sizes = [int(s) for s in args.sizes.split(",")]
    names = ["devbox%d" % (args.first + i) for i in range(max(sizes))]
    workdir = tempfile.mkdtemp(prefix="devbox-ops-bench-fleet-")
    print("harness hosts %s..%s, state %s" % (names[0], names[-1], args.state))
    harness(args.state, "up", str(len(names)), "--first", str(args.first), "--init", "s6")
    failed = False
    try:
        inventory = write_inventory(args.state, workdir)
        started = time.monotonic()
        deploy(inventory, names, len(names), "ours")  # first deploy: not timed
        print("first deploy on %d hosts (not timed): %.1f s" % (len(names), time.monotonic() - started))
        best, cpu = {}, {}
        deploy(inventory, names[:1], 1, "ours")
        tasks = sum(deploy.results) if deploy.results else 30
        if deploy.results:
            print("no-op deploy, task results on one host: ok=%d skipped=%d" % deploy.results)
        playbook = floor_playbook(workdir, tasks)
        for round_no in range(args.rounds):
            for mode in (("ours", "naive", "floor") if round_no % 2 == 0 else ("floor", "naive", "ours")):
                for size in sizes:
                    if mode == "floor":
                        elapsed, used = floor(inventory, playbook, names[:size])
                    else:
                        elapsed, changed = deploy(inventory, names[:size], size, mode)
                        used = deploy.cpu
                        if changed:
                            raise RuntimeError("the no-op deploy changed %d task(s) on %d host(s)" % (changed, size))
                    key = (mode, size)
                    if elapsed < best.get(key, float("inf")):
                        best[key], cpu[key] = elapsed, used
                    print("  round %d %-5s %2d host(s): %.1f s, machine CPU %.1f s" % (round_no + 1, mode, size, elapsed, used))
        print()
        print("no-op deploy.yml (best of %d), forks = hosts; floor: %d set_fact tasks, nothing on the hosts"
              % (args.rounds, tasks))
        modes = ("ours", "naive", "floor")
        titles = ("ours: pipelining+ControlPersist", "naive: neither", "floor")
        print("%-6s  %s" % ("hosts", "  ".join("%-36s" % t for t in titles)))
        for size in sizes:
            cells = []
            for m in modes:
                ratio = best[(m, size)] / best[(m, sizes[0])]
                cells.append("%6.1f s  x%.2f of 1 host  CPU %5.1f s" % (best[(m, size)], ratio, cpu[(m, size)]))
            print("%-6d  %s" % (size, "  ".join("%-36s" % c for c in cells)))
        for size in sizes:
            print("%d host(s): ours is %.2fx faster than naive; machine CPU per host: ours %.2f s, floor %.2f s"
                  % (size, best[("naive", size)] / best[("ours", size)], cpu[("ours", size)] / size,
                     cpu[("floor", size)] / size))
        print("floor: %d hosts take %.2fx one host with no module and no SSH at all"
              % (sizes[-1], best[("floor", sizes[-1])] / best[("floor", sizes[0])]))
        ratio = best[("ours", sizes[-1])] / best[("ours", sizes[0])]
        failed = ratio > TARGET
        print("target: %d hosts <= %.0fx one host: %.2fx, %s" % (sizes[-1], TARGET, ratio, "MISSED" if failed else "met"))
    finally:
        if not args.keep:
            harness(args.state, "down")
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
