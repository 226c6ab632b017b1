"""The Keystone layer as rendered: keystone.conf, uwsgi, keys, bootstrap, the 503 wrapper."""

import configparser
import importlib.util
import json
import sys
import types

import pytest
import yaml

from helpers import example
from keystone_multiregion.render import AGENTS, TEMPLATES, render_node
from keystone_multiregion.roles.keystone import ADMIN_PASSWORD_FILE, KEYSTONE_CONF, UWSGI_INI, WSGI_FILE
from keystone_multiregion.topology import TopologyError, load_topology


def _files(topo, name, secrets):
    return {f.path: f for f in render_node(topo, name, secrets).files}


def _ini(text):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_keystone_conf(topo, secrets):
    conf = _ini(_files(topo, "keystone-region-b-2", secrets)[KEYSTONE_CONF].content)
    assert conf["token"]["provider"] == "fernet"
    assert conf["token"]["cache_time"] == "60" and conf["revoke"]["cache_time"] == "60"
    # Every cache that carries authorization data has the same bound; none falls back to
    # [cache] expiration_time (an hour), which would keep a removed role working elsewhere.
    for section in ("role", "resource", "identity", "application_credential", "receipt", "domain_config"):
        assert conf[section]["cache_time"] == "60", section
    assert conf["fernet_tokens"]["max_active_keys"] == "5"  # (3600 + 172800) / 86400 + 2, rounded up
    assert conf["fernet_receipts"]["key_repository"] == conf["fernet_tokens"]["key_repository"]
    assert conf["credential"]["key_repository"] == "/etc/keystone/credential-keys/"
    assert conf["auth"]["methods"].split(",") == ["password", "token", "totp", "application_credential"]
    # The region's memcached nodes, each by address; 60 min expiry; short timeouts.
    assert conf["cache"]["memcache_servers"].split(",") == [f"{n.address}:11211" for n in topo.nodes("region-b", "memcached")]
    assert conf["cache"]["expiration_time"] == "3600"
    assert conf["cache"]["memcache_socket_timeout"] == "1" and conf["cache"]["memcache_dead_retry"] == "30"
    # The database through the region's internal VIP, over TLS verified with the Galera CA.
    internal = topo.vips("region-b", "internal")[0].address
    assert conf["database"]["connection"] == \
        f"mysql+tlspymysql://keystone:{secrets['keystone_db_password']}@{internal}:3306/keystone" \
        "?ssl_ca=/etc/keystone/galera-ca.pem&ssl_check_hostname=false"
    ca = _files(topo, "keystone-region-b-2", secrets)["/etc/keystone/galera-ca.pem"]
    assert ca.content == secrets["galera_ca_cert"] and ca.permissions == "0644"
    assert conf["healthcheck"]["path"] == "/healthcheck"


def test_uwsgi_binds_the_node_address_only(topo, secrets):
    ini = _ini(_files(topo, "keystone-region-a-3", secrets)[UWSGI_INI].content)["uwsgi"]
    assert ini["http-socket"] == "10.10.1.60:5000"
    assert ini["processes"] == "2"  # m1.medium's vCPUs
    assert ini["wsgi-file"] == WSGI_FILE
    # Keystone's Content-Length stays, so HAProxy keeps clients' connections alive.
    assert "rem-header" not in ini
    # uwsgi closes after each answer and says so, so HAProxy never reuses that connection.
    assert ini["add-header"] == "Connection: close"


def test_keys_are_pushed_not_baked_into_cloud_init(topo, secrets):
    for node in topo.nodes(role="keystone"):
        rendered = render_node(topo, node.name, secrets)
        paths = {f.path for f in rendered.files}
        assert not [p for p in paths if "fernet-keys" in p or "credential-keys" in p]
        for repo in ("fernet_keys", "credential_keys"):
            for key in secrets[repo].values():
                assert key not in rendered.user_data  # a rotation never changes cloud-init
        # The host key the stack pins when it pushes them.
        doc = yaml.safe_load(rendered.user_data)
        assert doc["ssh_keys"] == {"ed25519_private": secrets["ssh_host_keys"][node.name]["private"],
                                   "ed25519_public": secrets["ssh_host_keys"][node.name]["public"]}
    a = _files(topo, "keystone-region-a-1", secrets)
    c = _files(topo, "keystone-region-c-2", secrets)
    assert a[KEYSTONE_CONF].permissions == "0600"
    # Only the bootstrap node carries the admin password.
    assert a[ADMIN_PASSWORD_FILE].content.strip() == secrets["keystone_admin_password"]
    assert ADMIN_PASSWORD_FILE not in c
    facts = {n: json.loads(_files(topo, n, secrets)["/etc/keystone-multiregion/node.json"].content)["keystone_bootstrap"]
             for n in (x.name for x in topo.nodes(role="keystone"))}
    assert [n for n, flag in facts.items() if flag] == ["keystone-region-a-1"]
    # Every other node too: the stack pushes files to every node (node-agent) over pinned SSH.
    assert yaml.safe_load(render_node(topo, "galera-region-a-1", secrets).user_data)["ssh_keys"]["ed25519_public"] \
        == secrets["ssh_host_keys"]["galera-region-a-1"]["public"]


def test_first_boot_runs_our_unit_not_debians_and_only_once_keys_are_in(topo, secrets):
    doc = yaml.safe_load(render_node(topo, "keystone-region-a-1", secrets).user_data)
    steps = [" ".join(c) for c in doc["runcmd"]]
    assert steps.index("python3 /usr/local/sbin/keystone-node prepare") < \
        steps.index("python3 /usr/local/sbin/keystone-node bootstrap") < \
        steps.index("systemctl enable --now keystone-api.path keystone-key-check.timer")
    assert "systemctl disable --now keystone.service" in steps
    assert not [s for s in steps if "keystone-api.service" in s]  # started by the path unit, not at boot
    assert doc["bootcmd"][0][:3] == ["cloud-init-per", "once", "ksm-deny-service-start"]
    files = _files(topo, "keystone-region-a-1", secrets)
    tool = _tool()
    # The API starts when (and only when) install-keys has written the file it writes last.
    path_unit = _ini(files["/etc/systemd/system/keystone-api.path"].content)
    assert path_unit["Path"]["PathExists"] == tool.PUSHED
    assert path_unit["Path"]["Unit"] == "keystone-api.service"
    assert f"ConditionPathExists={tool.PUSHED}" in files["/etc/systemd/system/keystone-api.service"].content
    assert "[Install]" not in files["/etc/systemd/system/keystone-api.service"].content
    check = _ini(files["/etc/systemd/system/keystone-key-check.service"].content)
    assert check["Service"]["ExecStart"] == "/usr/bin/python3 /usr/local/sbin/keystone-node key-check"


def _tool():
    spec = importlib.util.spec_from_file_location("keystone_node", AGENTS / "keystone-node.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_galera_creates_keystones_database_user(topo, secrets):
    users = json.loads(_files(topo, "galera-region-a-1", secrets)["/etc/mysql/keystone-multiregion-users.json"].content)
    assert users["databases"] == ["keystone"]
    [user] = users["users"]
    assert user["password"] == secrets["keystone_db_password"]
    assert user["hosts"] == ["10.10.1.0/255.255.255.0", "10.10.2.0/255.255.255.0", "10.10.3.0/255.255.255.0"]
    assert user["require_ssl"] is True  # its connections may cross the WAN: TLS or nothing
    cnf = _files(topo, "galera-region-a-1", secrets)["/etc/mysql/mariadb.conf.d/99-keystone-multiregion.cnf"].content
    mysqld = _ini(cnf)["mysqld"]
    assert (mysqld["ssl_cert"], mysqld["ssl_key"], mysqld["ssl_ca"]) == (
        "/etc/mysql/ssl/node-cert.pem", "/etc/mysql/ssl/node-key.pem", "/etc/mysql/ssl/ca.pem")


def test_max_active_keys_follows_the_rotation_interval():
    data = example()
    data["keystone"] = {"rotation_interval_h": 6, "token_expiration_s": 7200}
    # (7200 + 172800) / 21600 = 8.33 -> 9, plus the staged and the primary key
    assert load_topology(data).keystone.max_active_keys == 11
    data["keystone"] = {"token_cache_s": 7200}
    with pytest.raises(TopologyError, match="keystone.token_cache_s: is longer than a token lives"):
        load_topology(data)


def _wsgi_module(app):
    """Load agents/keystone-wsgi.py with a stand-in Keystone application (and the real
    SQLAlchemy, Debian's version, whose engines it watches)."""
    sys.modules.pop("keystone_dbtls", None)
    fake = types.ModuleType("keystone.server.wsgi")
    fake.initialize_public_application = lambda: app
    fakes = {"keystone": types.ModuleType("keystone"), "keystone.server": types.ModuleType("keystone.server"),
             "keystone.server.wsgi": fake}
    sys.modules.update(fakes)
    try:
        spec = importlib.util.spec_from_file_location("ksm_wsgi", AGENTS / "keystone-wsgi.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _LOADED.append(module)
        return module
    finally:
        for name in fakes:
            sys.modules.pop(name, None)


_LOADED = []


@pytest.fixture(autouse=True)
def _forget_wrappers():
    """Each loaded wrapper listens on SQLAlchemy's Engine class: removed after the test."""
    yield
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    while _LOADED:
        module = _LOADED.pop()
        for listener in (module._note_disconnect, module._note_read_only):
            if event.contains(Engine, "handle_error", listener):
                event.remove(Engine, "handle_error", listener)


@pytest.fixture
def engine():
    """An engine like Keystone's, created after the wrapper registered its listener on the
    Engine class (as oslo.db creates Keystone's)."""
    import sqlalchemy
    return sqlalchemy.create_engine("sqlite://")


def _drop_connection(engine):
    """What SQLAlchemy tells its handle_error listeners when a connection drops under a query."""
    error = Exception("(pymysql.err.OperationalError) (2013, 'Lost connection to MySQL server during query')")
    engine.dispatch.handle_error(types.SimpleNamespace(is_disconnect=True, original_exception=error))


def _call(module, method="GET", path="/v3/auth/tokens"):
    seen = {}
    body = b"".join(module.application({"REQUEST_METHOD": method, "PATH_INFO": path},
                                       lambda status, headers, exc_info=None: seen.update(status=status,
                                                                                           headers=headers)))
    return seen, body


def _keystone_losing_connections(engine, losses):
    """A stand-in Keystone that, like its auth-context middleware, answers 500 itself when the
    database connection drops under the first `losses` requests."""
    calls = []

    def app(environ, start_response):
        calls.append(environ["REQUEST_METHOD"])
        if len(calls) <= losses:
            _drop_connection(engine)
            start_response("500 Internal Server Error", [("Content-Type", "application/json")])
            return [b'{"error": {"code": 500}}']
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"token": {}}']
    return app, calls


def test_wsgi_wrapper_answers_a_validation_again_when_keystone_lost_its_database_connection(engine):
    """Seen in the lab: Keystone's sessions cut at the Galera nodes under load gave 6 of 8005
    validations a 500 (auth_context: DBConnectionError on a session's rollback)."""
    app, calls = _keystone_losing_connections(engine, losses=1)
    seen, body = _call(_wsgi_module(app))
    assert (seen["status"], body, calls) == ("200 OK", b'{"token": {}}', ["GET", "GET"])


def test_wsgi_wrapper_answers_a_lost_write_or_a_second_loss_with_a_retryable_503(engine):
    app, calls = _keystone_losing_connections(engine, losses=1)
    seen, body = _call(_wsgi_module(app), method="POST", path="/v3/projects")  # it may have committed
    assert seen["status"] == "503 Service Unavailable" and ("Retry-After", "1") in seen["headers"]
    assert "connection was lost" in json.loads(body)["error"]["message"] and calls == ["POST"]

    app, calls = _keystone_losing_connections(engine, losses=2)
    seen, _ = _call(_wsgi_module(app))
    assert seen["status"] == "503 Service Unavailable" and calls == ["GET", "GET"]


def test_wsgi_wrapper_issues_a_token_again_with_the_same_body(engine):
    """A token issue (POST /v3/auth/tokens) stores nothing (Fernet): answered again, with the
    request's body read once and given to each attempt. Seen in CI: the load's admin login
    right after drill D6 got a 503 when the proxies moved the sessions back to the returning
    member."""
    import io
    bodies = []

    def app(environ, start_response):
        bodies.append(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        if len(bodies) == 1:
            _drop_connection(engine)
            start_response("500 Internal Server Error", [])
            return [b"{}"]
        start_response("201 Created", [("X-Subject-Token", "t")])
        return [b"{}"]

    module = _wsgi_module(app)
    login = b'{"auth": {"identity": {"methods": ["password"]}}}'
    seen = {}
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v3/auth/tokens", "CONTENT_LENGTH": str(len(login)),
               "wsgi.input": io.BytesIO(login)}
    b"".join(module.application(environ, lambda status, headers, exc_info=None: seen.update(status=status)))
    assert seen["status"] == "201 Created" and bodies == [login, login]

    bodies.clear()  # another POST (a project create) is not repeated: it may have been committed
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v3/projects", "CONTENT_LENGTH": str(len(login)),
               "wsgi.input": io.BytesIO(login)}
    b"".join(module.application(environ, lambda status, headers, exc_info=None: seen.update(status=status)))
    assert seen["status"] == "503 Service Unavailable" and bodies == [login]


def test_wsgi_wrapper_in_a_replica_region_sends_a_refused_write_to_the_core(engine, monkeypatch):
    """A wrong password on a replica: Keystone records the failure, the replica refuses it
    (1142: SELECT only; 1290: read_only), Keystone answers 500. The wrapper sends the request,
    with its body, once more through the region's internal endpoint (header for its proxies),
    and the core's answer is the client's. Without the setting (a core region), the 500 stays."""
    import io
    from keystone_multiregion.roles.proxy import WRITE_ELSEWHERE_HEADER
    calls = []

    def keystone(environ, start_response):
        calls.append(environ["wsgi.input"].read())
        # Keystone's own keys in environ, as its auth-context middleware sets them (some None):
        # not part of the request the core gets.
        environ.update(HTTP_X_PROJECT_ID=None, HTTP_X_USER_ID="u")
        error = Exception("(pymysql.err.OperationalError) (1142, \"UPDATE command denied to user 'keystone'\")")
        engine.dispatch.handle_error(types.SimpleNamespace(is_disconnect=False, original_exception=error))
        start_response("500 Internal Server Error", [])
        return [b"{}"]

    login = b'{"auth": {"identity": {"methods": ["password"]}}}'

    def environ():
        return {"REQUEST_METHOD": "POST", "PATH_INFO": "/v3/auth/tokens", "CONTENT_LENGTH": str(len(login)),
                "CONTENT_TYPE": "application/json", "HTTP_X_AUTH_TOKEN": "t", "wsgi.input": io.BytesIO(login)}

    monkeypatch.setenv("KEYSTONE_MULTIREGION_WRITE_ELSEWHERE", "http://10.0.4.10:5000")
    module = _wsgi_module(keystone)
    assert module.WRITE_ELSEWHERE_HEADER == WRITE_ELSEWHERE_HEADER
    sent = []
    forwarded = []
    monkeypatch.setattr(module, "forward", lambda env, body: forwarded.append(env) or sent.append(body) or
                        ("401 Unauthorized", [(module.WRITTEN_BY_HEADER, "lab-a")], b'{"error": {"code": 401}}'))
    seen = {}
    body = b"".join(module.application(environ(), lambda status, headers, exc_info=None:
                                       seen.update(status=status, headers=headers)))
    assert (seen["status"], body, calls, sent) == ("401 Unauthorized", b'{"error": {"code": 401}}', [login], [login])
    assert forwarded == [{"REQUEST_METHOD": "POST", "PATH_INFO": "/v3/auth/tokens", "CONTENT_TYPE": "application/json",
                          "HTTP_X_AUTH_TOKEN": "t"}]

    monkeypatch.delenv("KEYSTONE_MULTIREGION_WRITE_ELSEWHERE")
    calls.clear()
    module = _wsgi_module(keystone)
    b"".join(module.application(environ(), lambda status, headers, exc_info=None: seen.update(status=status)))
    assert seen["status"] == "500 Internal Server Error" and calls == [login]


def test_wsgi_wrapper_passes_keystones_other_500s_through():
    calls = []

    def failing(environ, start_response):
        calls.append(1)
        start_response("500 Internal Server Error", [])
        return [b"{}"]

    seen, _ = _call(_wsgi_module(failing))
    assert seen["status"] == "500 Internal Server Error" and calls == [1]


def test_wsgi_wrapper_turns_a_refused_write_into_a_clear_503():
    def refused(environ, start_response):
        start_response("500 Internal Server Error", [])
        raise RuntimeError("(pymysql.err.OperationalError) (1047, 'WSREP has not yet prepared node for application use')")

    seen, body = _call(_wsgi_module(refused))
    assert seen["status"] == "503 Service Unavailable"
    assert ("Retry-After", "30") in seen["headers"]
    assert "cut off from the majority" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("error", [
    "(pymysql.err.OperationalError) (2013, 'Lost connection to MySQL server during query')",
    "(pymysql.err.OperationalError) (2026, 'TLS/SSL error: unexpected eof while reading')",
    "(pymysql.err.OperationalError) (2006, 'MySQL server has gone away')"])
def test_wsgi_wrapper_turns_a_dropped_database_connection_into_a_retryable_503(error):
    """A member restarted or its sessions moved (node-agent's drained restart, the proxies
    taking sessions back from a backup) twice in a row under a validation: answered once
    again, then 503, which HAProxy retries on another server, instead of Keystone's 500."""
    calls = []

    def dropped(environ, start_response):
        calls.append(environ["REQUEST_METHOD"])
        raise RuntimeError(error)

    seen, body = _call(_wsgi_module(dropped))
    assert calls == ["GET", "GET"]
    assert seen["status"] == "503 Service Unavailable" and ("Retry-After", "1") in seen["headers"]
    assert "connection was lost" in json.loads(body)["error"]["message"]


def test_wsgi_wrapper_passes_everything_else_through():
    def ok(environ, start_response):
        start_response("201 Created", [("X-Subject-Token", "t")])
        return [b"{", b"}"]

    seen, body = _call(_wsgi_module(ok))
    assert seen == {"status": "201 Created", "headers": [("X-Subject-Token", "t")]} and body == b"{}"

    def broken(environ, start_response):
        raise ValueError("something else")

    with pytest.raises(ValueError, match="something else"):
        _call(_wsgi_module(broken))


def test_lab_totp_matches_rfc_6238():
    from lab.ksclient import totp
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # base32 of the RFC's "12345678901234567890"
    assert totp(secret, at=59) == "287082"  # RFC 6238 appendix B, SHA-1, last 6 of 94287082
    assert totp(secret, at=1111111109) == "081804"  # 07081804
    assert totp(secret, at=59) != totp(secret, at=89)


# -- the database connection: TLS or nothing ---------------------------------------------------
def _fake_mysql_without_tls():
    """A server that greets like MariaDB but offers no TLS, and records what the client sends
    back (loopback only, one connection, bounded by socket timeouts)."""
    import socket
    import struct
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)
    received = []

    def serve():
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            caps = (0xFFFF & ~0x0800) | 0x8000 | 0x0200  # everything but CLIENT_SSL (0x0800)
            greeting = (bytes([10]) + b"5.5.5-10.11.0-MariaDB\0" + struct.pack("<I", 1) + b"abcdefgh\0"
                        + struct.pack("<H", caps) + bytes([33]) + struct.pack("<HH", 2, 0x0008) + bytes([21])
                        + b"\0" * 10 + b"ijklmnopqrst\0" + b"mysql_native_password\0")
            conn.sendall(struct.pack("<I", len(greeting))[:3] + b"\0" + greeting)
            data = b""
            try:
                while chunk := conn.recv(4096):
                    data += chunk
            except OSError:
                pass
            received.append(data)
        srv.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv.getsockname()[1], thread, received


def _dbtls():
    sys.path.insert(0, str(AGENTS))
    try:
        import keystone_dbtls
        return keystone_dbtls
    finally:
        sys.path.remove(str(AGENTS))


@pytest.mark.parametrize("driver", ["tlspymysql", "pymysql"])
def test_the_keystone_db_driver_sends_no_login_to_a_server_without_tls(topo, secrets, driver):
    """keystone.conf's URL, pointed at a server that offers no TLS: our driver refuses before
    the login; plain PyMySQL (what keystone.conf named before) sends the user and password
    hash in clear — the control that shows the test can fail."""
    import sqlalchemy
    _dbtls().register()
    url = _ini(_files(topo, "keystone-region-b-2", secrets)[KEYSTONE_CONF].content)["database"]["connection"]
    assert url.startswith("mysql+tlspymysql://")
    port, thread, received = _fake_mysql_without_tls()
    internal = topo.vips("region-b", "internal")[0].address
    ca = "/etc/ssl/certs/ca-certificates.crt"  # any CA file: the server never gets as far as TLS
    url = (url.replace("mysql+tlspymysql", f"mysql+{driver}").replace(f"@{internal}:3306", f"@127.0.0.1:{port}")
           .replace("/etc/keystone/galera-ca.pem", ca))
    engine = sqlalchemy.create_engine(url)
    with pytest.raises(sqlalchemy.exc.OperationalError) as err:
        engine.connect()
    thread.join(15)
    if driver == "tlspymysql":
        assert "does not offer TLS" in str(err.value) and "no credentials were sent" in str(err.value)
        assert received == [b""]
    else:
        assert b"keystone" in received[0]  # the login went out in clear


def test_the_keystone_db_driver_refuses_a_url_without_a_ca():
    import pymysql
    dbtls = _dbtls()
    port, thread, received = _fake_mysql_without_tls()
    with pytest.raises(pymysql.err.OperationalError, match="names no CA"):
        dbtls.connect(host="127.0.0.1", port=port, user="keystone", password="x", connect_timeout=5)
    thread.join(15)
    assert received == [b""]


def test_every_keystone_entry_point_loads_the_tls_driver(topo, secrets):
    """The API (WSGI file) and keystone-manage register the driver before Keystone reads its
    configuration; keystone-node connects with the same class."""
    from keystone_multiregion.roles.keystone import DBTLS_MODULE, KEYSTONE_MANAGE
    files = _files(topo, "keystone-region-a-1", secrets)
    assert files[DBTLS_MODULE].content == (AGENTS / "keystone_dbtls.py").read_text()
    assert files[KEYSTONE_MANAGE].permissions == "0755"
    for path in (WSGI_FILE, KEYSTONE_MANAGE):
        text = files[path].content
        assert text.index("keystone_dbtls.register()") < text.index("from keystone")


def test_keystone_node_uses_the_shipped_paths_of_the_tls_driver(topo, secrets):
    """keystone-node names the same keystone-manage and driver module the role ships."""
    from keystone_multiregion.roles.keystone import DBTLS_MODULE, KEYSTONE_MANAGE
    text = (AGENTS / "keystone-node.py").read_text()
    assert f'KEYSTONE_MANAGE = "{KEYSTONE_MANAGE}"' in text and f'DBTLS_MODULE = "{DBTLS_MODULE}"' in text
    assert '["keystone-manage"' not in text and "pymysql.connect(" not in text


# -- bootstrap once per deployment ------------------------------------------------------------
class _FakeDB:
    """Stands in for Keystone's database connection: a bootstrap table, as MariaDB would hold it."""

    def __init__(self, rows=()):
        self.rows, self.statements = list(rows), []

    def __call__(self):
        return self

    def cursor(self):
        db = self

        class Cursor:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def execute(self, sql, args=()):
                db.statements.append(sql)
                if sql.startswith("INSERT IGNORE") and not db.rows:
                    db.rows.append((args[0], "2026-12-03 00:00:00", args[1]))

            def fetchone(self):
                return db.rows[0] if db.rows else None
        return Cursor()

    def close(self):
        pass


@pytest.mark.parametrize("recorded", [False, True])
def test_bootstrap_runs_once_per_deployment_and_the_password_file_goes(tmp_path, monkeypatch, recorded):
    """The first bootstrap records itself in the database; a rebuilt node (or any later run)
    finds the record and never calls keystone-manage bootstrap (it would re-enable admin and
    reset its password). Either way the password file does not stay on the node."""
    tool = _tool()
    db = _FakeDB([("keystone", "2026-01-01 00:00:00", "keystone-region-a-1")] if recorded else [])
    monkeypatch.setattr(tool, "db_connect", db)
    password_file = tmp_path / "bootstrap-admin-password"
    password_file.write_text("s3cret\n")
    pushed = tmp_path / "key-digests.json"
    pushed.write_text("{}")
    monkeypatch.setattr(tool, "ADMIN_PASSWORD_FILE", str(password_file))
    monkeypatch.setattr(tool, "PUSHED", str(pushed))
    monkeypatch.setattr(tool, "facts", lambda: {"name": "keystone-region-a-1", "region": "region-a",
                                                "deployment": "keystone", "keystone_bootstrap": True})
    calls = []
    monkeypatch.setattr(tool, "_manage", lambda *argv, **kw: calls.append((argv, kw.get("env"))))
    assert tool.cmd_bootstrap(types.SimpleNamespace(timeout=5)) == 0
    commands = [argv[0] for argv, _ in calls]
    if recorded:
        assert commands == ["db_sync"]  # never bootstrap again
    else:
        assert commands == ["db_sync", "bootstrap"]
        assert calls[1][1] == {"OS_BOOTSTRAP_PASSWORD": "s3cret"}  # in the environment, never argv
        assert db.rows and db.rows[0][2] == "keystone-region-a-1"
    assert not password_file.exists()


def test_the_bootstrap_password_is_written_at_first_boot_only_never_pushed(topo, secrets):
    from keystone_multiregion import push
    rendered = render_node(topo, "keystone-region-a-1", secrets)
    assert ADMIN_PASSWORD_FILE in {f.path for f in rendered.files}  # cloud-init, first boot
    assert ADMIN_PASSWORD_FILE not in {f["path"] for f in push.payload(topo, rendered)["files"]}


def test_wsgi_forward_sends_the_request_to_the_core_over_http(monkeypatch):
    """forward() for real, against a loopback server standing for the region's internal
    endpoint: method, path, query, body and the client's headers arrive with the routing
    header; a header whose value is not a string is left out (a Keystone-set None broke
    the first lab run of R0: TypeError in http.client, connection closed)."""
    import http.server
    import threading
    got = {}

    class Core(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            got.update(path=self.path, headers=dict(self.headers),
                       body=self.rfile.read(int(self.headers["Content-Length"])))
            data = b'{"project": {}}'
            self.send_response(201)
            self.send_header("X-Keystone-Region", "lab-a")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Core)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("KEYSTONE_MULTIREGION_WRITE_ELSEWHERE", f"http://127.0.0.1:{server.server_port}")
        module = _wsgi_module(lambda environ, start_response: [])
        status, headers, body = module.forward(
            {"REQUEST_METHOD": "POST", "PATH_INFO": "/v3/projects", "QUERY_STRING": "a=1",
             "CONTENT_TYPE": "application/json", "HTTP_X_AUTH_TOKEN": "t", "HTTP_X_PROJECT_ID": None},
            b'{"project": {"name": "p"}}')
    finally:
        server.shutdown()
        server.server_close()
    assert status == "201 Created" and body == b'{"project": {}}'
    assert dict(headers)[module.WRITTEN_BY_HEADER] == "lab-a"
    assert got["path"] == "/v3/projects?a=1" and got["body"] == b'{"project": {"name": "p"}}'
    assert got["headers"]["X-Auth-Token"] == "t" and got["headers"][module.WRITE_ELSEWHERE_HEADER] == "1"
    assert "X-Project-Id" not in got["headers"]
