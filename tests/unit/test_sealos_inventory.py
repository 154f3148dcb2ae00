# SPDX-License-Identifier: GPL-3.0-or-later
"""devbox.ops.sealos: the engine (plugins/module_utils/sealos.py) and the plugin through the real
``ansible-inventory`` CLI.

The ssh-config source reads real files. No Kubernetes API server can run here, so a local HTTPS server
(http.server in a thread, on 127.0.0.1, with a self-signed certificate made for the test) STANDS IN FOR
THE KUBERNETES API: it serves the two paths the official ``kubernetes`` client calls (the Devbox list and
a Secret read) and checks the bearer token of the kubeconfig. Everything else is real: the client, its
kubeconfig loading and TLS verification, the key files, the CLI and its output.
"""
import base64
import datetime
import ipaddress
import json
import os
import socket
import ssl
import stat
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.devbox.ops.plugins.module_utils import sealos
from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, ".venv", "bin")
NS = "ns-rqtny6y6"
REGION = "usw.sealos.io"
TOKEN = "tok-%s" % uuid.uuid4().hex


def fake_key(name):
    """A private key text with a unique marker, so any leak of it into output is detectable."""
    return ("-----BEGIN OPENSSH PRIVATE KEY-----\nKEYMATERIAL-%s-%s\n-----END OPENSSH PRIVATE KEY-----\n"
            % (name, uuid.uuid4().hex))


def devbox(name, state, phase, node_port=None, labels=None, user=None):
    obj = {"apiVersion": "devbox.sealos.io/v1alpha1", "kind": "Devbox",
           "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
           "spec": {"state": state, "config": {"user": user} if user else {}, "network": {"type": "NodePort"}},
           "status": {"phase": phase, "network": {"type": "NodePort"}}}
    if node_port is not None:
        obj["status"]["network"]["nodePort"] = node_port
    return obj


DEVBOXES = [
    devbox("api-1", "Running", "Running", 40001, {"tier": "backend"}),
    devbox("web-2", "Running", "Running", 40002, {"tier": "frontend"}, user="sealos"),
    devbox("stopped-3", "Stopped", "Stopped", 40003),
    devbox("paused-4", "Paused", "Paused", 40004),       # v1alpha2 state; pod released
    devbox("pending-5", "Running", "Pending", 40005),    # not up yet
    devbox("noport-6", "Running", "Running"),            # no status.network.nodePort
    devbox("nokey-7", "Running", "Running", 40007),      # its Secret lacks the key
]
KEYS = {d["metadata"]["name"]: fake_key(d["metadata"]["name"]) for d in DEVBOXES}


def secret_for(name):
    data = {"SEALOS_DEVBOX_PUBLIC_KEY": base64.b64encode(b"ssh-ed25519 AAAA pub").decode()}
    if name != "nokey-7":
        data["SEALOS_DEVBOX_PRIVATE_KEY"] = base64.b64encode(KEYS[name].encode()).decode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": NS},
            "data": data}


def self_signed(tmp_path):
    """A CA-less self-signed certificate for 127.0.0.1; returns (cert path, key path, cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-apiserver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = tmp_path / "apiserver.crt", tmp_path / "apiserver.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path), pem


class FakeKubeAPI:
    """Stands in for the Kubernetes API server (none can run here): Devbox list + Secret reads, bearer auth."""

    def __init__(self, tmp_path, devboxes):
        self.devboxes = devboxes
        self.requests = []
        cert, key, self.ca_pem = self_signed(tmp_path)
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                url = urlparse(self.path)
                api.requests.append((url.path, parse_qs(url.query)))
                if self.headers.get("Authorization") != "Bearer " + TOKEN:
                    return self.reply(401, {"kind": "Status", "status": "Failure", "reason": "Unauthorized",
                                            "code": 401, "message": "Unauthorized"})
                parts = url.path.strip("/").split("/")
                if parts[:5] == ["apis", "devbox.sealos.io", "v1alpha1", "namespaces", NS] and parts[5:] == ["devboxes"]:
                    return self.reply(200, {"apiVersion": "devbox.sealos.io/v1alpha1", "kind": "DevboxList",
                                            "metadata": {}, "items": api.devboxes})
                if parts[:4] == ["api", "v1", "namespaces", NS] and len(parts) == 6 and parts[4] == "secrets" \
                        and parts[5] in KEYS:
                    return self.reply(200, secret_for(parts[5]))
                return self.reply(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})

            def reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = "https://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def refused_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def kubeconfig(tmp_path, server, ca_pem, token=TOKEN, name="kubeconfig"):
    """A kubeconfig like the one Sealos hands out: one cluster, one token user, a context with a namespace."""
    conf = {"apiVersion": "v1", "kind": "Config", "current-context": "sealos",
            "clusters": [{"name": "sealos", "cluster": {
                "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "sealos", "context": {"cluster": "sealos", "user": "u", "namespace": NS}}]}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(conf))
    return str(path)


def unsafe(value):
    """ansible-core 2.19's ansible-inventory marks strings from inventory sources as unsafe in its JSON."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unsafe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsafe(v) for v in value]
    return value


def run_inventory(tmp_path, config, *extra, umask=0, name=None):
    """``ansible-inventory -i <tmp>/x.sealos.yml --list`` with the repo's ansible.cfg, under ``umask``.

    Returns (rc, inventory dict or None, stdout + stderr).
    """
    path = tmp_path / ("%s.sealos.yml" % (name or uuid.uuid4().hex[:8]))
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="0", HOME=str(tmp_path / "home"), ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="1")
    env.pop("KUBECONFIG", None)
    env.pop("K8S_AUTH_KUBECONFIG", None)
    proc = subprocess.run([os.path.join(BIN, "ansible-inventory"), "-i", str(path), "--list"] + list(extra),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
                          preexec_fn=lambda: os.umask(umask))
    start = proc.stdout.find("\n{\n") + 1 if not proc.stdout.startswith("{") else 0  # -vvv prints a banner first
    try:
        inv = unsafe(json.loads(proc.stdout[start:]))
    except ValueError:
        inv = None
    return proc.returncode, inv, proc.stdout + proc.stderr


def members(inv, group):
    return sorted((inv.get(group) or {}).get("hosts", []))


# ------------------------------------------------------------------ engine, without Ansible

def test_alias_parsing_and_group_names():
    assert sealos.parse_alias("usw.sailos.io_ns-rqtny6y6_devbox1234") == ("usw.sailos.io", "ns-rqtny6y6", "devbox1234")
    assert sealos.parse_alias("bja.sealos.run_ns-wappehp7_my-app") == ("bja.sealos.run", "ns-wappehp7", "my-app")
    for bad in ("other", "a_b", "usw.sealos.io_ns-x_", "usw.sealos.io_NS_app", "x_y_z_w"):
        assert sealos.parse_alias(bad) is None, bad
    assert sealos.safe_group("usw.sailos.io") == "usw_sailos_io"
    assert sealos.safe_group("ns-AB12") == "ns_ab12"


def test_ssh_config_semantics(tmp_path):
    """First value wins across matching blocks, Host * included, negation, Include globs, Match skipped."""
    home = tmp_path / "home"
    (home / ".ssh" / "extra").mkdir(parents=True)
    (home / ".ssh" / "extra" / "one.conf").write_text("Host hkg.sealos.io_ns-b_extra\n  User extra\n")
    conf = tmp_path / "config"
    conf.write_text(
        "User early\n"
        "Host usw.sealos.io_ns-a_x usw.sealos.io_ns-a_y\n  HostName=%h.direct\n"
        "  Include extra/*.conf\n"
        "  Port 40100\n"  # still in the usw block: an Include does not change the block that follows it
        "Host *_ns-a_y\n  Port 1\n  User why\n"
        "Host * !*_ns-b_*\n  IdentityFile ~/.ssh/id_%r\n"
        "Match host *\n  Port 9\n")
    parsed = sealos.parse_ssh_config(str(conf), home=str(home))
    by = {h["alias"]: h for h in parsed["hosts"]}
    assert list(by) == ["usw.sealos.io_ns-a_x", "usw.sealos.io_ns-a_y", "hkg.sealos.io_ns-b_extra"]
    assert by["usw.sealos.io_ns-a_y"]["port"] == 40100 and by["usw.sealos.io_ns-a_y"]["user"] == "early"
    assert by["usw.sealos.io_ns-a_x"]["hostname"] == "usw.sealos.io_ns-a_x.direct"
    assert by["usw.sealos.io_ns-a_x"]["identity_file"] == str(home / ".ssh" / "id_early")
    extra = by["hkg.sealos.io_ns-b_extra"]
    assert extra["identity_file"] is None  # negated pattern
    assert extra["port"] is None and extra["user"] == "early"  # not the Match block's, not the usw block's
    assert any("Match block ignored" in note for note in parsed["notes"])


def test_ssh_config_bad_input(tmp_path):
    conf = tmp_path / "config"
    conf.write_text("Host usw.sealos.io_ns-a_x\n  Port forty\n")
    with pytest.raises(DevboxOpsError) as err:
        sealos.parse_ssh_config(str(conf))
    assert "Port='forty'" in str(err.value) and "usw.sealos.io_ns-a_x" in str(err.value)
    with pytest.raises(DevboxOpsError) as err:
        sealos.parse_ssh_config(str(tmp_path / "missing"))
    assert "missing" in str(err.value) and "cannot read" in str(err.value)
    loop = tmp_path / "loop"
    loop.write_text("Include %s\n" % loop)
    with pytest.raises(DevboxOpsError, match="loop"):
        sealos.parse_ssh_config(str(loop))


@pytest.mark.parametrize("source, param", [
    ({"type": "docker"}, "sources[0].type"),
    ({"type": "kubernetes"}, "sources[0].region_domain"),
    ({"type": "kubernetes", "region_domain": "usw.sealos.io", "states": "Running"}, "sources[0].states"),
    ({"type": "kubernetes", "region_domain": "usw.sealos.io", "timeout": 0}, "sources[0].timeout"),
    ({"type": "ssh_config", "kubeconfig": "/x"}, "sources[0]"),
])
def test_bad_sources_name_the_parameter(source, param):
    with pytest.raises(DevboxOpsError) as err:
        sealos.validate_sources([source])
    assert err.value.param == param and str(err.value).startswith(param + "=")


def test_devbox_mapping_filters():
    host, why = sealos.devbox_host(DEVBOXES[1], REGION, ["Running"], ["Running"])
    assert why is None and host["name"] == "usw.sealos.io_%s_web-2" % NS
    assert host["vars"]["ansible_user"] == "sealos" and host["vars"]["ansible_port"] == 40002
    assert sealos.devbox_host(DEVBOXES[2], REGION, ["Running"], ["Running"])[1][0] == "info"
    assert sealos.devbox_host(DEVBOXES[4], REGION, ["Running"], [])[0] is not None  # phases [] keeps all
    level, reason = sealos.devbox_host(DEVBOXES[5], REGION, ["Running"], ["Running"])[1]
    assert level == "warning" and "noport-6" in reason and "nodePort" in reason


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_key_file_is_0600_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        key_dir = tmp_path / "keys"
        path = sealos.write_private_key(str(key_dir), NS, "api-1", KEYS["api-1"])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(str(key_dir)).st_mode) == 0o700
        assert open(path).read() == KEYS["api-1"]
        os.chmod(path, 0o644)  # a loose file left by someone else is tightened on the next write
        assert sealos.write_private_key(str(key_dir), NS, "api-1", KEYS["api-1"]) == path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert sorted(os.listdir(str(key_dir))) == ["%s-api-1" % NS]  # no temporary file left behind
    finally:
        os.umask(old)
    with pytest.raises(DevboxOpsError, match="name='../x'"):
        sealos.write_private_key(str(tmp_path / "keys"), NS, "../x", "k")


def test_decode_private_key_errors_never_show_the_value():
    secret = secret_for("api-1")["data"]
    assert sealos.decode_private_key(secret, "devbox a/b") == KEYS["api-1"]
    with pytest.raises(DevboxOpsError) as err:
        sealos.decode_private_key({"SEALOS_DEVBOX_PRIVATE_KEY": "%%%" + TOKEN}, "devbox a/b")
    assert "devbox a/b" in str(err.value) and TOKEN not in str(err.value)


# ------------------------------------------------------------------ the plugin through ansible-inventory

def test_ansible_doc_renders():
    proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "inventory", "devbox.ops.sealos"], cwd=REPO,
                          env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1"),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for text in ("devbox.ops.sealos", "key_cache_dir", "region_domain", "keyed_groups", "cache_plugin"):
        assert text in proc.stdout


SSH_CONFIG = """\
# ~/.ssh/sealos/devbox_config as the Sealos IDE plugin writes it
Host usw.sealos.io_ns-rqtny6y6_api-1
  HostName usw.sealos.io
  User devbox
  Port 40911
  IdentityFile ~/.ssh/sealos/usw.sealos.io_ns-rqtny6y6_api-1
  IdentitiesOnly yes
  StrictHostKeyChecking no

Host hzh.sealos.run_ns-k2v8x9_worker
  HostName hzh.sealos.run
  Port 31022
  IdentityFile ~/.ssh/sealos/hzh.sealos.run_ns-k2v8x9_worker

# not a devbox: left out by sealos_only
Host bastion
  HostName 192.0.2.7

Include {include}

Host *
  User fallback
  Port 22
"""


def write_ssh_config(tmp_path):
    included = tmp_path / "more_config"
    included.write_text("Host usw.sealos.io_ns-rqtny6y6_web-2\n  HostName usw.sealos.io\n  Port 40922\n")
    conf = tmp_path / "devbox_config"
    conf.write_text(SSH_CONFIG.format(include=included))
    return str(conf)


def test_ssh_config_source_cli(tmp_path):
    home = str(tmp_path / "home")
    config = {"plugin": "devbox.ops.sealos", "sources": [{"type": "ssh_config", "path": write_ssh_config(tmp_path)}],
              "compose": {"app_port": "ansible_port + 1"},
              "groups": {"west": "sealos_region == 'usw.sealos.io'"},
              "keyed_groups": [{"key": "sealos_devbox", "prefix": "box"}]}
    rc, inv, output = run_inventory(tmp_path, config)
    assert rc == 0, output
    api, worker, web = ("usw.sealos.io_ns-rqtny6y6_api-1", "hzh.sealos.run_ns-k2v8x9_worker",
                        "usw.sealos.io_ns-rqtny6y6_web-2")
    assert members(inv, "devboxes") == sorted([api, worker, web])
    assert "bastion" not in inv["_meta"]["hostvars"]
    assert members(inv, "sealos_region_usw_sealos_io") == sorted([api, web])
    assert members(inv, "sealos_region_hzh_sealos_run") == [worker]
    assert members(inv, "sealos_ns_ns_k2v8x9") == [worker]
    assert members(inv, "sealos_ns_ns_rqtny6y6") == sorted([api, web])
    hv = inv["_meta"]["hostvars"]
    assert {k: v for k, v in hv[api].items() if k.startswith("ansible_")} == {
        "ansible_host": "usw.sealos.io", "ansible_port": 40911, "ansible_user": "devbox",
        "ansible_ssh_private_key_file": home + "/.ssh/sealos/usw.sealos.io_ns-rqtny6y6_api-1",
        "ansible_ssh_extra_args": "-o IdentitiesOnly=yes"}
    # the Host * block fills what the devbox's block did not set (first value wins)
    assert hv[worker]["ansible_user"] == "fallback" and hv[worker]["ansible_port"] == 31022
    assert hv[web]["ansible_port"] == 40922 and hv[web]["sealos_devbox"] == "web-2"
    assert hv[worker]["sealos_namespace"] == "ns-k2v8x9" and hv[worker]["sealos_region"] == "hzh.sealos.run"
    # compose / groups / keyed_groups
    assert hv[api]["app_port"] == 40912
    assert members(inv, "west") == sorted([api, web])
    assert members(inv, "box_worker") == [worker]


def test_ssh_config_bad_file_is_a_clear_error(tmp_path):
    config = {"plugin": "devbox.ops.sealos", "sources": [{"type": "ssh_config", "path": str(tmp_path / "nope")}]}
    rc, dummy, output = run_inventory(tmp_path, config)
    assert rc != 0 or "Unable to parse" in output
    assert "nope" in output and "cannot read" in output


@pytest.fixture
def api(tmp_path):
    server = FakeKubeAPI(tmp_path, DEVBOXES)
    yield server
    server.close()


def kube_source(kubeconfig_path, **extra):
    return dict({"type": "kubernetes", "kubeconfig": kubeconfig_path, "region_domain": REGION}, **extra)


def assert_no_secret(output, key_dir=None):
    assert TOKEN not in output
    assert "KEYMATERIAL" not in output
    for key in KEYS.values():
        assert key.splitlines()[1] not in output


def test_kubernetes_source_cli(tmp_path, api):
    key_dir = tmp_path / "cache" / "keys"
    config = {"plugin": "devbox.ops.sealos", "key_cache_dir": str(key_dir),
              "sources": [kube_source(kubeconfig(tmp_path, api.url, api.ca_pem))],
              "keyed_groups": [{"key": "sealos_labels.tier", "prefix": "tier"}],
              "compose": {"ssh_target": "ansible_user ~ '@' ~ ansible_host ~ ':' ~ ansible_port"}}
    rc, inv, output = run_inventory(tmp_path, config, "-vvv", umask=0)
    assert rc == 0, output
    alias = "%s_%s_%%s" % (REGION, NS)
    running = [alias % n for n in ("api-1", "nokey-7", "web-2")]
    assert members(inv, "devboxes") == running
    assert members(inv, "sealos_ns_ns_rqtny6y6") == running
    assert members(inv, "sealos_region_usw_sealos_io") == running
    hv = inv["_meta"]["hostvars"]
    for left_out in ("stopped-3", "paused-4", "pending-5", "noport-6"):
        assert alias % left_out not in hv
    api_vars = hv[alias % "api-1"]
    assert api_vars["ansible_host"] == REGION and api_vars["ansible_port"] == 40001
    assert api_vars["ansible_user"] == "devbox" and hv[alias % "web-2"]["ansible_user"] == "sealos"
    assert api_vars["sealos_state"] == "Running" and api_vars["sealos_labels"] == {"tier": "backend"}
    assert api_vars["ssh_target"] == "devbox@usw.sealos.io:40001"
    assert members(inv, "tier_backend") == [alias % "api-1"] and members(inv, "tier_frontend") == [alias % "web-2"]
    # keys: 0600 files (umask 0 in the CLI process) in a 0700 dir, right content, only the path in hostvars
    assert stat.S_IMODE(os.stat(str(key_dir)).st_mode) == 0o700
    for name in ("api-1", "web-2"):
        path = hv[alias % name]["ansible_ssh_private_key_file"]
        assert path == str(key_dir / ("%s-%s" % (NS, name)))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert open(path).read() == KEYS[name]
    assert sorted(os.listdir(str(key_dir))) == ["%s-api-1" % NS, "%s-web-2" % NS]
    assert "ansible_ssh_private_key_file" not in hv[alias % "nokey-7"]
    # warnings name the devbox; filtered devboxes are explained at -vvv
    flat = " ".join(output.split())
    assert "devbox %s/noport-6 left out: it has no status.network.nodePort" % NS in flat
    assert "devbox %s/nokey-7: its Secret has no SEALOS_DEVBOX_PRIVATE_KEY; added without a key file" % NS in flat
    assert "devbox %s/stopped-3 left out: spec.state=Stopped" % NS in flat
    assert "devbox %s/paused-4 left out: spec.state=Paused" % NS in flat
    assert "devbox %s/pending-5 left out: status.phase=Pending" % NS in flat
    assert_no_secret(output)
    # the client asked for exactly what we expect: one list, Secrets only of devboxes that are kept
    paths = [p for p, dummy in api.requests]
    assert paths[0] == "/apis/devbox.sealos.io/v1alpha1/namespaces/%s/devboxes" % NS
    assert sorted(p.rsplit("/", 1)[1] for p in paths[1:]) == ["api-1", "nokey-7", "web-2"]


def test_kubernetes_filters_and_label_selector(tmp_path, api):
    config = {"plugin": "devbox.ops.sealos", "key_cache_dir": str(tmp_path / "keys"), "hostnames": "name",
              "sources": [kube_source(kubeconfig(tmp_path, api.url, api.ca_pem), states=["Running", "Paused"],
                                      phases=[], label_selector="tier in (backend,frontend)")]}
    rc, inv, output = run_inventory(tmp_path, config)
    assert rc == 0, output
    # phases [] keeps Pending; Paused kept by states; names are the devbox names
    assert members(inv, "devboxes") == ["api-1", "nokey-7", "paused-4", "pending-5", "web-2"]
    assert api.requests[0][1] == {"labelSelector": ["tier in (backend,frontend)"]}
    assert all(p.endswith("/secrets/%s" % n) for (p, dummy), n in zip(api.requests[1:], ["api-1", "web-2", "paused-4",
               "pending-5", "nokey-7"])) and len(api.requests) == 6
    assert_no_secret(output)


def test_kubernetes_without_keys_reads_no_secret(tmp_path, api):
    config = {"plugin": "devbox.ops.sealos", "key_cache_dir": str(tmp_path / "keys"),
              "sources": [kube_source(kubeconfig(tmp_path, api.url, api.ca_pem), fetch_keys=False)]}
    rc, inv, output = run_inventory(tmp_path, config)
    assert rc == 0, output
    assert len(members(inv, "devboxes")) == 3
    assert [p for p, dummy in api.requests] == ["/apis/devbox.sealos.io/v1alpha1/namespaces/%s/devboxes" % NS]
    for hostvars in inv["_meta"]["hostvars"].values():
        assert "ansible_ssh_private_key_file" not in hostvars and "ansible_ssh_extra_args" not in hostvars
    assert not os.path.exists(str(tmp_path / "keys")) and "Secret" not in output


def test_both_sources_make_one_host_and_cache_serves_when_api_is_gone(tmp_path, api):
    kc = kubeconfig(tmp_path, api.url, api.ca_pem)
    cache_dir = tmp_path / "inv-cache"
    config = {"plugin": "devbox.ops.sealos", "key_cache_dir": str(tmp_path / "keys"),
              "sources": [{"type": "ssh_config", "path": write_ssh_config(tmp_path)}, kube_source(kc)],
              "cache": True, "cache_plugin": "ansible.builtin.jsonfile", "cache_connection": str(cache_dir)}
    rc, inv, output = run_inventory(tmp_path, config, name="cached")
    assert rc == 0, output
    api_alias = "%s_%s_api-1" % (REGION, NS)
    hv = inv["_meta"]["hostvars"]
    assert members(inv, "devboxes") == sorted(  # api-1 and web-2 are in both: one host each
        ["hzh.sealos.run_ns-k2v8x9_worker"] + ["%s_%s_%s" % (REGION, NS, n) for n in ("api-1", "nokey-7", "web-2")])
    assert hv[api_alias]["sealos_source"] == "kubernetes" and hv[api_alias]["ansible_port"] == 40001
    cached = "".join(open(str(p)).read() for p in cache_dir.iterdir())
    assert api_alias in cached and "KEYMATERIAL" not in cached and TOKEN not in cached
    api.close()  # the API is gone: the cache still answers
    rc2, inv2, output2 = run_inventory(tmp_path, config, name="cached")
    assert rc2 == 0, output2
    assert inv2["_meta"]["hostvars"] == hv


def test_api_refused_is_a_clear_error(tmp_path):
    cert_pem = self_signed(tmp_path)[2]
    url = "https://127.0.0.1:%d" % refused_port()
    config = {"plugin": "devbox.ops.sealos", "key_cache_dir": str(tmp_path / "keys"),
              "sources": [kube_source(kubeconfig(tmp_path, url, cert_pem))]}
    rc, inv, output = run_inventory(tmp_path, config)
    flat = " ".join(output.split())
    assert "cannot reach the Kubernetes API at %s" % url in flat, output
    assert "Connection refused" in flat
    assert not (inv or {}).get("devboxes")
    assert not os.path.exists(str(tmp_path / "keys"))
    assert_no_secret(output)


def test_api_401_is_a_clear_error_without_the_token(tmp_path, api):
    wrong = "wrong-%s" % uuid.uuid4().hex
    config = {"plugin": "devbox.ops.sealos", "key_cache_dir": str(tmp_path / "keys"),
              "sources": [kube_source(kubeconfig(tmp_path, api.url, api.ca_pem, token=wrong))]}
    rc, inv, output = run_inventory(tmp_path, config, "-vvv")
    flat = " ".join(output.split())
    assert "the Kubernetes API at %s answered HTTP 401 Unauthorized" % api.url in flat, output
    assert "credentials were refused" in flat
    assert wrong not in output and TOKEN not in output
    assert not (inv or {}).get("devboxes")
    assert not os.path.exists(str(tmp_path / "keys"))


def test_bad_source_changes_nothing(tmp_path):
    config = {"plugin": "devbox.ops.sealos", "key_cache_dir": str(tmp_path / "keys"),
              "sources": [{"type": "kubernetes", "region_domain": "not a domain"}]}
    rc, inv, output = run_inventory(tmp_path, config)
    assert "sources[0].region_domain='not a domain'" in " ".join(output.split())
    assert not (inv or {}).get("devboxes")
    assert not os.path.exists(str(tmp_path / "keys"))
