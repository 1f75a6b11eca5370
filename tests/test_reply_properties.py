"""Property tests: whatever a server sends, the result is an outcome or a FluxError.

Arbitrary JSON values, bodies, headers and URLs go to both dialects' submit and poll
parsing and, through a mock transport, to a whole client: every attempt must end in a
typed result or a :class:`FluxError` (never a pydantic, httpx, ValueError or KeyError
escaping), and the client must serve a normal task afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux_async import AsyncFlux, FluxError, ManualClock, TaskResult
from flux_async._engine._scheduler import Scheduler
from flux_async._polling._policy import FixedIntervalPolicy
from flux_async._providers import ApiKey, BFLProvider, OpenAIProvider, get_preset
from flux_async._providers._parse import is_usable_url, parse_poll, parse_submit
from flux_async._request._build import build_request
from flux_async._request._models import PollReply, SubmitReply, Task

from ._util import move_time

KEY = "sim-fake-key-property-tests"
BASE = "https://api.hostile.test"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

# Fast and repeatable: the same examples every run, no per-example deadline on a busy box.
FAST = settings(
    derandomize=True,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CLIENT = settings(FAST, max_examples=30)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
urls = st.sampled_from(
    [
        "https://delivery.hostile.test/x.png?sig=s",
        "http://[zz]/x",
        "http://[::1",
        "ftp://delivery.hostile.test/x.png",
        "javascript:alert(1)",
        "data:image/png;base64,iVBORw0KGgoAAAA",
        "data:text/html,<b>hi</b>",
        "https://delivery.hostile.test/\x1b[2J",
        "https:///nohost",
        "//delivery.hostile.test/x.png",
        "https://delivery.hostile.test:99999/x",
        "https://user:pw@delivery.hostile.test/x",
        "http://169.254.169.254/latest",
        "",
    ]
) | st.text(max_size=40)
statuses = st.sampled_from(
    ["Ready", "Pending", "Error", "Failed", "Task not found", "Request Moderated", "Odd"]
)
results = st.fixed_dictionaries(
    {},
    optional={
        "sample": urls | json_values,
        "seed": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
        "prompt": st.text(max_size=20) | json_values,
        "start_time": json_values,
        "end_time": json_values,
    },
)
poll_bodies = st.fixed_dictionaries(
    {"status": statuses | json_values},
    optional={
        "id": json_values,
        "result": results | json_values,
        "progress": json_values,
        "details": json_values,
    },
)
submit_bodies = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=300) | json_values,
        "polling_url": urls | json_values,
        "cost": json_values,
        "input_mp": json_values,
    },
)
relay_bodies = st.fixed_dictionaries(
    {},
    optional={
        "created": json_values,
        "data": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "url": urls | json_values,
                    "b64_json": st.sampled_from(["iVBORw0KGgoAAAAN", "/9j/4AAQ", "!!!!", ""])
                    | json_values,
                    "revised_prompt": st.text(max_size=20) | json_values,
                    "seed": json_values,
                },
            )
            | json_values,
            max_size=2,
        )
        | json_values,
    },
)


def encoded(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = st.one_of(poll_bodies.map(encoded), json_values.map(encoded), st.binary(max_size=64))
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
headers = st.dictionaries(
    st.sampled_from(["content-type", "content-encoding", "x-request-id", "retry-after", "x-odd"]),
    st.sampled_from(["gzip", "deflate", "br", "identity", "zstd", "application/json"])
    | header_text,
    max_size=3,
)


def streamed(status: int, content: bytes, extra: dict[str, str]) -> httpx.Response:
    """Return a response whose body is still on the wire, as a server's would be."""
    return httpx.Response(status, headers=extra, stream=httpx.ByteStream(content))


def mock(status: int, content: bytes, extra: dict[str, str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return streamed(status, content, extra)

    return httpx.MockTransport(handler)


# --- the parsing functions ---------------------------------------------------------------


@FAST
@given(bodies)
def test_parse_poll_returns_a_checked_reply_or_raises_a_flux_error(content: bytes) -> None:
    try:
        reply = parse_poll(content, task_id="t1")
    except FluxError:
        return
    assert isinstance(reply, PollReply)
    assert isinstance(reply.status, str)
    if reply.status == "Ready":
        sample = reply.sample()
        assert sample is not None
        assert sample.sample is None or is_usable_url(sample.sample, allow_data=True)
        assert sample.seed is None or isinstance(sample.seed, int)
        assert sample.prompt is None or isinstance(sample.prompt, str)


@FAST
@given(st.one_of(submit_bodies.map(encoded), json_values.map(encoded), st.binary(max_size=64)))
def test_parse_submit_returns_a_task_id_or_raises_a_flux_error(content: bytes) -> None:
    try:
        reply = parse_submit(content)
    except FluxError as exc:
        billed = getattr(exc, "may_be_billed", False)
    else:
        billed = True
        assert isinstance(reply, SubmitReply)
        assert isinstance(reply.id, str)
        assert 0 < len(reply.id) <= 256
        assert reply.id.isprintable()
        assert reply.polling_url is None or is_usable_url(reply.polling_url)
    # A 2xx submit reply, readable or not, may stand for a billed task.
    assert billed


# --- the providers, both dialects, over a mock transport ----------------------------------


@FAST
@given(st.sampled_from([200, 201, 202, 204, 301, 400, 404, 429, 500, 503]), bodies, headers)
def test_a_bfl_poll_ends_in_a_reply_or_a_flux_error(
    status: int, content: bytes, extra: dict[str, str]
) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=mock(status, content, extra)) as http:
            provider = BFLProvider(
                http, preset=get_preset("bfl"), key=ApiKey(KEY), clock=ManualClock(), base_url=BASE
            )
            task = Task(
                id="t1",
                polling_url=f"{BASE}/v1/get_result?id=t1",
                model="flux-2-pro",
                provider="bfl",
            )
            with contextlib.suppress(FluxError):
                assert isinstance(await provider.poll(task), PollReply)
            with contextlib.suppress(FluxError):
                assert isinstance(await provider.submit(build_request("flux-2-pro", "x")), Task)

    anyio.run(main)


@FAST
@given(relay_bodies.map(encoded) | json_values.map(encoded), headers)
def test_a_relay_submit_ends_in_a_task_or_a_flux_error(
    content: bytes, extra: dict[str, str]
) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=mock(200, content, extra)) as http:
            provider = OpenAIProvider(
                http, preset=get_preset("apiyi"), key=ApiKey(KEY), clock=ManualClock()
            )
            try:
                task = await provider.submit(build_request("flux-2-pro", "x"))
            except FluxError:
                return
            assert task.immediate is not None
            assert task.immediate.status == "Ready"
            sample = task.immediate.sample()
            assert sample is not None
            assert sample.sample is not None
            assert task.id.isprintable()

    anyio.run(main)


# --- a whole client: any poll reply, then a normal task ----------------------------------


class ScriptedAPI:
    """A BFL-dialect mock: task ``t1`` gets the drawn poll reply, the others behave."""

    def __init__(self, content: bytes, extra: dict[str, str]) -> None:
        self.content = content
        self.extra = extra
        self.count = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "delivery.hostile.test":
            return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})
        if request.url.host != "api.hostile.test":
            return httpx.Response(404)
        if request.method == "POST":
            self.count += 1
            task_id = f"t{self.count}"
            return httpx.Response(
                200, json={"id": task_id, "polling_url": f"{BASE}/v1/get_result?id={task_id}"}
            )
        if request.url.params.get("id") == "t1":
            return streamed(200, self.content, self.extra)
        body = {
            "status": "Ready",
            "result": {"sample": "https://delivery.hostile.test/x.png?sig=s"},
        }
        return httpx.Response(200, json=body)


@CLIENT
@given(bodies, headers)
def test_any_poll_reply_ends_one_task_and_the_client_serves_the_next(
    tmp_path: Path, content: bytes, extra: dict[str, str]
) -> None:
    api = ScriptedAPI(content, extra)
    folder = tmp_path / f"run{abs(hash((content, tuple(extra.items()))))}"

    async def main() -> None:
        # A manual clock moved only while everything waits on it: a reply that never ends
        # ``t1`` times out after 20 simulated seconds, and no real slowness of the machine
        # can make the second task's own 20 s run out (it was flaky on a scaled clock).
        clock = ManualClock()
        moved = anyio.Event()
        async with (
            AsyncFlux(
                api_key=KEY,
                base_url=BASE,
                transport=httpx.MockTransport(api.handler),
                clock=clock,
                poll_policy=FixedIntervalPolicy(0.5),
                task_timeout=20.0,
            ) as flux,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(functools.partial(move_time, clock, moved, below=math.inf))
            with contextlib.suppress(FluxError):
                await flux.generate("first", output_dir=folder / "first")
            image = await flux.generate("second", output_dir=folder / "second")
            moved.set()
            assert image.path.read_bytes() == PNG
            stats = flux.statistics()
            assert stats.limiter.in_flight == 0
            assert stats.scheduler.pending == 0

    logging.getLogger("flux_async").setLevel(logging.CRITICAL)
    try:
        anyio.run(main)
    finally:
        logging.getLogger("flux_async").setLevel(logging.NOTSET)


@pytest.mark.parametrize("value", ["", "http://[zz]/x", "ftp://h/x", "https://h/\x00"])
def test_unusable_urls(value: str) -> None:
    assert not is_usable_url(value)


# --- the scheduler, fed by a fake poll function that returns anything ---------------------

failures = st.sampled_from(
    [KeyError("k"), TypeError("t"), ValueError("v"), ZeroDivisionError(), RuntimeError("r")]
)


@FAST
@given(
    st.lists(
        st.one_of(
            st.builds(
                lambda status, result, progress: PollReply.model_construct(
                    status=status, result=result, progress=progress
                ),
                statuses | json_values,
                results | json_values,
                json_values,
            ),
            failures,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_the_scheduler_survives_any_poll_function(script: list[PollReply | Exception]) -> None:
    clock = ManualClock()
    calls = {"odd": 0}

    async def poll(task: Task) -> PollReply:
        if task.id == "odd":
            answer = script[min(calls["odd"], len(script) - 1)]
            calls["odd"] += 1
            if isinstance(answer, Exception):
                raise answer
            return answer
        body = {"status": "Ready", "result": {"sample": "https://delivery.hostile.test/x.png"}}
        return PollReply.model_validate(body)

    async def main() -> None:
        sched = Scheduler(poll, clock=clock, policy=FixedIntervalPolicy(1.0), task_timeout=30.0)
        outcomes: dict[str, object] = {}

        async def collect(task_id: str) -> None:
            task = Task(id=task_id, polling_url=None, model="flux-2-pro", provider="bfl")
            try:
                outcomes[task_id] = await sched.wait(task)
            except FluxError as exc:
                outcomes[task_id] = exc

        async with anyio.create_task_group() as tg:
            await tg.start(sched.run)
            tg.start_soon(collect, "odd")
            for _ in range(200):
                await anyio.lowlevel.checkpoint()
                if "odd" in outcomes:
                    break
                deadline = clock.next_deadline
                if deadline is not None:
                    clock.advance(max(0.0, deadline - clock.monotonic()))
            tg.start_soon(collect, "normal")
            for _ in range(200):
                await anyio.lowlevel.checkpoint()
                if "normal" in outcomes:
                    break
                deadline = clock.next_deadline
                if deadline is not None:
                    clock.advance(max(0.0, deadline - clock.monotonic()))
            tg.cancel_scope.cancel()
        assert isinstance(outcomes["odd"], TaskResult | FluxError)
        assert isinstance(outcomes["normal"], TaskResult)

    logging.getLogger("flux_async").setLevel(logging.CRITICAL)
    try:
        anyio.run(main)
    finally:
        logging.getLogger("flux_async").setLevel(logging.NOTSET)
