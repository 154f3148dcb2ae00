# SPDX-License-Identifier: GPL-3.0-or-later
"""The events engine against real receivers on 127.0.0.1: an HTTP webhook receiver (plus one that answers
500, one that never answers and a refused port), a small SMTP server written here, and real files for the
event log. The helpers at the top are shared with test_notify_module.py."""
import base64
import datetime
import hashlib
import hmac
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from ansible_collections.devbox.ops.plugins.module_utils import events
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATH_TOKEN = "pathT0ken-abcdefghijklmnop-123456"  # like Slack's / Feishu's token in the path
QUERY_TOKEN = "queryT0ken-9f8e7d6c5b4a3"  # like DingTalk's access_token / WeCom's key
SIGN_SECRET = "SECsigning-secret-0011"
SMTP_USER, SMTP_PASSWORD = "alerts@example.com", "smtp-Pa55word-xyz"
SECRETS = (PATH_TOKEN, QUERY_TOKEN, SIGN_SECRET, SMTP_PASSWORD)
EVENT = dict(type="deploy", target="api", result="failed", step="verify", version="1.2.3", host="devbox1")
TEXT = "[devbox.ops] deploy api on devbox1: failed at step verify (v1.2.3)"


def assert_no_secret(*texts):
    blob = json.dumps(texts, default=str)
    for secret in SECRETS:
        assert secret not in blob


# ------------------------------------------------------------------ real servers


class _Receiver(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        self.server.received.append({"path": url.path, "query": dict((k, v[0]) for k, v in parse_qs(url.query).items()),
                                     "headers": dict(self.headers), "json": json.loads(body.decode()),
                                     "at": time.time()})
        if url.path.startswith("/500/"):
            return self._reply(500, {"error": "boom"})
        if url.path.startswith("/feishu-error/"):
            return self._reply(200, {"code": 19021, "msg": "sign match fail"})
        if url.path.startswith("/dingtalk-error/"):
            return self._reply(200, {"errcode": 310000, "errmsg": "keywords not in content"})
        return self._reply(200, {"code": 0, "errcode": 0, "errmsg": "ok"})


class Receiver:
    """A webhook receiver in a thread; ``url(prefix)`` carries a token in the path and in the query."""

    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
        self.server.daemon_threads = True
        self.server.received = []
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def received(self):
        return self.server.received

    def url(self, prefix="hook"):
        return "http://127.0.0.1:%d/%s/%s?access_token=%s" % (self.port, prefix, PATH_TOKEN, QUERY_TOKEN)

    def public(self, prefix="hook"):
        return "http://127.0.0.1:%d/%s/********" % (self.port, prefix)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class SilentPort:
    """Accepts TCP connections (kernel backlog) and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def refused_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough ESMTP: EHLO/HELO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def _say(self, text):
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self):
        server = self.server
        self._say("220 loopback ESMTP test server")
        authed, mail = server.creds is None, None
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            server.commands.append(verb)
            if verb in ("EHLO", "HELO"):
                self._say("250-loopback\r\n250-AUTH PLAIN\r\n250 8BITMIME" if verb == "EHLO" else "250 loopback")
            elif verb == "AUTH":
                parts = line.split(" ")
                if len(parts) < 3:
                    self._say("334 ")
                    parts.append(self.rfile.readline().decode().strip())
                _authzid, user, password = base64.b64decode(parts[2]).split(b"\0")
                authed = (user.decode(), password.decode()) == server.creds
                self._say("235 2.7.0 accepted" if authed else "535 5.7.8 bad credentials")
            elif verb == "MAIL":
                if not authed:
                    self._say("530 5.7.0 authentication required")
                    continue
                mail = {"from": line.split(":", 1)[1].strip(), "to": []}
                self._say("250 ok")
            elif verb == "RCPT":
                mail["to"].append(line.split(":", 1)[1].strip())
                self._say("250 ok")
            elif verb == "DATA":
                self._say("354 end with <CRLF>.<CRLF>")
                data = []
                while True:
                    chunk = self.rfile.readline()
                    if chunk in (b".\r\n", b""):
                        break
                    data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                mail["data"] = b"".join(data)
                server.mails.append(mail)
                self._say("250 queued")
            elif verb == "QUIT":
                self._say("221 bye")
                return
            elif verb in ("RSET", "NOOP"):
                self._say("250 ok")
            else:
                self._say("502 not implemented")


class SMTPServer:
    def __init__(self, creds=(SMTP_USER, SMTP_PASSWORD)):
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
        self.server.daemon_threads = True
        self.server.creds, self.server.mails, self.server.commands = creds, [], []
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def mails(self):
        return self.server.mails

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def inbox(receiver):
    del receiver.received[:]
    return receiver


@pytest.fixture(scope="module")
def silent():
    port = SilentPort()
    yield port
    port.close()


@pytest.fixture
def smtp():
    server = SMTPServer()
    yield server
    server.close()


# ------------------------------------------------------------------ payloads over real HTTP


@pytest.mark.parametrize("kind", events.WEBHOOK_KINDS)
def test_each_kind_posts_its_format(inbox, kind):
    result = events.send({"kind": kind, "url": inbox.url(), "timeout": 5}, events.make_event(**EVENT))
    assert result["ok"] is True and result["status"] == 200 and result["error"] is None
    assert result["target"] == inbox.public()
    [got] = inbox.received
    assert got["path"] == "/hook/" + PATH_TOKEN and got["query"] == {"access_token": QUERY_TOKEN}
    assert got["headers"]["Content-Type"].startswith("application/json")
    body = got["json"]
    if kind == "generic":
        assert dict((k, body[k]) for k in EVENT) == EVENT
        assert body["actor"]["user"] and body["ts"].endswith("Z")
    elif kind == "slack":
        assert body == {"text": TEXT}
    elif kind == "feishu":
        assert body == {"msg_type": "text", "content": {"text": TEXT}}
    else:
        assert body == {"msgtype": "text", "text": {"content": TEXT}}
    assert_no_secret(result)


def test_slack_blocks_and_extra_headers(inbox):
    event = events.make_event(actor={"user": "alice", "ci_job_id": "77"}, **EVENT)
    events.send({"kind": "slack", "url": inbox.url(), "blocks": True, "headers": {"X-Trace": "t1"}}, event)
    body = inbox.received[0]["json"]
    assert body["text"] == TEXT
    assert body["blocks"][0] == {"type": "section", "text": {"type": "mrkdwn", "text": TEXT}}
    context = [e["text"] for e in body["blocks"][1]["elements"]]
    assert "*actor*: ci_job_id=77, user=alice" in context and "*version*: 1.2.3" in context
    assert inbox.received[0]["headers"]["X-Trace"] == "t1"


def test_dingtalk_signing(inbox):
    events.send({"kind": "dingtalk", "url": inbox.url(), "secret": SIGN_SECRET}, events.make_event(**EVENT))
    got = inbox.received[0]
    query = got["query"]
    assert query["access_token"] == QUERY_TOKEN
    # DingTalk's documented check: base64(HMAC-SHA256(key=secret, msg="<ms timestamp>\n<secret>"))
    expected = base64.b64encode(hmac.new(SIGN_SECRET.encode(), ("%s\n%s" % (query["timestamp"], SIGN_SECRET)).encode(),
                                         hashlib.sha256).digest()).decode()
    assert query["sign"] == expected
    assert abs(int(query["timestamp"]) / 1000.0 - got["at"]) < 60


def test_feishu_signing(inbox):
    events.send({"kind": "feishu", "url": inbox.url(), "secret": SIGN_SECRET}, events.make_event(**EVENT))
    body = inbox.received[0]["json"]
    # Feishu's documented check: base64(HMAC-SHA256(key="<s timestamp>\n<secret>", msg=""))
    key = ("%s\n%s" % (body["timestamp"], SIGN_SECRET)).encode()
    assert body["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert body["content"] == {"text": TEXT} and abs(int(body["timestamp"]) - time.time()) < 60


def test_http_500_names_url_without_tokens(inbox):
    notifier = {"kind": "wecom", "url": inbox.url("500"), "secret": SIGN_SECRET}
    with pytest.raises(DevboxOpsError) as err:
        events.send(notifier, events.make_event(**EVENT))
    assert str(err.value) == "wecom notifier %s: answered HTTP 500" % inbox.public("500")
    result = events.send(notifier, events.make_event(**EVENT), raise_on_error=False)
    assert result["ok"] is False and result["status"] == 500
    assert len(inbox.received) == 2
    assert_no_secret(str(err.value), result)


@pytest.mark.parametrize("kind, prefix, code", [("feishu", "feishu-error", 19021), ("dingtalk", "dingtalk-error", 310000)])
def test_error_code_in_a_200_answer_is_a_failure(inbox, kind, prefix, code):
    result = events.send({"kind": kind, "url": inbox.url(prefix)}, events.make_event(**EVENT), raise_on_error=False)
    assert result["ok"] is False and result["status"] == 200
    assert "answered error %d" % code in result["error"]
    assert_no_secret(result)


def test_silent_receiver_times_out(silent):
    url = "http://127.0.0.1:%d/hook/%s?key=%s" % (silent.port, PATH_TOKEN, QUERY_TOKEN)
    started = time.monotonic()
    result = events.send({"kind": "wecom", "url": url, "timeout": 0.5}, events.make_event(**EVENT),
                         raise_on_error=False)
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 3
    assert result["error"] == "wecom notifier http://127.0.0.1:%d/hook/********: timed out after 0.5s" % silent.port
    assert_no_secret(result)


def test_refused_port_names_url_without_tokens():
    port = refused_port()
    url = "http://127.0.0.1:%d/hook/%s?access_token=%s" % (port, PATH_TOKEN, QUERY_TOKEN)
    with pytest.raises(DevboxOpsError) as err:
        events.send({"kind": "dingtalk", "url": url, "timeout": 2}, events.make_event(**EVENT))
    assert str(err.value) == "dingtalk notifier http://127.0.0.1:%d/hook/********: connection refused" % port
    assert err.value.param == "notifier" and QUERY_TOKEN not in repr(err.value.details)


def test_notify_all_keeps_going_and_reports_each(inbox, silent):
    notifiers = [
        {"kind": "slack", "url": inbox.url("500")},
        {"kind": "generic", "url": "http://127.0.0.1:%d/x?token=%s" % (silent.port, QUERY_TOKEN), "timeout": 0.3},
        {"kind": "email", "host": "127.0.0.1", "port": refused_port(), "to": ["ops@example.com"], "timeout": 2},
        {"kind": "feishu", "url": inbox.url()},
    ]
    results = events.notify_all(notifiers, events.make_event(**EVENT))
    assert [r["kind"] for r in results] == ["slack", "generic", "email", "feishu"]
    assert [r["ok"] for r in results] == [False, False, False, True]
    assert "answered HTTP 500" in results[0]["error"] and "timed out after 0.3s" in results[1]["error"]
    assert results[2]["error"].endswith("connection refused") and results[2]["target"].startswith("smtp://127.0.0.1:")
    assert [r["path"].split("/")[1] for r in inbox.received] == ["500", "hook"]
    assert_no_secret(results)


def test_notify_all_validates_everything_before_sending(inbox):
    notifiers = [{"kind": "slack", "url": inbox.url()}, {"kind": "teams", "url": inbox.url()}]
    with pytest.raises(DevboxOpsError) as err:
        events.notify_all(notifiers, events.make_event(**EVENT))
    assert "notifiers[1].kind" in str(err.value) and "teams" in str(err.value)
    for bad, param in (({"kind": "slack", "url": "ftp://x/" + QUERY_TOKEN}, "notifiers[0].url"),
                       ({"kind": "slack"}, "notifiers[0].url"),
                       ({"kind": "slack", "url": inbox.url(), "timeout": 0}, "notifiers[0].timeout"),
                       ({"kind": "email", "host": "h", "to": ["not-an-address"]}, "notifiers[0].to"),
                       ({"kind": "email", "to": ["a@b.c"]}, "notifiers[0].host")):
        with pytest.raises(DevboxOpsError) as err:
            events.notify_all([bad], events.make_event(**EVENT))
        assert err.value.param == param and param in str(err.value)
        assert QUERY_TOKEN not in str(err.value)
    assert inbox.received == []


def test_missing_requests_is_named():
    code = ("import sys; sys.modules['requests'] = None; sys.path.insert(0, %r)\n"
            "from ansible_collections.devbox.ops.plugins.module_utils import events\n"
            "print(events.notify_all([{'kind': 'slack', 'url': 'http://127.0.0.1:9/x'}], "
            "events.make_event('alert', 'api', 'down'))[0]['error'])" % os.path.join(REPO, ".collections"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "Python library 'requests'" in out.stdout


# ------------------------------------------------------------------ email over a real SMTP server


def test_email_is_sent_with_login(smtp):
    notifier = {"kind": "email", "host": "127.0.0.1", "port": smtp.port, "username": SMTP_USER,
                "password": SMTP_PASSWORD, "from": "devbox@example.com", "to": ["a@example.com", "b@example.com"]}
    result = events.send(notifier, events.make_event(**EVENT))
    assert result == dict(result, kind="email", target="smtp://127.0.0.1:%d" % smtp.port, ok=True, error=None)
    [mail] = smtp.mails
    assert mail["from"] == "<devbox@example.com>" and mail["to"] == ["<a@example.com>", "<b@example.com>"]
    message = message_from_bytes(mail["data"])
    assert message["Subject"] == TEXT and message["To"] == "a@example.com, b@example.com"
    body = message.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert body.startswith(TEXT + "\n\n")
    assert json.loads(body.split("\n\n", 1)[1])["step"] == "verify"
    assert "AUTH" in smtp.server.commands
    assert_no_secret(result)


def test_email_wrong_password_and_no_starttls(smtp):
    notifier = {"kind": "email", "host": "127.0.0.1", "port": smtp.port, "username": SMTP_USER,
                "password": SMTP_PASSWORD + "-wrong", "to": ["a@example.com"]}
    result = events.send(notifier, events.make_event(**EVENT), raise_on_error=False)
    assert result["error"] == "email notifier smtp://127.0.0.1:%d: authentication failed for user %s (535)" % (
        smtp.port, SMTP_USER)
    assert SMTP_PASSWORD not in json.dumps(result)
    notifier = dict(notifier, password=SMTP_PASSWORD, starttls=True)
    result = events.send(notifier, events.make_event(**EVENT), raise_on_error=False)
    assert result["error"].endswith("server does not support STARTTLS")
    assert smtp.mails == []


# ------------------------------------------------------------------ text, redaction


def test_text_line_and_redaction_helpers():
    assert events.format_text(events.make_event(**EVENT)) == TEXT
    line = events.format_text(dict(type="restart", target="web", result="ok", version="v2", message="by  hand\nnow"))
    assert line == "[devbox.ops] restart web: ok (v2) - by hand now"
    assert events.redact_text("see mongodb://bob:hunter2@db:27017/x?authSource=admin&password=p1 now") == \
        "see mongodb://bob:********@db:27017/x?authSource=admin&password=******** now"
    assert events.public_url("https://u:pw@hooks.slack.com/services/T01/B02/%s?x=1#f" % PATH_TOKEN) == \
        "https://hooks.slack.com/services/T01/B02/********"
    assert events.public_url("https://open.feishu.cn/open-apis/bot/v2/hook/0a1b2c3d-4e5f-6789-abcd-ef0123456789") \
        == "https://open.feishu.cn/open-apis/bot/v2/hook/********"
    assert [k for k in ("password", "apiToken", "db_pass", "X-Api-Key", "env", "client_secret", "private_key", "key",
                        "auth", "keyboard", "monkey", "target", "version", "passage", "authSource") if events.is_secret_key(k)] == \
        ["password", "apiToken", "db_pass", "X-Api-Key", "env", "client_secret", "private_key", "key", "auth"]


# ------------------------------------------------------------------ event log


def test_record_and_query_round_trip(tmp_path):
    log = events.EventLog(str(tmp_path / "sub" / "events.jsonl"))
    written = log.record("deploy", "api", "ok", version="1.0.0", release="20240501-1")
    [read] = log.query()
    assert read == written
    assert read["type"] == "deploy" and read["target"] == "api" and read["result"] == "ok"
    assert read["host"] == socket.gethostname() and read["actor"]["user"]
    parsed = datetime.datetime.strptime(read["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs((datetime.datetime.utcnow() - parsed).total_seconds()) < 60
    assert list(read)[:6] == ["ts", "host", "type", "target", "result", "actor"]
    with open(log.path) as handle:
        assert handle.read().count("\n") == 1


def test_query_filters(tmp_path):
    log = events.EventLog(str(tmp_path / "events.jsonl"))
    base = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    for i, (kind, target) in enumerate([("deploy", "api"), ("restart", "api"), ("deploy", "web"),
                                        ("alert", "api"), ("deploy", "api")]):
        log.record(kind, target, "ok", n=i, ts=base + datetime.timedelta(minutes=i))

    def n(found):
        return [e["n"] for e in found]

    assert n(log.query()) == [0, 1, 2, 3, 4]
    assert n(log.query(types=["deploy"])) == [0, 2, 4]
    assert n(log.query(types="deploy", target="api")) == [0, 4]
    assert n(log.query(since="2024-05-01T12:01:00Z")) == [1, 2, 3, 4]
    assert n(log.query(until=base + datetime.timedelta(minutes=2))) == [0, 1, 2]
    assert n(log.query(since=(base + datetime.timedelta(minutes=1)).timestamp(), until="2024-05-01T12:03:00+00:00")) \
        == [1, 2, 3]
    assert n(log.query(limit=2)) == [3, 4] and n(log.query(target="api", limit=10)) == [0, 1, 3, 4]
    assert log.query(limit=0) == []
    with pytest.raises(DevboxOpsError) as err:
        log.query(since="yesterday")
    assert "since" in str(err.value) and "yesterday" in str(err.value)
    assert events.EventLog(str(tmp_path / "missing.jsonl")).query() == []


def test_torn_last_line_is_skipped_and_never_glued(tmp_path):
    log = events.EventLog(str(tmp_path / "events.jsonl"))
    log.record("backup", "db", "ok")
    with open(log.path, "ab") as handle:  # a writer died in the middle of its line
        handle.write(b'{"ts": "2024-05-01T12:00:00.000Z", "type": "resto')
    assert [e["type"] for e in log.query()] == ["backup"] and log.skipped == 1
    log.record("restore", "db", "ok")
    assert [e["type"] for e in log.query()] == ["backup", "restore"] and log.skipped == 1
    with open(log.path, "rb") as handle:
        lines = handle.read().split(b"\n")
    assert lines[1] == b'{"ts": "2024-05-01T12:00:00.000Z", "type": "resto' and lines[-1] == b""


def test_concurrent_appends_stay_whole_lines(tmp_path):
    path = str(tmp_path / "events.jsonl")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from ansible_collections.devbox.ops.plugins.module_utils.events import EventLog\n"
            "log = EventLog(%r)\n"
            "for i in range(100): log.record('heal', 'w' + sys.argv[1], 'ok', i=i, pad='x' * 3000)\n"
            % (os.path.join(REPO, ".collections"), path))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    found = events.EventLog(path).query()
    assert len(found) == 300
    for worker in range(3):
        assert [e["i"] for e in found if e["target"] == "w%d" % worker] == list(range(100))
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"


def test_secrets_are_redacted_before_writing(tmp_path):
    log = events.EventLog(str(tmp_path / "events.jsonl"))
    log.record("deploy", "api", "ok", password="pw-1-secret", api_token="tok-2-secret",
               env={"DB_PASSWORD": "env-3-secret", "PORT": "3000"},
               source="https://deploy:git-4-secret@git.example.com/app.git",
               webhook="https://oapi.dingtalk.com/robot/send?access_token=tok-5-secret&x=1",
               nested={"headers": {"Authorization": "Bearer tok-6-secret"}, "keyboard": "visible"},
               message="pulled from https://u:pw-7-secret@host/x")
    with open(log.path) as handle:
        raw = handle.read()
    assert "-secret" not in raw
    [event] = log.query()
    assert event["password"] == events.MASK and event["env"] == {"DB_PASSWORD": events.MASK, "PORT": events.MASK}
    assert event["source"] == "https://deploy:********@git.example.com/app.git"
    assert event["webhook"] == "https://oapi.dingtalk.com/robot/send?access_token=********&x=1"
    assert event["nested"] == {"headers": {"Authorization": events.MASK}, "keyboard": "visible"}


def test_bad_input_names_param_and_writes_nothing(tmp_path):
    log = events.EventLog(str(tmp_path / "events.jsonl"))
    for args, param, value in ((("Deploy!", "api", "ok"), "type", "Deploy!"), (("deploy", "", "ok"), "target", ""),
                               (("deploy", "api", None), "result", None)):
        with pytest.raises(DevboxOpsError) as err:
            log.record(*args)
        assert err.value.param == param and err.value.value == value and param in str(err.value)
    with pytest.raises(DevboxOpsError) as err:
        events.event_from_dict({"type": "deploy", "result": "ok"})
    assert err.value.param == "event.target"
    assert not os.path.exists(log.path)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(DevboxOpsError) as err:
        events.EventLog(str(blocked / "events.jsonl")).record("deploy", "api", "ok")
    assert err.value.param == "event_log" and str(blocked) in str(err.value)


def test_actor_detection(monkeypatch):
    for name in ("SUDO_USER", "CI_JOB_ID", "GITHUB_RUN_ID", "AWX_JOB_ID", "TOWER_JOB_ID", "BUILD_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "carol")
    assert events.Actor.detect() == {"user": "carol"}
    monkeypatch.setenv("SUDO_USER", "alice")
    monkeypatch.setenv("CI_JOB_ID", "4711")
    monkeypatch.setenv("TOWER_JOB_ID", "99")
    assert events.Actor.detect() == {"user": "alice", "ci_job_id": "4711", "awx_job_id": "99"}
    monkeypatch.setenv("AWX_JOB_ID", "100")
    monkeypatch.setenv("GITHUB_RUN_ID", "555")
    monkeypatch.setenv("BUILD_ID", "b-1")
    assert events.Actor.detect() == {"user": "alice", "ci_job_id": "4711", "github_run_id": "555",
                                     "awx_job_id": "100", "build_id": "b-1"}
    import pwd
    assert events.Actor.detect({}) == {"user": pwd.getpwuid(os.getuid()).pw_name}
    assert events.make_event("scale", "api", "ok")["actor"]["github_run_id"] == "555"


# ------------------------------------------------------------------ alert dedup / remind


def test_alert_state_dedup_and_remind():
    state = events.AlertState()
    steps = [("api", "ok", 0, False),          # first sight, good: nothing to say
             ("api", "critical", 10, True),    # went bad
             ("api", "critical", 20, False),   # still bad, too early to remind
             ("api", "critical", 309, False),
             ("api", "critical", 310, True),   # remind_after passed
             ("api", "critical", 400, False),
             ("api", "warning", 401, True),    # changed level
             ("api", "ok", 402, True),         # recovered
             ("api", "ok", 9999, False),       # good states are never reminded
             ("db", "down", 5, True)]          # first sight, bad
    assert [state.should_send(k, s, t, remind_after_s=300) for k, s, t, _want in steps] == [x[3] for x in steps]
    again = events.AlertState(data=json.loads(json.dumps(state.to_dict())))
    assert again.should_send("db", "down", 304, 300) is False and again.should_send("db", "down", 305, 300) is True
    assert events.AlertState().should_send("x", "bad", 0, None) is True
    quiet = events.AlertState(good_states=("online",))
    assert quiet.should_send("x", "online", 0) is False and quiet.should_send("x", "errored", 1) is True


# ------------------------------------------------------------------ audit helpers (actor, relative times, query)


def test_actor_helper_builds_one_dict_from_given_values():
    env = {"USER": "carol", "GITHUB_RUN_ID": "555", "CI_JOB_ID": "", "BUILD_ID": "b-1"}
    assert events.actor(environ=env) == {"user": "carol", "github_run_id": "555", "build_id": "b-1"}
    assert events.actor(user="dave", host="laptop", environ={"AWX_JOB_ID": "1"}, awx_job_id=42) == \
        {"user": "dave", "host": "laptop", "awx_job_id": "42"}  # the AWX variable wins over the env
    assert events.actor(environ={"SUDO_USER": "root-user", "USER": "root"})["user"] == "root-user"
    assert events.Actor.detect(env) == events.actor(environ=env)
    assert events.actor_matches({"user": "a", "host": "h", "ci_job_id": "9"}, "a@h")
    assert events.actor_matches({"user": "a", "host": "h", "ci_job_id": "9"}, "9")
    assert not events.actor_matches({"user": "a", "host": "h"}, "h@a")


def test_parse_moment_relative_and_absolute():
    now = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    for text, delta in (("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("now", 0)):
        assert events.parse_moment(text, now=now) == now - datetime.timedelta(seconds=delta)
    assert events.parse_moment("2024-05-01T10:00:00Z", now=now).hour == 10
    with pytest.raises(DevboxOpsError) as err:
        events.parse_moment("3 fortnights", "until")
    assert err.value.param == "until" and "3 fortnights" in str(err.value) and "15m" in str(err.value)


def test_query_by_result_actor_and_targets_and_the_table(tmp_path):
    log = events.EventLog(str(tmp_path / "events.jsonl"))
    log.record("restart", "api", "ok", actor=events.actor(user="alice", host="lap", environ={"CI_JOB_ID": "77"}))
    log.record("scale", "web", "failed", actor={"user": "bob"}, instances=3, message="token=abc-secret-1")
    log.record("heal", "api", "restarted", actor={"user": "watchdog@devbox1"})
    assert [e["type"] for e in log.query(result="failed")] == ["scale"]
    assert [e["type"] for e in log.query(result=["ok", "restarted"])] == ["restart", "heal"]
    assert [e["type"] for e in log.query(actor="77")] == ["restart"]
    assert [e["type"] for e in log.query(actor="alice@lap")] == ["restart"]
    assert [e["type"] for e in log.query(actor="watchdog@devbox1")] == ["heal"]
    assert [e["type"] for e in log.query(target=["web", "api"], since="1h")] == ["restart", "scale", "heal"]
    table = events.format_table(log.query())
    assert table[0].split() == ["TIME", "HOST", "TYPE", "TARGET", "RESULT", "ACTOR", "DETAIL"]
    assert "alice@lap ci_job_id=77" in table[1]
    assert "instances=3" in table[2] and "abc-secret-1" not in "\n".join(table)
    assert len(set(line.index("RESULT") if i == 0 else None for i, line in enumerate(table))) <= 2
