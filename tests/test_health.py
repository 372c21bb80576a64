"""/livez and /readyz: what a load balancer and an operator see."""

from __future__ import annotations

from app.core import Core
from tests.conftest import Personas, publish


def test_readyz_needs_a_publisher_holding_the_key_and_a_fresh_manifest(client, core: Core, personas: Personas,
                                                                       clock) -> None:
    assert client.get("/livez").json == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "no publisher holding the signing key" in r.json["checks"]["signing"]
    e = core.curation.submit(personas.alice.actor, "ready.example.test")
    core.curation.act(personas.bruno.actor, e.id, "approve")
    publish(core)
    r = client.get("/readyz")
    assert r.status_code == 200, r.json
    assert r.json["checks"]["signing"].startswith(f"key {core.publisher.key.public.id_hex}")
    clock.advance(core.settings.manifest_ttl * 0.8)  # the worker stopped re-signing
    r = client.get("/readyz")
    assert r.status_code == 503 and "expires in" in r.json["checks"]["manifest"]
