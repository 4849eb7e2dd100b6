"""cluster.yaml and the KubeRay RayJob: checked offline, with no cloud call and no Ray started.

`ray up` runs Ray's own `prepare_config` then `validate_config` (the schema in
ray/autoscaler/ray-schema.json) before it touches a cloud; these tests run the same two on
cluster.yaml, show that broken copies are refused, and check what the schema cannot: that
every node installs this checkout at the pins of constraints.txt, on the pinned Ray's image.
The RayJob manifest gets a structural check of its own (there is no KubeRay schema here), and
its entrypoint is parsed by the real `tessera` argument parser.
"""

from __future__ import annotations

import copy
import re
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import torch
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from engine.cli import build_parser
from engine.models.zoo import list_models

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "deploy" / "kuberay" / "rayjob.yaml"
CONSTRAINTS = ROOT / "constraints.txt"
PINNED = ("ray", "torch", "torchvision")


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` lines of a constraints file."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if match:
            found[match[1].lower()] = match[2]
    return found


def public(version: str) -> str:
    """A version without its local label: 2.14.1+cu130 -> 2.14.1."""
    return version.split("+")[0]


def prepared(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` validates: the config merged with its provider's defaults, then checked."""
    merged = prepare_config(copy.deepcopy(config))
    validate_config(merged)
    return merged


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return yaml.safe_load(RAYJOB_YAML.read_text())


# ---- cluster.yaml ---------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_own_schema_without_a_cloud_call(cluster):
    merged = prepared(cluster)
    # the AWS provider module imports boto3; neither was needed to prepare and validate
    assert "ray.autoscaler._private.aws.config" not in sys.modules
    assert "boto3" not in sys.modules
    assert merged["provider"]["type"] == "aws"
    assert merged["head_node_type"] in merged["available_node_types"]
    # defaults were merged in (prepare_config ran), so this is the config `ray up` would use
    assert "cluster_synced_files" in merged and "auth" in merged


@pytest.mark.parametrize(
    "break_it, error, message",
    [
        (lambda c: c.update(max_worker=4), jsonschema.ValidationError, "max_worker"),
        (
            lambda c: c["available_node_types"]["worker.gpu"].update(min_workers=5),
            ValueError,
            "smaller than the sum of `min_workers`",
        ),
        (lambda c: c.update(head_node_type="head.gpu"), ValueError, "head_node_type"),
        (
            lambda c: c["available_node_types"]["worker.gpu"].update(resources={"GPU": "1"}),
            jsonschema.ValidationError,
            "'1' is not of type 'integer'",
        ),
    ],
    ids=["unknown-top-level-key", "min-above-max-workers", "unknown-head-type", "string-gpus"],
)
def test_broken_copies_of_cluster_yaml_are_refused(cluster, break_it, error, message):
    broken = copy.deepcopy(cluster)
    break_it(broken)
    with pytest.raises(error, match=re.escape(message)):
        prepared(broken)


def test_cluster_has_a_cpu_head_and_autoscaling_gpu_workers(cluster):
    merged = prepared(cluster)
    types = merged["available_node_types"]
    head = types[merged["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"]["CPU"] >= 1  # the head keeps CPUs for the driver and decode
    assert head["max_workers"] == 0
    gpu_workers = {
        name: spec
        for name, spec in types.items()
        if name != merged["head_node_type"] and spec["resources"].get("GPU", 0) >= 1
    }
    assert gpu_workers, "no worker node type with a GPU"
    for spec in gpu_workers.values():
        # >= 1: `tessera predict --device cuda` refuses a cluster with no GPU yet
        assert 1 <= spec["min_workers"] < spec["max_workers"] <= merged["max_workers"]
        assert spec["node_config"]["InstanceType"].startswith(("g", "p"))
    assert merged["idle_timeout_minutes"] > 0


def test_every_node_installs_this_checkout_at_the_pinned_versions(cluster):
    merged = prepared(cluster)
    constraint_pins = pins(CONSTRAINTS)
    assert public(torch.__version__) == constraint_pins["torch"]  # pins of this environment
    mounts = merged["file_mounts"]
    assert (ROOT / mounts["~/tessera"]).resolve() == ROOT  # `ray up` runs from the repo root
    remote = "$HOME/tessera"
    extras = set(metadata.metadata("tessera").get_all("Provides-Extra") or [])
    for role in ("head_setup_commands", "worker_setup_commands"):
        installs = [shlex.split(c) for c in merged[role] if c.startswith("pip install")]
        assert installs, f"{role}: no pip install"
        for words in installs:
            # every pip install is held to constraints.txt, which the mount puts at ~/tessera
            assert "-c" in words, f"{role}: a pip install without constraints: {words}"
            constraint = words[words.index("-c") + 1]
            assert constraint == f"{remote}/constraints.txt", (role, words)
            # pins spelled on the command line must agree with constraints.txt
            for word in words:
                name, sep, version = word.partition("==")
                if sep and name.lower() in constraint_pins:
                    assert version == constraint_pins[name.lower()], (role, word)
        editable = [w[w.index("-e") + 1] for w in installs if "-e" in w]
        assert len(editable) == 1, f"{role}: this checkout is installed once"
        target, _, named = editable[0].partition("[")
        assert target == remote
        assert set(named.rstrip("]").split(",")) <= extras, f"unknown extras in {editable[0]}"
        # the PyTorch index serves the CUDA build the torch pin was made with
        index = next(w for w in installs if "-e" in w)
        assert "--extra-index-url" in index, f"{role}: torch would come from PyPI's default build"
        url = index[index.index("--extra-index-url") + 1]
        if torch.version.cuda:
            cuda = "cu" + torch.version.cuda.replace(".", "")
            assert url.endswith("/" + cuda), f"{url} is not the index of torch's {cuda} build"


def test_the_image_is_the_pinned_ray_and_start_commands_set_their_flags(cluster):
    merged = prepared(cluster)
    image = merged["docker"]["image"]
    assert image.startswith("rayproject/ray:")
    assert image.split(":")[1].split("-")[0] == ray.__version__ == pins(CONSTRAINTS)["ray"]
    head = " ".join(merged["head_start_ray_commands"])
    worker = " ".join(merged["worker_start_ray_commands"])
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    for commands in (head, worker):
        assert "--disable-usage-stats" in commands
        assert re.search(r"--object-store-memory=\d+", commands)


# ---- deploy/kuberay/rayjob.yaml -------------------------------------------------------------


def rayjob_problems(manifest: dict[str, Any]) -> list[str]:
    """What is wrong with a Tessera RayJob manifest, one line each (empty: nothing)."""
    problems = []
    if manifest.get("apiVersion") != "ray.io/v1" or manifest.get("kind") != "RayJob":
        problems.append("not a ray.io/v1 RayJob")
    spec = manifest.get("spec", {})
    problems += entrypoint_problems(spec.get("entrypoint", ""))
    if not isinstance(yaml.safe_load(spec.get("runtimeEnvYAML", "") or "{}"), dict):
        problems.append("runtimeEnvYAML is not a YAML mapping")
    if spec.get("submissionMode") not in ("K8sJobMode", "HTTPMode"):
        problems.append(f"submissionMode {spec.get('submissionMode')!r}")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("the cluster outlives the job (shutdownAfterJobFinishes)")
    if not isinstance(spec.get("ttlSecondsAfterFinished"), int):
        problems.append("no ttlSecondsAfterFinished")
    cluster = spec.get("rayClusterSpec", {})
    if cluster.get("rayVersion") != ray.__version__:
        problems.append(f"rayVersion {cluster.get('rayVersion')!r}, Ray is {ray.__version__}")
    groups = [cluster.get("headGroupSpec", {}), *cluster.get("workerGroupSpecs", [])]
    for group in groups:
        for container in group.get("template", {}).get("spec", {}).get("containers", []):
            if f"ray{ray.__version__}-" not in container.get("image", ""):
                problems.append(f"image {container.get('image')!r} is not Ray {ray.__version__}")
    gpu_groups = []
    for group in cluster.get("workerGroupSpecs", []):
        containers = group["template"]["spec"]["containers"]
        if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1 for c in containers):
            gpu_groups.append(group)
            low, high = group.get("minReplicas", 0), group.get("maxReplicas", 0)
            if not 1 <= low <= group.get("replicas", low) <= high:
                problems.append(f"group {group['groupName']}: replicas not 1 <= min <= max")
    if not gpu_groups:
        problems.append("no worker group with an nvidia.com/gpu limit")
    return problems


def entrypoint_problems(entrypoint: str) -> list[str]:
    """What is wrong with a RayJob entrypoint meant to run `tessera predict` on the GPUs."""
    words = shlex.split(entrypoint)
    if words[:2] != ["tessera", "predict"]:
        return [f"entrypoint {entrypoint!r} does not run tessera predict"]
    try:
        args = build_parser().parse_args(words[1:])
    except SystemExit:
        return [f"tessera cannot parse {entrypoint!r}"]
    problems = []
    if args.address is not None:
        problems.append("--address given: inside a RayJob the driver joins RAY_ADDRESS")
    if not args.device.startswith("cuda"):
        problems.append(f"--device {args.device}: the workers' GPUs go unused")
    if args.model not in {entry.name for entry in list_models()}:
        problems.append(f"--model {args.model!r} is not in the zoo")
    return problems


def test_rayjob_manifest_is_a_gpu_rayjob_running_tessera_predict(rayjob):
    assert rayjob_problems(rayjob) == []


@pytest.mark.parametrize(
    "break_it, problem",
    [
        (lambda m: m.update(kind="RayCluster"), "not a ray.io/v1 RayJob"),
        (lambda m: m["spec"].update(entrypoint="python run.py"), "does not run tessera predict"),
        (
            lambda m: m["spec"].update(entrypoint=m["spec"]["entrypoint"] + " --no-such-flag"),
            "cannot parse",
        ),
        (
            lambda m: m["spec"].update(entrypoint="tessera predict x --model no/such --out y"),
            "--model 'no/such' is not in the zoo",
        ),
        (
            lambda m: m["spec"].update(entrypoint=m["spec"]["entrypoint"] + " --address auto"),
            "--address given",
        ),
        (lambda m: m["spec"]["rayClusterSpec"].update(rayVersion="2.9.0"), "rayVersion '2.9.0'"),
        (
            lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplicas=0),
            "replicas not 1 <= min <= max",
        ),
        (
            lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
                "containers"
            ][0]["resources"]["limits"].pop("nvidia.com/gpu"),
            "no worker group with an nvidia.com/gpu limit",
        ),
        (
            lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
                "containers"
            ][0].update(image="rayproject/ray:2.9.0-py311-gpu"),
            "is not Ray",
        ),
    ],
    ids=[
        "kind",
        "other-command",
        "bad-flag",
        "unknown-model",
        "address",
        "ray-version",
        "max",
        "no-gpu",
        "image",
    ],
)
def test_broken_copies_of_the_rayjob_are_refused(rayjob, break_it, problem):
    broken = copy.deepcopy(rayjob)
    break_it(broken)
    found = rayjob_problems(broken)
    assert any(problem in line for line in found), found
