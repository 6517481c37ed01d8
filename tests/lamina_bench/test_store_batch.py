"""RunStore.add_points: a batch of rows stored with one flush, as readable and as atomic as add_point."""

from __future__ import annotations

import os

import pytest

from lamina_bench.results import store as store_module
from lamina_bench.results.store import RunStore
from tests.lamina_bench.test_results import make_row, new_store


def test_a_batch_reads_back_like_rows_added_one_by_one(tmp_path):
    rows = [make_row(i) for i in range(1, 21)]
    one = new_store(tmp_path, "one")
    for row in rows:
        one.add_point(row.replace(timestamp="2026-01-01T00:00:00Z"))
    batch = new_store(tmp_path, "batch")
    stored = batch.add_points([r.replace(timestamp="2026-01-01T00:00:00Z") for r in rows])
    assert [r.point_id for r in stored] == [r.point_id for r in rows]
    assert all(r.run_id == "batch" for r in stored)  # filled in, as add_point does
    for row in rows:  # byte for byte the file add_point writes, apart from the run id
        a = (one.path / "points" / f"{row.point_id}.json").read_text()
        b = (batch.path / "points" / f"{row.point_id}.json").read_text()
        assert a.replace('"one"', '"batch"') == b
    assert [r.point_id for r in RunStore.open(batch.path).rows()] == [r.point_id for r in one.rows()]
    assert not list((batch.path / "points").glob(".*"))  # no temporary file left


def test_a_duplicate_writes_nothing(tmp_path):
    store = new_store(tmp_path)
    store.add_point(make_row(1))
    with pytest.raises(ValueError, match="stored twice"):
        store.add_points([make_row(2), make_row(1)])  # 1 is stored already
    with pytest.raises(ValueError, match="stored twice"):
        store.add_points([make_row(3), make_row(3)])  # twice in the batch
    assert [r.batch_size for r in store.rows()] == [1]
    assert sorted(os.listdir(store.path / "points")) == [f"{make_row(1).point_id}.json"]


def test_a_failed_write_leaves_no_row_and_no_temporary_file(tmp_path, monkeypatch):
    store = new_store(tmp_path)
    real_dump, calls = store_module.json.dump, []

    def dump(obj, handle, **kw):  # the second row's write fails half-way (a full disk, say)
        calls.append(obj["point_id"])
        if len(calls) == 2:
            handle.write("{")
            raise OSError("no space left on device")
        return real_dump(obj, handle, **kw)

    monkeypatch.setattr(store_module.json, "dump", dump)
    with pytest.raises(OSError, match="no space"):
        store.add_points([make_row(1), make_row(2), make_row(3)])
    assert os.listdir(store.path / "points") == []  # nothing renamed into place, temporaries removed
    assert store.rows() == []


def test_every_row_is_flushed_before_any_becomes_visible(tmp_path, monkeypatch):
    store, events = new_store(tmp_path), []
    real_replace = os.replace
    monkeypatch.setattr(store_module.os, "sync", lambda: events.append("sync"))
    monkeypatch.setattr(
        store_module.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))
    )
    store.add_points([make_row(i) for i in range(1, 5)])
    assert events == ["sync"] + ["rename"] * 4  # one flush for the batch, then the renames
    assert len(store.rows()) == 4
