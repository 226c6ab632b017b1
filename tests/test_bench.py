"""The bench's functional core (lab/bench.py): percentiles, the WAN bytes per request with
the idle traffic subtracted, the targets judged from a report, the summary and the plots.
The lab run itself is tests/lab/test_lab_bench.py."""

from __future__ import annotations


from lab import bench


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1..100
    p = bench.percentiles(values[::-1])
    assert (p["n"], p["p50"], p["p95"], p["p99"], p["max"], p["mean"]) == (100, 50.0, 95.0, 99.0, 100.0, 50.5)
    assert bench.percentiles([7.0])["p99"] == 7.0
    assert bench.percentiles([])["p50"] is None


def test_wan_bytes_subtract_the_idle_rate_over_the_same_time():
    # 10 s idle: 5000 bytes (500/s); 4 s of requests: 2000 idle + 8000 from 100 requests
    assert bench.wan_bytes_per_request(10000, 4.0, 5000, 10.0, 100) == 80.0
    # Less than idle (the heartbeats vary): never below zero.
    assert bench.wan_bytes_per_request(1500, 4.0, 5000, 10.0, 100) == 0.0
    assert bench.wan_bytes_per_request(1500, 4.0, 5000, 10.0, 0) is None


def _report(**over) -> dict:
    run = lambda p99_in, p99_one, wan: {  # noqa: E731
        "in_region": {"p50": 5.0, "p95": 8.0, "p99": p99_in, "wan_bytes_per_validation": wan, "connections": 1,
                      "n": 1000, "wan_path_bytes_per_validation": wan},
        "one_region": {"p50": 101.0, "p95": 105.0, "p99": p99_one, "wan_bytes_per_validation": 2300.0,
                       "connections": 1, "n": 250, "wan_path_bytes_per_validation": 570.0},
        "throughput": {"1": {"per_s": 150.0, "p50": 6.0, "p99": 9.0}, "4": {"per_s": 300.0, "p50": 12.0, "p99": 30.0}},
        "token_issue": {"p50": 60.0}, "project_create": {"p50": 240.0}, "commit": {"p50": 110.0},
        "farthest_voter_rtt_ms": 100.0}
    report = {"started": "2026-12-06 08:00:00 UTC", "machine": "2 CPUs, 24 GB", "wan_mode": "nfqueue/in",
              "wan_latency_ms": 50, "cold_start_s": 62.5, "memory_mb_per_region": {"lab-a": 900},
              "runs": {"0": run(12.0, 14.0, 0.0), "50": run(20.0, 140.0, 0.0)}}
    report.update(over)
    return report


def test_targets_are_judged_from_the_report():
    got = {t["name"]: t for t in bench.targets(_report())}
    assert [t["name"] for t in bench.targets(_report())] == [t[0] for t in bench.TARGETS]
    assert got[bench.TARGETS[0][0]]["met"] is True and got[bench.TARGETS[0][0]]["measured"] == 0.0
    assert got[bench.TARGETS[1][0]]["measured"] == 7.0 and got[bench.TARGETS[1][0]]["met"] is True
    assert got[bench.TARGETS[2][0]]["measured"] == 12.0 and got[bench.TARGETS[2][0]]["met"] is True
    assert got[bench.TARGETS[3][0]]["measured"] == 1.1 and got[bench.TARGETS[3][0]]["met"] is True
    assert got[bench.TARGETS[4][0]]["measured"] == 62.5 and got[bench.TARGETS[4][0]]["met"] is False
    slow = _report()
    slow["runs"]["50"]["in_region"]["p99"] = 70.0  # 2x, not 5x
    slow["runs"]["50"]["in_region"]["wan_path_bytes_per_validation"] = 12.5
    got = {t["name"]: t for t in bench.targets(slow)}
    assert got[bench.TARGETS[1][0]]["met"] is False and got[bench.TARGETS[0][0]]["met"] is False


def test_the_background_noise_is_how_far_two_idle_windows_differ_per_request():
    assert bench.wan_noise_per_request(50000, 44000, 10.0, 5.0, 100) == 30.0
    assert bench.wan_noise_per_request(50000, 44000, 10.0, 5.0, 0) is None


def test_a_figure_not_measured_is_said_so_not_met():
    report = _report()
    del report["runs"]["50"]["commit"]
    got = {t["name"]: t for t in bench.targets(report)}
    assert got[bench.TARGETS[3][0]]["measured"] is None and got[bench.TARGETS[3][0]]["met"] is None
    report["targets"] = bench.targets(report)
    assert "| not measured |" in bench.markdown(report)


def test_summary_and_plots(tmp_path):
    report = _report()
    report["targets"] = bench.targets(report)
    text = bench.markdown(report)
    assert "| 50 ms | in-region (lab-b client, lab-b VIP) | 5.0 | 8.0 | 20.0 | 0.0 / 0.0 | 1 / 1000 |" in text
    assert "| 50 ms | 60.0 | 240.0 | 110.0 | 100.0 |" in text
    assert "**missed**" in text  # the cold start
    files = bench.plots(report, tmp_path)
    assert files == ["validation-latency.png", "throughput.png"]
    for f in files:
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_and_sst_in_the_summary_and_plots(tmp_path):
    report = _report(
        scaling={"concurrency": 16, "runs": [
            {"processes": 1, "nodes": 1, "per_s": 70.0, "p99": 300.0, "failed": 0},
            {"processes": 1, "nodes": 2, "per_s": 95.0, "p99": 250.0, "failed": 0},
            {"processes": 2, "nodes": 1, "per_s": 90.0, "p99": 260.0, "failed": 0},
            {"processes": 2, "nodes": 2, "per_s": 99.0, "p99": 240.0, "failed": 0}]},
        sst={"joiner": "galera-lab-c-1", "runs": [
            {"added_mb": 0, "datadir_mb": 150.0, "sst_s": 14.0, "transfer": "SST"},
            {"added_mb": 100, "datadir_mb": 260.0, "sst_s": 19.5, "transfer": "SST"}]})
    report["targets"] = bench.targets(report)
    text = bench.markdown(report)
    assert "| uwsgi processes per Keystone node (lab-b, 0 ms, concurrency 16) | 1 Keystone node | 2 Keystone nodes |" \
        in text
    assert "| 2 | 90.0/s (p99 260.0 ms) | 99.0/s (p99 240.0 ms) |" in text
    assert "| 100 | 260.0 | 19.5 | SST |" in text
    files = bench.plots(report, tmp_path)
    assert files == ["validation-latency.png", "throughput.png", "scaling.png", "sst.png"]
    for f in files:
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_bench_lab_has_two_keystone_nodes_in_the_clients_region():
    import yaml
    from keystone_multiregion.topology import load_topology
    from lab.deployment import LAB_TOPOLOGY
    data = yaml.safe_load(open(LAB_TOPOLOGY))
    topo = load_topology(bench.bench_topology(data))
    assert [len(topo.nodes(r.name, "keystone")) for r in topo.regions] == [1, 2, 1]
    assert data["regions"][1].get("roles") is None  # the lab's own topology is untouched
    # Monitoring at production's defaults, not the lab's every-second scrapes.
    assert (topo.monitoring.scrape_interval_s, topo.monitoring.node_metrics_interval_s) == (15, 15)
    assert data["monitoring"]["scrape_interval_s"] == 1


class _Server:
    """A TLS HTTP/1.1 server on loopback for identity.test; `close` answers like uwsgi with
    rem-header = Content-Length (no length: the body ends with the connection)."""

    def __init__(self, tmp_path, close: bool, tls: bool = True):
        import http.server
        import ssl
        import threading
        from keystone_multiregion import pki
        ca_cert, ca_key = pki.make_ca("bench test CA")
        cert, key = pki.issue(ca_cert, ca_key, "identity.test", "127.0.0.1")
        (tmp_path / "ca.pem").write_text(ca_cert)
        (tmp_path / "server.pem").write_text(cert + key)
        self.ca, self.connections, self.bodies = str(tmp_path / "ca.pem"), [], []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                outer.connections.append(self.client_address)

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    outer.bodies.append(self.rfile.read(length).decode())
                payload = b'{"token": {}}'
                self.send_response(200)
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(tmp_path / "server.pem"))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def run(self, **cfg) -> dict:
        import json
        import subprocess
        import sys
        base = {"mode": "http", "address": "127.0.0.1", "port": self.port, "hostname": "identity.test",
                "ca": self.ca, "method": "GET", "path": "/v3/auth/tokens", "headers": {"X-Auth-Token": "t"},
                "count": 40, "concurrency": 1, "duration": 30, "warmup": 2}
        out = subprocess.run([sys.executable, str(bench.CLIENT)], input=json.dumps({**base, **cfg}) + "\n",
                             capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


def test_the_client_keeps_its_connection_and_counts_every_one_the_server_closes(tmp_path):
    kept = _Server(tmp_path, close=False)
    r = kept.run()
    assert (r["requests"], r["statuses"], r["connections"], r["closed_by_server"]) == (40, {"200": 40}, 1, 0)
    assert len(kept.connections) == 1  # the warm-up's connection served everything
    closing = _Server(tmp_path, close=True)
    r = closing.run(concurrency=4)
    assert (r["requests"], r["statuses"], r["closed_by_server"]) == (40, {"200": 40}, 40)
    # The connections the measured requests used: a new one each (the warm-ups' not counted).
    assert r["connections"] == 40 and len(closing.connections) == 4 * 2 + 40


def test_the_client_stops_at_its_count_and_names_are_unique_per_request(tmp_path):
    server = _Server(tmp_path, close=False)
    r = server.run(method="POST", path="/v3/projects", body={"project": {"name": "b-{seq}"}}, count=7, warmup=0)
    assert r["requests"] == 7
    assert sorted(server.bodies) == sorted(f'{{"project": {{"name": "b-{i}"}}}}' for i in range(7))


def test_failovers_are_judged_by_their_slowest_run_and_every_failed_request():
    assert bench.spread([2.5, None, 1.0, 4.0]) == {"min": 1.0, "median": 2.5, "max": 4.0, "runs": 4}
    report = _report(failovers={
        "HAProxy dies on the VIP holder": {"first_answer_s": bench.spread([2.0, 2.4, 2.2]), "failed": 31,
                                           "requests": 420},
        "keepalived stops on the VIP holder": {"first_answer_s": bench.spread([1.0, 1.1, 1.0]), "failed": 0,
                                               "requests": 400}})
    got = {t["name"]: t for t in bench.targets(report)}
    assert got["failover: HAProxy dies on the VIP holder: first answer (slowest run)"]["met"] is True
    assert got["failover: HAProxy dies on the VIP holder: failed idempotent requests (all runs)"]["met"] is False
    assert got["failover: keepalived stops on the VIP holder: failed idempotent requests (all runs)"]["met"] is True
    report["targets"] = bench.targets(report)
    assert "| HAProxy dies on the VIP holder | 2.0 / 2.2 / 2.4 | 31 / 420 | 3 |" in bench.markdown(report)


def test_the_scale_model_uses_the_measured_cost_and_real_round_trips():
    rows = bench.scale_model(1.5, 1.0, sizes=(3, 5))
    three = rows[0]
    assert three["cities"] == ["Paris", "Milan", "Moscow"]
    # Paris's farthest is Moscow (56.4 ms); Milan's is Moscow too (67.1 ms)
    assert (three["best_writer"], three["best_rtt_ms"], three["best_commit_ms"]) == ("Paris", 56.4, 85.6)
    assert (three["worst_writer"], three["worst_rtt_ms"], three["worst_commit_ms"]) == ("Milan", 67.1, 101.6)
    assert rows[1]["worst_rtt_ms"] == 168.5  # Moscow-Dallas once the US joins
    assert bench.city_rtt("Moscow", "Paris") == bench.city_rtt("Paris", "Moscow")
    report = _report()
    report["runs"]["0"]["commit"] = {"p50": 1.0}
    report["runs"]["50"]["commit"] = {"p50": 151.0}
    bench.add_scale(report)
    assert report["scale_commit_per_rtt"] == 1.5 and [r["regions"] for r in report["scale"]] == [3, 5, 7, 9]
    report["targets"] = bench.targets(report)
    assert "| 3 | Paris, Milan, Moscow | Paris: 56.4 ms, 85.6 ms | Milan: 67.1 ms, 101.6 ms |" in bench.markdown(report)


def test_the_client_speaks_plain_http_to_a_keystone_node(tmp_path):
    server = _Server(tmp_path, close=False, tls=False)
    r = server.run(scheme="http", ca=None, count=12)
    assert (r["requests"], r["statuses"], r["connections"]) == (12, {"200": 12}, 1)


def test_readme_shows_the_committed_run_as_the_bench_wrote_it():
    """README's figures are the bench's own summary of docs/bench/report.json, never typed in."""
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    report = json.loads((root / "docs/bench/report.json").read_text())
    summary = (root / "docs/bench/summary.md").read_text()
    assert summary == bench.markdown(report)
    readme = (root / "README.md").read_text()
    start, end = "<!-- bench summary: docs/bench/summary.md -->\n", "<!-- end bench summary -->"
    assert readme[readme.index(start) + len(start):readme.index(end)] == summary
    for plot in report["plots"]:
        assert (root / "docs/bench" / plot).read_bytes()[:4] == b"\x89PNG" and f"docs/bench/{plot}" in readme


def test_a_client_that_asks_for_a_close_opens_a_connection_per_request(tmp_path):
    """As HAProxy meets uwsgi: HTTP/1.1 answers without "Connection: close", then a close."""
    server = _Server(tmp_path, close=False, tls=False)
    r = server.run(scheme="http", ca=None, count=10, headers={"Connection": "close"})
    assert (r["requests"], r["statuses"], r["connections"]) == (10, {"200": 10}, 10)


def test_a_rejoin_is_judged_by_its_time_and_only_when_it_was_an_ist():
    report = _report(rejoin={"region": "lab-c", "held_s": 60, "commits_meanwhile": 200, "rejoin_s": 4.2,
                             "transfer": "IST"})
    got = bench.targets(report)[-1]
    assert (got["name"], got["measured"], got["met"]) == ("a region cut off for 60 s rejoins by IST", 4.2, True)
    report["rejoin"].update(transfer="SST", rejoin_s=3.0)
    got = bench.targets(report)[-1]
    assert (got["measured"], got["met"], got["why"]) == (None, False, "rejoined by SST")
    report["targets"] = bench.targets(report)
    assert "Rejoin: lab-c cut off for 60 s while the others committed 200 writes" in bench.markdown(report)


def _replica(**over) -> dict:
    """The replica comparison's part of a report (--replica), as Bench.replica returns it."""
    validation = lambda p99, path: {"n": 1000, "p50": 14.0, "p95": 22.0, "p99": p99,  # noqa: E731
                                    "wan_path_bytes_per_validation": path, "wan_bytes_per_validation": 0.0,
                                    "wan_noise_per_validation": 40.0}
    rep = {"wan_latency_ms": 50, "wan_mode": "nfqueue/in", "core_region": "lab-b", "region": "lab-r",
           "added_s": 95.2, "user_created_in": "lab-a",
           "core": {"validation": validation(30.0, 0.0), "token_issue": {"p50": 60.0, "p95": 70.0},
                    "project_create": {"p50": 140.0, "p95": 160.0, "statuses": {"201": 30}}},
           "replica": {"validation": validation(33.0, 0.0), "token_issue": {"p50": 61.0, "p95": 72.0},
                       "project_create": {"p50": 520.0, "p95": 600.0, "statuses": {"201": 30}}},
           "commit": {"core_near": {"commit": {"p50": 1.3}}, "core_at_wan": {"commit": {"p50": 105.0},
                                                                            "farthest_voter_rtt_ms": 100.4},
                      "replica_far": {"commit_ms_replica_near": 1.27, "commit_ms_replica_at_distance": 1.65,
                                      "one_way_ms": 50, "commits": 200, "on": "galera-lab-a-1"}},
           "user_seen_after_s": bench.spread([0.31, 0.45, 0.38]), "problems": []}
    rep.update(over)
    return rep


def test_the_replica_region_is_added_to_the_topology_the_bench_lab_runs():
    """--replica: the bench's lab of now (two Keystone nodes in lab-b, production's monitoring,
    uwsgi processes as the scaling run left them) with lab-r of lab/topology-region-r.yaml
    added, and nothing else changed: the change adds one replica region, no vote."""
    import yaml
    from keystone_multiregion import changes
    from keystone_multiregion.topology import load_topology
    from lab.deployment import LAB_TOPOLOGY
    running = bench.bench_topology(yaml.safe_load(open(LAB_TOPOLOGY)))
    running.setdefault("keystone", {})["uwsgi_processes"] = 2
    before = yaml.safe_dump(running)
    data = bench.with_regions_of(running, yaml.safe_load(open(bench.REPLICA_TOPOLOGY)))
    assert yaml.safe_dump(running) == before  # the running lab's data untouched
    old, new = load_topology(running), load_topology(data)
    assert [r.name for r in new.regions] == ["lab-a", "lab-b", "lab-c", "lab-r"]
    assert new.region("lab-r").replica and len(new.nodes("lab-r", "replica")) == 2
    assert [len(new.nodes(r, "keystone")) for r in ("lab-a", "lab-b", "lab-c")] == [1, 2, 1]
    assert new.keystone.uwsgi_processes == 2 and new.monitoring.scrape_interval_s == 15
    steps = changes.plan(old, new)
    assert steps[-1].stack == "lab-r" and not any(s.members for s in steps)
    # Added twice: nothing more.
    assert bench.with_regions_of(data, yaml.safe_load(open(bench.REPLICA_TOPOLOGY))) == data


def test_the_replica_targets_are_judged_only_when_the_run_compared_one():
    plain = bench.targets(_report())
    assert not any(t["name"].startswith("replica region") for t in plain)
    got = {t["name"]: t for t in bench.targets(_report(replica=_replica()))}
    names = [t[0] for t in bench.REPLICA_TARGETS]
    assert [t["name"] for t in bench.targets(_report(replica=_replica()))][-3:] == names
    assert (got[names[0]]["measured"], got[names[0]]["met"]) == (0.0, True)
    assert (got[names[1]]["measured"], got[names[1]]["met"]) == (1.1, True)  # 33 / 30
    assert (got[names[2]]["measured"], got[names[2]]["met"]) == (0.004, True)  # 0.38 ms of a 100 ms round trip
    slow = _replica()
    slow["replica"]["validation"].update(p99=60.0, wan_path_bytes_per_validation=620.0)
    slow["commit"]["replica_far"]["commit_ms_replica_at_distance"] = 101.27  # waited a round trip
    got = {t["name"]: t for t in bench.targets(_report(replica=slow))}
    assert [got[n]["met"] for n in names] == [False, False, False]
    assert got[names[2]]["measured"] == 1.0
    failed = {t["name"]: t for t in bench.targets(_report(replica={"error": "LabError: no"}))}
    assert [(failed[n]["measured"], failed[n]["met"]) for n in names] == [(None, None)] * 3


def test_the_replica_comparison_in_the_summary():
    plain = _report()
    plain["targets"] = bench.targets(plain)
    assert "replica region" not in bench.markdown(plain)  # the committed run's summary stays as it was
    report = _report(replica=_replica())
    report["targets"] = bench.targets(report)
    text = bench.markdown(report)
    assert "| at 50 ms one way | core region (lab-b) | replica region (lab-r) |" in text
    assert "| token validation p50 / p95 / p99 ms (validations) | 14.0 / 22.0 / 30.0 (1000) | " \
           "14.0 / 22.0 / 33.0 (1000) |" in text
    assert "| 0.0 / 0.0 (± 40.0) | 0.0 / 0.0 (± 40.0) |" in text
    assert "| project create p50 / p95 ms (statuses) | 140.0 / 160.0 (201 x30) | 520.0 / 600.0 (201 x30; " \
           "sent on to a core region) |" in text
    assert "| 105.0 p50, 1.3 with every region near" in text and "| 1.65 mean, 1.27 with lab-r near" in text
    assert "| a user created in lab-a seen in the region after, s: min / median / max (runs) | " \
           "- (a member of the synchronous cluster) | 0.31 / 0.38 / 0.45 (3, drill R1) |" in text
    # Before the targets, which judge it.
    assert text.index("replica region (lab-r) |") < text.index("| target | measured | met |") \
        < text.index("| replica region: validation p99 vs a core region's own")
    report = _report(replica={"error": "LabError: the replicas of lab-r are not healthy"})
    report["targets"] = bench.targets(report)
    assert "Core region vs replica region: not measured (LabError: the replicas of lab-r are not healthy)." \
        in bench.markdown(report)
    problems = _report(replica=_replica(problems=["1 validations failed: [200, 503]"]))
    problems["targets"] = bench.targets(problems)
    assert "Replica drills' problems in this run: 1 validations failed: [200, 503]." in bench.markdown(problems)


def test_the_replica_comparison_composes_the_drills_and_the_bench_measurements(monkeypatch):
    """Bench.replica's own logic with the lab left out (every measurement faked): the order of
    latencies, which drill figure lands where, and a report the summary and targets read."""
    from lab import replica_drills
    from lab.drills import DrillResult
    calls = []

    class Drills:
        def __init__(self, dep, log=print):
            pass

        def drill_commit_latency(self, count, ms):
            calls.append(("R5", count, ms))
            return DrillResult("R5", True, {"commits": count, "on": "galera-lab-a-1", "one_way_ms": ms,
                                            "commit_ms_replica_near": 1.27, "commit_ms_replica_at_distance": 1.65})

        def drill_local_validation(self, count):
            calls.append(("R1", count))
            return DrillResult("R1", True, {"user_created_in": "lab-a",
                                            "user_seen_in_replica_region_after_s": 0.3 + len(calls) / 100})
    monkeypatch.setattr(replica_drills, "ReplicaDrills", Drills)
    b = bench.Bench.__new__(bench.Bench)
    b.dep, b.home, b.log, b.quick = None, "lab-b", lambda *_: None, True
    b.set_latency = lambda ms: calls.append(("latency", ms)) or "nfqueue/in"
    b.add_replica_region = lambda path: {"region": "lab-r", "added_s": 90.0, "steps": []}
    near_then_far = iter([1.3, 105.0])
    b.commits = lambda n: calls.append(("commits", n)) or {"commit": {"p50": next(near_then_far)},
                                                           "farthest_voter_rtt_ms": 100.4}
    b.validations = lambda where, count, client_region: calls.append(("validate", where, client_region, count)) \
        or {"n": count, "p50": 14.0, "p95": 22.0, "p99": 30.0, "wan_path_bytes_per_validation": 0.0}
    b.issue_and_create = lambda where, n: {"token_issue": {"p50": 60.0, "p95": 70.0},
                                           "project_create": {"p50": 140.0, "p95": 160.0, "statuses": {"201": n}}}
    rep = b.replica(50)
    assert calls[:3] == [("latency", 0), ("R5", 200, 50), ("commits", 30)]  # R5 with the core near
    assert calls[3:6] == [("latency", 50), ("validate", "lab-b", "lab-b", 1000), ("validate", "lab-r", "lab-r", 1000)]
    assert calls[6:] == [("commits", 30), ("R1", 20), ("R1", 20), ("R1", 20), ("latency", 0)]
    assert rep["commit"]["core_near"]["commit"]["p50"] == 1.3 and rep["commit"]["core_at_wan"]["commit"]["p50"] == 105.0
    assert rep["user_seen_after_s"] == {"min": 0.38, "median": 0.39, "max": 0.4, "runs": 3}
    assert [r["ok"] for r in rep["r1"]] == [True] * 3 and rep["problems"] == []
    report = _report(replica=rep)
    report["targets"] = bench.targets(report)
    assert [t["met"] for t in report["targets"][-3:]] == [True, True, True]
    assert "| 0.38 / 0.39 / 0.4 (3, drill R1) |" in bench.markdown(report)
