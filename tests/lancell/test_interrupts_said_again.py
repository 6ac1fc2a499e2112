"""A Ctrl-C (or the CLI's SIGTERM) that a library did not raise as itself: Lance and Arrow raise one that
arrives while they call back into Python as their own error ("External error: KeyboardInterrupt:"), and
Python drops one raised in a weak reference's callback (printing "Exception ignored"). Each still ends the
call as an interrupt, and the CLI says what it had done."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import anndata as ad
import pyarrow as pa
import pytest

from lancell import cli
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, build_bundled_atlas
from lancell.query.cell_selection import CellSelection
from lancell.storage.store_failures import wrapped_interrupt


class _Stopped(KeyboardInterrupt):
    """A subclass a program defines (the CLI's Terminated)."""


def test_an_interrupt_said_again_by_arrow_is_recognised() -> None:
    for name in ("KeyboardInterrupt", "_Stopped"):
        interrupt = wrapped_interrupt(pa.ArrowException(f"External error: {name}: "))
        assert isinstance(interrupt, KeyboardInterrupt) and str(interrupt) == name
    for other in ("External error: ValueError: bad", "KeyboardInterrupt", "no such column"):
        assert wrapped_interrupt(RuntimeError(other)) is None
    assert wrapped_interrupt(None) is None


@pytest.fixture(scope="module")
def atlas(tmp_path_factory: pytest.TempPathFactory) -> RaggedAtlas:
    return build_bundled_atlas(tmp_path_factory.mktemp("interrupts"), BUNDLED[1:2])


def test_a_ctrl_c_during_the_cell_scan_is_an_interrupt_not_a_query_error(
    atlas: RaggedAtlas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was raised as QueryError("query failed: External error: KeyboardInterrupt:"), and the CLI said
    "error" and exited 1 (SIGTERM: 1, not 143)."""

    def interrupted(self, *args, **kwargs):
        raise pa.ArrowException("External error: KeyboardInterrupt: ")

    monkeypatch.setattr(CellSelection, "scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atlas.query().to_pandas()
    with pytest.raises(KeyboardInterrupt):
        atlas.query().where("n_counts > 10").layers("gene_expression", "counts").to_anndata()


def test_a_ctrl_c_dropped_while_query_writes_its_file_stops_it(
    atlas: RaggedAtlas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """3 of 8 Ctrl-Cs during `query -o` landed in a weak reference's callback: Python printed "Exception
    ignored ... KeyboardInterrupt", the file was written and the command exited 0."""
    write = ad.AnnData.write_h5ad

    def write_interrupted(self, *args, **kwargs):
        class Held:
            pass

        held = Held()

        def on_release(_: object) -> None:
            raise KeyboardInterrupt

        reference = weakref.ref(held, on_release)
        del held  # (the callback's KeyboardInterrupt is "ignored" by Python)
        gc.collect()
        assert reference() is None
        return write(self, *args, **kwargs)

    monkeypatch.setattr(ad.AnnData, "write_h5ad", write_interrupted)
    output = tmp_path / "out.h5ad"
    assert cli.main(["query", atlas.db_uri, "--layer", "counts", "-o", str(output)]) == 130
    assert "lancell query: interrupted" in capsys.readouterr().err
    assert not output.exists() and not list(tmp_path.iterdir())


def test_a_ctrl_c_after_a_deletion_committed_says_it_was_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The interrupt waits for the deletion's commit: the dataset was gone, and `lancell delete` printed
    nothing of it."""
    atlas = build_bundled_atlas(tmp_path, BUNDLED[1:3])
    delete = RaggedAtlas.delete_dataset

    def delete_then_interrupted(self, uid, *args, **kwargs):
        delete(self, uid, *args, **kwargs)
        if uid == "mouse_10k":
            raise KeyboardInterrupt

    monkeypatch.setattr(RaggedAtlas, "delete_dataset", delete_then_interrupted)
    assert cli.main(["delete", atlas.db_uri, "celltypist_sample", "mouse_10k"]) == 130
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("celltypist_sample: deleted;")
    assert out[1] == "mouse_10k: deleted (then interrupted)"
    assert RaggedAtlas.open(atlas.db_uri).list_datasets().empty
