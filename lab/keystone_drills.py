"""Keystone drills on the running lab: one identity service across the regions.

Requests go from each region's first proxy (the security groups admit Keystone's port only
from the local proxies) straight to that region's Keystone node, with lab/ksclient.py.
Every wait is bounded in time and count.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import uuid
from pathlib import Path

from keystone_multiregion.roles.keystone import endpoint_urls
from keystone_multiregion.security import PORTS

from .drills import DrillResult, wait_until
from .ksclient import totp

CLIENT = str(Path(__file__).resolve().parent / "ksclient.py")


class KeystoneDrills:
    def __init__(self, dep, through_endpoints: bool = False):
        """Requests go to each region's first Keystone node, or with `through_endpoints` to the
        region's internal endpoint (its proxies), as Keystone's clients in the region use it:
        a replica region's writes reach the core that way only."""
        self.dep = dep
        self.topo = dep.topo
        self.through_endpoints = through_endpoints
        self.regions = [r.name for r in self.topo.regions if self.topo.nodes(r.name, "keystone")]
        self.password = dep.secrets()["keystone_admin_password"]

    # -- helpers ---------------------------------------------------------------------------
    def url(self, region: str) -> str:
        if self.through_endpoints:
            return endpoint_urls(self.topo, region)["internal"]
        return f"http://{self.topo.nodes(region, 'keystone')[0].address}:{PORTS['keystone']}"

    def ks(self, region: str, *args: str, secret: str | None = None) -> dict:
        """ksclient.py in the region's first proxy; `secret` (an argument given as "@stdin")
        travels on stdin, never in argv."""
        proxy = self.topo.nodes(region, "proxy")[0].name
        if args and args[0] == "token" and len(args) > 3 and args[3] not in ("-", "@stdin"):
            # The password on stdin: a command line is visible to every user (`ps`).
            secret, args = args[3], (*args[:3], "@stdin", *args[4:])
        out = self.dep.lab.net.exec(proxy, [sys.executable, CLIENT, *args], timeout=90, check=False,
                                    input=None if secret is None else secret + "\n")
        lines = out.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {"status": None, "error": out.stderr.strip()[-500:]}

    def admin_token(self, region: str) -> str:
        out = self.ks(region, "token", self.url(region), "admin", self.password, "admin")
        if out.get("status") != 201:
            raise RuntimeError(f"admin token in {region}: {out}")
        return out["token"]

    def validate(self, region: str, auth: str, subject: str) -> dict:
        return self.ks(region, "validate", self.url(region), auth, subject)

    def call(self, region: str, method: str, auth: str, path: str, body: dict | None = None,
             secret: bool = False) -> dict:
        """A Keystone API call; a body that carries a secret goes on stdin, never in argv."""
        if secret:
            return self.ks(region, "call", method, self.url(region), auth, path, "@stdin", secret=json.dumps(body))
        args = [method, self.url(region), auth, path] + ([json.dumps(body)] if body is not None else [])
        return self.ks(region, "call", *args)

    # -- drills -----------------------------------------------------------------------------
    def drill_one_identity(self) -> DrillResult:
        """A token issued in the first region validates in every other; a project and a
        user created there are visible everywhere."""
        first, others = self.regions[0], self.regions[1:]
        problems, measured = [], {}
        issued = self.ks(first, "token", self.url(first), "admin", self.password, "admin")
        measured["issue_ms"] = issued.get("ms")
        if issued.get("status") != 201:
            return DrillResult("K1. one identity service", False, measured, [f"token not issued: {issued}"])
        token = issued["token"]
        for region in self.regions:
            cold = self.validate(region, token, token)
            warm = self.validate(region, token, token)
            measured[f"validate_{region}_ms"] = {"cold": cold.get("ms"), "warm": warm.get("ms")}
            if cold.get("status") != 200 or warm.get("status") != 200:
                problems.append(f"{region} did not validate a token from {first}: {cold.get('status')}")
        name = f"drill-{uuid.uuid4().hex[:8]}"
        project = self.call(first, "POST", token, "/v3/projects", {"project": {"name": name, "domain_id": "default"}})
        user = self.call(first, "POST", token, "/v3/users",
                         {"user": {"name": name, "password": "drill-" + name, "domain_id": "default"}})
        if project.get("status") != 201 or user.get("status") != 201:
            problems.append(f"creating a project/user in {first}: {project.get('status')}/{user.get('status')}")
        for region in others:
            seen_p = self.call(region, "GET", token, f"/v3/projects?name={name}")
            seen_u = self.call(region, "GET", token, f"/v3/users?name={name}")
            found = (len((seen_p.get("body") or {}).get("projects", [])), len((seen_u.get("body") or {}).get("users", [])))
            measured[f"seen_in_{region}"] = found
            if found != (1, 1):
                problems.append(f"{region} sees {found[0]} projects and {found[1]} users named {name}")
        return DrillResult("K1. a token and new users/projects from one region work in every region", not problems,
                           measured, problems)

    def drill_partition(self, galera_drills) -> DrillResult:
        """Cut the last region off: it keeps validating tokens; writes there fail; after the
        heal everything agrees."""
        cut = self.regions[-1]
        first = self.regions[0]
        token = self.admin_token(first)
        self.validate(cut, token, token)  # warm its cache, as traffic would have
        hosts = [n.name for n in self.topo.nodes(cut)]
        peers = [r.cidr for r in self.topo.regions if r.name != cut]
        problems, measured = [], {"partitioned": cut}
        self.dep.lab.net.partition(hosts, peers=peers)
        try:
            went = galera_drills.wait(lambda: galera_drills.status(cut).get("wsrep_cluster_status") == "non-Primary",
                                      90)
            if not went:
                problems.append(f"{cut}'s Galera node did not leave the Primary component")
            v = self.validate(cut, token, token)
            measured["validate_cached"] = v.get("status")
            fresh = self.admin_token(first)  # issued in the majority, never seen by the cut region
            v2 = self.validate(cut, token, fresh)
            measured["validate_uncached"] = {"status": v2.get("status"), "ms": v2.get("ms")}
            if v.get("status") != 200 or v2.get("status") != 200:
                problems.append(f"{cut} stopped validating tokens: cached {v.get('status')}, uncached {v2.get('status')}")
            issued = self.ks(cut, "token", self.url(cut), "admin", self.password, "admin")
            measured["issue_in_partition"] = issued.get("status")
            name = f"drill-{uuid.uuid4().hex[:8]}"
            create = self.call(cut, "POST", token, "/v3/projects", {"project": {"name": name, "domain_id": "default"}})
            measured["create_project_in_partition"] = {"status": create.get("status"),
                                                       "error": (create.get("body") or {}).get("error", {})
                                                       .get("message") if isinstance(create.get("body"), dict) else
                                                       create.get("body")}
            if create.get("status") != 503 or "cut off from the majority" not in json.dumps(create.get("body")):
                problems.append(f"creating a project in {cut} did not fail with the clear 503: {create}")
            during = f"drill-{uuid.uuid4().hex[:8]}"
            made = self.call(first, "POST", fresh, "/v3/projects", {"project": {"name": during, "domain_id": "default"}})
            if made.get("status") != 201:
                problems.append(f"the majority could not create a project: {made.get('status')}")
        finally:
            self.dep.lab.net.heal(hosts)
        back = galera_drills.wait(lambda: galera_drills.synced_everywhere(), 120)
        if not back:
            problems.append("Galera did not settle after the heal")
        seen = self.call(cut, "GET", self.admin_token(cut), f"/v3/projects?name={during}")
        measured["after_heal_sees_majority_project"] = len((seen.get("body") or {}).get("projects", []))
        if measured["after_heal_sees_majority_project"] != 1:
            problems.append(f"after the heal {cut} does not see the project made during the partition")
        if issued.get("token"):
            late = self.validate(first, fresh, issued["token"])
            measured["token_from_partition_valid_after_heal"] = late.get("status")
        return DrillResult("K2. a cut region keeps validating and refuses writes; the heal reconciles",
                           not problems, measured, problems)

    def _totp_user(self, region: str) -> tuple[str, str, str, list]:
        """A new user with the member role on admin, a TOTP credential and a password+totp
        rule, created in `region`: (name, password, TOTP secret, the three setup statuses)."""
        token = self.admin_token(region)
        name = f"mfa-{uuid.uuid4().hex[:8]}"
        password = "pw-" + uuid.uuid4().hex
        secret = base64.b32encode(os.urandom(20)).decode().rstrip("=")
        user = self.call(region, "POST", token, "/v3/users",
                         {"user": {"name": name, "password": password, "domain_id": "default"}})
        uid = ((user.get("body") or {}).get("user") or {}).get("id")
        projects = self.call(region, "GET", token, "/v3/projects?name=admin")
        pid = projects["body"]["projects"][0]["id"]
        roles = self.call(region, "GET", token, "/v3/roles?name=member")
        rid = roles["body"]["roles"][0]["id"]
        self.call(region, "PUT", token, f"/v3/projects/{pid}/users/{uid}/roles/{rid}")
        cred = self.call(region, "POST", token, "/v3/credentials",
                         {"credential": {"type": "totp", "user_id": uid, "blob": secret}})
        rule = self.call(region, "PATCH", token, f"/v3/users/{uid}",
                         {"user": {"options": {"multi_factor_auth_enabled": True,
                                               "multi_factor_auth_rules": [["password", "totp"]]}}})
        return name, password, secret, [user.get("status"), cred.get("status"), rule.get("status")]

    def drill_mfa(self) -> DrillResult:
        """A user with a TOTP credential and a password+totp rule: the password alone gets a
        receipt (401); a current code completes it; a wrong code is refused; a receipt from
        one region is accepted in another."""
        first, other = self.regions[0], self.regions[-1]
        problems, measured = [], {}
        name, password, secret, measured["setup"] = self._totp_user(first)
        if measured["setup"] != [201, 201, 200]:
            return DrillResult("K3. multi-factor authentication", False, measured, [f"setup failed: {measured}"])
        alone = self.ks(first, "token", self.url(first), name, password, "admin")
        measured["password_alone"] = alone.get("status")
        if alone.get("status") != 401 or not alone.get("receipt"):
            problems.append(f"the password alone was not stopped with a receipt: {alone.get('status')}")
        both = self.ks(first, "token", self.url(first), name, password, "admin", "--passcode", totp(secret))
        measured["password_and_totp"] = both.get("status")
        if both.get("status") != 201:
            problems.append(f"password and a current code were refused: {both.get('status')}")
        wrong = str((int(totp(secret)) + 1) % 1000000).zfill(6)
        bad = self.ks(first, "token", self.url(first), name, password, "admin", "--passcode", wrong)
        measured["wrong_code"] = bad.get("status")
        if bad.get("status") != 401 or bad.get("token"):
            problems.append(f"a wrong code was not refused: {bad.get('status')}")
        if alone.get("receipt"):
            # The receipt is Fernet-encrypted with the shared keys: another region accepts it.
            remote = self.ks(other, "token", self.url(other), name, "-", "admin", "--passcode", totp(secret),
                             "--receipt", alone["receipt"])
            measured[f"receipt_from_{first}_plus_totp_in_{other}"] = remote.get("status")
            if remote.get("status") != 201:
                problems.append(f"{other} refused {first}'s receipt with a current code: {remote.get('status')}")
        return DrillResult("K3. multi-factor authentication with TOTP", not problems, measured, problems)

    def drill_memcached_down(self, samples: int = 3) -> DrillResult:
        """One memcached node of the first region killed: the API keeps answering; the added
        latency is measured; memcached is started again afterwards."""
        from .layers import memcached as mc_layer

        region = self.regions[0]
        token = self.admin_token(region)
        subjects = [self.admin_token(region) for _ in range(samples)]
        for s in subjects:
            self.validate(region, token, s)
        warm = sorted(self.validate(region, token, s).get("ms") or 0 for s in subjects)[samples // 2]
        node = self.topo.nodes(region, "memcached")[0]
        self.dep.lab.procs.kill(node.name, "memcached")
        problems, results = [], []
        try:
            for s in subjects:
                results.append(self.validate(region, token, s))
            issued = self.ks(region, "token", self.url(region), "admin", self.password, "admin")
        finally:
            mc_layer.start(self.dep, [node], lambda *_: None)
        failed = [r for r in results if r.get("status") != 200]
        without = sorted(r.get("ms") or 0 for r in results)[samples // 2]
        measured = {"killed": node.name, "validate_warm_ms": warm, "validate_without_memcached_ms": without,
                    "added_ms": round(without - warm, 1), "failed": len(failed),
                    "issue_without_memcached": issued.get("status"), "issue_ms": issued.get("ms")}
        if failed or issued.get("status") != 201:
            problems.append(f"the API failed without memcached: {[r.get('status') for r in failed]}, "
                            f"issue {issued.get('status')}")
        return DrillResult("K4. a dead memcached node costs latency, not answers", not problems, measured, problems)

    def drill_revocation(self) -> DrillResult:
        """Revoke a token in the first region; measure how long another region, which had it
        cached, still accepts it. Bound: [token] cache_time (keystone.token_cache_s)."""
        first, other = self.regions[0], self.regions[-1]
        bound = self.topo.keystone.token_cache_s
        admin = self.admin_token(first)
        victim = self.admin_token(first)
        self.validate(other, admin, victim)  # cached in the other region
        self.validate(first, admin, victim)
        t = time.monotonic()
        gone_first = self._revoke(first, admin, victim)
        still = []

        def rejected():
            v = self.validate(other, admin, victim)
            still.append(v.get("status"))
            return v.get("status") == 404

        done = wait_until(rejected, timeout=bound + 60, interval=1.0)
        elapsed = round(time.monotonic() - t, 1)
        measured = {"bound_s": bound, "revoked_in": first, "revoke_status": gone_first,
                    "accepted_in_other_region_for_s": elapsed if done else None, "checks": len(still)}
        problems = []
        if gone_first not in (204, 200):
            problems.append(f"revocation in {first} answered {gone_first}")
        if not done:
            problems.append(f"{other} still accepted the revoked token after {bound + 60}s")
        # How long against the bound is reported, not judged: a busy machine's checks take longer.
        measured["within_bound"] = done and elapsed <= bound
        return DrillResult("K5. a revoked token stops validating in other regions within the bound", not problems,
                           measured, problems)

    def _record_key_state(self, repo: str, sequence: list[str], rotations: int) -> None:
        """Kept next to the lab's secrets, readable by root only (it holds keys)."""
        path = self.dep.drill_keys_path
        state = json.loads(path.read_text()) if path.exists() else {}
        state[repo] = [sequence, rotations]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh)

    def _fernet_state(self) -> tuple[list[str], int]:
        return self.dep.key_state("fernet_keys")

    def _credential_state(self) -> tuple[list[str], int]:
        return self.dep.key_state("credential_keys")

    def _repos(self, fernet: dict | None = None, credential: dict | None = None) -> dict:
        """Both repositories as pushed: the given ones, else what the nodes hold now."""
        current = self.dep.key_repositories()
        return {"fernet_keys": current["fernet_keys"] if fernet is None else fernet,
                "credential_keys": current["credential_keys"] if credential is None else credential}

    def drill_rotation(self) -> DrillResult:
        """One Fernet rotation rolled out region by region as the stacks do it: the repository
        computed once (keys.py), pushed to each running node with `keystone-node install-keys`
        (the stack's command, keys on stdin), no node rebuilt or restarted. After each region,
        tokens issued before the rotation and tokens signed by every region so far validate
        in every region, rotated or not."""
        from keystone_multiregion.keys import primary, repository

        from .layers.keystone import push_keys

        sequence, rotations = self._fernet_state()
        current = repository(sequence, rotations, self.topo.keystone.max_active_keys)
        sequence = sequence + [base64.urlsafe_b64encode(os.urandom(32)).decode()]
        rotated = repository(sequence, rotations + 1, self.topo.keystone.max_active_keys)
        before = self.admin_token(self.regions[0])
        tokens = {"before": before}
        problems, measured = [], {"new_primary_was_staged": primary(rotated) == current["0"], "validations": 0,
                                  "push_s": []}
        for region in self.regions:
            for node in self.topo.nodes(region, "keystone"):
                t = time.monotonic()
                out = push_keys(self.dep, node.name, self._repos(rotated), check=False)
                measured["push_s"].append(round(time.monotonic() - t, 2))
                if out.returncode != 0:
                    problems.append(f"push to {node.name} failed: {out.stderr.strip()[-300:]}")
            tokens[f"signed_in_{region}"] = self.admin_token(region)
            for label, token in tokens.items():
                for r in self.regions:
                    status = self.validate(r, token, token).get("status")
                    measured["validations"] += 1
                    if status != 200:
                        problems.append(f"after rotating {region}: token {label} got {status} in {r}")
        self._record_key_state("fernet_keys", sequence, rotations + 1)
        measured["rotated_regions"] = len(self.regions)
        measured["push_s"] = f"{min(measured['push_s'])}-{max(measured['push_s'])}"
        return DrillResult("K6. a Fernet rotation pushed region by region breaks no validation",
                           not problems, measured, problems)

    def drill_key_safety(self) -> DrillResult:
        """What protects the shared keys on a running node: a push that skips a rotation (its
        primary key was never staged there) is refused and changes nothing; a repository
        changed behind the stack's back is reported by the drift check (key-check, and the
        lab's checks); pushing again repairs it, and the region keeps validating."""
        from keystone_multiregion.keys import repository

        from .layers.keystone import key_digests, push_keys

        region = self.regions[-1]
        node = self.topo.nodes(region, "keystone")[0].name
        problems, measured = [], {"node": node}
        sequence, rotations = self._fernet_state()
        held = repository(sequence, rotations, self.topo.keystone.max_active_keys)
        fresh = [base64.urlsafe_b64encode(os.urandom(32)).decode() for _ in range(2)]
        skipped = repository(sequence + fresh, rotations + 2, self.topo.keystone.max_active_keys)
        before = key_digests(self.dep)[node]
        refused = push_keys(self.dep, node, self._repos(skipped), check=False)
        measured["skipped_rotation_exit"] = refused.returncode
        if refused.returncode != 2 or "is not in this node's repository" not in refused.stderr:
            problems.append(f"a push skipping a rotation was not refused: exit {refused.returncode} "
                            f"{refused.stderr.strip()[-300:]}")
        if key_digests(self.dep)[node] != before:
            problems.append("the refused push changed the node's keys")
        # Drift: someone replaces the staged key on the node by hand.
        keydir = self.dep.lab.procs.host_path(node, "/etc/keystone/fernet-keys")
        with open(os.path.join(keydir, "0"), "w") as fh:
            fh.write(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
        check = self.dep.lab.procs.run(node, ["python3", "/usr/local/sbin/keystone-node", "key-check"], check=False)
        measured["key_check_exit_after_tamper"] = check.returncode
        if check.returncode != 1 or "DRIFT: /etc/keystone/fernet-keys differs" not in check.stderr:
            problems.append(f"key-check did not report the drift: exit {check.returncode} {check.stderr.strip()}")
        failing = [c.name for c in self.dep.checks() if not c.ok]
        measured["lab_checks_failing"] = failing
        if f"{node} keys as pushed" not in failing or "key repositories identical on every Keystone node" not in failing:
            problems.append(f"the lab's checks did not report the drifted node: failing {failing}")
        repaired = push_keys(self.dep, node, self._repos(held), check=False)
        check = self.dep.lab.procs.run(node, ["python3", "/usr/local/sbin/keystone-node", "key-check"], check=False)
        measured["key_check_exit_after_push"] = check.returncode
        if repaired.returncode != 0 or check.returncode != 0:
            problems.append(f"pushing again did not repair: {repaired.stderr.strip()[-300:]} {check.stderr.strip()}")
        token = self.admin_token(self.regions[0])
        status = self.validate(region, token, token).get("status")
        measured["validation_after_repair"] = status
        if status != 200:
            problems.append(f"{region} answered {status} validating a token after the repair")
        return DrillResult("K7. skipped rotations are refused, drifted keys are reported and repaired",
                           not problems, measured, problems)

    def drill_push_path(self) -> DrillResult:
        """The key push goes only where it should: from the admin network to a node whose host
        key matches the one the stack pinned. A client pinning another key is refused before
        it sends anything; a host outside admin_cidr (a proxy) cannot reach SSH at all (the
        security group drops it)."""
        from keystone_multiregion.pki import ssh_host_key
        from keystone_multiregion.roles.keystone import install_keys_command

        from .layers.keystone import key_digests
        from .ssh import known_hosts, ssh

        region = self.regions[0]
        node = self.topo.nodes(region, "keystone")[0].name
        problems, measured = [], {"node": node}
        before = key_digests(self.dep)[node]
        impostor = known_hosts(self.dep, override={node: ssh_host_key()["public"]})
        t = time.monotonic()
        wrong = ssh(self.dep, node, install_keys_command(), input="{}", known=impostor, timeout=30)
        measured["wrong_host_key"] = {"exit": wrong.returncode, "s": round(time.monotonic() - t, 2)}
        if wrong.returncode != 255 or "Host key verification failed" not in wrong.stderr:
            problems.append(f"a client pinning another host key was not refused: exit {wrong.returncode} "
                            f"{wrong.stderr.strip()[-300:]}")
        proxy = self.topo.nodes(region, "proxy")[0].name
        t = time.monotonic()
        outside = ssh(self.dep, node, "true", source=proxy, timeout=30)
        measured["from_outside_admin_cidr"] = {"exit": outside.returncode, "s": round(time.monotonic() - t, 2)}
        if outside.returncode != 255 or "timed out" not in outside.stderr:
            problems.append(f"SSH from {proxy} (outside admin_cidr) was not dropped: exit {outside.returncode} "
                            f"{outside.stderr.strip()[-300:]}")
        t = time.monotonic()
        ok = ssh(self.dep, node, "true", timeout=30)
        measured["from_admin_network"] = {"exit": ok.returncode, "s": round(time.monotonic() - t, 2)}
        if ok.returncode != 0:
            problems.append(f"SSH from the admin network failed: {ok.stderr.strip()[-300:]}")
        if key_digests(self.dep)[node] != before:
            problems.append("the node's keys changed")
        return DrillResult("K8. the key push reaches only the pinned node, only from the admin network",
                           not problems, measured, problems)

    def drill_credential_rotation(self) -> DrillResult:
        """The credential keys (they encrypt TOTP secrets) rotated region by region: a TOTP
        user created before keeps logging in with password + code in every region after each
        region. The next rotation, which drops the key the secret is encrypted with, is refused
        until `keystone-node credential-migrate` has re-encrypted the credentials; then it goes
        through and the user still logs in everywhere (caches flushed: decrypted from the
        database with the keys on disk)."""
        from keystone_multiregion.keys import CREDENTIAL_MAX_ACTIVE, repository

        from .layers import memcached as mc_layer
        from .layers.keystone import push_keys

        problems, measured = [], {}
        name, password, secret, measured["setup"] = self._totp_user(self.regions[0])
        if measured["setup"] != [201, 201, 200]:
            return DrillResult("K9. credential key rotation", False, measured, [f"setup failed: {measured}"])
        sequence, rotations = self._credential_state()
        sequence = sequence + [base64.urlsafe_b64encode(os.urandom(32)).decode() for _ in range(2)]

        def credential(r):
            return repository(sequence, r, CREDENTIAL_MAX_ACTIVE)

        def push_everywhere(r, label):
            for node in self.topo.nodes(role="keystone"):
                out = push_keys(self.dep, node.name, self._repos(credential=credential(r)), check=False)
                if out.returncode != 0:
                    problems.append(f"{label}: push to {node.name} failed: {out.stderr.strip()[-300:]}")

        def flush_caches():
            for region in self.regions:
                client = self.topo.nodes(region, "keystone")[0].name
                for mc in self.topo.nodes(region, "memcached"):
                    if not mc_layer.flush(self.dep, client, mc.name):
                        problems.append(f"flush_all on {mc.name} failed")

        def mfa_everywhere(label):
            statuses = {}
            for region in self.regions:
                out = self.ks(region, "token", self.url(region), name, password, "admin", "--passcode", totp(secret))
                statuses[region] = out.get("status")
            measured[label] = statuses
            if set(statuses.values()) != {201}:
                problems.append(f"{label}: password + TOTP refused somewhere: {statuses}")

        # Rotation 1, region by region: the new primary was staged everywhere before.
        for region in self.regions:
            for node in self.topo.nodes(region, "keystone"):
                out = push_keys(self.dep, node.name, self._repos(credential=credential(rotations + 1)), check=False)
                if out.returncode != 0:
                    problems.append(f"rotation 1: push to {node.name} failed: {out.stderr.strip()[-300:]}")
            mfa_everywhere(f"mfa_after_rotating_{region}")
        self._record_key_state("credential_keys", sequence, rotations + 1)
        # Rotation 2 drops the key the TOTP secret is encrypted with: refused until migrated.
        first = self.topo.nodes(role="keystone")[0].name
        early = push_keys(self.dep, first, self._repos(credential=credential(rotations + 2)), check=False)
        measured["rotation_2_before_migrate_exit"] = early.returncode
        if early.returncode != 2 or "still encrypted with a key this repository drops" not in early.stderr:
            problems.append(f"rotation 2 before credential-migrate was not refused: exit {early.returncode} "
                            f"{early.stderr.strip()[-300:]}")
        def migrate(label):
            t = time.monotonic()
            out = self.dep.lab.procs.run(first, ["python3", "/usr/local/sbin/keystone-node", "credential-migrate",
                                                 "--timeout", "300"], timeout=330, check=False)
            measured[label] = out.stdout.strip() or out.stderr.strip()[-300:]
            measured[f"{label}_s"] = round(time.monotonic() - t, 1)
            if out.returncode != 0:
                problems.append(f"{label} failed: {out.stderr.strip()[-300:]}")

        migrate("credential_migrate")
        push_everywhere(rotations + 2, "rotation 2")
        self._record_key_state("credential_keys", sequence, rotations + 2)
        # The procedure's last step, so that the next rotation may drop the previous key.
        migrate("credential_migrate_after_rotation_2")
        flush_caches()
        mfa_everywhere("mfa_after_rotation_2_caches_flushed")
        # Control: the check above can fail. A node forced onto unrelated credential keys
        # cannot decrypt the secret (once its region's cache is empty); then it is restored.
        region, node = self.regions[-1], self.topo.nodes(self.regions[-1], "keystone")[0].name
        bogus = repository([base64.urlsafe_b64encode(os.urandom(32)).decode() for _ in range(2)], 0,
                           CREDENTIAL_MAX_ACTIVE)
        forced = push_keys(self.dep, node, self._repos(credential=bogus), extra=("--force",), check=False)
        flush_caches()
        wrong = self.ks(region, "token", self.url(region), name, password, "admin", "--passcode", totp(secret))
        measured["control_mfa_with_other_credential_keys"] = wrong.get("status") or str(wrong.get("error"))[-160:]
        if forced.returncode != 0 or wrong.get("status") == 201:
            problems.append(f"control: with other credential keys {region} answered {wrong.get('status')} "
                            f"(push exit {forced.returncode})")
        restored = push_keys(self.dep, node, self._repos(), extra=("--force",), check=False)
        flush_caches()
        again = self.ks(region, "token", self.url(region), name, password, "admin", "--passcode", totp(secret))
        measured["mfa_after_restore"] = again.get("status")
        if restored.returncode != 0 or again.get("status") != 201:
            problems.append(f"restoring {node}'s keys: push exit {restored.returncode}, login {again.get('status')}")
        return DrillResult("K9. credential keys rotate region by region; TOTP users keep logging in",
                           not problems, measured, problems)

    def drill_stale_permissions(self, samples: int = 5) -> DrillResult:
        """K10: authorization changed in the first region stops working in every other region
        within the bound (keystone.token_cache_s), though each region only invalidates its
        own memcached: a role removed (no new token carries it, the old token no longer
        validates with it, the admin-only call is refused), a user disabled (no token, old
        token refused), a project disabled (no scoped token, old token refused). Each
        region's caches are warm with the old permission when the change is made."""
        first, others = self.regions[0], self.regions[1:]
        bound = self.topo.keystone.token_cache_s
        admin = self.admin_token(first)
        name = f"k10-{uuid.uuid4().hex[:8]}"
        password = "drill-" + name
        problems: list[str] = []
        measured: dict = {"bound_s": bound}

        def body(out: dict, key: str) -> dict:
            return (out.get("body") or {}).get(key) or {} if isinstance(out.get("body"), dict) else {}

        project = body(self.call(first, "POST", admin, "/v3/projects",
                                 {"project": {"name": name, "domain_id": "default"}}), "project").get("id")
        users = {}
        for who in ("ops", "dev"):
            users[who] = body(self.call(first, "POST", admin, "/v3/users", {"user": {
                "name": f"{name}-{who}", "password": password, "domain_id": "default"}}), "user").get("id")
        roles = {r["name"]: r["id"] for r in (self.call(first, "GET", admin, "/v3/roles").get("body") or {})
                 .get("roles", [])}
        if not project or not all(users.values()) or not {"admin", "member"} <= set(roles):
            return DrillResult("K10. authorization changes reach every region within the bound", False, measured,
                               [f"set-up failed: project {project}, users {users}, roles {sorted(roles)}"])
        grants = [("ops", "admin"), ("ops", "member"), ("dev", "member")]
        for who, role in grants:
            out = self.call(first, "PUT", admin, f"/v3/projects/{project}/users/{users[who]}/roles/{roles[role]}")
            if out.get("status") != 204:
                problems.append(f"granting {role} to {who} in {first}: {out.get('status')}")

        def login(region: str, who: str) -> dict:
            return self.ks(region, "token", self.url(region), f"{name}-{who}", password, name)

        admins = {r: self.admin_token(r) for r in others}
        # Warm every other region with the old permissions, as its traffic would have.
        old = {}
        for region in others:
            old[region] = {who: login(region, who) for who in users}
            for who, out in old[region].items():
                if out.get("status") != 201:
                    problems.append(f"{who} could not log in to {region} before any change: {out}")
            listed = self.call(region, "GET", old[region]["ops"].get("token") or "", "/v3/users?name=admin")
            if listed.get("status") != 200:
                problems.append(f"the admin-only call failed in {region} before the change: {listed.get('status')}")
            for who in users:
                self.validate(region, admins[region], old[region][who].get("token") or "")
        # Validation latency with warm caches, and right after the caches expired.
        region = others[0]
        subject = old[region]["dev"].get("token") or ""
        warm = sorted(self.validate(region, admins[region], subject).get("ms") or 0 for _ in range(samples))
        measured["validation_ms"] = {"warm_median": warm[len(warm) // 2]}
        if problems:
            return DrillResult("K10. authorization changes reach every region within the bound", False, measured,
                               problems)

        def still_admin(region: str) -> list[str]:
            new = login(region, "ops")
            seen = self.validate(region, admins[region], old[region]["ops"].get("token") or "")
            call = self.call(region, "GET", new.get("token") or "", "/v3/users?name=admin") \
                if new.get("token") else {"status": None}
            return [what for what, stale in (("a new token carries admin", "admin" in (new.get("roles") or [])),
                                             ("the old token validates with admin",
                                              seen.get("status") == 200 and "admin" in (seen.get("roles") or [])),
                                             ("the admin-only call succeeds", call.get("status") == 200)) if stale]

        def still_works(who: str):
            def check(region: str) -> list[str]:
                new = login(region, who)
                seen = self.validate(region, admins[region], old[region][who].get("token") or "")
                return [what for what, stale in (("a new token is issued", new.get("status") == 201),
                                                 ("the old token validates", seen.get("status") == 200)) if stale]
            return check

        changes = [
            ("role removed", f"/v3/projects/{project}/users/{users['ops']}/roles/{roles['admin']}", "DELETE", None,
             still_admin),
            ("user disabled", f"/v3/users/{users['ops']}", "PATCH", {"user": {"enabled": False}}, still_works("ops")),
            ("project disabled", f"/v3/projects/{project}", "PATCH", {"project": {"enabled": False}},
             still_works("dev")),
        ]
        for label, path, method, payload, stale_in in changes:
            out = self.call(first, method, admin, path, payload)
            t0 = time.monotonic()
            if out.get("status") not in (200, 204):
                problems.append(f"{label} in {first}: {out.get('status')} {out.get('body')}")
                continue
            # Every other region in each round (not one after the other: a region checked
            # late would have expired its caches unseen); each region's time is the end of
            # the last check that still saw the old permission, so the poll's pace does not count.
            seen_stale = {r: [] for r in others}
            last_stale = {r: 0.0 for r in others}
            pending = set(others)

            def gone():
                for r in sorted(pending):
                    stale = stale_in(r)
                    if stale:
                        seen_stale[r], last_stale[r] = stale, time.monotonic() - t0
                    else:
                        pending.discard(r)
                return not pending

            wait_until(gone, timeout=bound + 60, interval=1.0)
            per_region = {}
            for region in others:
                elapsed = round(last_stale[region], 1)
                per_region[region] = {"old_permission_worked_for_s": None if region in pending else elapsed,
                                      "stale_seen": seen_stale[region]}
                # How long against the bound is reported (the checks' own duration counts in it),
                # not judged; an old permission that never stops working is a failure.
                per_region[region]["within_bound"] = region not in pending and elapsed <= bound
                if region in pending:
                    problems.append(f"{label}: {region} still allows it after {bound + 60}s "
                                    f"({', '.join(seen_stale[region])})")
            measured[label] = per_region
        # After the bound every cached entry has expired: the first validation reads the database.
        time.sleep(bound + 1)
        measured["validation_ms"]["after_expiry"] = self.validate(region, admins[region], admins[region]).get("ms")
        measured["validation_ms"]["warm_again"] = self.validate(region, admins[region], admins[region]).get("ms")
        self.call(first, "DELETE", admin, f"/v3/projects/{project}")
        for uid in users.values():
            self.call(first, "DELETE", admin, f"/v3/users/{uid}")
        return DrillResult("K10. authorization changes reach every region within the bound", not problems,
                           measured, problems)

    def _revoke(self, region: str, admin: str, subject: str) -> int | None:
        code = ("import json,sys,urllib.request as u\n"
                "r=u.Request(sys.argv[1]+'/v3/auth/tokens',method='DELETE',"
                "headers={'X-Auth-Token':sys.argv[2],'X-Subject-Token':sys.argv[3]})\n"
                "print(u.urlopen(r,timeout=30).status)")
        proxy = self.topo.nodes(region, "proxy")[0].name
        out = self.dep.lab.net.exec(proxy, [sys.executable, "-c", code, self.url(region), admin, subject],
                                    timeout=60, check=False)
        return int(out.stdout.strip()) if out.stdout.strip().isdigit() else None

    def run_all(self, galera_drills, log=print) -> list[DrillResult]:
        results = []
        for drill in (self.drill_one_identity, lambda: self.drill_partition(galera_drills), self.drill_mfa,
                      self.drill_memcached_down, self.drill_revocation, self.drill_rotation,
                      self.drill_key_safety, self.drill_push_path, self.drill_credential_rotation,
                      self.drill_stale_permissions):
            result = drill()
            log(result.line())
            results.append(result)
        return results
