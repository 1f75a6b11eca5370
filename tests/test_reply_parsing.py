"""Every server reply parsed at the boundary: typed models, or a FluxError naming the value.

Finding 2 of issue 9: one malformed reply used to escape the scheduler's task group as a
pydantic/httpx/ValueError and take the whole client (and every other task) down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from flux_async import (
    AmbiguousSubmitError,
    AsyncFlux,
    ClientClosedError,
    FluxError,
    MalformedReplyError,
    ManualClock,
    ScaledClock,
    TaskResult,
    UnexpectedError,
)
from flux_async._core._text import clean_text
from flux_async._engine._scheduler import Scheduler
from flux_async._polling._policy import FixedIntervalPolicy
from flux_async._providers import ApiKey, BFLProvider, OpenAIProvider, get_preset
from flux_async._providers._parse import checked_task_id, parse_poll, parse_submit
from flux_async._request._build import build_request
from flux_async._request._models import PollReply, Task

pytestmark = pytest.mark.anyio

KEY = "sim-fake-key-parsing-tests"
BASE = "https://api.hostile.test"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
Handler = Callable[[httpx.Request], httpx.Response]


def ready(**result: Any) -> dict[str, Any]:
    body = {"sample": "https://delivery.hostile.test/x.png?sig=s", "seed": 7}
    body.update(result)
    return {"id": "t1", "status": "Ready", "result": body}


# --- the parsing functions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "field", "shown"),
    [
        (ready(seed=1.5), "result.seed", "1.5"),
        (ready(sample=12345), "result.sample", "12345"),
        (ready(sample="http://[zz]/x"), "result.sample", "http://[zz]/x"),
        (ready(sample="ftp://delivery.test/x.png"), "result.sample", "ftp://"),
        (ready(seed=2**70), "result.seed", str(2**70)),
        (ready(prompt=["not", "text"]), "result.prompt", "['not'"),
        ({"id": "t1", "status": "Ready", "result": "done"}, "result", "'done'"),
        ({"id": "t1", "status": 5}, "status", "5"),
        ({"id": "t1", "status": "x" * 500}, "status", "xxxx"),
        ({"id": "t1"}, "status", "None"),
    ],
)
def test_a_malformed_poll_reply_names_the_field_and_the_value(
    reply: dict[str, Any], field: str, shown: str
) -> None:
    with pytest.raises(MalformedReplyError) as info:
        parse_poll(json.dumps(reply).encode(), task_id="t1")
    error = info.value
    assert (error.field, error.phase, error.task_id) == (field, "poll", "t1")
    assert shown in error.raw
    assert len(error.raw) <= 80
    assert isinstance(error, ValueError)
    assert "t1" in str(error)


@pytest.mark.parametrize(
    "content",
    [b"<html>AccessDenied</html>", b"", b"[" * 100_000 + b"]" * 100_000, b"[1, 2]", b"null"],
)
def test_a_poll_body_that_is_no_json_object_is_malformed(content: bytes) -> None:
    with pytest.raises(MalformedReplyError, match="malformed poll reply"):
        parse_poll(content, task_id="t1")


def test_optional_fields_of_the_wrong_type_are_dropped_not_fatal() -> None:
    reply = parse_poll(
        json.dumps({"id": 5, "status": "Pending", "progress": "half", "details": 1}).encode()
    )
    assert (reply.status, reply.progress, reply.id, reply.details) == ("Pending", None, None, 1)
    submitted = parse_submit(json.dumps({"id": "a", "cost": "lots", "input_mp": []}).encode())
    assert (submitted.id, submitted.cost, submitted.input_mp) == ("a", None, None)


@pytest.mark.parametrize("value", [42, None, "", " ", "x" * 257, "a\x1b[31mb", ["a"]])
def test_a_task_id_must_be_a_short_printable_string(value: object) -> None:
    with pytest.raises(AmbiguousSubmitError) as info:
        checked_task_id(value, phase="submit")
    cause = info.value.__cause__
    assert isinstance(cause, MalformedReplyError)
    assert cause.may_be_billed
    assert "\x1b" not in str(info.value)


def test_a_submit_with_an_unusable_polling_url_keeps_the_task() -> None:
    reply = parse_submit(b'{"id": "t1", "polling_url": "http://[zz]/x", "cost": 3}')
    assert (reply.id, reply.polling_url, reply.cost) == ("t1", None, 3.0)


def test_clean_text_strips_escapes_and_bounds_the_length() -> None:
    assert (
        clean_text("ok\x1b[2J\x1b]0;pwned\x07 fine\r\nnext\u202e", 100) == "ok[2J]0;pwned fine next"
    )
    assert clean_text("renard roux 狐 🦊") == "renard roux 狐 🦊"
    long = clean_text("x" * 10_000_000, 50)
    assert len(long) == 50
    assert long.endswith("…")
    assert clean_text(12) == "12"


# --- the providers over a mock transport -------------------------------------------------


def bfl(handler: Handler) -> BFLProvider:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return BFLProvider(
        http, preset=get_preset("bfl"), key=ApiKey(KEY), clock=ManualClock(), base_url=BASE
    )


def openai(handler: Handler) -> OpenAIProvider:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIProvider(http, preset=get_preset("apiyi"), key=ApiKey(KEY), clock=ManualClock())


async def test_an_unusable_polling_url_falls_back_to_get_result() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.method == "POST":
            return httpx.Response(200, json={"id": "t1", "polling_url": "http://[zz]/x"})
        return httpx.Response(200, json={"id": "t1", "status": "Pending"})

    provider = bfl(handler)
    task = await provider.submit(build_request("flux-2-pro", "a fox"))
    assert task.polling_url is None
    assert (await provider.poll(task)).status == "Pending"
    # A task recorded by an older version with such a URL is polled the same way.
    old = task.model_copy(update={"polling_url": "http://[zz]/x"})
    await provider.poll(old)
    assert seen[1:] == [f"{BASE}/v1/get_result?id=t1"] * 2


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"url": "https://d.test/x.png", "revised_prompt": 5}, "result.prompt"),
        ({"url": "https://d.test/x.png", "seed": 1.5}, "result.seed"),
        ({"url": "https://d.test/x.png", "seed": "many"}, "result.seed"),
    ],
)
async def test_a_relay_reply_with_wrong_types_is_a_named_ambiguous_submit(
    item: dict[str, Any], field: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"created": 1, "data": [item]}, headers={"x-request-id": "r1"}
        )

    with pytest.raises(AmbiguousSubmitError) as info:
        await openai(handler).submit(build_request("flux-2-pro", "a fox"))
    cause = info.value.__cause__
    assert isinstance(cause, MalformedReplyError)
    assert (cause.field, cause.task_id) == (field, "r1")
    assert info.value.may_be_billed


@pytest.mark.parametrize("header", ["x" * 300, "a\x1b[31mb", " "])
async def test_an_unusable_request_id_header_gets_a_fresh_task_id(header: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {
            "created": "soon",
            "data": [{"url": "https://d.test/x.png", "revised_prompt": "ok"}],
        }
        return httpx.Response(200, json=body, headers={"x-request-id": header})

    task = await openai(handler).submit(build_request("flux-2-pro", "a fox"))
    assert task.id.startswith("apiyi-")
    assert task.immediate is not None
    sample = task.immediate.sample()
    assert sample is not None
    assert sample.prompt == "ok"


# --- the scheduler's last-resort guard ---------------------------------------------------


def plain_task(task_id: str) -> Task:
    return Task(id=task_id, polling_url=None, model="flux-2-pro", provider="bfl")


async def outcome(sched: Scheduler, task: Task) -> TaskResult | FluxError:
    try:
        return await sched.wait(task)
    except FluxError as exc:
        return exc


async def drive(clock: ManualClock, done: Callable[[], bool]) -> None:
    for _ in range(1000):
        await anyio.lowlevel.checkpoint()
        if done():
            return
        deadline = clock.next_deadline
        if deadline is not None:
            clock.advance(max(0.0, deadline - clock.monotonic()))
    raise AssertionError("never done")


async def test_any_exception_in_a_poll_fails_that_task_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()

    async def poll(task: Task) -> PollReply:
        if task.id == "bad":
            raise KeyError("a bug somewhere")
        if task.id == "closed":
            raise ClientClosedError("odd, but a FluxError")
        return PollReply.model_validate(ready() | {"id": task.id})

    sched = Scheduler(poll, clock=clock, policy=FixedIntervalPolicy(1.0))
    results: dict[str, TaskResult | FluxError] = {}
    caplog.set_level(logging.ERROR, logger="flux_async")
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)

        async def collect(task_id: str) -> None:
            results[task_id] = await outcome(sched, plain_task(task_id))

        for name in ("bad", "closed", "good"):
            tg.start_soon(collect, name)
        await drive(clock, lambda: len(results) == 3)
        # The loop survived: a later task still resolves.
        tg.start_soon(collect, "later")
        await drive(clock, lambda: len(results) == 4)
        tg.cancel_scope.cancel()
    assert isinstance(results["bad"], UnexpectedError)
    assert isinstance(results["bad"].__cause__, KeyError)
    assert results["bad"].task_id == "bad"
    assert isinstance(results["closed"], ClientClosedError)
    assert isinstance(results["good"], TaskResult)
    assert isinstance(results["later"], TaskResult)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert "unexpected KeyError in a poll" in record.getMessage()


async def test_malformed_polls_are_retried_then_fail_the_task() -> None:
    clock = ManualClock()
    calls: dict[str, int] = {}

    async def poll(task: Task) -> PollReply:
        calls[task.id] = calls.get(task.id, 0) + 1
        if task.id == "always" or calls[task.id] == 1:
            return parse_poll(json.dumps(ready(seed=1.5)).encode(), task_id=task.id)
        return PollReply.model_validate(ready() | {"id": task.id})

    sched = Scheduler(poll, clock=clock, policy=FixedIntervalPolicy(1.0))
    results: dict[str, TaskResult | FluxError] = {}
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)

        async def collect(task_id: str) -> None:
            results[task_id] = await outcome(sched, plain_task(task_id))

        tg.start_soon(collect, "always")
        tg.start_soon(collect, "once")
        await drive(clock, lambda: len(results) == 2)
        tg.cancel_scope.cancel()
    assert isinstance(results["always"], MalformedReplyError)
    assert results["always"].field == "result.seed"
    assert calls["always"] == 3
    assert isinstance(results["once"], TaskResult)
    assert calls["once"] == 2


async def test_an_end_callback_that_raises_does_not_stop_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()

    async def poll(task: Task) -> PollReply:
        return PollReply.model_validate(ready() | {"id": task.id})

    def boom(_: object) -> None:
        raise RuntimeError("hook bug")

    sched = Scheduler(poll, clock=clock, policy=FixedIntervalPolicy(1.0))
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        sched.add(plain_task("a"), on_terminal=boom)
        results: list[TaskResult | FluxError] = []

        async def collect() -> None:
            results.append(await outcome(sched, plain_task("a")))
            results.append(await outcome(sched, plain_task("b")))

        tg.start_soon(collect)
        await drive(clock, lambda: len(results) == 2)
        tg.cancel_scope.cancel()
    assert all(isinstance(r, TaskResult) for r in results)
    assert "end callback" in caplog.text


# --- the client, end to end over a hostile mock -------------------------------------------


class MockAPI:
    """A BFL-dialect server whose poll replies the test chooses, per task."""

    def __init__(self) -> None:
        self.poll_replies: dict[str, bytes] = {}
        self.count = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "delivery.hostile.test":
            return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})
        if request.method == "POST":
            self.count += 1
            task_id = f"t{self.count}"
            return httpx.Response(
                200, json={"id": task_id, "polling_url": f"{BASE}/v1/get_result?id={task_id}"}
            )
        task_id = request.url.params["id"]
        body = self.poll_replies.get(task_id, json.dumps(ready() | {"id": task_id}).encode())
        return httpx.Response(200, content=body)


def hostile_client(api: MockAPI) -> AsyncFlux:
    return AsyncFlux(
        api_key=KEY,
        base_url=BASE,
        transport=httpx.MockTransport(api.handler),
        clock=ScaledClock(1000.0),
        poll_policy=FixedIntervalPolicy(0.5),
    )


@pytest.mark.parametrize(
    "reply",
    [
        json.dumps(ready(seed=1.5)).encode(),
        json.dumps(ready(sample=12345)).encode(),
        json.dumps(ready(sample="http://[zz]/x")).encode(),
        b"<html>not json</html>",
        b"[" * 50_000,
    ],
)
async def test_a_malformed_reply_fails_one_generate_and_the_client_goes_on(
    reply: bytes, tmp_path: Path
) -> None:
    api = MockAPI()
    api.poll_replies["t1"] = reply
    async with hostile_client(api) as flux:
        with pytest.raises(MalformedReplyError) as info:
            await flux.generate("first", output_dir=tmp_path / "a")
        assert info.value.task_id == "t1"
        image = await flux.generate("second", output_dir=tmp_path / "b")
        assert image.path.read_bytes() == PNG
        assert flux.statistics().limiter.in_flight == 0
    assert not (tmp_path / "a").exists() or list((tmp_path / "a").iterdir()) == []


async def test_generate_many_keeps_every_other_outcome(tmp_path: Path) -> None:
    api = MockAPI()
    api.poll_replies["t2"] = json.dumps(ready(seed=1.5)).encode()
    async with hostile_client(api) as flux:
        outcomes = [
            o async for o in flux.generate_many(["a", "b", "c"], output_dir=tmp_path, concurrency=1)
        ]
    assert sorted(o.ok for o in outcomes) == [False, True, True]
    [failed] = [o for o in outcomes if not o.ok]
    assert isinstance(failed.error, MalformedReplyError)
    assert failed.may_be_billed


def test_server_text_is_cleaned_where_it_enters() -> None:
    reply = parse_poll(json.dumps(ready(prompt="a\x1b[31m fox\r\nin snow")).encode())
    sample = reply.sample()
    assert sample is not None
    assert sample.prompt == "a[31m fox in snow"
    from flux_async._request._replies import unknown_status

    odd = PollReply(id="t1", status="Odd\x1b]0;x\x07")
    assert "\x1b" not in str(unknown_status("t1", odd, 61.0))
