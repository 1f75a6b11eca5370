"""Paths belong to the caller: no server string, caller name or race writes outside the folder.

Hostile task ids come from a transport that rewrites the simulator's submit replies (the
BFL ``id`` field, a relay's ``x-request-id`` header), so the rest of the exchange is the
real simulator's.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from flux_async import (
    AmbiguousSubmitError,
    AsyncFlux,
    ConfigurationError,
    GeneratedImage,
    ScaledClock,
    ValidationError,
)
from flux_async._cli import main
from flux_async._core._paths import (
    TASK_STEM_MAX,
    check_file_name,
    contained,
    place_new,
    prepare_folder,
    task_stem,
)
from flux_async._polling._policy import FixedIntervalPolicy
from flux_async._providers._parse import MAX_ID_CHARS
from flux_async.testing import FAKE_API_KEY, Simulator, SimulatorConfig

pytestmark = pytest.mark.anyio

MODEL = "flux-2-pro"
FAST = {MODEL: (0.4, 0.3), "flux-kontext-pro": (0.4, 0.3)}
HOSTILE_IDS = [
    "../../x/pwned",
    "/abs/path/pwned",
    "a.pth",
    "..",
    ".",
    "",
    "x" * 5000,
    "..\\..\\win",
    "nul\x00byte",
    ".hidden",
    "C:\\Windows\\evil",
    "é/\u202e/gnp.exe",
]


class RenamingTransport(httpx.AsyncBaseTransport):
    """Pass requests to ``inner``; give each submit reply the next id of ``ids``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, ids: Iterator[str]) -> None:
        self._inner = inner
        self._ids = ids

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        path = request.url.path
        if request.method != "POST" or not response.is_success:
            return response
        await response.aread()
        new_id = next(self._ids)
        if path.endswith("/images/generations"):  # OpenAI-style relay: id in a header
            headers = [(k.encode(), v.encode()) for k, v in response.headers.items()]
            headers = [(k, v) for k, v in headers if k != b"x-request-id"]
            headers.append((b"x-request-id", new_id.encode("utf-8")))
            return httpx.Response(response.status_code, headers=headers, content=response.content)
        body = json.loads(response.content)
        body["id"] = new_id  # the polling_url still names the real task
        return httpx.Response(response.status_code, json=body)


def make_sim(**config: object) -> Simulator:
    cfg = SimulatorConfig(latency=dict(FAST), **config)  # type: ignore[arg-type]
    return Simulator(cfg, clock=ScaledClock(40.0))


def make_client(
    sim: Simulator, ids: list[str] | None = None, provider: str = "bfl", **options: object
) -> AsyncFlux:
    transport = sim.transport()
    if ids is not None:
        transport = RenamingTransport(transport, iter(ids))
    return AsyncFlux(
        api_key=FAKE_API_KEY,
        provider=provider,
        base_url=sim.config.api_base,
        transport=transport,
        clock=sim.clock,
        poll_policy=FixedIntervalPolicy(0.25),
        **options,  # type: ignore[arg-type]
    )


def files_under(root: Path) -> list[Path]:
    """Every file and symlink under ``root``, walked without following links."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        found += [Path(folder) / name for name in files + dirs if (Path(folder) / name).is_file()]
    return sorted(found)


def assert_all_inside(root: Path, out: Path) -> None:
    outside = [p for p in files_under(root) if not p.resolve().is_relative_to(out.resolve())]
    assert outside == [], f"written outside {out}: {outside}"


@pytest.fixture
def sim() -> Simulator:
    return make_sim()


# --- the naming scheme -------------------------------------------------------------------


@pytest.mark.parametrize("task_id", HOSTILE_IDS)
def test_a_task_stem_is_one_harmless_bounded_name(task_id: str) -> None:
    stem = task_stem(task_id)
    assert stem
    assert set(stem) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert not stem.startswith("-")
    assert len(stem) <= TASK_STEM_MAX + 11
    assert stem != task_id  # each of these had to change, so it carries the id's hash


def test_a_well_formed_id_is_kept_and_changed_ids_never_collide() -> None:
    uuid = "3f2c1a9e-8b7d-4c6e-9f0a-1b2c3d4e5f60"
    assert task_stem(uuid) == uuid
    similar = ["a/b", "a?b", "a b", "a-b", "a\\b", "a" * 70, "a" * 71]
    stems = [task_stem(i) for i in similar]
    assert len(set(stems)) == len(similar)
    assert task_stem("a/b") == task_stem("a/b")  # stable across runs: hash, not random


@pytest.mark.parametrize(
    "name",
    ["../evil", "../../evil", "/etc/passwd", "a/b", "a\\b", "..", ".", "", "nul\x00", "x\x1b[2J",
     ".hidden", "C:evil", "x" * 300],
)  # fmt: skip
def test_a_caller_name_with_a_path_in_it_is_refused(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_file_name(name, field="filename")
    assert caught.value.field == "filename"
    assert caught.value.rule


def test_plain_caller_names_pass() -> None:
    for name in ("fox", "fox.png", "a red fox", "été-2", "00001"):
        assert check_file_name(name) == name


def test_contained_refuses_a_symlink_that_leads_outside(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link.jpeg").symlink_to(elsewhere / "target.jpeg")
    (out / "inner").symlink_to(out / "fine.jpeg")
    with pytest.raises(ValueError, match="outside"):
        contained(out, "link.jpeg")
    with pytest.raises(ValueError, match="single file name"):
        contained(out, "../x")
    assert contained(out, "inner") == out / "inner"
    assert contained(out, "new.jpeg") == out / "new.jpeg"


# --- generate with a hostile server ---------------------------------------------------------


def usable_id(task_id: str) -> bool:
    """Whether the reply boundary takes ``task_id`` as it is (``_parse.checked_task_id``)."""
    return 0 < len(task_id) <= MAX_ID_CHARS and task_id.isprintable()


@pytest.mark.parametrize("provider", ["bfl", "apiyi"])
async def test_hostile_task_ids_never_write_outside_the_folder(
    tmp_path: Path, provider: str
) -> None:
    extra = {"api_base": "https://api.apiyi.sim.invalid"} if provider == "apiyi" else {}
    sim = make_sim(**extra)
    out = tmp_path / "deep" / "er" / "out"
    images: list[GeneratedImage] = []
    refused: list[str] = []
    async with make_client(sim, list(HOSTILE_IDS), provider=provider) as flux:
        for i, task_id in enumerate(HOSTILE_IDS):
            try:
                images.append(await flux.generate(f"item {i}", model=MODEL, output_dir=out))
            except AmbiguousSubmitError:
                refused.append(task_id)
    if provider == "apiyi":
        # A relay's unusable x-request-id is replaced by an id of the client's own.
        assert refused == []
        sent = [i if usable_id(i) else "apiyi-" for i in HOSTILE_IDS]
    else:
        # BFL's id is the only handle on a paid task: an unusable one is a clean error.
        assert refused == [i for i in HOSTILE_IDS if not usable_id(i)]
        sent = [i for i in HOSTILE_IDS if usable_id(i)]
    assert [img.task_id[: len(want)] for img, want in zip(images, sent, strict=True)] == sent
    for img in images:
        assert img.path.parent == out
        assert img.path.stem == task_stem(img.task_id)
    assert len({img.path for img in images}) == len(images)
    assert_all_inside(tmp_path, out)
    assert len(files_under(tmp_path)) == len(images)


async def test_hostile_ids_stay_inside_the_orphan_folder(tmp_path: Path, sim: Simulator) -> None:
    handed: list[GeneratedImage] = []
    done = anyio.Event()

    def on_orphan(image: GeneratedImage) -> None:
        handed.append(image)
        done.set()

    orphans = tmp_path / "orphans"
    submitted = anyio.Event()

    def hook(event: object) -> None:
        if type(event).__name__ == "TaskSubmitted":
            submitted.set()

    async with make_client(
        sim, ["../../escaped"], orphan_dir=orphans, on_orphan=on_orphan, event_hooks=[hook]
    ) as flux:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: flux.generate("left", model=MODEL, output_dir=tmp_path))
                await submitted.wait()
                tg.cancel_scope.cancel()
            await done.wait()
    assert handed[0].path.parent == orphans
    assert handed[0].path.stem == task_stem("../../escaped")
    assert_all_inside(tmp_path, orphans)


async def test_save_into_a_folder_uses_the_safe_name(tmp_path: Path, sim: Simulator) -> None:
    async with make_client(sim, ["../up"]) as flux:
        task = await flux.submit(prompt="x", model=MODEL)
        result = await flux.wait(task)
        first = await flux.save(result, tmp_path)
        second = await flux.save(result, tmp_path)
    assert first.parent == second.parent == tmp_path
    assert first.name == f"{task_stem('../up')}.jpeg"
    assert second.name == f"{task_stem('../up')}-1.jpeg"  # a folder save never replaces


# --- caller names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../evil", "/abs/evil", "a/b", "..", "x\x00y"])
async def test_a_bad_filename_is_refused_before_anything_is_paid(
    tmp_path: Path, sim: Simulator, name: str
) -> None:
    async with make_client(sim) as flux:
        with pytest.raises(ValidationError) as caught:
            await flux.generate("x", model=MODEL, output_dir=tmp_path / "out", filename=name)
    assert caught.value.field == "filename"
    assert len(sim.records.submits) == 0
    assert files_under(tmp_path) == []


def test_cli_generate_name_with_a_path_exits_2_and_submits_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["generate", "x", "--simulate", "--out", str(tmp_path / "out"), "--name", "../../evil"]
    )
    assert code == 2
    assert "filename" in capsys.readouterr().err
    assert files_under(tmp_path) == []


# --- never overwrite ---------------------------------------------------------------------


async def test_generate_never_replaces_an_existing_file(tmp_path: Path, sim: Simulator) -> None:
    mine = tmp_path / "fox.jpeg"
    mine.write_bytes(b"the user's own file")
    async with make_client(sim) as flux:
        first = await flux.generate("x", model=MODEL, output_dir=tmp_path, filename="fox")
        second = await flux.generate("x", model=MODEL, output_dir=tmp_path, filename="fox")
    assert mine.read_bytes() == b"the user's own file"
    assert (first.path.name, second.path.name) == ("fox-1.jpeg", "fox-2.jpeg")


async def test_a_symlink_under_the_name_is_neither_followed_nor_replaced(
    tmp_path: Path, sim: Simulator
) -> None:
    out, victim = tmp_path / "out", tmp_path / "victim.jpeg"
    out.mkdir()
    victim.write_bytes(b"keep me")
    (out / "fox.jpeg").symlink_to(victim)
    async with make_client(sim) as flux:
        img = await flux.generate("x", model=MODEL, output_dir=out, filename="fox")
    assert img.path == out / "fox-1.jpeg"
    assert victim.read_bytes() == b"keep me"
    assert (out / "fox.jpeg").is_symlink()


async def test_two_generate_many_runs_into_one_folder_keep_every_image(
    tmp_path: Path, sim: Simulator
) -> None:
    async with make_client(sim) as flux, anyio.create_task_group() as tg:
        paths: list[Path] = []

        async def run() -> None:
            async for outcome in flux.generate_many(
                [f"p{i}" for i in range(4)], model=MODEL, output_dir=tmp_path
            ):
                assert outcome.path is not None
                paths.append(outcome.path)

        tg.start_soon(run)
        tg.start_soon(run)
    assert len(set(paths)) == 8
    assert sorted(p.name for p in files_under(tmp_path)) == sorted(p.name for p in paths)
    assert {"00000.jpeg", "00000-1.jpeg"} <= {p.name for p in paths}


def test_concurrent_writers_never_win_the_same_name(tmp_path: Path) -> None:
    final = tmp_path / "00000.jpeg"
    temps = []
    for i in range(16):
        temp = tmp_path / f".t{i}.part"
        temp.write_bytes(str(i).encode())
        temps.append(temp)
    won: list[Path] = []
    barrier = threading.Barrier(len(temps))

    def writer(temp: Path) -> None:
        barrier.wait()
        won.append(place_new(temp, final))

    threads = [threading.Thread(target=writer, args=(t,)) for t in temps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(won)) == 16
    assert sorted(int(p.read_bytes()) for p in won) == list(range(16))
    assert not any(t.exists() for t in temps)


def test_place_new_without_link_support_reserves_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "link", no_link)
    (tmp_path / "a.jpeg").write_bytes(b"old")
    temp = tmp_path / ".t.part"
    temp.write_bytes(b"new")
    assert place_new(temp, tmp_path / "a.jpeg") == tmp_path / "a-1.jpeg"
    assert (tmp_path / "a.jpeg").read_bytes() == b"old"
    assert (tmp_path / "a-1.jpeg").read_bytes() == b"new"
    other = tmp_path / ".u.part"
    other.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        place_new(other, tmp_path / "a.jpeg", tries=2)


# --- the folder is write-tested before the first submit -------------------------------------


async def test_an_unwritable_output_dir_fails_before_the_submit(
    tmp_path: Path, sim: Simulator
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    async with make_client(sim) as flux:
        with pytest.raises(ConfigurationError, match=str(not_a_folder)):
            await flux.generate("x", model=MODEL, output_dir=not_a_folder)
        with pytest.raises(ConfigurationError, match="not writable"):
            async for _ in flux.generate_many(["a", "b"], model=MODEL, output_dir=not_a_folder):
                pass  # pragma: no cover - the first iteration raises
    assert len(sim.records.submits) == 0


def test_prepare_folder_names_the_os_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(ConfigurationError) as caught:
        prepare_folder(blocker / "sub")
    assert str(blocker / "sub") in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    made = prepare_folder(tmp_path / "a" / "b")
    assert made.is_dir()
    assert list(made.iterdir()) == []  # the probe file is gone


def test_cli_generate_into_a_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["generate", "x", "--simulate", "--out", str(target)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err  # said by the CLI, first


# --- generate_many: a malformed item is that item's failure ---------------------------------


async def test_malformed_items_fail_alone_and_every_outcome_arrives(
    tmp_path: Path, sim: Simulator
) -> None:
    items: list[object] = [
        "a fox",
        42,
        {"prompt": 5},
        {1: "x"},
        {"prompt": "x", "no_such_field": 1},
        {"prompt": "x", "model": 3},
        None,
        "a cat",
    ]
    async with make_client(sim) as flux:
        outcomes = [
            o
            async for o in flux.generate_many(items, model=MODEL, output_dir=tmp_path)  # type: ignore[arg-type]
        ]
        # The client is still usable afterwards.
        again = await flux.generate("after", model=MODEL, output_dir=tmp_path)
    assert again.path.exists()
    by_index = {o.index: o for o in outcomes}
    assert sorted(by_index) == list(range(len(items)))
    assert [i for i, o in sorted(by_index.items()) if o.ok] == [0, 7]
    for i in (1, 2, 3, 4, 5, 6):
        error = by_index[i].error
        assert isinstance(error, ValidationError), (i, error)
    assert "items[1]" in str(by_index[1].error)
    assert "prompt" in str(by_index[2].error)
    assert len(sim.records.submits) == 3


async def test_concurrent_callers_share_one_folder_check(tmp_path: Path, sim: Simulator) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    errors: list[BaseException] = []
    async with make_client(sim) as flux:

        async def caller(folder: Path) -> None:
            try:
                await flux.generate("x", model=MODEL, output_dir=folder)
            except ConfigurationError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(caller, blocker)
        assert len(errors) == 5  # each waiter tried again and failed with its own error
        assert len(sim.records.submits) == 0
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(caller, tmp_path / "good")
    assert len(errors) == 5
    assert len(files_under(tmp_path / "good")) == 5
