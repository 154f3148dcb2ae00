# SPDX-License-Identifier: GPL-3.0-or-later
"""The watchdog's own footprint: RSS and CPU while it watches two apps at a 5 s period.

Starts a private PM2 daemon (temporary PM2_HOME) with two Node HTTP apps, runs
files/watchdog/devbox-ops-watchdog (the real entry point, by default under the host's /usr/bin/python3)
for ``--seconds`` (default 300) with an HTTP liveness probe per app, a memory limit and a disk check, and
reads /proc/<pid>/stat and /proc/<pid>/status once a second. CPU counts the watchdog's own time plus the
time of the children it waited for (its ``pm2 jlist`` / ``pm2`` calls: cutime + cstime), over the whole
run including start-up. Exits 1 when a target (RSS <= 40 MB, average CPU <= 1%) is missed.

    .venv/bin/python benchmarks/watchdog_footprint.py [--seconds 300] [--period 5] [--python /usr/bin/python3]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = os.path.join(REPO, "files", "watchdog", "devbox-ops-watchdog")
PM2 = shutil.which("pm2") or "/usr/bin/pm2"
TICKS = os.sysconf("SC_CLK_TCK")
APP_JS = ("require('http').createServer((q, r) => r.end('ok')).listen(Number(process.env.PORT), '127.0.0.1');\n")
TARGET_RSS_MB = 40.0
TARGET_CPU = 1.0


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pm2(home, *args, **kwargs):
    env = dict(os.environ, PM2_HOME=home, **kwargs.pop("env", {}))
    return subprocess.run([PM2] + list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120, check=True)


def cpu_seconds(pid):
    """(own, waited children) CPU seconds from /proc/<pid>/stat (fields 14-17)."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / float(TICKS), (cutime + cstime) / float(TICKS)


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--period", type=float, default=5)
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter that runs the watchdog")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="devbox-ops-footprint-")
    home = os.path.join(work, "pm2")
    proc = None
    try:
        apps = []
        for name in ("api", "web"):
            port = free_port()
            script = os.path.join(work, name + ".js")
            with open(script, "w") as handle:
                handle.write(APP_JS)
            pm2(home, "start", script, "--name", name, env={"PORT": str(port)})
            apps.append({"name": name, "grace_s": 10, "max_memory": "300M",
                         "liveness": {"url": "http://127.0.0.1:%d/" % port, "timeout": 2, "failure_threshold": 3}})
        config = os.path.join(work, "watchdog", "watchdog.json")
        os.makedirs(os.path.dirname(config))
        with open(config, "w") as handle:
            json.dump({"period": args.period, "pm2": {"home": home, "executable": PM2},
                       "disk": {"paths": [work]}, "apps": apps}, handle)

        started = time.monotonic()
        proc = subprocess.Popen([args.python, ENTRY, "--config", config], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, universal_newlines=True)
        rss = []
        while time.monotonic() - started < args.seconds and proc.poll() is None:
            rss.append(rss_mb(proc.pid))
            own, children = cpu_seconds(proc.pid)
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        own, children = cpu_seconds(proc.pid)
        with open(os.path.join(work, "watchdog", "state.json")) as handle:
            state = json.load(handle)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        subprocess.run([PM2, "kill"], env=dict(os.environ, PM2_HOME=home), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=False)
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode not in (None, 0, -15):
        sys.exit("the watchdog exited with %s: %s" % (proc.returncode, proc.stderr.read()[-2000:]))

    cpu_own = own * 100.0 / elapsed
    cpu_all = (own + children) * 100.0 / elapsed
    rss_max, rss_avg = max(rss), sum(rss) / len(rss)
    probes_ok = all((a.get("liveness") or {}).get("ok") for a in state["apps"].values())
    print("watchdog footprint: %s, %.0f s at period %gs, 2 apps (http liveness, memory limit, disk check)"
          % (args.python, elapsed, args.period))
    print("  ticks %d, pm2 jlist reads %d, probes passing: %s, errors: %d"
          % (state["tick"], state["pm2"]["list_reads"], probes_ok, len(state["errors"])))
    print("  %-34s %8s   %s" % ("figure", "value", "target"))
    print("  %-34s %6.1f MB   <= %g MB" % ("RSS max", rss_max, TARGET_RSS_MB))
    print("  %-34s %6.1f MB" % ("RSS average", rss_avg))
    print("  %-34s %7.2f %%" % ("CPU average, watchdog process", cpu_own))
    print("  %-34s %7.2f %%   <= %g %%" % ("CPU average, with its pm2 calls", cpu_all, TARGET_CPU))
    missed = [name for name, ok in (("RSS", rss_max <= TARGET_RSS_MB), ("CPU", cpu_all <= TARGET_CPU),
                                    ("probes", probes_ok)) if not ok]
    print("result: %s" % ("all targets met" if not missed else "MISSED: " + ", ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
