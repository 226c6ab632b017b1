"""Keystone's database connection, TLS or nothing (shipped by keystone-multiregion to
/usr/local/lib/keystone-multiregion/ on every Keystone node, and used by the lab).

PyMySQL starts TLS only when the server offers it: anything on the path that answers as a
MySQL server without TLS would get a plain session and the login (a password hash, or the
password itself after an auth switch). This module refuses that before a byte of the login
is sent, and verifies the server's certificate against the Galera CA (`ssl_ca` in the
URL), so only a Galera node of this deployment is accepted.

keystone.conf names the SQLAlchemy driver `mysql+tlspymysql`, which exists only once
`register()` has run: the WSGI application, keystone-node and the `keystone-manage`
wrapper call it. A program that has not (Debian's own /usr/bin/keystone-manage, say)
fails to load the driver instead of connecting in clear.
"""

from __future__ import annotations

import pymysql
from pymysql.constants import CLIENT

DRIVER = "tlspymysql"
# MySQL's client error for a failed TLS set-up (CR_SSL_CONNECTION_ERROR).
SSL_CONNECTION_ERROR = 2026


class TLSConnection(pymysql.connections.Connection):
    """A PyMySQL connection that sends no login unless the session is TLS."""

    def _request_authentication(self):  # the first packet the client sends
        if not self.ssl:
            raise pymysql.err.OperationalError(
                SSL_CONNECTION_ERROR, f"refusing to log in to {self.host}:{self.port} without TLS: the "
                "connection names no CA (ssl_ca=...), so the server's certificate cannot be checked")
        if not self.server_capabilities & CLIENT.SSL:
            raise pymysql.err.OperationalError(
                SSL_CONNECTION_ERROR, f"refusing to log in to {self.host}:{self.port}: the server does not "
                "offer TLS (a Galera node of this deployment always does); no credentials were sent")
        return super()._request_authentication()


def connect(**kwargs) -> TLSConnection:
    return TLSConnection(**kwargs)


def register() -> None:
    """Make `mysql+tlspymysql://` known to SQLAlchemy in this process."""
    from sqlalchemy.dialects import registry
    registry.register(f"mysql.{DRIVER}", __name__, "dialect")


def _dialect():
    from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql

    class MySQLDialect_tlspymysql(MySQLDialect_pymysql):
        driver = DRIVER

        def connect(self, *cargs, **cparams):
            return TLSConnection(*cargs, **cparams)

    return MySQLDialect_tlspymysql


def __getattr__(name):  # SQLAlchemy's registry loads `dialect` lazily, after register()
    if name == "dialect":
        return _dialect()
    raise AttributeError(name)
