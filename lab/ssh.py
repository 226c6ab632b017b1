"""The pushes over SSH, as a region stack does them (components/keys.py, components/push.py),
in the lab: every node runs sshd; the key push and node-agent's file push come from the ops host.

Pulumi runs where it can reach the nodes' SSH port, which the security groups open only to
admin_cidr; in the lab that place is the `ops` host, a namespace in admin_cidr. Each
Keystone node runs OpenSSH's sshd with the host key its cloud-init installs (`ssh_keys` in
its rendered user-data); the client pins the public half the stack generated (the secrets'
ssh_host_keys), logs in with the lab's key (the stand-in for the topology's key pair) and
runs the stack's command line (roles/keystone.py: install_keys_command) with the keys on
stdin. So the lab exercises the push's whole path: the security group, the host key, sudo,
stdin, and keystone-node install-keys on the node.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import yaml

from keystone_multiregion.pki import ssh_host_key

OPS_HOST = "ops"
SSHD_PACKAGES = ("openssh-server", "openssh-client", "sudo")
# sshd's own directories in a node, as on a VM (the privilege-separation directory too).
SSHD_DIRS = ("/etc/ssh", "/run/sshd")
SSHD_CONFIG = """# The lab's sshd for {name}: key logins only, on the node's own address.
ListenAddress {address}
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
AuthorizedKeysFile /etc/ssh/lab_authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
"""


def ops_address(topo) -> ipaddress.IPv4Interface:
    """The ops host's address: the 10th of admin_cidr."""
    net = ipaddress.ip_network(topo.admin_cidr)
    return ipaddress.IPv4Interface(f"{net[10]}/{net.prefixlen}")


def _ops_dir(dep) -> Path:
    d = Path(dep.lab.labdir) / "ops"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def client_key(dep) -> Path:
    """The lab's login key (private, OpenSSH format), made once per lab directory."""
    path = _ops_dir(dep) / "id_ed25519"
    if not path.exists():
        key = ssh_host_key()  # an Ed25519 pair in OpenSSH formats serves as a login key as well
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key["private"])
        (_ops_dir(dep) / "id_ed25519.pub").write_text(key["public"] + "\n")
    return path


def known_hosts(dep, override: dict[str, str] | None = None) -> Path:
    """known_hosts pinning each Keystone node's host key as the stack generated it (or the
    keys in `override`, node name -> public key, to show that a wrong one is refused)."""
    nodes = {n.name for n in dep.topo.nodes()}  # not a region's that left the topology
    keys = {name: k["public"] for name, k in dep.secrets()["ssh_host_keys"].items() if name in nodes}
    keys.update(override or {})
    path = _ops_dir(dep) / ("known_hosts.override" if override else "known_hosts")
    path.write_text("".join(f"{dep.topo.node(name).address} {key}\n" for name, key in sorted(keys.items())))
    return path


def _port_open(dep, name: str) -> bool:
    code = ("import socket,sys\n"
            "s=socket.create_connection((sys.argv[1],22),timeout=1);print(s.recv(64)[:4].decode())")
    out = dep.lab.net.exec(name, ["python3", "-c", code, dep.topo.node(name).address], timeout=5, check=False)
    return out.stdout.strip() == "SSH-"


def start_sshd(dep, name: str) -> None:
    """sshd on the node's address with the host key from the node's rendered cloud-init
    (once: a running sshd is left as it is)."""
    if dep.lab.procs.is_alive(name, "sshd"):
        return
    node = dep.topo.node(name)
    doc = yaml.safe_load((dep.render_dir / node.region / node.name / "user-data").read_text())
    host_key = doc["ssh_keys"]
    dirs = dep.lab.procs.make_root(name, SSHD_DIRS)
    etc = Path(dirs["/etc/ssh"])
    for filename, content, mode in (
            ("ssh_host_ed25519_key", host_key["ed25519_private"], 0o600),
            ("ssh_host_ed25519_key.pub", host_key["ed25519_public"] + "\n", 0o644),
            ("lab_authorized_keys", (_ops_dir(dep) / "id_ed25519.pub").read_text(), 0o644),
            ("sshd_config", SSHD_CONFIG.format(name=name, address=node.address), 0o644)):
        fd = os.open(etc / filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
    dep.lab.procs.start(name, "sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/sshd_config"],
                        ready=lambda: _port_open(dep, name), ready_timeout=20)


def ssh(dep, name: str, command: str, *, input: str | None = None, source: str = OPS_HOST,
        known: Path | None = None, timeout: float = 120):
    """Run `command` on node `name` over SSH from `source` (the ops host), pinning its host
    key, as pulumi-command's remote.Command does. Returns the CompletedProcess."""
    argv = ["ssh", "-F", "/dev/null", "-i", str(client_key(dep)),
            "-o", f"UserKnownHostsFile={known or known_hosts(dep)}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"root@{dep.topo.node(name).address}", command]
    return dep.lab.net.exec(source, argv, input=input, timeout=timeout, check=False)

