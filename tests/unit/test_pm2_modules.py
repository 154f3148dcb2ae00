# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.pm2_process and pm2_info run for real through `ansible` against a private PM2 daemon."""
import json
import os
import subprocess

import pytest

from pm2_helpers import free_port, http_json, raw_jlist
# Fixtures, used by name:
from pm2_helpers import apps_dir, pm2_home  # noqa: F401 pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE = os.path.join(REPO, ".venv", "bin", "ansible")
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
CANARY_1 = "canary-mod-7d3f19"
CANARY_2 = "canary-mod-e52a08"
CANARY_ECO = "canary-eco-0c9b44"


def ansible(module, args, *flags):
    """Run one module on localhost; returns (rc, all output, the result dict)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    argv = [ANSIBLE, "localhost", "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % PYTHON,
            "-m", "devbox.ops.%s" % module, "-a", json.dumps(args)] + list(flags)
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120, check=False)
    # The ad-hoc callback ends with "localhost | STATUS => {json}".
    tail = proc.stdout[proc.stdout.rindex("localhost | "):]
    result = json.loads(tail[tail.index("=> ") + 3:])
    return proc.returncode, proc.stdout + proc.stderr, result


@pytest.fixture(scope="module")
def app_args(pm2_home, apps_dir):
    port = free_port()
    return port, {"name": "mod web", "script": str(apps_dir / "server.js"), "pm2_home": pm2_home,
                  "min_uptime": "300ms", "env": {"PORT": str(port), "API_KEY": CANARY_1}}


def names(pm2_home):
    return [p["name"] for p in raw_jlist(pm2_home)]


def test_check_mode_on_new_app_changes_nothing(app_args, pm2_home):
    _port, args = app_args
    rc, out, res = ansible("pm2_process", args, "--check")
    assert rc == 0, out
    assert res["changed"] is True and res["action"] == "start" and res["process"] == []
    assert "mod web" not in names(pm2_home)


def test_first_run_changes_second_does_not(app_args):
    port, args = app_args
    rc, out, res = ansible("pm2_process", args)
    assert rc == 0, out
    assert res["changed"] is True and res["action"] == "start"
    assert res["process"][0]["status"] == "online" and res["process"][0]["env"]["API_KEY"] == "********"
    assert http_json(port) == {"pid": res["process"][0]["pid"], "instance": "0", "key": CANARY_1}
    rc, out, res = ansible("pm2_process", args)
    assert rc == 0, out
    assert res["changed"] is False and res["action"] == "none" and res["drift"] == []


def test_check_diff_shows_drift_without_applying(app_args):
    port, args = app_args
    changed = dict(args, env={"PORT": str(port), "API_KEY": CANARY_2}, max_memory_restart="300M")
    rc, out, _res = ansible("pm2_process", changed, "--check", "--diff")
    assert rc == 0, out
    assert "CHANGED" in out and '"env.API_KEY"' in out and '"max_memory_restart"' in out
    assert '"action": "recreate"' in out
    assert CANARY_1 not in out and CANARY_2 not in out
    assert http_json(port)["key"] == CANARY_1  # check mode did not touch the app


def test_secret_never_printed_even_with_vvv(app_args):
    port, args = app_args
    changed = dict(args, env={"PORT": str(port), "API_KEY": CANARY_2})
    rc, out, _res = ansible("pm2_process", changed, "-vvv", "--diff")
    assert rc == 0, out
    assert '"action": "restart"' in out and "env.API_KEY" in out
    assert CANARY_1 not in out and CANARY_2 not in out
    assert http_json(port)["key"] == CANARY_2  # ... yet the app got it


def test_bad_input_fails_naming_the_parameter(app_args, pm2_home):
    _port, args = app_args
    rc, out, res = ansible("pm2_process", dict(args, name="bad one", instances=-1), "-vvv")
    assert rc != 0 and "localhost | FAILED!" in out
    assert res["msg"].startswith("instances=-1: must be an integer >= 1")
    assert CANARY_1 not in out
    rc, out, res = ansible("pm2_process", dict(args, name="123"))
    assert rc != 0 and res["msg"].startswith("name='123'")
    rc, out, res = ansible("pm2_process", {"name": "nope", "pm2_home": pm2_home, "executable": "no-such-pm2"})
    assert rc != 0 and "executable='no-such-pm2'" in res["msg"]
    assert "bad one" not in names(pm2_home)


def test_ecosystem_file_secret_and_save(pm2_home, apps_dir, tmp_path):
    port = free_port()
    eco = tmp_path / "ecosystem.json"
    eco.write_text(json.dumps({"apps": [
        {"name": "eco web", "script": "server.js", "cwd": str(apps_dir), "min_uptime": 300,
         "env": {"PORT": str(port), "API_KEY": CANARY_ECO}},
        {"name": "other", "script": "/bin/false"}]}))
    args = {"name": "eco web", "ecosystem": str(eco), "pm2_home": pm2_home, "save": True}
    rc, out, _res = ansible("pm2_process", args, "-vvv", "--diff")
    assert rc == 0, out
    assert '"action": "start"' in out and CANARY_ECO not in out
    assert http_json(port)["key"] == CANARY_ECO
    assert "other" not in names(pm2_home)
    with open(os.path.join(pm2_home, "dump.pm2")) as handle:
        assert "eco web" in [p["name"] for p in json.load(handle)]
    rc, out, res = ansible("pm2_process", dict(args, instances=1))
    assert rc == 0 and res["changed"] is False, out


def test_info_lists_masked_processes(app_args, pm2_home):
    rc, out, res = ansible("pm2_info", {"pm2_home": pm2_home}, "--check")
    assert rc == 0, out
    assert {"mod web", "eco web"} <= set(res["names"]) and res["changed"] is False
    web = [p for p in res["processes"] if p["name"] == "mod web"][0]
    assert web["status"] == "online" and web["env"] == {"API_KEY": "********", "PORT": "********"}
    assert CANARY_2 not in out and CANARY_ECO not in out
    rc, out, res = ansible("pm2_info", {"pm2_home": pm2_home, "name": "eco web"})
    assert rc == 0 and res["names"] == ["eco web"], out


def test_absent_removes_then_is_idempotent(app_args, pm2_home):
    _port, args = app_args
    for name in ("mod web", "eco web"):
        rc, out, res = ansible("pm2_process", {"name": name, "state": "absent", "pm2_home": pm2_home})
        assert rc == 0 and res["changed"] is True and res["action"] == "delete", out
    assert not {"mod web", "eco web"} & set(names(pm2_home))
    rc, out, res = ansible("pm2_process", dict(args, state="absent"))
    assert rc == 0 and res["changed"] is False, out
