# SPDX-License-Identifier: GPL-3.0-or-later
"""The probe engine against real servers on 127.0.0.1: HTTP, a silent port, a refused port, real argv."""
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from ansible_collections.devbox.ops.plugins.module_utils import probe
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError

SECRET = "s3cr3t-token-value"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the sampler's sessions can reuse connections

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, status, body, content_type="text/plain"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _hit(self, key):
        """Count this request under ``key``; returns (index of this hit, time of the first hit)."""
        state = self.server.state
        with state["lock"]:
            hits = state["hits"].setdefault(key, [])
            hits.append((time.monotonic(), self.client_address[1], dict(self.headers)))
            return len(hits) - 1, hits[0][0]

    def do_GET(self):
        url = urlsplit(self.path)
        q = dict((k, v[0]) for k, v in parse_qs(url.query).items())
        index, first = self._hit(q.get("key", url.path))
        path = url.path
        if path == "/ok":
            return self._reply(200, "all good: healthy")
        if path == "/slow":
            time.sleep(float(q.get("s", "0.3")))
            return self._reply(200, "slow but fine")
        if path == "/503":
            return self._reply(503, "down")
        if path == "/json":
            doc = {"status": "ok", "checks": {"db": "down", "cache": "up"}, "n": 3, "live": True,
                   "items": [{"x": 1}]}
            return self._reply(200, json.dumps(doc), "application/json")
        if path == "/flaky":  # fails the first n requests of its key
            return self._reply(503 if index < int(q.get("n", "2")) else 200, "flaky")
        if path == "/alt":  # 200, 503, 200, 503, ... per key
            return self._reply(200 if index % 2 == 0 else 503, "alternating")
        if path == "/ready-after":  # 503 until t seconds after the first request of its key
            return self._reply(200 if time.monotonic() - first >= float(q["t"]) else 503, "warming up")
        if path == "/auth":
            ok = self.headers.get("Authorization") == "Bearer " + SECRET
            return self._reply(200 if ok else 401, "welcome" if ok else "who are you?")
        return self._reply(404, "no such page")

    do_HEAD = do_GET

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        self._hit(urlsplit(self.path).path)
        self._reply(200, "got %d bytes: %s" % (len(data), data.decode()))


def _serve(server):
    server.state = {"lock": threading.Lock(), "hits": {}}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def http():
    server = _serve(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    server.base = "http://127.0.0.1:%d" % server.server_address[1]
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    """A real TLS server with a self-signed certificate (openssl is installed here)."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _serve(server)
    server.base = "https://127.0.0.1:%d" % server.server_address[1]
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def silent_port():
    """Accepts connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def refused_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def spec(**params):
    params.setdefault("timeout", 1.0)
    params.setdefault("period", 0.05)
    return probe.ProbeSpec.from_params(params)


def hits(server, key):
    with server.state["lock"]:
        return list(server.state["hits"].get(key, []))


# ---------------------------------------------------------------- one attempt


def test_http_ok(http):
    result = probe.run_probe(spec(url=http.base + "/ok"))
    assert result.ok is True and result["ok"] is True
    assert result.status_code == 200
    assert result.error is None
    assert result.target == "GET %s/ok" % http.base
    assert 0 < result.latency_ms < 1000
    json.dumps(result)  # a plain JSON-ready dict


def test_refused(refused_port):
    url = "http://127.0.0.1:%d/api/health" % refused_port
    result = probe.run_probe(spec(url=url))
    assert not result.ok
    assert result.error == "GET %s: connection refused" % url


def test_timeout_on_silent_port(silent_port):
    url = "http://127.0.0.1:%d/health" % silent_port
    started = time.monotonic()
    result = probe.run_probe(spec(url=url, timeout=0.3))
    took = time.monotonic() - started
    assert result.error == "GET %s: timed out after 0.3s" % url
    assert 0.25 <= took < 1.5


def test_timeout_on_slow_response(http):
    result = probe.run_probe(spec(url=http.base + "/slow?s=0.6", timeout=0.2))
    assert result.error == "GET %s/slow?s=0.6: timed out after 0.2s" % http.base


def test_bad_status_and_expected_status(http):
    result = probe.run_probe(spec(url=http.base + "/503"))
    assert result.status_code == 503
    assert result.error == "GET %s/503: status 503 not in 200-399" % http.base
    assert probe.run_probe(spec(url=http.base + "/503", expected_status=[503])).ok
    narrow = probe.run_probe(spec(url=http.base + "/503", expected_status=["200-204", 500]))
    assert narrow.error.endswith("status 503 not in 200-204, 500")


def test_body_regex(http):
    assert probe.run_probe(spec(url=http.base + "/ok", body_regex=r"health(y|ier)")).ok
    result = probe.run_probe(spec(url=http.base + "/ok", body_regex="^ok$"))
    assert result.status_code == 200
    assert result.error == "GET %s/ok: body does not match regex '^ok$'" % http.base


def test_json_field(http):
    url = http.base + "/json"
    result = probe.run_probe(spec(url=url, json_field="checks.db", json_equals="up"))
    assert result.error == "GET %s: json field checks.db is 'down', expected 'up'" % url
    assert probe.run_probe(spec(url=url, json_field="checks.cache", json_equals="up")).ok
    assert probe.run_probe(spec(url=url, json_field="live", json_equals="true")).ok
    assert probe.run_probe(spec(url=url, json_field="n", json_equals=3)).ok
    assert not probe.run_probe(spec(url=url, json_field="n", json_equals=True)).ok
    assert probe.run_probe(spec(url=url, json_field="items.0.x", json_equals="1")).ok
    assert probe.run_probe(spec(url=url, json_field="checks")).ok  # exists is enough
    missing = probe.run_probe(spec(url=url, json_field="checks.queue"))
    assert missing.error == "GET %s: json field checks.queue is missing" % url
    not_json = probe.run_probe(spec(url=http.base + "/ok", json_field="a"))
    assert not_json.error.endswith(": body is not JSON (needed for json field a)")


def test_post_body_and_head(http):
    result = probe.run_probe(spec(url=http.base + "/echo", method="POST", body="ping", body_regex="got 4 bytes: ping"))
    assert result.ok, result.error
    head = probe.run_probe(spec(url=http.base + "/ok", method="head"))
    assert head.ok and head.target.startswith("HEAD ")


def test_https_self_signed(https):
    strict = probe.run_probe(spec(url=https.base + "/ok"))
    assert not strict.ok
    assert strict.error.startswith("GET %s/ok: TLS error:" % https.base)
    assert "CERTIFICATE_VERIFY_FAILED" in strict.error
    relaxed = probe.run_probe(spec(url=https.base + "/ok", validate_certs=False))
    assert relaxed.ok and relaxed.status_code == 200


def test_tcp(silent_port, refused_port):
    ok = probe.run_probe(spec(port=silent_port))
    assert ok.ok and ok.target == "tcp 127.0.0.1:%d" % silent_port
    bad = probe.run_probe(spec(host="127.0.0.1", port=refused_port))
    assert bad.error == "tcp 127.0.0.1:%d: connection refused" % refused_port


def test_command():
    assert probe.run_probe(spec(argv=["true"])).ok
    result = probe.run_probe(spec(argv=["false"]))
    assert result.error == "command: false: exit status 1"
    assert result.detail == {"rc": 1}
    slow = probe.run_probe(spec(argv=["sleep", "5"], timeout=0.3))
    assert slow.error == "command: sleep 5: timed out after 0.3s"
    assert slow.latency_ms < 2000
    # no shell: metacharacters are plain arguments
    echo = probe.run_probe(spec(argv=["test", "a;b", "=", "a;b"]))
    assert echo.ok and echo.target == "command: test 'a;b' = 'a;b'"
    missing = probe.run_probe(spec(argv=["/nonexistent/check"]))
    assert missing.error.startswith("command: /nonexistent/check: exit status 127")


def test_headers_are_sent_but_never_shown(http, refused_port):
    good = spec(url=http.base + "/auth", headers={"Authorization": "Bearer " + SECRET})
    assert probe.run_probe(good).ok  # the server saw the header
    assert not probe.run_probe(spec(url=http.base + "/auth")).ok
    bad = spec(url="http://127.0.0.1:%d/" % refused_port, headers={"Authorization": SECRET})
    shown = [repr(good), str(good), good.target, good.name, probe.wait_for(bad), probe.check(good)]
    assert SECRET not in repr(shown)


def test_url_password_masked(refused_port):
    result = probe.run_probe(spec(url="http://admin:hunter2@127.0.0.1:%d/x" % refused_port))
    assert "hunter2" not in repr(result)
    assert result.target == "GET http://admin:********@127.0.0.1:%d/x" % refused_port


# ---------------------------------------------------------------- waiting


def test_success_threshold_counts_consecutive(http):
    waited = probe.wait_for(spec(url=http.base + "/flaky?n=2&key=st", success_threshold=2, failure_threshold=3))
    assert waited.ok and waited.reason == "success"
    assert waited.attempt_count == 4  # fail, fail, ok, ok
    assert [a.ok for a in waited.attempts] == [False, False, True, True]
    assert len(hits(http, "st")) == 4


def test_failure_threshold_stops(http):
    waited = probe.wait_for(spec(url=http.base + "/flaky?n=3&key=ft", failure_threshold=3))
    assert not waited.ok and waited.reason == "failure_threshold"
    assert waited.attempt_count == 3  # the 4th would have passed, but 3 failures came first
    assert waited.message == "GET %s/flaky?n=3&key=ft: status 503 not in 200-399 " \
        "(3 consecutive failures, failure_threshold=3)" % http.base
    assert probe.wait_for(spec(url=http.base + "/flaky?n=3&key=ft2", failure_threshold=4)).ok


def test_alternating_never_reaches_thresholds(http):
    waited = probe.wait_for(spec(url=http.base + "/alt?key=alt", success_threshold=2, failure_threshold=2,
                                 deadline=0.6))
    assert not waited.ok and waited.reason == "deadline"
    assert waited.attempt_count >= 4
    assert "only 1 of 2 consecutive successes" in waited.message or "deadline of 0.6s passed" in waited.message


def test_period_and_initial_delay(http):
    started = time.monotonic()
    waited = probe.wait_for(spec(url=http.base + "/ok?key=delay", initial_delay=0.4, period=0.2,
                                 success_threshold=3))
    assert waited.ok and waited.attempt_count == 3
    seen = [t for t, _port, _h in hits(http, "delay")]
    assert seen[0] - started >= 0.4  # first request only after the initial delay
    assert all(b - a >= 0.18 for a, b in zip(seen, seen[1:]))  # one period apart
    assert waited.elapsed_s >= 0.8


def test_deadline_stops_the_wait(http):
    waited = probe.wait_for(spec(url=http.base + "/503", failure_threshold=1000, period=0.1, deadline=0.7))
    assert not waited.ok and waited.reason == "deadline"
    assert 0.7 <= waited.elapsed_s < 1.2
    assert waited.message == "GET %s/503: status 503 not in 200-399 (deadline of 0.7s passed after %d attempts)" % (
        http.base, waited.attempt_count)


def test_deadline_cuts_a_long_timeout(silent_port):
    waited = probe.wait_for(spec(url="http://127.0.0.1:%d/" % silent_port, timeout=5, deadline=0.5))
    assert not waited.ok and waited.reason == "deadline"
    assert waited.elapsed_s < 1.5
    assert "timed out after 0.5s" in waited.message


def test_ready_after_passes_within_deadline(http):
    waited = probe.wait_for(spec(url=http.base + "/ready-after?t=0.6&key=ra", period=0.1, failure_threshold=50,
                                 deadline=3))
    assert waited.ok, waited.message
    assert 0.6 <= waited.elapsed_s < 3
    assert waited.attempt_count > 3 and not waited.attempts[0].ok


def test_attempts_capped_to_last_20(http):
    waited = probe.wait_for(spec(url=http.base + "/503", failure_threshold=25, period=0.01, deadline=10))
    assert waited.attempt_count == 25 and len(waited.attempts) == 20


def test_default_deadline():
    default = spec(url="http://x", timeout=1, period=2, initial_delay=3, failure_threshold=4)
    assert default.deadline == 3 + 1 + 2 * 4


# ---------------------------------------------------------------- sampling and gates


def test_sample_error_rate_on_half_failing(http):
    stats = probe.sample(spec(url=http.base + "/alt?key=half"), count=20, concurrency=4)
    assert stats.count == 20 and stats.errors == 10 and stats.error_rate == 0.5
    assert stats.error_samples == ["GET %s/alt?key=half: status 503 not in 200-399" % http.base]
    ports = set(port for _t, port, _h in hits(http, "half"))
    assert 1 <= len(ports) <= 4  # one keep-alive connection per worker thread


def test_sample_latency_on_slow_endpoint(http):
    stats = probe.sample(spec(url=http.base + "/slow?s=0.15"), count=8, concurrency=4)
    assert stats.errors == 0
    assert stats.p95_ms > 150 and stats.p50_ms > 150
    assert stats.p50_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms


def test_nearest_rank():
    values = list(range(1, 21))
    assert probe._nearest_rank(values, 50) == 10
    assert probe._nearest_rank(values, 95) == 19
    assert probe._nearest_rank(values, 99) == 20
    assert probe._nearest_rank([7.0], 95) == 7.0


def test_gate():
    stats = {"p95_ms": 300.0, "error_rate": 0.5, "errors": 10, "count": 20}
    assert probe.gate(stats) == (True, [])
    assert probe.gate(stats, max_p95_ms=300, max_error_rate=0.5) == (True, [])
    ok, reasons = probe.gate(stats, max_p95_ms=200, max_error_rate=0.1)
    assert not ok
    assert reasons == ["p95 300.0 ms > max_p95_ms 200", "error rate 0.5 > max_error_rate 0.1 (10 of 20 failed)"]


def test_check_samples_and_gates(http):
    result = probe.check(spec(url=http.base + "/alt?key=gate"), sampling={"count": 10, "max_error_rate": 0.1})
    assert not result["ok"]
    assert result["sample"]["error_rate"] == 0.5
    assert result["error"] == "GET %s/alt?key=gate: sample of 10 requests failed the gate: " \
        "error rate 0.5 > max_error_rate 0.1 (5 of 10 failed)" % http.base
    passing = probe.check(spec(url=http.base + "/ok"), sampling={"count": 5, "max_p95_ms": 5000})
    assert passing["ok"] and passing["gate_reasons"] == [] and passing["attempts"] == 1
    json.dumps(passing)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("params, param, shown", [
    ({"url": "ftp://x"}, "url", "url='ftp://x'"),
    ({"url": "http://x", "timeout": -1}, "timeout", "timeout=-1: must be > 0"),
    ({"url": "http://x", "timeout": "soon"}, "timeout", "timeout='soon'"),
    ({"url": "http://x", "period": 0}, "period", "period=0: must be > 0"),
    ({"url": "http://x", "initial_delay": -2}, "initial_delay", "initial_delay=-2"),
    ({"url": "http://x", "failure_threshold": 0}, "failure_threshold", "failure_threshold=0"),
    ({"url": "http://x", "success_threshold": 1.5}, "success_threshold", "success_threshold=1.5"),
    ({"url": "http://x", "initial_delay": 2, "deadline": 1}, "deadline", "deadline=1"),
    ({"url": "http://x", "expected_status": ["abc"]}, "expected_status", "expected_status=['abc']"),
    ({"url": "http://x", "expected_status": [700]}, "expected_status", "expected_status=[700]"),
    ({"url": "http://x", "method": "PUT"}, "method", "method='PUT'"),
    ({"url": "http://x", "body_regex": "("}, "body_regex", "body_regex='('"),
    ({"url": "http://x", "json_field": "a..b"}, "json_field", "json_field='a..b'"),
    ({"url": "http://x", "json_equals": "up"}, "json_equals", "json_equals='up'"),
    ({"url": "http://x", "validate_certs": "maybe"}, "validate_certs", "validate_certs='maybe'"),
    ({"port": 70000}, "port", "port=70000"),
    ({"port": "http"}, "port", "port='http'"),
    ({"argv": "true"}, "argv", "argv='true'"),
    ({"argv": []}, "argv", "argv=[]"),
    ({"type": "udp", "port": 53}, "type", "type='udp'"),
    ({}, "type", "type=None"),
    ({"url": "http://x", "retries": 3}, "retries", "'retries' is unknown"),
    ({"port": 80, "expected_status": [200]}, "expected_status", "expected_status: only applies to http"),
])
def test_bad_input(params, param, shown):
    with pytest.raises(DevboxOpsError) as caught:
        probe.ProbeSpec.from_params(params)
    assert caught.value.param == param
    assert shown in str(caught.value)


def test_bad_headers_never_echo_the_secret():
    with pytest.raises(DevboxOpsError) as caught:
        probe.ProbeSpec.from_params({"url": "http://x", "headers": "Bearer " + SECRET})
    assert caught.value.param == "headers" and SECRET not in str(caught.value)
    with pytest.raises(DevboxOpsError) as caught:
        probe.ProbeSpec.from_params({"url": "http://x", "headers": {"X": [SECRET]}})
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("call, param", [
    (lambda s: probe.sample(s, count=0, concurrency=1), "count"),
    (lambda s: probe.sample(s, count=1, concurrency="x"), "concurrency"),
    (lambda s: probe.gate({"p95_ms": 1, "error_rate": 0}, max_p95_ms=-5), "max_p95_ms"),
    (lambda s: probe.gate({"p95_ms": 1, "error_rate": 0}, max_error_rate=2), "max_error_rate"),
    (lambda s: probe.check(s, sampling={"count": 5, "p99": 1}), "p99"),
])
def test_bad_sample_input_changes_nothing(http, call, param):
    key = "bad-" + param
    with pytest.raises(DevboxOpsError) as caught:
        call(spec(url=http.base + "/ok?key=" + key))
    assert caught.value.param == param and param in str(caught.value)
    assert hits(http, key) == []  # nothing was sent


def test_defaults_fill_only_what_applies(http):
    defaults = {"timeout": 0.5, "headers": {"Authorization": "Bearer " + SECRET, "X-A": "1"},
                "validate_certs": False}
    merged = probe.ProbeSpec.from_params({"url": http.base + "/auth", "headers": {"X-A": "2"}}, defaults)
    assert merged.timeout == 0.5 and merged.validate_certs is False
    assert merged.headers == {"Authorization": "Bearer " + SECRET, "X-A": "2"}
    tcp = probe.ProbeSpec.from_params({"port": 80, "timeout": 3}, defaults)
    assert tcp.timeout == 3 and not hasattr(tcp, "headers")


def test_requests_missing_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "requests", None)  # how Python itself marks a module unimportable
    with pytest.raises(DevboxOpsError) as caught:
        probe.run_probe(spec(url="http://127.0.0.1:9/"))
    assert caught.value.param == "requests"
    assert "need the Python library 'requests' on this host" in str(caught.value)
    assert probe.run_probe(spec(argv=["true"])).ok  # other probe types do not need it
