"""The rollout gate (keystone_multiregion/gate.py) against a loopback HTTPS server that
plays a region's public endpoint: it answers with the headers the proxies add, as told."""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from keystone_multiregion import gate, pki
from keystone_multiregion.__main__ import main
from keystone_multiregion.roles.proxy import NODE_HEADER, REGION_HEADER

HOST = "identity.region-a.example.com"


class Endpoint:
    """A TLS server on 127.0.0.1 with a certificate for HOST. `answer(n, path)` gives the
    n-th request's (status, headers); every request is recorded."""

    def __init__(self, tmp_path, answer):
        ca_cert, ca_key = pki.make_ca("gate test")
        cert, key = pki.issue(ca_cert, ca_key, HOST, "127.0.0.1")
        (tmp_path / "ca.pem").write_text(ca_cert)
        (tmp_path / "server.pem").write_text(cert + key)
        self.ca = str(tmp_path / "ca.pem")
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                endpoint.requests.append({"path": self.path, "host": self.headers.get("Host")})
                status, headers = answer(len(endpoint.requests), self.path)
                body = b'{"version": {}}'
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tmp_path / "server.pem"))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://{HOST}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint(tmp_path):
    made = []

    def make(answer):
        made.append(Endpoint(tmp_path, answer))
        return made[-1]
    yield make
    for e in made:
        e.close()


def named(region, node):
    return {REGION_HEADER: region, NODE_HEADER: node}


def itself(n, path):
    return 200, named("region-a", f"keystone-region-a-{n % 2 + 1}")


def run(e, **kw):
    kw.setdefault("samples", 3)
    return gate.run("region-a", e.url, ["127.0.0.1"], e.ca, **kw)


def test_a_region_answering_itself_passes_and_says_who_answered(endpoint):
    e = endpoint(itself)
    ok, line = run(e)
    assert ok, line
    assert line.startswith("region-a serves by itself: 6 of 6 answers")
    assert "keystone-region-a-1 x3" in line and "keystone-region-a-2 x3" in line and "127.0.0.1" in line
    # 3 samples of each path, the endpoint's host name in Host (and SNI: the certificate verified).
    assert [r["path"] for r in e.requests] == ["/v3", "/healthcheck"] * 3
    assert {r["host"] for r in e.requests} == {f"{HOST}:{e.port}"}


def test_answers_from_another_region_fail_naming_it(endpoint):
    """The region's Keystone nodes are dead: its proxies' backups answer, named after the
    other region by that region's proxies. HTTP 200 is not enough."""
    e = endpoint(lambda n, path: (200, named("region-a", "keystone-region-a-1") if n < 4
                                  else named("region-b", "keystone-region-b-2")))
    ok, line = run(e)
    assert not ok
    assert "answered by region-b (node keystone-region-b-2), not by region-a itself" in line
    assert "GET " + e.url + "/healthcheck at 127.0.0.1" in line  # the 4th request: the 2nd sample
    assert len(e.requests) == 4  # the round stops at the first answer that fails
    assert "\n" not in line


def test_an_answer_without_the_header_fails(endpoint):
    e = endpoint(lambda n, path: (200, {}))
    ok, line = run(e)
    assert not ok and f"HTTP 200 without {REGION_HEADER}" in line and "\n" not in line


def test_an_error_status_from_the_region_itself_fails(endpoint):
    e = endpoint(lambda n, path: (503, named("region-a", "keystone-region-a-1")) if path == "/healthcheck"
                 else itself(n, path))
    ok, line = run(e)
    assert not ok and "/healthcheck at 127.0.0.1 answered HTTP 503 (from region-a/keystone-region-a-1)" in line


def test_a_certificate_the_ca_does_not_verify_fails(endpoint, tmp_path):
    e = endpoint(itself)
    other_ca, _ = pki.make_ca("someone else")
    (tmp_path / "other.pem").write_text(other_ca)
    ok, line = gate.run("region-a", e.url, ["127.0.0.1"], str(tmp_path / "other.pem"), samples=1)
    assert not ok and "no answer" in line and "CERTIFICATE_VERIFY_FAILED" in line
    assert e.requests == []


def test_nothing_listening_fails():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the gate asks: nobody listens there
    ok, line = gate.run("region-a", f"http://127.0.0.1:{port}", samples=1, timeout=5)
    assert not ok and "no answer (ConnectionRefusedError" in line


class FakeTime:
    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_wait_repeats_failed_rounds_until_the_region_serves(endpoint):
    """New VMs boot for a while: rounds are repeated every --interval until --wait."""
    e = endpoint(lambda n, path: itself(n, path) if n > 2 else (503, {}))
    t, logged = FakeTime(), []
    ok, line = run(e, samples=2, wait=60, interval=15, clock=t.clock, sleep=t.sleep, log=logged.append)
    assert ok, line
    assert t.slept == [15, 15] and len(logged) == 2 and "HTTP 503" in logged[0]
    assert len(e.requests) == 2 + 4  # two failed rounds of one request each, then a full round


def test_the_gate_is_bounded_in_rounds_and_requests(endpoint):
    e = endpoint(lambda n, path: (200, named("region-c", "keystone-region-c-1")))
    t = FakeTime()
    ok, line = run(e, samples=50, wait=60, interval=15, clock=t.clock, sleep=t.sleep, log=lambda s: None)
    assert not ok and "answered by region-c" in line and line.endswith("(still after 60 s)")
    assert t.slept == [15] * 4 and len(e.requests) == 5
    e2 = endpoint(lambda n, path: (200, named("region-c", "keystone-region-c-1")))
    ok, _ = run(e2, samples=50, clock=t.clock, sleep=t.sleep)  # no --wait: one round
    assert not ok and len(e2.requests) == 1


def test_the_command_line(endpoint, capsys):
    e = endpoint(itself)
    # Neither the topology nor a stack is needed.
    argv = ["--topology", "/nonexistent/topology.yaml", "gate", "--region", "region-a", "--url", e.url,
            "--address", "127.0.0.1", "--ca", e.ca, "--samples", "2"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith("region-a serves by itself: 4 of 4") and err == ""
    assert main([*argv[:4], "region-b", *argv[5:]]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("error: region-b: GET ") and "answered by region-a" in err and "rollout stops" in err


@pytest.mark.parametrize("args, option", [
    (["--samples", "0"], "--samples 0: give 1 to 100"),
    (["--samples", "1000"], "--samples 1000: give 1 to 100"),
    (["--wait", "-1"], "--wait -1.0: give 0 to 3600"),
    (["--interval", "0"], "--interval 0.0: give 1 to 600"),
    (["--timeout", "0"], "--timeout 0.0: give more than 0"),
    (["--url", "ftp://x"], "--url 'ftp://x': give the region's public endpoint"),
    (["--url", "http://x", "--ca", "ca.pem"], "--ca ca.pem: only for an https:// --url"),
    (["--ca", "/nonexistent/ca.pem"], "--ca /nonexistent/ca.pem: not a readable PEM CA bundle"),
])
def test_bad_arguments_fail_with_one_line_naming_the_option(args, option, capsys):
    argv = ["gate", "--region", "region-a", "--url", "https://identity.region-a.example.com", *args]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"error: {option}"), err
