# SPDX-License-Identifier: GPL-3.0-or-later
"""site.yml, manage.yml and status.yml against a simulated devbox (tests/harness), for real.

One s6 host (devbox1, 10.213.1.2) made by the harness in a state dir of its own, the demo apps of
examples/inventory/group_vars/devboxes.yml, and ansible-playbook run as a user would run it. The tests
run in file order and share the host: converge, converge again (no change), crash recovery, scaling
under traffic, status output, a reboot without Ansible, rejected inputs, and the secret canary.
Needs root (the harness makes namespaces).
"""
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(REPO, "tests", "harness", "harness")
PLAYBOOK = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
GROUP_VARS = os.path.join(REPO, "examples", "inventory", "group_vars")
STATE = "/var/tmp/devbox-ops-it-playbooks"
HOST, IP = "devbox1", "10.213.1.2"
NODE, PY = "http://%s:3000/api/health" % IP, "http://%s:8000/api/health" % IP
CANARY = "demo-secret-not-for-prod"
RECAP = re.compile(r"^%s\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)" % HOST, re.M)

OUTPUTS = []  # every ansible-playbook output of this module, for the canary test


def harness(*args, timeout=240):
    env = dict(os.environ, DEVBOX_HARNESS_DIR=STATE)
    proc = subprocess.run([HARNESS] + list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout, check=False)
    assert proc.returncode == 0, "harness %s: rc %d\n%s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def host_pm2():
    """[(name, pm_id, pid, status)] from `pm2 jlist` on the host (env is never kept or shown)."""
    out = harness("exec", HOST, "--user", "devbox", "--", "pm2", "jlist")
    line = [ln for ln in out.splitlines() if ln.startswith("[")][-1]
    return [(p["name"], p["pm_id"], p["pid"], p["pm2_env"]["status"]) for p in json.loads(line)]


def get_json(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed http URL
        return resp.status, json.loads(resp.read().decode("utf-8"))


def wait_healthy(url, timeout=60):
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            status, body = get_json(url)
            if status == 200 and body.get("status") == "ok":
                return body
            last = "HTTP %s %r" % (status, body)
        except (OSError, ValueError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError("%s not healthy after %ss: %s" % (url, timeout, last))


class Ansible:
    def __init__(self, inventory):
        self.inventory = inventory

    def run(self, playbook, *extra, env=None):
        full_env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
        full_env.update(env or {})
        argv = [PLAYBOOK, "-i", self.inventory, playbook] + list(extra)
        proc = subprocess.run(argv, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=1200, check=False)
        OUTPUTS.append(proc.stdout)
        return proc

    def ok(self, playbook, *extra):
        proc = self.run(playbook, *extra)
        assert proc.returncode == 0, "%s %s failed (rc %d):\n%s" % (playbook, extra, proc.returncode, proc.stdout[-6000:])
        return proc.stdout


def recap(output):
    match = RECAP.search(output)
    assert match, "no PLAY RECAP line for %s in:\n%s" % (HOST, output[-3000:])
    ok, changed, unreachable, failed = (int(g) for g in match.groups())
    return {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}


def changed_tasks(output):
    """Names of the tasks that reported a change (for a readable failure message)."""
    names, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK [") or line.startswith("RUNNING HANDLER ["):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:") and task and task not in names:
            names.append(task)
    return names


def debug_results(output, task_name):
    """The results printed by the debug task `task_name`, one dict per host or loop item (JSON result format)."""
    results, lines = [], output.splitlines()
    for i, line in enumerate(lines):
        if not (line.startswith("TASK [") and task_name in line):
            continue
        for j in range(i + 1, len(lines)):
            if lines[j].startswith("TASK [") or lines[j].startswith("PLAY RECAP"):
                break
            if lines[j].startswith("ok: [") and lines[j].endswith("=> {"):
                block = ["{"]
                for nxt in lines[j + 1:]:
                    block.append(nxt)
                    if nxt == "}":
                        break
                results.append(json.loads("\n".join(block)))
    assert results, "no output of task %r in:\n%s" % (task_name, output[-3000:])
    return results


def debug_msgs(output, task_name):
    return [r["msg"] for r in debug_results(output, task_name)]


def names(procs, status=None):
    return sorted(p[0] for p in procs if status is None or p[3] == status)


@pytest.fixture(scope="module")
def ansible(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the harness makes namespaces: run these tests as root (a skip would hide them)", pytrace=False)
    harness("up", "1", "--init", "s6")
    try:
        inv = tmp_path_factory.mktemp("inventory")
        shutil.copy(os.path.join(STATE, "inventory.yml"), str(inv / "hosts.yml"))
        os.symlink(GROUP_VARS, str(inv / "group_vars"))  # the demo devbox_apps, as in examples/inventory
        yield Ansible(str(inv / "hosts.yml"))
    finally:
        harness("down")


@pytest.fixture(scope="module")
def converged(ansible):
    return ansible.ok("playbooks/site.yml")


def test_site_converges_and_both_apps_answer_from_the_root_namespace(ansible, converged):
    assert recap(converged)["failed"] == 0
    node, py = wait_healthy(NODE, 10), wait_healthy(PY, 10)
    assert node["version"] == py["version"] == "1.0.0"
    procs = host_pm2()
    # node-app: cluster x2; pm2-logrotate: installed from the offline bundle
    assert names(procs) == names(procs, "online") == ["node-app", "node-app", "pm2-logrotate", "py-app"]
    persistence = debug_results(converged, "Show the boot persistence")[0]["devbox_boot_persistence"]
    assert persistence["method"] == "s6" and persistence["path"] == "/usr/start/devbox-ops-pm2.sh"
    # the ecosystem file holds the secret, so it is private; the boot hook belongs to root
    modes = harness("exec", HOST, "--", "stat", "-c", "%a %U %n", "/home/devbox/.devbox-ops/ecosystem.config.js",
                    "/usr/start/devbox-ops-pm2.sh", "/home/devbox/.devbox-ops/bin/pm2-resurrect")
    assert modes.split("\n")[:3] == ["600 devbox /home/devbox/.devbox-ops/ecosystem.config.js",
                                     "755 root /usr/start/devbox-ops-pm2.sh",
                                     "755 devbox /home/devbox/.devbox-ops/bin/pm2-resurrect"]
    conf = json.loads(harness("exec", HOST, "--", "cat", "/home/devbox/.pm2/module_conf.json"))
    assert conf["pm2-logrotate"] == {"max_size": "10M", "retain": "10", "compress": "true"}


def test_second_run_changes_nothing(ansible, converged):
    out = ansible.ok("playbooks/site.yml")
    assert recap(out)["changed"] == 0, "changed on the second run: %s" % changed_tasks(out)


def test_pm2_brings_back_a_killed_app_with_a_new_pid(ansible, converged):
    before = dict((p[1], p) for p in host_pm2() if p[0] == "node-app")
    victim = min(before)
    old_pid = before[victim][2]
    harness("exec", HOST, "--", "kill", "-9", str(old_pid))
    deadline, new_pid = time.time() + 30, None
    while time.time() < deadline:
        now = dict((p[1], p) for p in host_pm2() if p[0] == "node-app")
        if victim in now and now[victim][3] == "online" and now[victim][2] not in (old_pid, 0, None):
            new_pid = now[victim][2]
            break
        time.sleep(0.5)
    assert new_pid, "PM2 did not restart node-app pm_id %s after kill -9 %s" % (victim, old_pid)
    seen = set()
    for _attempt in range(40):  # cluster mode: requests go round-robin, so the new worker answers too
        seen.add(wait_healthy(NODE, 10)["pid"])
        if new_pid in seen:
            break
    assert new_pid in seen and old_pid not in seen, (new_pid, old_pid, seen)


def test_manage_scale_1_3_1_while_the_other_app_serves_without_error(ansible, converged):
    results, stop = {"ok": 0, "errors": []}, threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                status, body = get_json(PY, timeout=3)
                if status == 200 and body.get("status") == "ok":
                    results["ok"] += 1
                else:
                    results["errors"].append("HTTP %s" % status)
            except (OSError, ValueError) as exc:
                results["errors"].append(repr(exc))
            time.sleep(0.02)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        for count in (1, 3, 1):
            out = ansible.ok("playbooks/manage.yml", "-e", "app=node-app", "-e", "action=scale",
                             "-e", "instances=%d" % count)
            online = [p for p in host_pm2() if p[0] == "node-app" and p[3] == "online"]
            assert len(online) == count, (count, online)
            assert recap(out)["failed"] == 0
            wait_healthy(NODE, 10)
    finally:
        stop.set()
        thread.join(10)
    assert results["errors"] == [] and results["ok"] > 50, results
    # back to the declared 2 instances: the site playbook converges again
    ansible.ok("playbooks/site.yml")
    assert len([p for p in host_pm2() if p[0] == "node-app" and p[3] == "online"]) == 2


def test_manage_logs_prints_the_last_lines(ansible, converged):
    out = ansible.ok("playbooks/manage.yml", "-e", "app=py-app", "-e", "action=logs", "-e", "lines=5")
    msgs = debug_msgs(out, "Print them")
    headers = [m[0] for m in msgs]
    assert headers == ["==> /home/devbox/.devbox-ops/logs/py-app.out.log <==",
                       "==> /home/devbox/.devbox-ops/logs/py-app.err.log <=="]
    assert all(len(m) <= 6 for m in msgs)
    assert any("Booting worker" in line for line in msgs[1]), msgs[1]  # gunicorn logs to stderr


def test_status_prints_a_table_and_json(ansible, converged):
    table = debug_msgs(ansible.ok("playbooks/status.yml"), "Print the processes")[0]
    assert table[0].split() == ["name", "id", "mode", "status", "pid", "restarts", "uptime", "cpu", "%", "memory",
                                "MB"]
    assert set(table[1]) <= {"-", " "}
    rows = [line.split() for line in table[2:]]
    assert sorted(r[0] for r in rows) == ["node-app", "node-app", "pm2-logrotate", "py-app"]
    assert all(r[3] == "online" and r[4].isdigit() for r in rows), rows
    assert [r[2] for r in rows if r[0] == "node-app"] == ["cluster", "cluster"]

    text = debug_msgs(ansible.ok("playbooks/status.yml", "-e", "status_format=json"), "Print the processes")[0]
    data = json.loads(text)
    assert sorted(d["name"] for d in data) == ["node-app", "node-app", "pm2-logrotate", "py-app"]
    assert all(set(d) == {"name", "pm_id", "exec_mode", "status", "pid", "restarts", "uptime_s", "cpu", "memory_mb"}
               for d in data)
    assert all(d["status"] == "online" and d["memory_mb"] > 1 for d in data), data

    bad = ansible.run("playbooks/status.yml", "-e", "status_format=xml")
    assert bad.returncode != 0 and 'status_format="xml": must be table or json' in bad.stdout


def test_reboot_brings_the_apps_back_without_ansible(ansible, converged):
    before = host_pm2()
    harness("reboot", HOST)
    node, py = wait_healthy(NODE, 60), wait_healthy(PY, 60)
    after = host_pm2()
    assert names(after, "online") == names(before, "online") == ["node-app", "node-app", "pm2-logrotate", "py-app"]
    assert node["uptime_s"] < 60 and py["uptime_s"] < 60, "the apps answering were not started by this boot"


@pytest.mark.parametrize("extra, needle", [
    (["-e", "app=py-app", "-e", "action=explode"], 'action="explode": must be one of'),
    (["-e", "app=py-app", "-e", "action=scale", "-e", "instances=-1"], 'instances="-1": action=scale needs'),
    (["-e", "app=py-app;id", "-e", "action=restart"], 'app="py-app;id": give -e app=NAME'),
    (["-e", "app=py-app", "-e", "action=logs", "-e", "lines=ten"], 'lines="ten": must be an integer'),
    (["-e", "app=no-such-app", "-e", "action=restart"], "app=no-such-app: no such app in devbox_apps"),
])
def test_manage_rejects_bad_values_naming_the_variable(ansible, converged, extra, needle):
    before = sorted(host_pm2())
    proc = ansible.run("playbooks/manage.yml", *extra)
    assert proc.returncode != 0
    assert needle in proc.stdout, proc.stdout[-3000:]
    assert recap(proc.stdout)["changed"] == 0
    assert sorted(host_pm2()) == before


def test_the_secret_never_appears_in_any_output_even_with_vvv(ansible, converged):
    # The canary really is deployed (otherwise this test would prove nothing) ...
    assert harness("exec", HOST, "--", "grep", "-c", CANARY, "/home/devbox/.devbox-ops/ecosystem.config.js").strip() != "0"
    # ... and no output shows it: every run above, plus verbose runs, one of which rotates the secret
    # (so PM2 applies an env change) and one that restarts everything.
    rotated = "rotated-canary-" + CANARY[::-1]
    out = ansible.ok("playbooks/site.yml", "-vvv", "-e", "demo_api_key=" + rotated)
    # drift names env keys only (here masked too: another app's env VALUE is the word API_KEY)
    assert '"drift": ["env.' in out, "the rotated secret was not applied"
    assert harness("exec", HOST, "--", "grep", "-c", rotated, "/home/devbox/.devbox-ops/ecosystem.config.js").strip() != "0"
    ansible.ok("playbooks/manage.yml", "-vvv", "-e", "app=all", "-e", "action=restart")
    ansible.ok("playbooks/status.yml", "-vvv", "-e", "status_format=json")
    ansible.ok("playbooks/site.yml", "-vvv")
    assert len(OUTPUTS) >= 15
    leaks = [i for i, out in enumerate(OUTPUTS) if CANARY in out or rotated in out]
    assert leaks == [], "a secret appears in the output of runs %s" % leaks
