# SPDX-License-Identifier: GPL-3.0-or-later
"""The on-host watchdog against real PM2 (private PM2_HOME), real Node/Python apps, real HTTP, real
signals and a real tmpfs. Periods are 0.5 s so the whole file runs in about a minute."""
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from ansible_collections.devbox.ops.plugins.module_utils import watchdog as wdmod
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.events import EventLog, parse_time
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import AppSpec, PM2Client
from ansible_collections.devbox.ops.plugins.module_utils.runner import SubprocessRunner

from pm2_helpers import free_port, pm2
# Fixtures, used by name:
from pm2_helpers import pm2_home  # noqa: F401 pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(REPO, "files", "watchdog", "devbox-ops-watchdog")
HOST = socket.gethostname()

SERVER_JS = """\
const http = require('http'), fs = require('fs');
let ballast = null;
if (process.env.HOG && fs.existsSync(process.env.HOG)) {  // grow past max_memory once
  fs.unlinkSync(process.env.HOG);
  ballast = Buffer.alloc(96 * 1024 * 1024, 1);
}
http.createServer((req, res) => res.end('ok ' + process.pid + (ballast ? ballast.length : ''))).listen(
  Number(process.env.PORT), '127.0.0.1');
"""
CRASH_JS = "console.error('cannot start'); process.exit(1);\n"
BURN_JS = """\
const fs = require('fs');
setInterval(() => { const end = Date.now() + 90; while (fs.existsSync(process.env.BURN) && Date.now() < end); }, 100);
"""
SERVER_PY = """\
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok %d" % os.getpid())
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


# ------------------------------------------------------------------------------------------ helpers

# A deadline here only bounds a wait for something the watchdog must do; it asserts no speed (MTTR is
# measured by benchmarks/mttr.py). On a 2-core CI runner with 3 test workers, ticks and PM2 calls run
# several times slower than alone, so every wait gets this much slack. A test that passes returns as soon
# as its condition holds.
SLACK = 3


def wait_until(what, check, timeout, step=0.1):
    timeout *= SLACK
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(step)


def serving(port, timeout=0.3):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.")
    except OSError:
        return False


def procs(home, name):
    return PM2Client(SubprocessRunner(), pm2_home=home).jlist(name)


def start_app(home, name, script, crashing=False, **fields):
    fields.setdefault("min_uptime", "300ms")
    spec = AppSpec.from_params(dict(name=name, script=str(script), **fields))
    client = PM2Client(SubprocessRunner(), pm2_home=home, poll_interval=0.1)
    try:
        client.apply(client.plan(spec), timeout=20)
    except DevboxOpsError:
        if not crashing:
            raise
    return procs(home, name)


def events(tmp_path, type=None, target=None):  # pylint: disable=redefined-builtin
    return EventLog(str(tmp_path / "events.jsonl")).query(types=type, target=target)


def read_state(tmp_path):
    try:
        with open(str(tmp_path / "state.json")) as handle:
            return json.load(handle)
    except (IOError, ValueError):
        return {}


def app_state(tmp_path, name):
    return read_state(tmp_path).get("apps", {}).get(name, {})


def write_config(tmp_path, home, apps=(), **top):
    config = dict(period=0.5, metrics_period=0.5, host=HOST, state_file=str(tmp_path / "state.json"),
                  event_log=str(tmp_path / "events.jsonl"), pm2={"home": home}, disk={"paths": [str(tmp_path)]},
                  apps=list(apps))
    config.update(top)
    path = tmp_path / "watchdog.json"
    path.write_text(json.dumps(config))
    return str(path)


def http_app(name, port, **rule):
    rule.setdefault("liveness", {"url": "http://127.0.0.1:%d/" % port, "period": 0.5, "timeout": 0.5,
                                 "failure_threshold": 2})
    rule.setdefault("grace_s", 1)
    return dict(name=name, **rule)


class Running:
    """A Watchdog looping in a thread of this process."""

    def __init__(self, path):
        self.wd = wdmod.Watchdog(path)
        self.thread = threading.Thread(target=self.wd.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.wd.stop()
        self.thread.join(30)
        self.wd.close()
        assert not self.thread.is_alive()


@pytest.fixture
def watchdog():
    running = []

    def start(path):
        running.append(Running(path))
        return running[-1].wd

    yield start
    for each in running:
        each.stop()


@pytest.fixture
def app_files(tmp_path):
    files = {}
    for name, text in (("server.js", SERVER_JS), ("crash.js", CRASH_JS), ("burn.js", BURN_JS),
                       ("server.py", SERVER_PY)):
        (tmp_path / name).write_text(text)
        files[name] = tmp_path / name
    return files


@pytest.fixture
def cleanup_apps(pm2_home):
    names = []
    yield names
    for name in names:
        pm2(pm2_home, "delete", name)


class Receiver:
    """A webhook receiver on loopback that keeps every JSON body it gets."""

    def __init__(self):
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body.decode("utf-8")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------- liveness

def test_crash_is_left_to_pm2_and_the_state_file_tells_it(tmp_path, pm2_home, app_files, cleanup_apps, watchdog):
    port = free_port()
    cleanup_apps.append("wd-crash")
    before = start_app(pm2_home, "wd-crash", app_files["server.js"], env={"PORT": port})[0]
    wd = watchdog(write_config(tmp_path, pm2_home, [http_app("wd-crash", port, max_memory="500M")]))
    wait_until("a passing probe", lambda: (app_state(tmp_path, "wd-crash").get("liveness") or {}).get("ok"), 10)

    os.kill(before["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_until("the app to serve again", lambda: serving(port) and procs(pm2_home, "wd-crash")[0]["pid"] != before["pid"], 5)
    assert time.monotonic() - killed <= 3.0
    time.sleep(1.5)  # three watchdog ticks with the app freshly restarted by PM2
    after = procs(pm2_home, "wd-crash")[0]
    assert after["restarts"] == before["restarts"] + 1, "PM2 restarted it once; the watchdog did not restart it again"
    assert events(tmp_path, "restart", "wd-crash") == []

    state = read_state(tmp_path)
    assert state["version"] == 1 and state["host"] == HOST and state["pid"] == os.getpid()
    assert state["tick"] >= 5 and state["period"] == 0.5 and state["config"]["error"] is None
    assert state["pm2"]["daemon_pid"] and state["pm2"]["home"] == pm2_home
    app = state["apps"]["wd-crash"]
    assert app["status"] == "online" and app["pids"] == [after["pid"]] and app["restarts"] == after["restarts"]
    assert app["breaker"]["state"] == "closed" and app["restarts_in_window"] == 1
    assert app["budget"] == {"max_restarts": 3, "window_s": 300.0, "cooldown_s": 60.0}
    assert app["liveness"]["ok"] is True and app["liveness"]["target"] == "GET http://127.0.0.1:%d/" % port
    assert 10 * 2 ** 20 < app["rss"] < 500 * 2 ** 20 and app["max_memory"] == 500 * 2 ** 20
    assert state["metrics"]["level"] in ("ok", "warning", "critical") and state["metrics"]["disk"]
    assert all(a == {"state": "ok", "sent": None} for a in state["alerts"].values()), "no alert was sent"
    assert state["errors"] == []
    wd.stop()


def test_hang_is_restarted_after_failure_threshold_but_not_during_grace(
        tmp_path, pm2_home, app_files, cleanup_apps, watchdog):
    port = free_port()
    cleanup_apps.append("wd-hang")
    before = start_app(pm2_home, "wd-hang", app_files["server.js"], env={"PORT": port}, kill_timeout=300)[0]
    started = time.time() - before["uptime_s"]
    wd = watchdog(write_config(tmp_path, pm2_home, [http_app("wd-hang", port, grace_s=1.5)]))
    os.kill(before["pid"], signal.SIGSTOP)  # alive for PM2, silent for the probe
    stopped = time.time()
    try:
        wait_until("a watchdog restart", lambda: events(tmp_path, "restart", "wd-hang"), 15)
        wait_until("the app to serve again", lambda: serving(port), 5)
    finally:
        if os.path.exists("/proc/%d" % before["pid"]):
            os.kill(before["pid"], signal.SIGCONT)
    restart = events(tmp_path, "restart", "wd-hang")
    assert len(restart) == 1 and restart[0]["result"] == "ok"
    assert restart[0]["reason"].startswith("liveness: GET http://127.0.0.1:%d/: timed out" % port)
    assert restart[0]["actor"] == {"user": "watchdog@%s" % HOST}
    at = parse_time(restart[0]["ts"]).timestamp()
    # not during grace (1.5 s after start); then 2 failures of a 0.5 s period/timeout, plus a tick or two
    assert at >= started + 1.5
    assert at - max(stopped, started + 1.5) <= 3.0
    after = procs(pm2_home, "wd-hang")[0]
    assert after["pid"] != before["pid"] and after["restarts"] == before["restarts"] + 1
    last = wait_until("the state file", lambda: app_state(tmp_path, "wd-hang")["last_action"], 2)
    assert last["action"] == "restart" and last["result"] == "ok" and last["duration_s"] > 0
    wd.stop()


# ----------------------------------------------------------------------------- budget and breaker

def test_restart_storm_opens_the_breaker_alerts_once_retries_and_recovers(
        tmp_path, pm2_home, app_files, cleanup_apps, watchdog):
    port = free_port()
    receiver = Receiver()
    cleanup_apps.append("wd-storm")
    script = tmp_path / "storm.js"
    shutil.copy(str(app_files["crash.js"]), str(script))
    start_app(pm2_home, "wd-storm", script, crashing=True, env={"PORT": port}, restart_delay=1000)
    budget = {"max_restarts": 2, "window_s": 60, "cooldown_s": 2}
    wd = watchdog(write_config(tmp_path, pm2_home, [http_app("wd-storm", port, grace_s=0.5, restart_budget=budget)],
                               notifiers=[{"kind": "generic", "url": receiver.url}]))
    try:
        first_look = wait_until("a first look", lambda: app_state(tmp_path, "wd-storm").get("status"), 5)
        baseline = app_state(tmp_path, "wd-storm")["restarts"]
        assert first_look != "missing"
        opened = wait_until("the breaker to open", lambda: events(tmp_path, "breaker_open", "wd-storm"), 10)
        retry_at = parse_time(opened[0]["retry_at"]).timestamp()
        assert retry_at - time.time() >= 1.2
        at_open = procs(pm2_home, "wd-storm")
        assert at_open[0]["status"] == "stopped", "the breaker stops PM2's own restart loop too"
        # PM2 restarts it on its own (every ~1 s here); the watchdog sees them at its next look (0.5 s) and
        # the stop races one more PM2 cycle
        assert at_open[0]["restarts"] - baseline <= budget["max_restarts"] + 2
        assert opened[0]["reason"].split(" restarts within 60s (max_restarts=2)")[0] in ("2", "3")
        time.sleep(retry_at - time.time() - 0.3)  # inside the cooldown nothing restarts it
        assert procs(pm2_home, "wd-storm")[0]["restarts"] == at_open[0]["restarts"]

        # after the cooldown: one half-open retry, which fails (still broken) and opens the breaker again
        wait_until("a half-open retry", lambda: events(tmp_path, "revive", "wd-storm"), 6)
        wait_until("the breaker to open again", lambda: len(events(tmp_path, "breaker_open", "wd-storm")) >= 2, 6)
        shutil.copy(str(app_files["server.js"]), str(script))  # fixed: the next retry will stay up

        wait_until("the breaker to close", lambda: events(tmp_path, "breaker_close", "wd-storm"), 10)
        assert serving(port)
        wait_until("the state file to say closed",
                   lambda: app_state(tmp_path, "wd-storm")["breaker"]["state"] == "closed", 2)
        wait_until("the recovery alert", lambda: len(receiver.received) >= 2, 5)
        time.sleep(0.5)
    finally:
        receiver.close()
    alerts = [a for a in receiver.received if a["type"] == "alert"]
    assert [a["result"] for a in alerts] == ["breaker_open", "ok"], "one alert per state change"
    assert alerts[0]["target"] == "wd-storm" and alerts[0]["actor"] == {"user": "watchdog@%s" % HOST}
    assert "breaker open" in alerts[0]["message"] and "recovered" in alerts[1]["message"]
    revives = events(tmp_path, "revive", "wd-storm")
    assert len(revives) >= 2 and all("half-open" in e["reason"] for e in revives)
    assert read_state(tmp_path)["alerts_delivered"] == 2
    wd.stop()


OPERATOR = """\
import sys
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import AppSpec, PM2Client
from ansible_collections.devbox.ops.plugins.module_utils.runner import SubprocessRunner
client = PM2Client(SubprocessRunner(), pm2_home=sys.argv[1], poll_interval=0.1)
spec = AppSpec.from_params({"name": sys.argv[2]})
for _ in range(int(sys.argv[3])):
    client.apply(client.plan(spec, sys.argv[4]), timeout=20)
"""


def operator_restarts(home, name, times, state="restarted"):
    """Restart (or stop) the app ``times`` times from another process, as pm2_process (manage.yml,
    heal.yml) does: each action holds the app while it runs."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", OPERATOR, home, name, str(times), state], env=env, check=True,
                   timeout=120)


def test_operator_restarts_are_held_not_counted_against_the_budget(
        tmp_path, pm2_home, app_files, cleanup_apps, watchdog):
    port = free_port()
    cleanup_apps.append("wd-held")
    start_app(pm2_home, "wd-held", app_files["server.js"], env={"PORT": port}, kill_timeout=300)
    budget = {"max_restarts": 2, "window_s": 60, "cooldown_s": 30}
    watchdog(write_config(tmp_path, pm2_home, [http_app("wd-held", port, grace_s=0.5, restart_budget=budget)]))
    wait_until("a first look", lambda: app_state(tmp_path, "wd-held").get("status") == "online", 5)
    before = procs(pm2_home, "wd-held")[0]["restarts"]

    held = []
    watcher = threading.Thread(target=lambda: held.extend(
        wait_until("the hold to show", lambda: app_state(tmp_path, "wd-held").get("held"), 30, step=0.05)
        and [True]), daemon=True)
    watcher.start()
    operator_restarts(pm2_home, "wd-held", 4)  # twice the budget, in a few seconds
    watcher.join(5)
    assert held == [True], "the state file never showed the app as held during the restarts"
    assert procs(pm2_home, "wd-held")[0]["restarts"] == before + 4
    assert not os.listdir(os.path.join(pm2_home, "devbox-ops-holds")), "the hold outlived the action"
    time.sleep(3)  # several ticks after the hold: the watchdog judges the app again
    state = app_state(tmp_path, "wd-held")
    assert (state["held"], state["restarts_in_window"], state["breaker"]["state"]) == (False, 0, "closed")
    assert not events(tmp_path, "breaker_open", "wd-held") and not events(tmp_path, "restart", "wd-held")
    assert procs(pm2_home, "wd-held")[0]["status"] == "online" and serving(port)

    # a hang now is restarted: the budget is untouched by the four restarts above
    hang(pm2_home, "wd-held")
    wait_until("a watchdog restart", lambda: events(tmp_path, "restart", "wd-held"), 15)
    assert not events(tmp_path, "breaker_open", "wd-held")
    wait_until("the app to serve again", lambda: serving(port), 10)
    # restarts from outside devbox.ops (plain `pm2 restart`, no hold) do count: the next hang opens the breaker
    for _restart in range(2):
        pm2(pm2_home, "restart", "wd-held")
        time.sleep(0.7)
    wait_until("the watchdog to count them",
               lambda: app_state(tmp_path, "wd-held").get("restarts_in_window", 0) >= 3, 5)
    # On a loaded machine a probe can already time out while the app boots from those restarts, and
    # that failure opens the breaker by itself (pid None: stopped). Hang it only if it still runs.
    pid = procs(pm2_home, "wd-held")[0]["pid"]
    if pid:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    opened = wait_until("the breaker to open", lambda: events(tmp_path, "breaker_open", "wd-held"), 15)
    assert "restarts within 60s (max_restarts=2)" in opened[0]["reason"]


def hang(home, name):
    """SIGSTOP the app's process: alive for PM2, silent for the probe (SIGCONT'd by PM2's stop/kill)."""
    pid = procs(home, name)[0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    return pid


def test_a_hold_ends_with_its_holder():
    client = PM2Client(SubprocessRunner(), pm2_home="/nonexistent")
    assert not client.held("x")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        home = "/tmp/devbox-ops-hold-test-%d" % os.getpid()
        client = PM2Client(SubprocessRunner(), pm2_home=home)
        path = client.hold("x", 60)
        assert not client.held("x"), "a process never waits for its own hold"
        with open(path, "w") as handle:
            json.dump({"pid": sleeper.pid, "until": time.time() + 60}, handle)
        assert client.held("x")
        with open(path, "w") as handle:
            json.dump({"pid": sleeper.pid, "until": time.time() - 1}, handle)
        assert not client.held("x"), "past its deadline"
        with open(path, "w") as handle:
            json.dump({"pid": sleeper.pid, "until": time.time() + 60}, handle)
        sleeper.kill()
        sleeper.wait()
        assert not client.held("x"), "its holder is gone"
        client.unhold("x")
        assert not os.path.exists(path)
    finally:
        sleeper.kill()
        shutil.rmtree("/tmp/devbox-ops-hold-test-%d" % os.getpid(), ignore_errors=True)


def test_errored_app_is_revived_after_the_cooldown(tmp_path, pm2_home, app_files, cleanup_apps, watchdog):
    port = free_port()
    cleanup_apps.append("wd-errored")
    # PM2 gives up after 1 unstable restart: status errored, for good as far as PM2 is concerned
    errored_app(tmp_path, pm2_home, app_files, "wd-errored", port)
    wd = watchdog(write_config(tmp_path, pm2_home, [http_app("wd-errored", port, grace_s=0.5,
                                                             restart_budget={"cooldown_s": 0.5})]))
    opened = wait_until("the breaker to open", lambda: events(tmp_path, "breaker_open", "wd-errored"), 5)
    assert "status errored" in opened[0]["reason"]
    wait_until("the breaker to close", lambda: events(tmp_path, "breaker_close", "wd-errored"), 8)
    revive = events(tmp_path, "revive", "wd-errored")
    assert len(revive) == 1 and revive[0]["ts"] > opened[0]["ts"]
    assert procs(pm2_home, "wd-errored")[0]["status"] == "online" and serving(port)
    wd.stop()


def errored_app(tmp_path, pm2_home, app_files, name, port):
    """An app PM2 gave up on (status errored) whose script is then fixed: the next start serves."""
    script = tmp_path / (name + ".js")
    shutil.copy(str(app_files["crash.js"]), str(script))
    start_app(pm2_home, name, script, crashing=True, env={"PORT": port}, max_restarts=1, min_uptime="5s")
    wait_until("PM2 to give up", lambda: procs(pm2_home, name)[0]["status"] == "errored", 10)
    shutil.copy(str(app_files["server.js"]), str(script))


def test_an_operator_restart_while_the_breaker_is_open_is_the_trial(
        tmp_path, pm2_home, app_files, cleanup_apps, watchdog):
    """heal.yml restarts an app whose breaker is open: the watchdog judges that start, it does not restart
    the app again at the end of its cooldown, and closes the breaker once the app passes a probe."""
    port = free_port()
    cleanup_apps.append("wd-optrial")
    errored_app(tmp_path, pm2_home, app_files, "wd-optrial", port)
    wd = watchdog(write_config(tmp_path, pm2_home, [http_app("wd-optrial", port, grace_s=0.5,
                                                             restart_budget={"cooldown_s": 600})]))
    wait_until("the breaker to open", lambda: events(tmp_path, "breaker_open", "wd-optrial"), 5)
    operator_restarts(pm2_home, "wd-optrial", 1)
    closed = wait_until("the breaker to close", lambda: events(tmp_path, "breaker_close", "wd-optrial"), 8)
    assert closed[0]["reason"] == "healthy after the operator's restart", closed
    assert not events(tmp_path, "revive", "wd-optrial"), "the watchdog restarted an app the operator had started"
    wait_until("the state file to say closed",
               lambda: app_state(tmp_path, "wd-optrial")["breaker"]["state"] == "closed", 2)
    assert procs(pm2_home, "wd-optrial")[0]["status"] == "online" and serving(port)
    wd.stop()


def test_an_operator_restart_during_the_half_open_trial_is_not_a_relapse(
        tmp_path, pm2_home, app_files, cleanup_apps, watchdog):
    """The watchdog revives the app (half-open) and heal.yml restarts it during the trial's grace: that
    restart is the operator's, not the app restarting again, so the breaker closes instead of stopping
    the app heal.yml just started (CI saw heal.yml fail that way)."""
    port = free_port()
    cleanup_apps.append("wd-relapse")
    errored_app(tmp_path, pm2_home, app_files, "wd-relapse", port)
    wd = watchdog(write_config(tmp_path, pm2_home, [http_app("wd-relapse", port, grace_s=6,
                                                             restart_budget={"cooldown_s": 0.5})]))
    wait_until("a half-open revive", lambda: events(tmp_path, "revive", "wd-relapse"), 8)
    wait_until("the state file to say half-open",
               lambda: app_state(tmp_path, "wd-relapse")["breaker"]["state"] == "half_open", 2)
    operator_restarts(pm2_home, "wd-relapse", 1)
    wait_until("the breaker to close", lambda: events(tmp_path, "breaker_close", "wd-relapse"), 15)
    assert len(events(tmp_path, "breaker_open", "wd-relapse")) == 1, "the operator's restart reopened it"
    assert len(events(tmp_path, "revive", "wd-relapse")) == 1
    assert procs(pm2_home, "wd-relapse")[0]["status"] == "online" and serving(port)
    wd.stop()


def test_an_operator_stop_while_the_breaker_is_open_closes_it_and_the_app_stays_stopped(
        tmp_path, pm2_home, app_files, cleanup_apps, watchdog):
    port = free_port()
    receiver = Receiver()
    cleanup_apps.append("wd-opstop")
    errored_app(tmp_path, pm2_home, app_files, "wd-opstop", port)
    wd = watchdog(write_config(tmp_path, pm2_home, [http_app("wd-opstop", port, restart_budget={"cooldown_s": 15})],
                               notifiers=[{"kind": "generic", "url": receiver.url}]))
    try:
        opened = wait_until("the breaker to open", lambda: events(tmp_path, "breaker_open", "wd-opstop"), 5)
        operator_restarts(pm2_home, "wd-opstop", 1, state="stopped")
        closed = wait_until("the breaker to close", lambda: events(tmp_path, "breaker_close", "wd-opstop"), 5)
        assert closed[0]["reason"] == "stopped by an operator action", closed
        # past the retry time the breaker had: no revive, the app stays as the operator left it
        time.sleep(max(0, parse_time(opened[0]["retry_at"]).timestamp() + 2 - time.time()))
        assert not events(tmp_path, "revive", "wd-opstop")
        assert procs(pm2_home, "wd-opstop")[0]["status"] == "stopped" and not serving(port)
        assert app_state(tmp_path, "wd-opstop")["breaker"]["state"] == "closed"
        wait_until("the all-clear alert", lambda: len(receiver.received) >= 2, 5)
    finally:
        receiver.close()
    assert [a["result"] for a in receiver.received if a["type"] == "alert"] == ["breaker_open", "ok"]
    wd.stop()


# ------------------------------------------------------------------------------- resource rules

def test_memory_limit_restarts_the_app(tmp_path, pm2_home, app_files, cleanup_apps, watchdog):
    port = free_port()
    flag = tmp_path / "hog"
    flag.write_text("once")
    cleanup_apps.append("wd-hog")
    before = start_app(pm2_home, "wd-hog", app_files["server.js"], env={"PORT": port, "HOG": str(flag)})[0]
    assert not flag.exists() and before["memory"] > 96 * 2 ** 20
    wd = watchdog(write_config(tmp_path, pm2_home, [http_app("wd-hog", port, max_memory="80M")]))
    restart = wait_until("a memory restart", lambda: events(tmp_path, "restart", "wd-hog"), 8)
    assert restart[0]["reason"].startswith("memory: rss ") and "> max_memory 83886080" in restart[0]["reason"]
    rss = wait_until("a measure of the new process", lambda: app_state(tmp_path, "wd-hog")["actions"] and
                     app_state(tmp_path, "wd-hog")["rss"], 5)
    assert rss < 80 * 2 ** 20
    after = procs(pm2_home, "wd-hog")[0]
    assert after["pid"] != before["pid"] and after["memory"] < 80 * 2 ** 20
    assert len(events(tmp_path, "restart", "wd-hog")) == 1
    wd.stop()


def test_autoscale_up_on_cpu_then_down(tmp_path, pm2_home, app_files, cleanup_apps, watchdog):
    burn = tmp_path / "burn"
    cleanup_apps.append("wd-scale")
    start_app(pm2_home, "wd-scale", app_files["burn.js"], env={"BURN": str(burn)}, exec_mode="cluster")
    scale = {"min": 1, "max": 2, "up_cpu": 40, "down_cpu": 10, "periods": 2, "cooldown_s": 1}
    wd = watchdog(write_config(tmp_path, pm2_home, [dict(name="wd-scale", grace_s=0, autoscale=scale)]))
    time.sleep(1.0)
    assert len(procs(pm2_home, "wd-scale")) == 1, "idle: no scale up"
    burn.write_text("on")
    up = wait_until("a scale up", lambda: events(tmp_path, "scale", "wd-scale"), 8)
    assert up[0]["instances_from"] == 1 and up[0]["instances_to"] == 2 and up[0]["result"] == "ok"
    assert len(procs(pm2_home, "wd-scale")) == 2
    burn.unlink()
    down = wait_until("a scale down", lambda: events(tmp_path, "scale", "wd-scale")[1:], 8)
    assert down[0]["instances_from"] == 2 and down[0]["instances_to"] == 1
    assert len(procs(pm2_home, "wd-scale")) == 1
    wd.stop()


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "devbox-ops-test", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_critical_disk_cleans_only_the_configured_paths_then_alerts(tmp_path, pm2_home, tmpfs):
    old = time.time() - 7200
    MiB = 2 ** 20

    def put(rel, size, mtime=None):
        path = tmpfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        if mtime:
            os.utime(str(path), (mtime, mtime))
        return path

    put("cache/a.bin", int(1.2 * MiB))
    put("cache/sub/b.bin", MiB // 2)
    put("cache/keep.txt", 1000)
    put("logs/app.log.1", MiB, old)
    put("logs/app.log.2", 1000, old)
    put("logs/app.log", MiB // 2)          # current log: too young
    decoy = put("decoy/c.bin", MiB // 2)   # matches a pattern, but outside every root
    os.symlink(str(tmpfs / "decoy"), str(tmpfs / "cache" / "linked-dir"))
    os.symlink(str(decoy), str(tmpfs / "cache" / "linked.bin"))
    clean = [{"root": str(tmpfs / "cache"), "patterns": ["*.bin"]},
             {"root": str(tmpfs / "logs"), "patterns": ["app.log.*"], "older_than_s": 3600, "larger_than": "10K"}]
    path = write_config(tmp_path, pm2_home, disk={"paths": [str(tmpfs)], "critical": 80, "clean": clean})
    wd = wdmod.Watchdog(path)
    before = shutil.disk_usage(str(tmpfs))
    assert before.used * 100.0 / before.total >= 80
    wd.tick()
    wd.drain(30)
    wd.close()

    gone = ["cache/a.bin", "cache/sub/b.bin", "logs/app.log.1"]
    kept = ["cache/keep.txt", "logs/app.log.2", "logs/app.log", "decoy/c.bin"]
    assert [p for p in gone if os.path.lexists(str(tmpfs / p))] == []
    assert [p for p in kept if not os.path.exists(str(tmpfs / p))] == []
    assert os.path.islink(str(tmpfs / "cache" / "linked-dir")) and os.path.islink(str(tmpfs / "cache" / "linked.bin"))
    report = read_state(tmp_path)["disk"]["last_cleanup"]
    assert report["files"] == 3 and report["bytes"] >= int(2.7 * MiB) and report["errors"] == []
    assert report["freed"][str(tmpfs)] >= int(2.7 * MiB) and report["percent_after"][str(tmpfs)] < 80
    assert events(tmp_path, "cleanup")[0]["files"] == 3
    alert = events(tmp_path, "alert", str(tmpfs))
    assert len(alert) == 1 and alert[0]["result"] == "critical" and "cleaned 3 files" in alert[0]["message"]


def test_retention_rules_run_on_their_schedule_whatever_the_disk_level(tmp_path, pm2_home):
    """A rule with every_s (log retention) runs at start and then every every_s, with the disk far from full."""
    logs = tmp_path / "logs"
    logs.mkdir()
    old, young = logs / "app-out__2020-01-01_00-00-00.log.gz", logs / "app-out__2099-01-01_00-00-00.log.gz"
    current, other = logs / "app.out.log", tmp_path / "elsewhere.log.gz"
    for path in (old, young, current, other):
        path.write_bytes(b"x" * 100)
    stale = time.time() - 10 * 86400
    for path in (old, current, other):
        os.utime(str(path), (stale, stale))
    clean = [{"root": str(logs), "patterns": ["*__*.log*"], "older_than_s": 86400, "every_s": 3600}]
    path = write_config(tmp_path, pm2_home, disk={"paths": [str(tmp_path)], "critical": 100, "clean": clean})
    wd = wdmod.Watchdog(path)
    try:
        wd.tick()
        wd.drain(30)
        assert not old.exists() and young.exists() and current.exists() and other.exists()
        report = read_state(tmp_path)["disk"]["last_retention"]
        assert report["files"] == 1 and report["roots"] == [str(logs)]
        assert read_state(tmp_path)["disk"]["last_cleanup"] is None  # not a critical-disk cleanup
        assert [e["reason"] for e in events(tmp_path, "cleanup")] == ["retention"]
        again = logs / "app-out__2020-01-02_00-00-00.log.gz"
        again.write_bytes(b"x")
        os.utime(str(again), (stale, stale))
        wd.tick()
        wd.drain(30)
        assert again.exists(), "the rule waits for every_s before it runs again"
    finally:
        wd.close()


def test_the_monitoring_role_ships_exactly_the_engines():
    with open(os.path.join(REPO, "roles", "monitoring", "vars", "main.yml")) as handle:
        shipped = yaml.safe_load(handle)["devbox_monitoring_engines"]
    assert tuple(shipped) == wdmod.ENGINES


# ------------------------------------------------------------------------------ PM2 daemon gone

def test_never_starts_a_daemon_and_resurrects_a_dead_one(tmp_path, app_files):
    home = str(tmp_path / "pm2")
    path = write_config(tmp_path, home, [http_app("wd-py", 0, liveness=None)])
    wd = wdmod.Watchdog(path)
    wd.tick()
    assert not os.path.exists(os.path.join(home, "pm2.pid")), "no daemon was started"
    assert "no dump to resurrect" in read_state(tmp_path)["pm2"]["note"]
    try:
        port = free_port()
        before = start_app(home, "wd-py", app_files["server.py"], interpreter=sys.executable, env={"PORT": port})[0]
        assert pm2(home, "save", "--force").returncode == 0
        wd.tick()  # sees the app
        daemon = PM2Client(SubprocessRunner(), pm2_home=home).daemon_pid()
        os.kill(daemon, signal.SIGKILL)
        time.sleep(0.5)
        assert serving(port), "a Python app outlives PM2's daemon and still holds its port"
        wd.tick()
        wd.drain(30)
        after = wait_until("the app online again", lambda: [p for p in procs(home, "wd-py") if p["status"] == "online"], 10)
        assert after[0]["pid"] != before["pid"] and not os.path.exists("/proc/%d" % before["pid"])
        wait_until("the app to serve", lambda: serving(port), 5)
        resurrect = events(tmp_path, "resurrect", "pm2")
        assert resurrect[0]["result"] == "ok" and resurrect[0]["orphans_stopped"] == [before["pid"]]
        assert [a["result"] for a in events(tmp_path, "alert", "pm2")] == ["down", "ok", "resurrected"]
    finally:
        wd.close()
        pm2(home, "kill")


# ----------------------------------------------------------------------- config, signals, the loop

def test_config_reloads_without_restart_keeps_last_good_and_exits_on_sigterm(tmp_path, pm2_home):
    path = write_config(tmp_path, pm2_home, period=1.0)
    proc = subprocess.Popen([sys.executable, ENTRY, "--config", path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True)
    try:
        def ticks_in(seconds):
            first = wait_until("a state file", lambda: read_state(tmp_path).get("tick"), 10)
            time.sleep(seconds)
            return read_state(tmp_path)["tick"] - first

        assert ticks_in(1.5) <= 2
        write_config(tmp_path, pm2_home, period=0.2)  # a new mtime: picked up at the next tick
        wait_until("the new period", lambda: read_state(tmp_path).get("period") == 0.2, 3)
        assert ticks_in(1.5) >= 5
        assert read_state(tmp_path)["pid"] == proc.pid

        stat = os.stat(path)
        with open(path, "w") as handle:
            json.dump({"period": 0.2, "apps": [{"name": "x", "restart_budget": {"max_restarts": 0}}]}, handle)
        error = wait_until("the rejection", lambda: read_state(tmp_path)["config"]["error"], 3)
        assert "apps[0].restart_budget.max_restarts=0: must be >= 1" in error["error"]
        assert read_state(tmp_path)["period"] == 0.2 and proc.poll() is None, "the last good config runs on"
        assert events(tmp_path, "config")[-1]["result"] == "rejected"

        write_config(tmp_path, pm2_home, period=0.5)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime/size? SIGHUP reloads anyway
        proc.send_signal(signal.SIGHUP)
        wait_until("the SIGHUP reload", lambda: read_state(tmp_path).get("period") == 0.5, 3)
        assert read_state(tmp_path)["config"]["error"] is None

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        out = proc.stdout.read()
        assert "watchdog stopped" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_loop_survives_errors(tmp_path, pm2_home):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state directory should be")
    path = write_config(tmp_path, pm2_home, state_file=str(blocker / "state.json"),
                        notifiers=[{"kind": "generic", "url": "http://127.0.0.1:%d/" % free_port(), "timeout": 1}])
    wd = wdmod.Watchdog(path)
    thread = threading.Thread(target=wd.run, daemon=True)
    thread.start()
    try:
        wait_until("a few failing ticks", lambda: wd.ticks >= 3, 5)
        assert thread.is_alive() and wd.errors and "blocker" in json.dumps(list(wd.errors))
        wd.alert("test", "bad", "delivery to a closed port fails")
        blocker.unlink()
        blocker.mkdir()
        wait_until("the state file", lambda: os.path.exists(str(blocker / "state.json")), 5)
        assert thread.is_alive()
    finally:
        wd.stop()
        thread.join(10)
        wd.close()
    assert wd.alerts_sent == 0


BAD_CONFIGS = [
    ({"period": 0}, "period=0: must be > 0"),
    ({"perod": 5}, "perod=5: unknown option"),
    ({"apps": [{"name": "all"}]}, "apps[0].name='all'"),
    ({"apps": [{"name": "a"}, {"name": "a"}]}, "apps[1].name='a': is listed twice"),
    ({"apps": [{"name": "a", "liveness": {"url": "ftp://x"}}]}, "apps[0].liveness.url='ftp://x'"),
    ({"apps": [{"name": "a", "liveness": {"port": 80, "timeout": -1}}]}, "apps[0].liveness.timeout=-1"),
    ({"apps": [{"name": "a", "grace_s": "soon"}]}, "apps[0].grace_s='soon': must be a number"),
    ({"apps": [{"name": "a", "max_memory": "lots"}]}, "apps[0].max_memory='lots'"),
    ({"apps": [{"name": "a", "autoscale": {"min": 3, "max": 2}}]}, "apps[0].autoscale.max=2: must be >= 3"),
    ({"apps": [{"name": "a", "autoscale": {"up_cpu": 50, "down_cpu": 60}}]}, "apps[0].autoscale.down_cpu=60"),
    ({"disk": {"clean": [{"root": "/", "patterns": ["*"]}]}}, "disk.clean[0].root='/': is a system directory"),
    ({"disk": {"clean": [{"root": "/srv/x", "patterns": ["../*"]}]}}, "disk.clean[0].patterns='../*'"),
    ({"disk": {"critical": 120}}, "disk.critical=120: must be > 0 and <= 100"),
    ({"disk": {"paths": ["/no/such/dir"]}}, "disk.paths[0]='/no/such/dir': does not exist"),
    ({"notifiers": [{"kind": "pager", "url": "http://x"}]}, "notifiers[0].kind='pager'"),
    ({"pm2": {"executable": "/no/pm2"}}, "pm2.executable='/no/pm2': PM2 not found"),
]


@pytest.mark.parametrize("config,message", BAD_CONFIGS)
def test_bad_config_names_the_field_and_the_value(tmp_path, config, message):
    path = tmp_path / "watchdog.json"
    path.write_text(json.dumps(config))
    with pytest.raises(DevboxOpsError) as caught:
        wdmod.Watchdog(str(path))
    assert message in str(caught.value)
    assert not os.path.exists(str(tmp_path / "state.json")), "nothing changed"


def test_shipped_layout_runs_with_the_hosts_python(tmp_path, pm2_home):
    """The role's layout: the entry point plus the ENGINES under lib/, run by the system python3."""
    lib = tmp_path / "watchdog" / "lib" / "ansible_collections" / "devbox" / "ops" / "plugins" / "module_utils"
    lib.mkdir(parents=True)
    for name in wdmod.ENGINES:
        shutil.copy(os.path.join(REPO, "plugins", "module_utils", name + ".py"), str(lib))
    shutil.copy(ENTRY, str(tmp_path / "watchdog"))
    path = write_config(tmp_path, pm2_home)
    env = dict((k, v) for k, v in os.environ.items() if k not in ("PYTHONPATH",))
    run = subprocess.run(["/usr/bin/python3", str(tmp_path / "watchdog" / "devbox-ops-watchdog"), "--config", path,
                          "--once"], env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout
    assert read_state(tmp_path)["tick"] == 1 and read_state(tmp_path)["errors"] == []
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"period": "fast"}))
    check = subprocess.run(["/usr/bin/python3", str(tmp_path / "watchdog" / "devbox-ops-watchdog"), "--config",
                            str(bad), "--check"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=60, check=False)
    assert check.returncode == 2 and "period='fast': must be a number" in check.stdout
