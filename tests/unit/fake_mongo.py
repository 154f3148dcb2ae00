# SPDX-License-Identifier: GPL-3.0-or-later
"""A stand-in MongoDB server on loopback, for the success path of mongodb_ping only.

This is a mock, and the only one of its kind in the tests: no MongoDB server can be installed on this
machine (no server package in the registries we reach). It speaks just enough of the real wire protocol
(OP_QUERY handshake, OP_MSG commands, BSON from pymongo's own ``bson``) for a real pymongo client to
select it as a standalone server and run ``hello``, ``ping`` and ``buildInfo``. Every failure path of
the ping is tested against real sockets instead (refused, silent, unresolvable).
"""
import datetime
import socket
import socketserver
import struct
import threading

import bson

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
VERSION = "7.0.99-devbox-ops-fake"


def _answer(command):
    name = next(iter(command), "").lower()
    if name in ("hello", "ismaster"):
        return {"ismaster": True, "isWritablePrimary": True, "helloOk": True, "maxBsonObjectSize": 16 * 1024 * 1024,
                "maxMessageSizeBytes": 48000000, "maxWriteBatchSize": 100000,
                "localTime": datetime.datetime.now(datetime.timezone.utc), "logicalSessionTimeoutMinutes": 30,
                "connectionId": 1, "minWireVersion": 0, "maxWireVersion": 21, "readOnly": False, "ok": 1.0}
    if name in ("ping", "endsessions"):
        return {"ok": 1.0}
    if name == "buildinfo":
        return {"version": VERSION, "versionArray": [7, 0, 99, 0], "ok": 1.0}
    return {"ok": 0.0, "errmsg": "no such command: '%s'" % name, "code": 59, "codeName": "CommandNotFound"}


class _Handler(socketserver.BaseRequestHandler):
    def _read(self, size):
        data = b""
        while len(data) < size:
            chunk = self.request.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def handle(self):
        try:
            while True:
                length, request_id, _to, opcode = struct.unpack("<iiii", self._read(16))
                body = self._read(length - 16)
                self.server.commands.append(opcode)
                if opcode == OP_QUERY:
                    at = body.index(b"\x00", 4) + 1 + 8  # flags, collection name, skip, limit
                    doc = bson.decode(body[at:at + struct.unpack("<i", body[at:at + 4])[0]])
                    payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(_answer(doc))
                    reply_op = OP_REPLY
                elif opcode == OP_MSG:
                    assert body[4:5] == b"\x00", "the command document comes first"
                    doc = bson.decode(body[5:5 + struct.unpack("<i", body[5:9])[0]])
                    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(_answer(doc))
                    reply_op = OP_MSG
                else:
                    return
                self.server.names.append(next(iter(doc), ""))
                self.request.sendall(struct.pack("<iiii", 16 + len(payload), 0, request_id, reply_op) + payload)
        except (EOFError, ConnectionError, socket.timeout):
            return


class FakeMongo(socketserver.ThreadingTCPServer):
    """``with FakeMongo() as server: ... server.port``; ``server.names`` lists the commands it answered."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port=0):
        socketserver.ThreadingTCPServer.__init__(self, ("127.0.0.1", port), _Handler)
        self.port = self.server_address[1]
        self.commands, self.names = [], []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
