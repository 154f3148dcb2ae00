# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.notify through ad-hoc `ansible localhost`, against the real receivers of test_events.py.

Secrets go in through extra vars (a file), as a playbook would template them: on failure ansible-core
2.19 prints the ad-hoc task's raw ``-a`` text, so a literal secret there would be echoed by Ansible itself.
"""
import json
import os
import subprocess

import pytest

from test_events import (EVENT, QUERY_TOKEN, SECRETS, SIGN_SECRET, SMTP_PASSWORD, SMTP_USER, TEXT,
                         Receiver, SMTPServer, refused_port)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET_VARS = {"hook_url": None, "sign_secret": SIGN_SECRET, "smtp_password": SMTP_PASSWORD,
               "bearer": "Bearer hdr-" + QUERY_TOKEN}


def run_notify(tmp_path, args, secret_vars, *extra):
    """Run the module; returns (rc, result dict, stdout + stderr)."""
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(secret_vars))
    tree = tmp_path / "tree"
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="0")
    argv = [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", "devbox.ops.notify",
            "-a", json.dumps(args), "-e", "@%s" % vars_file,
            "-e", "ansible_python_interpreter=%s" % os.path.join(REPO, ".venv", "bin", "python"),
            "-t", str(tree)] + list(extra)
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    with open(str(tree / "localhost")) as handle:
        return proc.returncode, json.load(handle), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def inbox(receiver):
    del receiver.received[:]
    return receiver


def assert_clean(*texts):
    blob = json.dumps(texts, default=str)
    for secret in SECRETS + ("hdr-" + QUERY_TOKEN,):
        assert secret not in blob


def test_sends_logs_and_keeps_going(tmp_path, inbox):
    log = tmp_path / "logs" / "events.jsonl"
    args = {
        "event": dict(EVENT, db_password="{{ smtp_password }}"),
        "notifiers": [
            {"kind": "slack", "url": "{{ hook_url }}"},
            {"kind": "dingtalk", "url": "{{ hook_url | replace('/hook/', '/500/') }}", "secret": "{{ sign_secret }}"},
            {"kind": "generic", "url": "{{ hook_url }}", "headers": {"Authorization": "{{ bearer }}"}},
        ],
        "event_log": str(log),
    }
    rc, res, output = run_notify(tmp_path, args, dict(SECRET_VARS, hook_url=inbox.url()))
    assert rc == 0, output
    assert res["changed"] is True and res["msg"] == "3 notifier(s): 2 sent, 1 failed"
    assert [(r["kind"], r["ok"], r["status"]) for r in res["results"]] == [
        ("slack", True, 200), ("dingtalk", False, 500), ("generic", True, 200)]
    assert res["results"][1]["error"] == "dingtalk notifier %s: answered HTTP 500" % inbox.public("500")
    assert "[WARNING]: dingtalk notifier %s: answered HTTP 500" % inbox.public("500") in output
    assert res["text"] == TEXT and res["event"]["db_password"] == "********"
    # what the receivers really got
    assert [r["path"].split("/")[1] for r in inbox.received] == ["hook", "500", "hook"]
    assert inbox.received[0]["json"] == {"text": TEXT}
    assert inbox.received[1]["query"]["sign"] and inbox.received[1]["query"]["access_token"] == QUERY_TOKEN
    generic = inbox.received[2]
    assert generic["headers"]["Authorization"] == SECRET_VARS["bearer"]
    assert generic["json"]["db_password"] == "********" and generic["json"]["step"] == "verify"
    # and the audit log
    [line] = log.read_text().splitlines()
    logged = json.loads(line)
    assert logged["type"] == "deploy" and logged["actor"]["user"] and logged["ts"] == res["event"]["ts"]
    assert logged["notified"] == [{"kind": k, "target": inbox.public(p), "ok": ok} for k, p, ok in
                                  (("slack", "hook", True), ("dingtalk", "500", False), ("generic", "hook", True))]
    assert_clean(output, res, log.read_text())


def test_fail_on_error_names_url_without_token(tmp_path, inbox):
    port = refused_port()
    args = {"event": EVENT, "fail_on_error": True,
            "notifiers": [{"kind": "wecom", "url": "{{ hook_url }}", "timeout": 2},
                          {"kind": "feishu", "url": "{{ good_url }}"}]}
    bad = "http://127.0.0.1:%d/cgi-bin/webhook/send?key=%s" % (port, QUERY_TOKEN)
    rc, res, output = run_notify(tmp_path, args, dict(SECRET_VARS, hook_url=bad, good_url=inbox.url()))
    assert rc != 0
    assert res["msg"] == ("2 notifier(s): 1 sent, 1 failed: wecom notifier http://127.0.0.1:%d/cgi-bin/webhook/send: "
                          "connection refused" % port)
    assert res["changed"] is True and [r["ok"] for r in res["results"]] == [False, True]
    assert len(inbox.received) == 1
    assert_clean(output, res)


def test_check_mode_sends_nothing_and_shows_payloads(tmp_path, inbox):
    log = tmp_path / "events.jsonl"
    args = {"event": EVENT, "event_log": str(log),
            "notifiers": [{"kind": "feishu", "url": "{{ hook_url }}", "secret": "{{ sign_secret }}"},
                          {"kind": "email", "host": "127.0.0.1", "to": ["ops@example.com"], "username": SMTP_USER,
                           "password": "{{ smtp_password }}"}]}
    rc, res, output = run_notify(tmp_path, args, dict(SECRET_VARS, hook_url=inbox.url()), "--check")
    assert rc == 0, output
    assert res["changed"] is True and res["event_log"] is None
    feishu, email = res["results"]
    assert feishu["payload"] == {"msg_type": "text", "content": {"text": TEXT}} and feishu["ok"] is None
    assert feishu["target"] == inbox.public()
    assert email["target"] == "smtp://127.0.0.1:25" and email["payload"]["subject"] == TEXT
    assert inbox.received == [] and not log.exists()
    assert_clean(output, res)


def test_email_through_the_module(tmp_path):
    smtp = SMTPServer()
    try:
        args = {"event": {"type": "alert", "target": "api", "result": "down", "message": "3 probes failed"},
                "notifiers": [{"kind": "email", "host": "127.0.0.1", "port": smtp.port, "username": SMTP_USER,
                               "password": "{{ smtp_password }}", "from": "bot@example.com", "to": ["me@example.com"]}]}
        rc, res, output = run_notify(tmp_path, args, SECRET_VARS)
    finally:
        smtp.close()
    assert rc == 0, output
    assert res["results"][0]["ok"] is True and res["changed"] is True
    [mail] = smtp.mails
    assert mail["to"] == ["<me@example.com>"]
    assert b"Subject: [devbox.ops] alert api on " in mail["data"] and b": down - 3 probes failed" in mail["data"]
    assert_clean(output, res)


def test_bad_input_fails_before_sending(tmp_path, inbox):
    log = tmp_path / "events.jsonl"
    args = {"event": EVENT, "event_log": str(log),
            "notifiers": [{"kind": "slack", "url": "{{ hook_url }}"}, {"kind": "dingtalk", "timeout": 3}]}
    rc, res, output = run_notify(tmp_path, args, dict(SECRET_VARS, hook_url=inbox.url()))
    assert rc != 0
    assert res["msg"] == "notifiers[1].url=None: expected an http:// or https:// URL"
    args = {"event": {"type": "deploy", "target": "api"}, "event_log": str(log)}
    rc, res, _out = run_notify(tmp_path, args, SECRET_VARS)
    assert rc != 0 and res["msg"] == "event.result=None: required"
    assert inbox.received == [] and not log.exists()
    assert_clean(output, res)
