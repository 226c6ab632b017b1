"""Stacks of this project as plain data: which stack is which region.

A region stack's file says only `keystone-multiregion:region`; the shared stack says
`keystone-multiregion:shared: true`. Used by the offline render and the tests; the
Pulumi program reads the same keys through pulumi.Config.
"""

from __future__ import annotations

from pathlib import Path

import yaml

PROJECT = "keystone-multiregion"


def stack_files(project_dir: Path) -> dict[str, Path]:
    return {p.name[len("Pulumi."):-len(".yaml")]: p
            for p in sorted(Path(project_dir).glob("Pulumi.*.yaml"))}


def stack_config(project_dir: Path, stack: str) -> dict:
    files = stack_files(project_dir)
    if stack not in files:
        raise ValueError(f"stack {stack!r}: there is no Pulumi.{stack}.yaml in {project_dir} "
                         f"(stacks: {', '.join(files) or 'none'}); run `pulumi stack init {stack}` "
                         "and set keystone-multiregion:region")
    data = yaml.safe_load(files[stack].read_text()) or {}
    return {k.split(":", 1)[1]: v for k, v in (data.get("config") or {}).items()
            if k.startswith(PROJECT + ":")}


def region_stacks(project_dir: Path) -> dict[str, str]:
    """stack name -> region name, for every region stack of the project."""
    out = {}
    for stack in stack_files(project_dir):
        region = stack_config(project_dir, stack).get("region")
        if region:
            out[stack] = region
    return out
