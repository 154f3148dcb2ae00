# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/templates/status_report.html.j2 alone: rendered with jinja2 from a fixture of what status.yml
registers per host, parsed back with html.parser.

Ansible's template engine does not autoescape (and drops Markup), so the template escapes every value
itself: the render here has autoescape off, like Ansible, and an app named ``<script>`` must stay text.
"""
import base64
import json
import os
import re
from html.parser import HTMLParser

import jinja2
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(REPO, "playbooks", "templates", "status_report.html.j2")
SECRET = "canary-secret-4b1d0c"
EVIL = "<script>alert(1)</script>"


def render(hostvars, hosts=None, active=None):
    # The two Ansible filters the template uses, with Ansible's meaning; trim_blocks as the template module
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.dirname(TEMPLATE)), autoescape=False,
                             trim_blocks=True, undefined=jinja2.Undefined)
    env.filters["from_json"] = json.loads
    env.filters["b64decode"] = lambda s: base64.b64decode(s).decode("utf-8")
    hosts = list(hostvars) if hosts is None else hosts
    return env.get_template(os.path.basename(TEMPLATE)).render(
        hostvars=hostvars, devbox_report_hosts=hosts,
        devbox_report_active=[h for h in hosts if h in (active if active is not None else hosts)],
        devbox_report_generated_at="2026-01-02 03:04:05 UTC")


class Page(HTMLParser):
    """Elements with their attributes, the text of the page, and every <script> or <link> seen."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.elements, self.texts, self.scripts = [], [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag in ("script", "link", "img", "iframe"):
            self.scripts.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.texts.append(data)

    @property
    def text(self):
        return " ".join(" ".join(self.texts).split())

    def attr(self, name):
        return [a[name] for _tag, a in self.elements if name in a]


def proc(name, pm_id, status="online", memory=52428800, **extra):
    p = {"name": name, "pm_id": pm_id, "status": status, "pid": 100 + pm_id if status == "online" else None,
         "restarts": 0, "uptime_s": 60, "cpu": 1.5, "memory": memory, "exec_mode": "fork",
         "env": {"API_KEY": "********"}}
    p.update(extra)
    return p


def metrics(level="ok", alerts=()):
    return {
        "metrics": {"cpu": {"percent": 12.5, "cores": 2, "limit_source": "cgroup"},
                    "memory": {"used": 268435456, "limit": 536870912, "percent": 50.0, "limit_source": "cgroup"},
                    "load": {"per_core": {"load5": 0.25}},
                    "disk": [{"mount": "/", "percent": 40.0, "free": 1073741824, "total": 2147483648}],
                    "pm2": [{"name": "api", "instances": 2, "online": 2, "processes": 2, "cpu": 3.0,
                             "rss": 104857600}]},
        "levels": {"cpu": "ok", "memory": level, "disk": "ok", "load_per_core": "ok"},
        "checks": [{"metric": "disk", "target": "/", "level": "ok"}],
        "alerts": list(alerts),
    }


def watchdog_state():
    state = {"version": 1, "updated_at": "2026-01-02T03:04:00Z", "tick": 12, "period": 5.0,
             "config": {"error": None, "notifiers": ["https://hooks.slack.com/services/T0/B0/********"]},
             "apps": {"api": {"status": "online", "breaker": {"state": "open"}, "restarts_in_window": 3, "rss": 91226112,
                              "liveness": {"ok": False, "latency_ms": 2000.0, "error": "timed out"},
                              "last_action": {"action": "restart", "result": "ok", "at": "2026-01-02T03:03:00Z"}},
                      "new": {"status": "missing", "breaker": {"state": "closed"}, "last_action": None,
                              "liveness": {"consecutive_failures": 0, "failure_threshold": 3}}},
             "alerts": {"app:api": {"state": "breaker_open", "sent": 1.0}, "pm2": {"state": "ok", "sent": 1.0}}}
    return {"content": base64.b64encode(json.dumps(state).encode()).decode(), "encoding": "base64"}


def history():
    event = {"at": "2026-01-02T02:00:00Z", "action": "deploy", "result": "success", "version": "2.0.0",
             "release": "20260102T020000Z-0a1b2c3d", "actor": {"user": "alice"}, "duration_s": 12.5,
             "failed_step": None}
    app = {"name": "api", "deploy": {"strategy": "reload"}}
    return ({"results": [{"item": app, "current": "20260102T020000Z-0a1b2c3d", "releases": [{}, {}],
                          "stats": {"deploys": 2, "succeeded": 1, "failed": 1, "success_rate": 0.5,
                                    "avg_duration_s": 10.0}}]},
            {"results": [{"item": app, "stdout_lines": [json.dumps(event), "{torn line"]}]})


def fleet():
    lists, tails = history()
    return {
        "devbox1": {
            "ansible_host": "10.0.0.1",
            "devbox_status_ping": {"ping": "pong"},
            "devbox_supervisor_status": {"processes": [proc("api", 0, exec_mode="cluster"),
                                                       proc("api", 1, exec_mode="cluster"),
                                                       proc("worker", 2, status="errored", memory=0),
                                                       proc(EVIL, 3)]},
            "devbox_status_metrics": metrics("warning", [{"metric": "memory", "target": "memory",
                                                          "level": "warning", "message": "memory warning: 91%"}]),
            "devbox_status_watchdog": watchdog_state(),
            "devbox_status_events": {"events": [
                {"ts": "2026-01-02T03:00:00Z", "type": "restart", "target": "api", "result": "ok",
                 "actor": {"user": "watchdog@devbox1"}, "reason": "liveness: timed out"},
                {"ts": "2026-01-02T03:01:00Z", "type": "deploy", "target": EVIL, "result": "failed",
                 "actor": {"user": "bob"}, "error": EVIL}]},
            "devbox_history_lists": lists, "devbox_history_tails": tails,
        },
        "devbox2": {
            "ansible_host": "10.0.0.2",
            "devbox_status_ping": {"unreachable": True,
                                   "msg": "Task failed: ssh: connect to host 10.0.0.2 port 22: Connection refused"},
            "devbox_status_watchdog": {"skipped": True},
        },
        "devbox3": {
            "ansible_host": "10.0.0.3",
            "devbox_status_ping": {"ping": "pong"},
            "devbox_supervisor_status": {"processes": [proc("api", 0)]},
            "devbox_status_metrics": metrics(),
            "devbox_status_watchdog": {"failed": False, "msg": "file not found: /home/devbox/.devbox-ops/watchdog/state.json"},
            "devbox_status_events": {"events": []},
            "devbox_history_lists": {"results": []}, "devbox_history_tails": {"results": []},
        },
    }


def section(html, host):
    """The HTML of one host's section."""
    match = re.search(r'<section [^>]*data-host="%s".*?</section>' % re.escape(host), html, re.S)
    assert match, "no section for %s" % host
    return match.group(0)


def test_every_output_of_the_template_is_escaped_or_a_macro_that_escapes():
    with open(TEMPLATE) as f:
        source = f.read()
    macros = set(re.findall(r"\{%-?\s*macro\s+(\w+)\(", source))
    assert {"badge", "mib", "num"} <= macros
    outputs = re.findall(r"\{\{(.*?)\}\}", source, re.S)
    assert len(outputs) > 50
    bad = [o for o in outputs if not re.search(r"\|\s*e\s*$", o.strip()) and
           not (re.match(r"\s*(\w+)\(", o) and re.match(r"\s*(\w+)\(", o).group(1) in macros)]
    assert not bad, "outputs that neither end with '| e' nor call a macro of the template: %s" % bad


def test_an_app_named_script_stays_text():
    html = render(fleet())
    assert EVIL not in html and "<script" not in html.lower()
    page = Page(html)
    assert not page.scripts, page.scripts  # no script, no external stylesheet, image or frame
    assert EVIL in page.text  # shown, as text
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4  # process row, data-app, event target, error


def test_summary_counts_hosts_apps_and_open_alerts():
    page = Page(render(fleet()))
    text = page.text
    # devbox1: api (2 online), worker (errored), <script> (online) -> 2 of 3; devbox3: api -> 1 of 1
    assert "hosts reachable 2 / 3" in text
    assert "apps online 3 / 4" in text
    # devbox1: one metrics alert + the watchdog's app:api breaker_open (pm2 ok is not open); devbox3: none
    assert "alerts open 2" in text
    assert "generated 2026-01-02 03:04:05 UTC" in text


def test_hosts_and_states_in_order_with_levels_coloured():
    html = render(fleet(), active=["devbox1", "devbox3"])
    page = Page(html)
    assert page.attr("data-host") == ["devbox1", "devbox2", "devbox3"]
    assert page.attr("data-state") == ["ok", "unreachable", "ok"]
    one, two, three = section(html, "devbox1"), section(html, "devbox2"), section(html, "devbox3")
    assert 'class="host level-critical"' in one  # an errored process and an open breaker
    assert 'class="host level-critical"' in two and "unreachable: ssh: connect to host 10.0.0.2 port 22: Connection refused" in two
    assert "Processes" not in two
    assert 'class="host level-ok"' in three
    assert '<tr data-app="worker" data-status="errored">' in one
    assert re.search(r'data-status="errored">.*?<span class="lvl lvl-critical">errored</span>', one)
    assert re.search(r'data-app="api" data-status="online">.*?<span class="lvl lvl-ok">online</span>', one)
    assert '<td class="n memory">50.0</td>' in one  # 52428800 bytes in MiB
    assert "256.0 MiB of 512.0 MiB (50.0 %, cgroup limit)" in Page(one).text
    assert '<span class="lvl lvl-warning">warning</span>' in one  # the memory metric


def test_watchdog_events_and_deploy_history():
    html = render(fleet())
    one, three = Page(section(html, "devbox1")).text, Page(section(html, "devbox3")).text
    assert "api online open failing 2000.0 ms timed out 3 87.0 restart ok at 2026-01-02T03:03:00Z" in one
    assert "new missing closed not probed yet - - none" in one
    assert "critical watchdog app:api breaker_open" in one
    # newest event first
    assert one.index("2026-01-02T03:01:00Z deploy") < one.index("2026-01-02T03:00:00Z restart api ok watchdog@devbox1")
    assert "reason liveness: timed out" in one
    assert "api reload 20260102T020000Z-0a1b2c3d 2 2 50 % 10.0" in one
    assert "2026-01-02T02:00:00Z deploy success version 2.0.0, release 20260102T020000Z-0a1b2c3d , by alice, 12.5 s" in one
    assert "no watchdog (no state file)" in three and "no events" in three and "no deployed apps" in three


def test_a_host_that_failed_a_task_is_marked_and_keeps_what_was_read():
    html = render(fleet(), active=["devbox1"])
    three = section(html, "devbox3")
    assert 'data-state="failed"' in three and "a status task failed on this host" in three
    assert 'data-app="api"' in three


def test_no_env_value_or_secret_reaches_the_page():
    hv = fleet()
    hv["devbox3"]["devbox_supervisor_status"]["processes"][0]["env"] = {"API_KEY": SECRET}  # even unmasked
    assert SECRET not in render(hv)


@pytest.mark.parametrize("empty", [{}, {"devbox_status_ping": {"ping": "pong"}}])
def test_a_host_with_nothing_registered_still_renders(empty):
    html = render({"devbox9": empty}, active=[])
    assert 'data-host="devbox9"' in html and "no PM2 processes" in html and "no metrics" in html
