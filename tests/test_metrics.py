"""The exporter's HTTP metrics through Flask's test client: what may and may not become a label."""

from __future__ import annotations

from tests.prometheus import parse


def test_unknown_method_is_answered_but_never_a_label(client):
    for method in ("BREW", "XYZZY"):
        response = client.open("/v1/chat/completions", method=method)
        assert response.status_code == 405
        assert response.get_json()["error"]["code"] == "method_not_allowed"
    client.open("/nowhere", method="FROB")
    client.delete("/health")

    metrics = parse(client.get("/metrics").get_data(as_text=True))
    assert metrics.label_values("method") == {"DELETE"}
    assert metrics.value("router_http_unknown_method_requests_total") == 3
    assert metrics.value("flask_http_request_total", method="DELETE", status="405") == 1


def test_routes_not_raw_paths_label_the_request_metrics(client):
    client.get("/v1/models/gpt-4o")
    client.get("/v1/models/no-such-model")
    client.get("/v1/anything/at/all")
    metrics = parse(client.get("/metrics").get_data(as_text=True))
    assert metrics.label_values("url_rule") == {"/v1/models/<path:model_id>", "None"}
    assert metrics.value("flask_http_request_duration_seconds_count", url_rule="/v1/models/<path:model_id>") == 2
