"""Chunked frame storage: streaming writer, index, partial reads, near-lossless quality."""

from __future__ import annotations

import numpy as np
import pytest

from functions.preprocess.synthetic import draw_figure
from runtime.frames_store import (
    ChunkInfo,
    ChunkWriter,
    FramesIndex,
    chunk_key,
    decode_chunk,
    encode_frames,
    index_json,
    index_key,
    read_frames,
)
from runtime.objects import MemoryStore

W, H = 96, 64


def frames(n: int) -> list[np.ndarray]:
    return [draw_figure(i / 10, W, H) for i in range(n)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-9))


def test_writer_emits_chunks_of_fixed_size() -> None:
    writer = ChunkWriter(W, H, 16, chunk_frames=8)
    done = [c for f in frames(20) if (c := writer.add(f)) is not None]
    last = writer.flush()
    assert [c.frames for c in done] == [8, 8] and last is not None and last.frames == 4
    assert [c.start for c in [*done, last]] == [0, 8, 16] and [c.number for c in [*done, last]] == [0, 1, 2]
    assert writer.flush() is None
    with pytest.raises(ValueError):
        writer.add(np.zeros((H, W + 2, 3), np.uint8))


def test_chunks_are_near_lossless_and_compact() -> None:
    src = frames(12)
    chunks = encode_frames(src, W, H, 16, chunk_frames=12)
    out = decode_chunk(chunks[0].data)
    assert out.shape == (12, H, W, 3)
    assert psnr(out, np.stack(src)) > 36
    assert len(chunks[0].data) < 0.1 * np.stack(src).nbytes


async def test_read_frames_fetches_only_needed_chunks() -> None:
    store = MemoryStore()
    src = frames(20)
    infos = []
    for c in encode_frames(src, W, H, 16, chunk_frames=8):
        ref = await store.put_bytes(chunk_key("jobs/j/frames/driving", c.number), c.data)
        infos.append(ChunkInfo(key=ref.key, start=c.start, frames=c.frames, size=ref.size))
    index = FramesIndex(width=W, height=H, fps=16, frames=20, chunk_frames=8, chunks=infos)
    ref = await store.put_bytes(index_key("jobs/j/frames/driving"), index_json(index))
    assert [c.start for c in index.chunks_for(7, 2)] == [0, 8]
    assert [c.start for c in index.chunks_for(16, 4)] == [16]

    reads: list[str] = []
    original = store.get_bytes

    async def counting(key: str, **kw: object) -> bytes:
        reads.append(key)
        return await original(key, **kw)  # type: ignore[arg-type]

    store.get_bytes = counting  # type: ignore[method-assign]
    part = await read_frames(store, ref, 9, 5)
    assert part.shape == (5, H, W, 3)
    assert reads == [ref.key, infos[1].key]
    assert psnr(part, np.stack(src[9:14])) > 36
    everything = await read_frames(store, index)
    assert everything.shape == (20, H, W, 3)
    with pytest.raises(ValueError):
        await read_frames(store, index, 18, 5)
