"""Figures are written whole: a temporary file, then a rename."""
from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from solvers.figures import save_figure


def test_save_figure_writes_a_png_and_leaves_no_temporary_file(tmp_path):
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "curve.png", dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]


def test_a_failed_save_keeps_the_previous_figure(tmp_path, monkeypatch):
    path = tmp_path / "curve.png"
    path.write_bytes(b"old")
    fig = Figure(figsize=(2, 2))
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, path)
    assert path.read_bytes() == b"old"
