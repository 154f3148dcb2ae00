# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared pieces for the PM2 tests: a private PM2 daemon per test session and tiny Node apps."""
import json
import os
import shutil
import socket
import subprocess
import urllib.request

import pytest

PM2 = shutil.which("pm2") or "/usr/bin/pm2"

# Answers with its pid, instance and API_KEY (so tests can see which env a process got).
SERVER_JS = """\
const http = require('http');
console.log('hello-out ' + process.pid);
http.createServer((req, res) => res.end(JSON.stringify({
  pid: process.pid, instance: process.env.NODE_APP_INSTANCE, key: process.env.API_KEY || null,
}))).listen(Number(process.env.PORT), '127.0.0.1');
"""

# A non-Node app: interpreter python3 with interpreter_args and args; answers with its argv.
SERVER_PY = """\
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"argv": sys.argv[1:], "xoptions": sys._xoptions}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), H).serve_forever()
"""

CRASH_JS = """\
console.error('boom-marker: cannot start');
process.exit(3);
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(port, timeout=5):
    with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def pm2(home, *args):
    env = dict(os.environ, PM2_HOME=str(home))
    return subprocess.run([PM2] + list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60, check=False)


def raw_jlist(home):
    from ansible_collections.devbox.ops.plugins.module_utils.pm2 import parse_jlist
    return parse_jlist(pm2(home, "jlist").stdout)


@pytest.fixture(scope="session")
def pm2_home(tmp_path_factory):
    """A private PM2_HOME; its daemon is killed at the end of the session."""
    home = tmp_path_factory.mktemp("pm2home")
    try:
        yield str(home)
    finally:
        pm2(home, "kill")


@pytest.fixture(scope="session")
def apps_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pm2apps")
    (root / "server.js").write_text(SERVER_JS)
    (root / "crash.js").write_text(CRASH_JS)
    (root / "server.py").write_text(SERVER_PY)
    return root
