# SPDX-License-Identifier: GPL-3.0-or-later
"""apps_resolved: the one place the defaults of the app model are applied, deploy settings included."""
import copy

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.devbox.ops.plugins.filter.devbox_apps import apps_resolved

PROJECT, LOGS = "/home/devbox/project", "/home/devbox/.devbox-ops/logs"
SECRET = "s3cret-value-never-shown"


def node(**deploy):
    app = {"name": "web", "port": 3000, "script": "server.js", "exec_mode": "cluster", "instances": 2,
           "env": {"API_KEY": SECRET}, "health": {"path": "/api/health"}, "readiness": {"path": "/api/ready"}}
    if deploy is not None:
        app["deploy"] = dict(deploy)
    return app


def resolve(*apps, **kwargs):
    return apps_resolved(list(apps), PROJECT, LOGS, **kwargs)


def test_an_app_without_deploy_is_resolved_as_before():
    plain = {"name": "worker", "script": "worker.js", "env": {"TOKEN": SECRET}}
    got = resolve(plain)[0]
    assert "deploy" not in got
    assert got["cwd"] == PROJECT + "/worker"
    assert got["pm2"]["cwd"] == PROJECT + "/worker"
    assert got["env"] == {"TOKEN": "********"}
    assert set(got) == {"name", "script", "env", "cwd", "out_file", "error_file", "merge_logs", "instances",
                        "exec_mode", "probes", "pm2"}


def test_deploy_defaults_are_applied():
    got = resolve(node(source="/src/web"))[0]
    d = got["deploy"]
    assert d["root"] == "/home/devbox/apps/web"
    assert got["cwd"] == got["pm2"]["cwd"] == "/home/devbox/apps/web/current"
    assert d["strategy"] == "reload"  # cluster
    assert (d["source"], d["source_type"], d["ref"], d["version"]) == ("/src/web", "auto", None, None)
    assert (d["keep_releases"], d["max_age_days"], d["shared_paths"], d["env_file"]) == (5, None, ["logs"], True)
    assert (d["install"], d["build"], d["guards"]) == ("auto", [], [])
    assert d["preflight"] == {"required_env": [], "min_free_mb": 200, "tools": {}, "mongodb_uri_env": None,
                              "checks": []}
    assert d["slo"] == {"samples": 100, "concurrency": 10, "max_p95_ms": 1000, "max_error_rate": 0.0}
    assert d["bluegreen"] == {"blue_port": 13000, "green_port": 23000, "drain_seconds": 5}
    assert d["candidate_port"] == 33000
    assert d["backup"] == {"paths": [], "keep": 5, "min_free_mb": 64}
    assert d["hooks"] == {}
    assert ".git" in d["exclude"] and "node_modules" in d["exclude"]


def test_fork_mode_defaults_to_restart_and_apps_dir_is_honoured():
    app = node(source="/src")
    app["exec_mode"] = "fork"
    got = resolve(app, apps_dir="/srv/apps/")[0]
    assert got["deploy"]["strategy"] == "restart"
    assert got["deploy"]["root"] == "/srv/apps/web"
    assert got["cwd"] == "/srv/apps/web/current"


def test_given_values_win_and_are_copied():
    raw = node(strategy="bluegreen", keep_releases=3, shared_paths=["logs", "public/uploads"], env_file=False,
               install="none", build=[["npm", "run", "build"]], guards=[{"path": "server.js", "required": ["listen"]}],
               preflight={"required_env": ["API_KEY"], "tools": {"node": "18.0.0"}, "mongodb_uri_env": "MONGO_URL",
                          "checks": [["test", "-d", "/tmp"]], "min_free_mb": 50},
               slo={"samples": 0, "max_p95_ms": 250}, bluegreen={"blue_port": 4001, "drain_seconds": 1},
               backup={"paths": [{"path": "/data"}], "keep": 2}, hooks={"build_before": "hooks/b.yml"},
               candidate_port=4003)
    before = copy.deepcopy(raw)
    d = resolve(raw)[0]["deploy"]
    assert raw == before, "the input must not be modified"
    assert d["strategy"] == "bluegreen" and d["keep_releases"] == 3 and d["env_file"] is False
    assert d["shared_paths"] == ["logs", "public/uploads"]
    assert d["build"] == [["npm", "run", "build"]]
    assert d["guards"] == [{"path": "server.js", "required": ["listen"], "must_exist": True}]
    assert d["preflight"]["tools"] == {"node": "18.0.0"} and d["preflight"]["min_free_mb"] == 50
    assert d["slo"] == {"samples": 0, "concurrency": 10, "max_p95_ms": 250, "max_error_rate": 0.0}
    assert d["bluegreen"] == {"blue_port": 4001, "green_port": 23000, "drain_seconds": 1}
    assert d["candidate_port"] == 4003
    assert d["backup"] == {"paths": [{"path": "/data"}], "keep": 2, "min_free_mb": 64}
    assert d["hooks"] == {"build_before": "hooks/b.yml"}


def test_env_is_masked_unless_redact_is_false():
    masked = resolve(node(source="/s"))[0]
    assert SECRET not in repr(masked)
    real = resolve(node(source="/s"), redact=False)[0]
    assert real["env"]["API_KEY"] == real["pm2"]["env"]["API_KEY"] == SECRET
    assert real["env"]["PORT"] == "3000"


@pytest.mark.parametrize("field, value, needle", [
    ("strategy", "canary", "deploy.strategy='canary': must be one of reload, bluegreen, restart"),
    ("install", "yarn", "deploy.install='yarn': must be one of auto, npm, pip, none"),
    ("build", ["npm run build"], "deploy.build[0]='npm run build': must be an argument list"),
    ("build", "make", "deploy.build='make': must be a list of argument lists"),
    ("shared_paths", ["../etc"], "deploy.shared_paths='../etc': must be a path relative to the release"),
    ("shared_paths", ["/var/log"], "deploy.shared_paths='/var/log': must be a path relative to the release"),
    ("keep_releases", 0, "deploy.keep_releases=0: must be an integer from 1 to 1000"),
    ("hooks", {"deploy_before": "x.yml"}, "deploy.hooks.deploy_before='x.yml': unknown hook"),
    ("guards", [{"path": "../x"}], "deploy.guards[0].path='../x': must be a path relative to the release"),
    ("guards", [{"path": "a", "required": ["("]}], "deploy.guards[0].required='(': is not a valid regex"),
    ("preflight", {"required_env": ["BAD-NAME"]}, "deploy.preflight.required_env='BAD-NAME': is not an env variable name"),
    ("preflight", {"tools": {"node": "latest"}}, "deploy.preflight.tools.node='latest': must be a minimum version"),
    ("preflight", {"tools": {"rm -rf": "1"}}, "deploy.preflight.tools='rm -rf': must be a command name"),
    ("preflight", {"checks": ["true"]}, "deploy.preflight.checks=['true']: must be a list of argument lists"),
    ("preflight", {"mongodb_uri_env": "mongodb://u:p@h"}, "deploy.preflight.mongodb_uri_env='mongodb://u:p@h'"),
    ("slo", {"max_error_rate": 2}, "deploy.slo.max_error_rate=2: must be a number from 0 to 1"),
    ("slo", {"p99": 5}, "deploy.slo.p99=5: unknown option"),
    ("candidate_port", 3000, "deploy.candidate_port=3000: port, candidate_port, blue_port and green_port must all differ"),
    ("bluegreen", {"blue_port": 70000}, "deploy.bluegreen.blue_port=70000: must be an integer from 1 to 65535"),
    ("colour", "blue", "deploy.colour='blue': unknown option"),
])
def test_bad_deploy_values_name_the_field_and_the_value(field, value, needle):
    with pytest.raises(AnsibleFilterError) as err:
        resolve(node(**{field: value}))
    assert "devbox_apps[0]." + needle in str(err.value)


def test_reload_needs_cluster_mode_and_ports_must_fit():
    app = node(strategy="reload")
    app["exec_mode"] = "fork"
    with pytest.raises(AnsibleFilterError, match=r"deploy.strategy='reload': needs exec_mode cluster"):
        resolve(app)
    high = node()
    high["port"] = 40000
    with pytest.raises(AnsibleFilterError, match=r"deploy.candidate_port=70000: must be an integer from 1 to 65535"):
        resolve(high)
    no_port = node(strategy="bluegreen")
    del no_port["port"], no_port["health"], no_port["readiness"]
    with pytest.raises(AnsibleFilterError, match=r"port=None: is required for deploy.strategy=bluegreen"):
        resolve(no_port)


def test_a_deployed_app_cannot_have_cwd_or_src_or_a_path_like_name():
    for extra, needle in (({"cwd": "/x"}, "cwd='/x': a deployed app runs from /home/devbox/apps/web/current"),
                          ({"src": "app/"}, "src='app/': not used with deploy"),
                          ({"name": "a b"}, "name='a b': a deployed app names a directory")):
        app = node()
        app.update(extra)
        with pytest.raises(AnsibleFilterError) as err:
            resolve(app)
        assert needle in str(err.value)


def test_a_deploy_error_never_shows_env_values():
    app = node(strategy="nope")
    with pytest.raises(AnsibleFilterError) as err:
        resolve(app)
    assert SECRET not in str(err.value)
