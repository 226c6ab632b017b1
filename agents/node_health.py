"""node_health: the database nodes' health server, shared by galera-node and replica-node.

Shipped by keystone-multiregion next to both agents (cloud-init writes it to
/usr/local/lib/keystone-multiregion/node_health.py; each agent puts that directory, and its
own, on sys.path); the local lab runs the very same file. Standard library only.

What differs between the two agents is passed in: how a status is judged (galera-node:
Synced and Primary, and not draining; replica-node: its own "healthy"), what a failed query
answers, and the program's name in an error.
"""

import http.server
import json
import os
import subprocess
import threading
import time

CACHE_S = 1.0
MAX_CLIENTS = 8
# What a failed status query raises: the client failed, timed out, or could not be run.
QUERY_ERRORS = (RuntimeError, subprocess.TimeoutExpired, OSError)


def error_status(exc):
    return {"error": str(exc)}


class HealthCache:
    """The node's status for the health server: one query at a time, and its answer reused
    for `ttl` seconds, so a flood of requests costs one mariadb client per second. A failed
    query answers `on_error(exc)` (reused as long)."""

    def __init__(self, query, ttl=CACHE_S, clock=time.monotonic, on_error=error_status):
        self._query, self._ttl, self._clock, self._on_error = query, ttl, clock, on_error
        self._lock = threading.Lock()
        self._at, self._value = None, None

    def get(self):
        with self._lock:
            if self._at is None or self._clock() - self._at >= self._ttl:
                try:
                    self._value = self._query()
                except QUERY_ERRORS as exc:
                    self._value = self._on_error(exc)
                self._at = self._clock()
            return self._value


def judged_by_its_own_word(status):
    """(status, ok): the status says itself whether it is healthy."""
    return status, bool(status.get("healthy"))


class _Health(http.server.BaseHTTPRequestHandler):
    timeout = 5  # a client that sends nothing does not hold a slot

    def do_GET(self):  # noqa: N802 (http.server's naming)
        status, ok = self.server.judge(self.server.health.get())
        body = (json.dumps(status, sort_keys=True) + "\n").encode()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HealthServer(http.server.ThreadingHTTPServer):
    """HTTP 200 when `judge(status)` says ok, else 503, the status as JSON either way. At most
    `max_clients` connections served at once; later ones wait in the listen queue.
    `judge(status) -> (status to answer, ok)` runs for every request (a marker file it looks
    at counts at once, not after the cache's second)."""
    daemon_threads = True

    def __init__(self, address, health, judge=judged_by_its_own_word, max_clients=MAX_CLIENTS):
        self.health, self.judge = health, judge
        self._slots = threading.BoundedSemaphore(max_clients)
        super().__init__(address, _Health)

    def process_request(self, request, client_address):
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def drop_privileges(user, program):
    """Become `user` (its own group, no others) when started as root; refuse to stay root."""
    import pwd
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.geteuid() == 0 or os.getuid() == 0:
        raise SystemExit(f"{program}: could not drop root privileges")
