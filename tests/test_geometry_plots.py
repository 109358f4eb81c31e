"""Heatmaps: valid PNGs, byte-identical across calls, no Software/date metadata, data changes the bytes."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from hubkit.cards.plots import delta_heatmap, set_heatmap
from hubkit.run import geometry as g


def _sets():
    rng = np.random.default_rng(0)
    before = {f"persona_{i}": rng.standard_normal((2, 16)) + 0.5 for i in range(4)}
    after = {k: a + 0.3 * rng.standard_normal(a.shape) + 0.2 for k, a in before.items()}
    return before, after


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(png):
        (n,) = struct.unpack(">I", png[i:i + 4])
        kind, data = png[i + 4:i + 8], png[i + 8:i + 8 + n]
        assert struct.unpack(">I", png[i + 8 + n:i + 12 + n])[0] == zlib.crc32(kind + data)
        out.append((kind, data))
        i += 12 + n
    return out


def test_heatmaps_are_deterministic_pngs():
    before, after = _sets()
    geo = g.set_geometry("a_base", before, [14, 20], n_resamples=50)
    cmp = g.compare_sets(before, after, [14, 20], before_name="a_base", after_name="a_em", n_resamples=50)
    for render, obj in ((set_heatmap, geo), (delta_heatmap, cmp)):
        a, b = render(obj), render(obj)
        assert a == b
        chunks = _chunks(a)
        kinds = [k for k, _ in chunks]
        assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
        text = b"".join(d for k, d in chunks if k in (b"tEXt", b"iTXt", b"zTXt"))
        assert b"Software" not in text and b"Date" not in text and b"tIME" not in kinds
        w, h = struct.unpack(">II", chunks[0][1][:8])
        assert 300 < w < 2000 and 300 < h < 2000


def test_data_changes_the_image():
    before, after = _sets()
    a = set_heatmap(g.set_geometry("s", before, [14, 20], n_resamples=20))
    b = set_heatmap(g.set_geometry("s", after, [14, 20], n_resamples=20))
    assert a != b
