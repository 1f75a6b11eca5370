"""Tests for flux_async._web._webhooks: verification, parsing, de-duplication, replay windows."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import string
from collections.abc import Callable
from typing import Any

import pytest

from flux_async._core._clock import ManualClock
from flux_async._errors import ConfigurationError, FluxError
from flux_async._request._models import Status
from flux_async._web._webhooks import (
    WebhookEvent,
    WebhookRejected,
    WebhookVerifier,
    new_webhook_secret,
    normalise_status,
    parse_event,
    sign_body,
    verify_signature,
)

SECRET = "whsec-test-secret-0123456789"
TASK = "0b8a1c2d-3e4f-5a6b-7c8d-9e0f1a2b3c4d"
SAMPLE = "https://delivery-eu.bfl.ai/results/abc/sample.jpeg?se=2026-01-01T00%3A00%3A00Z&sig=SIGNED"


def body_of(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


READY_BODY = body_of(id=TASK, status="Ready", result={"sample": SAMPLE, "seed": 7})


def hex_hmac(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def make_verifier(clock: ManualClock, **kw: Any) -> WebhookVerifier:
    return WebhookVerifier(SECRET, clock=clock, **kw)


# ---------------------------------------------------------------- verify_signature


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Webhook-Secret": SECRET}, id="echoed secret"),
        pytest.param({"x-webhook-secret": SECRET}, id="echoed secret lower case"),
        pytest.param({"X-WEBHOOK-SECRET": SECRET}, id="echoed secret upper case"),
        pytest.param({"X-BFL-Signature": "sha256=" + hex_hmac(READY_BODY)}, id="hmac prefixed"),
        pytest.param({"x-bfl-signature": hex_hmac(READY_BODY)}, id="hmac bare hex"),
        pytest.param(
            {"X-Bfl-Signature": "SHA256=" + hex_hmac(READY_BODY).upper()}, id="hmac upper"
        ),
        pytest.param({"X-BFL-Signature": " sha256= " + hex_hmac(READY_BODY) + " "}, id="spaces"),
        pytest.param({"X-Webhook-Signature": sign_body(READY_BODY, SECRET)}, id="alias header"),
        pytest.param(
            {"X-Webhook-Secret": "wrong", "X-BFL-Signature": sign_body(READY_BODY, SECRET)},
            id="one of two valid",
        ),
    ],
)
def test_verify_signature_accepts_valid_credentials(headers: dict[str, str]) -> None:
    verify_signature(headers, READY_BODY, SECRET)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param({}, "missing signature", id="no headers"),
        pytest.param({"Content-Type": "application/json"}, "missing signature", id="unrelated"),
        pytest.param({"X-Webhook-Secret": "not-the-secret"}, "bad signature", id="wrong secret"),
        pytest.param({"X-Webhook-Secret": ""}, "bad signature", id="empty secret header"),
        pytest.param({"X-Webhook-Secret": SECRET + " "}, "bad signature", id="secret + space"),
        pytest.param({"X-Webhook-Secret": "sécret-ü"}, "bad signature", id="non-ascii secret"),
        pytest.param(
            {"X-BFL-Signature": sign_body(READY_BODY, "another-secret")},
            "bad signature",
            id="hmac wrong key",
        ),
        pytest.param(
            {"X-BFL-Signature": sign_body(READY_BODY + b" ", SECRET)},
            "bad signature",
            id="hmac other body",
        ),
        pytest.param({"X-BFL-Signature": "sha256="}, "bad signature", id="hmac empty"),
        pytest.param({"X-BFL-Signature": "sha256=zz€"}, "bad signature", id="hmac non-ascii"),
        pytest.param(
            {"X-BFL-Signature": "sha1=" + hex_hmac(READY_BODY)}, "bad signature", id="hmac sha1"
        ),
        pytest.param(
            {"X-Webhook-Secret": "wrong", "X-BFL-Signature": "sha256=00"},
            "bad signature",
            id="both wrong",
        ),
    ],
)
def test_verify_signature_rejects(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(WebhookRejected) as info:
        verify_signature(headers, READY_BODY, SECRET)
    assert info.value.reason == reason
    assert info.value.http_status == 401
    assert SECRET not in str(info.value)


def test_verify_signature_refuses_an_empty_secret() -> None:
    with pytest.raises(ConfigurationError):
        verify_signature({"X-Webhook-Secret": ""}, READY_BODY, "")


@pytest.mark.parametrize(
    ("headers", "calls"),
    [
        ({"X-Webhook-Secret": SECRET}, 1),
        ({"X-Webhook-Secret": "wrong"}, 1),
        ({"X-BFL-Signature": sign_body(READY_BODY, SECRET)}, 1),
        ({"X-BFL-Signature": "sha256=00"}, 1),
        ({"X-Webhook-Secret": "wrong", "X-BFL-Signature": "sha256=00"}, 2),
    ],
)
def test_every_comparison_is_constant_time(
    monkeypatch: pytest.MonkeyPatch, headers: dict[str, str], calls: int
) -> None:
    seen: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    # The module's own reference to hmac: what verify_signature calls at run time.
    monkeypatch.setattr("flux_async._web._webhooks.hmac.compare_digest", counting)
    with contextlib.suppress(WebhookRejected):
        verify_signature(headers, READY_BODY, SECRET)
    assert len(seen) == calls
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in seen)


def test_sign_body_matches_hmac_sha256() -> None:
    assert sign_body(b"{}", "k") == "sha256=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()


def test_new_webhook_secret_is_random_and_url_safe() -> None:
    secrets = {new_webhook_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert len(secret) >= 43
        assert set(secret) <= set(string.ascii_letters + string.digits + "-_")


# ---------------------------------------------------------------- parse_event


def test_parse_event_get_result_shape_with_extra_fields() -> None:
    body = body_of(
        id=TASK,
        status="Ready",
        result={"sample": SAMPLE, "seed": 7, "prompt": "a fox"},
        progress=None,
        details=None,
        preview={"x": 1},
        brand_new_field=[1, 2],
    )
    event = parse_event(body, now=1234.5)
    assert event == WebhookEvent(
        task_id=TASK,
        status=Status.READY,
        raw_status="Ready",
        result={"sample": SAMPLE, "seed": 7, "prompt": "a fox"},
        delivery_id=hashlib.sha256(body).hexdigest(),
        received_at=1234.5,
    )
    assert event.needs_confirmation


def test_parse_event_task_id_shape_with_extra_fields() -> None:
    body = body_of(
        task_id=TASK, status="SUCCESS", result={"sample": SAMPLE}, id="evt_1", event="done"
    )
    event = parse_event(body, now=0.0)
    assert event.task_id == TASK  # task_id wins over an event id
    fallback = parse_event(body_of(task_id=None, id=TASK, status="Ready"), now=0.0)
    assert fallback.task_id == TASK
    assert event.status == Status.READY
    assert event.raw_status == "SUCCESS"
    assert event.result == {"sample": SAMPLE}


@pytest.mark.parametrize("result", [None, "a string", [1, 2], 3])
def test_parse_event_keeps_only_object_results(result: object) -> None:
    event = parse_event(body_of(id=TASK, status="Ready", result=result), now=0.0)
    assert event.result is None


def test_parse_event_without_result() -> None:
    assert parse_event(body_of(id=TASK, status="Pending"), now=0.0).result is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ready", Status.READY),
        ("READY", Status.READY),
        ("SUCCESS", Status.READY),
        ("succeeded", Status.READY),
        ("COMPLETED", Status.READY),
        ("complete", Status.READY),
        ("Pending", Status.PENDING),
        ("QUEUED", Status.PENDING),
        ("processing", Status.PENDING),
        ("RUNNING", Status.PENDING),
        ("IN_PROGRESS", Status.PENDING),
        ("in-progress", Status.PENDING),
        ("Request Moderated", Status.REQUEST_MODERATED),
        ("REQUEST_MODERATED", Status.REQUEST_MODERATED),
        ("Content Moderated", Status.CONTENT_MODERATED),
        ("CONTENT_MODERATED", Status.CONTENT_MODERATED),
        ("content-moderated", Status.CONTENT_MODERATED),
        ("Error", Status.ERROR),
        ("ERROR", Status.ERROR),
        ("errored", Status.ERROR),
        ("FAILED", Status.FAILED),
        ("Failed", Status.FAILED),
        ("failure", Status.FAILED),
        ("Task not found", Status.NOT_FOUND),
        ("TASK_NOT_FOUND", Status.NOT_FOUND),
        ("not_found", Status.NOT_FOUND),
        ("  ready  ", Status.READY),
        ("Done", "Done"),
        ("MODERATED", "MODERATED"),
        ("Teleported", "Teleported"),
    ],
)
def test_status_mapping(raw: str, expected: str) -> None:
    assert normalise_status(raw) == expected
    event = parse_event(body_of(task_id=TASK, status=raw), now=0.0)
    assert (event.status, event.raw_status) == (expected, raw)
    assert event.needs_confirmation == (expected != Status.PENDING)


def test_every_protocol_status_maps_to_itself() -> None:
    for status in Status.KNOWN:
        assert normalise_status(status) == status


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{not json", id="bad json"),
        pytest.param(b"\xff\xfe{}", id="not utf-8"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b'"Ready"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep nesting"),
        pytest.param(body_of(status="Ready"), id="no id"),
        pytest.param(body_of(id="", status="Ready"), id="empty id"),
        pytest.param(body_of(id="   ", status="Ready"), id="blank id"),
        pytest.param(body_of(id=42, status="Ready"), id="numeric id"),
        pytest.param(body_of(task_id=None, status="Ready"), id="null task_id"),
        pytest.param(body_of(id="x" * 257, status="Ready"), id="huge id"),
        pytest.param(body_of(id=TASK), id="no status"),
        pytest.param(body_of(id=TASK, status=""), id="empty status"),
        pytest.param(body_of(id=TASK, status=3), id="numeric status"),
        pytest.param(body_of(id=TASK, status="x" * 129), id="huge status"),
    ],
)
def test_parse_event_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as info:
        parse_event(body, now=0.0)
    assert info.value.reason == "malformed body"
    assert info.value.http_status == 400


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Webhook-Id": "wh_1"}, "wh_1"),
        ({"webhook-id": "wh_2", "X-Request-Id": "req_9"}, "wh_2"),
        ({"X-REQUEST-ID": "req_9"}, "req_9"),
        ({"X-Webhook-Id": "", "X-Request-Id": "req_9"}, "req_9"),
        ({"X-Webhook-Id": "y" * 1000}, "y" * 256),
        ({"Content-Type": "application/json"}, None),
    ],
)
def test_parse_event_reads_the_senders_delivery_id(
    headers: dict[str, str], expected: str | None
) -> None:
    event = parse_event(READY_BODY, now=0.0, headers=headers)
    assert event.sender_delivery_id == expected
    assert event.delivery_id == hashlib.sha256(READY_BODY).hexdigest()


def test_event_repr_hides_the_signed_query() -> None:
    text = repr(parse_event(READY_BODY, now=0.0))
    assert "SIGNED" not in text
    assert "sample.jpeg?<redacted>" in text
    assert TASK in text
    assert "sample" not in repr(parse_event(body_of(id=TASK, status="Pending"), now=0.0))


# ---------------------------------------------------------------- WebhookVerifier


def test_accept_returns_the_event_then_none_for_a_duplicate() -> None:
    clock = ManualClock()
    verifier = make_verifier(clock)
    headers = {"X-Webhook-Secret": SECRET}
    event = verifier.accept(headers, READY_BODY)
    assert event is not None
    assert (event.task_id, event.status, event.received_at) == (TASK, Status.READY, clock.time())
    clock.advance(599.0)
    assert verifier.accept(headers, READY_BODY) is None
    # The HMAC-signed copy of the same bytes is the same delivery.
    assert verifier.accept({"X-BFL-Signature": sign_body(READY_BODY, SECRET)}, READY_BODY) is None
    stats = verifier.statistics()
    assert (stats.accepted, stats.duplicates, stats.rejected, stats.remembered) == (1, 2, {}, 1)


def test_a_different_body_for_the_same_task_is_a_new_delivery() -> None:
    verifier = make_verifier(ManualClock())
    headers = {"X-Webhook-Secret": SECRET, "X-Webhook-Id": "same-id"}
    pending = verifier.accept(headers, body_of(id=TASK, status="Pending"))
    ready = verifier.accept(headers, READY_BODY)
    assert pending is not None
    assert ready is not None
    assert (pending.status, ready.status) == (Status.PENDING, Status.READY)


def test_the_id_store_forgets_after_the_replay_window() -> None:
    clock = ManualClock()
    verifier = make_verifier(clock, replay_window=60.0)
    headers = {"X-Webhook-Secret": SECRET}
    assert verifier.accept(headers, READY_BODY) is not None
    clock.advance(59.9)
    assert verifier.accept(headers, READY_BODY) is None
    clock.advance(0.1)
    assert verifier.accept(headers, READY_BODY) is not None
    assert verifier.statistics().remembered == 1
    clock.advance(60.0)
    other = body_of(id="other", status="Pending")
    assert verifier.accept(headers, other) is not None
    assert verifier.statistics().remembered == 1  # the old entry aged out


def test_bounded_memory_forgets_the_oldest_first() -> None:
    clock = ManualClock()
    verifier = make_verifier(clock, max_remembered=3)
    headers = {"X-Webhook-Secret": SECRET}
    bodies = [body_of(id=f"task-{i}", status="Ready") for i in range(4)]
    for body in bodies:
        clock.advance(1.0)
        assert verifier.accept(headers, body) is not None
    assert verifier.statistics().remembered == 3
    assert [verifier.accept(headers, body) for body in bodies[1:]] == [None, None, None]
    assert verifier.accept(headers, bodies[0]) is not None  # evicted, so new again
    assert verifier.statistics().remembered == 3


@pytest.mark.parametrize(
    ("stamp", "ok"),
    [
        pytest.param(lambda now: str(int(now)), True, id="now"),
        pytest.param(lambda now: f"{now - 599.0:.3f}", True, id="599 s old"),
        pytest.param(lambda now: str(int(now - 601)), False, id="601 s old"),
        pytest.param(lambda now: str(int(now + 299)), True, id="299 s ahead"),
        pytest.param(lambda now: str(int(now + 301)), False, id="301 s ahead"),
        pytest.param(lambda now: str(int((now - 10) * 1000)), True, id="milliseconds"),
        pytest.param(lambda now: str(int((now - 700) * 1000)), False, id="old milliseconds"),
        pytest.param(lambda now: "2027-01-15T08:00:00+00:00", True, id="iso"),
        pytest.param(lambda now: "2027-01-15T08:00:00", True, id="iso naive utc"),
        pytest.param(lambda now: "2027-01-15T07:00:00Z", False, id="iso old"),
        pytest.param(lambda now: "Fri, 15 Jan 2027 08:00:00 GMT", True, id="http date"),
        pytest.param(lambda now: "Fri, 15 Jan 2027 07:00:00 GMT", False, id="http date old"),
        pytest.param(lambda now: "yesterday", False, id="unreadable"),
        pytest.param(lambda now: "", False, id="empty"),
        pytest.param(lambda now: "nan", False, id="nan"),
        pytest.param(lambda now: "inf", False, id="inf"),
    ],
)
def test_timestamp_header_bounds_the_replay_window(stamp: Callable[[float], str], ok: bool) -> None:
    clock = ManualClock(start=1_800_000_000.0)  # 2027-01-15T08:00:00Z
    for name in ("X-Webhook-Timestamp", "x-bfl-timestamp", "Webhook-Timestamp"):
        headers = {"X-BFL-Signature": sign_body(READY_BODY, SECRET), name: stamp(clock.time())}
        fresh = make_verifier(clock)
        if ok:
            assert fresh.accept(headers, READY_BODY) is not None
        else:
            with pytest.raises(WebhookRejected) as info:
                fresh.accept(headers, READY_BODY)
            assert (info.value.reason, info.value.http_status) == ("stale", 400)
            assert fresh.statistics().rejected == {"stale": 1}


def test_a_delivery_stamped_ahead_is_remembered_until_its_stamp_is_stale() -> None:
    clock = ManualClock()
    verifier = make_verifier(clock, replay_window=600.0)
    headers = {"X-Webhook-Secret": SECRET, "X-Webhook-Timestamp": str(clock.time() + 200)}
    assert verifier.accept(headers, READY_BODY) is not None
    clock.advance(700.0)  # past the window since receipt, but the stamp is only 500 s old
    assert verifier.accept(headers, READY_BODY) is None
    clock.advance(101.0)
    with pytest.raises(WebhookRejected, match="stale"):
        verifier.accept(headers, READY_BODY)


def test_an_expired_entry_behind_a_longer_lived_one_is_forgotten() -> None:
    clock = ManualClock()
    verifier = make_verifier(clock, replay_window=600.0, max_remembered=3)
    ahead = {"X-Webhook-Secret": SECRET, "X-Webhook-Timestamp": str(clock.time() + 300)}
    plain = {"X-Webhook-Secret": SECRET}
    b, c, d, e = (body_of(id=name, status="Ready") for name in "bcde")
    assert verifier.accept(ahead, READY_BODY) is not None  # forgotten at 900
    clock.advance(100.0)
    assert verifier.accept(plain, b) is not None  # forgotten at 700
    clock.advance(100.0)
    assert verifier.accept(plain, c) is not None  # forgotten at 800
    clock.advance(550.0)  # t=750: b expired, yet sits behind the longer-lived first entry
    assert verifier.statistics().remembered == 3
    assert verifier.accept(plain, b) is not None
    assert verifier.accept(plain, b) is None
    # b is now the youngest: the cap evicts the first entry, then c, and keeps b.
    assert verifier.accept(plain, d) is not None
    assert verifier.accept(plain, e) is not None
    assert verifier.accept(plain, b) is None
    assert verifier.accept(plain, c) is not None
    assert verifier.statistics().remembered == 3


@pytest.mark.parametrize(
    ("headers", "body", "reason", "status"),
    [
        ({}, READY_BODY, "missing signature", 401),
        ({"X-Webhook-Secret": "forged"}, READY_BODY, "bad signature", 401),
        ({"X-BFL-Signature": "sha256=" + "0" * 64}, READY_BODY, "bad signature", 401),
        ({"X-Webhook-Secret": SECRET}, b"not json", "malformed body", 400),
        ({"X-Webhook-Secret": SECRET}, b'{"status": "Ready"}', "malformed body", 400),
        ({"X-Webhook-Secret": SECRET}, b" " * 2049, "too large", 413),
    ],
)
def test_accept_rejects_and_counts(
    headers: dict[str, str], body: bytes, reason: str, status: int
) -> None:
    verifier = make_verifier(ManualClock(), max_body_bytes=2048)
    with pytest.raises(WebhookRejected) as info:
        verifier.accept(headers, body)
    assert (info.value.reason, info.value.http_status) == (reason, status)
    assert isinstance(info.value, FluxError)
    stats = verifier.statistics()
    assert (stats.accepted, stats.rejected, stats.rejected_total, stats.remembered) == (
        0,
        {reason: 1},
        1,
        0,
    )


def test_forged_deliveries_are_checked_before_the_body_is_read() -> None:
    verifier = make_verifier(ManualClock())
    with pytest.raises(WebhookRejected) as info:
        verifier.accept({"X-Webhook-Secret": "forged"}, b"not json at all")
    assert info.value.reason == "bad signature"


def test_statistics_count_a_mixed_stream() -> None:
    clock = ManualClock()
    verifier = make_verifier(clock)
    good = {"X-Webhook-Secret": SECRET}
    verifier.accept(good, READY_BODY)
    verifier.accept(good, READY_BODY)
    verifier.accept(good, body_of(task_id="b", status="FAILED"))
    for headers, body in [({}, READY_BODY), ({"X-Webhook-Secret": "x"}, READY_BODY)] * 2 + [
        (good, b"[]")
    ]:
        with pytest.raises(WebhookRejected):
            verifier.accept(headers, body)
    stats = verifier.statistics()
    assert stats.accepted == 2
    assert stats.duplicates == 1
    assert stats.rejected == {"missing signature": 2, "bad signature": 2, "malformed body": 1}
    assert stats.rejected_total == 5
    assert stats.remembered == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"replay_window": 0.0},
        {"replay_window": float("nan")},
        {"future_tolerance": -1.0},
        {"max_remembered": 0},
        {"max_body_bytes": 0},
    ],
)
def test_verifier_refuses_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        WebhookVerifier(SECRET, clock=ManualClock(), **kwargs)


def test_verifier_refuses_an_empty_secret() -> None:
    with pytest.raises(ConfigurationError):
        WebhookVerifier("", clock=ManualClock())


def test_the_secret_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="flux_async")
    clock = ManualClock()
    verifier = make_verifier(clock)
    shown: list[str] = [repr(verifier), str(verifier)]
    cases: list[tuple[dict[str, str], bytes]] = [
        ({"X-Webhook-Secret": SECRET}, READY_BODY),
        ({"X-Webhook-Secret": SECRET}, READY_BODY),
        ({"X-Webhook-Secret": SECRET[:-1]}, READY_BODY),
        ({"X-Webhook-Secret": SECRET}, SECRET.encode()),
        ({"X-Webhook-Secret": SECRET, "X-Webhook-Timestamp": SECRET}, READY_BODY),
        ({}, READY_BODY),
    ]
    for headers, body in cases:
        try:
            event = verifier.accept(headers, body)
        except WebhookRejected as exc:
            shown += [str(exc), repr(exc), repr(exc.args)]
        else:
            shown.append(repr(event))
    shown += [repr(verifier), repr(verifier.statistics()), caplog.text]
    assert caplog.records  # the verifier did log
    for text in shown:
        assert SECRET not in text
        assert SECRET[:-1] not in text
