"""Malformed 10x Matrix Market bodies, GEO characteristics beyond int64 and ``obs`` mappings of the wrong
length: typed errors naming the input, or values kept exactly."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lancell.atlas import RaggedAtlas
from lancell.errors import IngestError, TenxFormatError
from lancell.ingest.geo import plan_datasets, read_soft, sample_table
from lancell.ingest.tenx import add_from_10x, read_10x
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

BANNER = "%%MatrixMarket matrix coordinate integer general"
FEATURES = "ENSG00000000003\tTSPAN6\tGene Expression\nENSG00000000005\tTNMD\tGene Expression\n"


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class DonorCells(LancellBaseSchema):
    donor: str | None = None
    gene_expression: SparseZarrPointer | None = None


def _mtx_folder(root: Path, body: str, gz: bool = False) -> Path:
    """A 2 features x 3 barcodes folder whose ``matrix.mtx`` is ``body`` verbatim."""
    folder = root / "mtx"
    folder.mkdir()
    if gz:
        with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
            fh.write(body.encode())
    else:
        (folder / "matrix.mtx").write_bytes(body.encode())
    (folder / "barcodes.tsv").write_text("A\nB\nC\n")
    (folder / "features.tsv").write_text(FEATURES)
    return folder


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "entries",
    [
        "1 1 1 7\n2 2 3 8\n",  # every line: pandas would take the first field as an index
        "1 1 1 7 9\n2 2 3\n",  # the first line only, two fields too many
        "1 1 1\n2 2 3 8\n",  # a later line
        "\n1 1 1 7\n2 2 3\n",  # after a blank line
    ],
)
def test_mtx_entry_with_extra_fields_is_refused(tmp_path: Path, entries: str, gz: bool) -> None:
    folder = _mtx_folder(tmp_path, f"{BANNER}\n2 3 2\n{entries}", gz=gz)
    name = "matrix.mtx.gz" if gz else "matrix.mtx"
    with pytest.raises(TenxFormatError, match=f"{re.escape(str(folder / name))}.*(fields|Expected 3)"):
        read_10x(folder)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "entries",
    [
        "1 1 3\n2 2\n",  # a later line without its value
        "1 1 3\n2 2 NA\n",  # text where a number is
        "1 1 3\n% a comment\n2 2 4\n",  # comments belong before the size line
    ],
)
def test_real_mtx_entry_without_a_number_is_refused(tmp_path: Path, entries: str, gz: bool) -> None:
    """A ``real`` body's missing field was read as NaN: ``read_10x`` returned it, ingestion blamed a "nan"."""
    folder = _mtx_folder(tmp_path, f"{BANNER.replace('integer', 'real')}\n2 3 2\n{entries}", gz=gz)
    name = "matrix.mtx.gz" if gz else "matrix.mtx"
    where = re.escape(str(folder / name))
    with pytest.raises(TenxFormatError, match=f"^{where}: an entry line .* not 3 numbers"):
        read_10x(folder)


def test_nan_written_as_a_number_is_read_as_one(tmp_path: Path) -> None:
    """As scipy's mmwrite writes it (ingestion refuses it as a non-finite value, as it does inf)."""
    folder = _mtx_folder(tmp_path, f"{BANNER.replace('integer', 'real')}\n2 3 2\n1 1 NaN\n2 2 3.5\n")
    assert np.isnan(read_10x(folder).X.toarray()[0, 0])


def test_a_features_file_whose_every_line_ends_in_a_tab_is_read_as_genes(tmp_path: Path) -> None:
    folder = _mtx_folder(tmp_path, f"{BANNER}\n2 3 2\n1 1 5\n2 2 3\n")
    (folder / "features.tsv").write_text(
        "".join(f"{line.rsplit(chr(9), 1)[0]}\t\n" for line in FEATURES.splitlines())
    )
    adata = read_10x(folder)
    assert adata.var["feature_type"].tolist() == ["Gene Expression"] * 2
    assert adata.X.toarray().tolist() == [[5, 0], [0, 3], [0, 0]]


@pytest.mark.parametrize("line", ["ENSG00000000005\tTNMD", "ENSG00000000005\tTNMD\t"])
def test_a_features_line_without_its_type_is_refused(tmp_path: Path, line: str) -> None:
    """The feature was left out, warned as one of type '' (the first line so damaged was refused)."""
    folder = _mtx_folder(tmp_path, f"{BANNER}\n2 3 2\n1 1 5\n2 2 3\n")
    (folder / "features.tsv").write_text(FEATURES.splitlines()[0] + f"\n{line}\n")
    with pytest.raises(TenxFormatError, match=r"features.tsv: line 2 has no feature type"):
        read_10x(folder)


@pytest.mark.parametrize("banner", ["%%MatrixMarket matrix coordinate pattern general", "no banner"])
def test_an_unread_mtx_header_names_its_file_once(tmp_path: Path, banner: str) -> None:
    folder = _mtx_folder(tmp_path, f"{banner}\n2 3 1\n1 1\n")
    with pytest.raises(TenxFormatError) as caught:
        read_10x(folder)
    assert str(caught.value).count(str(folder / "matrix.mtx")) == 1, caught.value


@pytest.mark.parametrize("which", ["matrix.mtx", "features.tsv", "barcodes.tsv"])
def test_a_byte_order_mark_is_skipped(tmp_path: Path, which: str) -> None:
    folder = _mtx_folder(tmp_path, f"{BANNER}\n2 3 2\n1 1 5\n2 2 3\n")
    (folder / which).write_bytes(b"\xef\xbb\xbf" + (folder / which).read_bytes())
    adata = read_10x(folder)
    assert adata.X.toarray().tolist() == [[5, 0], [0, 3], [0, 0]]
    assert adata.obs_names.tolist() == ["A", "B", "C"]
    assert adata.var["gene_ids"].tolist() == ["ENSG00000000003", "ENSG00000000005"]


def test_mtx_spaces_tabs_and_crlf_are_still_read(tmp_path: Path) -> None:
    body = f"{BANNER}\r\n2 3 2\r\n  1\t1  5 \r\n2 2\t3\t\r\n"
    folder = _mtx_folder(tmp_path, body)
    assert read_10x(folder).X.toarray().tolist() == [[5, 0], [0, 3], [0, 0]]


def test_mtx_value_beyond_int64_is_refused(tmp_path: Path) -> None:
    folder = _mtx_folder(tmp_path, f"{BANNER}\n2 3 2\n1 1 99999999999999999999\n2 2 3\n")
    with pytest.raises(TenxFormatError, match=f"{re.escape(str(folder / 'matrix.mtx'))}.*64 bits"):
        read_10x(folder)


def _sample(accession: str, characteristics: list[str]) -> str:
    lines = "".join(f"!Sample_characteristics_ch1 = {c}\n" for c in characteristics)
    return (
        f"^SAMPLE = {accession}\n!Sample_title = t{accession}\n!Sample_geo_accession = {accession}\n"
        f"!Sample_organism_ch1 = Homo sapiens\n{lines}"
    )


def _two_samples(tmp_path: Path, first: str, second: str) -> tuple[object, pd.Series]:
    """A series of two samples whose characteristic ``biosample id`` is ``first`` and ``second``: the read
    series and its typed ``biosample_id`` column."""
    soft = tmp_path / "GSE1_family.soft"
    soft.write_text(
        "^SERIES = GSE1\n!Series_title = t\n!Series_geo_accession = GSE1\n"
        "!Series_sample_id = GSM1\n!Series_sample_id = GSM2\n"
        + _sample("GSM1", [f"biosample id: {first}"])
        + _sample("GSM2", [f"biosample id: {second}"])
    )
    series = read_soft(soft)
    return series, sample_table(series)["biosample_id"]


@pytest.mark.parametrize("other", ["2", "2.5", "-9223372036854775808"])
def test_geo_integer_beyond_int64_is_kept_as_text(tmp_path: Path, other: str) -> None:
    series, column = _two_samples(tmp_path, "12345678901234567890", other)
    assert isinstance(column.dtype, pd.CategoricalDtype)
    assert column.astype(str).tolist() == ["12345678901234567890", other]
    plan_datasets(series)


def test_geo_integer_past_float64_beside_a_decimal_is_kept_as_text(tmp_path: Path) -> None:
    """The two were typed float64, and 9007199254740993 read 9007199254740992."""
    _, column = _two_samples(tmp_path, "9007199254740993", "0.5")
    assert column.astype(str).tolist() == ["9007199254740993", "0.5"]


def test_geo_integers_within_int64_stay_int64(tmp_path: Path) -> None:
    _, column = _two_samples(tmp_path, "9223372036854775807", "NA")
    assert column.dtype == "Int64"
    assert column.iloc[0] == np.iinfo(np.int64).max and column.isna().iloc[1]


def test_add_from_10x_obs_list_of_wrong_length(tmp_path: Path) -> None:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        DonorCells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features(
        "gene_expression",
        pd.DataFrame({"uid": ["ENSG00000000003", "ENSG00000000005"], "gene_symbol": ["TSPAN6", "TNMD"]}),
    )
    folder = _mtx_folder(tmp_path, f"{BANNER}\n2 3 2\n1 1 1\n2 2 3\n")
    record = DatasetRecord(uid="x")
    message = rf"{re.escape(str(folder))}.*obs\['donor'\] has 2 values .* 3 cells"
    with pytest.raises(IngestError, match=message):
        add_from_10x(atlas, folder, dataset_record=record, obs={"donor": ["a", "b"]}, progress=False)
    for unordered in ({"a", "b", "c"}, (donor for donor in "abc")):  # an untyped TypeError from pandas
        with pytest.raises(
            IngestError, match=r"obs\['donor'\] is a (set|generator), which has no cell order"
        ):
            add_from_10x(atlas, folder, dataset_record=record, obs={"donor": unordered}, progress=False)
    records = add_from_10x(
        atlas, folder, dataset_record=DatasetRecord(uid="x"), obs={"donor": ["a", "b", "c"]}, progress=False
    )
    assert [r.uid for r in records] == ["x"]
