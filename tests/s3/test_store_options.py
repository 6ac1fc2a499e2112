"""Store settings without a server: LanceDB options derived from obstore kwargs, secrets never persisted."""

from types import SimpleNamespace

import obstore.store as obs_store
import pytest

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.errors import StoreError
from lancell.storage.stores import lancedb_storage_options, open_store, public_store_config

KWARGS = {
    "config": {
        "endpoint": "http://127.0.0.1:8333",
        "region": "us-east-1",
        "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": "s3cr3t",
    },
    "client_options": {"allow_http": True},
}


def test_lancedb_options_from_store_kwargs():
    assert lancedb_storage_options("s3://bucket/atlas/db", KWARGS) == {
        "endpoint": "http://127.0.0.1:8333",
        "region": "us-east-1",
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": "s3cr3t",
        "allow_http": "true",
    }


def test_lancedb_options_accept_aws_prefixed_names_and_stringify():
    kwargs = {
        "config": {
            "aws_endpoint": "http://h:1",
            "aws_access_key_id": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "aws_session_token": "t",
            "aws_skip_signature": False,
            "aws_virtual_hosted_style_request": "false",
        },
        "client_options": {"allow_http": False, "timeout": "30s"},
    }
    assert lancedb_storage_options("s3://b/db", kwargs) == {
        "endpoint": "http://h:1",
        "aws_access_key_id": "k",
        "aws_secret_access_key": "s",
        "aws_session_token": "t",
        "skip_signature": "false",
        "virtual_hosted_style_request": "false",
        "allow_http": "false",
        "timeout": "30s",
    }
    assert all(isinstance(v, str) for v in lancedb_storage_options("s3://b/db", kwargs).values())


def test_lancedb_options_none_for_local_or_empty():
    assert lancedb_storage_options("/tmp/atlas/db", KWARGS) is None
    assert lancedb_storage_options("file:///tmp/atlas/db", KWARGS) is None
    assert lancedb_storage_options("s3://b/db", None) is None
    assert lancedb_storage_options("s3://b/db", {}) is None
    # other clouds: names pass through unchanged (lance and obstore share object_store's names)
    gcs = {"config": {"service_account_key": "{...}"}}
    assert lancedb_storage_options("gs://b/db", gcs) == {"service_account_key": "{...}"}


def test_skip_signature_passes_through_to_both_clients():
    public = {
        "config": {"endpoint": "http://h:1", "skip_signature": True},
        "client_options": {"allow_http": True},
    }
    store = open_store("s3://public-bucket/atlas/arrays", public)
    assert store.config["skip_signature"] == "true"
    assert public_store_config(store) == {
        "endpoint": "http://h:1",
        "skip_signature": "true",
        "client_options": {"allow_http": "true"},
    }
    assert lancedb_storage_options("s3://public-bucket/atlas/db", public) == {
        "endpoint": "http://h:1",
        "skip_signature": "true",
        "allow_http": "true",
    }


def test_public_store_config_drops_every_credential():
    s3 = obs_store.from_url(
        "s3://b/p",
        config=KWARGS["config"] | {"session_token": "tok"},
        client_options={"allow_http": True, "default_headers": {"authorization": "Bearer x"}},
    )
    assert public_store_config(s3) == {
        "endpoint": "http://127.0.0.1:8333",
        "region": "us-east-1",
        "client_options": {"allow_http": "true"},
    }
    azure = obs_store.from_url(
        "az://container/p", config={"account_name": "acct", "account_key": "c2VjcmV0", "sas_token": "sig=x"}
    )
    assert public_store_config(azure) == {"account_name": "acct"}
    # obstore validates a GCS key when the store is built: check the filter on the config alone
    gcs = SimpleNamespace(
        config={"bucket": "b", "service_account_key": "{...}", "service_account": "/k.json"}
    )
    assert public_store_config(gcs) == {}


@pytest.mark.parametrize("endpoint", ["127.0.0.1:8333", "localhost", "htp:/bad endpoint", "ftp://host"])
def test_an_endpoint_that_is_not_an_http_url_is_a_store_error(tmp_path, endpoint):
    """obstore and LanceDB ended such an endpoint with a Rust panic (not even an ``Exception``)."""
    kwargs = {"config": {**KWARGS["config"], "endpoint": endpoint}}
    with pytest.raises(StoreError, match="must be an http:// or https:// URL"):
        open_store("s3://bucket/atlas/arrays", kwargs)
    with pytest.raises(StoreError, match="must be an http:// or https:// URL"):
        lancedb_storage_options("s3://bucket/atlas/db", {"config": {"aws_endpoint": endpoint}})
    with pytest.raises(StoreError, match="must be an http:// or https:// URL"):
        RaggedAtlas.create(
            "s3://bucket/atlas/db",
            "cells",
            CellSchema,
            registry_schemas={"gene_expression": GeneFeature},
            store="s3://bucket/atlas/arrays",
            store_kwargs=kwargs,
        )


def test_a_credential_with_a_line_end_is_a_store_error(monkeypatch):
    """A secret read from a file with its line end ended the request signing with a Rust panic (a
    BaseException), straight through RaggedAtlas.open; the message names where it came from, not the value."""
    kwargs = {"config": {**KWARGS["config"], "secret_access_key": "s3cr3t\n"}}
    with pytest.raises(
        StoreError, match=r"store_kwargs setting secret_access_key .* holds a control"
    ) as caught:
        open_store("s3://bucket/atlas/arrays", kwargs)
    assert "s3cr3t" not in str(caught.value)
    with pytest.raises(StoreError, match=r"store_kwargs setting (aws_)?secret_access_key .* holds a control"):
        RaggedAtlas.open("s3://bucket/atlas/db", store_kwargs=kwargs)
    with pytest.raises(StoreError, match="store_kwargs setting aws_secret_access_key"):
        lancedb_storage_options("s3://bucket/atlas/db", {"config": {"aws_secret_access_key": "s3cr3t\r"}})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key\r\n")
    with pytest.raises(StoreError, match="environment variable AWS_ACCESS_KEY_ID"):
        open_store("s3://bucket/atlas/arrays", {"config": {"endpoint": "http://127.0.0.1:1"}})
    open_store("s3://bucket/atlas/arrays", KWARGS)  # given, the setting wins over the environment's
    monkeypatch.setenv("AWS_SESSION_TOKEN", "stale\n")  # token and session_token: one setting
    open_store("s3://bucket/atlas/arrays", {"config": {**KWARGS["config"], "token": "fresh"}})


def test_loader_workers_reopen_the_store_with_its_retry_settings():
    """A worker's copy of a dataset reopened the store without retry_config: on a frozen server it waited out
    obstore's defaults (13.6 s in a trial) where the reader gave up after 1 s as configured."""
    import pickle
    from datetime import timedelta

    from lancell.dataloader.source import DatasetSource, store_kwargs_of

    retry = {"max_retries": 0, "retry_timeout": timedelta(seconds=2)}
    store = obs_store.S3Store(
        "bucket",
        endpoint="http://127.0.0.1:9",
        client_options={"timeout": "1s", "allow_http": True},
        retry_config=retry,
        skip_signature=True,
    )
    kwargs = store_kwargs_of(store)
    source = pickle.loads(pickle.dumps(DatasetSource("db", None, 1, "s3://bucket/arrays", kwargs)))
    reopened = source.open_store()
    assert reopened.retry_config["max_retries"] == 0
    assert reopened.retry_config["retry_timeout"] == timedelta(seconds=2)
    assert reopened.client_options["timeout"] == "1s"
    plain = obs_store.S3Store("bucket", endpoint="http://127.0.0.1:9", skip_signature=True)
    assert "retry_config" not in store_kwargs_of(plain)
