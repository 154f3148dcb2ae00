# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.health_check run for real by `ansible` (ad hoc, one-line output) against a real server."""
import json
import os
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
ANSIBLE = os.path.join(REPO, ".venv", "bin", "ansible")
TOKEN = "tok-9f8e7d6c5b4a-secret"
PROBE_KEY = "key-1a2b3c4d-secret"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        key = parse_qs(url.query).get("key", [url.path])[0]
        with self.server.lock:
            index = self.server.hits.get(key, 0)
            self.server.hits[key] = index + 1
        if url.path == "/auth":  # both secrets must arrive: the top-level one and the probe's own
            ok = (self.headers.get("Authorization") == "Bearer " + TOKEN
                  and self.headers.get("X-Key") == PROBE_KEY)
            status = 200 if ok else 401
        elif url.path == "/alt":
            status = 200 if index % 2 == 0 else 503
        else:
            status = 200 if url.path == "/ok" else 404
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.lock, srv.hits = threading.Lock(), {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base = "http://127.0.0.1:%d" % srv.server_address[1]
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def refused_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def run_module(args, *extra):
    """Run the module with `ansible localhost -o`; returns (rc, status word, result dict, all output)."""
    proc = subprocess.run(
        [ANSIBLE, "localhost", "-i", "localhost,", "-c", "local", "-o",
         "-e", "ansible_python_interpreter=" + PYTHON,
         "-m", "devbox.ops.health_check", "-a", json.dumps(args)] + list(extra),
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"))
    output = proc.stdout + proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("localhost | ")][-1]
    status = line.split(" | ")[1].split(" =>")[0]
    return proc.returncode, status, json.loads(line.split("=>", 1)[1]), output


def test_passing_probes_ok_and_unchanged(server, tmp_path):
    marker = tmp_path / "ran"
    rc, status, result, _out = run_module({
        "url": server.base + "/ok",
        "timeout": 1, "period": 0.2,
        "probes": [
            {"name": "port", "port": server.server_address[1]},
            {"name": "script", "argv": ["touch", str(marker)]},
        ],
    })
    assert rc == 0 and status == "SUCCESS", result
    assert result["changed"] is False and result["failed_probes"] == []
    assert [r["name"] for r in result["results"]] == ["port", "script", "GET %s/ok" % server.base]
    assert all(r["ok"] and r["attempts"] == 1 for r in result["results"])
    assert result["results"][2]["status_code"] == 200
    assert marker.exists()  # the command probe really ran


def test_unreachable_url_fails_and_names_it(server, refused_port):
    url = "http://127.0.0.1:%d/health" % refused_port
    rc, status, result, _out = run_module({
        "probes": [{"name": "api", "url": url}, {"name": "fine", "url": server.base + "/ok"},
                   {"name": "slow", "argv": ["sleep", "1.5"], "timeout": 0.3, "failure_threshold": 1}],
        "timeout": 0.5, "period": 0.1, "failure_threshold": 2,
    })
    assert rc != 0 and status == "FAILED!"
    assert result["failed_probes"] == ["api", "slow"]
    assert "GET %s: connection refused (2 consecutive failures" % url in result["msg"]
    assert "command: sleep 1.5: timed out after 0.3s" in result["msg"]  # a sub-second timeout holds
    api, fine, _slow = result["results"]
    assert api["attempts"] == 2 and api["ok"] is False and fine["ok"] is True
    assert result["changed"] is False


def test_secret_headers_never_shown_with_vvv(server, refused_port):
    rc, status, result, output = run_module({
        "headers": {"Authorization": "Bearer " + TOKEN},
        "probes": [
            {"name": "auth", "url": server.base + "/auth", "headers": {"X-Key": PROBE_KEY}},
            {"name": "down", "url": "http://127.0.0.1:%d/" % refused_port, "headers": {"X-Key": PROBE_KEY}},
        ],
        "timeout": 0.5, "period": 0.1, "failure_threshold": 1,
    }, "-vvv")
    assert status == "FAILED!" and result["failed_probes"] == ["down"]
    assert result["results"][0]["ok"] is True  # so both secret headers reached the server
    assert len(output) > 2000  # -vvv really was verbose
    assert TOKEN not in output and PROBE_KEY not in output


def test_check_mode_still_probes(server):
    rc, status, result, _out = run_module({"url": server.base + "/ok?key=checkmode"}, "--check")
    assert rc == 0 and status == "SUCCESS"
    assert result["changed"] is False
    assert server.hits.get("checkmode") == 1


def test_bad_input_fails_before_any_probe(server):
    rc, status, result, _out = run_module({
        "probes": [{"url": server.base + "/ok?key=never"}, {"url": server.base + "/ok", "timeout": -1}],
    })
    assert status == "FAILED!"
    assert result["msg"] == "probes[1]: timeout=-1.0: must be > 0"
    assert "never" not in server.hits


def test_sample_gate_fails_with_reason(server):
    rc, status, result, _out = run_module({
        "url": server.base + "/alt?key=gate",
        "sample": {"count": 10, "concurrency": 2, "max_error_rate": 0.1, "max_p95_ms": 5000},
    })
    assert status == "FAILED!"
    stats = result["results"][0]["sample"]
    assert stats["count"] == 10 and stats["error_rate"] == 0.5
    assert result["msg"] == ("health check failed: GET %s/alt?key=gate: sample of 10 requests failed the gate: "
                             "error rate 0.5 > max_error_rate 0.1 (5 of 10 failed)" % server.base)
