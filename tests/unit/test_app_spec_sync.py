# SPDX-License-Identifier: GPL-3.0-or-later
"""Every role describes an app the same way.

The `devbox_apps` option of roles/supervisor/meta/argument_specs.yml is the reference. Any other role
whose argument_specs carries `devbox_apps` (deploy, monitoring, ...) must define it identically: the same
fields, each with the same type, elements, choices, default and suboptions (the `deploy` settings
included), so one `devbox_apps` list is valid for every role and the roles never disagree about it.
"""
import glob
import os

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(REPO, "roles", "supervisor", "meta", "argument_specs.yml")
SHARED_VARS = ("devbox_user", "devbox_home", "devbox_project_dir", "devbox_ops_dir", "devbox_log_dir",
               "devbox_pm2_home", "devbox_pm2_executable", "devbox_apps_dir")


def _entry_points(path):
    with open(path) as f:
        return yaml.safe_load(f)["argument_specs"]


def _strip_docs(spec):
    """Compare what validates, not the prose."""
    if isinstance(spec, dict):
        return {k: _strip_docs(v) for k, v in spec.items() if k not in ("description", "version_added")}
    if isinstance(spec, list):
        return [_strip_docs(v) for v in spec]
    return spec


def _reference():
    return _entry_points(REFERENCE)["main"]["options"]


def _other_role_specs():
    found = []
    for path in sorted(glob.glob(os.path.join(REPO, "roles", "*", "meta", "argument_specs.yml"))):
        if path == REFERENCE:
            continue
        for entry, spec in _entry_points(path).items():
            found.append((os.path.relpath(path, REPO), entry, spec.get("options") or {}))
    return found


def test_reference_defines_the_app_model():
    apps = _reference()["devbox_apps"]
    assert apps["type"] == "list" and apps["elements"] == "dict"
    for field in ("name", "port", "script", "env", "instances", "exec_mode", "health", "readiness", "deploy"):
        assert field in apps["options"], field
    assert apps["options"]["name"].get("required") is True
    deploy = apps["options"]["deploy"]["options"]
    assert deploy["strategy"]["choices"] == ["reload", "bluegreen", "restart"]
    assert set(deploy) >= {"source", "preflight", "slo", "bluegreen", "backup", "hooks"}


@pytest.mark.parametrize("path,entry,options", _other_role_specs())
def test_shared_fields_match_the_reference(path, entry, options):
    ref = _reference()
    if "devbox_apps" in options:
        mine = options["devbox_apps"]
        assert (mine["type"], mine.get("elements")) == ("list", "dict"), path
        fields, ref_fields = set(mine.get("options", {})), set(ref["devbox_apps"]["options"])
        assert fields == ref_fields, "%s %s: devbox_apps fields missing %s, extra %s" % (
            path, entry, sorted(ref_fields - fields), sorted(fields - ref_fields))
        for field, spec in mine["options"].items():
            assert _strip_docs(spec) == _strip_docs(ref["devbox_apps"]["options"][field]), \
                "%s %s: devbox_apps.%s differs from roles/supervisor" % (path, entry, field)
        assert _strip_docs(dict(mine, options=None)) == _strip_docs(dict(ref["devbox_apps"], options=None)), path
    for var in SHARED_VARS:
        if var in options:
            assert _strip_docs(options[var]) == _strip_docs(ref[var]), "%s %s: %s differs" % (path, entry, var)


def test_a_mismatch_would_be_caught():
    ref = _reference()["devbox_apps"]["options"]["instances"]
    changed = dict(ref, type="str")
    assert _strip_docs(changed) != _strip_docs(ref)
    # a nested change inside the deploy settings is seen too
    deploy = _reference()["devbox_apps"]["options"]["deploy"]
    nested = dict(deploy, options=dict(deploy["options"], slo=dict(deploy["options"]["slo"], type="list")))
    assert _strip_docs(nested) != _strip_docs(deploy)


def test_the_roles_that_deploy_and_supervise_both_carry_the_list():
    entries = [(path, entry) for path, entry, options in _other_role_specs() if "devbox_apps" in options]
    assert ("roles/deploy/meta/argument_specs.yml", "main") in entries
    assert ("roles/monitoring/meta/argument_specs.yml", "main") in entries
