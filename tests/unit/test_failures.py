"""The failure table: what each kind of failed attempt means for the client, failover and cooldown."""

from __future__ import annotations

import pytest

from app.errors import UpstreamError, UpstreamTimeout, VendorError
from app.failures import Cooling, Failure, carries_error

NET = UpstreamError("Vendor v (model m) refused the connection.")
SLOW = UpstreamTimeout("Vendor v (model m) sent no answer within 1 s.")
A, C, N = Cooling.COMBINATION, Cooling.CREDENTIAL, Cooling.NOTHING


def vendor(status: int) -> VendorError:
    return VendorError(status, {"message": f"HTTP {status}", "type": "x", "param": None, "code": None})


@pytest.mark.parametrize(
    ("failure", "outcome", "retryable", "cooling"),
    [
        (Failure.network(NET), "network", True, A),
        (Failure.timeout(SLOW), "timeout", True, A),
        (Failure.transport(NET), "network", True, A),
        (Failure.transport(SLOW), "timeout", True, A),
        (Failure.bad_answer(NET), "bad_answer", True, A),
        # Overload, rate limits and the vendor's own faults: elsewhere, and cool the combination.
        (Failure.vendor_status(vendor(408), model_pinned=False), "vendor_error", True, A),
        (Failure.vendor_status(vendor(429), model_pinned=True), "vendor_error", True, A),
        (Failure.vendor_status(vendor(500), model_pinned=True), "vendor_error", True, A),
        (Failure.vendor_status(vendor(503), model_pinned=False), "vendor_error", True, A),
        (Failure.vendor_status(vendor(529), model_pinned=False), "vendor_error", True, A),
        # A refused key: its other combinations cool, the next is tried (for a pinned model, its
        # other keys). An unknown model: the configuration's fault unless the client pinned it.
        (Failure.vendor_status(vendor(401), model_pinned=False), "vendor_error", True, C),
        (Failure.vendor_status(vendor(403), model_pinned=False), "vendor_error", True, C),
        (Failure.vendor_status(vendor(404), model_pinned=False), "vendor_error", True, A),
        (Failure.vendor_status(vendor(401), model_pinned=True), "vendor_error", True, C),
        (Failure.vendor_status(vendor(403), model_pinned=True), "vendor_error", True, C),
        (Failure.vendor_status(vendor(404), model_pinned=True), "vendor_error", False, N),
        # The request's fault: answered at once, nothing cools.
        (Failure.vendor_status(vendor(400), model_pinned=False), "vendor_error", False, N),
        (Failure.vendor_status(vendor(413), model_pinned=False), "vendor_error", False, N),
        (Failure.vendor_status(vendor(422), model_pinned=False), "vendor_error", False, N),
        # An error object where an answer should be: judged by its own code, else as a 502.
        (Failure.error_in_body({"error": {"message": "x", "code": 429}}, model_pinned=True), "vendor_error", True, A),
        (Failure.error_in_body({"error": {"message": "x", "code": 400}}, model_pinned=False), "vendor_error", False, N),
        (Failure.error_in_body({"error": {"message": "x", "code": "bad"}}, model_pinned=True), "vendor_error", True, A),
        # The router's own fault while relaying: nobody else to try, and the vendor is not to blame.
        (Failure.relay_fault(NET), "router_error", False, N),
        # After commit nothing is retried, and a pinned model's 404 cools as an unpinned one's would.
        (Failure.vendor_status(vendor(404), model_pinned=True).after_commit(), "vendor_error", False, A),
        (Failure.vendor_status(vendor(401), model_pinned=True).after_commit(), "vendor_error", False, C),
        (Failure.vendor_status(vendor(400), model_pinned=True).after_commit(), "vendor_error", False, N),
        (Failure.network(NET).after_commit(), "network", False, A),
    ],
)
def test_failure_table(failure, outcome, retryable, cooling):
    assert (failure.outcome, failure.retryable, failure.cooling) == (outcome, retryable, cooling)


@pytest.mark.parametrize(
    ("document", "is_error"),
    [
        ({"error": {"message": "quota"}}, True),
        ({"error": None, "choices": [{"index": 0}]}, False),  # some servers send "error": null
        ({"error": None}, False),
        ({"choices": []}, False),
        ({"error": {"message": "x"}, "choices": [{"index": 0}]}, False),  # an answer is an answer
    ],
)
def test_only_a_non_null_error_without_choices_is_an_error(document, is_error):
    assert carries_error(document) is is_error


def test_vendor_failure_keeps_the_vendors_error_and_retry_after():
    error = vendor(429)
    failure = Failure.vendor_status(error, model_pinned=False, retry_after=12.0)
    assert failure.error is error
    assert failure.status == 429
    assert failure.retry_after == 12.0
