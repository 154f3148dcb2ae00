# SPDX-License-Identifier: GPL-3.0-or-later
"""The devbox.ops.deploy_report callback, for real: ansible-playbook runs a small playbook on two local hosts
(connection local) with the callback enabled; one host "deploys" (sets devbox_deploy_result like the deploy
role) and the other fails. A real HTTP receiver on loopback takes the notification. Nothing is mocked.
"""
import http.server
import json
import os
import re
import subprocess
import sys
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK_BIN = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
TOKEN = "Tok3nS3cr3tInPath0123456789abcdef"
QUERY_SECRET = "querysecret-5b1e"

PLAYBOOK = """---
- name: A run with a deploy on one host and a failure on the other
  hosts: all
  gather_facts: false
  tasks:
    - name: Change something
      ansible.builtin.command:
        argv: ["true"]
      changed_when: inventory_hostname == 'web1'

    - name: Record the deploy like the deploy role does
      ansible.builtin.set_fact:
        devbox_deploy_result: {app: api, version: 2.1.0, release: 20260101T000000Z-abcdef12, result: success}
      when: inventory_hostname == 'web1'

    - name: Skip something
      ansible.builtin.debug:
        msg: skipped
      when: false

    - name: Fail on web2
      ansible.builtin.fail:
        msg: broken on purpose
      when: inventory_hostname == 'web2'
"""


class Receiver:
    def __init__(self):
        self.bodies, self.paths = [], []
        bodies, paths = self.bodies, self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                paths.append(self.path)
                bodies.append(json.loads(self.rfile.read(length).decode("utf-8")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


def run(tmp_path, extra_env=None, *extra):
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    (tmp_path / "hosts.ini").write_text(
        "[all]\nweb1 ansible_connection=local ansible_python_interpreter=%s\n"
        "web2 ansible_connection=local ansible_python_interpreter=%s\n" % (sys.executable, sys.executable))
    env = dict(os.environ, ANSIBLE_CALLBACKS_ENABLED="devbox.ops.deploy_report", ANSIBLE_NOCOLOR="1",
               ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), **(extra_env or {}))
    proc = subprocess.run([PLAYBOOK_BIN, "-i", str(tmp_path / "hosts.ini"), str(tmp_path / "site.yml")] + list(extra),
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300, check=False)
    return proc


def table_rows(output):
    lines = output.splitlines()
    start = [i for i, line in enumerate(lines) if line.startswith("DEPLOY REPORT ")]
    assert start, output[-3000:]
    rows = {}
    for line in lines[start[-1] + 2:]:
        cells = line.split()
        if len(cells) < 9 or not cells[0].startswith("web"):
            break
        rows[cells[0]] = cells
    return lines[start[-1]], rows


def test_table_record_and_notification_of_a_failed_run(tmp_path, receiver):
    hook = "http://127.0.0.1:%d/hooks/%s?access_token=%s" % (receiver.port, TOKEN, QUERY_SECRET)
    records = tmp_path / "records"
    proc = run(tmp_path, {"DEVBOX_DEPLOY_REPORT_NOTIFY": json.dumps([{"kind": "generic", "url": hook, "timeout": 5}]),
                          "AWX_JOB_ID": "4711"},
               "-e", "devbox_deploy_report_dir=%s" % records)
    assert proc.returncode == 2, proc.stdout[-3000:]
    out = proc.stdout
    head, rows = table_rows(out)
    assert re.match(r"DEPLOY REPORT site\.yml: failed in [0-9.]+s$", head), head
    # HOST OK CHANGED FAILED UNREACH SKIPPED RESCUED DURATION VERSION...
    assert rows["web1"][1:7] == ["2", "1", "0", "0", "2", "0"], rows
    assert rows["web1"][8:] == ["api", "2.1.0", "(success)"], rows
    assert rows["web2"][1:7] == ["1", "0", "1", "0", "2", "0"], rows
    assert rows["web2"][8:] == ["-"], rows
    assert "version api 2.1.0: web1" in out

    [path] = list(records.iterdir())
    assert path.name.startswith("site-") and path.suffix == ".json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    record = json.loads(path.read_text())
    assert record["playbook"] == "site.yml" and record["result"] == "failed" and record["changed"] is True
    assert record["actor"]["user"] and record["actor"]["host"] and record["actor"]["awx_job_id"] == "4711"
    web1, web2 = record["hosts"]["web1"], record["hosts"]["web2"]
    assert (web1["ok"], web1["changed"], web1["failed"], web1["skipped"]) == (2, 1, 0, 2)
    assert (web1["app"], web1["version"], web1["release"], web1["deploy_result"]) == (
        "api", "2.1.0", "20260101T000000Z-abcdef12", "success")
    assert (web2["failed"], web2["version"]) == (1, None)
    assert 0 <= web1["duration_s"] <= record["duration_s"]
    assert record["versions"] == {"api 2.1.0": ["web1"]}
    assert record["started"] <= record["ended"]
    [sent] = record["notifications"]
    assert sent["ok"] is True and sent["status"] == 200

    # the notification reached the receiver, through the events engine's generic JSON format
    [body] = receiver.bodies
    assert receiver.paths == ["/hooks/%s?access_token=%s" % (TOKEN, QUERY_SECRET)]
    assert (body["type"], body["target"], body["result"]) == ("playbook", "site.yml", "failed")
    assert "2 host(s), 1 failed (web2)" in body["message"] and "api 2.1.0 on web1" in body["message"]
    assert body["hosts"]["web1"]["version"] == "2.1.0"

    # the webhook's secrets appear nowhere: not in the output, the record or the body
    for text in (out, path.read_text(), json.dumps(body)):
        assert TOKEN not in text and QUERY_SECRET not in text


def test_notify_on_failure_sends_nothing_for_a_good_run_and_bad_notifiers_are_named(tmp_path, receiver):
    (tmp_path / "ok.yml").write_text("""---
- name: Good run
  hosts: all
  gather_facts: false
  tasks:
    - name: Nothing
      ansible.builtin.debug:
        msg: fine
""")
    (tmp_path / "hosts.ini").write_text("[all]\nweb1 ansible_connection=local ansible_python_interpreter=%s\n"
                                        % sys.executable)
    env = dict(os.environ, ANSIBLE_CALLBACKS_ENABLED="devbox.ops.deploy_report", ANSIBLE_NOCOLOR="1",
               DEVBOX_DEPLOY_REPORT_NOTIFY=json.dumps([{"kind": "generic", "url": "http://127.0.0.1:%d/x" % receiver.port}]))
    argv = [PLAYBOOK_BIN, "-i", str(tmp_path / "hosts.ini"), str(tmp_path / "ok.yml")]
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r"DEPLOY REPORT ok\.yml: success in", proc.stdout)
    assert receiver.bodies == []  # notify_on defaults to failure

    env["DEVBOX_DEPLOY_REPORT_NOTIFY_ON"] = "always"
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300, check=False)
    assert proc.returncode == 0 and len(receiver.bodies) == 1 and receiver.bodies[0]["result"] == "success"

    env["DEVBOX_DEPLOY_REPORT_NOTIFY"] = json.dumps([{"kind": "pager", "url": "http://127.0.0.1:1/x"}])
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "notifiers[0].kind" in proc.stdout and "pager" in proc.stdout, proc.stdout[-2000:]
