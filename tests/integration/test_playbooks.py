# SPDX-License-Identifier: GPL-3.0-or-later
"""site.yml, manage.yml and status.yml against a simulated devbox (tests/harness), for real.

One s6 host (devbox11, 10.213.11.2) made by the harness in a state dir of its own, the demo apps of
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
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(REPO, "tests", "harness", "harness")
PLAYBOOK = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
GROUP_VARS = os.path.join(REPO, "examples", "inventory", "group_vars")
STATE = "/var/tmp/devbox-ops-it-playbooks"
HOST, IP = "devbox11", "10.213.11.2"
NODE, PY = "http://%s:3000/api/health" % IP, "http://%s:8000/api/health" % IP
CANARY = "demo-secret-not-for-prod"
# Every PM2 process of the converged demo host: node-app in cluster x2, py-app, pm2-logrotate (from the offline
# bundle) and the watchdog of the monitoring role.
ALL_PROCS = ["devbox-ops-watchdog", "node-app", "node-app", "pm2-logrotate", "py-app"]
RECAP = re.compile(r"^%s\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)" % HOST, re.M)

OUTPUTS = []  # every ansible-playbook output of this module, for the canary test


def harness(*args, timeout=240, check=True):
    env = dict(os.environ, DEVBOX_HARNESS_DIR=STATE)
    proc = subprocess.run([HARNESS] + list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout, check=False)
    assert proc.returncode == 0 or not check, "harness %s: rc %d\n%s%s" % (" ".join(args), proc.returncode, proc.stdout,
                                                                           proc.stderr)
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
    harness("up", "1", "--first", "11", "--init", "s6")
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


def host_files():
    """Every path (with type, mode and owner) under the host's home and boot dir, ~/.ansible and ~/.ssh left out."""
    out = harness("exec", HOST, "--", "find", "/home/devbox", "/usr/start", "-xdev",
                  "(", "-path", "/home/devbox/.ansible", "-o", "-path", "/home/devbox/.ssh", ")", "-prune",
                  "-o", "-printf", "%y %m %u %p\\n")
    return sorted(out.splitlines())


def test_check_mode_on_a_fresh_host_succeeds_and_changes_nothing(ansible):
    # first test of the module: the host is as the harness made it, never touched by the roles
    before = host_files()
    assert "d 755 devbox /home/devbox/project" in before and not any(".pm2" in f for f in before), before
    out = ansible.ok("playbooks/site.yml", "--check")
    result = recap(out)
    assert result["failed"] == 0 and result["changed"] > 0, result  # it reports what a real run would do
    assert host_files() == before  # no PM2_HOME either: no PM2 daemon was started


def test_site_converges_and_both_apps_answer_from_the_root_namespace(ansible, converged):
    assert recap(converged)["failed"] == 0
    node, py = wait_healthy(NODE, 10), wait_healthy(PY, 10)
    assert node["version"] == py["version"] == "1.0.0"
    procs = host_pm2()
    assert names(procs) == names(procs, "online") == ALL_PROCS
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


def test_check_mode_on_the_converged_host_reports_no_change(ansible, converged):
    pids = sorted(host_pm2())
    out = ansible.ok("playbooks/site.yml", "--check")
    assert recap(out)["changed"] == 0, "check mode predicts changes on a converged host: %s" % changed_tasks(out)
    assert sorted(host_pm2()) == pids


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
    assert sorted(r[0] for r in rows) == ALL_PROCS
    assert all(r[3] == "online" and r[4].isdigit() for r in rows), rows
    assert [r[2] for r in rows if r[0] == "node-app"] == ["cluster", "cluster"]

    text = debug_msgs(ansible.ok("playbooks/status.yml", "-e", "status_format=json"), "Print the processes")[0]
    data = json.loads(text)
    assert sorted(d["name"] for d in data) == ALL_PROCS
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
    assert names(after, "online") == names(before, "online") == ALL_PROCS
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


@pytest.mark.parametrize("extra, needle", [
    (["-e", "devbox_apps_dir=apps"], 'devbox_apps_dir="apps": must be an absolute path'),
    (["-e", "devbox_pymongo_install=sometimes"],
     "value of devbox_pymongo_install must be one of: auto, always, never, got: sometimes"),
    (["-e", json.dumps({"devbox_apps": [{"name": "x", "port": 3999, "script": "x.js",
                                         "deploy": {"strategy": "rolling"}}]})],
     "value of strategy must be one of: reload, bluegreen, restart, got: rolling found in devbox_apps -> deploy"),
    (["-e", json.dumps({"devbox_apps": [{"name": "x", "port": 3999, "script": "x.js",
                                         "deploy": {"slo": {"samples": "many"}}}]})],
     ("argument 'samples' is of type str found in 'devbox_apps -> deploy -> slo'", "'many'")),
])
def test_site_rejects_bad_deploy_settings_naming_the_variable(ansible, converged, extra, needle):
    before = sorted(host_pm2())
    proc = ansible.run("playbooks/site.yml", *extra)
    assert proc.returncode != 0, proc.stdout[-3000:]
    for text in (needle,) if isinstance(needle, str) else needle:
        assert text in proc.stdout, (text, proc.stdout[-3000:])
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


# ------------------------------------------------------------------ apps with deploy settings (supervisor vs deploy)
# Two more apps beside the demo ones: dep-app (deploy settings, restart strategy) and bg-app (blue-green).
# Until its first deploy site.yml does not start dep-app; after it, site.yml keeps it as the deploy left it.
# site.yml never starts, changes or probes bg-app: the deploy role runs its colours and nginx.
DEP_URL, BG_URL = "http://%s:3100/api/health" % IP, "http://%s:8100/api/health" % IP


@pytest.fixture(scope="module")
def with_deploy_apps(ansible, converged, tmp_path_factory):
    with open(os.path.join(GROUP_VARS, "devboxes.yml")) as f:
        group_vars = yaml.safe_load(f)
    probe = {"path": "/api/health"}
    group_vars["devbox_apps"] = group_vars["devbox_apps"] + [
        {"name": "dep-app", "port": 3100, "script": "server.js", "interpreter": "node", "env": {"API_KEY": CANARY},
         "health": probe, "deploy": {"source": os.path.join(REPO, "examples", "node-app"), "strategy": "restart",
                                     "slo": {"samples": 10}}},
        {"name": "bg-app", "port": 8100, "script": "gunicorn", "interpreter": "none",
         "args": ["-c", "gunicorn.conf.py", "app:application"], "env": {"API_KEY": CANARY, "WEB_CONCURRENCY": "1"},
         "health": probe, "deploy": {"source": os.path.join(REPO, "examples", "python-app"), "strategy": "bluegreen",
                                     "slo": {"samples": 10}}},
    ]
    inv = tmp_path_factory.mktemp("inventory-deploy")
    shutil.copy(os.path.join(STATE, "inventory.yml"), str(inv / "hosts.yml"))
    os.mkdir(str(inv / "group_vars"))
    with open(str(inv / "group_vars" / "devboxes.yml"), "w") as f:
        yaml.safe_dump(group_vars, f)
    return Ansible(str(inv / "hosts.yml"))


def ecosystem_names():
    text = harness("exec", HOST, "--user", "devbox", "--", "node", "-e",
                   "console.log(JSON.stringify(require('/home/devbox/.devbox-ops/ecosystem.config.js').apps"
                   ".map(a => [a.name, a.cwd])))")
    return dict(json.loads(text.strip().splitlines()[-1]))


def test_an_app_with_deploy_settings_is_not_started_before_its_first_deploy(with_deploy_apps):
    out = with_deploy_apps.ok("playbooks/site.yml")
    msgs = dict((m.split(":", 1)[0], m) for m in debug_msgs(out, "Say which apps are left to the deploy role"))
    assert msgs["dep-app"] == ("dep-app: never deployed (/home/devbox/apps/dep-app/current does not exist), so not "
                               "started; run playbooks/deploy.yml -e app=dep-app"), msgs
    assert msgs["bg-app"].startswith("bg-app: deploy.strategy is bluegreen, so the deploy role runs it"), msgs
    procs = host_pm2()
    assert not [p for p in procs if p[0].startswith(("dep-app", "bg-app"))], procs
    # dep-app is in the ecosystem file (manage.yml and boot read it) with its deploy cwd; bg-app is not
    eco = ecosystem_names()
    assert eco["dep-app"] == "/home/devbox/apps/dep-app/current" and "bg-app" not in eco, eco
    again = with_deploy_apps.ok("playbooks/site.yml")
    assert recap(again)["changed"] == 0, "changed on the second run: %s" % changed_tasks(again)
    refused = with_deploy_apps.run("playbooks/manage.yml", "-e", "app=dep-app", "-e", "action=restart")
    assert refused.returncode != 0 and "app=dep-app: never deployed" in refused.stdout, refused.stdout[-3000:]


def test_after_a_deploy_site_keeps_the_deployed_app_and_never_touches_the_blue_green_one(with_deploy_apps):
    with_deploy_apps.ok("playbooks/deploy.yml", "-e", "app=dep-app")
    with_deploy_apps.ok("playbooks/deploy.yml", "-e", "app=bg-app")
    wait_healthy(DEP_URL, 30)
    wait_healthy(BG_URL, 30)
    before = sorted(host_pm2())
    assert [p[0] for p in before if p[0] == "dep-app"] == ["dep-app"], before
    colours = [p for p in before if p[0].startswith("bg-app")]
    assert colours and all(p[0] != "bg-app" and p[3] == "online" for p in colours), before
    nginx_files = ["find", "/home/devbox/.devbox-ops/nginx", "-name", "*.conf", "-printf", "%p %T@ %i\\n"]
    nginx_conf = harness("exec", HOST, "--", *nginx_files)
    assert "bg-app" in nginx_conf, nginx_conf

    out = with_deploy_apps.ok("playbooks/site.yml")
    assert recap(out)["changed"] == 0, "site.yml changed something after the deploys: %s" % changed_tasks(out)
    left = [m.split(":", 1)[0] for m in debug_msgs(out, "Say which apps are left to the deploy role")]
    assert "bg-app" in left and "dep-app" not in left, left  # dep-app is deployed now, so it is run
    assert sorted(host_pm2()) == before  # same processes, same pids: nothing was restarted
    assert harness("exec", HOST, "--", *nginx_files) == nginx_conf
    dep_pid = [p[2] for p in before if p[0] == "dep-app"][0]
    release = os.path.basename(os.readlink(os.path.join(STATE, "hosts", HOST, "home", "apps", "dep-app", "current")))
    assert harness("exec", HOST, "--", "readlink", "/proc/%d/cwd" % dep_pid).strip() == \
        "/home/devbox/apps/dep-app/releases/" + release
    wait_healthy(DEP_URL, 5)
    wait_healthy(BG_URL, 5)
    refused = with_deploy_apps.run("playbooks/manage.yml", "-e", "app=bg-app", "-e", "action=restart")
    assert refused.returncode != 0 and "app=bg-app: deploy.strategy is bluegreen" in refused.stdout
    assert sorted(host_pm2()) == before
