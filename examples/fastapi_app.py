"""A FastAPI backend that serves FLUX images through one shared ``AsyncFlux``.

One client lives as long as the app (FastAPI's lifespan opens and closes it), and every
request shares its active-task limiter, its polling scheduler and its connection pool.
With ``FLUX_WEBHOOK_URL`` set, BFL tells the app when a task ends (``POST
/webhooks/flux``) and the client polls only as a slow fallback.

Run it (``pip install fastapi uvicorn``)::

    export BFL_API_KEY=...                                   # your key
    export FLUX_WEBHOOK_URL=https://images.example.com/webhooks/flux   # optional
    export FLUX_WEBHOOK_SECRET=...                           # the same in every worker
    uvicorn examples.fastapi_app:app

    curl -X POST localhost:8000/images -H 'content-type: application/json' \\
         -d '{"prompt": "a red fox in the snow"}' -o fox.jpeg

Without a key, ``FLUX_SIMULATE=1`` runs against the in-process simulator (polling only).
Settings: ``FLUX_OUTPUT_DIR`` (default: a folder in the temp dir), ``FLUX_ORPHAN_DIR``
(images whose requester left; default: the output dir), ``FLUX_DRAIN_SECONDS`` (how
long shutdown waits for paid work; default 30). See docs/web-backend.md.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from flux_async import (
    AsyncFlux,
    ClientClosedError,
    FluxError,
    InsufficientCreditsError,
    ModerationError,
    ValidationError,
)

logger = logging.getLogger("fastapi_app")

_MEDIA_TYPES = {
    ".jpeg": "image/jpeg",
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}


class ImageRequest(BaseModel):
    """What a user may ask for; everything else keeps the model's defaults."""

    prompt: str = Field(min_length=1, max_length=4000)
    model: str = "flux-2-pro"
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    output_format: str | None = None


def flux_from_env() -> AsyncFlux:
    """Build the app's client from environment variables (see the module docstring)."""
    drain = float(os.environ.get("FLUX_DRAIN_SECONDS", "30"))
    orphan_dir = os.environ.get("FLUX_ORPHAN_DIR")
    if os.environ.get("FLUX_SIMULATE"):
        from flux_async import ScaledClock
        from flux_async.testing import FAKE_API_KEY, Simulator

        sim = Simulator(clock=ScaledClock(10.0))
        return AsyncFlux(
            api_key=FAKE_API_KEY,
            base_url=sim.config.api_base,
            transport=sim.transport(),
            clock=sim.clock,
            drain_timeout=drain,
            orphan_dir=orphan_dir,
        )
    return AsyncFlux(
        webhook_url=os.environ.get("FLUX_WEBHOOK_URL"),
        webhook_secret=os.environ.get("FLUX_WEBHOOK_SECRET"),
        drain_timeout=drain,
        orphan_dir=orphan_dir,
    )


def create_app(
    flux_factory: Callable[[], AsyncFlux] = flux_from_env, *, output_dir: Path | None = None
) -> FastAPI:
    """Return the app; ``flux_factory`` builds its client when the app starts."""
    out = output_dir or Path(
        os.environ.get("FLUX_OUTPUT_DIR") or Path(tempfile.gettempdir()) / "flux-images"
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        out.mkdir(parents=True, exist_ok=True)
        # Leaving this block drains paid work for drain_timeout seconds, then closes.
        async with flux_factory() as flux:
            app.state.flux = flux
            yield

    app = FastAPI(title="FLUX images", lifespan=lifespan)

    @app.post("/images", response_class=FileResponse)
    async def create_image(body: ImageRequest, request: Request) -> FileResponse:
        """Generate one image and return it; the file stays under the output folder."""
        flux: AsyncFlux = request.app.state.flux
        fields = body.model_dump(exclude_none=True, exclude={"prompt", "model"})
        try:
            image = await flux.generate(body.prompt, model=body.model, output_dir=out, **fields)
        except ValidationError as exc:
            detail = {"field": exc.field, "rule": exc.rule, "message": str(exc)}
            raise HTTPException(status_code=422, detail=detail) from exc
        except ModerationError as exc:
            raise HTTPException(status_code=422, detail="refused by content moderation") from exc
        except (ClientClosedError, InsufficientCreditsError) as exc:
            logger.warning("image service unavailable: %s", exc)
            raise HTTPException(status_code=503, detail="image service unavailable") from exc
        except FluxError as exc:
            logger.warning("generation failed: %s", exc)
            raise HTTPException(status_code=502, detail="image generation failed") from exc
        return FileResponse(
            image.path,
            media_type=_MEDIA_TYPES.get(image.path.suffix, "application/octet-stream"),
            headers={"x-task-id": image.task_id, "x-seed": str(image.seed)},
        )

    @app.post("/webhooks/flux")
    async def flux_webhook(request: Request) -> JSONResponse:
        """Receive BFL's webhook; the client verifies it and resolves the task."""
        flux: AsyncFlux = request.app.state.flux
        status, payload = await flux.handle_webhook(request.headers, await request.body())
        return JSONResponse(payload, status_code=status)

    @app.get("/metrics")
    async def metrics(request: Request) -> dict[str, float]:
        """Return the client's counters and gauges, flat, for a metrics scraper."""
        flux: AsyncFlux = request.app.state.flux
        return flux.statistics().as_dict()

    return app


app = create_app()
