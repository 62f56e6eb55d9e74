"""deploy/: the Kubernetes manifests agree with each other and with the gateway. The config in the ConfigMap
validates (with and without a Redis URL in the environment), and the real gateway run from it answers the
probes the Deployment declares on the ports it declares. The names the pieces use for each other match."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest
from ruamel.yaml import YAML

from frontgate.config.loader import load_config
from frontgate.plugins import plugin_models
from frontgate.units import parse_duration
from tests.integration.helpers import RecordingUpstream, free_port, run_gateway

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _documents() -> dict[str, dict[str, Any]]:
    yaml = YAML(typ="safe")
    by_kind: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.load_all(path.read_text()):
            by_kind[document["kind"]] = document
    return by_kind


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return _documents()


def _container(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _gateway_config(manifests: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    text = manifests["ConfigMap"]["data"]["frontgate.yaml"]
    return text, YAML(typ="safe").load(text)


def test_the_kustomization_lists_every_manifest(manifests: dict[str, dict[str, Any]]) -> None:
    assert set(manifests) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "Kustomization"}
    listed = manifests["Kustomization"]["resources"]
    assert sorted(listed) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("environ", [{}, {"FRONTGATE_REDIS_URL": "redis://redis.default.svc:6379/0"}])
def test_the_configmaps_config_validates(manifests: dict[str, dict[str, Any]], tmp_path: Path,
                                         environ: dict[str, str]) -> None:
    text, _ = _gateway_config(manifests)
    (tmp_path / "frontgate.yaml").write_text(text)
    loaded = load_config([str(tmp_path / "frontgate.yaml")], environ, plugin_models())
    assert loaded.config.store.redis == environ.get("FRONTGATE_REDIS_URL")


def test_the_pieces_name_each_other(manifests: dict[str, dict[str, Any]]) -> None:
    deployment, container = manifests["Deployment"], _container(manifests)
    _, config = _gateway_config(manifests)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == int(config["server"]["listen"][0]["address"].rsplit(":", 1)[1])
    assert ports["admin"] == int(config["admin"]["listen"].rsplit(":", 1)[1])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    (mount,) = container["volumeMounts"]
    config_arg = container["args"][container["args"].index("-c") + 1]
    assert config_arg == f"{mount['mountPath']}/frontgate.yaml"
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["name"] == mount["name"] and volume["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == manifests["Service"]["spec"]["selector"]
    assert [p["targetPort"] for p in manifests["Service"]["spec"]["ports"]] == ["http"]  # never the admin port
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert container["resources"]["requests"]["cpu"]  # what the HPA's utilisation is measured against
    # SIGTERM drains for `timeouts.drain` after the preStop pause: the grace period must cover both.
    drain = parse_duration(config["server"]["timeouts"]["drain"])
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain + pause


def test_the_gateway_run_from_the_configmap_answers_the_probes(manifests: dict[str, dict[str, Any]],
                                                               tmp_path: Path) -> None:
    _, config = _gateway_config(manifests)
    config = copy.deepcopy(config)
    port, admin_port = free_port(), free_port()
    config["server"]["listen"][0]["address"] = f"127.0.0.1:{port}"
    config["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    config["store"]["redis"] = ""  # the variable unset: in-process limits
    upstream = RecordingUpstream()
    try:
        config["upstreams"]["orders"]["targets"] = [upstream.url]
        with run_gateway(tmp_path, config) as gateway:
            container = _container(manifests)
            for probe in ("readinessProbe", "livenessProbe"):
                path = container[probe]["httpGet"]["path"]
                assert httpx.get(f"http://127.0.0.1:{admin_port}{path}", timeout=10).status_code == 200
            assert httpx.get(gateway.url("/orders/1"), timeout=10).status_code == 200
    finally:
        upstream.close()
