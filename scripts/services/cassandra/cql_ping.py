#!/usr/bin/env python3
"""Readiness probe for the test Cassandra: a real CQL exchange, standard library only.

Usage: cql_ping.py HOST PORT [TIMEOUT_SECONDS] [CQL]

Speaks the native protocol (v4) directly: STARTUP, expects READY, then runs one query (by
default `SELECT release_version FROM system.local`), expects a RESULT and prints the first
column of the first row. Exit 0 on success, 1 when the server is not (yet) serving CQL, 2 on
bad usage. Used by scripts/services/cassandra.sh; no driver needed.
"""
import socket
import struct
import sys

OP_ERROR, OP_STARTUP, OP_READY, OP_QUERY, OP_RESULT = 0x00, 0x01, 0x02, 0x07, 0x08
VERSION = 0x04


def string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def frame(stream, opcode, body):
    return struct.pack(">BBhBI", VERSION, 0, stream, opcode, len(body)) + body


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by server")
        buf += chunk
    return buf


def read_frame(sock):
    version, _flags, stream, opcode, length = struct.unpack(">BBhBI", recv_exact(sock, 9))
    if version != (0x80 | VERSION):
        raise ConnectionError("unexpected protocol version 0x%02x" % version)
    return stream, opcode, recv_exact(sock, length)


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def string(self):
        return self.take(self.short()).decode()

    def bytes(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def option(self):
        kind = self.short()
        if kind == 0x0000:  # custom
            self.string()
        elif kind in (0x0020, 0x0022):  # list, set
            self.option()
        elif kind == 0x0021:  # map
            self.option()
            self.option()
        elif kind == 0x0031:  # tuple
            for _ in range(self.short()):
                self.option()
        elif kind == 0x0030:  # udt
            self.string()
            self.string()
            for _ in range(self.short()):
                self.string()
                self.option()
        return kind


def error_text(body):
    r = Reader(body)
    code = r.int()
    return "server error 0x%04x: %s" % (code, r.string())


def first_value(body):
    r = Reader(body)
    kind = r.int()
    if kind != 0x0002:  # not Rows: Void, SetKeyspace, SchemaChange... all fine
        return ""
    flags, ncols = r.int(), r.int()
    if flags & 0x0002:  # has_more_pages
        r.bytes()
    if not flags & 0x0004:  # metadata present
        global_spec = flags & 0x0001
        if global_spec:
            r.string()
            r.string()
        for _ in range(ncols):
            if not global_spec:
                r.string()
                r.string()
            r.string()
            r.option()
    if r.int() < 1 or ncols < 1:
        return ""
    value = r.bytes()
    return "" if value is None else value.decode(errors="replace")


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    host, port = sys.argv[1], int(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    cql = sys.argv[4] if len(sys.argv) > 4 else "SELECT release_version FROM system.local"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(frame(1, OP_STARTUP, struct.pack(">H", 1) + string("CQL_VERSION") + string("3.0.0")))
            _, opcode, body = read_frame(sock)
            if opcode == OP_ERROR:
                raise ConnectionError(error_text(body))
            if opcode != OP_READY:
                raise ConnectionError("expected READY, got opcode 0x%02x" % opcode)
            query = cql.encode()
            # [long string] query, [short] consistency ONE, [byte] flags 0
            body = struct.pack(">I", len(query)) + query + struct.pack(">HB", 0x0001, 0)
            sock.sendall(frame(2, OP_QUERY, body))
            _, opcode, body = read_frame(sock)
            if opcode == OP_ERROR:
                raise ConnectionError(error_text(body))
            if opcode != OP_RESULT:
                raise ConnectionError("expected RESULT, got opcode 0x%02x" % opcode)
            print(first_value(body))
            return 0
    except (OSError, ConnectionError, struct.error) as e:
        print("cql_ping: %s:%d: %s" % (host, port, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
