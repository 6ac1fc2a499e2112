"""One error hierarchy that also speaks the builtins, and entry points that create nothing on a typo."""

from __future__ import annotations

from pathlib import Path

import pytest

from lancell import errors
from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.ingest.from_anndata import add_from_anndata

BUILTIN_OF = {
    errors.SchemaError: ValueError,
    errors.CodecError: ValueError,
    errors.OutOfBoundsError: IndexError,
    errors.StoreError: OSError,
    errors.LockTimeoutError: TimeoutError,
    errors.GroupNotFoundError: FileNotFoundError,
    errors.AtlasExistsError: FileExistsError,
    errors.AtlasNotFoundError: FileNotFoundError,
    errors.VersionNotFoundError: KeyError,
    errors.FormatVersionError: ValueError,
    errors.DuplicateNoteError: ValueError,
    errors.ArgumentError: TypeError,
    errors.ArgumentValueError: ValueError,
    errors.SnapshotLabelError: ValueError,
    errors.ReadOnlyAtlasError: PermissionError,
    errors.FeatureSpaceError: KeyError,
    errors.FeatureRegistryError: ValueError,
    errors.IngestError: ValueError,
    errors.DuplicateContentError: ValueError,
    errors.QueryError: ValueError,
    errors.UnmeasuredDataError: ValueError,
    errors.StandardizationError: ValueError,
    errors.BatchTransportError: RuntimeError,  # as torch's DataLoader reports a worker's failure
    errors.ForkedProcessError: RuntimeError,
    errors.WorkerStartError: RuntimeError,
}
SPACES = {"gene_expression": GeneFeature}


@pytest.mark.parametrize("error, builtin", BUILTIN_OF.items(), ids=lambda c: c.__name__)
def test_every_error_is_also_the_builtin_users_catch(error: type[Exception], builtin: type) -> None:
    assert issubclass(error, errors.LancellError)
    assert issubclass(error, builtin)


def test_every_public_error_class_has_a_builtin_base() -> None:
    public = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.LancellError) and c is not errors.LancellError
    ]
    assert public
    for cls in public:
        assert any(
            issubclass(cls, b) for b in (ValueError, TypeError, KeyError, IndexError, OSError, RuntimeError)
        ), f"{cls.__name__} derives from no builtin a user would catch"


def test_key_error_subclasses_print_their_message_unquoted() -> None:
    assert str(errors.FeatureSpaceError("no feature space 'x'")) == "no feature space 'x'"


@pytest.mark.parametrize(
    "call",
    [
        lambda uri: RaggedAtlas.checkout_latest(uri),
        lambda uri: RaggedAtlas.list_versions(uri),
        lambda uri: RaggedAtlas.find_snapshot(uri, "nightly"),
        lambda uri: RaggedAtlas.checkout(uri, 0),
        lambda uri: RaggedAtlas.open(uri),
    ],
    ids=["checkout_latest", "list_versions", "find_snapshot", "checkout", "open"],
)
def test_a_missing_atlas_is_an_error_and_nothing_is_created(tmp_path: Path, call) -> None:
    uri = tmp_path / "typo" / "atlas.lancedb"
    with pytest.raises(errors.AtlasNotFoundError, match="typo"):
        call(str(uri))
    with pytest.raises(FileNotFoundError):  # what code written against the builtins catches
        call(str(uri))
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda uri: RaggedAtlas.open(None), r"db_uri must be a folder or URL .*got None"),
        (lambda uri: RaggedAtlas.open(uri.encode()), r"db_uri must be a folder or URL .*\(bytes\)"),
        (lambda uri: RaggedAtlas.list_versions(None), "db_uri must be"),
        (lambda uri: RaggedAtlas.find_snapshot(None, "nightly"), "db_uri must be"),
        (lambda uri: RaggedAtlas.open(uri, store=5), r"store must be None, a folder or URL .* got 5"),
        (
            lambda uri: RaggedAtlas.create(None, "cells", CellSchema, registry_schemas=SPACES),
            "db_uri must be",
        ),
        (
            lambda uri: RaggedAtlas.create(uri, None, CellSchema, registry_schemas=SPACES),
            "cell_table_name must",
        ),
        (
            lambda uri: RaggedAtlas.create(uri, "cells", CellSchema, registry_schemas=None),
            "registry_schemas must",
        ),
        (
            lambda uri: RaggedAtlas.create(
                uri, "cells", CellSchema, registry_schemas=SPACES, store_kwargs=[]
            ),
            "store_kwargs must",
        ),
    ],
)
def test_arguments_of_another_type_are_named_and_create_nothing(tmp_path: Path, call, message) -> None:
    """They raised the builtins' own errors from deep inside (``RaggedAtlas.open(os.environ.get("ATLAS"))``
    with the variable unset: "argument of type 'NoneType' is not iterable")."""
    uri = str(tmp_path / "atlas")
    with pytest.raises(errors.ArgumentError, match=message):
        call(uri)
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_schema_that_is_no_record_class_is_named(tmp_path: Path) -> None:
    """open() and checkout() raised "type object 'int' has no attribute 'to_arrow_schema'"."""
    uri = str(tmp_path / "atlas")
    RaggedAtlas.create(uri, "cells", CellSchema, registry_schemas=SPACES).snapshot()
    for call in (
        lambda: RaggedAtlas.open(uri, dataset_schema=int),
        lambda: RaggedAtlas.open(uri, read_only=True, dataset_schema="Record"),
        lambda: RaggedAtlas.checkout(uri, 0, dataset_schema=int),
    ):
        with pytest.raises(errors.SchemaError, match="dataset_schema must subclass DatasetRecord, got"):
            call()


def test_features_or_adata_of_another_type_are_named(tmp_path: Path) -> None:
    atlas = RaggedAtlas.create(str(tmp_path / "atlas"), "cells", CellSchema, registry_schemas=SPACES)
    before = atlas.core.tables.versions()
    with pytest.raises(errors.ArgumentError, match="gene_expression: features must be a DataFrame"):
        atlas.register_features("gene_expression", None)
    with pytest.raises(errors.ArgumentError, match="adata must be an AnnData or the path"):
        add_from_anndata(atlas, None, feature_space="gene_expression", zarr_layer="counts")
    assert atlas.core.tables.versions() == before


def test_fts_columns_take_one_name_or_several(tmp_path: Path) -> None:
    """A bare name was read letter by letter ("fts column 'c' is not a string column")."""
    one = RaggedAtlas.create(
        str(tmp_path / "one"), "cells", CellSchema, registry_schemas=SPACES, fts_columns="cell_type"
    )
    several = RaggedAtlas.create(
        str(tmp_path / "two"), "cells", CellSchema, registry_schemas=SPACES, fts_columns=["cell_type"]
    )
    assert one.core.meta["fts_columns"] == several.core.meta["fts_columns"] == ["cell_type"]


def test_an_empty_directory_is_not_an_atlas_and_stays_empty(tmp_path: Path) -> None:
    with pytest.raises(errors.AtlasNotFoundError, match=r"atlas\.json"):
        RaggedAtlas.checkout_latest(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_store_failure_while_streaming_or_loading_is_a_store_error(bundled_root, monkeypatch) -> None:
    """A failure inside to_batches' iteration, or a loader's batch read (in a worker too), was the store's own
    error: a generator terminal lost its guard when it was wrapped, a dataset's batch read had none."""
    import lancell.dataloader.dataset as dataset_module
    import lancell.query.terminals as terminals

    atlas = RaggedAtlas.checkout_latest(str(bundled_root / "db"))
    query = atlas.query().where(dataset_uid="celltypist_sample").layers("gene_expression", "counts")

    def refused(*args, **kwargs):
        raise OSError("connection refused")
        yield

    monkeypatch.setattr(terminals, "reconstruct_batches", refused)
    with pytest.raises(errors.StoreError, match=r"to_batches on the atlas at .*: connection refused"):
        next(query.to_batches(100))
    dataset = query.to_cell_dataset("gene_expression", "counts")
    monkeypatch.setattr(dataset_module, "read_sparse", refused)
    monkeypatch.setattr(dataset_module.CellDataset, "_mapped_groups", lambda self: None)
    with pytest.raises(errors.StoreError, match=r"__getitems__ on the zarr store .*: connection refused"):
        dataset.__getitems__([0, 1])
