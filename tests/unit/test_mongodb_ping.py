# SPDX-License-Identifier: GPL-3.0-or-later
"""mongodb_ping and the mongo engine with real pymongo.

There is NO MongoDB server on this machine (no server package in the registries we can reach), so the
failure paths are tested for real: a refused port, a silent port (accepts, never answers), a name that
does not resolve. The success path runs against a stand-in server (tests/unit/fake_mongo.py, the one
mock here: it speaks the wire protocol to the real pymongo), and also against MONGODB_TEST_URI if set.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.devbox.ops.plugins.module_utils import mongo
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError

import fake_mongo
from fake_mongo import FakeMongo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASSWORD = "Hunter2-mongo-pw"


def free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture(scope="module")
def silent_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def test_refused_port_retries_with_backoff():
    port = free_port()
    started = time.monotonic()
    res = mongo.ping("mongodb://app:%s@127.0.0.1:%d/app?authSource=admin" % (PASSWORD, port),
                     timeout=300, retries=2, backoff=0.2, max_delay=5)
    elapsed = time.monotonic() - started
    assert res["ok"] is False and res["attempts"] == 3 and res["server_version"] is None
    assert res["reasons"] == ["connection refused"] * 3
    assert res["target"] == "127.0.0.1:%d" % port
    assert res["error"].startswith("mongodb 127.0.0.1:%d: connection refused (3 attempts in " % port)
    # waits 0.2 + 0.4; each attempt lasts about the timeout (pymongo waits out server selection)
    assert 0.6 + 3 * 0.3 <= elapsed < 0.6 + 3 * (0.3 + 1.0)
    assert elapsed - 0.5 < res["elapsed_s"] <= elapsed  # the first pymongo import is not counted
    assert PASSWORD not in json.dumps(res)


def test_silent_port_times_out(silent_port):
    started = time.monotonic()
    res = mongo.ping("mongodb://app:%s@127.0.0.1:%d/" % (PASSWORD, silent_port), timeout=500, retries=1,
                     backoff=0.1)
    elapsed = time.monotonic() - started
    assert res["ok"] is False and res["attempts"] == 2
    assert res["reasons"] == ["timed out after 500ms"] * 2
    assert res["error"].startswith("mongodb 127.0.0.1:%d: timed out after 500ms (2 attempts in " % silent_port)
    assert 0.1 + 2 * 0.5 <= elapsed < 0.1 + 2 * 1.5
    assert PASSWORD not in json.dumps(res)


def test_unresolvable_name():
    res = mongo.ping("mongodb://app:%s@no-such-host.invalid:27017/" % PASSWORD, timeout=300, retries=0)
    assert res["ok"] is False and res["attempts"] == 1
    assert res["error"].startswith("mongodb no-such-host.invalid:27017: cannot resolve host (1 attempt in ")
    srv = mongo.ping("mongodb+srv://app:%s@no-such-cluster.invalid/" % PASSWORD, timeout=300, retries=0)
    assert srv["ok"] is False and srv["target"] == "no-such-cluster.invalid (SRV)"
    assert PASSWORD not in json.dumps([res, srv])


def test_backoff_is_capped_and_bounded():
    assert mongo.delays(5, 0.5, 1.0) == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert mongo.delays(3, 0.5, 5) == [0.5, 1.0, 2.0] and mongo.delays(0, 0.5, 5) == []
    started = time.monotonic()
    res = mongo.ping("mongodb://127.0.0.1:%d" % free_port(), timeout=100, retries=3, backoff=0.3, max_delay=0.3)
    elapsed = time.monotonic() - started
    assert res["attempts"] == 4 and 0.9 + 4 * 0.1 <= elapsed < 0.9 + 4 * 1.1


def test_bad_options_name_param_and_hide_password():
    for kwargs, param in ((dict(timeout=0), "timeout"), (dict(retries=-1), "retries"), (dict(backoff=-1), "backoff"),
                          (dict(max_delay="x"), "max_delay"), (dict(database="a b"), "database")):
        with pytest.raises(DevboxOpsError) as err:
            mongo.ping("mongodb://127.0.0.1", **kwargs)
        assert err.value.param == param and str(err.value).startswith(param + "=")
    for uri in ("http://u:%s@host/" % PASSWORD, "mongodb://u:%s?x@host/" % PASSWORD, "mongodb://u:%s@/" % PASSWORD):
        with pytest.raises(DevboxOpsError) as err:
            mongo.ping(uri)
        assert err.value.param == "uri" and "uri=" in str(err.value) and "u:********@" in str(err.value)
        assert PASSWORD not in str(err.value) and PASSWORD not in repr(err.value.value)


def test_parse_and_redact_uri():
    parsed = mongo.parse_uri("mongodb://bob:p%40ss@db1,db2:27018,[::1]/app?replicaSet=rs0&appname=me@x")
    assert parsed["hosts"] == ["db1:27017", "db2:27018", "[::1]:27017"]
    assert parsed["username"] == "bob" and parsed["password"] == "p@ss" and "p%40ss" in parsed["secrets"]
    assert mongo.target_of(parsed) == "db1:27017,db2:27018,[::1]:27017"
    assert mongo.redact_uri("mongodb://bob:p%40ss@db1/app") == "mongodb://bob:********@db1/app"
    assert mongo.redact_uri("mongodb://db1/app") == "mongodb://db1/app"


def test_success_against_a_stand_in_server():
    """A real pymongo client against tests/unit/fake_mongo.py (a mock: no MongoDB server runs here).
    With MONGODB_TEST_URI set, a real server is pinged as well."""
    with FakeMongo() as server:
        res = mongo.ping("mongodb://127.0.0.1:%d/app" % server.port, timeout=2000, retries=0)
        assert res["ok"] is True and res["attempts"] == 1 and res["server_version"] == fake_mongo.VERSION
        assert res["error"] is None and res["target"] == "127.0.0.1:%d" % server.port
        assert {"ping", "buildInfo"} <= set(server.names), server.names
    if os.environ.get("MONGODB_TEST_URI"):
        real = mongo.ping(os.environ["MONGODB_TEST_URI"], retries=0)
        assert real["ok"] is True and real["server_version"]


def test_a_server_that_answers_then_goes_away_is_retried_until_it_is_back():
    """Down at first (refused), then up: the ping succeeds on a later attempt, after a backoff."""
    with FakeMongo() as server:
        port = server.port
    started = []

    def bring_up():
        time.sleep(0.8)
        started.append(FakeMongo(port).__enter__())

    thread = threading.Thread(target=bring_up)
    thread.start()
    try:
        res = mongo.ping("mongodb://127.0.0.1:%d/" % port, timeout=300, retries=6, backoff=0.2, max_delay=0.4)
    finally:
        thread.join()
        for each in started:
            each.__exit__(None, None, None)
    assert res["ok"] is True and res["attempts"] >= 2 and res["reasons"][0] == "connection refused"


# ------------------------------------------------------------------ the module, through ansible


def run_ping(tmp_path, uri, args="", python=os.path.join(REPO, ".venv", "bin", "python"), *extra):
    """The uri goes in through an extra-vars file: ansible-core 2.19 echoes a failed ad-hoc task's raw -a."""
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps({"mongo_uri": uri}))
    tree = tmp_path / "tree"
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="0")
    argv = [os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m", "devbox.ops.mongodb_ping",
            "-a", "uri={{ mongo_uri }} " + args, "-e", "@%s" % vars_file, "-e", "ansible_python_interpreter=" + python,
            "-t", str(tree)] + list(extra)
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    with open(str(tree / "localhost")) as handle:
        return proc.returncode, json.load(handle), proc.stdout + proc.stderr


@pytest.mark.parametrize("check", [False, True])
def test_module_refused_names_host_not_password(tmp_path, check):
    port = free_port()
    extra = ("--check",) if check else ()
    rc, res, output = run_ping(tmp_path, "mongodb://app:%s@127.0.0.1:%d/app" % (PASSWORD, port),
                               "timeout=200 retries=1 backoff=0.1", os.path.join(REPO, ".venv", "bin", "python"),
                               *extra)
    assert rc != 0 and res["changed"] is False
    assert res["msg"].startswith("mongodb 127.0.0.1:%d: connection refused (2 attempts in " % port)
    assert res["ok"] is False and res["attempts"] == 2 and res["reasons"] == ["connection refused"] * 2
    assert PASSWORD not in output + json.dumps(res)


def test_module_bad_option(tmp_path):
    rc, res, output = run_ping(tmp_path, "mongodb://app:%s@127.0.0.1/" % PASSWORD, "retries=-2")
    assert rc != 0 and res["msg"] == "retries=-2: expected a whole number >= 0"
    assert PASSWORD not in output + json.dumps(res)


def test_module_without_pymongo_says_so(tmp_path):
    # a bare venv of this Python: the standard library only, as on a devbox where base has not run yet
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = str(tmp_path / "bare" / "bin" / "python")
    assert subprocess.run([bare, "-c", "import pymongo"], capture_output=True, check=False).returncode != 0
    rc, res, output = run_ping(tmp_path, "mongodb://app:%s@127.0.0.1/" % PASSWORD, "", bare)
    assert rc != 0
    assert "Failed to import the required Python library (pymongo)" in res["msg"]
    assert PASSWORD not in output + json.dumps(res)


def test_module_success_against_the_stand_in_server(tmp_path):
    with FakeMongo() as server:
        rc, res, output = run_ping(tmp_path, "mongodb://127.0.0.1:%d/app" % server.port, "timeout=2000 retries=0")
    assert rc == 0, output
    assert res["ok"] is True and res["changed"] is False and res["server_version"] == fake_mongo.VERSION
