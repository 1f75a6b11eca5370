"""Server text reaches the terminal and the reports stripped; inline images leave the ledger."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from flux_async import AsyncFlux
from flux_async._batching._batch import run_batch
from flux_async._batching._batch_cli import _say
from flux_async._batching._ledger import LEDGER_NAME
from flux_async._batching._report import strip_control
from flux_async.testing import FAKE_API_KEY, KNOWN_MODELS, ScaledClock, Simulator, SimulatorConfig

from .test_batch import simulated, write

pytestmark = pytest.mark.anyio

HOSTILE = "bad\x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\nFAKE: all ok\u202egnp.exe\x00\x9b1m\u200b"
FORBIDDEN = [chr(c) for c in (*range(32), *range(0x7F, 0xA0))] + ["\u202e", "\u200b"]


def clean(text: str) -> bool:
    return not any(ch in text for ch in FORBIDDEN)


def test_strip_control_removes_escapes_and_keeps_the_words() -> None:
    out = strip_control(HOSTILE)
    assert clean(out)
    assert out == "bad]0;pwned[2J[31mred FAKE: all okgnp.exe1m"
    assert strip_control("été — ok\tfine") == "été — ok fine"
    assert strip_control("x" * 50, 10) == "xxxxxxxxx…"  # _text.clean_text cuts


def test_terminal_messages_are_stripped(capsys: pytest.CaptureFixture[str]) -> None:
    _say(f"failed: {HOSTILE}")
    err = capsys.readouterr().err
    assert err.endswith("\n")
    assert clean(err[:-1])


async def test_server_text_in_results_and_contact_sheet_is_stripped(tmp_path: Path) -> None:
    prompts = write(tmp_path / "p.txt", "a fox\x1b[5m blinking\n")
    out = tmp_path / "out"
    async with simulated() as (sim, flux):
        sim.inject("submit", status=400, body={"detail": HOSTILE})
        summary = await run_batch(flux, prompts, out)
    assert summary.failed == 1
    record = json.loads((out / "results.jsonl").read_text(encoding="utf-8"))
    assert "FAKE: all ok" in record["error"]
    assert clean(record["error"])
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "FAKE: all ok" in page
    assert clean(page.replace("\n", ""))


async def test_inline_relay_images_are_not_kept_in_the_ledger(tmp_path: Path) -> None:
    image_bytes = 300_000
    config = SimulatorConfig(
        latency=dict.fromkeys(KNOWN_MODELS, (0.4, 0.3)),
        api_base="https://www.dmxapi.sim.invalid",
        openai_response="b64_json",
        image_bytes=image_bytes,
    )
    sim = Simulator(config, clock=ScaledClock(400.0))
    prompts = write(tmp_path / "p.txt", "".join(f"fox {n}\n" for n in range(6)))
    out = tmp_path / "out"
    async with AsyncFlux(
        api_key=FAKE_API_KEY,
        provider="dmxapi-openai",
        base_url=config.api_base,
        transport=sim.transport(),
        clock=sim.clock,
    ) as flux:
        summary = await run_batch(flux, prompts, out, model="flux-kontext-pro")
    assert summary.ok == 6
    conn = sqlite3.connect(out / LEDGER_NAME)
    try:
        urls = [row[0] for row in conn.execute("SELECT sample_url FROM items")]
    finally:
        conn.close()
    assert all(url.startswith("data:image/") and len(url) < 100 for url in urls), urls
    ledger_size = sum(p.stat().st_size for p in out.glob(LEDGER_NAME + "*"))
    assert ledger_size < image_bytes  # six images of 300 kB each are not in it
