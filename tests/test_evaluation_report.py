"""The evaluation report: tables, merging, and the files it writes (synthetic results, no runs)."""
from __future__ import annotations

import json

import pytest

from closure.evaluation_report import load_results, markdown_table, merge_results, write_report


def _post(times, errors, blew_up=False):
    n = len(times)
    return {"times": times, "ens_mean_rel_l2": errors, "spread": [0.0] * n, "enstrophy": [1.0] * n,
            "enstrophy_ref": [1.25] * n, "spectrum": [0.0, 1.0, 0.5], "spectrum_ref": [0.0, 1.0, 0.4],
            "wall_s": 2.0, "plugin_s": 1.0, "calls": 10, "members": 1, "blew_up": blew_up}


def _results(**closures):
    return {"data": "d.h5", "kind": "e1", "grid_n": 32, "closures": closures}


def test_table_reads_the_errors_at_four_times_and_marks_a_blow_up():
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    results = _results(none={"a_priori": None, "a_posteriori": _post(times, [0, 0.1, 0.2, 0.3, 0.4])},
                       bad={"a_priori": {"mse": 1.0, "rel_l2": 0.5, "corr": 0.25},
                            "a_posteriori": _post(times, [0, 0.5, 1, 2, 4], blew_up=True)})
    rows = markdown_table(results).splitlines()
    assert "ens_mean_rel_l2 t=1" in rows[0] and "ens_mean_rel_l2 t=4" in rows[0]
    none, bad = (row.split(" | ") for row in rows[2:])
    assert none[4:8] == ["0.1", "0.2", "0.3", "0.4"]
    assert none[9] == "0.2"  # enstrophy error |1 - 1.25| / 1.25
    assert bad[1:4] == ["1", "0.5", "0.250"] and bad[-1] == "blew up |"


def test_merge_keeps_order_and_a_later_entry_replaces_an_earlier_one():
    a = _results(none={"v": 1}, fno={"v": 1})
    b = {**_results(fno={"v": 2}, cdm={"v": 2}), "long_run_reference": {"r": 1}}
    merged = merge_results([a, b])
    assert list(merged["closures"]) == ["none", "fno", "cdm"]
    assert merged["closures"]["fno"] == {"v": 2} and merged["long_run_reference"] == {"r": 1}


def test_written_report_loads_back_and_a_foreign_folder_is_refused(tmp_path):
    times = [0.0, 1.0]
    results = _results(none={"a_priori": None, "a_posteriori": _post(times, [0.0, 0.5])})
    write_report(results, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["evaluation.json", "evaluation.png", "table.md"]
    assert load_results(tmp_path / "out", {"grid_n": 32, "kind": "e1"})["closures"] == json.loads(
        (tmp_path / "out" / "evaluation.json").read_text())["closures"]
    with pytest.raises(ValueError, match="same dataset"):
        load_results(tmp_path / "out", {"grid_n": 64, "kind": "e1"})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "evaluation.json").write_text("{")
    with pytest.raises(ValueError, match="not an evaluation result"):
        load_results(tmp_path / "bad", {"grid_n": 32, "kind": "e1"})
