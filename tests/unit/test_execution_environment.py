# SPDX-License-Identifier: GPL-3.0-or-later
"""The AWX execution environment: the real ansible-builder CLI on execution-environment.yml.

Building the image needs a container engine (podman or docker), which this machine lacks, so the test
runs everything up to it for real: the collection tarball (ansible-galaxy collection build),
``ansible-builder create`` (the build context), then the two steps of the image build that decide its
content, on this machine: the galaxy stage's ``ansible-galaxy collection install -r requirements.yml``
with the requirements file builder wrote, and builder's own ``introspect.py`` on the installed
collection, which must find the collection's Python and system dependencies.
"""
import os
import shutil
import subprocess

import pytest
import yaml
from ansible.module_utils.compat.version import LooseVersion
from ansible.release import __version__ as ansible_version

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, ".venv", "bin")
ENV = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")


def run(argv, cwd, timeout=300, env=None):
    proc = subprocess.run(argv, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def snapshot(dest):
    """A copy of the checkout to build from: others edit it while tests run, and a file that vanishes
    during ``collection build`` (an editor's temporary file) would fail it."""
    skip = shutil.ignore_patterns(".git", ".venv", ".collections", "node_modules", "__pycache__", ".*.tmp", "*.tar.gz")
    try:
        shutil.copytree(REPO, dest, symlinks=True, ignore=skip)
    except shutil.Error as exc:
        vanished = [e for e in exc.args[0] if "No such file" in str(e[2])]
        assert vanished == exc.args[0], exc.args[0]
    return dest


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """execution-environment.yml next to a freshly built collection tarball, and its build context."""
    work = tmp_path_factory.mktemp("ee")
    shutil.copy(os.path.join(REPO, "execution-environment.yml"), str(work))
    source = snapshot(str(tmp_path_factory.mktemp("src") / "ops"))
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(work), source], cwd=source)
    ctx = work / "ctx"
    out = run([os.path.join(BIN, "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", str(ctx)],
              cwd=str(work))
    assert "Complete! The build context can be found at: %s" % ctx in out
    return work, ctx


def test_builder_create_makes_the_context(context):
    work, ctx = context
    tarballs = [n for n in os.listdir(str(ctx / "_build" / "collections")) if n.endswith(".tar.gz")]
    assert len(tarballs) == 1 and tarballs[0].startswith("devbox-ops-")
    recipe = (ctx / "Dockerfile").read_text() if (ctx / "Dockerfile").exists() else (ctx / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/ansible/awx-ee:' in recipe
    assert "ansible-core==2.19.14" in recipe
    galaxy = recipe[recipe.index("FROM base AS galaxy"):recipe.index("FROM base AS builder")]
    order = [galaxy.index("COPY _build/collections/ /tmp/devbox-ops-collection/"),
             galaxy.index("RUN mv /tmp/devbox-ops-collection/devbox-ops-*.tar.gz"),
             galaxy.index("ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml")]
    assert order == sorted(order)
    assert "introspect.py introspect" in recipe


def test_galaxy_stage_and_introspection_find_the_dependencies(context, tmp_path):
    work, ctx = context
    requirements = yaml.safe_load((ctx / "_build" / "requirements.yml").read_text())
    (wanted,) = requirements["collections"]
    assert wanted["type"] == "file" and wanted["name"] == "/tmp/devbox-ops-collection/devbox-ops.tar.gz"
    # the galaxy stage, here: the COPY and mv steps into a temporary directory, then builder's requirements
    staged = tmp_path / "devbox-ops-collection"
    staged.mkdir()
    (tarball,) = os.listdir(str(ctx / "_build" / "collections"))
    shutil.copy(str(ctx / "_build" / "collections" / tarball), str(staged / "devbox-ops.tar.gz"))
    local = tmp_path / "requirements.yml"
    local.write_text(yaml.safe_dump({"collections": [dict(wanted, name=str(staged / "devbox-ops.tar.gz"))]}))
    share = tmp_path / "usr-share-ansible"
    (tmp_path / "empty.cfg").write_text("")  # as in the image: no ansible.cfg, no collection installed yet
    clean = dict(os.environ, ANSIBLE_CONFIG=str(tmp_path / "empty.cfg"), HOME=str(tmp_path),
                 ANSIBLE_COLLECTIONS_PATH=str(share / "collections"))
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", "-r", str(local),
         "--collections-path", str(share / "collections")], cwd=str(tmp_path), env=clean)
    installed = share / "collections" / "ansible_collections" / "devbox" / "ops"
    assert (installed / "plugins" / "inventory" / "sealos.py").is_file()
    assert (installed / "meta" / "execution-environment.yml").is_file()
    # the builder stage's introspection, with the script ansible-builder put in the context
    pip_out, bindep_out = tmp_path / "pip.txt", tmp_path / "bindep.txt"
    run([os.path.join(BIN, "python"), str(ctx / "_build" / "scripts" / "introspect.py"), "introspect",
         str(share / "collections"), "--write-pip", str(pip_out), "--write-bindep", str(bindep_out)], cwd=str(tmp_path))
    pip = [line.split()[0] for line in pip_out.read_text().splitlines() if line.strip()]
    system = [line.split("#")[0].strip() for line in bindep_out.read_text().splitlines() if line.strip()]
    assert pip == ["requests>=2.25", "psutil>=5.8", "kubernetes>=24.2.0", "pymongo>=4.0"]
    assert system == ["openssh-client [platform:dpkg]", "openssh-clients [platform:rpm]", "rsync"]


def test_runtime_metadata_requires_this_ansible():
    with open(os.path.join(REPO, "meta", "runtime.yml")) as handle:
        runtime = yaml.safe_load(handle)
    spec = runtime["requires_ansible"]
    assert spec.startswith(">=")
    assert LooseVersion(ansible_version) >= LooseVersion(spec[2:])
