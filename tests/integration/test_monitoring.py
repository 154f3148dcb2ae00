# SPDX-License-Identifier: GPL-3.0-or-later
"""The monitoring role, heal.yml and selftest.yml against a simulated devbox, for real.

One s6 host (devbox101, 10.213.101.2) made by tests/harness in a state dir of its own, two small stdlib
Python apps (`web`, and `storm`, which a test breaks so that it crashes at start), a watchdog with short
periods, and a generic JSON webhook receiver on the machine side of the host's link (10.213.101.1), so
alerts cross a real network. A 2 MB tmpfs mounted inside the host's mount namespace is the disk that fills
up. The tests run in file order and share the host. Needs root (the harness makes namespaces).
"""
import datetime
import json
import os
import pwd
import re
import subprocess
import time
import urllib.request

import pytest

from test_deploy import REPO, Ansible, Host, Receiver, changed_tasks, debug_msgs, failure_messages, write_inventory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = Host("/var/tmp/devbox-ops-it-monitoring", 101)
WATCHDOG = "devbox-ops-watchdog"
CANARY = "wdhooktoken-5c1e93a7f2"  # in the webhook URL: must never be printed
CACHE = "/home/devbox/cache-test"   # the tmpfs, inside the host's mount namespace
LOGS = "/home/devbox/.devbox-ops/logs"  # rotated logs past retention are cleaned there (every_s rule)
APP_PY = """\
import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok", "pid": os.getpid()}).encode()
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""
CRASH_PY = "import sys\nsys.stderr.write('storm: cannot start\\n')\nsys.exit(3)\n"
FAST = {"grace_s": 2, "liveness": {"period": 1, "timeout": 1, "failure_threshold": 2}}
BUDGET = {"max_restarts": 3, "window_s": 60, "cooldown_s": 10}
ROLE_ONLY = """\
- name: The monitoring role alone
  hosts: devboxes
  gather_facts: false
  roles:
    - devbox.ops.monitoring
"""


# ------------------------------------------------------------------------------------------ helpers

def state():
    with open(HOST.path(".devbox-ops/watchdog/state.json")) as f:
        return json.load(f)


def events(type=None, target=None):  # pylint: disable=redefined-builtin
    try:
        with open(HOST.path(".devbox-ops/events.jsonl")) as f:
            found = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return [e for e in found if (type is None or e["type"] == type) and (target is None or e["target"] == target)]


def jlist():
    out = HOST.sh("pm2", "jlist")
    return json.loads([ln for ln in out.splitlines() if ln.startswith("[")][-1])


def proc(name):
    found = [p for p in jlist() if p["name"] == name]
    return found[0] if found else None


def wait(what, check, timeout, step=0.3):
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            last = repr(exc)
        time.sleep(step)
    raise AssertionError("%s: not within %ss (last: %r)" % (what, timeout, last))


def healthy(port):
    try:
        with urllib.request.urlopen("http://%s:%d/health" % (HOST.ip, port), timeout=1) as resp:  # noqa: S310
            return resp.status == 200
    except OSError:
        return False


def host_file(path, text, user="devbox"):
    """Write a file inside the host (its mount namespace) through the harness, without a shell."""
    HOST.sh("python3", "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", path, text, user=user)


def sha256_on_host(path):
    return HOST.sh("sha256sum", path).split()[0]


def apps(sources, storm_budget=None):
    return [
        {"name": "web", "src": sources, "port": 8101, "script": "app.py", "interpreter": "python3",
         "health": {"path": "/health"}, "monitoring": dict(FAST, restart_budget={"cooldown_s": 30})},
        {"name": "storm", "src": sources, "cwd": "/home/devbox/project/storm", "port": 8102, "script": "storm.py",
         "interpreter": "python3", "restart_delay": 1000, "health": {"path": "/health"},
         "monitoring": dict(FAST, restart_budget=storm_budget or BUDGET)},
    ]


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the harness makes namespaces: run these tests as root (a skip would hide them)", pytrace=False)
    HOST.up()
    receiver = None
    try:
        receiver = Receiver(HOST.root_ip)
        src = str(tmp_path_factory.mktemp("apps") / "src")
        os.makedirs(src)
        for name in ("app.py", "storm.py"):
            with open(os.path.join(src, name), "w") as f:
                f.write(APP_PY)
        HOST.sh("mkdir", "-p", CACHE)
        HOST.sh("mount", "-t", "tmpfs", "-o", "size=2m,mode=0755,uid=%d" % pwd.getpwnam("devbox").pw_uid,
                "devbox-ops-it-monitoring", CACHE, user="root")
        directory = str(tmp_path_factory.mktemp("inventory"))
        inv = write_inventory(
            directory, HOST, apps(src),
            devbox_monitoring_period=1, devbox_monitoring_metrics_period=1,
            devbox_monitoring_notifiers=[{"kind": "generic", "url": "%s?token=%s" % (receiver.url, CANARY),
                                          "timeout": 5}],
            devbox_monitoring_disk_paths=["/home/devbox", CACHE], devbox_monitoring_disk_warning=80,
            devbox_monitoring_disk_critical=90,
            devbox_monitoring_clean=[{"root": CACHE + "/cache", "patterns": ["*"]}])
        role_only = os.path.join(directory, "role_only.yml")
        with open(role_only, "w") as f:
            f.write(ROLE_ONLY)
        yield {"ansible": Ansible(inv, HOST.name), "receiver": receiver, "src": src, "dir": directory,
               "role_only": role_only}
    finally:
        if receiver:
            receiver.close()
        HOST.down()


def run_role(world, *extra, env=None):
    """The monitoring role alone (a playbook of one role), as ansible-playbook runs it."""
    argv = [os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "-i", world["ansible"].inventory,
            world["role_only"]] + list(extra)
    proc_ = subprocess.run(argv, cwd=REPO, env=dict(Ansible.env(), **(env or {})), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=600, check=False)
    world["ansible"].outputs.append(proc_.stdout)
    return proc_


# ------------------------------------------------------------------------------------------ tests

def test_site_installs_a_running_watchdog_and_a_second_run_changes_nothing(world):
    ansible = world["ansible"]
    ansible.ok("site.yml")
    wd = proc(WATCHDOG)
    assert wd and wd["pm2_env"]["status"] == "online", wd
    assert wd["pm2_env"]["pm_exec_path"] == "/home/devbox/.devbox-ops/watchdog/devbox-ops-watchdog"
    first = state()
    assert first["pid"] == wd["pid"] and first["config"]["apps"] == ["web", "storm"]
    assert first["config"]["error"] is None and first["errors"] == []
    # the config is private and its webhook token is masked in the state file
    assert oct(os.stat(HOST.path(".devbox-ops/watchdog/watchdog.json")).st_mode & 0o777) == "0o600"
    assert CANARY not in json.dumps(first)
    # the engines are shipped unchanged, in the namespace tree the program imports them from
    lib = HOST.path(".devbox-ops/watchdog/lib/ansible_collections/devbox/ops/plugins/module_utils")
    for name in ("errors", "runner", "pm2", "probe", "metrics", "events", "watchdog"):
        with open(os.path.join(lib, name + ".py"), "rb") as shipped, \
                open(os.path.join(REPO, "plugins", "module_utils", name + ".py"), "rb") as source:
            assert shipped.read() == source.read(), name
    wait("the state file updates", lambda: state()["tick"] >= first["tick"] + 2, 15)
    assert state()["apps"]["web"]["liveness"]["ok"] is True
    # saved in the dump, so boot persistence resurrects it
    with open(HOST.path(".pm2/dump.pm2")) as f:
        assert WATCHDOG in [p["name"] for p in json.load(f)]

    again = ansible.ok("site.yml")
    assert ansible.recap(again)["changed"] == 0, "changed on the second run: %s" % changed_tasks(again)
    assert proc(WATCHDOG)["pid"] == wd["pid"]


def test_check_mode_and_a_config_change_reload_without_a_restart(world):
    config = HOST.path(".devbox-ops/watchdog/watchdog.json")
    with open(config, "rb") as f:
        before = f.read()
    extra = {"devbox_monitoring_clean": [{"root": CACHE + "/cache", "patterns": ["*"]},
                                         {"root": CACHE + "/tmp", "patterns": ["*.tmp"]}]}
    extra_file = os.path.join(world["dir"], "clean2.json")
    with open(extra_file, "w") as f:
        json.dump(extra, f)
    checked = run_role(world, "--check", "-e", "@" + extra_file)
    assert checked.returncode == 0, checked.stdout[-4000:]
    assert "Write watchdog.json" in "\n".join(changed_tasks(checked.stdout))
    with open(config, "rb") as f:
        assert f.read() == before, "check mode wrote the config"

    # Apply the change, then change it back. Other work can edit an engine meanwhile (the role then restarts
    # the watchdog for its new code, rightly): such a run proves nothing about reloading, so try again.
    wanted = {True: [CACHE + "/cache", CACHE + "/tmp", LOGS], False: [CACHE + "/cache", LOGS]}
    clean, with_tmp = 0, True
    for _attempt in range(4):
        pid, reloads = proc(WATCHDOG)["pid"], len(events("config", "watchdog"))
        out = run_role(world, *(["-e", "@" + extra_file] if with_tmp else []))
        assert out.returncode == 0, out.stdout[-4000:]
        changed = changed_tasks(out.stdout)
        if "devbox.ops.monitoring : Copy the engines" not in changed:
            assert changed == ["devbox.ops.monitoring : Write watchdog.json"], changed
            wait("the watchdog reloads its config", lambda: state()["config"]["clean_roots"] == wanted[with_tmp], 15)
            assert proc(WATCHDOG)["pid"] == pid and state()["pid"] == pid, "the watchdog was restarted"
            assert [e["result"] for e in events("config", "watchdog")[reloads:]] == ["reloaded"]
            clean += 1
        with_tmp = not with_tmp
        if clean and with_tmp:  # at least one clean reload, and back to the inventory's config
            break
    assert clean, "every run also shipped new engine code"


def test_bad_monitoring_input_is_named_and_changes_nothing(world):
    config = HOST.path(".devbox-ops/watchdog/watchdog.json")
    with open(config, "rb") as f:
        before = f.read()
    pid = proc(WATCHDOG)["pid"]
    bad_app = os.path.join(world["dir"], "bad_app.json")
    with open(bad_app, "w") as f:
        json.dump({"devbox_apps": apps(world["src"], storm_budget={"max_restarts": 0})}, f)
    cases = [
        (["-e", "devbox_monitoring_period=0"], 'devbox_monitoring_period="0": must be a number >= 0.1'),
        (["-e", "devbox_monitoring_disk_critical=150"], 'devbox_monitoring_disk_critical="150": must be a number >= 1 and <= 100'),
        (["-e", "devbox_monitoring_period=fast"], "devbox_monitoring_period"),
        (["-e", "devbox_monitoring_name=bad/name"], 'devbox_monitoring_name="bad/name"'),
        (["-e", "@" + bad_app], "apps[1].restart_budget.max_restarts=0: must be >= 1"),
    ]
    for extra, message in cases:
        out = run_role(world, *extra)
        assert out.returncode != 0, "%s was accepted" % extra
        msgs = failure_messages(out.stdout) or [out.stdout]
        assert any(message in m for m in msgs), (extra, msgs)
    with open(config, "rb") as f:
        assert f.read() == before, "a rejected run changed the config"
    assert proc(WATCHDOG)["pid"] == pid
    assert "web, storm" in [m for m in failure_messages(out.stdout) if "max_restarts" in m][0]


def test_restart_storm_opens_the_breaker_alerts_once_retries_and_recovers_once_fixed(world):
    receiver, script = world["receiver"], "/home/devbox/project/storm/storm.py"
    wait("storm is healthy", lambda: healthy(8102), 20)
    before = proc("storm")["pm2_env"]["restart_time"]
    seen = dict((t, len(events(t, "storm"))) for t in ("breaker_open", "revive"))
    host_file(script, CRASH_PY)
    HOST.sh("pm2", "restart", "storm")  # a bad release: it now crashes at start
    opened = wait("the breaker opens", lambda: events("breaker_open", "storm")[seen["breaker_open"]:], 40)[0]
    # The watchdog decides at the budget (3 in 60 s), at most one look (1 s) late: PM2 restarts by itself in
    # between (docs/watchdog.md, Limits). PM2 goes on restarting until `pm2 stop` returns, which takes seconds
    # on a loaded machine: that part is counted below, and must stop once the app is stopped.
    decided = int(re.match(r"^(\d+) restarts within 60s \(max_restarts=3\)$", opened["reason"]).group(1))
    assert 3 <= decided <= 3 + 2, opened
    stopped = wait("storm is stopped", lambda: proc("storm")["pm2_env"]["status"] == "stopped" and proc("storm"), 15)
    # the cooldown: left stopped (PM2's counter does not move), then retried
    retry_at = datetime.datetime.strptime(opened["retry_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    time.sleep(max(0.0, min(2.0, retry_at - time.time() - 4)))
    still = proc("storm")["pm2_env"]
    if time.time() < retry_at - 0.2:  # looked before the retry could start
        assert (still["status"], still["restart_time"]) == ("stopped", stopped["pm2_env"]["restart_time"]), \
            (still["status"], still["restart_time"])
    revive = wait("a retry after the cooldown", lambda: events("revive", "storm")[seen["revive"]:], 30)
    assert revive[0]["ts"] > opened["ts"]
    wait("open again after the failed retry", lambda: len(events("breaker_open", "storm")) >= seen["breaker_open"] + 2, 20)
    time.sleep(1)
    alerts = receiver.of(type="alert", target="storm")
    assert [a["result"] for a in alerts] == ["breaker_open"], alerts  # exactly one alert for the storm
    assert alerts[0]["host"] == HOST.name and "max_restarts=3" in alerts[0]["message"]
    assert stopped["pm2_env"]["restart_time"] > before

    host_file(script, APP_PY)  # fixed; nobody touches PM2
    wait("storm comes back by itself", lambda: healthy(8102), BUDGET["cooldown_s"] * 2 + 20)
    wait("the breaker closes", lambda: state()["apps"]["storm"]["breaker"]["state"] == "closed", 20)
    wait("a recovery alert", lambda: [a["result"] for a in receiver.of(type="alert", target="storm")]
         == ["breaker_open", "ok"], 10)


def test_full_disk_cleans_the_configured_paths_only(world):
    receiver = world["receiver"]
    HOST.sh("mkdir", "-p", CACHE + "/cache/sub", CACHE + "/keep")
    keep = {CACHE + "/keep/precious.bin": 300, CACHE + "/keep/notes.bin": 40}
    for path, kib in keep.items():
        HOST.sh("dd", "if=/dev/urandom", "of=" + path, "bs=1k", "count=%d" % kib, "status=none")
    digests = dict((path, sha256_on_host(path)) for path in keep)
    mtimes = dict((path, HOST.sh("stat", "-c", "%Y %s", path).strip()) for path in keep)
    HOST.sh("dd", "if=/dev/zero", "of=%s/cache/a.bin" % CACHE, "bs=1k", "count=900", "status=none")  # 60% used
    # Then 95% at once: fallocate is one call. With dd the watchdog could look while the file was still being
    # written, clean a.bin alone and leave b.bin, below critical again (CI saw "files": 1).
    HOST.sh("fallocate", "-l", "700KiB", CACHE + "/cache/sub/b.bin")
    report = wait("the cleanup", lambda: (state()["disk"]["last_cleanup"] or {}).get("mounts") == [CACHE]
                  and state()["disk"]["last_cleanup"], 20)
    assert report["files"] == 2 and report["errors"] == [] and report["percent_after"][CACHE] < 90
    assert HOST.sh("find", CACHE + "/cache", "-type", "f").strip() == ""
    for path in keep:
        assert sha256_on_host(path) == digests[path] and HOST.sh("stat", "-c", "%Y %s", path).strip() == mtimes[path]
    alert = wait("the disk alert", lambda: receiver.of(type="alert", target=CACHE), 10)
    assert alert[0]["result"] == "critical" and "cleaned 2 files" in alert[0]["message"]


def test_heal_fails_naming_what_it_cannot_heal_then_passes_once_healthy(world):
    ansible = world["ansible"]
    wait("both apps healthy", lambda: healthy(8101) and healthy(8102), 30)
    ok = ansible.ok("heal.yml")
    assert ansible.recap(ok)["changed"] == 0, changed_tasks(ok)

    # web is stopped and its script is gone: the watchdog leaves a stopped app alone, heal.yml cannot start it
    HOST.sh("pm2", "stop", "web")
    os.rename(HOST.path("project/web/app.py"), HOST.path("project/web/app.py.away"))
    env = {"USER": "ops-tester", "AWX_JOB_ID": "4242"}
    proc_ = subprocess.run(ansible.argv("heal.yml"), cwd=REPO, env=dict(Ansible.env(), **env), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=600, check=False)
    ansible.outputs.append(proc_.stdout)
    assert proc_.returncode != 0, proc_.stdout[-3000:]
    msg = [m for m in failure_messages(proc_.stdout) if m.startswith("could not heal")]
    assert msg and msg[0].startswith("could not heal on devbox101: web (") and "storm" not in msg[0].split("(")[0], msg
    heal = events("heal", "web")[-1]
    assert heal["result"] == "failed" and heal["actor"] == {"user": "ops-tester", "awx_job_id": "4242"}, heal

    os.rename(HOST.path("project/web/app.py.away"), HOST.path("project/web/app.py"))
    HOST.sh("pm2", "stop", "web")
    healed = ansible.ok("heal.yml")
    # heal.yml restarts web, unless the watchdog revived it first (PM2 records a non-zero exit for the SIGINT
    # of `pm2 stop`, which the watchdog treats as a crash): either way heal.yml exits 0 once all are healthy
    [report] = debug_msgs(healed, "Report")
    assert report in ("healed: web on devbox101", "all apps healthy on devbox101"), report
    assert healthy(8101)
    if report.startswith("healed"):
        assert events("heal", "web")[-1]["result"] == "ok"
    again = ansible.ok("heal.yml")
    assert ansible.recap(again)["changed"] == 0 and debug_msgs(again, "Report") == ["all apps healthy on devbox101"]


def test_selftest_reports_recovery_times_for_kill_and_hang(world):
    ansible = world["ansible"]
    wait("web healthy", lambda: healthy(8101), 30)
    out = ansible.ok("selftest.yml", "-e", "app=web", "-e", "limit=20")
    [lines] = debug_msgs(out, "Report the recovery times")
    times = dict(re.match(r"^web (kill|hang): recovered in ([0-9.]+) s$", line).groups() for line in lines)
    assert set(times) == {"kill", "hang"}, lines
    # kill: PM2 restarts it; hang: the watchdog (period 1 s, failure_threshold 2, timeout 1 s) must
    assert float(times["kill"]) <= 3 and float(times["hang"]) <= 12, times
    # the watchdog records its restart once PM2 says the new process is up: that can come after the answer
    wait("the watchdog's restart of the hung app in the event log",
         lambda: [e for e in events("restart", "web") if "liveness" in e.get("reason", "")], 30)
    bad = ansible.fails("selftest.yml", "-e", "faults=kill,nuke")
    assert 'faults="kill,nuke": must be kill, hang or kill,hang' in bad, bad[-2000:]  # a loop item failed


def test_reboot_brings_the_watchdog_back_with_the_apps(world):
    old = state()["pid"]
    HOST.harness("reboot", HOST.name)
    wd = wait("the watchdog is back", lambda: (proc(WATCHDOG) or {}).get("pm2_env", {}).get("status") == "online"
              and proc(WATCHDOG), 90, step=1)
    wait("its state file is written by the new process", lambda: state()["pid"] == wd["pid"] != old, 30)
    # PM2's resurrect starts them once the boot hook runs; on a loaded 2-core CI machine that took > 30 s
    wait("the apps serve", lambda: healthy(8101) and healthy(8102), 90)


def test_bad_playbook_input_is_named(world):
    ansible = world["ansible"]
    for playbook, extra, message in (
            ("heal.yml", json.dumps({"app": "x;rm -rf ~"}), 'app="x;rm -rf ~": must be an app name'),
            ("heal.yml", "heal_wait=0", 'heal_wait="0": must be a whole number of seconds from 1 to 600'),
            ("heal.yml", "app=nosuch", "app=nosuch: no such app in devbox_apps (known: web, storm"),
            ("selftest.yml", "limit=soon", 'limit="soon": must be a number of seconds from 1 to 600'),
            ("selftest.yml", "app=nosuch", "app=nosuch: no such app in devbox_apps")):
        out = ansible.fails(playbook, "-e", extra)
        assert message in out or any(message in m for m in failure_messages(out)), (playbook, extra, out[-2000:])


def test_the_webhook_token_is_never_printed(world):
    assert world["ansible"].outputs
    for out in world["ansible"].outputs:
        assert CANARY not in out
    assert all(CANARY not in json.dumps(e) for e in events())
