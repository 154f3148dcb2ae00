# SPDX-License-Identifier: GPL-3.0-or-later
"""Rolling and canary rollouts of deploy.yml across 10 simulated devboxes, for real, with the
devbox.ops.deploy_report callback enabled on every run.

Hosts devbox121..devbox130 (10.213.121.2 ...) are made once for the module by tests/harness, in the state dir
/var/tmp/devbox-ops-it-fleet, and taken down at the end. The example Node app (cluster mode, one worker,
reload strategy) is deployed to all of them first (1.0.0). Then, in file order:

- a rolling deploy of 2.0.0 in batches [1, 2, 100%] where devbox123 fails after its switch (a hook given
  in its host_vars only): the rollout stops after batch 2, devbox123 is put back by the role's rescue, the
  hosts updated before it (devbox121, devbox122) are rolled back (policy rollback_all), and the hosts of the
  later batch never get a 2.0.0 release;
- a canary of a release that slows down under sustained traffic (a patched copy of the app: every request
  after the 100th of a process waits 1.2 s, so the candidate check and the post-switch probes pass and only
  the canary analysis sees it): the canary's p95 gate fails, the canary is rolled back and the release
  directories of the 9 other hosts are unchanged;
- a canary that passes is promoted to every host (25%, then 100% of the others).

The deploy_report table and JSON run record of these runs are checked, and the failed rolling run is
notified to a real HTTP receiver on loopback. Needs root (the harness makes namespaces).
"""
import json
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_deploy import (  # noqa: E402  pylint: disable=wrong-import-position
    REPO, Ansible, Host, Receiver, app_source, debug_msgs, failure_messages, get_json, node_app, wait_version, write_inventory)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STATE = "/var/tmp/devbox-ops-it-fleet"
FIRST, COUNT = 121, 10
HOSTS = [Host(STATE, FIRST + i) for i in range(COUNT)]
NAMES = [h.name for h in HOSTS]
FAILING = HOSTS[2]  # devbox123, in the second batch of [1, 2, 100%]
FAIL_HOOK = """---
- name: Fail after the switch on this host only (test hook, given in its host_vars)
  ansible.builtin.fail:
    msg: injected failure on {{ inventory_hostname }}
"""
SLOW_PATCH = ("async function handle(req, res) {",
              "let served = 0;\nasync function handle(req, res) {\n  served += 1;\n"
              "  if (served > 100) await new Promise((resolve) => setTimeout(resolve, 1200));")


def slow_down(src):
    path = os.path.join(src, "server.js")
    with open(path) as f:
        text = f.read()
    assert SLOW_PATCH[0] in text
    with open(path, "w") as f:
        f.write(text.replace(SLOW_PATCH[0], SLOW_PATCH[1], 1))


class Fleet(Ansible):
    """ansible-playbook with the deploy_report callback and a run-record directory."""

    def __init__(self, inventory, records):
        super(Fleet, self).__init__(inventory, NAMES[0])
        self.records = records

    def env(self):
        return dict(super(Fleet, self).env(), ANSIBLE_CALLBACKS_ENABLED="devbox.ops.deploy_report",
                    DEVBOX_DEPLOY_REPORT_DIR=self.records, ANSIBLE_FORKS=str(COUNT))

    def run(self, playbook, *extra):
        # 10 hosts on a shared 2-core machine: allow more than the single-host helper's 600 s
        proc = subprocess.run(self.argv(playbook, *extra), cwd=REPO, env=self.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=1800, check=False)
        self.outputs.append(proc.stdout)
        return proc

    def last_record(self):
        paths = sorted((os.path.join(self.records, n) for n in os.listdir(self.records)), key=os.path.getmtime)
        with open(paths[-1]) as f:
            return json.load(f)


def report_rows(output):
    """{host: (failed, version column)} from the deploy_report table printed at the end."""
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("DEPLOY REPORT "))
    rows = {}
    for line in lines[start + 2:]:
        cells = line.split()
        if not cells or cells[0] not in NAMES:
            break
        rows[cells[0]] = (int(cells[3]), " ".join(cells[8:]))
    return rows


def summary(output):
    """The lines of the rollout summary (the debug table of the last play)."""
    return debug_msgs(output, "deploy : Print which hosts run which version")[-1]


def serving(host):
    return get_json(host.url(3000))[1]["version"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the harness makes namespaces: run these tests as root (a skip would hide them)", pytrace=False)
    receiver = None
    HOSTS[0].harness("up", str(COUNT), "--first", str(FIRST), "--init", "s6", timeout=600)
    try:
        receiver = Receiver("127.0.0.1")
        tmp = str(tmp_path_factory.mktemp("fleet"))
        sources = {"1.0.0": app_source(tmp_path_factory, "node", "1.0.0"),
                   "2.0.0": app_source(tmp_path_factory, "node", "2.0.0"),
                   "3.0.0-slow": app_source(tmp_path_factory, "node", "3.0.0-slow", patch=slow_down),
                   "2.1.0": app_source(tmp_path_factory, "node", "2.1.0")}
        app = node_app(sources["1.0.0"], slo={"samples": 20, "concurrency": 4})
        app["instances"] = 1
        inventory = write_inventory(os.path.join(tmp, "inventory"), HOSTS[0], [app])
        hook = os.path.join(tmp, "fail-hook.yml")
        with open(hook, "w") as f:
            f.write(FAIL_HOOK)
        ansible = Fleet(inventory, os.path.join(tmp, "records"))
        out = ansible.ok("deploy.yml", "-e", "app=node-app", "-e", "version=1.0.0")
        assert "rollout all: complete" in out
        for host in HOSTS:
            wait_version(host.url(3000), "1.0.0", 10)
        yield {"ansible": ansible, "sources": sources, "receiver": receiver, "tmp": tmp, "hook": hook,
               "host_vars": os.path.join(tmp, "inventory", "host_vars"), "v1": {h.name: h.current("node-app") for h in HOSTS}}
    finally:
        if receiver:
            receiver.close()
        HOSTS[0].harness("down", timeout=600)


def test_rolling_deploy_stops_at_the_failed_batch_and_rolls_back_the_updated_hosts(fleet):
    ansible, v1 = fleet["ansible"], fleet["v1"]
    os.makedirs(fleet["host_vars"], exist_ok=True)
    with open(os.path.join(fleet["host_vars"], FAILING.name + ".yml"), "w") as f:
        f.write("devbox_deploy_hooks: {switch_after: %s}\n" % fleet["hook"])
    notify = json.dumps({"devbox_deploy_report_notify": [
        {"kind": "generic", "url": "http://127.0.0.1:%d/run?token=s3cr3t-run-token"
         % fleet["receiver"].server.server_address[1], "timeout": 5}]})
    try:
        out = ansible.fails("deploy.yml", "-e", "app=node-app", "-e", "version=2.0.0",
                            "-e", "source=" + fleet["sources"]["2.0.0"], "-e", "rollout=rolling",
                            "-e", "batch=[1,2,'100%']", "-e", notify)
    finally:
        os.unlink(os.path.join(fleet["host_vars"], FAILING.name + ".yml"))

    lines = summary(out)
    assert "rollout rolling (batches 1, 2, 100%" in lines[0] and "on_failure rollback_all" in lines[0], lines
    assert "STOPPED: batch 2 (2 host(s)): 1 failed (devbox123), more than max_fail_percentage=0" in lines[0], lines
    outcome = {ln.split()[0]: ln.split()[1] for ln in lines[2:2 + COUNT]}
    assert outcome == dict({"devbox121": "rolled_back", "devbox122": "rolled_back", "devbox123": "failed"},
                           **{n: "not_deployed" for n in NAMES[3:]}), lines
    assert "version 1.0.0: 10 host(s): " + ", ".join(NAMES) in lines

    # every host serves 1.0.0 from the release it had; the failed host was put back by the role's rescue
    for host in HOSTS:
        assert serving(host) == "1.0.0", host.name
        assert host.current("node-app") == v1[host.name], host.name
    last = FAILING.history("node-app")[-1]
    assert (last["result"], last["failed_step"], last["rolled_back_to"]) == ("failed", "switch", v1[FAILING.name])
    assert "injected failure on devbox123" in last["reason"]
    for host in HOSTS[:2]:  # updated in batch 1 and 2, then rolled back by the policy
        history = host.history("node-app")
        assert [e["action"] for e in history[-2:]] == ["deploy", "rollback"] and history[-2]["version"] == "2.0.0"
        assert history[-1]["release"] == v1[host.name] and history[-1]["result"] == "success"
    for host in HOSTS[3:]:  # the later batch never got the new version
        assert host.releases("node-app") == [v1[host.name]], host.name
        assert len(host.history("node-app")) == 1

    rows = report_rows(out)
    assert rows[FAILING.name] == (1, "node-app 1.0.0 (failed)"), rows
    assert rows["devbox121"] == (0, "node-app 1.0.0 (rolled_back)") and rows["devbox130"] == (0, "node-app 1.0.0 (not_deployed)")
    record = ansible.last_record()
    assert record["result"] == "failed" and record["versions"] == {"node-app 1.0.0": NAMES}
    assert [h for h, f in record["hosts"].items() if f["failed"]] == [FAILING.name]
    assert record["hosts"]["devbox121"]["changed"] > 0 and record["hosts"]["devbox125"]["changed"] == 0
    [body] = fleet["receiver"].of(type="playbook")
    assert body["result"] == "failed" and "10 host(s), 1 failed (devbox123)" in body["message"]
    assert "s3cr3t-run-token" not in out and "s3cr3t-run-token" not in json.dumps(record)
    assert record["notifications"][0]["ok"] is True


def test_canary_whose_latency_gate_fails_is_rolled_back_and_no_other_host_is_touched(fleet):
    ansible, v1 = fleet["ansible"], fleet["v1"]
    before = {h.name: (h.releases("node-app"), len(h.history("node-app"))) for h in HOSTS[1:]}
    out = ansible.fails("deploy.yml", "-e", "app=node-app", "-e", "version=3.0.0-slow",
                        "-e", "source=" + fleet["sources"]["3.0.0-slow"], "-e", "rollout=canary",
                        "-e", "analysis_s=6", "-e", "analysis_interval_s=2", "-e", "analysis_samples=40")
    lines = summary(out)
    assert "STOPPED: canary analysis of node-app failed on devbox121: " in lines[0], lines
    assert re.search(r"p95 [0-9.]+ ms > max_p95_ms 1000", lines[0]), lines
    assert re.search(r"\(\d of 3 measurements failed the gate, failure_limit 0; worst p95 1[0-9]{3}(\.[0-9]+)? ms", lines[0])
    outcome = {ln.split()[0]: ln.split()[1] for ln in lines[2:2 + COUNT]}
    assert outcome == dict({"devbox121": "rolled_back"}, **{n: "not_deployed" for n in NAMES[1:]}), lines
    canary = HOSTS[0]
    assert serving(canary) == "1.0.0" and canary.current("node-app") == v1[canary.name]
    history = canary.history("node-app")
    assert [(e["action"], e["version"]) for e in history[-2:]] == [("deploy", "3.0.0-slow"), ("rollback", "1.0.0")]
    after = {h.name: (h.releases("node-app"), len(h.history("node-app"))) for h in HOSTS[1:]}
    assert after == before
    for host in HOSTS[1:]:
        assert serving(host) == "1.0.0"
    assert any(m.startswith("canary analysis of node-app failed on devbox121: ") for m in failure_messages(out)), \
        out[-3000:]
    rows = report_rows(out)
    assert rows["devbox121"] == (1, "node-app 1.0.0 (rolled_back)") and rows["devbox122"][0] == 0


def test_canary_that_passes_is_promoted_to_every_host(fleet):
    ansible = fleet["ansible"]
    out = ansible.ok("deploy.yml", "-e", "app=node-app", "-e", "version=2.1.0",
                     "-e", "source=" + fleet["sources"]["2.1.0"], "-e", "rollout=canary",
                     "-e", "analysis_s=4", "-e", "analysis_interval_s=2")
    lines = summary(out)
    assert lines[0].startswith("deploy of node-app to 10 host(s), rollout canary (batches 25%, 100% after 1 canary")
    assert lines[0].endswith(": complete"), lines
    batches = {ln.split()[0]: ln.split()[1:3] for ln in lines[2:2 + COUNT]}
    assert batches["devbox121"] == ["updated", "#1"]  # the canary
    assert sorted(b[1] for n, b in batches.items() if n != "devbox121") == ["#2"] * 2 + ["#3"] * 7, batches
    assert "version 2.1.0: 10 host(s): " + ", ".join(NAMES) in lines
    for host in HOSTS:
        assert serving(host) == "2.1.0", host.name
        assert host.manifest("node-app", host.current("node-app"))["version"] == "2.1.0"
    assert "canary analysis of node-app on devbox121: 2 of 2 measurements passed the gate" in out
    rows = report_rows(out)
    assert set(rows) == set(NAMES) and all(r == (0, "node-app 2.1.0 (updated)") for r in rows.values()), rows
    record = ansible.last_record()
    assert record["result"] == "success" and record["versions"] == {"node-app 2.1.0": NAMES}
    assert all(f["changed"] > 0 and f["duration_s"] > 0 for f in record["hosts"].values())
