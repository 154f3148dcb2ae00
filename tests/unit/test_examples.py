# SPDX-License-Identifier: GPL-3.0-or-later
"""The example apps, run for real: node server.js and gunicorn on ephemeral ports, real sockets,
real signals, and once under a real PM2 (temporary PM2_HOME, killed at teardown)."""
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

import psutil
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples")
NODE_DIR = os.path.join(EXAMPLES, "node-app")
PY_DIR = os.path.join(EXAMPLES, "python-app")
NODE = shutil.which("node")
GUNICORN = shutil.which("gunicorn")
PM2 = shutil.which("pm2")
SECRET = "s3cr3t-%s" % uuid.uuid4().hex
KINDS = ["node", "python"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def listening_port():
    """A real listening socket: TCP connects succeed."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


@contextlib.contextmanager
def silent_port():
    """A listening socket whose accept queue is full, so a new connect hangs (SYNs are dropped)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []
    for dummy in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(srv.getsockname())
        fillers.append(c)
    time.sleep(0.2)
    with pytest.raises(socket.timeout):  # the fixture itself must be silent
        socket.create_connection(srv.getsockname(), timeout=0.3).close()
    try:
        yield srv.getsockname()[1]
    finally:
        for c in fillers:
            c.close()
        srv.close()


def refused_port():
    return free_port()  # nothing listens there once the probe socket is closed


class App:
    """One example app process on 127.0.0.1:<ephemeral port>; every response is kept in a transcript."""

    def __init__(self, kind, env, logdir):
        self.kind = kind
        self.port = free_port()
        popen = env.pop("_popen", {})
        full = {"PATH": os.environ["PATH"], "HOST": "127.0.0.1", "PORT": str(self.port)}
        full.update(env)
        if kind == "node":
            argv, cwd = [NODE, "server.js"], NODE_DIR
        else:
            argv, cwd = [GUNICORN, "-c", "gunicorn.conf.py", "app:application"], PY_DIR
        self.logpath = os.path.join(str(logdir), "%s-%d.log" % (kind, self.port))
        self.transcript = []
        with open(self.logpath, "w") as log:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=full, stdout=log, stderr=subprocess.STDOUT,
                                         **popen)
        self.wait_up()

    def wait_up(self, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "%s exited %s:\n%s" % (self.kind, self.proc.returncode, self.output())
            try:
                if self.get("/api/health", timeout=1)[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("%s did not answer /api/health in %ss:\n%s" % (self.kind, timeout, self.output()))

    def get(self, path, timeout=5, conn=None):
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read().decode("utf-8")
            headers = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            if own:
                conn.close()
        self.transcript.append("%s %s %s\n%s" % (path, resp.status, headers, body))
        return resp.status, headers, body

    def json(self, path):
        status, headers, body = self.get(path)
        assert headers["content-type"] == "application/json"
        return status, json.loads(body)

    def output(self):
        with open(self.logpath) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def start(tmp_path):
    """start(kind, **env) -> App. At teardown every app is stopped and the secret is checked to appear
    in no response (headers or body) and no log line."""
    apps = []

    def _start(kind, **env):
        app = App(kind, env, tmp_path)
        apps.append(app)
        return app

    yield _start
    for app in apps:
        app.stop()
    for app in apps:
        assert SECRET not in "\n".join(app.transcript), "secret leaked in a %s response" % app.kind
        assert SECRET not in app.output(), "secret leaked in the %s log" % app.kind


@pytest.mark.parametrize("kind", KINDS)
def test_health_root_and_404(start, kind):
    app = start(kind, APP_VERSION="9.8.7")
    status, body = app.json("/api/health")
    assert status == 200
    assert body["status"] == "ok" and body["version"] == "9.8.7"
    assert isinstance(body["pid"], int) and body["pid"] > 0
    assert isinstance(body["uptime_s"], (int, float)) and 0 <= body["uptime_s"] < 60
    status, headers, text = app.get("/")
    name = "node-app" if kind == "node" else "py-app"
    assert (status, text) == (200, "hello from %s 9.8.7\n" % name)
    assert headers["content-type"].startswith("text/plain")
    assert app.json("/nope")[0] == 404
    # no READY_REQUIRES and no MONGODB_URI: ready
    status, body = app.json("/api/ready")
    assert status == 200 and body["status"] == "ready"
    assert body["checks"] == {"env": "ok", "mongodb": "not_configured"}


def test_node_version_defaults_to_package_json(start):
    with open(os.path.join(NODE_DIR, "package.json")) as f:
        pkg = json.load(f)
    assert pkg["name"] == "node-app" and pkg["scripts"]["start"]
    app = start("node")
    assert app.json("/api/health")[1]["version"] == pkg["version"]


def _workers(pid, want, timeout=5):
    deadline = time.monotonic() + timeout
    while len(psutil.Process(pid).children()) != want and time.monotonic() < deadline:
        time.sleep(0.1)  # workers boot one after the other
    return len(psutil.Process(pid).children())


def test_gunicorn_workers_from_web_concurrency(start):
    app = start("python")  # WEB_CONCURRENCY unset: 2 workers
    assert _workers(app.proc.pid, 2) == 2
    app = start("python", WEB_CONCURRENCY="3")
    assert _workers(app.proc.pid, 3) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_ready_requires_env_names(start, kind):
    app = start(kind, READY_REQUIRES="API_KEY, OTHER ,", OTHER="x")
    status, body = app.json("/api/ready")
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["missing"] == ["API_KEY"]
    assert body["checks"]["env"] == "missing"

    app = start(kind, READY_REQUIRES="API_KEY,OTHER", OTHER="x", API_KEY="")  # empty counts as missing
    assert app.json("/api/ready")[1]["missing"] == ["API_KEY"]

    app = start(kind, READY_REQUIRES="API_KEY", API_KEY=SECRET)
    status, body = app.json("/api/ready")
    assert status == 200 and body["status"] == "ready"
    assert body["checks"]["env"] == "ok"


@pytest.mark.parametrize("kind", KINDS)
def test_ready_mongodb_tcp_check(start, kind):
    uri = "mongodb://admin:" + SECRET + "@127.0.0.1:%d/app?authSource=admin"
    app = start(kind, MONGODB_URI=uri % refused_port())
    status, body = app.json("/api/ready")
    assert status == 503 and body["missing"] == []
    assert body["checks"]["mongodb"].startswith("error:")

    with silent_port() as port:
        app = start(kind, MONGODB_URI=uri % port)
        t0 = time.monotonic()
        status, body = app.json("/api/ready")
        elapsed = time.monotonic() - t0
    assert status == 503 and body["checks"]["mongodb"] == "timeout"
    assert 0.9 <= elapsed < 2.5

    with listening_port() as port:
        app = start(kind, MONGODB_URI=uri % port, READY_REQUIRES="MONGODB_URI")
        status, body = app.json("/api/ready")
    assert status == 200
    assert body["checks"] == {"env": "ok", "mongodb": "ok"}

    app = start(kind, MONGODB_URI="postgres://" + SECRET)
    status, body = app.json("/api/ready")
    assert status == 503 and "MONGODB_URI" in body["checks"]["mongodb"]


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_drains_and_exits_zero_with_keepalive_client(start, kind):
    with silent_port() as port:
        app = start(kind, MONGODB_URI="mongodb://127.0.0.1:%d" % port, WEB_CONCURRENCY="2")
        idle = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
        status, first, dummy = app.get("/api/health", conn=idle)
        assert status == 200
        # node keeps the connection alive (now idle); gunicorn's sync workers close every connection
        assert first.get("connection") == ("keep-alive" if kind == "node" else "close")
        inflight = {}

        def slow_request():  # /api/ready waits ~1 s on the silent socket
            inflight["resp"] = app.get("/api/ready")

        t = threading.Thread(target=slow_request)
        t.start()
        time.sleep(0.4)
        t0 = time.monotonic()
        app.proc.send_signal(signal.SIGTERM)
        rc = app.proc.wait(3)
        elapsed = time.monotonic() - t0
        t.join(3)
    assert rc == 0 and elapsed < 3
    status, headers = inflight["resp"][:2]
    assert status == 503 and headers.get("connection") == "close"
    if kind == "node":
        idle.sock.settimeout(1)
        assert idle.sock.recv(1) == b""  # the idle keep-alive socket was closed by the server
    idle.close()


def test_node_faults_disabled_by_default(start):
    app = start("node")
    assert app.get("/api/_stall")[0] == 404
    assert app.get("/api/_crash")[0] == 404
    assert app.get("/api/health")[0] == 200


def test_node_fault_hooks(start):
    app = start("node", DEVBOX_EXAMPLE_FAULTS="1")
    assert app.get("/api/_stall")[0] == 200
    with pytest.raises(socket.timeout):
        app.get("/api/health", timeout=1)
    assert app.get("/")[0] == 200  # only health hangs
    assert app.get("/api/_crash")[0] == 200
    assert app.proc.wait(3) == 1


def test_node_ipc_ready_and_shutdown_message(start):
    """What PM2 does over its IPC channel: wait for 'ready' (wait_ready), then send 'shutdown'."""
    parent, child = socket.socketpair()
    env = {"NODE_CHANNEL_FD": str(child.fileno()), "_popen": {"pass_fds": (child.fileno(),)}}
    app = start("node", **env)
    child.close()
    parent.settimeout(5)
    buf = b""
    while b'"ready"\n' not in buf:
        chunk = parent.recv(4096)
        assert chunk, "IPC channel closed before 'ready'"
        buf += chunk
    t0 = time.monotonic()
    parent.sendall(b'"shutdown"\n')
    assert app.proc.wait(3) == 0 and time.monotonic() - t0 < 3
    assert "shutdown message" in app.output()
    parent.close()


# --- under a real PM2, launched the way group_vars/devboxes.yml describes the apps --------------------

@pytest.fixture(scope="module")
def pm2(tmp_path_factory):
    home = str(tmp_path_factory.mktemp("pm2home"))

    def run(args, cwd=None, env=None, timeout=60):
        full = dict(os.environ, PM2_HOME=home)
        full.update(env or {})
        return subprocess.run([PM2] + args, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout,
                              check=False)

    run.home = home
    yield run
    run(["kill"])


def _pids(port, n=12):
    seen = set()
    for dummy in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/health")
        resp = conn.getresponse()
        assert resp.status == 200
        seen.add(json.loads(resp.read())["pid"])
        conn.close()
    return seen


def _ready(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/api/ready")
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, body


def test_demo_apps_under_pm2(pm2):
    with open(os.path.join(EXAMPLES, "inventory", "group_vars", "devboxes.yml")) as f:
        apps = {a["name"]: a for a in yaml.safe_load(f)["devbox_apps"]}
    node, py = apps["node-app"], apps["py-app"]
    env = {"HOST": "127.0.0.1", "READY_REQUIRES": "API_KEY", "API_KEY": SECRET}

    node_port = free_port()
    res = pm2(["start", node["script"], "--name", "node-app", "-i", str(node["instances"]), "--wait-ready",
               "--listen-timeout", str(node["listen_timeout"]), "--kill-timeout", str(node["kill_timeout"])],
              cwd=NODE_DIR, env=dict(env, PORT=str(node_port)))
    assert res.returncode == 0, res.stderr
    assert node["exec_mode"] == "cluster"
    before = _pids(node_port)
    assert len(before) == 2  # two cluster workers answer on one port
    assert _ready(node_port)[0] == 200
    res = pm2(["reload", "node-app"])
    assert res.returncode == 0, res.stderr
    after = _pids(node_port)
    assert len(after) == 2 and not after & before

    py_port = free_port()
    assert (py["script"], py["interpreter"]) == ("gunicorn", "none")
    res = pm2(["start", py["script"], "--name", "py-app", "--interpreter", py["interpreter"], "--"] + py["args"],
              cwd=PY_DIR, env=dict(env, PORT=str(py_port), WEB_CONCURRENCY="1"))
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 15
    while True:
        try:
            status, body = _ready(py_port)
            break
        except OSError:
            assert time.monotonic() < deadline, pm2(["logs", "py-app", "--nostream", "--lines", "30"]).stdout
            time.sleep(0.2)
    assert status == 200 and json.loads(body)["status"] == "ready"

    res = pm2(["jlist"])
    procs = json.loads(res.stdout[res.stdout.index("["):])
    states = sorted((p["name"], p["pm2_env"]["status"]) for p in procs)
    assert states == [("node-app", "online"), ("node-app", "online"), ("py-app", "online")]
    logs = os.path.join(pm2.home, "logs")
    for name in os.listdir(logs):
        with open(os.path.join(logs, name)) as f:
            assert SECRET not in f.read()


def test_demo_inventory():
    with open(os.path.join(EXAMPLES, "inventory", "demo.yml")) as f:
        inv = yaml.safe_load(f)
    host = inv["all"]["children"]["devboxes"]["hosts"]["devbox1"]
    assert host["ansible_host"] == "10.213.1.2" and host["ansible_user"] == "devbox"
    assert host["ansible_port"] == 22 and host["ansible_python_interpreter"] == "/usr/bin/python3"
    assert host["ansible_ssh_private_key_file"] == "/var/tmp/devbox-ops-harness/id_ed25519"
    with open(os.path.join(EXAMPLES, "inventory", "group_vars", "devboxes.yml")) as f:
        gv = yaml.safe_load(f)
    assert gv["demo_api_key"] == "demo-secret-not-for-prod"
    for app in gv["devbox_apps"]:
        assert app["env"]["API_KEY"] == "{{ demo_api_key }}"
        assert app["env"]["READY_REQUIRES"] == "API_KEY"
        assert app["health"]["path"] == "/api/health" and app["readiness"]["path"] == "/api/ready"
        assert all(isinstance(v, str) for v in app["env"].values())
    # ansible itself resolves the inventory and the group_vars
    out = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible-inventory"), "-i",
                          os.path.join(EXAMPLES, "inventory", "demo.yml"), "--host", "devbox1"],
                         capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert out.returncode == 0, out.stderr
    hostvars = json.loads(out.stdout)
    assert [a["name"] for a in hostvars["devbox_apps"]] == ["node-app", "node-web", "py-app"]
