"""GEO SOFT parsing (GEOparse test files), typed sample tables, obs broadcast, mirror fetch, GEO -> atlas."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lancell.atlas import RaggedAtlas
from lancell.errors import GeoError, IngestError
from lancell.ingest.geo import (
    broadcast_obs,
    fetch_supplementary,
    plan_datasets,
    read_soft,
    sample_table,
    supplementary_key,
)
from lancell.ingest.tenx import add_from_10x, read_10x
from lancell.tables.schema import FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

DATA = Path(__file__).resolve().parents[2] / "data"
GSE105845 = DATA / "geo" / "GSE105845_family.soft"
SOFT_EX = DATA / "geo" / "soft_ex_family.txt"
V3_H5 = DATA / "10x_v3" / "filtered_feature_bc_matrix.h5"
H5_URL = (
    "ftp://ftp.ncbi.nlm.nih.gov/geo/samples/GSM9000nnn/GSM9000011/suppl/"
    "GSM9000011_filtered_feature_bc_matrix.h5"
)

# a small series in the layout of a current single-cell GSE family file
SERIES = f"""^DATABASE = GeoMiame
!Database_name = Gene Expression Omnibus (GEO)
^SERIES = GSE900001
!Series_title = Lung and blood single-cell test series
!Series_geo_accession = GSE900001
!Series_sample_id = GSM9000011
!Series_sample_id = GSM9000012
!Series_supplementary_file = ftp://ftp.ncbi.nlm.nih.gov/geo/series/GSE900nnn/GSE900001/suppl/GSE900001_RAW.tar
^SAMPLE = GSM9000011
!Sample_title = donor A, lung
!Sample_geo_accession = GSM9000011
!Sample_organism_ch1 = Homo sapiens
!Sample_characteristics_ch1 = age: 45
!Sample_characteristics_ch1 = tissue: lung
!Sample_characteristics_ch1 = bmi: 22.5
!Sample_characteristics_ch1 = Smoker: yes
!Sample_characteristics_ch1 = untreated
!Sample_supplementary_file_1 = {H5_URL}
!Sample_supplementary_file_2 = NONE
^SAMPLE = GSM9000012
!Sample_title = donor B, blood
!Sample_geo_accession = GSM9000012
!Sample_organism_ch1 = Homo sapiens
!Sample_characteristics_ch1 = age: 61
!Sample_characteristics_ch1 = tissue: blood
!Sample_characteristics_ch1 = bmi: 30
!Sample_characteristics_ch1 = Smoker: NA
!Sample_supplementary_file_1 = ftp://ftp.ncbi.nlm.nih.gov/geo/samples/GSM9000nnn/GSM9000012/suppl/GSM9000012_barcodes.tsv.gz
"""


@pytest.fixture
def series_file(tmp_path) -> Path:
    path = tmp_path / "GSE900001_family.soft"
    path.write_text(SERIES)
    return path


def test_gse105845_lists_its_samples():
    series = read_soft(GSE105845)
    assert series.accession == "GSE105845"
    assert series.title == "microRNA-seq from forebrain (ENCSR715QTV)"
    assert [s.accession for s in series.samples] == ["GSM2828511", "GSM2828512"]
    # the file has no ^SAMPLE sections: the samples come from the series, organism from its sample_taxid
    assert {s.organism for s in series.samples} == {"Mus musculus"}
    assert all(s.title is None and not s.characteristics for s in series.samples)
    assert series.supplementary_files == (
        "ftp://ftp.ncbi.nlm.nih.gov/geo/series/GSE105nnn/GSE105845/suppl/GSE105845_RAW.tar",
    )


def test_soft_ex_samples_and_characteristics():
    series = read_soft(SOFT_EX)  # the name does not start with GSE: geotype="GSE" is implied
    assert series.accession == "Murine ES Cells"
    assert [s.accession for s in series.samples] == [
        "Control Embyronic Stem Cell Replicate 1",
        "Control Embyronic Stem Cell Replicate 2",
        "Triple-Fusion Transfected Embryonic Stem Cells Replicate 1",
    ]
    first = series.samples[0]
    assert first.organism == "Mus musculus"
    assert first.supplementary_files == ("file1.gpr",)
    assert dict(first.characteristics) == {
        "cell_line": "ES-D3 (CRL-1934)",
        "passages": "4",
        "cell_type": "embryonic stem cells derived from blastocysts",
        "strain": "129Sv",
        "strain_ch2": "C57BL/6",
        "age_ch2": "E17.5 d",
        "tissue_ch2": "whole embryo",
    }
    table = sample_table(series)
    assert table["passages"].dtype == "Int64" and table["passages"].tolist() == [4, 4, 4]
    assert table["cell_line"].dtype == "category" and table["age_ch2"].dtype == "category"
    assert table["cell_line"].iloc[2].endswith("triple fusion reporter gene")


def test_typed_characteristics_and_gzip(series_file):
    plain = read_soft(series_file)
    gz = series_file.with_name(series_file.name + ".gz")
    gz.write_bytes(gzip.compress(series_file.read_bytes()))
    assert read_soft(gz).samples == plain.samples
    table = sample_table(plain)
    assert list(table.index) == ["GSM9000011", "GSM9000012"]
    assert table["age"].dtype == "Int64" and table["age"].tolist() == [45, 61]
    assert table["bmi"].dtype == np.float64 and table["bmi"].tolist() == [22.5, 30.0]
    assert table["tissue"].dtype == "category" and table["tissue"].tolist() == ["lung", "blood"]
    assert table["smoker"].tolist()[0] == "yes" and pd.isna(table["smoker"].iloc[1])
    assert table["characteristics"].tolist()[0] == "untreated"
    assert plain.samples[0].supplementary_files == (H5_URL,)  # NONE is not a file


def test_identifiers_and_spellings_of_one_number_stay_text():
    """donor 007 became 7, barcodes 0012 and 12 one value, passage 1.10 and 1.1 one value."""
    from lancell.ingest.geo_values import typed_values

    assert typed_values(pd.Series(["007", "12"])).tolist() == ["007", "12"]
    assert typed_values(pd.Series(["0012", "12"])).dtype == "category"
    assert typed_values(pd.Series(["1.10", "1.1"])).tolist() == ["1.10", "1.1"]
    assert typed_values(pd.Series(["12", "12.0"])).dtype == "category"
    # fixed decimals, signs and exponents are numbers (RIN 8.20 is a measurement)
    assert typed_values(pd.Series(["8.20", "7.10", "9.00"])).tolist() == [8.2, 7.1, 9.0]
    assert typed_values(pd.Series(["1.50", "2"])).tolist() == [1.5, 2.0]
    assert typed_values(pd.Series(["+5", "1e3"])).tolist() == [5.0, 1000.0]
    assert typed_values(pd.Series(["-7", "12", "NA"])).tolist() == [-7, 12, pd.NA]
    assert typed_values(pd.Series(["0", "0.25", "30"])).tolist() == [0.0, 0.25, 30.0]


def test_words_for_a_value_not_measured_are_missing_among_numbers_only():
    """age: 65 / age: unknown kept the column as text labels ("65", "unknown")."""
    from lancell.ingest.geo_values import typed_values

    assert typed_values(pd.Series(["65", "unknown", "40"])).tolist() == [65, pd.NA, 40]
    assert typed_values(pd.Series(["1.5", "Not available", "-"])).tolist()[0] == 1.5
    assert typed_values(pd.Series(["1.5", "Not available"])).isna().tolist() == [False, True]
    for labels in (["male", "unknown"], ["007", "unknown"], ["unknown"], ["65/70", "missing"]):
        assert typed_values(pd.Series(labels)).tolist() == labels  # an answer among text labels


def test_plan_datasets_records_and_obs(series_file):
    series = read_soft(series_file)
    plans = plan_datasets(series, file_pattern=r"\.h5$", columns={"tissue": "tissue_label"})
    first, second = plans
    assert (first.record.uid, first.record.accession) == ("GSM9000011", "GSM9000011")
    assert first.record.name == "donor A, lung (GSE900001)"
    assert first.record.source == H5_URL and first.files == (H5_URL,)
    assert second.files == () and second.record.source == str(series_file)
    assert "title" not in first.obs.columns and first.obs["tissue_label"].iloc[0] == "lung"
    adata = read_10x(V3_H5)
    out = broadcast_obs(adata, first.obs)
    assert out.obs["age"].dtype == "Int64" and set(out.obs["age"]) == {45}
    assert out.obs["tissue_label"].dtype == "category"
    assert list(out.obs["tissue_label"].cat.categories) == ["blood", "lung"]  # the series' categories
    assert "age" not in adata.obs.columns
    with pytest.raises(GeoError, match="one row"):
        broadcast_obs(adata, sample_table(series))
    with pytest.raises(IngestError, match=r"columns renames \['tisue'\], which the sample table does not"):
        plan_datasets(series, columns={"tisue": "tissue_label"})  # a typo was ignored


def test_fetch_from_a_local_mirror(tmp_path, series_file):
    mirror = tmp_path / "mirror"
    target = mirror / supplementary_key(H5_URL)
    assert supplementary_key(H5_URL).startswith("geo/samples/GSM9000nnn/GSM9000011/suppl/")
    target.parent.mkdir(parents=True)
    shutil.copy(V3_H5, target)
    local = fetch_supplementary(H5_URL, tmp_path / "downloads", mirror=mirror.as_uri())
    assert local.name == "GSM9000011_filtered_feature_bc_matrix.h5"
    assert local.read_bytes() == V3_H5.read_bytes()
    missing = H5_URL.replace("GSM9000011_filtered", "GSM9000011_raw")
    with pytest.raises(GeoError, match="no object"):
        fetch_supplementary(missing, tmp_path / "downloads", mirror=mirror.as_uri())
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == [local.name]  # no partial file


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class GeoCells(LancellBaseSchema):
    age: int | None = None
    bmi: float | None = None
    tissue: str | None = None
    organism: str | None = None
    gene_expression: SparseZarrPointer | None = None


def test_geo_sample_to_atlas(tmp_path, series_file):
    """SOFT -> plan -> fetch from the mirror -> add_from_10x with the sample's obs row and provenance."""
    mirror = tmp_path / "mirror"
    (mirror / supplementary_key(H5_URL)).parent.mkdir(parents=True)
    shutil.copy(V3_H5, mirror / supplementary_key(H5_URL))
    plan = plan_datasets(read_soft(series_file), samples=["GSM9000011"], file_pattern=r"\.h5$")[0]
    local = fetch_supplementary(plan.files[0], tmp_path / "downloads", mirror=mirror.as_uri())
    var = read_10x(local).var
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        GeoCells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features(
        "gene_expression", pd.DataFrame({"uid": var["gene_ids"], "gene_symbol": var["gene_symbol"]})
    )
    (record,) = add_from_10x(atlas, local, dataset_record=plan.record, obs=plan.obs, progress=False)
    datasets = atlas.list_datasets().set_index("uid")
    assert datasets.loc["GSM9000011", ["accession", "source", "name"]].tolist() == [
        "GSM9000011",
        H5_URL,
        "donor A, lung (GSE900001)",
    ]
    cells = atlas.query().where("dataset_uid = 'GSM9000011'").to_pandas()
    assert len(cells) == record.n_cells == 1107
    assert set(cells["age"]) == {45} and set(cells["tissue"]) == {"lung"}
    assert np.allclose(cells["bmi"], 22.5) and set(cells["organism"]) == {"Homo sapiens"}


@pytest.mark.parametrize("kind", ["missing", "junk", "truncated-gzip", "platform-only"])
def test_bad_soft_files_raise_geo_error(tmp_path, kind):
    path = tmp_path / "GSE1_family.soft"
    if kind == "junk":
        path.write_text("hello\nworld\n")
    elif kind == "truncated-gzip":
        path = tmp_path / "GSE1_family.soft.gz"
        path.write_bytes(gzip.compress(SERIES.encode())[:200])
    elif kind == "platform-only":
        path.write_text("^PLATFORM = GPL1\n!Platform_title = a platform\n")
    with pytest.raises(GeoError):
        read_soft(path)
    with pytest.raises(GeoError, match="no sample"):
        read_soft(SOFT_EX).sample("GSM0")
