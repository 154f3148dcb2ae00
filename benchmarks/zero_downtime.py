# SPDX-License-Identifier: GPL-3.0-or-later
"""Zero-downtime benchmark: failed requests while deploy.yml switches an app from v1 to v2 under load.

Run as root from the repository: `.venv/bin/python benchmarks/zero_downtime.py`. It makes its own
simulated devbox (tests/harness, host devbox61 in its own state dir), deploys four apps with
playbooks/deploy.yml, and tears the host down at the end:

  restart   (Node, fork)      the naive way: pm2 restart, the app is down until the new process listens
  reload    (Node, cluster)   pm2 reload with wait_ready, workers replaced one by one
  bluegreen (Node, fork)      two colours behind nginx, switched by a file nginx tests on each request
  bluegreen (gunicorn)        the same for the Python example app

For each app, v1 is deployed without load; then wrk (Debian's, keep-alive, 20 connections) runs from the
root namespace against the app's public port while deploy.yml deploys v2, and stops one second after
the deploy ends. A last row shows why the blue-green switch does not reload nginx: the same load while
`nginx -s reload` runs twice, with no deploy at all (a graceful reload closes kept-alive client
connections that have a request on the way). A small Lua script tallies the `version` field of the JSON answers of /api/health.
Failed requests = wrk socket errors (connect, read, write, timeout) + non-2xx answers. The script exits
1 when reload or bluegreen lose a request, when a deploy fails, or when a window has < 5,000 requests.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(REPO, "tests", "harness", "harness")
PLAYBOOK = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
EXAMPLES = os.path.join(REPO, "examples")
MIN_REQUESTS = 5000

# wrk script: tally the answers by the `version` of their JSON body (non-2xx by status), print one
# line per version and one summary line from done().
WRK_LUA = r"""
counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  local key
  if status >= 200 and status < 300 then
    key = string.match(body or "", '"version"%s*:%s*"([^"]+)"') or "unknown"
  else
    key = "HTTP " .. status
  end
  counts[key] = (counts[key] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for k, n in pairs(t:get("counts")) do io.write(string.format("VERSION\t%s\t%d\n", k, n)) end
  end
  local e = summary.errors
  io.write(string.format("SUMMARY\t%d\t%d\t%d\t%d\t%d\t%d\n", summary.requests, e.connect, e.read, e.write,
                         e.timeout, e.status))
end
"""

NODE = {"script": "server.js", "interpreter": "node", "health": {"path": "/api/health"},
        "readiness": {"path": "/api/ready", "period": 0.5, "failure_threshold": 20}}
CASES = [
    # (label, app, strategy, example, devbox_apps entry without name/deploy)
    ("restart (Node, fork)", "bench-restart", "restart", "node-app",
     dict(NODE, port=3001, exec_mode="fork")),
    ("reload (Node, cluster x2)", "bench-reload", "reload", "node-app",
     dict(NODE, port=3002, exec_mode="cluster", instances=2, wait_ready=True, listen_timeout=8000, kill_timeout=5000)),
    ("bluegreen (Node, fork)", "bench-bg-node", "bluegreen", "node-app",
     dict(NODE, port=3003, exec_mode="fork")),
    ("bluegreen (gunicorn)", "bench-bg-py", "bluegreen", "python-app",
     dict(NODE, port=8003, exec_mode="fork", script="gunicorn", interpreter="none", kill_timeout=12000,
          args=["-c", "gunicorn.conf.py", "app:application"], env={"WEB_CONCURRENCY": "2"})),
]
TARGET_ZERO = ("reload", "bluegreen")
NGINX_DIR = "/home/devbox/.devbox-ops/nginx"


def run(argv, env=None, timeout=900):
    return subprocess.run(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout, check=False)


def example_source(work, example, version):
    """A copy of examples/EXAMPLE under ``work`` that answers ``version`` (package.json for Node, app.py for
    Python); made once per (example, version)."""
    path = os.path.join(work, "%s-%s" % (example, version))
    if os.path.isdir(path):
        return path
    shutil.copytree(os.path.join(EXAMPLES, example), path, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if example == "node-app":
        meta_path = os.path.join(path, "package.json")
        with open(meta_path) as handle:
            meta = json.load(handle)
        meta["version"] = version
        with open(meta_path, "w") as handle:
            json.dump(meta, handle, indent=2)
    else:
        app_path = os.path.join(path, "app.py")
        with open(app_path) as handle:
            code = handle.read()
        if 'DEFAULT_VERSION = "1.0.0"' not in code:
            raise RuntimeError("examples/python-app/app.py no longer sets DEFAULT_VERSION = \"1.0.0\"")
        with open(app_path, "w") as handle:
            handle.write(code.replace('DEFAULT_VERSION = "1.0.0"', 'DEFAULT_VERSION = "%s"' % version))
    return path


class Bench:
    def __init__(self, args):
        self.args = args
        self.state = args.state_dir
        self.host, self.ip = "devbox%d" % args.first, "10.213.%d.2" % args.first
        self.work = tempfile.mkdtemp(prefix="devbox-ops-zero-downtime-")
        self.apps_file = os.path.join(self.work, "apps.json")

    def harness(self, *argv):
        proc = run([HARNESS] + list(argv), env=dict(os.environ, DEVBOX_HARNESS_DIR=self.state), timeout=300)
        if proc.returncode != 0:
            raise RuntimeError("harness %s failed:\n%s" % (" ".join(argv), proc.stdout))
        return proc.stdout

    def source(self, example, version):
        return example_source(self.work, example, version)

    def write_apps(self):
        apps = []
        for _label, name, strategy, _app, entry in CASES:
            apps.append(dict(entry, name=name, deploy={"strategy": strategy}))
        with open(self.apps_file, "w") as handle:
            json.dump({"devbox_apps": apps}, handle, indent=2)

    def deploy(self, app, source):
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        proc = run([PLAYBOOK, "-i", os.path.join(self.state, "inventory.yml"), os.path.join(REPO, "playbooks", "deploy.yml"),
                    "-e", "@" + self.apps_file, "-e", "devbox_target=" + self.host, "-e", "app=" + app,
                    "-e", "source=" + source], env=env)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-25:])
            raise RuntimeError("deploy.yml app=%s source=%s failed:\n%s" % (app, source, tail))

    def load(self, port, action):
        """Run wrk against PORT while ``action()`` runs; return (wrk summary dict, seconds action took, error)."""
        lua = os.path.join(self.work, "versions.lua")
        with open(lua, "w") as handle:
            handle.write(WRK_LUA)
        argv = ["nice", "-n", "10", "wrk", "-t1", "-c%d" % self.args.connections, "-d600s", "--timeout", "5s",
                "-s", lua, "http://%s:%d/api/health" % (self.ip, port)]
        wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        error = None
        try:
            time.sleep(self.args.lead_in)
            started = time.monotonic()
            try:
                action()
            except RuntimeError as exc:
                error = str(exc)
            took = time.monotonic() - started
            time.sleep(self.args.lead_out)
        finally:
            if wrk.poll() is None:
                wrk.send_signal(signal.SIGINT)  # wrk stops, prints its summary and runs done()
            out = wrk.communicate(timeout=30)[0]
        versions, summary = {}, None
        for line in out.splitlines():
            fields = line.split("\t")
            if fields[0] == "VERSION":
                versions[fields[1]] = versions.get(fields[1], 0) + int(fields[2])
            elif fields[0] == "SUMMARY":
                summary = [int(f) for f in fields[1:]]
        if summary is None:
            raise RuntimeError("wrk printed no summary:\n%s" % out)
        requests, connect, read, write, timeout, status = summary
        return {"requests": requests, "socket_errors": connect + read + write + timeout, "connect": connect,
                "read": read, "write": write, "timeout": timeout, "non_2xx": status,
                "failed": connect + read + write + timeout + status, "versions": versions, "action_s": round(took, 1),
                "error": error}

    def measure(self, label, app, strategy, example, entry):
        self.deploy(app, self.source(example, "1.0.0"))
        result = self.load(entry["port"], lambda: self.deploy(app, self.source(example, "2.0.0")))
        return dict(result, case=label, strategy=strategy, check=True)

    def measure_nginx_reload(self, port):
        def reload_twice():
            for _round in range(2):
                self.harness("exec", self.host, "--user", "devbox", "--", "nginx", "-p", NGINX_DIR + "/",
                             "-e", NGINX_DIR + "/logs/error.log", "-c", NGINX_DIR + "/nginx.conf", "-s", "reload")
                time.sleep(2)
        result = self.load(port, reload_twice)
        return dict(result, case="nginx -s reload x2, no deploy", strategy="-", check=False)

    def main(self):
        self.write_apps()
        print("zero-downtime benchmark: deploy.yml v1 -> v2 under load (wrk -t1 -c%d keep-alive, GET /api/health)"
              % self.args.connections)
        print("harness host %s (%s), state %s" % (self.host, self.ip, self.state))
        self.harness("up", "1", "--first", str(self.args.first), "--init", "s6")
        results = []
        try:
            for case in CASES:
                if self.args.only and case[1] not in self.args.only:
                    continue
                print("... %s" % case[0], flush=True)
                results.append(self.measure(*case))
            bluegreen = [c for c in CASES if c[2] == "bluegreen" and (not self.args.only or c[1] in self.args.only)]
            if bluegreen:
                print("... nginx -s reload x2 under the same load (%s)" % bluegreen[0][1], flush=True)
                results.append(self.measure_nginx_reload(bluegreen[0][4]["port"]))
        finally:
            if not self.args.keep:
                self.harness("down")
            shutil.rmtree(self.work, ignore_errors=True)
        return self.report(results)

    @staticmethod
    def report(results):
        header = ("case", "failed", "socket errors (c/r/w/t)", "non-2xx", "requests", "versions served", "deploy s")
        rows = [header]
        for r in results:
            versions = ", ".join("%s: %d" % (v, n) for v, n in sorted(r["versions"].items()))
            rows.append((r["case"], str(r["failed"]),
                         "%d (%d/%d/%d/%d)" % (r["socket_errors"], r["connect"], r["read"], r["write"], r["timeout"]),
                         str(r["non_2xx"]), str(r["requests"]), versions, str(r["action_s"])))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        print()
        for i, row in enumerate(rows):
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
            if i == 0:
                print("  ".join("-" * w for w in widths))
        problems = []
        for r in results:
            if r["error"]:
                problems.append("%s: %s" % (r["case"], r["error"]))
            if r["requests"] < MIN_REQUESTS:
                problems.append("%s: only %d requests in the window (< %d)" % (r["case"], r["requests"], MIN_REQUESTS))
            if r["strategy"] in TARGET_ZERO and r["failed"]:
                problems.append("%s: %d failed requests (target 0)" % (r["case"], r["failed"]))
            if r["check"] and not r["error"] and "2.0.0" not in r["versions"]:
                problems.append("%s: v2 never answered" % r["case"])
        print()
        print("target: 0 failed requests for reload and bluegreen: %s" % ("met" if not problems else "MISSED"))
        for problem in problems:
            print("  - " + problem)
        return 1 if problems else 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--first", type=int, default=61, help="harness host number (default 61: devbox61)")
    parser.add_argument("--state-dir", default="/var/tmp/devbox-ops-bench-zero-downtime",
                        help="harness state dir of this benchmark")
    parser.add_argument("--connections", type=int, default=20, help="wrk keep-alive connections (>= 20)")
    parser.add_argument("--lead-in", type=float, default=2.0, help="seconds of load before the deploy starts")
    parser.add_argument("--lead-out", type=float, default=1.0, help="seconds of load after the deploy ends")
    parser.add_argument("--only", action="append", help="run only this app (repeatable): " +
                        ", ".join(c[1] for c in CASES))
    parser.add_argument("--keep", action="store_true", help="leave the harness host up at the end")
    args = parser.parse_args(argv)
    if args.connections < 20:
        parser.error("--connections must be >= 20")
    return args


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: the harness makes namespaces")
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk")
    sys.exit(Bench(parse_args(sys.argv[1:])).main())
