"""The Kubernetes example (deploy/kubernetes/drainpool.yaml), checked without a cluster.

The built-in kinds (ConfigMap, Deployment) are validated strictly with the
kubernetes-validate package and its offline schemas. KEDA's kinds are custom
resources that package has no schema for, so they get a structural check
against a small JSON schema written here from KEDA's documented fields (only
the fields this example uses, unknown ones refused). The example must also
hold together: its config loads, the grace fits in the pod's termination
period, and the KEDA query counts exactly the ready jobs on a real PostgreSQL.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from drainpool import settings
from drainpool.queue.base import Failure
from drainpool.queue.postgres import PostgresQueue

from tests.support.postgres_server import postgres_servers

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "drainpool.yaml"
KUBERNETES_VERSION = "1.30.0"

_REF = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}},
    "additionalProperties": False,
}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": _REF,
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"type": "string"},
                                "authenticationRef": _REF,
                                # Every value of a trigger's metadata is a string in KEDA.
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                "parameter": {"type": "string"},
                                "name": {"type": "string"},
                                "key": {"type": "string"},
                            },
                        },
                    }
                },
            },
        },
    },
}


def documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(EXAMPLE.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for d in documents() if d["kind"] == kind]
    return doc


def validate(doc: dict[str, Any]) -> None:
    """Strict kubernetes-validate for built-in kinds, the local schema for KEDA's."""
    if doc["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "kind", ["ConfigMap", "Deployment", "TriggerAuthentication", "ScaledObject"]
)
def test_every_object_of_the_example_is_valid(kind: str) -> None:
    validate(by_kind(kind))


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ("spec", "template", "spec", "terminationGracePeriod"), 60),
        ("ScaledObject", ("spec", "triggers", 0, "metadata", "targetQueryValue"), 50),
        ("TriggerAuthentication", ("spec", "secretTargetRef", 0, "secret"), "x"),
    ],
)
def test_the_checks_refuse_a_broken_object(kind: str, path: tuple[Any, ...], value: Any) -> None:
    broken = copy.deepcopy(by_kind(kind))
    node = broken
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value  # a misspelt field, or a number where KEDA wants a string
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(broken)


def test_the_example_holds_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_text = by_kind("ConfigMap")["data"]["drainpool.toml"]
    config = tmp_path / "drainpool.toml"
    config.write_text(config_text)
    monkeypatch.setenv("DRAINPOOL_QUEUE__URL", "postgresql://drainpool@postgres.db:5432/app")
    loaded = settings.load(config)  # raises ConfigError with every problem
    grace = tomllib.loads(config_text)["shutdown"]["grace_seconds"]
    assert loaded.settings.shutdown.grace_seconds == grace

    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > grace
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == loaded.settings.metrics.port
    [mount] = container["volumeMounts"]
    assert container["args"] == ["--config", f"{mount['mountPath']}/drainpool.toml"]
    [env] = container["env"]
    secret = env["valueFrom"]["secretKeyRef"]
    [auth_ref] = by_kind("TriggerAuthentication")["spec"]["secretTargetRef"]
    assert (auth_ref["name"], auth_ref["key"]) == (secret["name"], secret["key"])

    scaled = by_kind("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == by_kind("Deployment")["metadata"]["name"]
    query = scaled["triggers"][0]["metadata"]["query"]
    assert re.search(rf"\bFROM {loaded.settings.queue.schema_name}\.jobs\b", query)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[PostgresQueue]:
    with postgres_servers(tmp_path / "pg") as start:
        server = start()
        opened = PostgresQueue.from_url(server.url(), schema="drainpool")
        try:
            yield opened
        finally:
            opened.close()


def test_the_keda_query_counts_the_ready_jobs(queue: PostgresQueue) -> None:
    query = by_kind("ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    for n in range(4):
        queue.enqueue("t", n)
    queue.enqueue("t", "later", delay=3600)
    queue.fetch(1, ["t"], 60)  # running: not ready
    [dead] = queue.fetch(1, ["t"], 60)
    queue.settle(failures=[Failure(dead, "boom", retry=False)])

    [(counted,)] = queue._db.run(lambda conn: conn.execute(query).fetchall(), "run the query")

    assert counted == queue.stats().ready == 2
