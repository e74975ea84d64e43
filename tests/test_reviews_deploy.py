"""The reviews component (deploy/k8s/components/reviews-postgres) hangs together where an
overlay adds it (REVIEWS_OVERLAYS; the others run with reviews off): the gateway's and the
workers' settings name the PostgreSQL Service's port, the password comes only from the
reviews-postgres Secret (to the server, the gateway and the workers alike), and only the
gateway and the workers may reach the server, which reaches nobody."""

import pytest
from sqlalchemy.engine import make_url

from gateway.server.settings import Settings
from tests.manifests import container_port
from tests.test_deploy_invariants import OVERLAYS, REVIEWS_OVERLAYS, rendering

pytestmark = pytest.mark.stack  # renders with kustomize, as the other deploy tests
SECRET = "<secret reviews-postgres:password>"


@pytest.mark.parametrize("overlay", REVIEWS_OVERLAYS)
def test_the_gateway_and_workers_reach_the_store_with_the_secrets_password(overlay: str) -> None:
    r = rendering(overlay)
    server = r.workload("reviews-postgres")
    server_env = r.env(server.container())
    assert server_env["POSTGRES_PASSWORD"] == SECRET
    [service] = [s for s in r.all("Service") if s["metadata"]["name"] == "reviews-postgres"]
    for name, container in (("gateway", "gateway"), ("jobs-worker", "worker")):
        env = r.env(r.workload(name).container(container))
        settings = Settings.model_validate(
            {k.removeprefix("GATEWAY_").lower(): v for k, v in env.items() if "<secret" not in v}
        )
        assert settings.reviews_enabled, name
        url = make_url(settings.reviews_url())
        assert url.password is None  # never in the ConfigMap
        assert env["GATEWAY_REVIEWS_DATABASE_PASSWORD"] == SECRET, name
        assert (url.host, url.port) == (
            service["metadata"]["name"],
            service["spec"]["ports"][0]["port"],
        )
        assert (url.username, url.database) == (
            server_env["POSTGRES_USER"],
            server_env["POSTGRES_DB"],
        )
        port = container_port(server.container(), "postgres")
        assert r.egress_allowed(r.workload(name), port, server.labels, server.namespace, to=server)
        assert r.ingress_allowed(server, port, r.workload(name).labels, server.namespace), name
    port = container_port(server.container(), "postgres")
    assert not r.ingress_allowed(server, port, r.workload("triton").labels, server.namespace)
    assert not r.ingress_allowed(server, port, {}, "default")
    assert not r.egress_allowed(server, 443, {}, "", to_ip="52.216.8.0")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_without_the_component_reviews_are_off(overlay: str) -> None:
    r = rendering(overlay)
    env = r.env(r.workload("gateway").container("gateway"))
    enabled = Settings.model_validate(
        {"reviews_enabled": env.get("GATEWAY_REVIEWS_ENABLED", False)}
    )
    assert enabled.reviews_enabled == (overlay in REVIEWS_OVERLAYS)
