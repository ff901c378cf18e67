"""The cluster files (cluster/): every YAML parses, the launcher passes Ray's own validation, the
KubeRay manifests use only known field names and agree with each other, and every command they
name runs an existing module on existing files with valid config keys."""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from xsmoe_ray.config import load_config
from xsmoe_ray.sweep_spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
IMAGE_ROOT = "/app"  # the Dockerfile copies the repository here
SHARED = "/mnt/shared"  # the shared volume on every node
YAMLS = sorted(CLUSTER.rglob("*.yaml"))

# Field names of the KubeRay v1 CRDs and the Kubernetes objects used here. The CRD schema accepts
# unknown keys silently (RAY_NOTES.md), so a typo would only show as a cluster that ignores it.
CLUSTER_SPEC = {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
                "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions"}
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template", "numOfHosts",
                "scaleStrategy", "suspend", "idleTimeoutSeconds"}
JOB_SPEC = {"entrypoint", "runtimeEnvYAML", "rayClusterSpec", "clusterSelector", "shutdownAfterJobFinishes",
            "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit", "submitterPodTemplate",
            "submitterConfig", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId",
            "metadata", "suspend", "submissionMode", "managedBy", "deletionStrategy"}
POD_SPEC = {"containers", "volumes", "tolerations", "nodeSelector", "affinity", "serviceAccountName",
            "initContainers", "restartPolicy", "imagePullSecrets", "securityContext"}
CONTAINER = {"name", "image", "resources", "ports", "volumeMounts", "env", "envFrom", "command", "args",
             "lifecycle", "imagePullPolicy", "securityContext"}


def load(relative: str) -> dict:
    return yaml.safe_load((CLUSTER / relative).read_text())


def raycluster_spec() -> dict:
    return load("kuberay/raycluster.yaml")["spec"]


def pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def image_of_dockerfile() -> str:
    return re.search(r"docker build -f cluster/Dockerfile -t (\S+) \.", (CLUSTER / "Dockerfile").read_text()).group(1)


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(REPO)) for p in YAMLS])
def test_every_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_expected_files_exist():
    for name in ["launcher.yaml", "runtime_env.yaml", "Dockerfile", "kuberay/raycluster.yaml",
                 "kuberay/rayjob-stream.yaml", "kuberay/rayjob-tune.yaml", "kuberay/pvc.yaml"]:
        assert (CLUSTER / name).is_file(), name


def test_launcher_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("launcher.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))  # raises on a schema error
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["resourcez"] = {}
    with pytest.raises(Exception, match="resourcez"):  # the check above can fail
        validate_config(prepare_config(broken))
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and config["head_node_type"] in config["available_node_types"]
    assert config["docker"]["image"] == image_of_dockerfile()
    assert any(f"-v {SHARED}:{SHARED}" == o for o in config["docker"]["run_options"])
    assert any("--shm-size" in o for o in config["docker"]["run_options"])


DLAMI_PARAMETER = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-"


def test_launcher_names_a_maintained_host_image_ray_keeps():
    """Issue 11: with no ImageId, Ray's own check filled in its built-in table's AMI, an end-of-life
    "Deep Learning AMI (Ubuntu 18.04)". Every node type now names AWS's public SSM parameter for the
    current Ubuntu 24.04 GPU base DLAMI, which EC2 resolves at launch, and Ray passes it through."""
    from ray.autoscaler._private.aws.config import DEFAULT_AMI, DEFAULT_AMI_NAME, _check_ami

    config = load("launcher.yaml")
    checked = copy.deepcopy(config)
    _check_ami(checked)  # what `ray up` does before it creates instances
    for name, node_type in checked["available_node_types"].items():
        image = node_type["node_config"]["ImageId"]
        assert image == config["available_node_types"][name]["node_config"]["ImageId"], name
        assert image.startswith(DLAMI_PARAMETER) and image.endswith("-24.04/latest/ami-id"), (name, image)
        assert image not in DEFAULT_AMI.values()
    assert "18.04" in DEFAULT_AMI_NAME  # what a launcher without ImageId would get
    unset = copy.deepcopy(config)
    del unset["available_node_types"]["head"]["node_config"]["ImageId"]
    _check_ami(unset)
    assert unset["available_node_types"]["head"]["node_config"]["ImageId"] == DEFAULT_AMI[config["provider"]["region"]]


def test_runtime_env_is_valid_and_shared_by_the_jobs():
    from ray.runtime_env import RuntimeEnv

    env = load("runtime_env.yaml")
    RuntimeEnv(**env)  # raises on unknown fields or bad values
    assert set(env["env_vars"]) >= {"HF_HOME", "XSMOE_BACKBONE_DIR"}
    assert all(v.startswith(SHARED) for k, v in env["env_vars"].items() if k in ("HF_HOME", "XSMOE_BACKBONE_DIR"))
    for job in ("rayjob-stream.yaml", "rayjob-tune.yaml"):
        assert yaml.safe_load(load(f"kuberay/{job}")["spec"]["runtimeEnvYAML"]) == env


def test_raycluster_fields_gpus_and_volumes():
    doc = load("kuberay/raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    spec = doc["spec"]
    assert set(spec) <= CLUSTER_SPEC and "headGroupSpec" in spec
    assert spec["rayVersion"] == ray.__version__  # the image's Ray must match the client's
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP
    claims = {load("kuberay/pvc.yaml")["metadata"]["name"]}
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP
        assert {"groupName", "minReplicas", "maxReplicas", "template"} <= set(group)
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0]
    assert gpu_groups, "no GPU worker group"
    for pod in pods(spec):
        assert set(pod) <= POD_SPEC
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            assert set(c) <= CONTAINER and c["image"] == image_of_dockerfile()
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert volumes[mounts[SHARED]]["persistentVolumeClaim"]["claimName"] in claims


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9}
    for unit, factor in units.items():
        if str(quantity).endswith(unit):
            return float(str(quantity)[: -len(unit)]) * factor
    return float(quantity)


def test_object_store_fits_in_dev_shm_and_pods_can_write_the_shared_volume():
    """Issue 11: Ray's default object store (30% of the pod's memory) was larger than /dev/shm, so it
    would spill to disk; and /mnt/shared had no fsGroup for the image's user."""
    spec = raycluster_spec()
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        memory = _bytes(pod["containers"][0]["resources"]["limits"]["memory"])
        shm = _bytes(next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"])
        store = float(group.get("rayStartParams", {}).get("object-store-memory", 0.3 * memory))
        assert store <= shm, (group.get("groupName", "head"), store, shm)
        assert pod["securityContext"]["fsGroup"] == 100


def test_rayjobs_embed_the_raycluster_spec():
    for job in ("rayjob-stream.yaml", "rayjob-tune.yaml"):
        doc = load(f"kuberay/{job}")
        assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
        assert set(doc["spec"]) <= JOB_SPEC
        assert doc["spec"]["rayClusterSpec"] == raycluster_spec()
        assert doc["spec"]["shutdownAfterJobFinishes"] is True and doc["spec"]["activeDeadlineSeconds"] > 0
        assert doc["spec"]["backoffLimit"] >= 1


def test_dockerfile_matches_ray_and_copies_existing_paths():
    text = (CLUSTER / "Dockerfile").read_text()
    # torch pinned to the version CI tests (.ci/run): an unpinned one drifts with every image build.
    ci = re.search(r"torch==(\S+)", (REPO / ".ci" / "run").read_text()).group(1)
    assert re.search(r'pip install[^\n]*"torch==([^"]+)"', text).group(1) == ci
    assert re.search(r"^FROM rayproject/ray:(\S+)-py3\d+-gpu$", text, re.M).group(1) == ray.__version__
    assert re.search(r"^WORKDIR (\S+)$", text, re.M).group(1) == IMAGE_ROOT
    for line in re.findall(r"^COPY (?:--chown=\S+ )?(.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (REPO / source).exists(), source


# ---------------------------------------------------------------------------------------------
# Every command named in the cluster files and the README's cluster section.


def commands() -> list[tuple[str, str]]:
    """(file, command) for every ``python -m xsmoe_ray…`` in the cluster files and the README section."""
    found = []
    sources = [p for p in CLUSTER.rglob("*") if p.is_file()] + [REPO / "README.md"]
    for path in sources:
        text = path.read_text()
        if path.name == "README.md":
            text = text.split("\n## Full H&M on a cluster", 1)[1].split("\n## ", 1)[0]
        text = re.sub(r"\\\n\s*(#\s*)?", " ", text)  # join continued lines (also inside comments)
        for m in re.finditer(r"python -m (xsmoe_ray[\w.]*)([^\n`|]*)", text):
            found.append((str(path.relative_to(REPO)), f"python -m {m.group(1)}{m.group(2)}".strip()))
    return found


COMMANDS = commands()


def test_commands_are_found():
    files = {f for f, _ in COMMANDS}
    assert {"cluster/kuberay/rayjob-stream.yaml", "cluster/kuberay/rayjob-tune.yaml", "cluster/launcher.yaml",
            "README.md"} <= files
    assert any("xsmoe_ray.tune" in c for _, c in COMMANDS) and any("xsmoe_ray.stream" in c for _, c in COMMANDS)


def repo_path(arg: str) -> Path:
    return REPO / arg[len(IMAGE_ROOT) + 1:] if arg.startswith(IMAGE_ROOT + "/") else REPO / arg


@pytest.mark.parametrize("source,command", COMMANDS, ids=[f"{f}: {c[:60]}" for f, c in COMMANDS])
def test_named_command_is_runnable(source, command, tmp_path):
    argv = shlex.split(command)
    module = argv[2]
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{source}: no module {module}"
    assert "def main(" in Path(spec.origin).read_text(), f"{source}: {module} has no main()"
    args = argv[3:]
    if module == "xsmoe_ray.tune":
        sweep, overrides = args[0], [a for a in args[1:] if "=" in a]
        assert repo_path(sweep).is_file(), f"{source}: {sweep} does not exist"
        spec_ = load_sweep(repo_path(sweep), overrides)  # every override key must be valid
        if source != "README.md" or SHARED in command:
            assert str(spec_.out).startswith(SHARED), "a cluster sweep must write to the shared volume"
    elif module == "xsmoe_ray.stream":
        preset = args[args.index("--config") + 1] if "--config" in args else "demo"
        cfg = load_config(preset, [a for a in args if "=" in a])
        if SHARED in command:
            assert cfg.run.out.startswith(SHARED) and cfg.data.path.startswith(SHARED)
    for arg in args:
        if arg.startswith(("tune_configs/", "cluster/", IMAGE_ROOT + "/")):
            assert repo_path(arg).exists(), f"{source}: {arg} does not exist"


def test_cluster_fits_the_jobs():
    """A Tune trial of hm.yaml fits on one GPU pod; the stream job's GPUs fit in the cluster."""
    spec = raycluster_spec()
    group = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    pod_gpus, pod_cpus = int(limits["nvidia.com/gpu"]), float(limits["cpu"])
    sweep = load_sweep(REPO / "tune_configs" / "hm.yaml", [f"run.out={SHARED}/runs/x"])
    r = sweep.resources
    assert r.gpu * r.workers <= pod_gpus and r.cpu * r.workers + 0.1 <= pod_cpus
    stream = shlex.split(load("kuberay/rayjob-stream.yaml")["spec"]["entrypoint"])
    cfg = load_config("hm", [a for a in stream if "=" in a])
    total_gpus = pod_gpus * group["maxReplicas"]
    assert cfg.train.use_gpu and cfg.train.num_workers <= total_gpus and cfg.cache.workers <= total_gpus
    assert sweep.datasets[0].cfg.cache.workers <= total_gpus
    assert cfg.cache.use_gpu and sweep.datasets[0].cfg.cache.use_gpu  # GPU encoders asked for, not guessed
    # Train-inside-trial: Tune must not start more trials than the cluster's GPUs can hold at once.
    assert 0 < sweep.max_concurrent_trials * r.workers * max(r.gpu, 1) <= total_gpus


def test_serve_config_is_valid_and_serves_the_stream_jobs_run():
    """cluster/serve.yaml passes Serve's own schema, names the app builder, gives it valid arguments,
    and serves the run the cluster's stream job writes."""
    from ray.serve.schema import ServeDeploySchema

    from xsmoe_ray import serve as xsmoe_serve

    doc = load("serve.yaml")
    ServeDeploySchema.model_validate(doc)  # raises on unknown fields or bad values
    broken = copy.deepcopy(doc)
    broken["applications"][0]["improt_path"] = broken["applications"][0].pop("import_path")
    with pytest.raises(Exception, match="import_path"):  # the check above can fail
        ServeDeploySchema.model_validate(broken)
    app = doc["applications"][0]
    module, name = app["import_path"].split(":")
    assert module == "xsmoe_ray.serve" and getattr(xsmoe_serve, name) is xsmoe_serve.app
    args = xsmoe_serve.ServeArgs.model_validate(app["args"])
    stream = shlex.split(load("kuberay/rayjob-stream.yaml")["spec"]["entrypoint"])
    assert args.run_out == load_config("hm", [a for a in stream if "=" in a]).run.out
    assert args.run_out.startswith(SHARED)
    assert "[serve]" in (CLUSTER / "Dockerfile").read_text()  # the image can run the app
