# SPDX-License-Identifier: GPL-3.0-or-later
"""manage.yml action=logs and action=audit, and the audit trail of manage.yml's actions, against a simulated
devbox, for real.

One s6 host (devbox111, 10.213.111.2) made by tests/harness in a state dir of its own, with a small Node app
(installed by site.yml) that writes known lines to its out and err logs: levels, ISO times, an old line,
a stack frame, and its API_KEY (a canary that must never reach the controller). ansible-playbook runs as
a user runs it, with a CI run id in its environment. Tests run in file order and share the host.
Needs root (the harness makes namespaces).
"""
import json
import os
import socket

import pytest

from test_deploy import Ansible, Host, debug_msgs, failure_messages, write_inventory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = Host("/var/tmp/devbox-ops-it-logs", 111)
APP, PORT = "logdemo", 3105
CANARY = "logs-audit-canary-8e21c4"
RUN_ID = "424242"
SERVER_JS = r"""
const http = require('http');
const t = () => new Date().toISOString();
console.log('2020-01-01T00:00:00.000Z ERROR ancient failure order=1');
console.log(t() + ' INFO boot with key ' + process.env.API_KEY);
console.log(t() + ' INFO order=42 accepted');
console.error(t() + ' WARN slow payment order=42');
console.error(t() + ' ERROR payment failed order=42 password=' + process.env.API_KEY);
console.error(t() + ' ERROR db timeout\n    at charge (/app/pay.js:7:3)');
http.createServer((req, res) => res.end('{"status":"ok"}')).listen(Number(process.env.PORT || %d));
""" % PORT


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the harness makes namespaces: run these tests as root (a skip would hide them)", pytrace=False)
    HOST.up()
    try:
        src = tmp_path_factory.mktemp("logdemo")
        (src / "server.js").write_text(SERVER_JS)
        app = {"name": APP, "src": str(src), "port": PORT, "script": "server.js", "interpreter": "node",
               "env": {"API_KEY": CANARY, "PORT": str(PORT)}}
        inv = write_inventory(str(tmp_path_factory.mktemp("inventory")), HOST, [app])
        ansible = Ansible(inv, HOST.name)
        ansible.ok("site.yml")
        yield {"ansible": ansible, "fetch": str(tmp_path_factory.mktemp("fetched"))}
    finally:
        HOST.down()


@pytest.fixture
def ci_env(monkeypatch):
    """The controller environment of a CI job: its user and run id."""
    for name in ("SUDO_USER", "CI_JOB_ID", "AWX_JOB_ID", "TOWER_JOB_ID", "BUILD_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "ci-bot")
    monkeypatch.setenv("GITHUB_RUN_ID", RUN_ID)


def events_on_host():
    with open(HOST.path(".devbox-ops/events.jsonl")) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_logs_with_level_time_regex_filters_fetched_to_the_controller(world):
    ansible, fetch = world["ansible"], world["fetch"]
    args = ("manage.yml", "-e", "app=" + APP, "-e", "action=logs", "-e", "level=error", "-e", "since=1h",
            "-e", "regex=order=", "-e", "fetch=true", "-e", "fetch_dir=" + fetch)
    out = ansible.ok(*args)
    saved = os.path.join(fetch, HOST.name, APP + ".log")
    with open(saved) as handle:
        lines = handle.read().splitlines()
    # out log: the old line is before since, the INFO lines below error; err log: WARN below error, db timeout
    # does not match the regex; the password (the API_KEY) is masked
    assert [l.split(" ", 1)[1] if l[:4].isdigit() else l for l in lines] == [
        "==> /home/devbox/.devbox-ops/logs/%s.out.log <==" % APP,
        "==> /home/devbox/.devbox-ops/logs/%s.err.log <==" % APP,
        "ERROR payment failed order=42 password=********"], lines
    assert oct(os.stat(saved).st_mode & 0o777) == "0o600"
    # one message per log file, its path first
    assert debug_msgs(out, "Print them") == [[lines[0]], [lines[1], lines[2]]]
    again = ansible.ok(*args)
    assert ansible.recap(again)["changed"] == 0
    # without since the old line comes back; level=error keeps the stack frame with its line
    out = ansible.ok("manage.yml", "-e", "app=" + APP, "-e", "action=logs", "-e", "level=error", "-e", "stream=both")
    printed = [line for msg in debug_msgs(out, "Print them") for line in msg]
    assert "2020-01-01T00:00:00.000Z ERROR ancient failure order=1" in printed
    assert printed[-2:][0].endswith("ERROR db timeout") and printed[-1] == "    at charge (/app/pay.js:7:3)"
    assert not any("WARN" in line or "INFO" in line for line in printed)


def test_restart_is_recorded_with_the_controller_actor_and_ci_run(world, ci_env):
    ansible = world["ansible"]
    before = len(events_on_host()) if os.path.exists(HOST.path(".devbox-ops/events.jsonl")) else 0
    ansible.ok("manage.yml", "-e", "app=" + APP, "-e", "action=restart")
    events = events_on_host()
    assert len(events) == before + 1
    last = events[-1]
    assert (last["type"], last["target"], last["result"], last["host"]) == ("restart", APP, "ok", HOST.name)
    assert last["actor"] == {"user": "ci-bot", "host": socket.gethostname(), "github_run_id": RUN_ID}
    out = ansible.ok("manage.yml", "-e", "action=audit", "-e", "type=restart,scale", "-e", "actor=" + RUN_ID)
    assert ansible.recap(out)["changed"] == 0
    [table] = debug_msgs(out, "Print the events")
    assert table[0].split() == ["TIME", "HOST", "TYPE", "TARGET", "RESULT", "ACTOR", "DETAIL"]
    assert len(table) == 2 and table[1].split()[1:5] == [HOST.name, "restart", APP, "ok"]
    assert "ci-bot@%s github_run_id=%s" % (socket.gethostname(), RUN_ID) in table[1]


def test_a_failed_action_is_recorded_as_failed(world, ci_env):
    ansible = world["ansible"]
    eco = HOST.path(".devbox-ops/ecosystem.config.js")
    os.rename(eco, eco + ".away")
    try:
        out = ansible.run("manage.yml", "-e", "app=" + APP, "-e", "action=scale", "-e", "instances=2").stdout
    finally:
        os.rename(eco + ".away", eco)
    assert any("ecosystem.config.js does not exist" in m for m in failure_messages(out)), out[-3000:]
    last = events_on_host()[-1]
    assert (last["type"], last["target"], last["result"], last["instances"]) == ("scale", APP, "failed", 2)
    assert "ecosystem.config.js does not exist" in last["message"] and last["actor"]["github_run_id"] == RUN_ID
    out = ansible.ok("manage.yml", "-e", "action=audit", "-e", "app=" + APP, "-e", "result=failed", "-e", "since=10m")
    [table] = debug_msgs(out, "Print the events")
    assert len(table) == 2 and "scale" in table[1] and "instances=2" in table[1]


@pytest.mark.parametrize("extra, fragment", [
    (("-e", "action=logs", "-e", "app=" + APP, "-e", "regex=(a+)+"), "regex='(a+)+'"),
    (("-e", "action=logs", "-e", "app=" + APP, "-e", "since=yesterday"), 'since="yesterday"'),
    (("-e", "action=logs", "-e", "app=" + APP, "-e", "level=loud"), 'level="loud"'),
    (("-e", "action=logs", "-e", "app=" + APP, "-e", "lines=0"), 'lines="0"'),
    (("-e", "action=audit", "-e", "type=Restart;rm"), 'type="Restart;rm"'),
    (("-e", "action=audit", "-e", "limit=-3"), 'limit="-3"'),
])
def test_bad_input_is_named_and_changes_nothing(world, extra, fragment):
    before = os.path.getsize(HOST.path(".devbox-ops/events.jsonl"))
    proc = world["ansible"].run("manage.yml", *extra)
    assert proc.returncode != 0
    # a pre-task's fatal message, or the module's message in a failed loop item
    assert any(fragment in m for m in failure_messages(proc.stdout)) \
        or '"msg": "%s' % json.dumps(fragment)[1:-1] in proc.stdout, proc.stdout[-3000:]
    assert os.path.getsize(HOST.path(".devbox-ops/events.jsonl")) == before


def test_the_api_key_never_reached_the_controller(world):
    assert world["ansible"].outputs
    for output in world["ansible"].outputs:
        assert CANARY not in output
    for root, _dirs, files in os.walk(world["fetch"]):
        for name in files:
            with open(os.path.join(root, name)) as handle:
                assert CANARY not in handle.read()
