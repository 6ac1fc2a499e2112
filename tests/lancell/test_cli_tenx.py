"""``lancell ingest`` of 10x outputs: a Cell Ranger ``.h5`` or Matrix Market folder is ingested as it is (it
was refused, with Python to write instead), each feature type into its feature space on one set of cells,
exact against scipy's reader; the dataset uid comes from the sample, not Cell Ranger's own file name; keys
that do not apply to a 10x output are refused before anything is ingested."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.io

from lancell.atlas import RaggedAtlas
from lancell.errors import IngestError, TenxFormatError
from lancell.ingest.from_anndata import open_h5ad
from lancell.ingest.landing import landing_fingerprint, read_landing_spec
from lancell.ingest.landing_spec import landing_paths
from lancell.ingest.tenx import read_10x
from tests.lancell.test_cli import run

DATA = Path(__file__).resolve().parents[2] / "data"
V3_DIR = DATA / "10x_v3" / "filtered_feature_bc_matrix"
V3_H5 = DATA / "10x_v3" / "filtered_feature_bc_matrix.h5"
V2_DIR = DATA / "10x_v2" / "hg19_chr21"

CITE_SCHEMA = """
from lancell.tables.schema import LancellBaseSchema, SparseZarrPointer


class CiteCells(LancellBaseSchema):
    organism: str | None = None
    gene_expression: SparseZarrPointer | None = None
    protein: SparseZarrPointer | None = None
"""


@pytest.fixture
def cite_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An atlas with gene_expression and protein feature spaces (cells with an organism column)."""
    (tmp_path / "cite_schema.py").write_text(CITE_SCHEMA)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    db = str(tmp_path / "db")
    space = "lancell.bundled:GeneFeature"
    run("init", db, "--schema", "cite_schema:CiteCells", "--registry", f"gene_expression={space}",
        "--registry", f"protein={space}")  # fmt: skip
    return db


def _with_antibodies(folder: Path) -> Path:
    """A copy of the v3 folder with its last 7 features relabelled as antibody captures."""
    shutil.copytree(V3_DIR, folder)
    path = folder / "features.tsv.gz"
    rows = [line.split("\t") for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    for row in rows[-7:]:
        row[2] = "Antibody Capture"
    path.write_bytes(gzip.compress(("\n".join("\t".join(r) for r in rows) + "\n").encode()))
    return folder


def _ids(folder: Path) -> list[str]:
    """The feature ids of a v3 folder, in its order."""
    lines = gzip.decompress((folder / "features.tsv.gz").read_bytes()).decode().splitlines()
    return [line.split("\t")[0] for line in lines]


def _mmread(folder: Path) -> np.ndarray:
    return scipy.io.mmread(folder / "matrix.mtx.gz").T.toarray()  # cells x features


def test_a_cell_ranger_h5_and_folder_are_ingested_by_their_sample_name(tmp_path: Path, cite_db: str) -> None:
    outs = tmp_path / "run7" / "outs"
    outs.mkdir(parents=True)
    shutil.copyfile(V3_H5, outs / "filtered_feature_bc_matrix.h5")
    shutil.copytree(V3_DIR, tmp_path / "run8")
    shutil.copytree(V2_DIR, tmp_path / "v2")
    (tmp_path / "v2.json").write_text(json.dumps({"uid": "chr21", "name": "hg19 chr21"}))
    done = run("ingest", cite_db, str(outs / "filtered_feature_bc_matrix.h5"), str(tmp_path / "run8"),
               str(tmp_path / "v2" / "matrix.mtx"), "--organism", "Homo sapiens")  # fmt: skip
    assert "run7: ingested (1107 cells, 23866 values, layers counts)" in done.stdout
    assert f"run8: skipped, {tmp_path / 'run8'} holds the same content as dataset run7" in done.stdout
    assert "same content" not in done.stderr  # reported once, by that line (it was a warning too)
    assert "chr21: ingested (12 cells" in done.stdout
    atlas = RaggedAtlas.open(cite_db)
    datasets = atlas.list_datasets().set_index("uid")
    assert list(datasets.index) == ["run7", "chr21"] and datasets.loc["chr21", "name"] == "hg19 chr21"
    out = atlas.query().where(dataset_uid="run7").to_anndata()
    expected = _mmread(V3_DIR)
    assert np.array_equal(out[:, _ids(V3_DIR)].X.toarray(), expected)
    assert set(out.obs["organism"]) == {"Homo sapiens"}
    registry = atlas.feature_registry("gene_expression")
    assert set(registry["organism"]) == {"Homo sapiens"} and "gene_symbol" in registry
    assert atlas.validate() == []
    again = run("ingest", cite_db, str(outs / "filtered_feature_bc_matrix.h5"))
    assert "run7: already in the atlas" in again.stdout
    shutil.copytree(V3_DIR, outs / "filtered_feature_bc_matrix")  # its other form, beside it: not a clash
    other_form = run("ingest", cite_db, str(outs / "filtered_feature_bc_matrix"))
    assert "run7: already in the atlas" in other_form.stdout
    # both forms in one command: one dataset
    both = run(
        "ingest",
        cite_db,
        str(outs / "filtered_feature_bc_matrix.h5"),
        str(outs / "filtered_feature_bc_matrix"),
    )
    assert "filtered_feature_bc_matrix.h5 in Cell Ranger's other form: ingested once" in both.stderr
    assert [line.split(" (")[0] for line in both.stdout.splitlines()] == ["run7: already in the atlas"]


def test_a_cite_seq_folder_lands_as_one_set_of_cells_with_its_protein(tmp_path: Path, cite_db: str) -> None:
    folder = _with_antibodies(tmp_path / "donor3")
    done = run("ingest", cite_db, str(folder))
    assert "donor3: ingested (1107 cells" in done.stdout
    assert "donor3/protein: ingested on the cells of donor3 (" in done.stdout
    atlas = RaggedAtlas.open(cite_db)
    assert atlas.query().count() == 1107
    both = atlas.query().to_mudata(layers={"gene_expression": "counts", "protein": "counts"})
    expected = _mmread(V3_DIR)
    assert list(both["gene_expression"].obs_names) == list(both["protein"].obs_names)
    assert both["protein"].n_vars == 7 and both["gene_expression"].n_vars == 500
    ids = _ids(folder)
    assert np.array_equal(both["protein"][:, ids[-7:]].X.toarray(), expected[:, -7:])
    assert np.array_equal(both["gene_expression"][:, ids[:-7]].X.toarray(), expected[:, :-7])
    assert atlas.validate() == []
    # deleting the cells deletes their protein too: named, and not an error when also listed
    deleted = run("delete", cite_db, "donor3", "donor3/protein").stdout
    assert deleted.startswith("donor3: deleted with donor3/protein (its cells' other feature spaces)")
    assert len(deleted.splitlines()) == 1
    run("ingest", cite_db, str(folder), "--no-csc")
    again = run("ingest", cite_db, str(folder), "--csc")  # the hint names the protein's copy too
    assert f"(lancell add-csc {cite_db} donor3 donor3/protein writes their CSC copy)" in again.stderr
    # the modality listed first is deleted, and not named again after
    deleted = run("delete", cite_db, "donor3/protein", "donor3").stdout.splitlines()
    assert [line.split(";")[0] for line in deleted] == ["donor3/protein: deleted", "donor3: deleted"]
    assert run("ls", cite_db).stdout == "0 datasets, 0 cells\n"


def test_keys_a_10x_output_does_not_use_are_refused_before_any_ingest(tmp_path: Path, cite_db: str) -> None:
    folder = _with_antibodies(tmp_path / "s1")
    h5ad = tmp_path / "plain.h5ad"
    ad.AnnData(np.ones((2, 1), np.float32)).write_h5ad(h5ad)
    for flags, words in (
        (["--layers", "counts=X"], "layers (--layers) does not apply to"),
        (["--standardize"], "standardize (--standardize) does not apply to"),
        (["--obs-columns", "donor=organism"], "obs_columns (--obs-columns) does not apply to"),
    ):
        refused = run("ingest", cite_db, str(h5ad), str(folder), *flags, check=False)
        assert refused.returncode == 1 and words in refused.stderr and "a 10x output" in refused.stderr
    (tmp_path / "s1.json").write_text(json.dumps({"symbol_column": "gene_symbol"}))
    refused = run("ingest", cite_db, str(folder), check=False)
    assert "s1.json: symbol_column does not apply to" in refused.stderr
    (tmp_path / "s1.json").unlink()
    refused = run("ingest", cite_db, str(h5ad), "--genome", "GRCh38", check=False)
    assert f"genome (--genome) applies to a 10x output, not to {h5ad}" in refused.stderr
    (tmp_path / "plain.json").write_text(json.dumps({"feature_space": None}))
    refused = run("ingest", cite_db, str(h5ad), check=False)
    assert "feature_space null is for a 10x output" in refused.stderr
    assert RaggedAtlas.open(cite_db).list_datasets().empty
    only = run("ingest", cite_db, str(folder), "--feature-space", "protein", "--uid", "s1p")
    assert "s1p: ingested (1107 cells, " in only.stdout and "on the cells of" not in only.stdout
    assert list(RaggedAtlas.open(cite_db).list_datasets()["feature_space"]) == ["protein"]


def test_a_10x_spec_and_fingerprint(tmp_path: Path) -> None:
    """Cell Ranger's nesting (count, multi) names the sample; a folder's fingerprint follows its files; a
    spec without a genome keeps the fingerprint it had before the key existed."""
    multi = tmp_path / "runA" / "outs" / "per_sample_outs" / "donor1" / "count"
    multi.mkdir(parents=True)
    shutil.copyfile(V3_H5, multi / "sample_filtered_feature_bc_matrix.h5")
    assert read_landing_spec(multi / "sample_filtered_feature_bc_matrix.h5").uid == "donor1"
    folder = tmp_path / "lib2" / "filtered_feature_bc_matrix"
    shutil.copytree(V3_DIR, folder)
    spec = read_landing_spec(folder / "matrix.mtx.gz")
    assert (spec.uid, spec.path, spec.feature_space) == ("lib2", folder, None)
    before = landing_fingerprint(spec)
    (folder / "barcodes.tsv.gz").write_bytes(gzip.compress(b"AAAC-1\n"))
    assert landing_fingerprint(spec) != before
    h5ad = tmp_path / "a.h5ad"
    ad.AnnData(np.ones((2, 1), np.float32)).write_h5ad(h5ad)
    plain = read_landing_spec(h5ad)
    assert plain.feature_space == "gene_expression" and plain.genome is None
    assert landing_fingerprint(plain) == _fingerprint_without_genome(plain)


def _fingerprint_without_genome(spec: object) -> str:
    """The fingerprint as computed before ``genome`` was a key (its options, then the file's bytes)."""
    import dataclasses

    import xxhash

    digest = xxhash.xxh3_128()
    names = [f.name for f in dataclasses.fields(spec) if f.name not in ("path", "genome")]
    digest.update(json.dumps({n: getattr(spec, n) for n in names}, sort_keys=True, default=dict).encode())
    digest.update(spec.path.read_bytes())
    return digest.hexdigest()


def test_a_10x_output_is_named_for_its_sample_wherever_it_is_given_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A v2 genome folder was named after its genome (two samples' ``hg19`` were one dataset); a link was
    named after its target's folder; ``.`` or a bare ``matrix.mtx.gz`` raised a ValueError; a dotted folder's
    ``<name>.json`` was passed over for ``<stem>.json``."""
    for sample in ("s1", "s2"):
        genome = tmp_path / sample / "outs" / "filtered_gene_bc_matrices" / "hg19"
        shutil.copytree(V2_DIR, genome)
        assert read_landing_spec(genome).uid == sample
        assert read_landing_spec(genome / "matrix.mtx").uid == sample
    (tmp_path / "zone").mkdir()
    (tmp_path / "zone" / "donor42.h5").symlink_to(V3_H5)
    assert read_landing_spec(tmp_path / "zone" / "donor42.h5").uid == "donor42"
    dotted = tmp_path / "zone" / "pbmc.v3"
    shutil.copytree(V3_DIR, dotted)
    (tmp_path / "zone" / "pbmc.v3.json").write_text(
        json.dumps({"uid": "pbmc_v3", "organism": "Homo sapiens"})
    )
    spec = read_landing_spec(dotted)
    assert (spec.uid, spec.organism) == ("pbmc_v3", "Homo sapiens")
    monkeypatch.chdir(dotted)
    for given in (".", "matrix.mtx.gz"):
        assert (
            read_landing_spec(Path(given)).path == dotted and read_landing_spec(Path(given)).uid == "pbmc_v3"
        )
    # a Matrix Market output's files loose in a landing folder: named, not landed as the landing folder
    for name in ("matrix.mtx.gz", "barcodes.tsv.gz", "features.tsv.gz"):
        shutil.copyfile(V3_DIR / name, tmp_path / "zone" / name)
    paths, other = landing_paths(tmp_path / "zone")
    assert [p.name for p in paths] == ["donor42.h5", "pbmc.v3"]
    assert other == ["barcodes.tsv.gz", "features.tsv.gz", "matrix.mtx.gz"]


def test_a_10x_output_read_as_h5ad_is_told_how_to_ingest_it(tmp_path: Path) -> None:
    """The remedy said to run ``lancell ingest`` on the very file that had just failed as an .h5ad."""
    renamed = tmp_path / "pbmc.h5ad"
    shutil.copyfile(V3_H5, renamed)
    with pytest.raises(IngestError, match=r"it is a 10x output: name it pbmc\.h5, then ingest it with"):
        open_h5ad(renamed)
    as_h5 = tmp_path / "pbmc.h5"
    shutil.copyfile(V3_H5, as_h5)
    with pytest.raises(IngestError, match=rf"ingest it with `lancell ingest {as_h5}`"):
        open_h5ad(as_h5)
    geo = tmp_path / "GSM1_matrix.mtx.gz"
    shutil.copyfile(V3_DIR / "matrix.mtx.gz", geo)
    with pytest.raises(IngestError, match=r"name it matrix\.mtx\[\.gz\], in a folder with its barcodes"):
        open_h5ad(geo)


def _cite_h5(path: Path, genome_of_antibodies: bytes = b"") -> Path:
    """A copy of the v3 .h5 whose last 7 features are antibody captures of genome ``genome_of_antibodies``
    (Cell Ranger writes "" for them) and whose first two features share a name."""
    shutil.copyfile(V3_H5, path)
    with h5py.File(path, "r+") as f:
        features = f["matrix/features"]
        kinds, genomes, names = (features[key][:].astype("S32") for key in ("feature_type", "genome", "name"))
        kinds[-7:], genomes[-7:], names[1] = b"Antibody Capture", genome_of_antibodies, names[0]
        for key, values in (("feature_type", kinds), ("genome", genomes), ("name", names)):
            del features[key]
            features[key] = values
    return path


def test_files_that_would_land_as_one_dataset_are_refused_before_any_ingest(
    tmp_path: Path, cite_db: str
) -> None:
    """The raw and filtered matrices of one sample (or two samples' ``outs`` folders, or Cell Ranger multi's
    matrices) landed as one uid: the second was reported as already in the atlas, its data never read."""
    outs = tmp_path / "s3" / "outs"
    outs.mkdir(parents=True)
    for name in ("filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5"):
        shutil.copyfile(V3_H5, outs / name)
    both = [str(outs / "filtered_feature_bc_matrix.h5"), str(outs / "raw_feature_bc_matrix.h5")]
    refused = run("ingest", cite_db, *both, check=False)
    assert refused.returncode == 1 and "both land as dataset uid 's3': give each its own" in refused.stderr
    assert RaggedAtlas.open(cite_db).list_datasets().empty
    for sample in ("a", "b"):
        shutil.copytree(V3_DIR, tmp_path / sample / "outs" / "filtered_feature_bc_matrix")
        multi = tmp_path / f"run{sample}" / "outs" / "multi" / "count"
        multi.mkdir(parents=True)
        shutil.copyfile(V3_H5, multi / "raw_feature_bc_matrix.h5")
    assert read_landing_spec(tmp_path / "a" / "outs").uid == "a"
    assert (
        read_landing_spec(tmp_path / "runb" / "outs" / "multi" / "count" / "raw_feature_bc_matrix.h5").uid
        == "runb"
    )
    sample_folder = run("ingest", cite_db, str(tmp_path / "a"), check=False)
    shown = f"give its matrices, e.g. {tmp_path / 'a' / 'outs' / 'filtered_feature_bc_matrix'}\n"
    assert "it is a Cell Ranger output folder: " + shown in sample_folder.stderr
    outs, v3 = str(tmp_path / "a" / "outs"), str(V3_H5)
    thrice = run("ingest", cite_db, outs, v3, str(tmp_path / "a" / "outs" / "."), outs)
    assert thrice.stderr.count("outs is given more than once: ingested once") == 1
    assert [line.split(":")[0] for line in thrice.stdout.splitlines()] == [
        "a",
        "10x_v3",
    ]  # in the order given
    v2 = tmp_path / "v2" / "outs" / "filtered_gene_bc_matrices" / "hg19_chr21"
    shutil.copytree(V2_DIR, v2)
    assert run("ingest", cite_db, str(v2), "--genome", "hg19_chr21").stdout.startswith(
        "v2: ingested (12 cells"
    )
    wrong = run("ingest", cite_db, str(V2_DIR), "--genome", "mm10", check=False)
    assert "genome 'mm10' given, but the folder holds one matrix, of genome 'hg19_chr21'" in wrong.stderr


def test_a_10x_output_with_repeated_symbols_or_a_bad_layer_is_refused_before_registering(
    tmp_path: Path, cite_db: str
) -> None:
    """Matching by gene_symbol (Cell Ranger references repeat symbols) registered every feature under its
    symbol before refusing: those features then read as unmeasured; a bad layer in a 10x sidecar was found
    only after the files before it were committed."""
    cite = _cite_h5(tmp_path / "cite.h5")
    refused = run("ingest", cite_db, str(cite), "--var-uid-column", "gene_symbol", check=False)
    assert refused.returncode == 1 and "duplicate feature ids in var ['CH507-9B2.2']" in refused.stderr
    assert "gene_symbol must name each feature once (gene_ids does)" in refused.stderr
    odd = run("ingest", cite_db, str(cite), "--var-uid-column", "feature_type", check=False)
    assert "a 10x output's features are matched by gene_ids (the default) or gene_symbol" in odd.stderr
    atlas = RaggedAtlas.open(cite_db)
    assert atlas.feature_registry("gene_expression").empty and atlas.feature_registry("protein").empty
    shutil.copytree(V3_DIR, tmp_path / "first")
    (tmp_path / "cite.json").write_text(json.dumps({"zarr_layer": "nope"}))
    layer = run("ingest", cite_db, str(tmp_path / "first"), str(cite), check=False)
    assert layer.returncode == 1 and "layer 'nope' is not allowed in feature space" in layer.stderr
    assert RaggedAtlas.open(cite_db).list_datasets().empty
    # UMI counts as log_normalized: refused with every file before any is read (the files before were stored)
    normalized = run("ingest", cite_db, str(tmp_path / "first"), "--layer", "log_normalized", check=False)
    assert normalized.returncode == 1 and "holds integer UMI counts, not log_normalized" in normalized.stderr
    atlas = RaggedAtlas.open(cite_db)
    assert atlas.list_datasets().empty and atlas.feature_registry("gene_expression").empty


def test_a_genome_keeps_the_features_of_no_genome_and_is_refused_where_there_is_none(tmp_path: Path) -> None:
    """``genome=`` on a v3 file dropped its antibodies (genome "") without a word; on a v3 folder it was
    ignored."""
    cite = _cite_h5(tmp_path / "cite.h5")
    kept = read_10x(cite, genome="GRCh38_chr21")
    assert kept.n_vars == 507 and (kept.var["feature_type"] == "Antibody Capture").sum() == 7
    mouse = _cite_h5(tmp_path / "mixed.h5", genome_of_antibodies=b"mm10")
    assert read_10x(mouse, genome="GRCh38_chr21").n_vars == 500
    with pytest.raises(TenxFormatError, match="genome 'mm10' given, but the folder holds one matrix, of no"):
        read_10x(V3_DIR, genome="mm10")
    named = shutil.copytree(V3_DIR, tmp_path / "mm10")  # a v3 folder named like a genome is still of none
    with pytest.raises(TenxFormatError, match="of no genome: a v3 folder"):
        read_10x(named, genome="mm10")


def test_the_two_forms_of_a_cell_ranger_matrix_are_told_by_their_names(tmp_path: Path) -> None:
    """Any ``<name>.h5`` beside a ``<name>`` folder passed for one matrix, whatever the two held; a v2
    barnyard output's genome folder passed for the ``.h5`` of both genomes."""
    import h5py

    from lancell.ingest.landing_spec import cell_ranger_forms

    v2_h5 = DATA / "10x_v2" / "filtered_gene_bc_matrices_h5.h5"  # genome hg19_chr21
    for h5, folder, same in [
        ("filtered_feature_bc_matrix.h5", "filtered_feature_bc_matrix", True),  # v3
        ("filtered_gene_bc_matrices_h5.h5", "filtered_gene_bc_matrices/hg19_chr21", True),  # v2, its genome
        ("filtered_gene_bc_matrices_h5.h5", "filtered_gene_bc_matrices", True),
        ("filtered_gene_bc_matrices_h5.h5", "filtered_gene_bc_matrices/mm10", False),  # another genome
        ("donor1.h5", "donor1", False),  # not Cell Ranger's names
        ("raw_feature_bc_matrix.h5", "filtered_feature_bc_matrix", False),  # two matrices
    ]:
        outs = tmp_path / f"{len(list(tmp_path.iterdir()))}" / "outs"
        genome = "hg19_chr21" if folder == "filtered_gene_bc_matrices" else ""  # (v2: genome folders in it)
        shutil.copytree(V2_DIR, outs / folder / genome)
        shutil.copyfile(v2_h5 if "gene_bc" in h5 else V3_H5, outs / h5)
        assert cell_ranger_forms(outs / h5, outs / folder) is same, (h5, folder)
        assert cell_ranger_forms(outs / folder, outs / h5) is same, (h5, folder)
    v2 = tmp_path / "v2folders" / "filtered_gene_bc_matrices"  # a v2 folder and its only genome's
    shutil.copytree(V2_DIR, v2 / "hg19_chr21")
    assert cell_ranger_forms(v2, v2 / "hg19_chr21") and cell_ranger_forms(v2 / "hg19_chr21", v2)
    linked = tmp_path / "linked" / "filtered_gene_bc_matrices"  # the genome folder a link to another place
    linked.mkdir(parents=True)
    (linked / "hg19_chr21").symlink_to(v2 / "hg19_chr21", target_is_directory=True)
    assert cell_ranger_forms(linked, linked / "hg19_chr21") and cell_ranger_forms(
        linked / "hg19_chr21", linked
    )
    shutil.copytree(V2_DIR, v2 / "mm10")  # two genomes: two matrices
    assert not cell_ranger_forms(v2, v2 / "hg19_chr21")
    barnyard = tmp_path / "barnyard" / "outs"
    shutil.copytree(V2_DIR, barnyard / "filtered_gene_bc_matrices" / "hg19_chr21")
    shutil.copyfile(v2_h5, barnyard / "filtered_gene_bc_matrices_h5.h5")
    with h5py.File(barnyard / "filtered_gene_bc_matrices_h5.h5", "a") as file:
        file.copy("hg19_chr21", "mm10")  # two genomes in the file: its hg19 folder is not the same matrix
    assert not cell_ranger_forms(
        barnyard / "filtered_gene_bc_matrices_h5.h5", barnyard / "filtered_gene_bc_matrices" / "hg19_chr21"
    )
    # `outs/` itself, whose one matrix folder is the .h5's (it was "ingested from another file", exit 1)
    v3 = tmp_path / "v3" / "outs"
    shutil.copytree(V3_DIR, v3 / "filtered_feature_bc_matrix")
    shutil.copyfile(V3_H5, v3 / "filtered_feature_bc_matrix.h5")
    assert cell_ranger_forms(v3 / "filtered_feature_bc_matrix.h5", v3)
    assert cell_ranger_forms(v3, v3 / "filtered_feature_bc_matrix.h5")
    shutil.copytree(V3_DIR, v3 / "raw_feature_bc_matrix")  # two matrices in it: reading it is refused
    assert not cell_ranger_forms(v3 / "filtered_feature_bc_matrix.h5", v3)
