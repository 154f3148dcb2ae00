# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.audit run for real through `ansible` (module + its action plugin) on a real event log file.

The actor comes from the controller: these runs give the controller process CI variables and an
awx_job_id extra var and check that they land in the recorded event."""
import datetime
import json
import os
import socket

from test_pm2_modules import ansible

from ansible_collections.devbox.ops.plugins.module_utils.events import MASK, EventLog

CI_VARS = ("CI_JOB_ID", "GITHUB_RUN_ID", "AWX_JOB_ID", "TOWER_JOB_ID", "BUILD_ID", "SUDO_USER")


def clean_env(monkeypatch, **values):
    for name in CI_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def read(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_record_takes_the_actor_from_the_controller(tmp_path, monkeypatch):
    clean_env(monkeypatch, USER="alice", GITHUB_RUN_ID="9876543")
    log = str(tmp_path / "events.jsonl")
    event = {"type": "restart", "target": "api", "result": "ok", "instances": 2}
    rc, out, res = ansible("audit", {"state": "record", "event_log": log, "event": event}, "--check")
    assert rc == 0, out
    assert res["changed"] is True and res["event"]["type"] == "restart" and not os.path.exists(log)
    rc, out, res = ansible("audit", {"state": "record", "event_log": log, "event": event}, "-e", "awx_job_id=77")
    assert rc == 0, out
    [written] = read(log)
    assert written == res["event"]
    assert written["actor"] == {"user": "alice", "host": socket.gethostname(), "awx_job_id": "77",
                                "github_run_id": "9876543"}
    assert (written["type"], written["target"], written["result"], written["instances"]) == ("restart", "api", "ok", 2)
    # an explicit actor is kept as given
    rc, out, res = ansible("audit", {"state": "record", "event_log": log,
                                     "event": dict(event, actor={"user": "watchdog@devbox1"})})
    assert rc == 0, out
    assert read(log)[-1]["actor"] == {"user": "watchdog@devbox1"}


def test_query_filters_and_table(tmp_path, monkeypatch):
    clean_env(monkeypatch, USER="bob")
    log = EventLog(str(tmp_path / "events.jsonl"))
    now = datetime.datetime.now(datetime.timezone.utc)
    rows = [(300, "deploy", "api", "success", {"user": "bob", "host": "laptop", "ci_job_id": "4711"}),
            (90, "restart", "api", "ok", {"user": "alice", "host": "laptop"}),
            (60, "scale", "web", "failed", {"user": "alice", "host": "laptop"}),
            (30, "heal", "api", "restarted", {"user": "watchdog@devbox1"}),
            (1, "restart", "web", "ok", {"user": "bob", "host": "ci"})]
    for minutes, kind, target, result, who in rows:
        log.record(kind, target, result, actor=who, ts=now - datetime.timedelta(minutes=minutes), host="devbox1")

    def query(**args):
        rc, out, res = ansible("audit", dict({"event_log": log.path}, **args))
        assert rc == 0, out
        assert res["changed"] is False and res["count"] == len(res["events"])
        return [(e["type"], e["target"]) for e in res["events"]], res

    assert query()[0] == [(r[1], r[2]) for r in rows]
    assert query(since="2h")[0] == [("restart", "api"), ("scale", "web"), ("heal", "api"), ("restart", "web")]
    assert query(since="2h", until="45m")[0] == [("restart", "api"), ("scale", "web")]
    assert query(type=["restart", "scale"], app=["web"])[0] == [("scale", "web"), ("restart", "web")]
    assert query(result=["failed"])[0] == [("scale", "web")]
    assert query(actor="4711")[0] == [("deploy", "api")]
    assert query(actor="bob@ci")[0] == [("restart", "web")]
    assert query(actor="watchdog@devbox1")[0] == [("heal", "api")]
    found, res = query(limit=2)
    assert found == [("heal", "api"), ("restart", "web")]
    assert res["table"][0].split() == ["TIME", "HOST", "TYPE", "TARGET", "RESULT", "ACTOR", "DETAIL"]
    assert "bob@ci" in res["table"][2] and "heal" in res["table"][1] and len(res["table"]) == 3
    assert query(event_log=str(tmp_path / "none.jsonl"))[0] == []


def test_secret_fields_are_masked(tmp_path, monkeypatch):
    clean_env(monkeypatch, USER="alice")
    log = str(tmp_path / "events.jsonl")
    rc, out, _res = ansible("audit", {"state": "record", "event_log": log, "event": {
        "type": "deploy", "target": "api", "result": "ok", "db_password": "pw-canary-1f2e",
        "message": "pulled https://u:pw-canary-3c4d@git.example.com/x.git"}})
    assert rc == 0, out
    assert "pw-canary" not in out
    with open(log) as handle:
        raw = handle.read()
    assert "pw-canary" not in raw and read(log)[0]["db_password"] == MASK


def test_bad_input_names_param_and_value_and_writes_nothing(tmp_path, monkeypatch):
    clean_env(monkeypatch, USER="alice")
    log = str(tmp_path / "events.jsonl")
    cases = [
        ({"state": "record", "event": {"type": "Restart!", "target": "api", "result": "ok"}}, "event.type", "Restart!"),
        ({"state": "record", "event": {"type": "restart", "result": "ok"}}, "event.target", "required"),
        ({"state": "record", "event": {"type": "restart", "target": "api", "result": "ok"}, "since": "1h"},
         "since", "query filter"),
        ({"state": "record"}, "event", "state is record"),
        ({"since": "yesterday"}, "since", "yesterday"),
        ({"until": "2024-13-45"}, "until", "2024-13-45"),
        ({"limit": -1}, "limit", "-1"),
        ({"state": "purge"}, "state", "purge"),
    ]
    for args, param, fragment in cases:
        rc, out, res = ansible("audit", dict(args, event_log=log))
        assert rc != 0, (args, out)
        assert param in res["msg"] and fragment in res["msg"], (args, res["msg"])
    assert not os.path.exists(log)
