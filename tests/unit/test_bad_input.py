# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad input, the way a user meets it: every case runs through real ``ansible-playbook``.

One generated playbook holds every module case (``ignore_errors``, ``register``), each followed by a
snapshot task; a last task writes all registered results to a JSON file. The snapshots record
``pm2 jlist`` of a private PM2_HOME, where one known Node app runs (names, pm_ids, pids, statuses,
restart counts), the full file tree of watched temporary directories, and canary paths that would
appear if any input reached a shell or created a path. For each case the test asserts: the task failed;
its message names the parameter and the bad value (for secrets: the parameter only, and the secret
appears nowhere); and the snapshot after it equals the snapshot before it.

A separate case runs ``playbooks/manage.yml`` with a bad action, and one case shows that a name full
of shell metacharacters is kept literally.
"""
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")
PLAYBOOK = os.path.join(VENV_BIN, "ansible-playbook")
PM2 = shutil.which("pm2") or "/usr/bin/pm2"

TOKEN = uuid.uuid4().hex[:8]  # canary names unique to this run
KNOWN = "known-app"
NEW = "brand-new-%s" % TOKEN
SECRET = "s3cret-%s-value" % TOKEN
REL = "rel-%s" % TOKEN  # relative paths given as input; must never be created under the cwd
LITERAL = "x$(touch pwned-%s-1);`touch pwned-%s-2`;a;b|c&&d>pwned-%s-3" % (TOKEN, TOKEN, TOKEN)

SERVER_JS = """\
const http = require('http');
http.createServer((req, res) => res.end('ok ' + process.pid))
  .listen(Number(process.env.PORT), '127.0.0.1');
"""

# Run by the playbook between cases (and by the tests directly). Reads only; prints one JSON object.
SNAPSHOT_PY = """\
import glob, json, os, subprocess, sys
cfg = json.load(open(sys.argv[1]))
out = subprocess.run([cfg["pm2"], "jlist"], env=dict(os.environ, PM2_HOME=cfg["pm2_home"]),
                     stdout=subprocess.PIPE, universal_newlines=True, timeout=60, check=True).stdout
procs = json.loads(out[out.index("["):])
trees = {}
for top in cfg["trees"]:
    trees[top] = sorted(os.path.relpath(os.path.join(d, n), top)
                        for d, dirs, files in os.walk(top) for n in dirs + files)
print(json.dumps({
    "procs": sorted([p["name"], p["pm_id"], p.get("pid"), p["pm2_env"]["status"],
                     p["pm2_env"].get("restart_time"), p["pm2_env"].get("unstable_restarts")] for p in procs),
    "trees": trees,
    "canaries": sorted(set(m for pattern in cfg["canaries"] for m in glob.glob(pattern))),
}))
"""


class Case:
    """One bad input: ``args`` for ``module``; the message must contain ``param`` and ``value``.

    ``secret`` (instead of ``value``) must appear nowhere: not in the message, not in any output.
    """

    def __init__(self, cid, module, args, param, value=None, secret=None, extra=()):
        self.cid, self.module, self.args = cid, module, args
        self.param, self.value, self.secret, self.extra = param, value, secret, tuple(extra)

    def __repr__(self):
        return self.cid


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


REFUSED_PORT = free_port()  # nothing listens here: connections are refused
REFUSED_URL = "http://127.0.0.1:%d/health" % REFUSED_PORT
SCRIPT = "@SCRIPT@"  # replaced by the real path of server.js
HOME = "@PM2_HOME@"  # replaced by the private PM2_HOME


def _pm2(name, **args):
    return dict(dict(name=name, pm2_home=HOME), **args)


def _app(name=KNOWN, **args):
    return _pm2(name, script=SCRIPT, **args)


def _probe(**args):
    return dict(dict(url=REFUSED_URL, timeout=1, period=0.2, failure_threshold=1), **args)


CASES = [
    Case("state_bogus", "pm2_process", _pm2(KNOWN, state="bogus"), "state", "bogus"),
    Case("instances_minus_1", "pm2_process", _app(instances=-1), "instances", "-1"),
    Case("instances_0", "pm2_process", _app(instances=0), "instances", "0"),
    Case("exec_mode_threads", "pm2_process", _app(exec_mode="threads"), "exec_mode", "threads"),
    Case("name_all", "pm2_process", _app("all"), "name", "'all'"),
    Case("name_numeric", "pm2_process", _app("42"), "name", "'42'"),
    Case("name_leading_dash", "pm2_process", _app("-rf"), "name", "'-rf'"),
    # The value missing here is the script; the message names it and the new app.
    Case("new_app_without_script", "pm2_process", _pm2(NEW), "script", NEW),
    Case("executable_missing", "pm2_process", _app(executable="/nonexistent/pm2"), "executable",
         "/nonexistent/pm2", extra=["not found"]),
    Case("max_memory_restart_lots", "pm2_process", _app(max_memory_restart="lots"), "max_memory_restart", "lots"),
    Case("min_uptime_minus_5", "pm2_process", _app(min_uptime=-5), "min_uptime", "-5"),
    Case("cron_restart_not_a_cron", "pm2_process", _app(cron_restart="not a cron"), "cron_restart", "not a cron"),
    Case("cwd_relative", "pm2_process", _app(cwd=REL + "/cwd"), "cwd", REL + "/cwd"),
    Case("pm2_home_relative", "pm2_process", dict(_app(), pm2_home=REL + "/pm2home"), "pm2_home",
         REL + "/pm2home"),
    Case("args_unbalanced_quote", "pm2_process", _app(args="--port '3000"), "args", "--port '3000"),
    Case("env_value_not_a_string", "pm2_process", _app(env={"API_KEY": [SECRET]}), "env.API_KEY", secret=SECRET),
    # A runtime failure, not a validation one: the message names the URL and what went wrong.
    Case("url_refused", "health_check", _probe(), REFUSED_URL, "connection refused"),
    Case("url_ftp", "health_check", _probe(url="ftp://x"), "url", "ftp://x"),
    Case("timeout_minus_1", "health_check", _probe(timeout=-1), "timeout", "-1"),
    Case("expected_status_abc", "health_check", dict(  # a per-probe option
        probes=[{"url": REFUSED_URL, "expected_status": ["abc"]}], timeout=1, period=0.2, failure_threshold=1),
        "expected_status", "abc"),
    Case("failure_threshold_0", "health_check", _probe(failure_threshold=0), "failure_threshold", "0"),
    Case("header_value_not_a_string", "health_check", _probe(headers={"Authorization": [SECRET]}), "headers",
         secret=SECRET),
    Case("init_system_upstart", "init_system", dict(init_system="upstart"), "init_system", "upstart"),
    Case("pm2_info_executable_missing", "pm2_info", dict(pm2_home=HOME, executable="/nonexistent/pm2"),
         "executable", "/nonexistent/pm2"),
]
MANAGE_CASE = Case("manage_action_explode", "playbooks/manage.yml", None, "action", "explode")
ALL_CASES = CASES + [MANAGE_CASE]


def _fill(obj, script, home):
    if isinstance(obj, dict):
        return dict((k, _fill(v, script, home)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_fill(v, script, home) for v in obj]
    return {SCRIPT: script, HOME: home}.get(obj, obj) if isinstance(obj, str) else obj


def _env(**extra):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="0", ANSIBLE_RETRY_FILES_ENABLED="0")
    env.update(extra)
    return env


def _run_playbook(args, **env):
    argv = [PLAYBOOK, "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % PYTHON] + args
    return subprocess.run(argv, cwd=REPO, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300, check=False)


def _pm2_cli(home, *args, **env):
    return subprocess.run([PM2] + list(args), env=dict(os.environ, PM2_HOME=home, **env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A private PM2_HOME with ``known-app`` online, the app directory, and the snapshot tool."""
    root = tmp_path_factory.mktemp("badinput")
    home, apps, tool = root / "pm2home", root / "apps", root / "tool"
    for path in (home, apps, tool):
        path.mkdir()
    (apps / "server.js").write_text(SERVER_JS)
    canary_dirs = [REPO, str(apps), str(home), os.path.expanduser("~"), "/tmp", "/"]
    cfg = {"pm2": PM2, "pm2_home": str(home), "trees": [str(apps)],
           "canaries": [os.path.join(d, "pwned-%s*" % TOKEN) for d in canary_dirs]
           + [os.path.join(REPO, REL), os.path.join(str(apps), REL), os.path.join(str(home), REL)]}
    (tool / "snapshot.py").write_text(SNAPSHOT_PY)
    (tool / "cfg.json").write_text(json.dumps(cfg))
    snap_argv = [PYTHON, str(tool / "snapshot.py"), str(tool / "cfg.json")]
    try:
        started = _pm2_cli(str(home), "start", str(apps / "server.js"), "--name", KNOWN, PORT=str(free_port()))
        assert started.returncode == 0, started.stderr
        deadline, last = time.monotonic() + 30, None
        while True:  # online, and the same pid and restart count 1.5 s apart (past PM2's min_uptime)
            procs = json.loads(subprocess.run(snap_argv, stdout=subprocess.PIPE, check=True).stdout)["procs"]
            if procs and procs[0][3] == "online" and procs == last:
                break
            assert time.monotonic() < deadline, procs
            last = procs
            time.sleep(1.5)
        yield {"root": root, "home": str(home), "apps": apps, "snap_argv": snap_argv}
    finally:
        _pm2_cli(str(home), "kill")


def snapshot(world):
    return json.loads(subprocess.run(world["snap_argv"], stdout=subprocess.PIPE, check=True).stdout)


@pytest.fixture(scope="module")
def outcome(world):
    """Run every module case (then the literal-name case) in one playbook; then the manage.yml case."""
    script, home = str(world["apps"] / "server.js"), world["home"]
    results_file = world["root"] / "results.json"
    snap = {"ansible.builtin.command": {"argv": world["snap_argv"]}, "changed_when": False}
    tasks = [dict(name="snapshot before everything", register="s0", **snap)]
    steps = [(c.cid, "devbox.ops.%s" % c.module, _fill(c.args, script, home)) for c in CASES]
    literal_port = free_port()
    steps += [
        ("literal_start", "devbox.ops.pm2_process",
         dict(name=LITERAL, script=script, pm2_home=home, min_uptime="500ms", env={"PORT": str(literal_port)})),
        ("literal_delete", "devbox.ops.pm2_process", dict(name=LITERAL, state="absent", pm2_home=home)),
    ]
    for i, (cid, module, args) in enumerate(steps, 1):
        tasks.append({"name": "case %s" % cid, module: args, "register": "c%d" % i, "ignore_errors": True})
        tasks.append(dict(name="snapshot after %s" % cid, register="s%d" % i, **snap))
    collected = ", ".join(["'s0': s0"] + ["'c%d': c%d, 's%d': s%d" % (i, i, i, i) for i in range(1, len(steps) + 1)])
    tasks.append({"name": "write results", "ansible.builtin.copy": {
        "dest": str(results_file), "mode": "0600", "content": "{{ {%s} | to_json }}" % collected}})
    play = [{"name": "bad input", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    playbook = world["root"] / "bad_input.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))

    proc = _run_playbook([str(playbook)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    everything = proc.stdout + proc.stderr + results_file.read_text()
    data = json.loads(results_file.read_text())
    snaps = [json.loads(data["s%d" % i]["stdout"]) for i in range(len(steps) + 1)]
    out = {}
    for i, (cid, _module, _args) in enumerate(steps, 1):
        out[cid] = dict(result=data["c%d" % i], before=snaps[i - 1], after=snaps[i])

    before = snapshot(world)
    proc = _run_playbook([os.path.join(REPO, "playbooks", "manage.yml"), "-e", "action=explode",
                          "-e", "app=node-app", "-e", "devbox_target=localhost"],
                         ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    out[MANAGE_CASE.cid] = dict(proc=proc, before=before, after=snapshot(world))
    # Everything ansible printed or returned for the module cases (searched for secrets).
    return dict(cases=out, everything=everything)


def _manage_message(proc):
    """The failed task of manage.yml and its message, from the default callback (results as JSON)."""
    text = proc.stdout
    fatal = text.index("fatal: [localhost]: FAILED! => ")
    task = text[:fatal].rsplit("TASK [", 1)[1].split("]", 1)[0]
    result = json.loads(text[fatal:].split("=> ", 1)[1].splitlines()[0])
    return task, result


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.cid for c in ALL_CASES])
def test_bad_input_fails_naming_it_and_changes_nothing(case, outcome):
    got = outcome["cases"][case.cid]
    if case is MANAGE_CASE:
        proc = got["proc"]
        assert proc.returncode != 0
        task, result = _manage_message(proc)
        # It fails in the assert step, before any task that would reach the host.
        assert task == "Check action"
        assert "TASK [" not in proc.stdout.split("TASK [Check action]", 1)[1]
        # The default callback prints "fatal: [localhost]: FAILED! => {...}" for a failed task.
        failed, msg, text = True, result["msg"], proc.stdout + proc.stderr
    else:
        result = got["result"]
        failed, msg, text = result.get("failed"), result.get("msg", ""), json.dumps(result)
    assert failed is True, result
    assert case.param in msg, msg
    if case.secret:
        assert case.secret not in text
        assert case.secret not in outcome["everything"]
    else:
        assert case.value in msg, msg
    for fragment in case.extra:
        assert fragment in msg, msg
    before, after = got["before"], got["after"]
    assert [p[0] for p in before["procs"]] == [KNOWN] and before["procs"][0][3] == "online", before
    assert after == before


def test_name_with_shell_metacharacters_stays_literal(outcome):
    """A new app named with $(...), backticks, ; | && > starts under exactly that name; no shell runs it."""
    start, delete = outcome["cases"]["literal_start"], outcome["cases"]["literal_delete"]
    assert start["result"].get("failed") is not True, start["result"]
    assert start["result"]["changed"] is True and start["result"]["action"] == "start"
    names = [p[0] for p in start["after"]["procs"]]
    assert sorted(names) == sorted([KNOWN, LITERAL])
    assert [p[3] for p in start["after"]["procs"] if p[0] == LITERAL] == ["online"]
    assert [p["name"] for p in start["result"]["process"]] == [LITERAL]
    for snap in (start["after"], delete["after"]):
        assert snap["canaries"] == [] and snap["trees"] == start["before"]["trees"]
    assert not glob.glob(os.path.join(REPO, "pwned*"))
    assert delete["result"].get("failed") is not True and delete["result"]["action"] == "delete"
    assert delete["after"] == start["before"]  # the known app was never touched


def test_snapshot_sees_changes(world):
    """The instrument is not blind: a canary file and a new tree entry show up in the snapshot."""
    before = snapshot(world)
    canary = world["apps"] / ("pwned-%s-probe" % TOKEN)
    canary.write_text("")
    try:
        after = snapshot(world)
    finally:
        canary.unlink()
    assert after != before
    assert after["canaries"] == [str(canary)]
    assert canary.name in after["trees"][str(world["apps"])]
    assert snapshot(world) == before


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
