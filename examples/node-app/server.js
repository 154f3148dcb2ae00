// SPDX-License-Identifier: GPL-3.0-or-later
// devbox.ops example app: Node.js (>= 18), no npm dependencies.
//
//   GET /            -> "hello from node-app <version>"
//   GET /api/health  -> liveness: 200 {"status":"ok","version","pid","uptime_s"}
//   GET /api/ready   -> readiness: 200 {"status":"ready",...} or 503 {"status":"not_ready","missing":[...],"checks":{...}}
//
// Environment: PORT (3000), HOST (0.0.0.0), APP_VERSION (package.json version), READY_REQUIRES (comma
// list of env var NAMES that must be set and non-empty), MONGODB_URI (optional, see mongoCheck),
// DEVBOX_EXAMPLE_FAULTS=1 enables the test hooks /api/_stall and /api/_crash, SHUTDOWN_DRAIN_MS (500) see
// shutdown() below. Env VALUES are never printed or returned: only names.
'use strict';

const http = require('http');
const net = require('net');
const pkg = require('./package.json');

const PORT = parseInt(process.env.PORT || '3000', 10);
const HOST = process.env.HOST || '0.0.0.0';
const VERSION = process.env.APP_VERSION || pkg.version;
const FAULTS = process.env.DEVBOX_EXAMPLE_FAULTS === '1';
const DRAIN_MS = Math.max(0, parseInt(process.env.SHUTDOWN_DRAIN_MS || '500', 10) || 0);
const SHUTDOWN_DEADLINE_MS = DRAIN_MS + 1500;

let stalled = false;
let phase = 'serving'; // then 'draining' (SHUTDOWN_DRAIN_MS), then 'closing'

function log(msg) {
  console.log(`[${pkg.name} ${process.pid}] ${msg}`);
}

// host and port of the first host of a mongodb:// URI; null when it cannot be parsed.
function mongoAddress(uri) {
  const m = /^mongodb:\/\/(?:[^@/]*@)?([^/?,]+)/.exec(uri);
  if (!m) return null;
  const hp = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(m[1]);
  if (!hp) return null;
  return { host: hp[1].replace(/^\[|\]$/g, ''), port: parseInt(hp[2] || '27017', 10) };
}

// The app has no MongoDB driver: readiness only checks that the server accepts a TCP connection
// within 1 s. Results name the failure (code), never the URI (it may hold credentials).
function mongoCheck() {
  const uri = process.env.MONGODB_URI;
  if (!uri) return Promise.resolve('not_configured');
  if (uri.startsWith('mongodb+srv://')) return Promise.resolve('skipped: mongodb+srv needs a DNS SRV lookup');
  const addr = mongoAddress(uri);
  if (!addr) return Promise.resolve('error: MONGODB_URI is not a mongodb:// URI');
  return new Promise((resolve) => {
    const sock = net.connect({ host: addr.host, port: addr.port });
    const done = (result) => { sock.destroy(); resolve(result); };
    sock.setTimeout(1000, () => done('timeout'));
    sock.once('connect', () => done('ok'));
    sock.once('error', (err) => done(`error: ${err.code || 'connect failed'}`));
  });
}

async function readiness() {
  const required = (process.env.READY_REQUIRES || '').split(',').map((s) => s.trim()).filter(Boolean);
  const missing = required.filter((name) => !process.env[name]);
  const checks = { env: missing.length ? 'missing' : 'ok', mongodb: await mongoCheck() };
  const ok = !missing.length && !/^(error|timeout)/.test(checks.mongodb);
  return ok
    ? [200, { status: 'ready', version: VERSION, checks }]
    : [503, { status: 'not_ready', version: VERSION, missing, checks }];
}

function send(res, code, body) {
  const text = typeof body === 'string' ? body + '\n' : JSON.stringify(body) + '\n';
  if (phase !== 'serving') res.setHeader('Connection', 'close');
  res.writeHead(code, {
    'Content-Type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(res.req.method === 'HEAD' ? undefined : text);
}

async function handle(req, res) {
  const path = req.url.split('?')[0];
  if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, { error: 'method not allowed' });
  if (path === '/') return send(res, 200, `hello from ${pkg.name} ${VERSION}`);
  if (path === '/api/health') {
    if (stalled) return undefined; // fault hook: never answer
    return send(res, 200, { status: 'ok', version: VERSION, pid: process.pid,
      uptime_s: Math.round(process.uptime() * 1000) / 1000 });
  }
  if (path === '/api/ready') {
    const [code, body] = await readiness();
    return send(res, code, body);
  }
  if (FAULTS && path === '/api/_stall') {
    stalled = true;
    log('fault: /api/health now stalls');
    return send(res, 200, { status: 'stalled', pid: process.pid });
  }
  if (FAULTS && path === '/api/_crash') {
    log('fault: crashing with exit code 1');
    send(res, 200, { status: 'crashing', pid: process.pid });
    return res.once('finish', () => process.exit(1));
  }
  return send(res, 404, { error: 'not found' });
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    log(`request failed: ${err.name}`);
    if (!res.headersSent) send(res, 500, { error: 'internal error' });
  });
});

// Requests in progress per socket: shutdown ends a kept-alive socket once it has no request left.
const active = new Map();
server.on('connection', (sock) => {
  active.set(sock, 0);
  sock.once('close', () => active.delete(sock));
});
server.on('request', (req, res) => {
  const sock = req.socket;
  active.set(sock, (active.get(sock) || 0) + 1);
  res.once('close', () => {
    const left = (active.get(sock) || 1) - 1;
    active.set(sock, left);
    if (phase === 'closing' && left === 0) sock.end();
  });
});

// Graceful shutdown without a failed request (PM2 reload in cluster mode sends SIGINT, or the 'shutdown'
// message, to the old worker once its replacement is ready):
// 1. Stop listening. net.Server.close, not http.Server.close: since Node 19 the latter also destroys the
//    idle kept-alive sockets at once, and a client whose next request is already on the wire then gets
//    a reset. In cluster mode the master may still hand this worker a connection it accepted a moment
//    ago; a worker that is still alive refuses it and the master gives it to another worker.
// 2. For SHUTDOWN_DRAIN_MS, keep serving: every answer carries `Connection: close`, so a busy client
//    reconnects (to another worker) after its answer and never races a close.
// 3. Then close the sockets that stayed idle for the whole window (no client is using them) and the
//    others after their answer, and exit once every connection is gone; SHUTDOWN_DEADLINE_MS caps it.
function shutdown(why) {
  if (phase !== 'serving') return;
  phase = 'draining';
  log(`${why}: no new connections; draining kept-alive ones for ${DRAIN_MS} ms`);
  let closed = false;
  const exit = () => {
    log('closed cleanly');
    process.exit(0);
  };
  net.Server.prototype.close.call(server, () => {
    closed = true;
    if (phase === 'closing') exit();
  });
  setTimeout(() => {
    phase = 'closing';
    for (const [sock, n] of active) if (n === 0) sock.end();
    if (closed) exit();
  }, DRAIN_MS);
  setTimeout(() => {
    log(`still busy after ${SHUTDOWN_DEADLINE_MS} ms: dropping ${active.size} connection(s)`);
    process.exit(0);
  }, SHUTDOWN_DEADLINE_MS).unref();
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT')); // what PM2 sends
process.on('message', (m) => { if (m === 'shutdown') shutdown('shutdown message'); }); // PM2 shutdown_with_message

server.listen(PORT, HOST, () => {
  const addr = server.address();
  log(`listening on ${addr.address}:${addr.port} version ${VERSION}`);
  if (process.send) process.send('ready'); // PM2 wait_ready
});
