# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: sealos
short_description: Sealos devboxes from ssh-config files and from the Kubernetes API
version_added: 0.1.0
author:
  - devbox.ops team (@devbox-ops)
description:
  - Makes an inventory of L(Sealos,https://sealos.io) devboxes, the Kubernetes pods that Sealos lets you
    reach over SSH through a NodePort of the region's domain.
  - Source C(ssh_config) reads an ssh-config file such as the C(~/.ssh/sealos/devbox_config) that the Sealos
    IDE plugins write. Every concrete C(Host) becomes a host named by its alias, with the effective
    C(HostName), C(Port), C(User) and C(IdentityFile) (first value wins, as in ssh, C(Host *) blocks and
    C(Include) included). The region and namespace come from the alias, which Sealos writes as
    C(<region domain>_<namespace>_<devbox name>).
  - Source C(kubernetes) lists the C(devbox.sealos.io) C(Devbox) objects of a namespace with the official
    C(kubernetes) client from a kubeconfig, keeps those whose C(spec.state) and C(status.phase) are in
    C(states) and C(phases), reaches them at C(region_domain) on
    C(status.network.nodePort), and reads each private key from the devbox's Secret
    (C(SEALOS_DEVBOX_PRIVATE_KEY)). Keys are written to O(key_cache_dir) with mode 0600; only the path is
    ever shown.
  - Every host is in the group C(devboxes) (the collection's playbooks target it), in
    C(sealos_region_<region>) and in C(sealos_ns_<namespace>) (names made safe, dots and dashes become
    underscores), and has the variables C(sealos_source), C(sealos_region), C(sealos_namespace),
    C(sealos_devbox), and for the kubernetes source C(sealos_state), C(sealos_phase) and C(sealos_labels).
  - A devbox found by both sources gets one host (same alias); the later source's values win.
requirements:
  - kubernetes (Python package, for the kubernetes source only)
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: Marks this file as a source for this plugin.
    required: true
    choices: ['devbox.ops.sealos']
    type: str
  sources:
    description:
      - Where to find devboxes, read in order.
      - A C(ssh_config) source takes C(path) (default C(~/.ssh/sealos/devbox_config)) and C(sealos_only)
        (default V(true), which leaves out hosts whose alias is not a Sealos one).
      - A C(kubernetes) source takes C(region_domain) (required, the host name devboxes are reached at, for
        example C(usw.sealos.io)), C(kubeconfig) (default C($K8S_AUTH_KUBECONFIG), C($KUBECONFIG), then
        C(~/.kube/config)), C(context) (default the current one), C(namespace) (default the context's),
        C(states) (default V([Running]), matched against C(spec.state); V([]) keeps every one),
        C(phases) (default V([Running]), matched against C(status.phase); V([]) keeps every one),
        C(label_selector), C(api_version) (default V(v1alpha1)), C(timeout) (seconds per API request,
        default V(10)), C(user) (default the devbox's C(spec.config.user), else V(devbox)) and
        C(fetch_keys) (default V(true); V(false) reads no Secret and sets no key file, for when SSH
        authenticates with a key of your own, such as an AWX Machine credential).
      - Unknown keys are an error naming the source and the key.
    type: list
    elements: dict
    required: true
  key_cache_dir:
    description:
      - Directory (made mode 0700) where the kubernetes source writes each devbox's private key, as
        C(<namespace>-<name>) with mode 0600.
    type: path
    default: ~/.cache/devbox-ops/keys
    env:
      - name: DEVBOX_OPS_KEY_CACHE_DIR
  hostnames:
    description:
      - V(alias) names a host by its Sealos alias C(<region>_<namespace>_<name>), as in C(devbox_config),
        so C(ssh <alias>) works too; V(name) by the devbox name alone (an error if two devboxes share one).
    type: str
    choices: [alias, name]
    default: alias
notes:
  - Devboxes left out by the filters are listed with C(-vvv); devboxes that cannot be reached (no
    C(status.network.nodePort)) and keys that cannot be read are warnings naming the devbox.
  - The API server cannot be reached, or refuses the credentials, is an error naming the server, the
    kubeconfig and the context. No token and no key appears in any message.
"""

EXAMPLES = r"""
# devboxes.sealos.yml: the devboxes the Sealos IDE plugin set up on this machine
plugin: devbox.ops.sealos
sources:
  - type: ssh_config
    path: ~/.ssh/sealos/devbox_config

---
# fleet.sealos.yml: every running devbox of a namespace, from the Kubernetes API
plugin: devbox.ops.sealos
sources:
  - type: kubernetes
    kubeconfig: ~/.kube/sealos-usw.yaml
    region_domain: usw.sealos.io
    label_selector: team=web
compose:
  devbox_env: sealos_labels.env | default('dev')
keyed_groups:
  - key: sealos_labels.tier | default('none')
    prefix: tier
groups:
  canary: sealos_devbox.endswith('-canary')
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/devbox-ops/inventory
cache_timeout: 300
"""

RETURN = r"""
# Host variables each devbox gets (besides compose results).
ansible_host:
  description: The SSH host - HostName of the ssh-config entry, or the region domain for the kubernetes source.
  type: str
ansible_port:
  description: The SSH port - Port of the entry, or the Devbox's C(status.network.nodePort).
  type: int
ansible_user:
  description: The SSH user (C(devbox) for Sealos devboxes).
  type: str
ansible_ssh_private_key_file:
  description: IdentityFile of the entry, or the 0600 key file written in the cache directory from the Secret.
  type: path
sealos_source:
  description: V(ssh_config) or V(kubernetes).
  type: str
sealos_region:
  description: Region parsed from the Host alias or taken from the source.
  type: str
sealos_namespace:
  description: Kubernetes namespace of the devbox.
  type: str
sealos_devbox:
  description: Name of the devbox.
  type: str
sealos_state:
  description: C(spec.state) of the Devbox (kubernetes source only).
  type: str
sealos_phase:
  description: C(status.phase) of the Devbox (kubernetes source only).
  type: str
sealos_labels:
  description: Labels of the Devbox object (kubernetes source only).
  type: dict
"""

import os

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError
from ansible_collections.devbox.ops.plugins.module_utils.sealos import (
    hosts_from_kubernetes, hosts_from_ssh_config, validate_sources)


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "devbox.ops.sealos"

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith((".sealos.yml", ".sealos.yaml"))

    def _collect(self):
        key_dir = self.get_option("key_cache_dir")
        hosts = []
        for source in validate_sources(self.get_option("sources")):
            if source["type"] == "ssh_config":
                found, notes = hosts_from_ssh_config(source["path"], sealos_only=source["sealos_only"])
                notes = [("info", note) for note in notes]
            else:
                notes = []
                found = hosts_from_kubernetes(source, key_dir, notes)
            for level, note in notes:
                if level == "warning":
                    self.display.warning("sealos inventory: %s" % note)
                else:
                    self.display.vvv("sealos inventory: %s" % note)
            hosts.extend(found)
        return hosts

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache=cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        hosts = None
        if use_cache:
            try:
                hosts = self._cache[cache_key]
            except KeyError:
                hosts = None
            # a key file removed since: fetch again rather than hand out a path to nothing
            if hosts and not all(os.path.exists(h["vars"].get("ansible_ssh_private_key_file", "/"))
                                 for h in hosts if h["vars"].get("sealos_source") == "kubernetes"):
                hosts = None
        if hosts is None:
            try:
                hosts = self._collect()
            except DevboxOpsError as exc:
                raise AnsibleParserError("sealos inventory %s: %s" % (path, to_native(exc)))
            if self.get_option("cache"):
                self._cache[cache_key] = hosts
        self._populate(hosts)

    def _populate(self, hosts):
        strict = self.get_option("strict")
        by_name = self.get_option("hostnames") == "name"
        owners = {}
        for host in hosts:
            name = host["vars"].get("sealos_devbox") if by_name else host["name"]
            name = name or host["name"]
            if by_name and owners.setdefault(name, host["name"]) != host["name"]:
                raise AnsibleParserError("sealos inventory: hostnames=name but devboxes %s and %s are both named %s; "
                                         "use hostnames=alias" % (owners[name], host["name"], name))
            self.inventory.add_host(name)
            for group in host["groups"]:
                self.inventory.add_group(group)
                self.inventory.add_child(group, name)
            for key, value in host["vars"].items():
                self.inventory.set_variable(name, key, value)
            hostvars = self.inventory.get_host(name).get_vars()
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            hostvars = self.inventory.get_host(name).get_vars()
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)
