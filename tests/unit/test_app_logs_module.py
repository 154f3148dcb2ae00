# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.app_logs run for real through `ansible` against a private PM2 daemon whose app writes real
out/err logs (plain, JSON/pino and a stack trace), with a secret in its environment that it prints."""
import json
import os
import time

import pytest

from pm2_helpers import pm2
from test_pm2_modules import ansible
# Fixtures, used by name:
from pm2_helpers import apps_dir, pm2_home  # noqa: F401 pylint: disable=unused-import

CANARY = "logs-canary-5b1e77d0"
APP = "logs app"
LOGGER_JS = """\
console.log('INFO boot with key ' + process.env.API_KEY);
console.log(JSON.stringify({level: 30, time: Date.now(), msg: 'json info'}));
console.log('GET /api/orders 500');
console.error('WARN disk is slow');
console.error(JSON.stringify({level: 50, time: Date.now(), msg: 'pino error'}));
console.error('ERROR TypeError: x is undefined\\n    at handler (/app/server.js:10:5)');
console.error('plain stderr line');
setInterval(() => {}, 1000);
"""


@pytest.fixture(scope="module")
def logger_app(pm2_home, apps_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("applogs")
    script = apps_dir / "logger.js"
    script.write_text(LOGGER_JS)
    out, err = str(logs / "app-out.log"), str(logs / "app-error.log")
    os.environ["API_KEY"] = CANARY
    try:
        proc = pm2(pm2_home, "start", str(script), "--name", APP, "-o", out, "-e", err)
    finally:
        del os.environ["API_KEY"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deadline = time.time() + 30
    while time.time() < deadline:
        if os.path.exists(err) and open(err).read().count("\n") >= 5:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the app did not write its logs")
    try:
        yield out, err
    finally:
        pm2(pm2_home, "delete", APP)


def run(pm2_home, **args):
    rc, out, res = ansible("app_logs", dict({"pm2_home": pm2_home}, **args), "--check")
    assert CANARY not in out
    return rc, out, res


def lines(res, stream=None):
    return [e["line"] for f in res["logs"] if stream in (None, f["stream"]) for e in f["lines"]]


def test_both_streams_with_secret_masked(logger_app, pm2_home):
    out_path, err_path = logger_app
    rc, out, res = run(pm2_home, name=APP)
    assert rc == 0, out
    assert res["changed"] is False and res["apps"] == [APP]
    assert [(f["stream"], f["path"]) for f in res["logs"]] == [("out", out_path), ("err", err_path)]
    assert lines(res, "out")[0] == "INFO boot with key ********"
    err_lines = lines(res, "err")
    assert json.loads(err_lines[1])["msg"] == "pino error"
    assert err_lines[:1] + err_lines[2:] == ["WARN disk is slow", "ERROR TypeError: x is undefined",
                                             "    at handler (/app/server.js:10:5)", "plain stderr line"]
    assert res["count"] == 8


def test_level_regex_and_time_filters(logger_app, pm2_home):
    rc, out, res = run(pm2_home, name=APP, level="error", stream="err")
    assert rc == 0, out
    # pino 50, the ERROR line with its stack frame, and the unmarked stderr line (err log: error)
    assert lines(res) == [lines(res)[0], "ERROR TypeError: x is undefined", "    at handler (/app/server.js:10:5)",
                          "plain stderr line"]
    assert "pino error" in lines(res)[0] and res["logs"][0]["lines"][0]["level"] == "error"
    assert res["logs"][0]["lines"][0]["time"] is not None
    rc, out, res = run(pm2_home, name="all", stream="out", regex=r" 5\d\d$")
    assert rc == 0, out
    assert lines(res) == ["GET /api/orders 500"]
    rc, out, res = run(pm2_home, name=APP, since="10m", lines=5)
    assert rc == 0, out
    assert lines(res) == [l for l in lines(res) if "json info" in l or "pino error" in l] and len(lines(res)) == 2
    assert res["logs"][0]["untimed"] == 2
    rc, out, res = run(pm2_home, name=APP, level="warning", stream="err", lines=1)
    assert rc == 0, out
    assert lines(res) == ["plain stderr line"]


def test_paths_mode(logger_app, pm2_home, tmp_path):
    other = tmp_path / "watchdog.log"
    other.write_text("a\nb\nc\n")
    rc, out, res = run(pm2_home, paths=[str(other)], lines=2)
    assert rc == 0, out
    assert res["logs"][0]["stream"] == "file" and lines(res) == ["b", "c"]


@pytest.mark.parametrize("args, fragment", [
    ({"name": "no-such-app"}, "name='no-such-app'"),
    ({"name": APP, "regex": "(oops"}, "regex='(oops'"),
    ({"name": APP, "regex": "(a+)+x"}, "regex='(a+)+x'"),
    ({"name": APP, "since": "last tuesday"}, "since='last tuesday'"),
    ({"name": APP, "lines": 0}, "lines=0"),
    ({"name": APP, "level": "loud"}, "level"),
    ({"paths": ["/nonexistent/x.log"]}, "paths='/nonexistent/x.log'"),
    ({}, "one of the following is required: name, paths"),
])
def test_bad_input_names_param_and_value(logger_app, pm2_home, args, fragment):
    rc, out, res = run(pm2_home, **args)
    assert rc != 0, out
    assert fragment in res["msg"], res["msg"]


def test_an_app_pm2_does_not_run_is_read_from_its_files(logger_app, pm2_home, tmp_path):
    out_file = tmp_path / "gone.out.log"
    out_file.write_text("ERROR before it was deleted\n")
    args = {"name": "gone-app", "out_file": str(out_file), "error_file": str(tmp_path / "never-written.err.log")}
    rc, out, res = run(pm2_home, **args)
    assert rc == 0, out
    found = [(f["app"], f["stream"], f["missing"]) for f in res["logs"]]
    assert found == [("gone-app", "out", False), ("gone-app", "err", True)]
    assert lines(res) == ["ERROR before it was deleted"]
