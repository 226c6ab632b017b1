"""The bench's client: one long-running process inside a lab namespace, as a service that
validates tokens would be. Standard library only (pymysql for the database mode, from
Debian's python3-pymysql), so it runs with the machine's python3 in any namespace.

Reads one JSON line on stdin (it carries tokens and passwords: never in argv) and prints
one JSON object: every request's latency, the statuses, the errors, and how many
connections it opened.

    {"mode": "http", "address", "port", "hostname", "ca", "method", "path", "headers",
     "body", "count", "concurrency", "duration", "warmup", "scheme" ("https", or "http")}
        `concurrency` threads, each on one keep-alive HTTPS connection (reopened only when
        the server closes it, and counted), together at most `count` requests and
        `duration` seconds after `warmup` requests per thread that are not measured.
    {"mode": "sql", "address", "port", "user", "password", "ca", "statements", "count",
     "duration", "warmup"}
        one database connection (TLS), each statement list run `count` times, autocommit.

Every loop is bounded by its count and by its duration.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import threading
import time


class _Connection(http.client.HTTPSConnection):
    """HTTPS to an address, with the certificate checked for a host name (a VIP behind DNS)."""

    def __init__(self, address: str, port: int, hostname: str, context: ssl.SSLContext, timeout: float):
        super().__init__(address, port, context=context, timeout=timeout)
        self._hostname = hostname
        self._ctx = context

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self._hostname)


def _http(cfg: dict) -> dict:
    ctx = ssl.create_default_context(cafile=cfg["ca"]) if cfg.get("scheme") != "http" else None
    # "{seq}" in the body becomes a number unique to the request (a name that must be new).
    body_text = json.dumps(cfg["body"]) if cfg.get("body") is not None else None
    seq = iter(range(10 ** 9))
    headers = {"Host": cfg["hostname"], **cfg.get("headers", {})}
    asked_close = any(k.lower() == "connection" and v.lower() == "close" for k, v in headers.items())
    if body_text is not None:
        headers["Content-Type"] = "application/json"
    lock = threading.Lock()
    left = [int(cfg["count"])]
    out = {"latencies_ms": [], "statuses": {}, "errors": [], "connections": 0, "closed_by_server": 0}
    start = [0.0]  # set once every thread is warm, before any of them goes on
    ready = threading.Barrier(int(cfg["concurrency"]) + 1, action=lambda: start.__setitem__(0, time.monotonic()))

    def one(conn: http.client.HTTPConnection) -> tuple[int | None, bool, str | None]:
        """(status, the server closed the connection, error)"""
        body = None
        if body_text is not None:
            with lock:
                body = body_text.replace("{seq}", str(next(seq))).encode()
        try:
            conn.request(cfg["method"], cfg["path"], body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            # uwsgi answers HTTP/1.1 without "Connection: close" and closes anyway: a client
            # that asked for a close does not reuse the connection either.
            return response.status, response.will_close or asked_close, None
        except (OSError, http.client.HTTPException) as exc:
            return None, True, f"{type(exc).__name__}: {exc}"[:200]

    def worker() -> None:
        conn, opened = None, 0

        def fresh() -> http.client.HTTPConnection:
            nonlocal opened
            opened += 1
            if cfg.get("scheme") == "http":  # a Keystone node itself, from inside its region
                return http.client.HTTPConnection(cfg["address"], int(cfg["port"]), timeout=float(cfg.get("timeout", 10)))
            return _Connection(cfg["address"], int(cfg["port"]), cfg["hostname"], ctx, float(cfg.get("timeout", 10)))

        conn = fresh()
        for _ in range(int(cfg.get("warmup", 0))):
            _, closed, _ = one(conn)
            if closed:
                conn.close()
                conn = fresh()
        opened = 1 if conn.sock is not None else 0  # the warm connection counts once
        try:
            ready.wait(timeout=60)
        except threading.BrokenBarrierError:
            return
        end = start[0] + float(cfg["duration"])
        lat, statuses, errors, closes = [], {}, [], 0
        while time.monotonic() < end:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            t = time.monotonic()
            status, closed, error = one(conn)
            lat.append((time.monotonic() - t) * 1000)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if error:
                errors.append(error)
            if closed:
                closes += 1
                conn.close()
                conn = fresh()
        conn.close()
        with lock:
            out["latencies_ms"] += lat
            for k, v in statuses.items():
                out["statuses"][k] = out["statuses"].get(k, 0) + v
            out["errors"] += errors[:5]
            out["connections"] += opened
            out["closed_by_server"] += closes

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(int(cfg["concurrency"]))]
    for t in threads:
        t.start()
    ready.wait(timeout=60)
    t0 = start[0]
    for t in threads:
        t.join(timeout=float(cfg["duration"]) + 30)
    out["elapsed_s"] = time.monotonic() - t0
    out["requests"] = len(out["latencies_ms"])
    return out


def _sql(cfg: dict) -> dict:
    import pymysql
    conn = pymysql.connect(host=cfg["address"], port=int(cfg["port"]), user=cfg["user"], password=cfg["password"],
                           ssl={"ca": cfg["ca"]}, autocommit=True, connect_timeout=10, read_timeout=30,
                           write_timeout=30)
    out = {"latencies_ms": [], "errors": [], "connections": 1}
    with conn.cursor() as cur:
        for _ in range(int(cfg.get("warmup", 0))):
            for statement in cfg["statements"]:
                cur.execute(statement)
        t0 = time.monotonic()
        end = t0 + float(cfg["duration"])
        for _ in range(int(cfg["count"])):
            if time.monotonic() >= end:
                break
            t = time.monotonic()
            try:
                for statement in cfg["statements"]:
                    cur.execute(statement)
                    cur.fetchall()
            except pymysql.MySQLError as exc:
                out["errors"].append(str(exc)[:200])
                continue
            out["latencies_ms"].append((time.monotonic() - t) * 1000)
    conn.close()
    out["elapsed_s"] = time.monotonic() - t0
    out["requests"] = len(out["latencies_ms"])
    return out


def main() -> int:
    cfg = json.loads(sys.stdin.readline())
    result = _http(cfg) if cfg["mode"] == "http" else _sql(cfg)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
