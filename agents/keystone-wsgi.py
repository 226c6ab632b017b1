"""Keystone's public WSGI application, with one addition for a region cut off from the
others: a write refused by its Galera node (outside the Primary component) becomes a
clear 503 instead of an empty response.

Shipped by keystone-multiregion (uwsgi's wsgi-file on every Keystone node, and the lab's).
"""

import json
import os
import sys

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


def _body(message):
    return json.dumps({"error": {"code": 503, "title": "Service Unavailable", "message": message}}).encode()


_BODY = _body("This region's database is cut off from the majority of the cluster: it serves reads "
              "(token validation, look-ups) but refuses changes until it rejoins. Retry later, or make "
              "the change through another region's endpoint.")
_BODY_DISCONNECTED = _body("The database connection was lost while answering (a database node restarted or "
                           "moved its sessions); retry the request.")


def application(environ, start_response):
    # Keystone's responses are small: complete each one here before anything is sent, so
    # an error while producing it can still be answered properly.
    started = []

    def capture(status, headers, exc_info=None):
        started[:] = [status, headers]
        return lambda data: None  # Keystone (Flask) never uses the write() callable

    try:
        body = b"".join(_keystone(environ, capture))
    except Exception as exc:  # noqa: BLE001 (re-raised unless the database refused or dropped it)
        if any(marker in str(exc) for marker in _NOT_PRIMARY):
            body, retry_after = _BODY, "30"
        elif any(marker in str(exc) for marker in _DISCONNECTED):
            body, retry_after = _BODY_DISCONNECTED, "1"
        else:
            raise
        start_response("503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                        ("Retry-After", retry_after)])
        return [body]
    start_response(*started)
    return [body]
