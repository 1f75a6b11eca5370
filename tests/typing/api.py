"""Never run: exercises the public API so ``mypy --strict`` checks its types (stamina's trick)."""

from __future__ import annotations

from pathlib import Path

from flux_async import (
    AsyncFlux,
    FluxError,
    GeneratedImage,
    MalformedReplyError,
    Outcome,
    Task,
    TaskResult,
    ValidationError,
    build_request,
)


async def one_image() -> GeneratedImage:
    async with AsyncFlux(api_key=None, provider="bfl", base_url=None) as flux:
        img = await flux.generate(
            "a red fox", model="flux-2-pro", width=1024, height=768, seed=7, output_dir="out"
        )
        _: tuple[Path, str, int | None, float | None, str, str | None] = (
            img.path,
            img.task_id,
            img.seed,
            img.cost,
            img.model,
            img.prompt,
        )
        return img


async def many(items: list[str]) -> list[Path | None]:
    paths: list[Path | None] = []
    async with AsyncFlux() as flux:
        async for outcome in flux.generate_many(items, model="flux-2-pro", output_dir="out"):
            o: Outcome = outcome
            ok: bool = o.ok
            index: int = o.index
            error: FluxError | None = o.error
            paths.append(o.path if ok and index >= 0 and error is None else None)
    return paths


async def step_by_step() -> Path:
    async with AsyncFlux() as flux:
        try:
            request = build_request("flux-2-pro", "a red fox", width=1024)
        except ValidationError as exc:
            raise SystemExit(f"{exc.field}: {exc.rule}") from exc
        task: Task = await flux.submit(request)
        result: TaskResult = await flux.wait(task)
        return await flux.save(result, "out/fox.jpeg")


async def bounded() -> str | None:
    async with AsyncFlux(max_reply_bytes=1 << 20, max_image_bytes=32 << 20) as flux:
        try:
            await flux.generate("a red fox", output_dir="out")
        except MalformedReplyError as exc:
            shown: tuple[str, str | None, str, bool] = (
                exc.phase,
                exc.field,
                exc.raw,
                exc.may_be_billed,
            )
            return shown[2]
    return None
