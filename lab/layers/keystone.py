"""Keystone in the lab (arrives with the Keystone layer)."""

from __future__ import annotations

ROLES = ("keystone",)
PACKAGES = ()


def install(dep, rendered) -> None:
    pass


def start(dep, nodes, log) -> None:
    pass


def checks(dep) -> list:
    return []
