"""The failure table: what each kind of failed attempt means for the client, failover and cooldown."""

from __future__ import annotations

import pytest

from app.errors import UpstreamError, UpstreamTimeout, VendorError
from app.failures import Cooling, Failure

NET = UpstreamError("Vendor v (model m) refused the connection.")
SLOW = UpstreamTimeout("Vendor v (model m) sent no answer within 1 s.")
A, C, N = Cooling.COMBINATION, Cooling.CREDENTIAL, Cooling.NOTHING


def vendor(status: int) -> VendorError:
    return VendorError(status, {"message": f"HTTP {status}", "type": "x", "param": None, "code": None})


@pytest.mark.parametrize(
    ("failure", "outcome", "retryable", "cooling", "status_class"),
    [
        (Failure.network(NET), "network", True, A, "none"),
        (Failure.timeout(SLOW), "timeout", True, A, "none"),
        (Failure.transport(NET), "network", True, A, "none"),
        (Failure.transport(SLOW), "timeout", True, A, "none"),
        (Failure.bad_answer(NET), "bad_answer", True, A, "none"),
        # Overload, rate limits and the vendor's own faults: elsewhere, and cool the combination.
        (Failure.vendor_status(vendor(408), model_pinned=False), "vendor_error", True, A, "4xx"),
        (Failure.vendor_status(vendor(429), model_pinned=True), "vendor_error", True, A, "4xx"),
        (Failure.vendor_status(vendor(500), model_pinned=True), "vendor_error", True, A, "5xx"),
        (Failure.vendor_status(vendor(503), model_pinned=False), "vendor_error", True, A, "5xx"),
        (Failure.vendor_status(vendor(529), model_pinned=False), "vendor_error", True, A, "5xx"),
        # The configuration's fault when the router chose the model; final when the client pinned it.
        (Failure.vendor_status(vendor(401), model_pinned=False), "vendor_error", True, C, "4xx"),
        (Failure.vendor_status(vendor(403), model_pinned=False), "vendor_error", True, C, "4xx"),
        (Failure.vendor_status(vendor(404), model_pinned=False), "vendor_error", True, A, "4xx"),
        (Failure.vendor_status(vendor(401), model_pinned=True), "vendor_error", False, C, "4xx"),
        (Failure.vendor_status(vendor(403), model_pinned=True), "vendor_error", False, C, "4xx"),
        (Failure.vendor_status(vendor(404), model_pinned=True), "vendor_error", False, N, "4xx"),
        # The request's fault: answered at once, nothing cools.
        (Failure.vendor_status(vendor(400), model_pinned=False), "vendor_error", False, N, "4xx"),
        (Failure.vendor_status(vendor(413), model_pinned=False), "vendor_error", False, N, "4xx"),
        (Failure.vendor_status(vendor(422), model_pinned=False), "vendor_error", False, N, "4xx"),
    ],
)
def test_failure_table(failure, outcome, retryable, cooling, status_class):
    assert (failure.outcome, failure.retryable, failure.cooling, failure.status_class) == (
        outcome,
        retryable,
        cooling,
        status_class,
    )


def test_vendor_failure_keeps_the_vendors_error_and_retry_after():
    error = vendor(429)
    failure = Failure.vendor_status(error, model_pinned=False, retry_after=12.0)
    assert failure.error is error
    assert failure.status == 429
    assert failure.retry_after == 12.0
