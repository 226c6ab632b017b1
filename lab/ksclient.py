"""A tiny Keystone v3 client for the lab (standard library only), run inside a lab
namespace; every command prints one JSON line with the HTTP status and the time taken.

    python ksclient.py token URL USER PASSWORD PROJECT [--passcode CODE] [--receipt R]
    python ksclient.py validate URL AUTH_TOKEN SUBJECT_TOKEN
    python ksclient.py call METHOD URL AUTH_TOKEN PATH [JSON_BODY]
    python ksclient.py totp SECRET_BASE32 [--at UNIX_TIME]
    python ksclient.py auth URL            (the auth request's JSON body on stdin)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import sys
import time
import urllib.error
import urllib.request

TIMEOUT = 30


def _request(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            status, text, hdrs = response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, text, hdrs = exc.code, exc.read().decode(errors="replace"), dict(exc.headers)
    except (urllib.error.URLError, OSError) as exc:
        return {"status": None, "error": str(exc), "ms": round((time.monotonic() - t) * 1000, 1)}
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = text[:500]
    return {"status": status, "body": parsed, "headers": hdrs, "ms": round((time.monotonic() - t) * 1000, 1)}


def totp(secret_b32: str, at: float | None = None, step: int = 30, digits: int = 6) -> str:
    """RFC 6238 TOTP code (SHA-1, 30 s, 6 digits), as Keystone's totp method checks it."""
    key = base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    counter = int((time.time() if at is None else at) // step)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % (10 ** digits)
    return str(code).zfill(digits)


def token(url: str, user: str, password: str | None, project: str, passcode: str | None = None,
          receipt: str | None = None) -> dict:
    methods, identity = [], {}
    if password is not None:
        methods.append("password")
        identity["password"] = {"user": {"name": user, "domain": {"id": "default"}, "password": password}}
    if passcode is not None:
        methods.append("totp")
        identity["totp"] = {"user": {"name": user, "domain": {"id": "default"}, "passcode": passcode}}
    identity["methods"] = methods
    body = {"auth": {"identity": identity,
                     "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    headers = {"Openstack-Auth-Receipt": receipt} if receipt else {}
    out = _served_by(_request("POST", f"{url}/v3/auth/tokens", body, headers))
    hdrs = {k.lower(): v for k, v in (out.pop("headers", None) or {}).items()}
    out["token"] = hdrs.get("x-subject-token")
    out["receipt"] = hdrs.get("openstack-auth-receipt")
    body = out.pop("body", None)
    if isinstance(body, dict) and isinstance(body.get("token"), dict):
        out["roles"] = sorted(r.get("name") for r in body["token"].get("roles") or [])
    return out


def validate(url: str, auth: str, subject: str) -> dict:
    """Validation status and time, and the roles the token carries as validated."""
    out = _request("GET", f"{url}/v3/auth/tokens", None, {"X-Auth-Token": auth, "X-Subject-Token": subject})
    out.pop("headers", None)
    body = out.pop("body", None)
    if isinstance(body, dict) and isinstance(body.get("token"), dict):
        out["roles"] = sorted(r.get("name") for r in body["token"].get("roles") or [])
    return out


def _served_by(out: dict) -> dict:
    """Who answered (the proxies' X-Keystone-Region), and for a request a replica region's
    Keystone sent to the core, which region wrote it (X-Keystone-Written-By)."""
    hdrs = {k.lower(): v for k, v in (out.get("headers") or {}).items()}
    out["region"] = hdrs.get("x-keystone-region")
    if hdrs.get("x-keystone-written-by"):
        out["written_by"] = hdrs["x-keystone-written-by"]
    return out


def call(method: str, url: str, auth: str, path: str, body: dict | None = None) -> dict:
    out = _served_by(_request(method, f"{url}{path}", body, {"X-Auth-Token": auth}))
    out.pop("headers", None)
    return out


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "token":
        opts = {}
        while len(args) > 4:
            flag, value = args[-2], args[-1]
            opts[flag.lstrip("-")] = value
            args = args[:-2]
        url, user, password, project = args
        if password == "@stdin":  # the lab passes secrets on stdin, never in argv
            password = sys.stdin.readline().rstrip("\n")
        out = token(url, user, None if password == "-" else password, project, opts.get("passcode"),
                    opts.get("receipt"))
    elif cmd == "validate":
        out = validate(*args)
    elif cmd == "call":
        method, url, auth, path = args[:4]
        body = args[4] if len(args) > 4 else None
        if body == "@stdin":  # a body carrying a secret (a password change) comes on stdin
            body = sys.stdin.readline()
        out = call(method, url, auth, path, json.loads(body) if body is not None else None)
    elif cmd == "auth":  # POST /v3/auth/tokens with the body on stdin (any method; it carries a secret)
        out = _served_by(_request("POST", f"{args[0]}/v3/auth/tokens", json.loads(sys.stdin.readline())))
        hdrs = {k.lower(): v for k, v in (out.pop("headers", None) or {}).items()}
        out["token"] = hdrs.get("x-subject-token")
        out.pop("body", None)
    elif cmd == "totp":
        out = {"code": totp(args[0], float(args[2]) if len(args) > 2 else None)}
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
