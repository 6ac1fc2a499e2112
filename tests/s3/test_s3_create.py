"""A creation on S3 whose zarr store refuses the write: a typed error, nothing left in the way."""

from __future__ import annotations

import obstore
import obstore.store
import pytest
from s3server import BUCKET, Seaweed
from test_s3_vacuum import Cell, Gene

from lancell.atlas import RaggedAtlas
from lancell.errors import StoreError


def test_a_creation_refused_by_its_store_leaves_nothing_in_the_way(seaweed: Seaweed, s3_root: str) -> None:
    kwargs = seaweed.store_kwargs()
    refusing = {**kwargs, "config": {**kwargs["config"], "secret_access_key": "wrong"}}
    prefix = s3_root.removeprefix(f"s3://{BUCKET}/")

    def create(store: object) -> RaggedAtlas:
        return RaggedAtlas.create(
            f"{s3_root}/db",
            "cells",
            Cell,
            store=store,
            registry_schemas={"gene_expression": Gene},
            store_kwargs=kwargs,
        )

    with pytest.raises(StoreError, match="cannot create the atlas"):
        create(obstore.store.from_url(f"{s3_root}/arrays", **refusing))
    left = [m["path"] for batch in obstore.list(seaweed.store(), prefix=f"{prefix}/db/") for m in batch]
    assert all(path.startswith(f"{prefix}/db/_lancell/locks/") for path in left), left
    assert create(f"{s3_root}/arrays").list_datasets().empty
