# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""`make demo`, deploy part: ship the Node example as `node-web` with playbooks/deploy.yml, v1 then v2,
while a request loop runs against the app, and print how many requests failed and the versions served.

    .venv/bin/python examples/demo_deploy.py [-i examples/inventory/demo.yml] [--app node-web] [--port 3001]

The versions come from package.json: v1 is examples/node-app as it is (deploy.source in
examples/inventory/group_vars/devboxes.yml), v2 a temporary copy whose package.json says --v2-version
(2.0.0); each deploy gets `-e version=` the same value, so the release manifest and the app agree. The
request loop is --clients kept-alive HTTP/1.1 connections (http.client) sending GET /api/health back to
back; an answer with `Connection: close` makes that client reconnect, anything else that is not a 200
counts as failed, with no retry. Exits 1 when a deploy fails, a request fails or v2 is never served.
Standard library only.
"""
import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "node-app")


def package_version(path):
    with open(os.path.join(path, "package.json")) as handle:
        return json.load(handle)["version"]


def v2_source(version):
    """A copy of examples/node-app whose package.json version is ``version`` (the only change)."""
    path = os.path.join(tempfile.mkdtemp(prefix="devbox-ops-demo-"), "node-app")
    shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns("node_modules"))
    with open(os.path.join(path, "package.json")) as handle:
        meta = json.load(handle)
    meta["version"] = version
    with open(os.path.join(path, "package.json"), "w") as handle:
        json.dump(meta, handle, indent=2)
        handle.write("\n")
    return path


def tool(name):
    beside = os.path.join(os.path.dirname(sys.executable), name)  # the venv's, when run with .venv/bin/python
    return beside if os.path.exists(beside) else (shutil.which(name) or name)


def host_address(inventory, host):
    out = subprocess.run([tool("ansible-inventory"), "-i", inventory, "--host", host], cwd=REPO, check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    return json.loads(out).get("ansible_host", host)


class Clients:
    """``count`` kept-alive clients in threads; counts answers per version and failures."""

    def __init__(self, address, port, count):
        self.address, self.port = address, port
        self.versions, self.failures, self.reconnects = {}, [], 0
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _unused in range(count)]

    def loop(self):
        conn = http.client.HTTPConnection(self.address, self.port, timeout=5)
        while not self.stop.is_set():
            try:
                conn.request("GET", "/api/health")
                resp = conn.getresponse()
                body = resp.read()
                result = json.loads(body.decode("utf-8")).get("version") if resp.status == 200 else None
                error = None if result else "HTTP %d" % resp.status
                if resp.will_close:  # `Connection: close` from a worker that is shutting down
                    conn.close()
                    with self.lock:
                        self.reconnects += 1
            except (OSError, http.client.HTTPException, ValueError) as exc:
                result, error = None, "%s: %s" % (type(exc).__name__, exc)
                conn.close()
            with self.lock:
                if error:
                    self.failures.append(error)
                else:
                    self.versions[result] = self.versions.get(result, 0) + 1
            time.sleep(0.005)
        conn.close()

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    @property
    def total(self):
        return sum(self.versions.values()) + len(self.failures)


def wait_version(address, port, version, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(address, port, timeout=3)
            conn.request("GET", "/api/health")
            resp = conn.getresponse()
            if resp.status == 200 and json.loads(resp.read().decode("utf-8")).get("version") == version:
                return True
        except (OSError, http.client.HTTPException, ValueError):
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    return False


def deploy(args, version, source=None):
    argv = [tool("ansible-playbook"), "-i", args.inventory, "playbooks/deploy.yml", "-e", "devbox_target=" + args.host,
            "-e", "app=" + args.app, "-e", "version=" + version]
    if source:
        argv += ["-e", "source=" + source]
    print("\n$ " + " ".join(argv), flush=True)
    env = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", os.path.join(REPO, "ansible.cfg"))
    return subprocess.run(argv, cwd=REPO, env=env, check=False).returncode == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("-i", "--inventory", default="examples/inventory/demo.yml")
    parser.add_argument("--host", default="devbox1", help="inventory host to deploy to (default devbox1)")
    parser.add_argument("--app", default="node-web", help="app of devbox_apps to deploy (default node-web)")
    parser.add_argument("--port", type=int, default=3001, help="the app's public port (default 3001)")
    parser.add_argument("--v2-version", default="2.0.0", help="package.json version of the second deploy")
    parser.add_argument("--clients", type=int, default=4, help="kept-alive clients of the request loop")
    args = parser.parse_args(argv)

    v1 = package_version(EXAMPLE)
    if args.v2_version == v1:
        parser.error("--v2-version must differ from examples/node-app/package.json's %s" % v1)
    address = host_address(args.inventory, args.host)
    print("== deploy %s v1: examples/node-app, package.json version %s" % (args.app, v1))
    if not deploy(args, v1) or not wait_version(address, args.port, v1):
        print("FAILED: %s v1 (%s) does not serve on %s:%d" % (args.app, v1, address, args.port))
        return 1

    source = v2_source(args.v2_version)
    try:
        print("\n== deploy %s v2: %s (a copy of examples/node-app, package.json version %s) while %d clients"
              " send GET http://%s:%d/api/health" % (args.app, source, args.v2_version, args.clients, address,
                                                     args.port))
        started = time.monotonic()
        with Clients(address, args.port, args.clients) as clients:
            time.sleep(1)
            deployed = deploy(args, args.v2_version, source)
            served = deployed and wait_version(address, args.port, args.v2_version, timeout=10)
            time.sleep(1)
        took = time.monotonic() - started
    finally:
        shutil.rmtree(os.path.dirname(source), ignore_errors=True)

    versions = ", ".join("%s: %d" % item for item in sorted(clients.versions.items()))
    print("\n== %s v%s -> v%s under load: %d requests in %.1f s, %d failed; versions served: %s;"
          " %d reconnects on `Connection: close`" % (
              args.app, v1, args.v2_version, clients.total, took, len(clients.failures), versions or "none",
              clients.reconnects))
    for failure in clients.failures[:5]:
        print("   failed: " + failure)
    if not deployed:
        print("FAILED: the deploy of v2 failed (see above)")
    elif not served:
        print("FAILED: v2 (%s) is not served" % args.v2_version)
    return 0 if deployed and served and not clients.failures else 1


if __name__ == "__main__":
    sys.exit(main())
