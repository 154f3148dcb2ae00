# SPDX-License-Identifier: GPL-3.0-or-later
"""Verify the converged simulated devbox over real SSH (pytest-testinfra, ansible backend)."""
import json
import os

import yaml

PM2_ENV = "PM2_HOME=/home/devbox/.pm2"
OPS = "/home/devbox/.devbox-ops"
DEMO_VARS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "examples", "inventory",
                         "group_vars", "devboxes.yml")


def _pm2_processes(host):
    out = host.check_output("env %s pm2 jlist", PM2_ENV)
    start = out.index("[")
    return json.loads(out[start:])


def test_ssh_user_is_devbox(host):
    assert host.user().name == "devbox"
    assert host.file("/home/devbox/project").is_directory


def test_both_apps_online_under_pm2(host):
    procs = _pm2_processes(host)
    status = {}
    for p in procs:
        status.setdefault(p["name"], []).append(p["pm2_env"]["status"])
    assert status.get("node-app") == ["online", "online"], status
    assert status.get("py-app") == ["online"], status
    assert "online" in status.get("pm2-logrotate", []), status


def test_apps_answer_health_on_their_ports(host):
    for port in (3000, 8000):
        assert host.socket("tcp://0.0.0.0:%d" % port).is_listening
        body = host.check_output(
            "python3 -c 'import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())' "
            "http://127.0.0.1:%s/api/health", str(port))
        assert json.loads(body)["status"] == "ok"


def test_ready_endpoint_sees_the_configured_secret_without_echoing_it(host):
    body = host.check_output(
        "python3 -c 'import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())' "
        "http://127.0.0.1:3000/api/ready")
    assert json.loads(body)["status"] == "ready"
    assert "demo-secret-not-for-prod" not in body


def test_ecosystem_file_is_private(host):
    eco = host.file(OPS + "/ecosystem.config.js")
    assert eco.exists
    assert eco.user == "devbox"
    assert eco.mode == 0o600


def test_boot_persistence_for_s6_is_installed(host):
    hook = host.file("/usr/start/devbox-ops-pm2.sh")
    assert hook.exists
    assert hook.user == "root"
    assert hook.mode & 0o022 == 0  # nobody but root may change what root runs at boot
    assert hook.mode & 0o100
    assert host.file(OPS + "/bin/pm2-resurrect").mode & 0o100


def test_pm2_process_list_is_saved_for_resurrect(host):
    dump = host.file("/home/devbox/.pm2/dump.pm2")
    assert dump.exists
    names = {p["name"] for p in json.loads(dump.content_string)}
    assert {"node-app", "py-app"} <= names


def test_logrotate_configured(host):
    conf = json.loads(host.file("/home/devbox/.pm2/module_conf.json").content_string)
    lr = conf["pm2-logrotate"]
    assert str(lr["max_size"]) == "10M"
    assert str(lr["retain"]) == "10"
    assert str(lr["compress"]).lower() == "true"


def test_apps_with_deploy_settings_wait_for_their_first_deploy(host):
    with open(DEMO_VARS) as f:
        apps = yaml.safe_load(f)["devbox_apps"]
    deployed_by_role = [a["name"] for a in apps if "deploy" in a]
    assert deployed_by_role, "the demo inventory has no app with deploy settings: this test would show nothing"
    running = {p["name"] for p in _pm2_processes(host)}
    for name in deployed_by_role:
        # converge never deploys: without APPS_DIR/NAME/current the supervisor does not start the app
        assert not host.file("/home/devbox/apps/%s/current" % name).exists
        assert name not in running, running
