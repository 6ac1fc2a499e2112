"""land_geo_series: .h5 and Matrix Market samples, feature types, duplicate barcodes, samples not landed,
and a failure that lands nothing; a SOFT file with an empty ^DATABASE section."""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from lancell.errors import GeoError, LancellWarning, TenxFormatError
from lancell.ingest.geo import read_soft, supplementary_key
from lancell.ingest.geo_landing import land_geo_series

BASE = "ftp://ftp.ncbi.nlm.nih.gov/geo/samples/GSM9000nnn"
H5_URL = f"{BASE}/GSM9000011/suppl/GSM9000011_filtered_feature_bc_matrix.h5"
MTX_URLS = {
    name: f"{BASE}/GSM9000012/suppl/GSM9000012_{name}"
    for name in ("barcodes.tsv.gz", "features.tsv.gz", "matrix.mtx.gz")
}
X = np.array([[1, 0, 2, 5], [0, 3, 0, 7]])
IDS = ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003", "CD3_ADT"]
TYPES = ["Gene Expression"] * 3 + ["Antibody Capture"]


def write_h5(path: Path, x: np.ndarray, ids: list[str], types: list[str], barcodes: list[str]) -> None:
    """A Cell Ranger v3 HDF5 file of the cells x features counts ``x``."""
    genes_by_cells = sp.csc_matrix(x.T.astype(np.int32))
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(barcodes, dtype="S")
        for name in ("data", "indices", "indptr"):
            m[name] = getattr(genes_by_cells, name)
        m["shape"] = np.array(genes_by_cells.shape, dtype=np.int32)
        for name, values in (
            ("id", ids),
            ("name", ids),
            ("feature_type", types),
            ("genome", ["GRCh38"] * len(ids)),
        ):
            m[f"features/{name}"] = np.array(values, dtype="S")


def _sample(accession: str, title: str, urls: list[str]) -> str:
    files = "".join(f"!Sample_supplementary_file_{i} = {url}\n" for i, url in enumerate(urls, 1))
    return (
        f"^SAMPLE = {accession}\n!Sample_title = {title}\n!Sample_geo_accession = {accession}\n"
        f"!Sample_organism_ch1 = Homo sapiens\n!Sample_characteristics_ch1 = tissue: {title}\n{files}"
    )


SERIES = (
    "^DATABASE = GeoMiame\n"  # an empty section: GEOparse would read the ^SERIES lines as its own
    "^SERIES = GSE900001\n!Series_title = t\n!Series_geo_accession = GSE900001\n"
    + "".join(f"!Series_sample_id = GSM900001{i}\n" for i in (1, 2, 3))
    + _sample("GSM9000011", "lung", [H5_URL])
    + _sample("GSM9000012", "blood", list(MTX_URLS.values()))
)  # GSM9000013 is listed without a ^SAMPLE section


def _mirror(root: Path, barcodes: list[str] | None = None) -> str:
    mirror = root / "mirror"
    h5 = mirror / supplementary_key(H5_URL)
    h5.parent.mkdir(parents=True)
    write_h5(h5, X, IDS, TYPES, barcodes or ["AAAC-1", "AAAG-1"])
    lines = {
        "barcodes.tsv.gz": ["CCCA-1", "CCCG-1"],
        "features.tsv.gz": [f"{i}\tG{n}\tGene Expression" for n, i in enumerate(IDS[:3])],
        "matrix.mtx.gz": [
            "%%MatrixMarket matrix coordinate integer general",
            "3 2 3",
            "1 1 1",
            "3 1 2",
            "2 2 3",
        ],
    }
    for name, url in MTX_URLS.items():
        path = mirror / supplementary_key(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt") as fh:
            fh.write("\n".join(lines[name]) + "\n")
    return mirror.as_uri()


@pytest.fixture
def soft(tmp_path) -> Path:
    path = tmp_path / "GSE900001_family.soft"
    path.write_text(SERIES)
    return path


def test_an_empty_database_section_is_read(soft):
    series = read_soft(soft)
    assert (series.accession, series.title) == ("GSE900001", "t")
    assert [s.accession for s in series.samples] == ["GSM9000011", "GSM9000012", "GSM9000013"]


def test_h5_and_matrix_market_samples_are_landed(tmp_path, soft):
    landing = tmp_path / "landing"
    _mirror(tmp_path)
    with pytest.warns(LancellWarning) as caught:  # (the mirror as a folder's path, not a file:// URL)
        landed = land_geo_series(soft, landing, mirror=str(tmp_path / "mirror"))
    assert landed == ["GSM9000011", "GSM9000012"]
    messages = [str(w.message) for w in caught if issubclass(w.category, LancellWarning)]
    assert any("1 samples have no supplementary file" in m and "GSM9000013" in m for m in messages)
    assert any("{'Antibody Capture': 1} features, 2 nonzero values" in m for m in messages)
    h5 = ad.read_h5ad(landing / "GSM9000011.h5ad")
    assert h5.var_names.tolist() == IDS[:3] and h5.X.toarray().tolist() == X[:, :3].tolist()
    mtx = ad.read_h5ad(landing / "GSM9000012.h5ad")
    assert mtx.obs_names.tolist() == ["CCCA-1", "CCCG-1"] and mtx.X.toarray().tolist() == [
        [1, 0, 2],
        [0, 3, 0],
    ]
    assert set(mtx.obs["tissue"]) == {"blood"}
    assert sorted(p.name for p in landing.iterdir()) == [
        "GSM9000011.h5ad",
        "GSM9000011.json",
        "GSM9000012.h5ad",
        "GSM9000012.json",
    ]


def test_a_sample_landed_again_by_another_series_keeps_its_files(tmp_path, soft):
    """A SuperSeries repeats its SubSeries' samples: landing it rewrote the landed samples' sidecars (their
    name and source), so their ingested datasets no longer matched their landing files, run after run."""
    landing = tmp_path / "landing"
    mirror = _mirror(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)
        land_geo_series(soft, landing, mirror=mirror)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in landing.iterdir()}
    soft.write_text(SERIES.replace("GSE900001", "GSE900002"))  # another series listing the same samples
    with pytest.warns(
        LancellWarning, match=r"samples \['GSM9000011', 'GSM9000012'\] are already in the landing"
    ):
        assert land_geo_series(soft, landing, mirror=mirror) == ["GSM9000011", "GSM9000012"]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in landing.iterdir()} == before


def test_a_landing_that_finishes_first_is_not_overwritten(tmp_path, soft, monkeypatch):
    """Two landings of one sample at once (a SuperSeries and its SubSeries) shared ``<uid>.h5ad.part``: one
    renamed the other's part away and failed with a bare FileNotFoundError, leaving a part behind."""
    from lancell.ingest import geo_landing

    landing = tmp_path / "landing"
    fetched = geo_landing._landed_part

    def meanwhile_landed_by_another(dataset, urls, target, *args):
        part = fetched(dataset, urls, target, *args)
        if part is not None:
            target.write_bytes(b"landed by the other run")  # it finished first
        return part

    monkeypatch.setattr(geo_landing, "_landed_part", meanwhile_landed_by_another)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)
        land_geo_series(soft, landing, mirror=_mirror(tmp_path))
    assert sorted(p.name for p in landing.iterdir()) == ["GSM9000011.h5ad", "GSM9000012.h5ad"]
    assert {p.read_bytes() for p in landing.iterdir()} == {b"landed by the other run"}


def test_a_file_put_in_place_at_the_last_moment_is_kept_and_no_part_is_left(tmp_path, soft, monkeypatch):
    """The move into place never overwrites (a link, not a rename), and every part goes whatever happens
    after the fetch: a failure or an interrupt left hidden full-size parts that nothing reported."""
    from lancell.ingest import geo_landing

    landing = tmp_path / "landing"
    mirror = _mirror(tmp_path)
    linked = os.link

    def just_before(source, target):
        Path(target).write_bytes(b"put there meanwhile")
        return linked(source, target)

    monkeypatch.setattr(os, "link", just_before)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)
        land_geo_series(soft, landing, mirror=mirror)
    assert {p.name: p.read_bytes() for p in landing.glob("*.h5ad")} == {
        "GSM9000011.h5ad": b"put there meanwhile",
        "GSM9000012.h5ad": b"put there meanwhile",
    }
    assert not [p.name for p in landing.iterdir() if p.name.endswith(".part")]
    monkeypatch.undo()

    def interrupted(*args):
        raise KeyboardInterrupt

    again = tmp_path / "again"
    monkeypatch.setattr(geo_landing, "_place", interrupted)
    with warnings.catch_warnings(), pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("ignore", LancellWarning)
        land_geo_series(soft, again, mirror=mirror)
    assert not again.exists()  # no part left, and the folder it made went with them


def test_a_failing_sample_lands_nothing(tmp_path, soft):
    mirror = _mirror(tmp_path)
    (tmp_path / "mirror" / supplementary_key(MTX_URLS["matrix.mtx.gz"])).unlink()
    landing = tmp_path / "new" / "landing"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)
        with pytest.raises(GeoError, match="no object"):
            land_geo_series(soft, landing, mirror=mirror)
    assert not (tmp_path / "new").exists()  # the folders it made went too (they were left empty)
    landing.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)
        with pytest.raises(GeoError, match="no object"):
            land_geo_series(soft, landing, mirror=mirror)
    assert list(landing.iterdir()) == []  # the first sample, read before the failure, is not landed
    soft.write_text(SERIES.replace(f"!Sample_supplementary_file_1 = {MTX_URLS['barcodes.tsv.gz']}\n", ""))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)
        with pytest.raises(GeoError, match=r"GSM9000012: .*matrix.mtx.gz comes without GSM9000012_barcodes"):
            land_geo_series(soft, landing, mirror=mirror)
    assert list(landing.iterdir()) == []
    genes = MTX_URLS["features.tsv.gz"].replace("features", "genes")  # which one is the matrix's: not known
    soft.write_text(SERIES + f"!Sample_supplementary_file_4 = {genes}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)
        with pytest.raises(GeoError, match=r"GSM9000012_features.tsv.gz', 'GSM9000012_genes.tsv.gz'\]"):
            land_geo_series(soft, landing, mirror=mirror)
    assert list(landing.iterdir()) == []


def test_a_sample_file_that_is_no_10x_output_is_named_by_its_url(tmp_path, soft):
    """The error named the fetched copy, a temporary file already deleted when it was read."""
    mirror = _mirror(tmp_path)
    h5 = tmp_path / "mirror" / supplementary_key(H5_URL)
    h5.write_bytes(h5.read_bytes()[:5000])  # truncated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)
        with pytest.raises(
            TenxFormatError, match=f"GSM9000011: {H5_URL} is no readable 10x output"
        ) as caught:
            land_geo_series(soft, tmp_path / "landing", mirror=mirror)
    assert "/tmp" not in str(caught.value).replace(str(tmp_path), "")


def test_other_feature_types_and_samples_without_a_file_are_warned_about(tmp_path, soft):
    soft.write_text(SERIES.split("^SAMPLE = GSM9000012")[0])  # GSM9000012 and 13: listed, no ^SAMPLE
    with pytest.warns(LancellWarning) as caught:
        landed = land_geo_series(soft, tmp_path / "landing", mirror=_mirror(tmp_path))
    assert landed == ["GSM9000011"]
    messages = [str(w.message) for w in caught if issubclass(w.category, LancellWarning)]
    assert any(
        "2 samples have no supplementary file" in m and "'GSM9000012', 'GSM9000013'" in m for m in messages
    )
    assert any("{'Antibody Capture': 1} features, 2 nonzero values" in m for m in messages)
    assert ad.read_h5ad(tmp_path / "landing" / "GSM9000011.h5ad").var["feature_type"].unique().tolist() == [
        "Gene Expression"
    ]


def test_duplicate_barcodes_are_refused(tmp_path, soft):
    soft.write_text(SERIES.split("^SAMPLE = GSM9000012")[0])
    mirror = _mirror(tmp_path, barcodes=["AAAC-1", "AAAC-1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LancellWarning)
        with pytest.raises(GeoError, match=r"GSM9000011: 1 barcodes occur more than once, e.g. \['AAAC-1'\]"):
            land_geo_series(soft, tmp_path / "landing", mirror=mirror)
    assert not (tmp_path / "landing").exists()
