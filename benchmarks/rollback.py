# SPDX-License-Identifier: GPL-3.0-or-later
"""Rollback benchmark: rollback.yml wall time against a no-op deploy.yml, and how soon the old version serves.

Run as root from the repository: `.venv/bin/python benchmarks/rollback.py`. It makes its own simulated
devbox (tests/harness, host devbox71 in its own state dir), deploys the Node example app (cluster x2,
wait_ready, strategy reload) as v1 then v2 with playbooks/deploy.yml, and then, --rounds times (3):

  no-op deploy   deploy.yml of v2 again while v2 serves (same source, same version): must report changed=0
  rollback       rollback.yml -e to=previous: v1 serves again, health-checked
  (setup)        deploy.yml of v2, not timed, so that the next round starts from the same state

It prints every wall time, the medians and their ratio (target <= 1.5x), and for each rollback the time
from the switch (the moment `current` on the host's disk points at v1, watched from the machine every
5 ms) until the first answer of v1, and until the last answer of v2 (target for the first: <= 2 s). A
poller sends GET /api/health every 20 ms on a fresh connection from the machine. The host is torn down
at the end; the script exits 1 when a target is missed or a run does not do what it should.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time

from zero_downtime import HARNESS, PLAYBOOK, REPO, example_source, run

APP, PORT = "bench-rollback", 3005
APP_ENTRY = {"name": APP, "port": PORT, "script": "server.js", "interpreter": "node", "exec_mode": "cluster",
             "instances": 2, "wait_ready": True, "listen_timeout": 8000, "kill_timeout": 5000,
             "health": {"path": "/api/health"}, "readiness": {"path": "/api/ready", "period": 0.5,
                                                              "failure_threshold": 20},
             "deploy": {"strategy": "reload"}}
TARGET_RATIO, TARGET_SERVED_S = 1.5, 2.0
RECAP = r"^%s\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"


class Watch:
    """From the machine: the moment `current` changes to ``target`` (5 ms) and the versions served (20 ms)."""

    def __init__(self, current_link, target, address):
        self.link, self.target, self.address = current_link, target, address
        self.switched, self.answers = None, []  # answers: (monotonic time, version or None)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.watch_link, daemon=True),
                        threading.Thread(target=self.poll, daemon=True)]

    def watch_link(self):
        while not self.stop.is_set() and self.switched is None:
            try:
                if os.path.basename(os.readlink(self.link)) == self.target:
                    self.switched = time.monotonic()
            except OSError:
                pass
            time.sleep(0.005)

    def poll(self):
        while not self.stop.is_set():
            started, version = time.monotonic(), None
            conn = http.client.HTTPConnection(self.address, PORT, timeout=1)
            try:
                conn.request("GET", "/api/health")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200:
                    version = json.loads(body.decode("utf-8")).get("version")
            except (OSError, http.client.HTTPException, ValueError):
                pass
            finally:
                conn.close()
            self.answers.append((time.monotonic(), version))
            time.sleep(max(0.0, 0.02 - (time.monotonic() - started)))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def figures(self, old, new):
        """(seconds from the switch to the first answer of ``old``, to the last answer of ``new``, failed polls)."""
        if self.switched is None:
            return None, None, None
        after = [(t, v) for t, v in self.answers if t >= self.switched]
        first_old = next((t for t, v in after if v == old), None)
        last_new = max((t for t, v in after if v == new), default=self.switched)
        failed = len([v for _t, v in self.answers if v is None])
        return (None if first_old is None else first_old - self.switched), last_new - self.switched, failed


class Bench:
    def __init__(self, args):
        self.args = args
        self.host, self.ip = "devbox%d" % args.first, "10.213.%d.2" % args.first
        self.work = tempfile.mkdtemp(prefix="devbox-ops-rollback-")
        self.apps_file = os.path.join(self.work, "apps.json")
        self.app_dir = os.path.join(args.state_dir, "hosts", self.host, "home", "apps", APP)
        with open(self.apps_file, "w") as handle:
            json.dump({"devbox_apps": [APP_ENTRY]}, handle)

    def harness(self, *argv):
        proc = run([HARNESS] + list(argv), env=dict(os.environ, DEVBOX_HARNESS_DIR=self.args.state_dir), timeout=300)
        if proc.returncode != 0:
            raise RuntimeError("harness %s failed:\n%s" % (" ".join(argv), proc.stdout))

    def playbook(self, name, *extra):
        """Run playbooks/NAME; return (wall seconds, changed count)."""
        argv = [PLAYBOOK, "-i", os.path.join(self.args.state_dir, "inventory.yml"), os.path.join(REPO, "playbooks", name),
                "-e", "@" + self.apps_file, "-e", "devbox_target=" + self.host, "-e", "app=" + APP] + list(extra)
        started = time.monotonic()
        proc = run(argv, env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"))
        took = time.monotonic() - started
        match = re.search(RECAP % self.host, proc.stdout, re.M)
        if proc.returncode != 0 or not match:
            raise RuntimeError("%s %s failed:\n%s" % (name, " ".join(extra), "\n".join(proc.stdout.splitlines()[-25:])))
        return took, int(match.group(2))

    def deploy(self, version):
        return self.playbook("deploy.yml", "-e", "source=" + example_source(self.work, "node-app", version),
                             "-e", "version=" + version)

    def current(self):
        return os.path.basename(os.readlink(os.path.join(self.app_dir, "current")))

    def serves(self, version):
        conn = http.client.HTTPConnection(self.ip, PORT, timeout=3)
        try:
            conn.request("GET", "/api/health")
            return json.loads(conn.getresponse().read().decode("utf-8")).get("version") == version
        finally:
            conn.close()

    def measure(self):
        self.deploy("1.0.0")
        v1 = self.current()
        self.deploy("2.0.0")
        v2 = self.current()
        noops, rollbacks, switches, problems = [], [], [], []
        for round_no in range(1, self.args.rounds + 1):
            took, changed = self.deploy("2.0.0")
            noops.append(took)
            if changed:
                problems.append("round %d: the no-op deploy reported changed=%d" % (round_no, changed))
            with Watch(os.path.join(self.app_dir, "current"), v1, self.ip) as watch:
                took, changed = self.playbook("rollback.yml", "-e", "to=previous")
                time.sleep(1)
            rollbacks.append(took)
            first_old, last_new, failed = watch.figures("1.0.0", "2.0.0")
            switches.append((first_old, last_new, failed))
            if self.current() != v1 or not self.serves("1.0.0"):
                problems.append("round %d: after rollback.yml, current is %s and v1 does not serve"
                                % (round_no, self.current()))
            if first_old is None or first_old > TARGET_SERVED_S:
                problems.append("round %d: v1 served %s s after the switch (target <= %s s)" % (
                    round_no, "never" if first_old is None else "%.2f" % first_old, TARGET_SERVED_S))
            if failed:
                problems.append("round %d: %d polls failed during the rollback" % (round_no, failed))
            print("  round %d: no-op deploy %.1f s, rollback %.1f s, v1 first served %s s after the switch, "
                  "v2 last served %s s after it, %d failed polls" % (
                      round_no, noops[-1], took, "-" if first_old is None else "%.2f" % first_old,
                      "-" if last_new is None else "%.2f" % last_new, failed or 0), flush=True)
            self.deploy("2.0.0")  # back to v2 for the next round (not timed)
            if self.current() != v2:
                problems.append("round %d: deploying v2 again made %s current, not %s" % (round_no, self.current(), v2))
        return noops, rollbacks, switches, problems

    def main(self):
        print("rollback benchmark: rollback.yml -e to=previous vs a no-op deploy.yml, app %s (Node, cluster x2, "
              "reload) on harness host %s (%s), state %s" % (APP, self.host, self.ip, self.args.state_dir), flush=True)
        self.harness("up", "1", "--first", str(self.args.first), "--init", "s6")
        try:
            noops, rollbacks, switches, problems = self.measure()
        finally:
            if not self.args.keep:
                self.harness("down")
            shutil.rmtree(self.work, ignore_errors=True)
        ratio = statistics.median(rollbacks) / statistics.median(noops)
        served = [s[0] for s in switches if s[0] is not None]
        rows = [("run", "each (s)", "median (s)"),
                ("no-op deploy.yml (changed=0)", " ".join("%.1f" % t for t in noops), "%.1f" % statistics.median(noops)),
                ("rollback.yml to=previous", " ".join("%.1f" % t for t in rollbacks), "%.1f" % statistics.median(rollbacks)),
                ("switch -> first v1 answer", " ".join("-" if s[0] is None else "%.2f" % s[0] for s in switches),
                 "%.2f" % statistics.median(served) if served else "-"),
                ("switch -> last v2 answer", " ".join("-" if s[1] is None else "%.2f" % s[1] for s in switches),
                 "%.2f" % statistics.median([s[1] for s in switches if s[1] is not None] or [0]))]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        print()
        for i, row in enumerate(rows):
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
        print()
        if ratio > TARGET_RATIO:
            problems.append("rollback/no-op ratio %.2fx (target <= %sx)" % (ratio, TARGET_RATIO))
        print("rollback / no-op deploy: %.2fx (target <= %sx); switch -> first v1 answer: worst %s s (target <= %s s): %s"
              % (ratio, TARGET_RATIO, "%.2f" % max(served) if served else "-", TARGET_SERVED_S,
                 "met" if not problems else "MISSED"))
        for problem in problems:
            print("  - " + problem)
        return 1 if problems else 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--first", type=int, default=71, help="harness host number (default 71: devbox71)")
    parser.add_argument("--state-dir", default="/var/tmp/devbox-ops-bench-rollback", help="harness state dir")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each playbook (default 3)")
    parser.add_argument("--keep", action="store_true", help="leave the harness host up at the end")
    return parser.parse_args(argv)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: the harness makes namespaces")
    sys.exit(Bench(parse_args(sys.argv[1:])).main())
