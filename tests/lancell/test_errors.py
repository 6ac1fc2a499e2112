"""One error hierarchy that also speaks the builtins, and entry points that create nothing on a typo."""

from __future__ import annotations

from pathlib import Path

import pytest

from lancell import errors
from lancell.atlas import RaggedAtlas

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
