"""Keystone's public WSGI application, with one addition for a region cut off from the
others: a write refused by its Galera node (outside the Primary component) becomes a
clear 503 instead of an empty response; and one for a replica region: a request that
turned out to write (a login with a wrong password records the failure, the next good
one resets it) is refused by the read-only replica, so it is sent once more, whole, to a
core region, and that answer is the client's.

Shipped by keystone-multiregion (uwsgi's wsgi-file on every Keystone node, and the lab's).
"""

import io
import json
import os
import sys
import threading

# The database driver keystone.conf names (TLS or nothing), shipped next to this file.
sys.dont_write_bytecode = True  # no __pycache__ beside the shipped module
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keystone_dbtls  # noqa: E402

keystone_dbtls.register()

from keystone.server.wsgi import initialize_public_application  # noqa: E402

_keystone = initialize_public_application()

# MariaDB Galera's answer on a node outside the Primary component.
_NOT_PRIMARY = ("WSREP has not yet prepared node for application use", "(1047,")

# The database connection dropped under a request (a member restarted or its sessions moved
# to another member by the proxies): the next attempt gets a fresh connection. A 503 lets
# HAProxy retry an idempotent request (token validation) on another server at once.
_DISCONNECTED = ("(2006,", "(2013,", "(2026,", "MySQL server has gone away", "Lost connection to MySQL server")


# Keystone answers some of those itself, with a 500 (its auth-context middleware catches every
# exception while it validates the caller's token, e.g. a session lost while reading revocation
# events): what its database engines saw during the request says whether that is the cause.
_seen = threading.local()


def _note_disconnect(context):
    """SQLAlchemy's handle_error event, for every engine of the process: remember that a
    connection dropped under this request."""
    if context.is_disconnect or any(marker in str(context.original_exception) for marker in _DISCONNECTED):
        _seen.disconnected = True


# A replica region (uwsgi's env names its internal endpoint): the replica refused a write.
# 1290: read_only; 1836: read-only by the slave's own setting; 1142: the replica's Keystone
# account has SELECT only (a write is refused before read_only is even consulted).
WRITE_ELSEWHERE = os.environ.get("KEYSTONE_MULTIREGION_WRITE_ELSEWHERE", "").rstrip("/")
_READ_ONLY = ("(1290,", "(1836,", "(1142,", "--read-only option")
# Set on the request sent to WRITE_ELSEWHERE: the region's internal proxy routes it to a core
# region (backend keystone_core, templates/proxy/haproxy.cfg.j2).
WRITE_ELSEWHERE_HEADER = "X-Keystone-Write-Elsewhere"
# Who served the forwarded request, for the client (the local proxy names this region).
WRITTEN_BY_HEADER = "X-Keystone-Written-By"
_HOP_BY_HOP = ("connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate")


def _note_read_only(context):
    if WRITE_ELSEWHERE and any(marker in str(context.original_exception) for marker in _READ_ONLY):
        _seen.read_only = True


def watch_disconnects(engine_class=None, listen=None):
    if engine_class is None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        engine_class, listen = Engine, event.listen
    listen(engine_class, "handle_error", _note_disconnect)
    listen(engine_class, "handle_error", _note_read_only)


watch_disconnects()

# Safe to answer again: the lost connection was invalidated with its pool, the next attempt
# gets a fresh one (through the proxies, to a member that serves). Reads, and a token issue:
# Fernet tokens are not stored, so issuing one twice leaves nothing behind.
_IDEMPOTENT = ("GET", "HEAD", "OPTIONS")
_REPEATABLE_POSTS = ("/v3/auth/tokens",)


def _repeatable(environ):
    method = environ.get("REQUEST_METHOD")
    return method in _IDEMPOTENT or (method == "POST" and
                                     (environ.get("PATH_INFO") or "").rstrip("/") in _REPEATABLE_POSTS)


def _body(message):
    return json.dumps({"error": {"code": 503, "title": "Service Unavailable", "message": message}}).encode()


_BODY = _body("This region's database is cut off from the majority of the cluster: it serves reads "
              "(token validation, look-ups) but refuses changes until it rejoins. Retry later, or make "
              "the change through another region's endpoint.")
_BODY_DISCONNECTED = _body("The database connection was lost while answering (a database node restarted or "
                           "moved its sessions); retry the request.")


_REQUEST_KEYS = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE")


def forward(environ, body, timeout=30):
    """The request, whole, to WRITE_ELSEWHERE (this region's internal endpoint, whose proxy
    sends it to a core region): (status line, headers, body) of the core's answer."""
    import http.client
    import urllib.parse
    url = urllib.parse.urlsplit(WRITE_ELSEWHERE)
    path = (environ.get("SCRIPT_NAME") or "") + (environ.get("PATH_INFO") or "/")
    if environ.get("QUERY_STRING"):
        path += "?" + environ["QUERY_STRING"]
    # `environ` is the request as it came (application() keeps a copy before Keystone adds
    # its own keys, some None); only string values are headers.
    headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items()
               if key.startswith("HTTP_") and isinstance(value, str)
               and key[5:].replace("_", "-").lower() not in _HOP_BY_HOP}
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    headers[WRITE_ELSEWHERE_HEADER] = "1"
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    try:
        conn.request(environ["REQUEST_METHOD"], path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        out = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
        region = response.getheader("X-Keystone-Region")
        out.append((WRITTEN_BY_HEADER, region or "a core region"))
        out.append(("Content-Length", str(len(data))))
        return f"{response.status} {response.reason}", out, data
    finally:
        conn.close()


_BODY_NO_CORE = _body("This region reads from replicas, and this request writes to the database (a login "
                      "recording a failed attempt, or resetting one): it went to a core region, which did not "
                      "answer. Retry later, or use the endpoint of a core region.")


def application(environ, start_response):
    # Keystone's responses are small: complete each one here before anything is sent, so
    # an error while producing it can still be answered properly.
    repeatable = _repeatable(environ)
    request_body = None
    _seen.read_only = False
    incoming = None
    if WRITE_ELSEWHERE:
        # A replica region: any request may turn out to write; its body, and the request as
        # it came (Keystone adds keys of its own to environ, some None), are kept for the core.
        incoming = {k: v for k, v in environ.items() if k.startswith("HTTP_") or k in _REQUEST_KEYS}
        length = int(environ.get("CONTENT_LENGTH") or 0)
        request_body = environ["wsgi.input"].read(length) if length > 0 else b""
    elif repeatable and environ.get("REQUEST_METHOD") == "POST":
        # Read once, given to each attempt afresh (a login's body is small).
        length = int(environ.get("CONTENT_LENGTH") or 0)
        request_body = environ["wsgi.input"].read(length) if length > 0 else b""
    for attempt in (1, 2):
        if request_body is not None:
            environ["wsgi.input"] = io.BytesIO(request_body)
        status, headers, body = _answer(environ)
        if _seen.read_only and (status is None or status.startswith("500")):
            # Refused by the read-only replica: nothing was written here, the core does it.
            try:
                status, headers, body = forward(incoming, request_body or b"")
            except (OSError, ValueError) as exc:
                print(f"keystone-wsgi: {environ['REQUEST_METHOD']} {environ.get('PATH_INFO')} writes, and "
                      f"the core did not answer it: {exc}", file=sys.stderr, flush=True)
                body = _BODY_NO_CORE
                break
            print(f"keystone-wsgi: {environ['REQUEST_METHOD']} {environ.get('PATH_INFO')} writes: sent to a "
                  f"core region, {status}", file=sys.stderr, flush=True)
            start_response(status, headers)
            return [body]
        if status is not None:
            if not (status.startswith("500") and _seen.disconnected):
                start_response(status, headers)
                return [body]
            body = _BODY_DISCONNECTED  # Keystone's own 500 for a lost connection
        if body is _BODY_DISCONNECTED and repeatable and attempt == 1:
            print(f"keystone-wsgi: the database connection was lost under {environ['REQUEST_METHOD']} "
                  f"{environ.get('PATH_INFO')}; answering it again", file=sys.stderr, flush=True)
            continue
        break
    start_response("503 Service Unavailable",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                    ("Retry-After", "1" if body is _BODY_DISCONNECTED else "30")])
    return [body]


def _answer(environ):
    """Keystone's answer (status, headers, body), or (None, None, a 503 body) when the
    database refused the request (outside the Primary component) or dropped it."""
    _seen.disconnected = False
    _seen.read_only = False
    started = []

    def capture(status, headers, exc_info=None):
        started[:] = [status, headers]
        return lambda data: None  # Keystone (Flask) never uses the write() callable

    try:
        body = b"".join(_keystone(environ, capture))
    except Exception as exc:  # noqa: BLE001 (re-raised unless the database refused or dropped it)
        if WRITE_ELSEWHERE and any(marker in str(exc) for marker in _READ_ONLY):
            _seen.read_only = True
            return None, None, _BODY_NO_CORE
        if any(marker in str(exc) for marker in _NOT_PRIMARY):
            return None, None, _BODY
        if any(marker in str(exc) for marker in _DISCONNECTED):
            return None, None, _BODY_DISCONNECTED
        raise
    return started[0], started[1], body
