# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Sealos devboxes as inventory hosts: the logic behind the ``devbox.ops.sealos`` inventory plugin.

Plain Python (3.8+), no Ansible. Two sources:

- ssh-config files like the ``~/.ssh/sealos/devbox_config`` that the Sealos IDE plugins write, where a
  devbox's Host alias is ``<region domain>_<namespace>_<devbox name>``;
- the Kubernetes API: ``devbox.sealos.io`` Devbox objects, their ``status.network.nodePort`` and the
  private key in the devbox's Secret (``SEALOS_DEVBOX_PRIVATE_KEY``). ``kubernetes`` is imported only here.

A host is a dict ``{name, groups, vars}``. Private keys are only ever written to a 0600 file; no value
this module returns or raises contains one.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import fnmatch
import getpass
import glob
import os
import re

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value

DEVBOX_GROUP = "devboxes"
API_GROUP = "devbox.sealos.io"
PLURAL = "devboxes"
KEY_FIELD = "SEALOS_DEVBOX_PRIVATE_KEY"
DEFAULT_USER = "devbox"
DEFAULT_SSH_CONFIG = "~/.ssh/sealos/devbox_config"
MAX_INCLUDE_DEPTH = 16
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(r"^%s(?:\.%s)*$" % (_LABEL, _LABEL))
_ALIAS = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)_(%s)_(%s)$" % (_LABEL, _LABEL))
_ARG = re.compile(r'"([^"]*)"|(\S+)')

SOURCE_KEYS = {
    "ssh_config": {"type", "path", "sealos_only"},
    "kubernetes": {"type", "kubeconfig", "context", "namespace", "region_domain", "api_version", "states",
                   "phases", "label_selector", "timeout", "user", "fetch_keys"},
}


# ---------------------------------------------------------------- names and groups

def safe_group(text):
    """A group name Ansible accepts: lower case, every character outside [a-z0-9_] turned into ``_``."""
    return re.sub(r"[^a-z0-9_]", "_", str(text).lower())


def parse_alias(alias):
    """``(region, namespace, devbox)`` from a Sealos Host alias such as ``usw.sealos.io_ns-ab12_api``, else None."""
    match = _ALIAS.match(alias or "")
    return (match.group(1), match.group(2), match.group(3)) if match else None


def make_alias(region, namespace, name):
    """The Host alias Sealos writes for a devbox (``<region>_<namespace>_<name>``)."""
    return "%s_%s_%s" % (region, namespace, name)


def host_record(alias, region, namespace, name, source, hostvars):
    """One inventory host: named by its alias, in ``devboxes`` and its region and namespace groups."""
    groups = [DEVBOX_GROUP]
    variables = dict(sealos_source=source)
    if region:
        groups.append("sealos_region_" + safe_group(region))
        variables["sealos_region"] = region
    if namespace:
        groups.append("sealos_ns_" + safe_group(namespace))
        variables["sealos_namespace"] = namespace
    if name:
        variables["sealos_devbox"] = name
    variables.update(hostvars)
    return {"name": alias, "groups": groups, "vars": variables}


# ---------------------------------------------------------------- source options

def validate_sources(sources):
    """Check the ``sources`` option; returns a list of dicts with defaults applied. Bad input names its path."""
    if not isinstance(sources, list) or not sources:
        raise bad_value("sources", sources, "expected a non-empty list of sources")
    out = []
    for index, src in enumerate(sources):
        where = "sources[%d]" % index
        if not isinstance(src, dict):
            raise bad_value(where, src, "expected a dict with a type (ssh_config or kubernetes)")
        kind = src.get("type")
        if kind not in SOURCE_KEYS:
            raise bad_value(where + ".type", kind, "expected one of: %s" % ", ".join(sorted(SOURCE_KEYS)))
        unknown = sorted(set(src) - SOURCE_KEYS[kind])
        if unknown:
            raise bad_value(where, unknown, "unknown option(s) for a %s source; known: %s"
                            % (kind, ", ".join(sorted(SOURCE_KEYS[kind]))))
        if kind == "ssh_config":
            out.append(dict(type=kind, path=_text(src.get("path") or DEFAULT_SSH_CONFIG, where + ".path"),
                            sealos_only=_bool(src.get("sealos_only", True), where + ".sealos_only")))
            continue
        region = src.get("region_domain")
        if not isinstance(region, str) or not _DNS_NAME.match(region.lower()):
            raise bad_value(where + ".region_domain", region, "expected the host name devboxes are reached at, "
                            "for example usw.sealos.io")
        timeout = src.get("timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise bad_value(where + ".timeout", timeout, "expected a number of seconds > 0")
        namespace = src.get("namespace")
        if namespace is not None and not (isinstance(namespace, str) and re.match("^%s$" % _LABEL, namespace)):
            raise bad_value(where + ".namespace", namespace, "expected a Kubernetes namespace name")
        out.append(dict(
            type=kind, region_domain=region.lower(), namespace=namespace, timeout=float(timeout),
            kubeconfig=_opt_text(src.get("kubeconfig"), where + ".kubeconfig"),
            context=_opt_text(src.get("context"), where + ".context"),
            api_version=_text(src.get("api_version") or "v1alpha1", where + ".api_version"),
            label_selector=_opt_text(src.get("label_selector"), where + ".label_selector"),
            user=_opt_text(src.get("user"), where + ".user"),
            fetch_keys=_bool(src.get("fetch_keys", True), where + ".fetch_keys"),
            states=_names(src.get("states", ["Running"]), where + ".states"),
            phases=_names(src.get("phases", ["Running"]), where + ".phases")))
    return out


def _text(value, param):
    if not isinstance(value, str) or not value.strip():
        raise bad_value(param, value, "expected a non-empty string")
    return value


def _opt_text(value, param):
    return None if value is None else _text(value, param)


def _bool(value, param):
    if not isinstance(value, bool):
        raise bad_value(param, value, "expected true or false")
    return value


def _names(value, param):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise bad_value(param, value, "expected a list of names such as [Running]; an empty list keeps every one")
    return list(value)


# ---------------------------------------------------------------- ssh-config files

def _expand_home(path, home):
    """``~`` and ``~/x`` against ``home`` (``~user`` as the system says)."""
    if path == "~" or path.startswith("~/"):
        return home + path[1:]
    return os.path.expanduser(path)


def _local_user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (some containers)
        return ""


def _expand_tokens(text, alias, user, home):
    """The ssh_config(5) tokens we can know without a connection: %h %n %r %u %d %%."""
    table = {"h": alias, "n": alias, "r": user or "", "u": _local_user() if "%u" in text else "", "d": home, "%": "%"}
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), text)


def _read_lines(path, depth, home, seen):
    """``(path, lineno, keyword, args)`` for every directive, with ``Include`` expanded in place.

    An included file is framed by the pseudo keywords ``include-begin`` and ``include-end``: as in ssh,
    the lines after an ``Include`` belong to the block that was open before it.
    """
    if depth > MAX_INCLUDE_DEPTH:
        raise bad_value("Include", path, "nested more than %d levels" % MAX_INCLUDE_DEPTH)
    try:
        with open(path, "r") as handle:
            lines = handle.read().splitlines()
    except (IOError, OSError) as exc:
        raise DevboxOpsError("ssh_config path=%r: cannot read it: %s" % (path, exc.strerror or exc),
                             param="path", value=path)
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+)(.*)$", line)
        if not match:
            raise DevboxOpsError("ssh_config %s line %d: cannot parse %r" % (path, lineno, line),
                                 param="path", value=path)
        keyword, rest = match.group(1).lower(), match.group(2)
        args = [m.group(1) if m.group(1) is not None else m.group(2) for m in _ARG.finditer(rest)]
        if keyword != "include":
            yield path, lineno, keyword, args
            continue
        for pattern in args:
            pattern = _expand_home(pattern, home)
            if not os.path.isabs(pattern):  # ssh_config(5): relative to ~/.ssh in a user file
                pattern = os.path.join(home, ".ssh", pattern)
            for included in sorted(glob.glob(pattern)):
                real = os.path.realpath(included)
                if real in seen:
                    raise bad_value("Include", included, "includes itself (loop)")
                yield path, lineno, "include-begin", []
                yield from _read_lines(included, depth + 1, home, seen | {real})
                yield path, lineno, "include-end", []


def _host_matches(patterns, host):
    """ssh_config(5) Host matching: some positive pattern matches and no negated one does."""
    positive = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if fnmatch.fnmatchcase(host, pattern[1:].lower()):
                return False
        elif fnmatch.fnmatchcase(host, pattern.lower()):
            positive = True
    return positive


def parse_ssh_config(path, home=None):
    """Every concrete Host of an ssh-config file with its effective options.

    Returns ``{"hosts": [{alias, hostname, port, user, identity_file, identities_only}], "notes": [...]}``.
    As ssh does, the first value obtained for an option wins, across every block that matches the alias
    (``Host *`` included); ``Match`` blocks are left out (noted), since they need a connection to decide.
    """
    home = home or os.path.expanduser("~")
    path = _expand_home(path, home)
    blocks = [(["*"], [])]  # directives before the first Host apply to every host
    notes = []
    outer = []  # the index of the block open where each pending Include started
    for where, lineno, keyword, args in _read_lines(path, 0, home, {os.path.realpath(path)}):
        if keyword == "include-begin":
            outer.append(len(blocks) - 1)
        elif keyword == "include-end":
            index = outer.pop()
            if index != len(blocks) - 1:  # the included file opened blocks: reopen the outer one
                blocks.append((blocks[index][0], []))
        elif keyword == "host":
            blocks.append((args, []))
        elif keyword == "match":
            notes.append("%s line %d: Match block ignored" % (where, lineno))
            blocks.append(([], []))
        else:
            blocks[-1][1].append((keyword, args, where, lineno))
    aliases = []
    for patterns, dummy in blocks[1:]:
        for pattern in patterns:
            if not re.search(r"[*?!]", pattern) and pattern not in aliases:
                aliases.append(pattern)
    hosts = []
    for alias in aliases:
        opts = {}
        for patterns, directives in blocks:
            if not _host_matches(patterns, alias.lower()):
                continue
            for keyword, args, where, lineno in directives:
                if args and keyword not in opts:
                    opts[keyword] = (args, where, lineno)
        hosts.append(_effective(alias, opts, home))
    return {"hosts": hosts, "notes": notes}


def _effective(alias, opts, home):
    user = opts["user"][0][0] if "user" in opts else None
    port = None
    if "port" in opts:
        args, where, lineno = opts["port"]
        if not args[0].isdigit() or not 0 < int(args[0]) < 65536:
            raise DevboxOpsError("ssh_config %s line %d: Host %s: Port=%r is not a port number"
                                 % (where, lineno, alias, args[0]), param="Port", value=args[0])
        port = int(args[0])
    hostname = _expand_tokens(opts["hostname"][0][0], alias, user, home) if "hostname" in opts else alias
    identity = None
    if "identityfile" in opts and opts["identityfile"][0][0].lower() != "none":
        identity = _expand_home(_expand_tokens(opts["identityfile"][0][0], alias, user, home), home)
        if not os.path.isabs(identity):
            identity = os.path.join(home, identity)
    only = "identitiesonly" in opts and opts["identitiesonly"][0][0].lower() == "yes"
    return dict(alias=alias, hostname=hostname, port=port, user=user, identity_file=identity, identities_only=only)


def hosts_from_ssh_config(path, sealos_only=True, home=None):
    """Inventory hosts from an ssh-config file. Returns ``(hosts, notes)``.

    With ``sealos_only``, hosts whose alias is not a Sealos one (``<region>_<namespace>_<name>``) are
    left out (each one noted).
    """
    parsed = parse_ssh_config(path, home=home)
    hosts, notes = [], list(parsed["notes"])
    for entry in parsed["hosts"]:
        parts = parse_alias(entry["alias"])
        if parts is None and sealos_only:
            notes.append("Host %s left out: not a Sealos alias (<region>_<namespace>_<devbox>)" % entry["alias"])
            continue
        region, namespace, name = parts or (None, None, None)
        hostvars = {"ansible_host": entry["hostname"]}
        for key, var in (("port", "ansible_port"), ("user", "ansible_user"),
                         ("identity_file", "ansible_ssh_private_key_file")):
            if entry[key] is not None:
                hostvars[var] = entry[key]
        if entry["identities_only"]:
            hostvars["ansible_ssh_extra_args"] = "-o IdentitiesOnly=yes"
        hosts.append(host_record(entry["alias"], region, namespace, name, "ssh_config", hostvars))
    return hosts, notes


# ---------------------------------------------------------------- Devbox objects

def devbox_host(obj, region_domain, states, phases, user=None):
    """Map one Devbox object to ``(host, None)`` or ``(None, (level, reason))``.

    level is ``"info"`` for a devbox filtered out by state or phase, ``"warning"`` for one that should be
    reachable but cannot be (no nodePort, a name that is not a Kubernetes name).
    """
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    label = "devbox %s/%s" % (namespace, name)
    if not (isinstance(name, str) and re.match("^%s$" % _LABEL, name)
            and isinstance(namespace, str) and re.match("^%s$" % _LABEL, namespace)):
        return None, ("warning", "%s left out: not a valid Kubernetes name" % label)
    state, phase = spec.get("state"), status.get("phase")
    if states and state not in states:
        return None, ("info", "%s left out: spec.state=%s is not in states %s" % (label, state, states))
    if phases and phase not in phases:
        return None, ("info", "%s left out: status.phase=%s is not in phases %s" % (label, phase, phases))
    port = (status.get("network") or {}).get("nodePort")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None, ("warning", "%s left out: it has no status.network.nodePort (got %r), so there is no "
                      "SSH port to reach it on" % (label, port))
    hostvars = dict(
        ansible_host=region_domain, ansible_port=port,
        ansible_user=user or (spec.get("config") or {}).get("user") or DEFAULT_USER,
        sealos_state=state, sealos_phase=phase, sealos_labels=dict(meta.get("labels") or {}))
    return host_record(make_alias(region_domain, namespace, name), region_domain, namespace, name,
                       "kubernetes", hostvars), None


def decode_private_key(secret_data, label):
    """The PEM text of ``SEALOS_DEVBOX_PRIVATE_KEY`` from a Secret's (base64) ``data``.

    Errors name the devbox and the field, never the value.
    """
    raw = (secret_data or {}).get(KEY_FIELD)
    if not raw:
        raise DevboxOpsError("%s: its Secret has no %s" % (label, KEY_FIELD), param=KEY_FIELD)
    try:
        text = base64.b64decode(raw, validate=True).decode("utf-8")
    except (ValueError, TypeError, UnicodeDecodeError):
        raise DevboxOpsError("%s: %s in its Secret is not base64 of a text key" % (label, KEY_FIELD),
                             param=KEY_FIELD)
    if "PRIVATE KEY" not in text:
        raise DevboxOpsError("%s: %s in its Secret is not a PEM/OpenSSH private key" % (label, KEY_FIELD),
                             param=KEY_FIELD)
    return text if text.endswith("\n") else text + "\n"  # ssh rejects a key without its final newline


def write_private_key(key_dir, namespace, name, text):
    """Write a key to ``<key_dir>/<namespace>-<name>``, mode 0600 whatever the umask; returns the path.

    The directory is made (and kept) 0700. The file is written to a temporary name created with
    ``os.open(..., 0o600)`` and renamed over the old one, so it is never readable by others, not even
    for a moment. An unchanged key is not rewritten.
    """
    for part, param in ((namespace, "namespace"), (name, "name")):
        if not re.match("^%s$" % _LABEL, part or ""):
            raise bad_value(param, part, "not a Kubernetes name; refusing to use it in a file name")
    key_dir = os.path.abspath(os.path.expanduser(key_dir))
    os.makedirs(key_dir, mode=0o700, exist_ok=True)
    os.chmod(key_dir, 0o700)
    path = os.path.join(key_dir, "%s-%s" % (namespace, name))
    data = text.encode("utf-8")
    try:
        with open(path, "rb") as handle:
            same = handle.read() == data
        if same and (os.stat(path).st_mode & 0o777) == 0o600:
            return path
    except (IOError, OSError):
        pass
    tmp = "%s.tmp%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return path


class KubeSource:
    """The Kubernetes API through the official client, configured from a kubeconfig file.

    ``kubeconfig`` None means ``$K8S_AUTH_KUBECONFIG``, ``$KUBECONFIG`` or ``~/.kube/config``. Errors
    name the server, the kubeconfig and the context, never a credential.
    """

    def __init__(self, kubeconfig=None, context=None, timeout=10.0):
        try:
            from kubernetes import client, config  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise DevboxOpsError("the sealos kubernetes source needs the 'kubernetes' Python package on the "
                                 "controller (pip install kubernetes)", param="type", value="kubernetes")
        self.kubeconfig = os.path.expanduser(kubeconfig or os.environ.get("K8S_AUTH_KUBECONFIG")
                                             or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
                                             or "~/.kube/config")
        self.context = context
        self.timeout = timeout
        where = "kubeconfig=%r context=%r" % (self.kubeconfig, context or "(current)")
        if not os.path.isfile(self.kubeconfig):
            raise DevboxOpsError("%s: no such file" % where, param="kubeconfig", value=self.kubeconfig)
        try:
            contexts, active = config.list_kube_config_contexts(config_file=self.kubeconfig)
            chosen = active if context is None else next((c for c in contexts if c.get("name") == context), None)
            if chosen is None:
                raise DevboxOpsError("%s: no such context; known: %s" % (where, [c.get("name") for c in contexts]),
                                     param="context", value=context)
            self.namespace = (chosen.get("context") or {}).get("namespace")
            api_client = config.new_client_from_config(config_file=self.kubeconfig, context=context,
                                                       persist_config=False)
        except DevboxOpsError:
            raise
        except Exception as exc:  # the client raises ConfigException, ValueError, yaml errors...
            raise DevboxOpsError("%s: cannot load it: %s" % (where, type(exc).__name__),
                                 param="kubeconfig", value=self.kubeconfig)
        self.server = api_client.configuration.host
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    def _failure(self, what, exc):
        status = getattr(exc, "status", None)
        if status is not None:
            hint = {401: " (the kubeconfig's credentials were refused)",
                    403: " (the kubeconfig's user may not do this)"}.get(status, "")
            return DevboxOpsError("%s: the Kubernetes API at %s answered HTTP %s %s%s"
                                  % (what, self.server, status, getattr(exc, "reason", ""), hint),
                                  param="kubeconfig", value=self.kubeconfig, status=status)
        reason = str(getattr(exc, "reason", None) or exc)
        if reason.startswith("<") and ": " in reason:  # "<urllib3...Connection object at 0x..>: Failed to ..."
            reason = reason.split(": ", 1)[1]
        return DevboxOpsError("%s: cannot reach the Kubernetes API at %s (kubeconfig %s, context %s): %s"
                              % (what, self.server, self.kubeconfig, self.context or "(current)", reason),
                              param="kubeconfig", value=self.kubeconfig)

    def list_devboxes(self, namespace, api_version="v1alpha1", label_selector=None):
        what = "listing %s/%s %s in namespace %s" % (API_GROUP, api_version, PLURAL, namespace)
        kwargs = {"_request_timeout": self.timeout}
        if label_selector:
            kwargs["label_selector"] = label_selector
        try:
            listed = self.custom.list_namespaced_custom_object(API_GROUP, api_version, namespace, PLURAL, **kwargs)
        except Exception as exc:  # ApiException, urllib3 errors
            raise self._failure(what, exc)
        items = listed.get("items") if isinstance(listed, dict) else None
        if not isinstance(items, list):
            raise DevboxOpsError("%s: the answer has no items list" % what, param="kubeconfig", value=self.kubeconfig)
        for item in items:  # list items may omit their namespace
            item.setdefault("metadata", {}).setdefault("namespace", namespace)
        return items

    def secret_data(self, namespace, name):
        """The ``data`` of Secret ``namespace/name`` (base64 values, as the API gives them)."""
        try:
            return self.core.read_namespaced_secret(name, namespace, _request_timeout=self.timeout).data or {}
        except Exception as exc:
            raise self._failure("devbox %s/%s: reading its Secret" % (namespace, name), exc)


def hosts_from_kubernetes(source, key_dir, notes, client_factory=KubeSource):
    """Inventory hosts from the Devbox objects of one namespace, their keys written under ``key_dir``.

    ``notes`` receives ``(level, message)`` pairs: ``info`` for devboxes left out by the filters,
    ``warning`` for devboxes that cannot be used (or are used without a key file). Raises
    :class:`DevboxOpsError` when the API cannot be listed at all.
    """
    kube = client_factory(source["kubeconfig"], source["context"], source["timeout"])
    namespace = source["namespace"] or kube.namespace
    if not namespace:
        raise DevboxOpsError("kubernetes source: no namespace given and the kubeconfig context %r sets none"
                             % (source["context"],), param="namespace", value=None)
    hosts = []
    for obj in kube.list_devboxes(namespace, source["api_version"], source["label_selector"]):
        host, why = devbox_host(obj, source["region_domain"], source["states"], source["phases"], source["user"])
        if host is None:
            notes.append(why)
            continue
        hosts.append(host)
        if not source["fetch_keys"]:
            continue
        meta = obj["metadata"]
        label = "devbox %s/%s" % (meta["namespace"], meta["name"])
        try:
            text = decode_private_key(kube.secret_data(meta["namespace"], meta["name"]), label)
            host["vars"]["ansible_ssh_private_key_file"] = write_private_key(
                key_dir, meta["namespace"], meta["name"], text)
            host["vars"]["ansible_ssh_extra_args"] = "-o IdentitiesOnly=yes"
        except DevboxOpsError as exc:
            notes.append(("warning", "%s; added without a key file" % exc))
    return hosts
