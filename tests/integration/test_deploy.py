# SPDX-License-Identifier: GPL-3.0-or-later
"""deploy.yml, rollback.yml and the deploy history of status.yml against a simulated devbox, for real.

One s6 host (devbox21, 10.213.21.2) made by tests/harness in a state dir of its own, a Node app in PM2
cluster mode (reload strategy) and the gunicorn app in fork mode (restart strategy), deployed from
controller directories with ansible-playbook as a user runs it. A generic JSON webhook receiver listens on
the root-namespace side of the host's link (10.213.21.1), so notifications cross a real network.
The tests run in file order and share the host. Needs root (the harness makes namespaces).

tests/integration/test_deploy_faults.py imports the helpers of this file.
"""
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(REPO, "tests", "harness", "harness")
PLAYBOOK = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
EXAMPLES = os.path.join(REPO, "examples")
CANARY = "deploy-canary-7f3a9c2e51"
ID_RE = re.compile(r"\A[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}\Z")


# ------------------------------------------------------------------------------------------ helpers

class Host:
    """One harness host: its state dir, its disk seen from the machine, and commands inside it."""

    def __init__(self, state, index):
        self.state, self.index = state, index
        self.name, self.ip, self.root_ip = "devbox%d" % index, "10.213.%d.2" % index, "10.213.%d.1" % index
        self.home = os.path.join(state, "hosts", self.name, "home")  # /home/devbox of the host

    def harness(self, *args, timeout=240):
        env = dict(os.environ, DEVBOX_HARNESS_DIR=self.state)
        proc = subprocess.run([HARNESS] + list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout, check=False)
        assert proc.returncode == 0, "harness %s: rc %d\n%s%s" % (" ".join(args), proc.returncode, proc.stdout,
                                                                  proc.stderr)
        return proc.stdout

    def up(self):
        self.harness("up", "1", "--first", str(self.index), "--init", "s6")

    def down(self):
        self.harness("down")

    def sh(self, *argv, user="devbox"):
        return self.harness("exec", self.name, "--user", user, "--", *argv)

    def pm2(self):
        """{name: [(pid, status, pm_cwd)]} from `pm2 jlist` on the host (env is never kept)."""
        out = self.sh("pm2", "jlist")
        line = [ln for ln in out.splitlines() if ln.startswith("[")][-1]
        procs = {}
        for p in json.loads(line):
            procs.setdefault(p["name"], []).append((p["pid"], p["pm2_env"]["status"], p["pm2_env"]["pm_cwd"]))
        return procs

    def proc_cwd(self, pid):
        """Where process ``pid`` (in the host's pid namespace) really runs: readlink /proc/PID/cwd."""
        return self.sh("readlink", "/proc/%d/cwd" % pid).strip()

    def path(self, rel):
        return os.path.join(self.home, rel)

    def app_dir(self, app):
        return self.path("apps/" + app)

    def current(self, app):
        """The release id `current` points to (None when absent)."""
        link = os.path.join(self.app_dir(app), "current")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def manifest(self, app, release):
        with open(os.path.join(self.app_dir(app), "releases", release, ".devbox-release.json")) as f:
            return json.load(f)

    def releases(self, app):
        top = os.path.join(self.app_dir(app), "releases")
        return sorted(n for n in os.listdir(top) if ID_RE.match(n)) if os.path.isdir(top) else []

    def history(self, app):
        try:
            with open(os.path.join(self.app_dir(app), "history.jsonl")) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def url(self, port, path="/api/health"):
        return "http://%s:%d%s" % (self.ip, port, path)


def get_json(url, timeout=3):
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed http URL
        return resp.status, json.loads(resp.read().decode("utf-8"))


def wait_version(url, version, timeout=60):
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            status, body = get_json(url)
            if status == 200 and body.get("version") == version:
                return body
            last = "HTTP %s %r" % (status, body)
        except (OSError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise AssertionError("%s did not serve version %s within %ss: %s" % (url, version, timeout, last))


class Traffic:
    """A background request loop (fresh connection per request) counting answers per version and failures."""

    def __init__(self, url):
        self.url, self.versions, self.errors = url, {}, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                status, body = get_json(self.url, timeout=5)
                if status == 200:
                    self.versions[body.get("version")] = self.versions.get(body.get("version"), 0) + 1
                else:
                    self.errors.append("HTTP %s" % status)
            except (OSError, ValueError) as exc:
                self.errors.append(repr(exc))
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    @property
    def total(self):
        return sum(self.versions.values()) + len(self.errors)


class Receiver:
    """A generic JSON webhook receiver on a real socket: keeps every POSTed body."""

    def __init__(self, address):
        self.events = []
        received = self.events

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length).decode("utf-8")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.url = "http://%s:%d/hook" % (address, self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def of(self, **match):
        return [e for e in self.events if all(e.get(k) == v for k, v in match.items())]


RECAP = r"^%s\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"


class Ansible:
    """ansible-playbook as a user runs it; every output is kept for the secret canary test."""

    def __init__(self, inventory, host):
        self.inventory, self.host, self.outputs = inventory, host, []

    def argv(self, playbook, *extra):
        return [PLAYBOOK, "-i", self.inventory, os.path.join(REPO, "playbooks", playbook)] + list(extra)

    @staticmethod
    def env():
        return dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json")

    def run(self, playbook, *extra):
        proc = subprocess.run(self.argv(playbook, *extra), cwd=REPO, env=self.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=600, check=False)
        self.outputs.append(proc.stdout)
        return proc

    def ok(self, playbook, *extra):
        proc = self.run(playbook, *extra)
        assert proc.returncode == 0, "%s %s failed (rc %d):\n%s" % (
            playbook, extra, proc.returncode, proc.stdout[-8000:])
        return proc.stdout

    def fails(self, playbook, *extra):
        proc = self.run(playbook, *extra)
        assert proc.returncode != 0, "%s %s should have failed:\n%s" % (playbook, extra, proc.stdout[-5000:])
        return proc.stdout

    def recap(self, output):
        match = re.search(RECAP % self.host, output, re.M)
        assert match, "no PLAY RECAP line for %s in:\n%s" % (self.host, output[-3000:])
        return dict(zip(("ok", "changed", "unreachable", "failed"), (int(g) for g in match.groups())))


def changed_tasks(output):
    names, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:") and task and task not in names:
            names.append(task)
    return names


def _blocks(lines, start):
    """The JSON object printed from lines[start] (which ends with '=> {') to the next '}' line."""
    block = ["{"]
    for line in lines[start + 1:]:
        block.append(line)
        if line == "}":
            break
    return json.loads("\n".join(block))


def failure_messages(output):
    """The msg of every failed task (fatal lines, JSON result format)."""
    lines, msgs = output.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("fatal: [") and "=> {" in line:
            result = _blocks(lines, i) if line.endswith("=> {") else json.loads(line.split("=> ", 1)[1])
            msgs.append(result.get("msg", ""))
    return msgs


def debug_msgs(output, task_name):
    """The msg printed by each run of the debug task ``task_name`` (JSON result format)."""
    msgs, lines, inside = [], output.splitlines(), False
    for i, line in enumerate(lines):
        if line.startswith("TASK ["):
            inside = task_name in line
        elif inside and line.startswith("ok: [") and line.endswith("=> {"):
            msgs.append(_blocks(lines, i)["msg"])
    assert msgs, "no output of task %r in:\n%s" % (task_name, output[-3000:])
    return msgs


def app_source(tmp_path_factory, kind, version, patch=None):
    """A copy of an example app whose version is ``version`` (package.json or the default in app.py)."""
    src = str(tmp_path_factory.mktemp("%s-%s" % (kind, version)) / "app")
    example = os.path.join(EXAMPLES, "node-app" if kind == "node" else "python-app")
    shutil.copytree(example, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules"))
    name, old, new = (("package.json", '"version": "1.0.0"', '"version": "%s"' % version) if kind == "node"
                      else ("app.py", 'DEFAULT_VERSION = "1.0.0"', 'DEFAULT_VERSION = "%s"' % version))
    with open(os.path.join(src, name)) as f:
        text = f.read()
    assert old in text, (name, old)
    text = text.replace(old, new)
    with open(os.path.join(src, name), "w") as f:
        f.write(text)
    if patch:
        patch(src)
    return src


def node_app(source, **deploy):
    app = {
        "name": "node-app", "port": 3000, "script": "server.js", "interpreter": "node", "exec_mode": "cluster",
        "instances": 2, "wait_ready": True, "listen_timeout": 8000, "kill_timeout": 5000,
        "env": {"READY_REQUIRES": "API_KEY", "API_KEY": CANARY},
        "health": {"path": "/api/health"}, "readiness": {"path": "/api/ready"},
        "deploy": dict({"source": source, "slo": {"samples": 40, "concurrency": 4},
                        "preflight": {"required_env": ["API_KEY"], "tools": {"node": "18.0.0"}}}, **deploy),
    }
    return app


def write_inventory(directory, host, apps, **extra_vars):
    os.makedirs(os.path.join(directory, "group_vars"), exist_ok=True)
    shutil.copy(os.path.join(host.state, "inventory.yml"), os.path.join(directory, "hosts.yml"))
    probe_defaults = {"timeout": 2, "period": 0.5, "failure_threshold": 40}
    group_vars = dict({"devbox_apps": apps, "devbox_probe_defaults": probe_defaults}, **extra_vars)
    with open(os.path.join(directory, "group_vars", "devboxes.yml"), "w") as f:
        yaml.safe_dump(group_vars, f)
    return os.path.join(directory, "hosts.yml")


def extra_apps_file(directory, name, apps):
    """A JSON file for `-e @FILE` that replaces devbox_apps for one run."""
    path = os.path.join(directory, name + ".json")
    with open(path, "w") as f:
        json.dump({"devbox_apps": apps}, f)
    return "@" + path


# ------------------------------------------------------------------------------------------ fixtures

HOST = Host("/var/tmp/devbox-ops-it-deploy", 21)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the harness makes namespaces: run these tests as root (a skip would hide them)", pytrace=False)
    HOST.up()
    receiver = None
    try:
        receiver = Receiver(HOST.root_ip)
        sources = {
            "node1": app_source(tmp_path_factory, "node", "1.0.0"),
            "node2": app_source(tmp_path_factory, "node", "2.0.0"),
            "py1": app_source(tmp_path_factory, "python", "1.0.0"),
        }
        py = {"name": "py-app", "port": 8000, "script": "gunicorn", "interpreter": "none",
              "args": ["-c", "gunicorn.conf.py", "app:application"], "kill_timeout": 12000,
              "env": {"API_KEY": CANARY, "WEB_CONCURRENCY": "1"},
              "health": {"path": "/api/health"}, "readiness": {"path": "/api/ready"},
              "deploy": {"source": sources["py1"], "slo": {"samples": 20}}}
        inv = write_inventory(str(tmp_path_factory.mktemp("inventory")), HOST, [node_app(sources["node1"]), py],
                              devbox_deploy_notifiers=[{"kind": "generic", "url": receiver.url, "timeout": 5}])
        yield {"ansible": Ansible(inv, HOST.name), "receiver": receiver, "sources": sources, "ids": {}}
    finally:
        if receiver:
            receiver.close()
        HOST.down()


NODE, PY = HOST.url(3000), HOST.url(8000)


# ------------------------------------------------------------------------------------------ tests

def test_first_deploy_of_the_node_app_then_a_second_one_changes_nothing(world):
    ansible = world["ansible"]
    ansible.ok("deploy.yml", "-e", "app=node-app", "-e", "version=1.0.0")
    assert wait_version(NODE, "1.0.0", 10)["status"] == "ok"
    release = HOST.current("node-app")
    assert release and ID_RE.match(release)
    world["ids"]["node1"] = release
    assert HOST.manifest("node-app", release)["status"] == "active"
    procs = HOST.pm2()
    assert [p[1] for p in procs["node-app"]] == ["online", "online"] and "node-app--candidate" not in procs
    # the .env file holds the secret, privately, linked into the release
    env_file = HOST.path("apps/node-app/shared/.env")
    assert oct(os.stat(env_file).st_mode & 0o777) == "0o600"
    with open(env_file) as f:
        assert 'API_KEY="%s"' % CANARY in f.read()
    assert os.readlink(os.path.join(HOST.app_dir("node-app"), "releases", release, ".env")) == "../../shared/.env"
    last = HOST.history("node-app")[-1]
    assert (last["action"], last["result"], last["release"], last["strategy"]) == ("deploy", "success", release,
                                                                                   "reload")
    assert last["failed_step"] is None and last["duration_s"] > 0 and last["actor"]["user"]
    sent = world["receiver"].of(type="deploy", target="node-app", result="success")
    assert len(sent) == 1 and sent[0]["release"] == release and sent[0]["host"] == HOST.name, world["receiver"].events

    pids = sorted(p[0] for p in procs["node-app"])
    again = ansible.ok("deploy.yml", "-e", "app=node-app")
    assert ansible.recap(again)["changed"] == 0, "changed on the second deploy: %s" % changed_tasks(again)
    assert "is already live with these settings; nothing to deploy" in again
    assert sorted(p[0] for p in HOST.pm2()["node-app"]) == pids
    assert HOST.current("node-app") == release and len(HOST.history("node-app")) == 1
    assert len(world["receiver"].of(type="deploy")) == 1


def test_check_mode_reports_the_release_it_would_make_and_changes_nothing(world):
    ansible, old = world["ansible"], world["ids"]["node1"]
    releases, history = HOST.releases("node-app"), HOST.history("node-app")
    out = ansible.ok("deploy.yml", "--check", "-e", "app=node-app", "-e", "source=" + world["sources"]["node2"],
                     "-e", "version=2.0.0")
    [msg] = debug_msgs(out, "Say what the deploy would do (check mode)")
    assert msg.startswith("check mode: app node-app would deploy a new release ") and \
        "(version 2.0.0; 0 new, 1 modified, 0 deleted files against %s) with the reload strategy" % old in msg, msg
    assert (HOST.current("node-app"), HOST.releases("node-app"), HOST.history("node-app")) == (old, releases, history)
    assert not os.path.exists(os.path.join(HOST.app_dir("node-app"), ".lock"))
    assert "node-app--candidate" not in HOST.pm2()


def test_reload_really_runs_the_new_release_with_no_failed_request(world):
    ansible, old = world["ansible"], world["ids"]["node1"]
    with Traffic(NODE) as traffic:
        # -vvv: this run is also one of the canary's witnesses
        out = ansible.ok("deploy.yml", "-vvv", "-e", "app=node-app", "-e", "source=" + world["sources"]["node2"],
                         "-e", "version=2.0.0")
        wait_version(NODE, "2.0.0", 10)
        time.sleep(0.5)
    # No refused, reset, timed-out or failed request: the example app drains for SHUTDOWN_DRAIN_MS before
    # it exits, so a connection Node's cluster master hands an exiting worker goes to another worker.
    assert traffic.errors == [], traffic.errors[:5]
    assert traffic.versions.get("1.0.0") and traffic.versions.get("2.0.0"), traffic.versions
    new = HOST.current("node-app")
    assert new != old and HOST.manifest("node-app", new)["version"] == "2.0.0"
    world["ids"]["node2"] = new
    release_dir = "/home/devbox/apps/node-app/releases/" + new
    procs = HOST.pm2()["node-app"]
    assert len(procs) == 2
    for pid, status, pm_cwd in procs:
        # PM2 keeps the unresolved path it was given; each process runs from the new release directory
        assert status == "online" and pm_cwd == "/home/devbox/apps/node-app/current"
        assert HOST.proc_cwd(pid) == release_dir, (pid, HOST.proc_cwd(pid))
    for _round in range(6):  # cluster round-robin: every worker serves v2
        assert get_json(NODE)[1]["version"] == "2.0.0"
    # the unchanged file is a hardlink of the previous release's (incremental release)
    a, b = (os.stat(os.path.join(HOST.app_dir("node-app"), "releases", r, "server.js")) for r in (old, new))
    assert a.st_ino == b.st_ino
    assert HOST.manifest("node-app", old)["status"] == "verified"
    assert "release %s (new): 0 new, 1 modified, 0 deleted" % new in out


def test_python_app_restart_strategy_and_a_second_deploy_changes_nothing(world):
    ansible = world["ansible"]
    ansible.ok("deploy.yml", "-e", "app=py-app")
    body = wait_version(PY, "1.0.0", 10)
    release = HOST.current("py-app")
    assert HOST.history("py-app")[-1]["strategy"] == "restart"
    # requirements.txt asks for gunicorn: a per-release venv, satisfied offline from the system site
    assert os.path.exists(os.path.join(HOST.app_dir("py-app"), "releases", release, ".venv", "bin", "python"))
    again = ansible.ok("deploy.yml", "-e", "app=py-app")
    assert ansible.recap(again)["changed"] == 0, "changed on the second deploy: %s" % changed_tasks(again)
    assert get_json(PY)[1]["pid"] == body["pid"]
    [(pid, status, _cwd)] = HOST.pm2()["py-app"]
    assert status == "online" and HOST.proc_cwd(pid) == "/home/devbox/apps/py-app/releases/" + release


def test_rollback_to_previous_serves_the_old_release_and_bad_targets_change_nothing(world):
    ansible, v1, v2 = world["ansible"], world["ids"]["node1"], world["ids"]["node2"]
    out = ansible.ok("rollback.yml", "-e", "app=node-app")
    wait_version(NODE, "1.0.0", 10)
    assert HOST.current("node-app") == v1
    assert HOST.manifest("node-app", v2)["status"] == "rolled_back"
    assert HOST.manifest("node-app", v1)["status"] == "active"
    for pid, _status, _cwd in HOST.pm2()["node-app"]:
        assert HOST.proc_cwd(pid) == "/home/devbox/apps/node-app/releases/" + v1
    last = HOST.history("node-app")[-1]
    assert (last["action"], last["result"], last["release"], last["previous"]) == ("rollback", "success", v1, v2)
    assert world["receiver"].of(type="rollback", target="node-app", result="success", release=v1)

    before = (HOST.current("node-app"), len(HOST.history("node-app")), HOST.releases("node-app"),
              [HOST.manifest("node-app", r)["status"] for r in HOST.releases("node-app")], HOST.pm2()["node-app"])
    bad = ansible.fails("rollback.yml", "-e", "app=node-app", "-e", "to=../x")
    assert any(m.startswith('to="../x": must be previous or a release id') for m in failure_messages(bad)), bad[-3000:]
    unknown = "20200101T000000Z-0badc0de"
    bad = ansible.fails("rollback.yml", "-e", "app=node-app", "-e", "to=" + unknown)
    assert "rollback of node-app refused: to='%s': no such release under /home/devbox/apps/node-app/releases" % unknown \
        in " ".join(failure_messages(bad))
    assert ansible.recap(bad)["changed"] == 0
    after = (HOST.current("node-app"), len(HOST.history("node-app")), HOST.releases("node-app"),
             [HOST.manifest("node-app", r)["status"] for r in HOST.releases("node-app")], HOST.pm2()["node-app"])
    assert after == before
    assert not os.path.exists(os.path.join(HOST.app_dir("node-app"), ".lock"))


def test_status_shows_the_deploy_history_with_success_rate_and_average_duration(world):
    lines = debug_msgs(world["ansible"].ok("status.yml"), "Print the deploy history")[0]
    node = [ln for ln in lines if ln.startswith("node-app (reload): current %s," % world["ids"]["node1"])]
    assert node, lines
    assert "3 deploy(s) and rollback(s), success rate 100%" in node[0]
    assert re.search(r"average duration [0-9.]+ s$", node[0])
    assert any(re.match(r"  \S+Z  rollback success  version 1.0.0  release %s  by \S+@\S+  [0-9.]+ s$"
                        % world["ids"]["node1"], ln) for ln in lines), lines
    assert any(ln.startswith("py-app (restart): current %s," % HOST.current("py-app")) for ln in lines), lines


def test_no_output_shows_the_secret_even_with_vvv(world):
    outputs = world["ansible"].outputs
    assert len(outputs) >= 8 and any("-vvv" in o or "ESTABLISH SSH CONNECTION" in o for o in outputs)
    with open(HOST.path("apps/py-app/shared/.env")) as f:  # the canary really was deployed
        assert CANARY in f.read()
    leaks = [i for i, out in enumerate(outputs) if CANARY in out]
    assert leaks == [], "the secret appears in the output of runs %s" % leaks
    for payload in world["receiver"].events:
        assert CANARY not in json.dumps(payload)
