"""No secret in any command line: `ps` shows every process's arguments to every user.

scan() reads /proc/*/cmdline once; Watch samples it in a background thread while the lab
starts (bounded: it stops with the block it wraps). A finding names the process and which
secret it carried, never the value.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

# Values shorter than this are not looked for (they would match by chance).
MIN_LENGTH = 8


def _public(path: str) -> bool:
    """Certificates and public halves of keys are no secrets."""
    last = path.rsplit(".", 1)[-1].lower()
    return "cert" in last or "public" in last


def secret_values(values, path: str = "") -> dict[str, str]:
    """{value: where it comes from} for every secret leaf of the lab's secrets mapping."""
    out: dict[str, str] = {}
    if isinstance(values, dict):
        for key, value in values.items():
            out.update(secret_values(value, f"{path}.{key}" if path else str(key)))
    elif isinstance(values, str) and len(values.strip()) >= MIN_LENGTH and not _public(path):
        out[values.strip()] = path
    return out


def lab_secrets(dep) -> dict[str, str]:
    """The lab's secrets (secrets.yaml) and the proxy check user's password."""
    found = secret_values(dep.secrets())
    cnf = Path(dep.lab.labdir) / "proxy-check.cnf"
    if cnf.exists():
        for line in cnf.read_text().splitlines():
            if line.startswith("password = "):
                found[line.split(" = ", 1)[1].strip()] = "proxy check user password"
    return found


def scan(secrets: dict[str, str], proc: str = "/proc") -> list[str]:
    """Processes whose command line carries one of `secrets` right now."""
    findings = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        text = "\0".join(argv)
        for value, name in secrets.items():
            if value in text:
                findings.append(f"pid {entry} ({os.path.basename(argv[0]) or '?'}) carries {name} in its arguments")
    return findings


class Watch:
    """Samples scan() every `interval` s while the `with` block runs; findings collected."""

    def __init__(self, secrets: dict[str, str], interval: float = 0.05):
        self.secrets, self.interval = secrets, interval
        self.findings: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:  # at least one sample, however short the block
            for finding in scan(self.secrets):
                if finding not in self.findings:
                    self.findings.append(finding)
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
