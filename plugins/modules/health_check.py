#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: devbox.ops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: health_check
short_description: Wait for HTTP, TCP or command health probes, with optional latency/error-rate gates
version_added: 0.1.0
description:
  - Runs one or more probes with Kubernetes semantics. After O(initial_delay) each probe is attempted every
    O(period) seconds until O(success_threshold) consecutive attempts pass, O(failure_threshold)
    consecutive attempts fail, or O(deadline) passes.
  - HTTP probes (http and https URLs) check the status code, and optionally a body regex and a JSON field.
    TCP probes pass when a connection opens. Command probes run an argument list (never a shell) and pass
    on exit status 0.
  - With O(sample), each HTTP probe that passed is then hit O(sample.count) times from
    O(sample.concurrency) keep-alive connections, and its p95 latency and error rate are compared with
    O(sample.max_p95_ms) and O(sample.max_error_rate).
  - Probes run in parallel. The module only reads, so it never reports a change, and it runs the probes in
    check mode too.
author:
  - devbox.ops contributors (@devbox-ops)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - devbox.ops.probe
attributes:
  check_mode:
    support: full
    details: Probes only read, so they also run in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - requests (Python library, for http probes)
notes:
  - Header values are secrets. They are never returned. Give shared ones in O(headers), which is C(no_log).
  - HTTP redirects are not followed; by default a 3xx status counts as success, like Kubernetes.
  - The timing options at the top level are defaults for every probe; a probe's own value wins.
  - Percentiles are nearest-rank over every sampled request, failed ones included.
options:
  probes:
    description:
      - The probes to run. Each needs O(probes[].url) (http), O(probes[].port) (tcp) or
        O(probes[].argv) (command); O(probes[].type) is guessed from which one is given.
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - Name used in RV(results) and RV(failed_probes). Must be unique.
          - When not set, the target, for example V(GET http://127.0.0.1:3000/health).
        type: str
      type:
        description:
          - Kind of probe. V(http) also covers https URLs.
        type: str
        choices: [http, tcp, command]
      url:
        description:
          - http:// or https:// URL to request (http probes).
        type: str
      method:
        description:
          - HTTP method. When not set, V(GET).
        type: str
        choices: [GET, HEAD, POST]
      headers:
        description:
          - HTTP headers, merged over the top-level O(headers). Values are secrets and never returned.
        type: dict
      body:
        description:
          - Request body (for example for V(POST)). Never returned.
        type: str
      expected_status:
        description:
          - Status codes that count as success, as integers and/or V(a-b) range strings.
          - When not set, V(200-399).
        type: list
        elements: raw
      body_regex:
        description:
          - Python regular expression the response body must contain (C(re.search)).
        type: str
      json_field:
        description:
          - Dotted path into the JSON response body, for example V(checks.db); list items by index.
          - Without O(probes[].json_equals) the field only has to exist.
        type: str
      json_equals:
        description:
          - Value O(probes[].json_field) must equal. A string is JSON-decoded first when the field is not a
            string, so V(true) matches C(true) and V('3') matches C(3).
        type: raw
      validate_certs:
        description:
          - Verify TLS certificates of https URLs. When not set, the top-level O(validate_certs).
        type: bool
      host:
        description:
          - Host to connect to (tcp probes). When not set, V(127.0.0.1).
        type: str
      port:
        description:
          - TCP port to connect to (tcp probes).
        type: int
      argv:
        description:
          - Command and arguments (command probes). Run without a shell; exit status 0 is success.
        type: list
        elements: str
      timeout:
        description:
          - Per-probe O(timeout).
        type: float
      period:
        description:
          - Per-probe O(period).
        type: float
      initial_delay:
        description:
          - Per-probe O(initial_delay).
        type: float
      failure_threshold:
        description:
          - Per-probe O(failure_threshold).
        type: int
      success_threshold:
        description:
          - Per-probe O(success_threshold).
        type: int
      deadline:
        description:
          - Per-probe O(deadline).
        type: float
  url:
    description:
      - Shorthand for one http probe with this URL, added to O(probes).
      - One of O(probes) and O(url) is required.
    type: str
  headers:
    description:
      - HTTP headers sent by every http probe (for example an C(Authorization) token). Secret (C(no_log)).
    type: dict
  validate_certs:
    description:
      - Verify TLS certificates for https probes that do not set O(probes[].validate_certs).
    type: bool
    default: true
  sample:
    description:
      - Load-sample every http probe that passed and gate on its latency and error rate.
    type: dict
    suboptions:
      count:
        description:
          - Number of requests.
        type: int
        default: 50
      concurrency:
        description:
          - Number of parallel keep-alive connections.
        type: int
        default: 5
      max_p95_ms:
        description:
          - Fail when the 95th percentile latency in milliseconds is above this.
        type: float
      max_error_rate:
        description:
          - Fail when the share of failed requests (0 to 1) is above this.
        type: float
"""

EXAMPLES = r"""
- name: Wait until the app answers on its health endpoint
  devbox.ops.health_check:
    url: http://127.0.0.1:3000/health
    period: 1
    failure_threshold: 30

- name: Readiness with a JSON check, the database port and a script, sharing a secret header
  devbox.ops.health_check:
    headers:
      Authorization: "Bearer {{ health_token }}"
    timeout: 1
    probes:
      - name: api
        url: http://127.0.0.1:3000/ready
        json_field: checks.db
        json_equals: up
      - name: db
        port: 5432
      - name: migrations
        argv: [/home/devbox/project/current/bin/check-migrations, --quiet]

- name: Gate a deploy on latency and error rate
  devbox.ops.health_check:
    url: http://127.0.0.1:8080/
    sample:
      count: 200
      concurrency: 10
      max_p95_ms: 250
      max_error_rate: 0.01
"""

RETURN = r"""
msg:
  description: Summary; on failure it names every failed target and what was wrong.
  returned: always
  type: str
  sample: "health check failed: GET http://127.0.0.1:3000/health: connection refused (3 consecutive failures, failure_threshold=3)"
failed_probes:
  description: Names of the probes that failed (empty when all passed).
  returned: always
  type: list
  elements: str
  sample: [api]
results:
  description: One entry per probe, in the order given (O(url) last).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Probe name.
      type: str
      sample: api
    target:
      description: What was probed (passwords in URLs masked).
      type: str
      sample: GET http://127.0.0.1:3000/ready
    ok:
      description: Whether the probe (and its gate, when sampled) passed.
      type: bool
    attempts:
      description: Number of attempts made while waiting.
      type: int
      sample: 3
    latency_ms:
      description: Latency of the last attempt in milliseconds.
      type: float
      sample: 2.41
    status_code:
      description: HTTP status of the last attempt (null for tcp/command probes or when no response came).
      type: int
      sample: 200
    error:
      description: What was wrong (null when ok).
      type: str
      sample: "GET http://127.0.0.1:3000/ready: json field checks.db is 'down', expected 'up' (3 consecutive failures, failure_threshold=3)"
    elapsed_s:
      description: Seconds spent waiting, initial delay included.
      type: float
      sample: 4.02
    message:
      description: One line describing the outcome.
      type: str
    sample:
      description: Load-sample statistics, when O(sample) was given and the probe passed.
      type: dict
      returned: when sampled
      contains:
        count:
          description: Requests made.
          type: int
        concurrency:
          description: Parallel connections used.
          type: int
        errors:
          description: Requests that failed.
          type: int
        error_rate:
          description: errors / count.
          type: float
        p50_ms:
          description: Median latency (nearest rank), milliseconds.
          type: float
        p95_ms:
          description: 95th percentile latency, milliseconds.
          type: float
        p99_ms:
          description: 99th percentile latency, milliseconds.
          type: float
        max_ms:
          description: Slowest request, milliseconds.
          type: float
        error_samples:
          description: Up to five distinct error messages.
          type: list
          elements: str
        target:
          description: What was sampled.
          type: str
    gate_reasons:
      description: Why the gate failed (empty when it passed).
      type: list
      elements: str
      returned: when sampled
"""

from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.devbox.ops.plugins.module_utils.errors import DevboxOpsError, bad_value
from ansible_collections.devbox.ops.plugins.module_utils.probe import (
    PROBE_OPTIONS, SAMPLE_OPTIONS, TIMING, TIMING_OPTIONS, ProbeSpec, check, sample_options)
from ansible_collections.devbox.ops.plugins.module_utils.runner import AnsibleRunner


def build_specs(params):
    """Validate every probe (top-level options as defaults) before any of them runs."""
    defaults = dict((key, params[key]) for key in TIMING)
    defaults.update(headers=params["headers"], validate_certs=params["validate_certs"])
    given = [("probes[%d]" % i, probe) for i, probe in enumerate(params["probes"] or [])]
    if params["url"]:
        given.append(("url", {"url": params["url"]}))
    specs, names = [], set()
    for label, probe in given:
        try:
            spec = ProbeSpec.from_params(probe, defaults)
        except DevboxOpsError as exc:
            raise DevboxOpsError("%s: %s" % (label, exc), param=exc.param, value=exc.value)
        if spec.name in names:
            raise bad_value("%s.name" % label, spec.name, "another probe has this name")
        names.add(spec.name)
        specs.append(spec)
    return specs


def main():
    argument_spec = dict(
        TIMING_OPTIONS,
        probes=dict(type="list", elements="dict", options=PROBE_OPTIONS),
        url=dict(type="str"),
        headers=dict(type="dict", no_log=True),
        validate_certs=dict(type="bool", default=True),
        sample=dict(type="dict", options=SAMPLE_OPTIONS),
    )
    module = AnsibleModule(argument_spec=argument_spec, required_one_of=[("probes", "url")],
                           supports_check_mode=True)
    params = module.params
    try:
        specs = build_specs(params)
        if params["sample"] is not None:
            sample_options(params["sample"])
        runner = AnsibleRunner(module)
        with ThreadPoolExecutor(max_workers=min(8, len(specs))) as pool:
            results = list(pool.map(lambda spec: check(spec, params["sample"], runner), specs))
    except DevboxOpsError as exc:
        module.fail_json(msg=str(exc), changed=False, results=[], failed_probes=[])
    failed = [r for r in results if not r["ok"]]
    if failed:
        module.fail_json(msg="health check failed: %s" % "; ".join(r["error"] for r in failed),
                         changed=False, results=results, failed_probes=[r["name"] for r in failed])
    module.exit_json(changed=False, msg="%d probe(s) passed" % len(results), results=results,
                     failed_probes=[])


if __name__ == "__main__":
    main()
