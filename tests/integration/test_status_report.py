# SPDX-License-Identifier: GPL-3.0-or-later
"""The HTML fleet report of status.yml, rendered by a real headless Chromium, against simulated devboxes.

Two s6 hosts made by tests/harness (devbox112, devbox113 in /var/tmp/devbox-ops-it-report) and a third one,
devbox114, declared in the inventory but down. The demo app set (examples/inventory/group_vars/devboxes.yml,
without the gunicorn app to keep the run short) is used two ways, at the same time to save time:
- devbox112 only gets node-web by deploy.yml (a release, a deploy event; no watchdog there);
- devbox113 gets site.yml (node-app in cluster mode, pm2-logrotate and the watchdog by the monitoring role;
  node-web is never deployed there, so the watchdog alerts "missing"), then node-app is stopped by hand.
status.yml writes the report; Chromium dumps its DOM and takes a screenshot (/var/tmp/devbox-ops-report.png).
Needs root (the harness makes namespaces) and /usr/bin/chromium.
"""
import os
import re
import shutil
import struct
import subprocess
import sys
import threading

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_deploy import REPO, Ansible, Host, ID_RE  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STATE = "/var/tmp/devbox-ops-it-report"
HOSTS = [Host(STATE, 112), Host(STATE, 113)]
DOWN = "devbox114"
SCREENSHOT = "/var/tmp/devbox-ops-report.png"
DEMO_SECRET = "demo-secret-not-for-prod"  # the demo API_KEY (env of node-app and node-web)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def inventory(directory):
    """The harness inventory plus a host that is down, the demo group_vars without py-app, faster probes."""
    with open(os.path.join(STATE, "inventory.yml")) as f:
        inv = yaml.safe_load(f)
    hosts = inv["all"]["children"]["devboxes"]["hosts"]
    down = dict(hosts[HOSTS[1].name], ansible_host="10.213.114.2", ansible_timeout=5)
    hosts[DOWN] = down  # the address the harness would give devbox114; nothing is there
    os.makedirs(os.path.join(directory, "group_vars", "devboxes"))
    with open(os.path.join(directory, "hosts.yml"), "w") as f:
        yaml.safe_dump(inv, f)
    with open(os.path.join(REPO, "examples", "inventory", "group_vars", "devboxes.yml")) as f:
        demo = yaml.safe_load(f)
    demo["devbox_apps"] = [a for a in demo["devbox_apps"] if a["name"] != "py-app"]
    web = [a for a in demo["devbox_apps"] if a["name"] == "node-web"]
    assert web and web[0]["env"]["API_KEY"] == "{{ demo_api_key }}" and demo["demo_api_key"] == DEMO_SECRET
    web[0]["deploy"]["slo"] = {"samples": 10, "concurrency": 2}
    demo["devbox_probe_defaults"] = {"timeout": 2, "period": 0.5, "failure_threshold": 40}
    with open(os.path.join(directory, "group_vars", "devboxes", "main.yml"), "w") as f:
        yaml.safe_dump(demo, f)
    return os.path.join(directory, "hosts.yml")


def chromium(*args):
    profile = "/var/tmp/devbox-ops-it-report-chromium"  # own profile dir: no clash with another Chromium
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + profile]
                          + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, "chromium %s: rc %d\n%s" % (args, proc.returncode, proc.stderr[-3000:])
    return proc.stdout


def section(dom, host):
    match = re.search(r'<section [^>]*data-host="%s".*?</section>' % host, dom, re.S)
    assert match, "no section for %s in the DOM" % host
    return match.group(0)


def text(html):
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the harness makes namespaces: run these tests as root (a skip would hide them)", pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("%s is missing: apt-get install chromium (the report test needs it)" % CHROMIUM, pytrace=False)
    HOSTS[0].harness("up", "2", "--first", "112", "--init", "s6")
    try:
        work = tmp_path_factory.mktemp("report")
        ansible = Ansible(inventory(str(work / "inventory")), HOSTS[0].name)
        done = {}
        runs = [threading.Thread(target=lambda key=key, args=args: done.__setitem__(key, ansible.run(*args)))
                for key, args in (("deploy.yml on devbox112", ("deploy.yml", "--limit", HOSTS[0].name, "-e", "app=node-web")),
                                  ("site.yml on devbox113", ("site.yml", "--limit", HOSTS[1].name)))]
        for thread in runs:
            thread.start()
        for thread in runs:
            thread.join()
        for key, proc in sorted(done.items()):
            assert proc.returncode == 0, "%s failed (rc %d):\n%s" % (key, proc.returncode, proc.stdout[-6000:])
        assert len(done) == 2, done
        HOSTS[1].sh("pm2", "stop", "node-app")  # one app not online, on one host
        path = str(work / "out" / "fleet.html")
        os.makedirs(os.path.dirname(path))
        run = ansible.run("status.yml", "-e", "status_report_path=" + path)
        if os.path.exists(SCREENSHOT):
            os.unlink(SCREENSHOT)
        dom = chromium("--dump-dom", "file://" + path)
        chromium("--screenshot=" + SCREENSHOT, "--window-size=1280,2000", "file://" + path)
        yield {"ansible": ansible, "run": run, "path": path, "dom": dom, "work": work}
    finally:
        HOSTS[0].down()


def test_status_writes_the_report_and_fails_only_for_the_host_that_is_down(report):
    run, ansible = report["run"], report["ansible"]
    assert run.returncode == 2, run.stdout[-5000:]
    assert "devbox114 did not answer (" in run.stdout and "the report lists it as unreachable" in run.stdout
    for host in HOSTS:  # read only: nothing changed on the hosts that answered
        ansible.host = host.name
        assert ansible.recap(run.stdout) == {"ok": ansible.recap(run.stdout)["ok"], "changed": 0, "unreachable": 0,
                                             "failed": 0}
    with open(report["path"]) as f:
        html = f.read()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html and "http://" not in html.split("<main>")[0]


def test_every_host_is_on_the_page_and_the_down_one_is_marked_unreachable(report):
    dom = report["dom"]
    assert re.findall(r'<section [^>]*data-host="([^"]+)" data-state="([^"]+)"', dom) == [
        ("devbox112", "ok"), ("devbox113", "ok"), ("devbox114", "unreachable")]
    down = section(dom, DOWN)
    assert 'class="host level-critical"' in down and "unreachable: " in text(down) and "10.213.114.2" in text(down)
    summary = text(re.search(r'<div class="summary" id="summary">.*?</div>\s*<section', dom, re.S).group(0))
    assert "hosts reachable 2 / 3" in summary, summary
    # devbox112: node-web; devbox113: devbox-ops-watchdog, pm2-logrotate, and node-app stopped
    apps = re.search(r'id="summary-apps">(\d+) / (\d+)<', dom)
    assert apps and apps.groups() == ("3", "4"), apps and apps.groups()


def test_each_app_with_its_status_and_memory(report):
    expected = {"devbox112": {"node-web": {"online"}},
                "devbox113": {"node-app": {"stopped"}, "devbox-ops-watchdog": {"online"}, "pm2-logrotate": {"online"}}}
    for host in HOSTS:
        part = section(report["dom"], host.name)
        rows = re.findall(r'<tr data-app="([^"]+)" data-status="([^"]+)">(.*?)</tr>', part, re.S)
        statuses = {}
        for app, status, cells in rows:
            statuses.setdefault(app, set()).add(status)
            memory = float(re.search(r'<td class="n memory">([0-9.]+)</td>', cells).group(1))
            assert (memory > 5) if status == "online" else (memory == 0), (host.name, app, status, memory)
            level = "ok" if status == "online" else "warning"
            assert '<span class="lvl lvl-%s">%s</span>' % (level, status) in cells, cells
        assert statuses == expected[host.name], statuses
        memory = re.search(r'memory</td><td><span[^>]*>(\w+)</span></td><td class="memory">([0-9.]+) MiB of ([0-9.]+) MiB',
                           part)
        assert memory and 0 < float(memory.group(2)) < float(memory.group(3)), part[:3000]
    # the state file of the watchdog that site.yml (monitoring role) runs on devbox113; none on devbox112
    watchdog = text(re.search(r'<table class="watchdog">.*?</table>', section(report["dom"], "devbox113"), re.S).group(0))
    assert re.search(r"node-app stopped closed", watchdog), watchdog
    assert "no watchdog (no state file)" in text(section(report["dom"], "devbox112"))
    alerts = text(re.search(r'<table class="alerts">.*?</table>', section(report["dom"], "devbox113"), re.S).group(0))
    assert "critical watchdog app:node-web missing" in alerts, alerts
    assert 'id="summary-alerts">0<' not in report["dom"]


def test_deploy_history_and_recent_events(report):
    histories = {}
    for host in HOSTS:
        part = section(report["dom"], host.name)
        history = re.search(r'<table class="deploy-history">.*?</table>', part, re.S)
        assert history, part[-3000:]
        histories[host.name] = history.group(0)
    row = text(re.search(r'<tr data-app="node-web">.*?</tr>', histories["devbox112"], re.S).group(0))
    name, strategy, release, releases, deploys, rate = row.split()[:6]
    assert (name, strategy, releases, deploys, rate) == ("node-web", "reload", "1", "1", "100"), row
    assert ID_RE.match(release) and release == HOSTS[0].current("node-web"), row
    assert re.search(r"deploy success version \S+, release %s" % release, text(histories["devbox112"]))
    events = text(re.search(r'<table class="events">.*?</table>', section(report["dom"], "devbox112"), re.S).group(0))
    assert re.search(r"deploy node-web success .*?release %s" % release, events), events
    # never deployed on devbox113: the app is listed with no release
    row = text(re.search(r'<tr data-app="node-web">.*?</tr>', histories["devbox113"], re.S).group(0))
    assert row.split() == ["node-web", "reload", "none", "0", "0", "-", "-"], row


def test_no_secret_in_the_report_the_dom_or_the_output(report):
    with open(report["path"]) as f:
        html = f.read()
    for where, content in (("report", html), ("dom", report["dom"])):
        assert DEMO_SECRET not in content, where
    for output in report["ansible"].outputs:
        assert DEMO_SECRET not in output


def test_the_screenshot_is_a_real_1280x2000_png(report):
    with open(SCREENSHOT, "rb") as f:
        head = f.read(33)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (1280, 2000)
    assert os.path.getsize(SCREENSHOT) > 50000  # a page of tables and colours, not a blank image


def test_bad_report_settings_are_rejected_before_anything_runs(report):
    path = str(report["work"] / "never.html")
    out = report["ansible"].fails("status.yml", "-e", "status_report_path=" + path, "-e", "status_events=lots")
    assert re.search(r'status_events=\\?"lots\\?": must be a whole number from 1 to 9999', out), out[-3000:]
    assert not os.path.exists(path) and "Check that the devbox answers" not in out
