# SPDX-License-Identifier: GPL-3.0-or-later
"""Faults during deploys, for real, on a simulated devbox (devbox22, 10.213.22.2).

A Node app in PM2 cluster mode (reload strategy) is deployed once by the fixture (1.0.0); each test then
breaks a deploy in one way and checks that `current` stays valid, the old release keeps serving, the
failure is recorded with the failed step's name and notified to a real HTTP receiver, and the next deploy
recovers. Variants of the app are given for one run with `-e @FILE` (devbox_apps replaced). Hooks that
stop a deploy at a chosen point make the timing of SIGKILL and of the concurrent deploy deterministic.
The tests run in file order and share the host. Needs root.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_deploy import (  # noqa: E402  pylint: disable=wrong-import-position
    CANARY, REPO, Ansible, Host, Receiver, Traffic, app_source, extra_apps_file, failure_messages, get_json, node_app,
    wait_version, write_inventory)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = Host("/var/tmp/devbox-ops-it-deploy/faults", 22)
NODE = HOST.url(3000)
APP_DIR = "/home/devbox/apps/node-app"
PYMONGO_VENV = "/var/tmp/devbox-ops-it-deploy/pymongo-venv"
MONGO_SECRET = "Pa55w0rd-mongo-canary"
HOOK = """---
- name: Tell the test that the deploy reached this point
  ansible.builtin.copy:
    content: "{{ devbox_deploy_step }}\\n"
    dest: "{{ hook_dir }}/reached"
    mode: "0644"
  delegate_to: localhost
  become: false

- name: Wait until the test lets the deploy go on
  ansible.builtin.wait_for:
    path: "{{ hook_dir }}/go"
    timeout: 300
  delegate_to: localhost
  become: false
"""


def fast_node(source, **deploy):
    """The node app with a readiness probe that gives up after 3 s (6 x 0.5 s)."""
    app = node_app(source, **deploy)
    app["readiness"] = {"path": "/api/ready", "failure_threshold": 6}
    return app


class Hooked:
    """ansible-playbook started in its own session, stopped by a hook until released or killed."""

    def __init__(self, ansible, directory, step, *extra):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        for name in ("reached", "go"):
            if os.path.exists(os.path.join(directory, name)):
                os.unlink(os.path.join(directory, name))
        hook = os.path.join(directory, "hook.yml")
        with open(hook, "w") as f:
            f.write(HOOK)
        argv = ansible.argv("deploy.yml", *extra) + [
            "-e", json.dumps({"devbox_deploy_hooks": {step: hook}, "hook_dir": directory})]
        self.log = open(os.path.join(directory, "out.log"), "w")
        self.proc = subprocess.Popen(argv, cwd=REPO, env=ansible.env(),
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.ansible = ansible

    def wait_reached(self, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(os.path.join(self.dir, "reached")):
                return
            assert self.proc.poll() is None, "the deploy ended before its hook:\n%s" % self.output()[-5000:]
            time.sleep(0.2)
        raise AssertionError("the hook was not reached within %ss:\n%s" % (timeout, self.output()[-5000:]))

    def output(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def release(self, timeout=300):
        with open(os.path.join(self.dir, "go"), "w") as f:
            f.write("go\n")
        rc = self.proc.wait(timeout)
        self.log.close()
        self.ansible.outputs.append(self.output())
        return rc

    def sigkill(self):
        """SIGKILL ansible-playbook itself, then whatever it left in its session (its workers, ssh)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        time.sleep(0.5)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        self.ansible.outputs.append(self.output())


def current_is_valid():
    """`current` points to a release directory with a readable manifest that is not failed."""
    release = HOST.current("node-app")
    assert release, "current is missing"
    assert HOST.manifest("node-app", release)["status"] in ("active", "verified"), release
    return release


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the harness makes namespaces: run these tests as root (a skip would hide them)", pytrace=False)
    HOST.up()
    receiver, state = None, {}
    try:
        receiver = Receiver(HOST.root_ip)
        tmp = str(tmp_path_factory.mktemp("faults"))
        v1 = app_source(tmp_path_factory, "node", "1.0.0")
        inv = write_inventory(os.path.join(tmp, "inventory"), HOST, [fast_node(v1)],
                              devbox_deploy_notifiers=[{"kind": "generic", "url": receiver.url, "timeout": 5}])
        ansible = Ansible(inv, HOST.name)
        ansible.ok("deploy.yml", "-e", "app=node-app", "-e", "version=1.0.0")
        wait_version(NODE, "1.0.0", 10)
        state = {"ansible": ansible, "receiver": receiver, "tmp": tmp, "factory": tmp_path_factory}
        yield state
    finally:
        if state.get("paused") is not None and state["paused"].proc.poll() is None:
            state["paused"].sigkill()
        if receiver:
            receiver.close()
        HOST.down()


def variant(world, name, version, **deploy):
    """`-e @FILE` arguments that deploy a copy of the app at ``version`` with these deploy settings."""
    patch, overrides = deploy.pop("patch", None), deploy.pop("app", {})
    source = app_source(world["factory"], "node", version, patch)
    app = fast_node(source, **deploy)
    app.update(overrides)
    return ["-e", extra_apps_file(world["tmp"], name, [app]), "-e", "app=node-app", "-e", "version=" + version]


def last_event():
    return HOST.history("node-app")[-1]


def test_a_broken_build_never_switches_and_the_old_release_keeps_serving(world):
    ansible, before = world["ansible"], current_is_valid()
    out = ansible.fails("deploy.yml", "-vvv", *variant(world, "broken-build", "2.0.0",
                                                       build=[["sh", "-c", "echo building; exit 1"]]))
    msg = failure_messages(out)[-1]
    assert msg.startswith("deploy of node-app failed at step build: non-zero return code (sh -c echo building; "
                          "exit 1, rc=1); release %s serves again" % before), msg
    assert current_is_valid() == before and get_json(NODE)[1]["version"] == "1.0.0"
    event = last_event()
    assert (event["result"], event["failed_step"], event["previous"]) == ("failed", "build", before)
    assert HOST.manifest("node-app", event["release"])["status"] == "failed"
    sent = world["receiver"].of(type="deploy", result="failed", step="build")
    assert len(sent) == 1 and sent[0]["target"] == "node-app" and sent[0]["rolled_back_to"] == before
    assert not os.path.exists(os.path.join(HOST.app_dir("node-app"), ".lock"))


def test_a_release_that_fails_readiness_is_rolled_back_with_no_failed_request(world):
    ansible, before = world["ansible"], current_is_valid()
    pids = sorted(p[0] for p in HOST.pm2()["node-app"])

    def never_ready(src):
        path = os.path.join(src, "server.js")
        with open(path) as f:
            text = f.read()
        old = "const ok = !missing.length && !/^(error|timeout)/.test(checks.mongodb);"
        assert old in text
        with open(path, "w") as f:
            f.write(text.replace(old, "const ok = false;"))

    with Traffic(NODE) as traffic:
        out = ansible.fails("deploy.yml", *variant(world, "not-ready", "3.0.0", patch=never_ready))
    assert traffic.errors == [] and traffic.total > 20, (traffic.errors[:5], traffic.total)
    assert set(traffic.versions) == {"1.0.0"}, "the candidate served: %s" % traffic.versions
    msg = failure_messages(out)[-1]
    assert msg.startswith("deploy of node-app failed at step verify: health check failed: GET "
                          "http://127.0.0.1:33000/api/ready"), msg
    event = last_event()
    assert (event["result"], event["failed_step"], event["rolled_back_to"]) == ("failed", "verify", before)
    assert HOST.manifest("node-app", event["release"])["status"] == "failed"
    procs = HOST.pm2()
    assert "node-app--candidate" not in procs
    assert sorted(p[0] for p in procs["node-app"]) == pids, "the live app was touched"
    assert current_is_valid() == before
    assert world["receiver"].of(type="deploy", result="failed", step="verify", rolled_back_to=before)


def sigkill_args(world):
    if "sigkill_args" not in world:
        world["sigkill_args"] = variant(world, "sigkill", "5.0.0")
    return world["sigkill_args"]


def test_a_concurrent_deploy_is_refused_naming_the_holder(world):
    ansible = world["ansible"]
    # the first deploy holds the lock, stopped by a hook right after taking it (the next test kills it there)
    first = Hooked(ansible, os.path.join(world["tmp"], "kill-lock_after"), "lock_after", *sigkill_args(world))
    world["paused"] = first
    first.wait_reached()
    with open(os.path.join(HOST.app_dir("node-app"), ".lock")) as f:
        holder = json.load(f)
    assert holder["pid"] == first.proc.pid
    assert set(holder) == {"user", "host", "pid", "started_at", "purpose", "acquired_at", "token_sha256"}
    out = ansible.fails("deploy.yml", "-e", "app=node-app")
    msg = failure_messages(out)[-1]
    assert msg.startswith("deploy of node-app failed at step lock: deploy lock held by %s@%s pid %d since "
                          % (holder["user"], holder["host"], first.proc.pid)), msg
    assert msg.endswith("(deploy node-app)"), msg
    assert last_event()["failed_step"] == "lock" and last_event()["result"] == "failed"
    assert first.proc.poll() is None and get_json(NODE)[1]["version"] == "1.0.0"


def test_sigkill_at_three_phases_leaves_current_serving_and_the_next_deploy_recovers(world):
    ansible, args = world["ansible"], sigkill_args(world)
    served = get_json(NODE)[1]["version"]
    lock = os.path.join(HOST.app_dir("node-app"), ".lock")
    killed = []
    for step in ("lock_after", "build_before", "switch_after"):
        run = world.pop("paused", None) if step == "lock_after" else None
        if run is None:
            run = Hooked(ansible, os.path.join(world["tmp"], "kill-" + step), step, *args)
        run.wait_reached()
        run.sigkill()
        killed.append(run.proc.pid)
        if len(killed) > 1:  # this run took over the lock the previous killed run left
            text = run.output()
            assert "took over the stale deploy lock of" in text and "pid %d" % killed[-2] in text, text[-3000:]
            assert "its ansible-playbook process is gone" in text
        with open(lock) as f:
            assert json.load(f)["pid"] == run.proc.pid, "the killed run's lock is left behind"
        release = current_is_valid()
        if step == "switch_after":
            served = "5.0.0"
        assert get_json(NODE)[1]["version"] == served, (step, release)
        statuses = [p[1] for p in HOST.pm2()["node-app"]]
        assert statuses == ["online", "online"], (step, statuses)

    # a lock held by a controller elsewhere: its process cannot be seen from here, so only age makes it stale
    with open(lock) as f:
        record = json.load(f)
    record.update(host="ci-runner-7", pid=4242)
    with open(lock, "w") as f:
        json.dump(record, f)
    out = ansible.fails("deploy.yml", *args)
    assert "deploy lock held by %s@ci-runner-7 pid 4242" % record["user"] in failure_messages(out)[-1]
    time.sleep(1)
    out = ansible.ok("deploy.yml", "-e", "devbox_deploy_lock_stale_after=1", *args)
    assert "took over the stale deploy lock of %s@ci-runner-7 pid 4242" % record["user"] in out
    assert "more than stale_after=1s" in out
    assert not os.path.exists(lock)
    wait_version(NODE, "5.0.0", 10)
    assert current_is_valid() == HOST.current("node-app")
    assert not [n for n in os.listdir(os.path.join(HOST.app_dir("node-app"), "releases")) if n.startswith(".tmp-")]
    assert "node-app--candidate" not in HOST.pm2()


def test_a_disk_that_fills_during_backup_refuses_the_deploy_before_current_changes(world):
    ansible, before, releases = world["ansible"], current_is_valid(), HOST.releases("node-app")
    # 120 one-byte files fit the 1 MB by size, but the tmpfs has inodes for 50: it fills while writing
    HOST.sh("python3", "-c", "import os\nos.makedirs('/home/devbox/data/small', exist_ok=True)\n"
                             "for i in range(120):\n    open('/home/devbox/data/small/f%d' % i, 'w').write('x')\n")
    backups = "/home/devbox/backups/node-app"
    HOST.sh("mkdir", "-p", backups)
    HOST.sh("mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=50,mode=0755,uid=%s,gid=%s"
            % tuple(HOST.sh("id", "-u").split() + HOST.sh("id", "-g").split()), "tmpfs", backups, user="root")
    try:
        out = ansible.fails("deploy.yml", *variant(world, "disk-full", "6.0.0", backup={
            "paths": [{"path": "/home/devbox/data"}], "min_free_mb": 0}))
        msg = failure_messages(out)[-1]
        assert msg.startswith("deploy of node-app failed at step backup: disk full in %s while writing backup "
                              % backups), msg
        assert "No space left on device" in msg and "the partial backup was removed" in msg, msg
        left = HOST.sh("ls", "-A", backups).split()
        assert not [n for n in left if n[:8].isdigit()], "a partial snapshot was left: %s" % left
    finally:
        HOST.sh("umount", backups, user="root")
    assert current_is_valid() == before and get_json(NODE)[1]["version"] == "5.0.0"
    assert HOST.releases("node-app") == releases, "a release was made although the backup failed"
    event = last_event()
    assert (event["failed_step"], event["release"], event["rolled_back_to"]) == ("backup", None, None)


def test_an_unreachable_mongodb_fails_the_preflight_naming_it_but_never_the_password(world):
    ansible, before, releases = world["ansible"], current_is_valid(), HOST.releases("node-app")
    if not os.path.exists(os.path.join(PYMONGO_VENV, "bin", "python")):  # a host python that has pymongo
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", PYMONGO_VENV], check=True)
        subprocess.run([PYMONGO_VENV + "/bin/pip", "install", "-q", "pymongo"], check=True)
    uri = "mongodb://app:%s@127.0.0.1:1/app" % MONGO_SECRET
    out = ansible.fails("deploy.yml", "-e", "ansible_python_interpreter=%s/bin/python" % PYMONGO_VENV,
                        *variant(world, "mongo", "7.0.0", app={"env": {"READY_REQUIRES": "API_KEY", "API_KEY": CANARY,
                                                                       "MONGODB_URI": uri}},
                                 preflight={"mongodb_uri_env": "MONGODB_URI"}))
    msg = failure_messages(out)[-1]
    assert msg.startswith("deploy of node-app failed at step preflight: preflight: MongoDB of MONGODB_URI does not "
                          "answer: mongodb 127.0.0.1:1: connection refused"), msg
    assert MONGO_SECRET not in out
    assert current_is_valid() == before and HOST.releases("node-app") == releases
    assert last_event()["failed_step"] == "preflight"


def test_restore_refuses_a_backup_whose_file_was_corrupted(world):
    ansible = world["ansible"]
    HOST.sh("sh", "-c", "mkdir -p /home/devbox/state && echo 'orders v1' > /home/devbox/state/orders.txt")
    args = ["-e", extra_apps_file(world["tmp"], "with-backup", [fast_node("/nonexistent", backup={
        "paths": [{"path": "/home/devbox/state"}]})]), "-e", "app=node-app"]
    out = ansible.ok("backup.yml", *args)
    snapshots = [n for n in os.listdir(HOST.path("backups/node-app")) if n.endswith("-manual")]
    assert len(snapshots) == 1, snapshots
    copy = [os.path.join(d, f) for d, _s, fs in os.walk(HOST.path("backups/node-app/" + snapshots[0]))
            for f in fs if f == "orders.txt"]
    assert len(copy) == 1 and open(copy[0]).read() == "orders v1\n"
    HOST.sh("sh", "-c", "echo 'orders v2' > /home/devbox/state/orders.txt")
    with open(copy[0], "r+") as f:  # bit rot in the snapshot: same size, other bytes
        f.write("ORDERS")
    out = ansible.fails("restore.yml", *args)
    msg = failure_messages(out)[-1]
    assert msg.startswith("restore of node-app refused: "), msg
    assert "sha256" in msg or "checksum" in msg, msg
    assert open(HOST.path("state/orders.txt")).read() == "orders v2\n", "the live data changed"
    assert not os.path.exists(os.path.join(HOST.app_dir("node-app"), ".lock"))


def test_no_output_of_these_faults_shows_a_secret(world):
    outputs = world["ansible"].outputs
    assert len(outputs) >= 12 and any("ESTABLISH SSH CONNECTION" in o for o in outputs)  # one ran with -vvv
    with open(HOST.path("apps/node-app/shared/.env")) as f:  # the canary really is deployed
        assert CANARY in f.read()
    leaks = [i for i, out in enumerate(outputs) if CANARY in out or MONGO_SECRET in out]
    assert leaks == [], "a secret appears in the output of runs %s" % leaks
    history = open(os.path.join(HOST.app_dir("node-app"), "history.jsonl")).read()
    events = open(HOST.path(".devbox-ops/events.jsonl")).read()
    for text in [history, events] + [json.dumps(e) for e in world["receiver"].events]:
        assert CANARY not in text and MONGO_SECRET not in text
