"""results.jsonl and the contact sheet, written from the ledger."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest

from flux_async._batching._ledger import ItemState, Ledger, LedgerItem
from flux_async._batching._report import LedgerView, write_contact_sheet, write_results_jsonl

pytestmark = pytest.mark.anyio

XSS = '<script>alert("x")</script> & fox'


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


async def filled_ledger(directory: Path) -> Ledger:
    """Return a ledger with one item in each interesting state, added out of order."""
    ledger = await Ledger.open(directory, run_config={"model": "flux-dev"})
    prompts = ["a red fox", XSS, "a cat", "an owl", "ambiguous one", "a dog"]
    await ledger.add_items(
        [(i, f"fp{i}", p, "flux-dev", None) for i, p in reversed(list(enumerate(prompts)))]
    )
    await ledger.mark_submitted(0, task_id="t0", polling_url=None, cost=1.5)
    await ledger.mark_saved(
        0, path="00000-a-red-fox.jpeg", sha256="a" * 64, seed=11, prompt_used=None
    )
    await ledger.mark_submitted(1, task_id="t1", polling_url=None, cost=2.0)
    absolute = directory / "sub dir" / "x#1 é.png"
    await ledger.mark_saved(1, path=str(absolute), sha256="b" * 64, seed=12, prompt_used=None)
    await ledger.mark_submitted(2, task_id="t2", polling_url=None, cost=1.0)
    await ledger.mark_failed(
        2,
        reason="Content Moderated; url https://delivery.test/r/s.jpeg?se=2026&sig=SECRET failed",
        may_be_billed=False,
    )
    await ledger.mark_submitted(3, task_id="t3", polling_url=None, cost=1.0)
    await ledger.mark_ready(3, sample_url="https://delivery.test/o.jpeg?sig=SECRET", deadline=1.0)
    await ledger.mark_submitting(4)
    await ledger.mark_failed(4, reason="HTTP 502 <b>bad gateway</b>", may_be_billed=True)
    return ledger


async def test_results_jsonl_lists_every_item_in_input_order(tmp_path: Path) -> None:
    async with await filled_ledger(tmp_path) as ledger:
        path = await write_results_jsonl(ledger, tmp_path)
    assert path == tmp_path / "results.jsonl"
    text = path.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["index"] for r in records] == list(range(6))
    assert [r["status"] for r in records] == ["ok", "ok", "failed", "pending", "failed", "pending"]
    assert [r["state"] for r in records][3:] == ["ready", "failed", "pending"]
    required = {"index", "prompt", "status", "path", "task_id", "seed", "cost", "error"}
    assert all(required <= r.keys() for r in records)
    ok = records[0]
    assert (ok["path"], ok["task_id"], ok["seed"], ok["cost"], ok["error"]) == (
        "00000-a-red-fox.jpeg",
        "t0",
        11,
        1.5,
        None,
    )
    assert records[1]["path"] == "sub dir/x#1 é.png"  # absolute path made relative, POSIX
    assert records[1]["prompt"] == XSS
    assert records[2]["error"].startswith("Content Moderated")
    assert records[2]["may_be_billed"] is False
    assert records[4]["may_be_billed"] is True
    assert records[4]["task_id"] is None
    assert "SECRET" not in text
    assert "sig=" not in text
    assert temp_files(tmp_path) == []


async def test_contact_sheet_lists_every_item_escaped_with_relative_thumbnails(
    tmp_path: Path,
) -> None:
    async with await filled_ledger(tmp_path) as ledger:
        path = await write_contact_sheet(ledger, tmp_path, title="Batch <one> & two")
    assert path == tmp_path / "index.html"
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert len(re.findall(r'<figure class="item ', page)) == 6
    assert [int(n) for n in re.findall(r'id="item-(\d+)"', page)] == list(range(6))
    # Prompts and reasons are text, never markup.
    assert "<script>" not in page
    assert "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; fox" in page
    assert "<title>Batch &lt;one&gt; &amp; two</title>" in page
    # Thumbnails: lazy, relative, URL-quoted; nothing loaded from elsewhere.
    srcs = re.findall(r'<img loading="lazy"[^>]* src="([^"]*)"', page)
    assert srcs == ["00000-a-red-fox.jpeg", "sub%20dir/x%231%20%C3%A9.png"]
    assert not re.search(r'(src|href)="[a-z]+:', page)
    assert "<script" not in page
    assert "<link" not in page
    assert "SECRET" not in page
    # Failures show their reason, and whether they may have been billed.
    assert "HTTP 502 &lt;b&gt;bad gateway&lt;/b&gt; (may have been billed)" in page
    # The summary header.
    assert "2 ok" in page
    assert "2 failed" in page
    assert "2 pending" in page
    assert "6 items" in page
    assert "4.5 credits spent" in page  # the moderated task (1.0) was not billed
    assert temp_files(tmp_path) == []


async def test_contact_sheet_redacts_urls_in_reasons(tmp_path: Path) -> None:
    async with await filled_ledger(tmp_path) as ledger:
        page = (await write_contact_sheet(ledger, tmp_path, title="t")).read_text("utf-8")
    assert "https://delivery.test/r/s.jpeg?&lt;redacted&gt;" in page


class BrokenLedger:
    """A ledger view whose reading fails half way, as a closed database would."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def iter_items(
        self, states: Collection[ItemState] | None = None, *, batch: int = 500
    ) -> AsyncIterator[LedgerItem]:
        async for item in self.ledger.iter_items(states, batch=batch):
            if item.index == 3:
                raise OSError("disk went away")
            yield item

    async def counts(self) -> dict[ItemState, int]:
        return await self.ledger.counts()

    async def spent(self) -> float:
        return await self.ledger.spent()


@pytest.mark.parametrize("writer", ["results", "sheet"])
async def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, writer: str
) -> None:
    async def write(view: LedgerView) -> Path:
        if writer == "results":
            return await write_results_jsonl(view, tmp_path)
        return await write_contact_sheet(view, tmp_path, title="t")

    async with await filled_ledger(tmp_path) as ledger:
        good = await write(ledger)
        before = good.read_bytes()
        with pytest.raises(OSError, match="disk went away"):
            await write(BrokenLedger(ledger))
    assert good.read_bytes() == before
    assert temp_files(tmp_path) == []


async def test_reports_stream_large_ledgers_in_order(tmp_path: Path) -> None:
    n = 3000
    async with await Ledger.open(tmp_path, run_config={}) as ledger:
        await ledger.add_items((i, "fp", f"prompt {i}", "flux-dev", None) for i in range(n))
        await ledger.mark_submitted(n - 1, task_id="last", polling_url=None, cost=0.1)
        await ledger.mark_saved(n - 1, path="last.jpeg", sha256="0", seed=1, prompt_used=None)
        results = await write_results_jsonl(ledger, tmp_path)
        sheet = await write_contact_sheet(ledger, tmp_path, title="big")
    lines = results.read_text("utf-8").splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(n))
    page = sheet.read_text("utf-8")
    assert page.count('<figure class="item ') == n
    assert page.rstrip().endswith("</html>")
    assert "1 ok" in page
    assert f"{n - 1} pending" in page
    assert "0.1 credits spent" in page


async def test_reports_get_ordinary_file_permissions(tmp_path: Path) -> None:
    async with await filled_ledger(tmp_path) as ledger:
        results = await write_results_jsonl(ledger, tmp_path)
        sheet = await write_contact_sheet(ledger, tmp_path, title="t")
    umask = os.umask(0)
    os.umask(umask)
    for path in (results, sheet):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
