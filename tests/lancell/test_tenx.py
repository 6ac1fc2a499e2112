"""10x readers and add_from_10x on the bundled Cell Ranger outputs: exact against scipy.io.mmread."""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from helpers import visible_state

from lancell.atlas import RaggedAtlas
from lancell.errors import (
    DatasetNotFoundError,
    DataValueError,
    DuplicateContentError,
    DuplicateContentWarning,
    FeatureSpaceError,
    IngestError,
    LancellWarning,
    LockLostError,
    TenxFormatError,
    UnknownFeaturesError,
)
from lancell.ingest import tenx_mtx
from lancell.ingest.h5_direct import CompressedRead
from lancell.ingest.tenx import add_from_10x, open_10x, read_10x, read_10x_h5, read_10x_mtx
from lancell.ingest.write_transaction import WriteTransaction
from lancell.tables.schema import (
    DatasetRecord,
    DenseZarrPointer,
    FeatureBaseSchema,
    LancellBaseSchema,
    SparseZarrPointer,
)

DATA = Path(__file__).resolve().parents[2] / "data"
V3_DIR = DATA / "10x_v3" / "filtered_feature_bc_matrix"
V3_H5 = DATA / "10x_v3" / "filtered_feature_bc_matrix.h5"
V2_DIR = DATA / "10x_v2" / "hg19_chr21"
V2_H5 = DATA / "10x_v2" / "filtered_gene_bc_matrices_h5.h5"


class Feature(FeatureBaseSchema):
    gene_symbol: str | None = None


class TenxCells(LancellBaseSchema):
    donor: str | None = None
    gene_expression: SparseZarrPointer | None = None
    protein: SparseZarrPointer | None = None


class GeneOnlyCells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def _mmread(folder: Path) -> sp.csr_matrix:
    name = "matrix.mtx.gz" if (folder / "matrix.mtx.gz").exists() else "matrix.mtx"
    return sp.csr_matrix(scipy.io.mmread(folder / name).T)


def _lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return fh.read().splitlines()


def _write_lines(path: Path, lines: list[str]) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def _make_atlas(root: Path, schema: type[LancellBaseSchema], var: pd.DataFrame) -> RaggedAtlas:
    spaces = [n for n in ("gene_expression", "protein") if n in schema.model_fields]
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        schema,
        store=str(root / "arrays"),
        registry_schemas=dict.fromkeys(spaces, Feature),
    )
    features = pd.DataFrame({"uid": var["gene_ids"].to_numpy(), "gene_symbol": var["gene_symbol"].to_numpy()})
    for space in spaces:
        atlas.register_features(space, features)
    return atlas


def _read_back(atlas: RaggedAtlas, uid: str, space: str, var_uids: pd.Index):
    out = (
        atlas.query()
        .where(f"dataset_uid = '{uid}'")
        .feature_space(space)
        .layers(space, "counts")
        .to_anndata()
    )
    return out[:, var_uids]


@pytest.fixture(scope="module")
def v3_reference() -> sp.csr_matrix:
    return _mmread(V3_DIR)


def test_v3_folder_matches_mmread(v3_reference):
    adata = read_10x_mtx(V3_DIR)
    assert adata.shape == (1107, 507)
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.has_sorted_indices
    assert adata.X.dtype == np.int32
    assert (adata.X != v3_reference).nnz == 0
    assert adata.X.nnz == 23866
    assert list(adata.var.columns) == ["gene_ids", "gene_symbol", "feature_type"]
    assert adata.var.iloc[0].tolist() == ["ENSG00000279493", "CH507-9B2.2", "Gene Expression"]
    assert list(adata.obs_names) == _lines(V3_DIR / "barcodes.tsv.gz")


def test_v3_h5_agrees_with_folder(v3_reference):
    folder, h5 = read_10x_mtx(V3_DIR), read_10x_h5(V3_H5)
    assert (h5.X != v3_reference).nnz == 0
    assert h5.X.has_sorted_indices  # the file's rows are not sorted; the reader sorts them
    assert list(h5.obs_names) == list(folder.obs_names)
    pd.testing.assert_frame_equal(h5.var.drop(columns="genome"), folder.var)
    assert set(h5.var["genome"]) == {"GRCh38_chr21"}
    only = read_10x(V3_H5, genome="GRCh38_chr21")
    assert (only.X != v3_reference).nnz == 0


def test_v2_folder_and_h5_agree():
    folder, h5 = read_10x(V2_DIR), read_10x_h5(V2_H5)
    reference = _mmread(V2_DIR)
    assert folder.shape == h5.shape == (12, 343)
    assert (folder.X != reference).nnz == 0 and (h5.X != reference).nnz == 0
    assert set(folder.var["feature_type"]) == {"Gene Expression"}
    assert folder.var["gene_ids"].tolist() == h5.var["gene_ids"].tolist()
    assert h5.var["genome"].iloc[0] == "hg19_chr21"
    assert list(folder.obs_names) == list(h5.obs_names)
    assert read_10x(V2_DIR.parent / "hg19_chr21" / "matrix.mtx").shape == (12, 343)


@pytest.mark.parametrize("path", [V3_DIR, V3_H5])
def test_row_blocks_are_bounded_and_exact(path, v3_reference, monkeypatch):
    monkeypatch.setattr(tenx_mtx, "CHUNK_LINES", 1000)  # many chunks: blocks must stitch across chunk edges
    blocks = list(open_10x(path).csr_blocks(target_values=500))
    assert len(blocks) > 40
    starts = [start for start, _ in blocks]
    assert starts == sorted(starts) and starts[0] == 0
    per_cell = np.diff(v3_reference.indptr).max()
    assert all(block.nnz <= 500 + per_cell for _, block in blocks)
    assert (sp.vstack([b for _, b in blocks], format="csr") != v3_reference).nnz == 0


def test_unordered_triplets_read_whole(tmp_path, v3_reference, caplog):
    folder = tmp_path / "shuffled"
    shutil.copytree(V3_DIR, folder)
    lines = _lines(folder / "matrix.mtx.gz")
    header, body = lines[:3], lines[3:]
    order = np.random.default_rng(0).permutation(len(body))
    _write_lines(folder / "matrix.mtx.gz", header + [body[i] for i in order])
    with caplog.at_level(logging.WARNING, logger="lancell.ingest.tenx"):
        adata = read_10x(folder)
    assert "not ordered by barcode" in caplog.text
    assert (adata.X != v3_reference).nnz == 0


@pytest.mark.parametrize("path", [V3_DIR, V3_H5, V2_DIR, V2_H5], ids=["v3-mtx", "v3-h5", "v2-mtx", "v2-h5"])
def test_add_from_10x_round_trip(tmp_path, path):
    reference = read_10x(path)
    atlas = _make_atlas(tmp_path, GeneOnlyCells, reference.var)
    (record,) = add_from_10x(
        atlas,
        path,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="tenx", name="10x test"),
        progress=False,
    )
    assert (record.uid, record.feature_space, record.n_cells) == ("tenx", "gene_expression", reference.n_obs)
    assert record.nnz == reference.X.nnz and record.source == str(path)
    out = _read_back(atlas, "tenx", "gene_expression", pd.Index(reference.var["gene_ids"]))
    assert list(out.obs_names) == [f"tenx:{b}" for b in reference.obs_names]
    mm = _mmread(path if path.is_dir() else (V3_DIR if "v3" in str(path) else V2_DIR))
    assert out.X.dtype.kind in "iu" and (out.X != mm).nnz == 0
    assert atlas.validate() == []


def test_a_10x_output_stored_under_another_layer_than_counts_is_refused_or_warned(tmp_path):
    """``zarr_layer="log_normalized"`` stored the file's integer UMI counts under that name without a word."""

    class RawCells(LancellBaseSchema):
        gene_expression: SparseZarrPointer | None = None

    var = read_10x(V3_DIR).var
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        RawCells,
        registry_schemas={"gene_expression": Feature},
        layers={"gene_expression": ["counts", "log_normalized", "umi"]},
    )
    atlas.register_features(
        "gene_expression", pd.DataFrame({"uid": var["gene_ids"], "gene_symbol": var["gene_symbol"]})
    )
    with pytest.raises(
        IngestError, match=r"holds integer UMI counts, not log_normalized values: store it as"
    ):
        add_from_10x(atlas, V3_DIR, zarr_layer="log_normalized", progress=False)
    assert atlas.list_datasets().empty  # refused before any write
    with pytest.warns(LancellWarning, match=r"holds UMI counts; they are stored under the layer 'umi'"):
        add_from_10x(atlas, V3_DIR, zarr_layer="umi", progress=False)
    assert atlas.list_datasets()["layer"].tolist() == ["umi"]  # another name: stored as asked, warned


@pytest.fixture
def with_antibodies(tmp_path) -> Path:
    """The v3 folder with its last 7 features relabelled as antibody captures."""
    folder = tmp_path / "multi"
    shutil.copytree(V3_DIR, folder)
    rows = [line.split("\t") for line in _lines(folder / "features.tsv.gz")]
    for row in rows[-7:]:
        row[2] = "Antibody Capture"
    _write_lines(folder / "features.tsv.gz", ["\t".join(r) for r in rows])
    return folder


def test_feature_types_split_into_feature_spaces_of_one_set_of_cells(tmp_path, with_antibodies, v3_reference):
    """Each feature space was a dataset with cells of its own: a CITE-seq run's cells were counted twice and
    their RNA and protein could never be read together."""
    var = read_10x(with_antibodies).var
    atlas = _make_atlas(tmp_path / "atlas", TenxCells, var)
    records = add_from_10x(
        atlas, with_antibodies, dataset_record=DatasetRecord(uid="s1"), obs={"donor": "d1"}, progress=False
    )
    assert [(r.uid, r.feature_space, r.n_features, r.cells_of) for r in records] == [
        ("s1", "gene_expression", 500, None),
        ("s1/protein", "protein", 7, "s1"),
    ]
    assert atlas.query().count() == v3_reference.shape[0]
    for record, columns in zip(records, (slice(0, 500), slice(500, 507)), strict=True):
        uids = pd.Index(var["gene_ids"].iloc[columns])
        out = _read_back(atlas, "s1", record.feature_space, uids)
        assert (out.X != v3_reference[:, columns]).nnz == 0
    both = atlas.query().to_mudata(layers={"gene_expression": "counts", "protein": "counts"})
    rna, protein = both["gene_expression"], both["protein"]
    assert both.n_obs == v3_reference.shape[0] and set(protein.obs["donor"]) == {"d1"}
    assert list(rna.obs_names) == list(protein.obs_names)  # one cell, both modalities
    genes, antibodies = pd.Index(var["gene_ids"].iloc[:500]), pd.Index(var["gene_ids"].iloc[500:])
    assert (rna[:, genes].X != v3_reference[:, :500]).nnz == 0
    assert (protein[:, antibodies].X != v3_reference[:, 500:]).nnz == 0
    assert atlas.validate() == []
    atlas.delete_dataset("s1")  # with its attached modality
    assert atlas.query().count() == 0 and atlas.list_datasets().empty and atlas.validate() == []


def test_a_cite_seq_file_ingested_again_is_skipped_whole(tmp_path, with_antibodies):
    atlas = _make_atlas(tmp_path / "atlas", TenxCells, read_10x(with_antibodies).var)
    first = add_from_10x(atlas, with_antibodies, dataset_record=DatasetRecord(uid="s1"), progress=False)
    before = visible_state(atlas)
    with pytest.raises(DuplicateContentError, match="as dataset 's1'"):
        add_from_10x(atlas, with_antibodies, dataset_record=DatasetRecord(uid="s2"), progress=False)
    with pytest.warns(DuplicateContentWarning):
        again = add_from_10x(
            atlas,
            with_antibodies,
            dataset_record=DatasetRecord(uid="s2"),
            on_duplicate="skip",
            progress=False,
        )
    assert [r.uid for r in again] == [r.uid for r in first] == ["s1", "s1/protein"]
    assert visible_state(atlas) == before
    # the same RNA, but the first dataset holds no protein: nothing is stored, with how to attach it
    atlas.delete_dataset("s1")
    add_from_10x(
        atlas, with_antibodies, feature_space="gene_expression", dataset_record=DatasetRecord(uid="rna")
    )
    before = visible_state(atlas)
    refused = r"already in the atlas as dataset 'rna', whose cells hold no \['protein'\] data"
    with pytest.raises(IngestError, match=refused):
        add_from_10x(
            atlas,
            with_antibodies,
            dataset_record=DatasetRecord(uid="s3"),
            on_duplicate="skip",
            progress=False,
        )
    assert visible_state(atlas) == before
    # the whole file stored after the RNA alone: skip finds it, whichever record comes first
    add_from_10x(atlas, with_antibodies, dataset_record=DatasetRecord(uid="full"), on_duplicate="allow")
    with pytest.warns(DuplicateContentWarning):
        again = add_from_10x(
            atlas,
            with_antibodies,
            dataset_record=DatasetRecord(uid="s4"),
            on_duplicate="skip",
            progress=False,
        )
    assert [r.uid for r in again] == ["full", "full/protein"]
    # what the refusal says to do: the protein attached to the RNA's cells
    atlas.delete_dataset("full")
    before = visible_state(atlas)
    with pytest.raises(
        IngestError, match=r"routes feature spaces \['gene_expression', 'protein'\]; attach one"
    ):
        add_from_10x(atlas, with_antibodies, cells_of="rna", progress=False)  # waited on its own lock
    with pytest.raises(IngestError, match="already carry a 'gene_expression' pointer"):
        add_from_10x(atlas, with_antibodies, cells_of="rna", feature_space="gene_expression", progress=False)
    with pytest.raises(IngestError, match="keep their own"):
        add_from_10x(atlas, with_antibodies, cells_of="rna", obs={"donor": "d"}, progress=False)
    with pytest.raises(DatasetNotFoundError, match="no dataset 'nope'"):
        add_from_10x(atlas, with_antibodies, cells_of="nope", feature_space="protein", progress=False)
    assert visible_state(atlas) == before
    with pytest.warns(LancellWarning, match="on_duplicate='skip' does not apply"):
        (attached,) = add_from_10x(
            atlas,
            with_antibodies,
            cells_of="rna",
            feature_space="protein",
            on_duplicate="skip",
            progress=False,
        )
    assert (attached.uid, attached.cells_of) == ("rna/protein", "rna")
    both = atlas.query().to_mudata(layers={"gene_expression": "counts", "protein": "counts"})
    assert both["protein"].n_obs == both["gene_expression"].n_obs == atlas.query().count()
    assert atlas.validate() == []


class DenseCells(LancellBaseSchema):
    gene_expression: DenseZarrPointer | None = None


def test_a_dense_feature_space_stores_the_file(tmp_path, v3_reference):
    """Dense blocks asked the 10x row stream for rows past the last cell: every file whose cell count was no
    multiple of the block length was refused as malformed ("the values end before row 3944")."""
    atlas = _make_atlas(tmp_path / "atlas", DenseCells, read_10x(V3_DIR).var)
    (record,) = add_from_10x(atlas, V3_DIR, dataset_record=DatasetRecord(uid="dense"), progress=False)
    assert record.n_cells == v3_reference.shape[0]
    out = _read_back(atlas, "dense", "gene_expression", pd.Index(read_10x(V3_DIR).var["gene_ids"]))
    np.testing.assert_array_equal(np.asarray(out.X), v3_reference.toarray())


def test_feature_types_without_space_are_skipped(tmp_path, with_antibodies, v3_reference):
    var = read_10x(with_antibodies).var
    atlas = _make_atlas(tmp_path / "atlas", GeneOnlyCells, var)
    values = v3_reference[:, 500:].nnz
    with pytest.warns(
        LancellWarning, match=rf"7 'Antibody Capture' features \({values} nonzero values\) not"
    ):
        (record,) = add_from_10x(
            atlas, with_antibodies, dataset_record=DatasetRecord(uid="s1"), progress=False
        )
    assert (record.uid, record.n_features) == ("s1", 500)


def test_no_matching_feature_space_is_an_error(tmp_path):
    atlas = _make_atlas(tmp_path, GeneOnlyCells, read_10x(V2_DIR).var)
    before = visible_state(atlas)
    with pytest.raises(FeatureSpaceError, match="none of the feature types"):
        add_from_10x(atlas, V2_DIR, feature_types={"Gene Expression": "rna"}, progress=False)
    with pytest.raises(FeatureSpaceError, match="restricted to 'protein'"):
        add_from_10x(atlas, V2_DIR, feature_space="protein", progress=False)
    assert visible_state(atlas) == before


def test_failure_in_second_feature_space_rolls_back_the_first(tmp_path, with_antibodies):
    matrix = with_antibodies / "matrix.mtx.gz"
    lines = _lines(matrix)
    for i, line in enumerate(lines[3:], start=3):
        gene, cell, value = line.split()
        if int(gene) > 500:  # antibody counts made negative: the protein space fails while being written
            lines[i] = f"{gene} {cell} -{value}"
    _write_lines(matrix, lines)
    atlas = _make_atlas(tmp_path / "atlas", TenxCells, read_10x(with_antibodies).var)
    before = visible_state(atlas)
    with pytest.raises(DataValueError, match="negative"):
        add_from_10x(atlas, with_antibodies, dataset_record=DatasetRecord(uid="s1"), progress=False)
    assert visible_state(atlas) == before
    with pytest.raises(FeatureSpaceError, match="layer 'raw'"):
        add_from_10x(atlas, V3_DIR, zarr_layer="raw", progress=False)
    atlas.core.tables.registry("gene_expression").delete("uid = 'ENSG00000279493'")
    before = visible_state(atlas)
    with pytest.raises(UnknownFeaturesError):
        add_from_10x(atlas, V3_DIR, progress=False)
    assert visible_state(atlas) == before


def test_the_feature_spaces_records_are_one_commit(tmp_path, with_antibodies, monkeypatch):
    """Each feature space's record was committed on its own, its content lock released at once: a failure
    of the protein record then rolled back a gene record that another ingestion of the same content could
    already have been told it duplicates (it skipped, and the content was in the atlas nowhere)."""
    atlas = _make_atlas(tmp_path / "atlas", TenxCells, read_10x(with_antibodies).var)
    committed_before_ready = []
    ready_record = WriteTransaction.ready_record

    def lost_at_the_second(transaction):
        fresh = RaggedAtlas.open(str(tmp_path / "atlas" / "db"))
        committed_before_ready.append(len(fresh.list_datasets()))
        if len(committed_before_ready) == 2:
            raise LockLostError("taken over by another process")
        return ready_record(transaction)

    monkeypatch.setattr(WriteTransaction, "ready_record", lost_at_the_second)
    before = visible_state(atlas)
    with pytest.raises(LockLostError):
        add_from_10x(atlas, with_antibodies, dataset_record=DatasetRecord(uid="s1"), progress=False)
    assert committed_before_ready == [0, 0] and visible_state(atlas) == before
    monkeypatch.undo()
    records = add_from_10x(atlas, with_antibodies, dataset_record=DatasetRecord(uid="s1"), progress=False)
    assert [r.feature_space for r in records] == ["gene_expression", "protein"]
    assert atlas.validate() == []


def test_a_file_stored_protein_first_is_skipped_as_a_duplicate(tmp_path, with_antibodies):
    """The file stored with protein adding the cells, ingested again with RNA first: the RNA's duplicate is
    an attachment, the protein its host; the skip refused it, naming the attachment's uid as cells."""
    atlas = _make_atlas(tmp_path / "atlas", TenxCells, read_10x(with_antibodies).var)
    protein_first = {"Antibody Capture": "protein", "Gene Expression": "gene_expression"}
    stored = add_from_10x(
        atlas, with_antibodies, dataset_record=DatasetRecord(uid="s1"), feature_types=protein_first
    )
    assert [(r.uid, r.cells_of) for r in stored] == [("s1", None), ("s1/gene_expression", "s1")]
    before = visible_state(atlas)
    with pytest.warns(DuplicateContentWarning):
        again = add_from_10x(
            atlas,
            with_antibodies,
            dataset_record=DatasetRecord(uid="s2"),
            on_duplicate="skip",
            progress=False,
        )
    assert [r.uid for r in again] == ["s1/gene_expression", "s1"]
    assert visible_state(atlas) == before


def _corrupt(kind: str, root: Path) -> Path:
    if kind.startswith("h5"):
        path = root / "bad.h5"
        shutil.copy(V3_H5, path)
        with h5py.File(path, "r+") as f:
            m = f["matrix"]
            if kind == "h5-short-barcodes":
                barcodes = m["barcodes"][:-1]
                del m["barcodes"]
                m["barcodes"] = barcodes
            elif kind == "h5-bad-index":
                indices = m["indices"][:]
                indices[5] = 10_000
                m["indices"][:] = indices
            elif kind == "h5-truncated-data":
                data = m["data"][:-3]
                del m["data"]
                m["data"] = data
            elif kind == "h5-corrupt-chunk":  # Cell Ranger's filters, five chunks: the third is damaged
                data = m["data"][:]
                del m["data"]
                m.create_dataset("data", data=data, chunks=(5_000,), compression="gzip", shuffle=True)
        if kind == "h5-corrupt-chunk":
            with h5py.File(path, "r") as f:
                read = CompressedRead.of(f["matrix/data"])
                middle = int(read.offsets[2] + read.sizes[2] // 2)
            with open(path, "r+b") as file:
                file.seek(middle)
                flipped = bytes(b ^ 0xFF for b in file.read(4))
                file.seek(middle)
                file.write(flipped)
        if kind == "h5-not-hdf5":
            path.write_bytes(b"not an hdf5 file at all")
        return path
    folder = root / "bad"
    shutil.copytree(V3_DIR, folder)
    matrix, barcodes = folder / "matrix.mtx.gz", folder / "barcodes.tsv.gz"
    if kind == "missing-barcodes":
        barcodes.unlink()
    elif kind == "short-barcodes":
        _write_lines(barcodes, _lines(barcodes)[:-1])
    elif kind == "corrupt-gzip":
        blob = matrix.read_bytes()
        matrix.write_bytes(blob[: len(blob) // 2])
    elif kind == "corrupt-gzip-features":
        (folder / "features.tsv.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    elif kind == "nnz-mismatch":
        _write_lines(matrix, _lines(matrix)[:-1])
    elif kind == "index-out-of-range":
        lines = _lines(matrix)
        lines[10] = "9999 1 1"
        _write_lines(matrix, lines)
    elif kind == "duplicate-entry":
        lines = _lines(matrix)
        header = lines[2].split()
        lines[2] = f"{header[0]} {header[1]} {int(header[2]) + 1}"
        _write_lines(matrix, [*lines[:4], lines[3], *lines[4:]])
    elif kind == "not-integer":
        lines = _lines(matrix)
        lines[7] = lines[7].rsplit(" ", 1)[0] + " 2.5"
        _write_lines(matrix, lines)
    elif kind == "bad-banner":
        lines = _lines(matrix)
        lines[0] = "%%MatrixMarket matrix array integer general"
        _write_lines(matrix, lines)
    return folder


BAD_INPUTS = [
    ("missing-barcodes", "no barcodes file"),
    ("short-barcodes", "has 1106"),
    ("corrupt-gzip", "cannot read"),
    ("corrupt-gzip-features", "cannot read"),
    ("nnz-mismatch", "says 23866 entries but the file holds 23865"),
    ("index-out-of-range", "feature index 9999 outside 1..507"),
    ("duplicate-entry", "duplicate"),
    ("not-integer", "is not 3 integers: the header says 'integer'"),
    ("bad-banner", "unsupported Matrix Market layout"),
    ("h5-short-barcodes", "1106 barcodes"),
    ("h5-bad-index", "feature index outside"),
    ("h5-truncated-data", "data has 23863"),
    ("h5-corrupt-chunk", "the chunk of values from 10000 at byte"),
    ("h5-not-hdf5", "cannot open"),
]


@pytest.mark.parametrize(("kind", "message"), BAD_INPUTS, ids=[k for k, _ in BAD_INPUTS])
def test_bad_input_is_a_typed_error_and_atlas_unchanged(tmp_path, kind, message):
    atlas = _make_atlas(tmp_path / "atlas", GeneOnlyCells, read_10x(V3_H5).var)
    before = visible_state(atlas)
    path = _corrupt(kind, tmp_path)
    with pytest.raises(TenxFormatError, match=re.escape(message)):
        add_from_10x(atlas, path, dataset_record=DatasetRecord(uid="bad"), progress=False)
    assert visible_state(atlas) == before
    add_from_10x(atlas, V3_H5, dataset_record=DatasetRecord(uid="bad"), progress=False)  # then a retry works


def test_missing_and_wrong_kind_of_path(tmp_path):
    with pytest.raises(TenxFormatError, match="no such"):
        open_10x(tmp_path / "nope")
    with pytest.raises(TenxFormatError, match=r"no matrix\.mtx"):
        open_10x(tmp_path)
    with pytest.raises(TenxFormatError, match="is a folder"):
        read_10x_h5(V3_DIR)
    with pytest.raises(TenxFormatError, match="no genome 'mm10'"):
        read_10x_h5(V2_H5, genome="mm10")
    with pytest.raises(TenxFormatError, match="no features of genome 'mm10'"):
        read_10x_h5(V3_H5, genome="mm10")


def test_a_file_both_gzipped_and_plain_is_refused_whichever_is_named(tmp_path):
    """An edited matrix.mtx beside the original matrix.mtx.gz: naming either (or the folder) read the .gz."""
    folder = tmp_path / "edited"
    shutil.copytree(V3_DIR, folder)
    (folder / "matrix.mtx").write_bytes(gzip.decompress((folder / "matrix.mtx.gz").read_bytes()))
    both = re.escape("holds both matrix.mtx.gz and matrix.mtx: which one to read cannot be told")
    for path in (folder, folder / "matrix.mtx", folder / "matrix.mtx.gz"):
        with pytest.raises(TenxFormatError, match=both):
            read_10x(path)
    (folder / "matrix.mtx.gz").unlink()
    assert read_10x(folder / "matrix.mtx").X.sum() == read_10x(V3_DIR).X.sum()


def test_features_beside_genes_is_refused(tmp_path):
    """A v2 genes.tsv left beside the v3 features.tsv.gz: the first was read, the other ignored silently."""
    folder = tmp_path / "mixed"
    shutil.copytree(V3_DIR, folder)
    features = gzip.decompress((folder / "features.tsv.gz").read_bytes()).decode()
    (folder / "genes.tsv").write_text(
        "".join("\t".join(line.split("\t")[:2]) + "\n" for line in features.splitlines())
    )
    with pytest.raises(TenxFormatError, match=re.escape("holds both features.tsv.gz and genes.tsv")):
        read_10x(folder)
    (folder / "features.tsv.gz").unlink()
    assert read_10x(folder).X.sum() == read_10x(V3_DIR).X.sum()
    linked = tmp_path / "linked"  # genes.tsv.gz a link to features.tsv.gz (for tools of v2 names): one file
    shutil.copytree(V3_DIR, linked)
    (linked / "genes.tsv.gz").symlink_to("features.tsv.gz")
    assert read_10x(linked).var_names.tolist() == read_10x(V3_DIR).var_names.tolist()


def test_add_from_10x_writes_no_temporary_file(tmp_path, monkeypatch):
    atlas = _make_atlas(tmp_path / "atlas", GeneOnlyCells, read_10x(V3_H5).var)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")  # the temporary directory is a file: nothing can be created in it, even by root
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))
    (record,) = add_from_10x(atlas, V3_H5, dataset_record=DatasetRecord(uid="t"), progress=False)
    assert (record.n_cells, record.nnz) == (1107, 23866) and blocker.read_text() == ""


def test_add_from_10x_duplicate_policy(tmp_path, v3_reference):
    atlas = _make_atlas(tmp_path / "atlas", GeneOnlyCells, read_10x(V3_H5).var)
    (first,) = add_from_10x(atlas, V3_H5, dataset_record=DatasetRecord(uid="h5"), progress=False)
    before = visible_state(atlas)
    with pytest.raises(DuplicateContentError, match="already in the atlas as dataset 'h5'"):
        add_from_10x(atlas, V3_DIR, dataset_record=DatasetRecord(uid="mtx"), progress=False)
    with pytest.warns(DuplicateContentWarning, match="as dataset 'h5'"):
        (skipped,) = add_from_10x(
            atlas, V3_DIR, dataset_record=DatasetRecord(uid="mtx"), on_duplicate="skip", progress=False
        )
    assert (skipped.uid, skipped.zarr_group) == (first.uid, first.zarr_group)
    assert visible_state(atlas) == before
    (again,) = add_from_10x(
        atlas, V3_DIR, dataset_record=DatasetRecord(uid="mtx"), on_duplicate="allow", progress=False
    )
    assert again.content_fingerprint == first.content_fingerprint and again.uid == "mtx"
    out = _read_back(atlas, "mtx", "gene_expression", pd.Index(read_10x(V3_DIR).var["gene_ids"]))
    assert (out.X != v3_reference).nnz == 0


def test_a_matrix_market_file_without_entries_is_read_as_all_zeros(tmp_path):
    folder = tmp_path / "empty"
    shutil.copytree(V3_DIR, folder)
    size_line = next(line for line in _lines(folder / "matrix.mtx.gz") if not line.startswith("%"))
    n_genes, n_cells, _ = (int(v) for v in size_line.split())
    _write_lines(
        folder / "matrix.mtx.gz",
        ["%%MatrixMarket matrix coordinate integer general", f"{n_genes} {n_cells} 0"],
    )
    adata = read_10x(folder)
    assert adata.shape == (n_cells, n_genes) and adata.X.nnz == 0


def test_an_obs_frame_repeating_a_barcode_is_refused(tmp_path):
    reference = read_10x(V3_H5)
    atlas = _make_atlas(tmp_path / "atlas", GeneOnlyCells, reference.var)
    before = visible_state(atlas)
    barcodes = [reference.obs_names[0], *reference.obs_names]
    obs = pd.DataFrame({"donor": "d1"}, index=barcodes)
    with pytest.raises(IngestError, match="several rows for 1 barcodes"):
        add_from_10x(atlas, V3_H5, obs=obs, dataset_record=DatasetRecord(uid="x"), progress=False)
    assert visible_state(atlas) == before


def test_a_barcodes_file_repeating_a_barcode_is_refused_as_damaged(tmp_path):
    """The error told to call adata.obs_names_make_unique(): no AnnData is the user's to fix here."""
    folder = tmp_path / "repeated"
    shutil.copytree(V3_DIR, folder)
    lines = _lines(folder / "barcodes.tsv.gz")
    _write_lines(folder / "barcodes.tsv.gz", [lines[0], lines[0], *lines[2:]])
    atlas = _make_atlas(tmp_path / "atlas", GeneOnlyCells, read_10x(V3_H5).var)
    before = visible_state(atlas)
    with pytest.raises(TenxFormatError, match=r"1 barcodes occur more than once, .*damaged or edited"):
        add_from_10x(atlas, folder, dataset_record=DatasetRecord(uid="r"), progress=False)
    assert visible_state(atlas) == before
    assert read_10x(folder).n_obs == len(lines)  # (still readable, to look into)
