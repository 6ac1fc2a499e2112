"""What a landing file is, and its spec: the file plus an optional JSON sidecar saying how to ingest it.

A landing file is an ``.h5ad``, or a 10x Genomics Cell Ranger output: its ``.h5`` matrix file (v2 or v3) or
its Matrix Market folder (holding ``matrix.mtx[.gz]``, or genome sub-folders that do; the matrix file given
to ``lancell ingest`` names its folder). ``<stem>.h5ad`` becomes dataset ``<stem>`` unless the sidecar
``<stem>.json`` says otherwise (a folder's sidecar is ``<folder name>.json`` beside it; ``<stem>.h5ad.json``,
or a JSON file inside the folder, is warned about as not read). A 10x output becomes
dataset ``<name>`` (its file stem or folder name); where that is a name Cell Ranger gives every sample's
output (``filtered_feature_bc_matrix``, ``raw_feature_bc_matrix``, ``sample_filtered_feature_bc_matrix``,
...) or a genome folder inside one (``filtered_gene_bc_matrices/hg19``), the sample's own folder names it:
the nearest enclosing folder not called ``outs``, ``count``, ``per_sample_outs`` or one of those names
(``run7/outs/filtered_feature_bc_matrix.h5`` becomes ``run7``; a link is named where it is, not where it
points). Every key is optional; an unknown key is an error naming the sidecar (the file is not
ingested)::

    {"uid": "pbmc68k", "feature_space": "gene_expression", "zarr_layer": "log_normalized",
     "var_uid_column": null, "symbol_column": "gene_symbol", "organism": "Homo sapiens",
     "name": "PBMC 68k", "source": "scanpy 1.11.5", "accession": null,
     "obs_columns": {"celltype_fine": "cell_type"}, "layers": {"counts": "raw_counts"},
     "standardize": false, "csc": false}

``uid``
    The dataset uid (default: as above).
``feature_space``, ``zarr_layer``
    The feature space and the name the matrix is stored under (``counts`` by default). An ``.h5ad`` goes to
    ``gene_expression`` by default. A 10x output's feature types go to their feature spaces
    (``Gene Expression`` to ``gene_expression``, ``Antibody Capture`` to ``protein``; the first adds the
    cells, the others are attached to them: :func:`lancell.ingest.tenx.add_from_10x`); ``feature_space``
    keeps one of them.
``var_uid_column``, ``symbol_column``
    The ``var`` columns holding the registry uids, each once (default: the var index; a 10x output's
    ``gene_ids``, or ``gene_symbol``) and the gene symbols (default: var's ``gene_symbol`` column if it has
    one, else the var index; not for a 10x output, whose symbols are its feature names). A named column var
    lacks is an error.
``organism``
    Recorded on the new features and, when ``obs`` has no ``organism`` column, on the cells.
``name``, ``source``, ``accession``
    Provenance on the dataset record (``source`` defaults to the file's path).
``obs_columns``
    ``{column in the file: cell schema column}``: obs columns renamed before ingestion, so a file's own
    names (``celltype_fine``, ``donor``) land in the schema's columns. A source column the file lacks or a
    target the cell schema does not declare is an error. Other undeclared columns are not stored and are
    listed as ``dropped_obs_columns`` on the dataset record. Not for a 10x output (no obs columns).
``layers``
    ``{stored name: AnnData source}``, one entry or several: store each ``adata.layers[source]`` (or ``"X"``)
    under its name (``{"counts": "counts", "log_normalized": "X"}``), instead of ``X`` under ``zarr_layer``
    (give one of the two keys, not both; :func:`lancell.ingest.from_anndata.add_from_anndata`'s ``layers``).
    Not for a 10x output (one matrix).
``standardize``
    ``true``: map obs labels to ontology term ids and genes to Ensembl ids first
    (:func:`lancell.standardize.pipeline.standardize_anndata` on the ``var_uid_column`` or var index; loads
    the file into memory). Genes are registered and stored under their Ensembl id (an unresolved gene under
    its name); genes that resolve to one id are summed in X and each layer that hold counts (integers,
    or floats that are all whole numbers), the first is kept in the others (warned). The term id columns
    are stored where the cell schema declares them. Not for a 10x output (its ``gene_ids`` are Ensembl ids
    as a rule: one whose ids are symbols, as old test fixtures have, lands under them).
``csc``
    ``true`` or ``false``: write the feature-major (CSC) copy or not; by default lancell's rule
    (:func:`lancell.ingest.from_anndata.add_from_anndata`'s ``csc``: sparse datasets of at least
    ``lancell.storage.csc.CSC_MIN_VALUES`` values). ``lancell.ingest.add_csc.add_csc`` adds it later.
``genome``
    A 10x output only: the genome to read where it holds several (:func:`lancell.ingest.tenx.open_10x`).

A key that does not apply to the file's kind is an error naming the file, not ignored.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from lancell.errors import IngestError, LancellWarning, caller_outside_lancell

__all__ = [
    "MATRIX_FILES",
    "LandingOutcome",
    "LandingSpec",
    "cell_ranger_forms",
    "check_applies",
    "default_uid",
    "is_tenx_output",
    "landing_contents",
    "landing_path",
    "landing_paths",
    "read_landing_spec",
    "sidecar_path",
]

LandingOutcome = Literal["ingested", "present", "duplicate"]

# the names Cell Ranger (count, multi; v2, v3) gives every sample's matrix, and the folders it nests them in
_CELL_RANGER_NAMES = frozenset(
    f"{prefix}{kind}"
    for prefix in ("", "sample_")
    for kind in (
        "filtered_feature_bc_matrix",
        "raw_feature_bc_matrix",
        "filtered_gene_bc_matrices",
        "raw_gene_bc_matrices",
        "filtered_gene_bc_matrices_h5",
        "raw_gene_bc_matrices_h5",
        "filtered_probe_bc_matrix",
        "raw_probe_bc_matrix",
    )
)
_CELL_RANGER_FOLDERS = frozenset({"outs", "count", "multi", "per_sample_outs"})
_TENX_UID_COLUMNS = (None, "gene_ids", "gene_symbol")
MATRIX_FILES = ("matrix.mtx", "matrix.mtx.gz")  # a Matrix Market output's matrix (Cell Ranger's names)
_NOT_FOR_TENX = ("symbol_column", "obs_columns", "layers", "standardize")  # (each refused when given)


@dataclass(frozen=True)
class LandingSpec:
    """How one landing file is ingested (the keys are in the module doc)."""

    path: Path
    uid: str
    feature_space: str | None = "gene_expression"  # None: a 10x output's every routed feature space
    zarr_layer: str = "counts"
    var_uid_column: str | None = None
    symbol_column: str | None = None  # None: var's "gene_symbol" column if it has one, else the var index
    organism: str | None = None
    name: str | None = None
    source: str | None = None
    accession: str | None = None
    obs_columns: Mapping[str, str] = field(default_factory=dict)
    layers: Mapping[str, str] = field(default_factory=dict)  # stored name -> "X" or an adata.layers key
    standardize: bool = False
    csc: bool | None = None  # the CSC copy: None = add_from_anndata's default
    genome: str | None = None  # a 10x output's genome


_SIDECAR_KEYS = frozenset({f.name for f in fields(LandingSpec)} - {"path"})
_TEXT_KEYS = frozenset({f.name for f in fields(LandingSpec) if f.type in ("str", "str | None")})
_REQUIRED_TEXT = frozenset({f.name for f in fields(LandingSpec) if f.type == "str"})


def is_tenx_output(path: Path) -> bool:
    """Whether ``path`` is read as a 10x output: an ``.h5`` file, a ``matrix.mtx[.gz]`` file (its folder is
    the output), or a folder holding one (directly or in a sub-folder: a genome's)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".h5" or path.name in MATRIX_FILES
    if not path.is_dir():
        return False
    folders = [path, *(child for child in path.iterdir() if child.is_dir())]
    return any((folder / name).is_file() for folder in folders for name in MATRIX_FILES)


def cell_ranger_forms(first: Path, second: Path) -> bool:
    """Whether ``first`` and ``second`` are the two forms of one matrix that Cell Ranger writes side by side
    in an output folder, either way round: ``<name>.h5`` and the ``<name>`` folder (v3:
    ``filtered_feature_bc_matrix``), or ``<name>_h5.h5`` and the ``<name>`` folder or its genome sub-folder
    (v2: ``filtered_gene_bc_matrices_h5.h5``, ``filtered_gene_bc_matrices/hg19``) where both hold the one
    same genome (a barnyard output's two genomes are two matrices). Other names are not taken for two forms
    of one matrix, whatever they hold. Two folders are one matrix where one is the other's only genome
    sub-folder (what reading the outer folder reads), and a folder holding no matrix stands for its only
    matrix sub-folder (a Cell Ranger ``outs/``)."""
    if first.is_dir() and second.is_dir():
        return _only_genome(first, second) or _only_genome(second, first)
    h5, folder = (first, second) if first.suffix == ".h5" else (second, first)
    if h5.stem not in _CELL_RANGER_NAMES or not (h5.is_file() and folder.is_dir()):
        return False
    name, where = h5.stem.removesuffix("_h5"), h5.resolve().parent
    folder = _folder_read(folder).resolve()  # (``outs/`` given: the one matrix folder in it)
    if name == h5.stem:  # v3: the folder beside the file
        return folder.name == name and folder.parent == where
    if folder.name == name and folder.parent == where:  # v2: the genome folders inside it
        genomes = sorted(p.name for p in folder.iterdir() if p.is_dir() and is_tenx_output(p))
    elif folder.parent.name == name and folder.parent.parent == where:  # v2: one genome's folder
        genomes = [folder.name]
    else:
        return False
    return len(genomes) == 1 and genomes == _v2_genomes(h5)


def _holds_matrix(folder: Path) -> bool:
    return any((folder / name).is_file() for name in MATRIX_FILES)


def _matrix_folders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` that hold a matrix."""
    return [p for p in folder.iterdir() if p.is_dir() and _holds_matrix(p)]


def _folder_read(folder: Path) -> Path:
    """The folder reading ``folder`` reads: itself, or the only matrix folder inside it (a Cell Ranger
    ``outs/`` holding ``filtered_feature_bc_matrix`` alone)."""
    inner = [] if _holds_matrix(folder) else _matrix_folders(folder)
    return inner[0] if len(inner) == 1 else folder


def _only_genome(outer: Path, inner: Path) -> bool:
    """Whether folder ``inner`` is the only matrix folder inside folder ``outer``, which holds no matrix
    itself."""
    inner = Path(os.path.abspath(inner))  # (a genome folder may be a link: named where it is placed)
    if inner.parent.resolve() != outer.resolve() or _holds_matrix(outer):
        return False
    return [p.name for p in _matrix_folders(outer)] == [inner.name]


def _v2_genomes(h5: Path) -> list[str]:
    """The genome groups of a Cell Ranger v2 ``.h5`` file ([] when it cannot be read)."""
    import h5py

    try:
        with h5py.File(h5, "r") as file:
            return sorted(key for key, item in file.items() if isinstance(item, h5py.Group))
    except (OSError, ValueError):
        return []


def landing_path(path: Path) -> Path:
    """What ``path`` lands: the folder of a ``matrix.mtx[.gz]`` file, else ``path`` (a folder made absolute,
    so that ``.`` has a name; links are not resolved)."""
    path = Path(path)
    if path.name in MATRIX_FILES and path.is_file():
        return Path(os.path.abspath(path)).parent
    return Path(os.path.abspath(path)) if path.is_dir() else path


def sidecar_path(path: Path) -> Path:
    """The sidecar of landing path ``path``: ``<stem>.json`` beside a file, ``<name>.json`` beside a
    folder."""
    return path.with_name(f"{path.name}.json") if path.is_dir() else path.with_suffix(".json")


def default_uid(path: Path) -> str:
    """The dataset uid of landing path ``path`` without a sidecar (the module doc's rule)."""
    if not is_tenx_output(path):
        return path.stem
    name = path.name if path.is_dir() else path.stem
    skipped = _CELL_RANGER_FOLDERS | _CELL_RANGER_NAMES
    genome_of = path.is_dir() and path.parent.name in _CELL_RANGER_NAMES  # a v2 output's genome folder
    if name not in skipped and not genome_of:
        return name
    parents = Path(os.path.abspath(path)).parents  # (a link's own place, not its target's)
    return next((p.name for p in parents if p.name not in skipped), name)


def landing_contents(path: Path) -> list[Path]:
    """The files landing path ``path`` consists of: itself, or a folder's files (recursively, in name order;
    files in progress, named ``.*`` or ``*.part``, left out)."""
    if not path.is_dir():
        return [path]
    inside = (p for p in path.rglob("*") if p.is_file())
    return sorted(p for p in inside if not any(_in_progress(part) for part in p.relative_to(path).parts))


def _in_progress(name: str) -> bool:
    """Whether ``name`` is an upload's temporary file (``.*``) or a landing being written (``*.part``)."""
    return name.startswith(".") or name.endswith(".part")


def landing_paths(folder: Path) -> tuple[list[Path], list[str]]:
    """The landing paths in ``folder`` (sorted by name: ``.h5ad`` and ``.h5`` files, 10x Matrix Market
    folders) and the names of its other entries.

    Names starting with ``.`` (an upload's temporary file) or ending in ``.part`` (a GEO landing being
    written) are files in progress, and ``geo/`` holds GEO series: neither landing paths nor other entries.
    The sidecars of the landing paths are not other entries; a sidecar without its file is.

    Raises
    ------
    IngestError
        ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IngestError(f"landing folder {folder} does not exist or is not a folder")
    names = sorted(p.name for p in folder.iterdir())
    in_progress = {n for n in names if _in_progress(n)} | {"geo"}
    paths = [
        folder / n
        for n in names
        if n not in in_progress
        and (
            ((folder / n).is_file() and Path(n).suffix.lower() in (".h5ad", ".h5"))
            or ((folder / n).is_dir() and is_tenx_output(folder / n))
        )
    ]
    known = {p.name for p in paths} | {sidecar_path(p).name for p in paths} | in_progress  # (once: per name
    # it was quadratic, 2.6 s for 3,000 files)
    return paths, [n for n in names if n not in known]


def _sidecar_options(sidecar: Path) -> dict[str, Any]:
    """The sidecar's keys, type-checked."""
    try:
        options = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IngestError(f"{sidecar}: not valid JSON ({exc})") from exc
    except OSError as exc:  # a folder, unreadable
        raise IngestError(f"{sidecar}: cannot be read ({exc})") from exc
    if not isinstance(options, dict):
        raise IngestError(f"{sidecar}: must hold a JSON object, not {type(options).__name__}")
    unknown = sorted(set(options) - _SIDECAR_KEYS)
    if unknown:
        raise IngestError(f"{sidecar}: unknown keys {unknown} (known: {sorted(_SIDECAR_KEYS)})")
    for key in _TEXT_KEYS & set(options):
        value = options[key]
        if not (isinstance(value, str) and value) and not (value is None and key not in _REQUIRED_TEXT):
            wanted = "a non-empty string" if key in _REQUIRED_TEXT else "a non-empty string or null"
            raise IngestError(f"{sidecar}: {key} must be {wanted}, got {value!r}")
    renames = options.get("obs_columns", {})
    if not isinstance(renames, dict) or not all(isinstance(v, str) for v in renames.values()):
        raise IngestError(f"{sidecar}: obs_columns must map file columns to cell schema columns")
    if not isinstance(options.get("standardize", False), bool):
        raise IngestError(f"{sidecar}: standardize must be true or false")
    if not isinstance(options.get("csc", False), bool):
        raise IngestError(f"{sidecar}: csc must be true or false, got {options['csc']!r}")
    if "layers" in options:
        layers = options["layers"]
        valid = isinstance(layers, dict) and all(isinstance(v, str) and v for v in layers.values())
        if not valid or not layers:
            raise IngestError(
                f"{sidecar}: layers must map stored layer names to their AnnData sources, got {layers!r}"
            )
        if "zarr_layer" in options:
            raise IngestError(f"{sidecar}: give layers or zarr_layer, not both")
    return options


def read_landing_spec(path: Path) -> LandingSpec:
    """The spec of ``path`` (defaults overridden by its ``.json`` sidecar, if any; keys in the module doc).

    Raises
    ------
    IngestError
        The sidecar is not a JSON object, has an unknown key, a malformed value or a key that does not
        apply to the file's kind; the message names it.
    """
    path = landing_path(path)
    sidecar = sidecar_path(path)
    _warn_misplaced_sidecars(path, sidecar)
    # (a link whose target is gone is a sidecar that cannot be read, not none: its options would be lost)
    options = _sidecar_options(sidecar) if sidecar.exists() or sidecar.is_symlink() else {}
    options.setdefault("uid", default_uid(path))
    if is_tenx_output(path):
        options.setdefault("feature_space", None)
    spec = LandingSpec(path=path, **options)
    check_applies(spec, f"{sidecar}: ")
    return spec


def _warn_misplaced_sidecars(path: Path, sidecar: Path) -> None:
    """Warn about JSON files placed or named as ``path``'s sidecar might be but not read as one:
    ``<file name>.json`` beside a file (``p.h5ad.json``), and JSON files inside a folder."""
    near = [path.with_name(f"{path.name}.json")] if path.is_file() else []
    near += sorted(path.glob("*.json")) if path.is_dir() else []
    near = [candidate for candidate in near if candidate.is_file() and candidate != sidecar]
    if near:
        warnings.warn(
            f"{path}: {', '.join(map(str, near))} not read: its sidecar is {sidecar}"
            + ("" if sidecar.exists() else " (there is none)"),
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


_FLAGGED = frozenset({"layers", "obs_columns", "standardize", "var_uid_column", "genome", "feature_space"})


def _named(key: str) -> str:
    """A sidecar key, with the ``lancell ingest`` flag that sets it where one does (a refusal names what
    either wrote)."""
    return f"{key} (--{key.replace('_', '-')})" if key in _FLAGGED else key


def check_applies(spec: LandingSpec, where: str = "") -> None:
    """Refuse keys of ``spec`` that its file's kind does not use (``where`` starts the message).

    Raises
    ------
    IngestError
        Naming the keys and the file.
    """
    if is_tenx_output(spec.path):
        defaults = LandingSpec(path=spec.path, uid=spec.uid)
        given = [_named(key) for key in _NOT_FOR_TENX if getattr(spec, key) != getattr(defaults, key)]
        if given:
            verb = "does" if len(given) == 1 else "do"
            raise IngestError(
                f"{where}{', '.join(given)} {verb} not apply to {spec.path}, a 10x output (not an .h5ad)"
            )
        if spec.var_uid_column not in _TENX_UID_COLUMNS:
            raise IngestError(
                f"{where}{_named('var_uid_column')} {spec.var_uid_column!r}: a 10x output's features are "
                "matched by gene_ids (the default) or gene_symbol"
            )
        return
    if spec.genome is not None:
        raise IngestError(f"{where}{_named('genome')} applies to a 10x output, not to {spec.path}")
    if spec.feature_space is None:
        raise IngestError(f"{where}feature_space null is for a 10x output; {spec.path} needs one")
