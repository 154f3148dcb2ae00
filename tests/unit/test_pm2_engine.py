# SPDX-License-Identifier: GPL-3.0-or-later
"""PM2 engine against a real PM2 daemon (private PM2_HOME, killed at the end of the session)."""
import json
import os
import subprocess

import pytest

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.pm2 import (
    MASK, AppSpec, PM2Client, parse_jlist, redact_env)
from ansible_collections.devbox.ops.plugins.module_utils.runner import SubprocessRunner

from pm2_helpers import free_port, http_json, raw_jlist
# Fixtures, used by name:
from pm2_helpers import apps_dir, pm2_home  # noqa: F401 pylint: disable=unused-import

BANNER = (">>>> In-memory PM2 is out-of-date, do:\n>>>> $ pm2 update\n"
          "In memory PM2 version: 6.0.8\nLocal PM2 version: 7.0.4\n\n")
CANARY_1 = "canary-secret-4f1d2a"
CANARY_2 = "canary-secret-9b7e3c"


class BannerRunner(SubprocessRunner):
    """A real runner whose `pm2 jlist` output gets PM2's out-of-date banner prepended."""

    def run(self, argv, **kwargs):
        rc, out, err = super(BannerRunner, self).run(argv, **kwargs)
        if argv[-1] == "jlist":
            out = BANNER + out
        return rc, out, err


@pytest.fixture(scope="module")
def client(pm2_home):
    return PM2Client(BannerRunner(), pm2_home=pm2_home, poll_interval=0.1)


def spec(name, script, **fields):
    fields.setdefault("min_uptime", "300ms")
    return AppSpec.from_params(dict(fields, name=name, script=str(script)))


def converge(client, app_spec, state="started", timeout=30):
    plan = client.plan(app_spec, state)
    result = client.apply(plan, timeout=timeout)
    return plan, result


def test_jlist_survives_banner_and_masks_env(client, pm2_home, apps_dir):
    port = free_port()
    converge(client, spec("banner-app", apps_dir / "server.js", env={"PORT": str(port), "API_KEY": CANARY_1}))
    # The real output with the banner in front still parses, and the banner is really there.
    rc, out, _err = client.runner.run([client.executable, "jlist"], env={"PM2_HOME": pm2_home})
    assert rc == 0 and out.startswith(">>>> In-memory PM2 is out-of-date")
    assert [p["name"] for p in parse_jlist(out)] == [p["name"] for p in raw_jlist(pm2_home)]

    procs = client.jlist("banner-app")
    assert len(procs) == 1
    proc = procs[0]
    assert proc["status"] == "online" and proc["exec_mode"] == "fork" and proc["instances"] == 1
    assert proc["pid"] == http_json(port)["pid"]
    assert proc["env"] == {"API_KEY": MASK, "PORT": MASK} and proc["managed"] is True
    assert CANARY_1 not in repr(client.jlist())
    # PM2 itself does hold the value (so the masking above is doing real work) ...
    raw = [p for p in raw_jlist(pm2_home) if p["name"] == "banner-app"][0]
    assert raw["pm2_env"]["env"]["API_KEY"] == CANARY_1 and raw["pm2_env"]["API_KEY"] == CANARY_1
    # ... and redact_env masks both the env dict and PM2's top-level copies of it.
    assert CANARY_1 not in json.dumps(redact_env(raw))
    # logs() reads the files PM2 names in jlist.
    out = [entry for entry in client.logs("banner-app", lines=5) if entry["stream"] == "out"][0]
    assert out["path"] == proc["out_file"] and "hello-out %d" % proc["pid"] in out["lines"]
    converge(client, spec("banner-app", apps_dir / "server.js"), "absent")


def test_start_idempotent_env_drift_and_secrets(client, apps_dir):
    port = free_port()
    first = spec("web", apps_dir / "server.js", env={"PORT": str(port), "API_KEY": CANARY_1})
    plan, procs = converge(client, first)
    assert plan.action == "start"
    assert procs[0]["status"] == "online" and http_json(port)["key"] == CANARY_1
    assert client.plan(first).action == "none"

    second = spec("web", apps_dir / "server.js", env={"PORT": str(port), "API_KEY": CANARY_2})
    plan = client.plan(second)
    assert plan.action == "restart" and plan.drift == ["env.API_KEY"]  # fork mode: restart
    assert plan.after["env"]["API_KEY"].startswith(MASK) and plan.before["env"]["API_KEY"] == MASK
    procs = client.apply(plan, timeout=30)
    answer = http_json(port)
    assert answer["key"] == CANARY_2 and answer["pid"] == procs[0]["pid"]
    for text in (repr(plan), repr(plan.as_dict()), repr(second), repr(procs), repr(client.jlist())):
        assert CANARY_1 not in text and CANARY_2 not in text
    assert client.plan(second).action == "none"

    # A structural option is not applied by reload: recreate; a removed env key too.
    third = spec("web", apps_dir / "server.js", env={"PORT": str(port)}, max_memory_restart="150M")
    plan = client.plan(third)
    assert plan.action == "recreate" and sorted(plan.drift) == ["env.API_KEY", "max_memory_restart"]
    client.apply(plan, timeout=30)
    assert http_json(port)["key"] is None
    assert client.plan(third).action == "none"

    # reloaded always acts; on a fork app PM2 restarts, and the plan says so.
    plan = client.plan(third, "reloaded")
    assert plan.action == "reload" and "fork mode" in plan.warnings[0]
    old_pid = http_json(port)["pid"]
    procs = client.apply(plan, timeout=30)
    assert procs[0]["status"] == "online" and http_json(port)["pid"] == procs[0]["pid"] != old_pid
    converge(client, third, "absent")


def test_stop_and_absent_are_idempotent(client, apps_dir):
    app = spec("web", apps_dir / "server.js", env={"PORT": str(free_port())})
    converge(client, app)
    plan, procs = converge(client, app, "stopped")
    assert plan.action == "stop" and [p["status"] for p in procs] == ["stopped"]
    assert client.plan(app, "stopped").action == "none"
    plan, procs = converge(client, app, "started")
    assert plan.action == "start" and procs[0]["status"] == "online"
    assert client.plan(app, "restarted").action == "restart"  # restarted always acts
    plan, procs = converge(client, app, "absent")
    assert plan.action == "delete" and procs == [] and client.jlist("web") == []
    assert client.plan(app, "absent").action == "none"
    assert client.plan(app, "stopped").action == "none"


def test_scale_keeps_instance_zero_and_cluster_env_reloads(client, apps_dir):
    port = free_port()
    app = spec("clu", apps_dir / "server.js", exec_mode="cluster", env={"PORT": str(port), "API_KEY": CANARY_1})
    converge(client, app)
    pid0 = client.jlist("clu")[0]["pid"]

    up = spec("clu", apps_dir / "server.js", exec_mode="cluster", instances=3,
              env={"PORT": str(port), "API_KEY": CANARY_1})
    plan = client.plan(up)
    assert plan.action == "scale" and plan.drift == ["instances"]
    procs = client.apply(plan, timeout=30)
    assert len(procs) == 3 and all(p["status"] == "online" for p in procs)
    assert procs[0]["pid"] == pid0 and client.plan(up).action == "none"

    plan, procs = converge(client, app)  # back to 1: the highest ids go, instance 0 stays
    assert plan.action == "scale"
    assert [p["pid"] for p in procs] == [pid0]
    assert http_json(port)["pid"] == pid0

    changed = spec("clu", apps_dir / "server.js", exec_mode="cluster", env={"PORT": str(port), "API_KEY": CANARY_2})
    plan = client.plan(changed)
    assert plan.action == "reload" and plan.drift == ["env.API_KEY"] and not plan.warnings
    client.apply(plan, timeout=30)
    assert http_json(port)["key"] == CANARY_2
    converge(client, changed, "absent")


def test_python_app_with_interpreter_and_args(client, apps_dir):
    port = free_port()
    app = AppSpec.from_params({"name": "py app", "script": "server.py", "cwd": str(apps_dir),
                               "interpreter": "python3", "interpreter_args": "-X devbox=yes",
                               "args": "--port %d --label 'two words; $(no shell)'" % port,
                               "min_uptime": 300})
    plan, procs = converge(client, app)
    assert plan.action == "start" and procs[0]["interpreter"] == "python3"
    expected = {"argv": ["--port", str(port), "--label", "two words; $(no shell)"], "xoptions": {"devbox": "yes"}}
    assert http_json(port) == expected
    assert client.plan(app).action == "none"
    converge(client, app, "absent")


def test_real_cwd_is_the_release_a_process_started_in(client, apps_dir, tmp_path):
    """PM2 reports the cwd it was given (APP/current); real_cwd is where the process really runs, and
    cwd_moved says that current moved on after it started."""
    for name in ("rel-a", "rel-b"):
        (tmp_path / name).mkdir()
    current = tmp_path / "current"
    current.symlink_to("rel-a")
    port = free_port()
    app = AppSpec.from_params({"name": "cwd-app", "script": str(apps_dir / "server.py"), "cwd": str(current),
                               "interpreter": "python3", "args": "--port %d" % port, "min_uptime": 300})
    converge(client, app)
    procs = client.jlist("cwd-app")
    assert procs[0]["cwd"] == str(current) and procs[0]["real_cwd"] == str(tmp_path / "rel-a")
    assert procs[0]["cwd_moved"] is False
    current.unlink()
    current.symlink_to("rel-b")  # the switch of a deploy: the running process stays where it started
    moved = client.jlist("cwd-app")
    assert [(p["real_cwd"], p["cwd_moved"]) for p in moved] == [(str(tmp_path / "rel-a"), True)]
    # the plan reports the processes it read (check mode shows them without a second pm2 jlist)
    plan = client.plan(app)
    assert plan.action == "none" and [p["pid"] for p in plan.processes] == [p["pid"] for p in moved]
    assert [p["cwd_moved"] for p in plan.processes] == [True]
    converge(client, app, "restarted")
    assert [(p["real_cwd"], p["cwd_moved"]) for p in client.jlist("cwd-app")] == [(str(tmp_path / "rel-b"), False)]
    converge(client, app, "absent")
    assert [p["real_cwd"] for p in client.jlist("cwd-app")] == []
    assert client.plan(app, "absent").processes == []


def test_crash_at_start_raises_errored_with_log(client, apps_dir):
    app = spec("crashy", apps_dir / "crash.js", env={"API_KEY": CANARY_1})
    with pytest.raises(DevboxOpsError) as err:
        converge(client, app, timeout=20)
    msg = str(err.value)
    assert msg.startswith("app crashy is errored after start") and "boom-marker" in msg
    assert CANARY_1 not in msg
    converge(client, app, "absent")
    assert client.jlist("crashy") == []


def test_crash_without_autorestart_reports_errored(client, apps_dir):
    app = spec("crashy2", apps_dir / "crash.js", autorestart=False)
    with pytest.raises(DevboxOpsError, match=r"app crashy2 is errored after start: status stopped"):
        converge(client, app, timeout=20)
    converge(client, app, "absent")


def test_shell_metacharacters_in_name_stay_literal(client, apps_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pm2 runs from here: a shell would create the files here
    name = "x; touch pwned-1 `touch pwned-2` $(touch pwned-3) && touch pwned-4 | touch pwned-5 'q\"$HOME"
    port = free_port()
    app = spec(name, apps_dir / "server.js", exec_mode="cluster", env={"PORT": str(port)})
    plan, procs = converge(client, app)
    assert plan.action == "start" and procs[0]["name"] == name and procs[0]["status"] == "online"
    assert client.plan(app).action == "none"
    # Name-only (partial) specs reach `pm2 scale NAME N` and `pm2 reload NAME` as one argv element.
    plan, procs = converge(client, AppSpec.from_params({"name": name, "instances": 2}))
    assert plan.action == "scale" and [p["name"] for p in procs] == [name, name]
    plan, procs = converge(client, AppSpec.from_params({"name": name}), "reloaded")
    assert plan.action == "reload" and not plan.warnings and len(procs) == 2
    assert http_json(port)["pid"] in [p["pid"] for p in procs]
    plan, _procs = converge(client, app, "absent")
    assert plan.action == "delete" and client.jlist(name) == []
    assert sorted(os.listdir(str(tmp_path))) == []
    assert not any(n.startswith("pwned-") for n in os.listdir(os.getcwd()))


def test_partial_spec_controls_existing_app_only(client, apps_dir):
    with pytest.raises(DevboxOpsError, match="script is required to start new app ghost"):
        client.plan(AppSpec.from_params({"name": "ghost"}), "started")
    assert client.plan(AppSpec.from_params({"name": "ghost"}), "absent").action == "none"

    converge(client, spec("ctl", apps_dir / "server.js", env={"PORT": str(free_port()), "API_KEY": CANARY_1}))
    bare = AppSpec.from_params({"name": "ctl"})
    assert client.plan(bare).action == "none"
    plan, procs = converge(client, bare, "stopped")
    assert plan.action == "stop" and procs[0]["status"] == "stopped"
    plan, procs = converge(client, bare, "started")
    assert plan.action == "start" and procs[0]["status"] == "online"
    with pytest.raises(DevboxOpsError, match=r"script is required to change env.API_KEY of app ctl") as err:
        client.plan(AppSpec.from_params({"name": "ctl", "env": {"API_KEY": CANARY_2}}))
    assert CANARY_2 not in str(err.value)
    # The same env without script is not drift.
    assert client.plan(AppSpec.from_params({"name": "ctl", "env": {"API_KEY": CANARY_1}})).action == "none"
    converge(client, bare, "absent")


def test_app_started_by_hand_is_taken_over(client, pm2_home, apps_dir):
    port = free_port()
    env = dict(os.environ, PM2_HOME=pm2_home, PORT=str(port), API_KEY=CANARY_2)
    subprocess.run([client.executable, "start", str(apps_dir / "server.js"), "--name", "by-hand"], env=env,
                   stdout=subprocess.DEVNULL, check=True, timeout=60)
    proc = client.wait_online("by-hand", 1, 200, timeout=20)[0]
    assert proc["managed"] is False and proc["env"]["API_KEY"] == MASK and CANARY_2 not in repr(proc)
    app = spec("by-hand", apps_dir / "server.js", env={"PORT": str(port)})
    stop_plan = client.plan(app, "stopped")  # drift is reported, not applied, when stopping
    assert stop_plan.action == "stop" and "state=stopped does not apply it" in stop_plan.warnings[0]
    plan = client.plan(app)
    assert plan.action == "recreate" and plan.drift == ["unmanaged"] and "not started by devbox.ops" in plan.warnings[0]
    procs = client.apply(plan, timeout=30)
    assert procs[0]["managed"] is True and procs[0]["env"] == {"PORT": MASK}
    assert http_json(port)["key"] is None and client.plan(app).action == "none"
    converge(client, app, "absent")


def test_load_ecosystem_js_and_json(client, tmp_path):
    js = tmp_path / "my eco's dir"
    js.mkdir()
    (js / "ecosystem.config.js").write_text(
        "module.exports = {apps: [{name: 'api', script: 'server.js', instances: 2, exec_mode: 'cluster',"
        " env: {PORT: 3000, DEBUG: true}, max_memory_restart: '200M'}, {name: 'other', script: '/bin/true'}]};\n")
    specs = client.load_ecosystem(str(js / "ecosystem.config.js"))
    assert [s.name for s in specs] == ["api", "other"]
    api = specs[0]
    assert api.cwd == str(js) and api.instances == 2 and api.env == {"PORT": "3000", "DEBUG": "true"}
    assert api.max_memory_restart == 200 * 1024 * 1024
    (tmp_path / "eco.json").write_text(json.dumps({"apps": [{"name": "j", "script": "/srv/a.js", "node_args": "--a b"}]}))
    assert client.load_ecosystem(str(tmp_path / "eco.json"), only="j")[0].interpreter_args == ["--a", "b"]
    with pytest.raises(DevboxOpsError) as err:
        client.load_ecosystem(str(tmp_path / "eco.json"), only="nope")
    assert err.value.param == "name" and "nope" in str(err.value)
    (tmp_path / "bad.json").write_text(json.dumps({"apps": [{"name": "b", "script": "/a.js", "watch": True}]}))
    with pytest.raises(DevboxOpsError, match="ecosystem.*watch"):
        client.load_ecosystem(str(tmp_path / "bad.json"))


def test_missing_executable_is_named(pm2_home):
    for exe in ("pm2-not-installed-here", "/nonexistent/bin/pm2"):
        with pytest.raises(DevboxOpsError) as err:
            PM2Client(SubprocessRunner(), executable=exe, pm2_home=pm2_home)
        assert "executable" in str(err.value) and exe in str(err.value) and "PM2 not found" in str(err.value)


@pytest.mark.parametrize("params, param", [
    ({"instances": -1}, "instances"),
    ({"instances": "three"}, "instances"),
    ({"exec_mode": "turbo"}, "exec_mode"),
    ({"name": ""}, "name"),
    ({"name": "123"}, "name"),
    ({"name": "0x1f"}, "name"),
    ({"name": "a/b"}, "name"),
    ({"name": "all"}, "name"),
    ({"name": "line\nbreak"}, "name"),
    ({"name": "--force"}, "name"),
    ({"name": "app.json"}, "name"),
    ({"max_memory_restart": "lots"}, "max_memory_restart"),
    ({"min_uptime": "5 parsecs"}, "min_uptime"),
    ({"kill_timeout": -5}, "kill_timeout"),
    ({"autorestart": "maybe"}, "autorestart"),
    ({"args": 42}, "args"),
    ({"cron_restart": "every day"}, "cron_restart"),
    ({"cwd": "relative/dir"}, "cwd"),
    ({"script": "app.js"}, "script"),
    ({"exec_mode": "cluster", "interpreter": "python3"}, "exec_mode"),
    ({"bogus_option": 1}, "bogus_option"),
])
def test_bad_input_names_param_and_value(params, param):
    full = {"name": "ok", "script": "/srv/app.js"}
    full.update(params)
    with pytest.raises(DevboxOpsError) as err:
        AppSpec.from_params(full)
    assert err.value.param == param
    assert str(err.value).startswith("%s=%r: " % (param, params[param]))


def test_bad_env_value_is_named_but_never_echoed():
    with pytest.raises(DevboxOpsError) as err:
        AppSpec.from_params({"name": "ok", "script": "/a.js", "env": {"API_KEY": [CANARY_1]}})
    assert err.value.param == "env.API_KEY" and "env.API_KEY" in str(err.value)
    assert CANARY_1 not in str(err.value)


def test_bad_state_and_pm2_home(client):
    with pytest.raises(DevboxOpsError, match="state='running'"):
        client.plan(AppSpec.from_params({"name": "x"}), "running")
    with pytest.raises(DevboxOpsError, match="pm2_home='relative'"):
        PM2Client(SubprocessRunner(), pm2_home="relative")


def test_spec_repr_and_fingerprint_hide_env_values():
    app = AppSpec.from_params({"name": "s", "script": "/a.js", "env": {"TOKEN": CANARY_1}})
    assert CANARY_1 not in repr(app) and CANARY_1 not in json.dumps(app.fingerprint())
    assert app.ecosystem_app()["env"]["TOKEN"] == CANARY_1  # only the private ecosystem file has it


def test_parse_jlist_never_quotes_broken_output():
    assert parse_jlist("[PM2] Spawning PM2 daemon\n[PM2] PM2 Successfully daemonized\n[]\n") == []
    with pytest.raises(DevboxOpsError) as err:
        parse_jlist(BANNER + '[{"pm2_env": {"env": {"API_KEY": "%s"' % CANARY_1)
    assert "no JSON process list" in str(err.value) and CANARY_1 not in str(err.value)
