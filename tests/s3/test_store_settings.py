"""Store settings that used to be dropped or to end in a Rust panic: retry settings reach LanceDB (or are
warned about), an endpoint is checked wherever it comes from (store_kwargs, storage_options, environment),
LanceDB-only storage_options for an atlas on S3 are refused, and the settings an atlas recorded for its store
are the defaults a reader's credentials complete.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from s3server import ACCESS_KEY, BUCKET, SECRET_KEY, Seaweed

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.errors import LancellWarning, StoreError
from lancell.storage.stores import lancedb_storage_options, read_json

# nothing listens on port 9 (discard): a request there fails at once
UNREACHABLE = {
    "config": {
        "endpoint": "http://127.0.0.1:9",
        "region": "us-east-1",
        "access_key_id": "k",
        "secret_access_key": "s",
    },
    "client_options": {"allow_http": True},
}


def create(db_uri: str, store: str, **kwargs: object) -> RaggedAtlas:
    return RaggedAtlas.create(
        db_uri, "cells", CellSchema, store=store, registry_schemas={"gene_expression": GeneFeature}, **kwargs
    )


def test_retry_settings_reach_lancedb():
    kwargs = {**UNREACHABLE, "retry_config": {"max_retries": 2, "retry_timeout": timedelta(seconds=4.5)}}
    options = lancedb_storage_options("s3://b/db", kwargs)
    assert options["client_max_retries"] == "2"
    assert options["client_retry_timeout"] == "5"  # lance takes whole seconds


def test_storage_options_complete_the_options_derived_from_store_kwargs():
    """LanceDB-only storage_options (as docs/s3.md advises) replaced the derived ones: LanceDB lost the
    endpoint and credentials ("Failed to resolve region")."""
    from lancell.tables.atlas_meta import db_options

    options = db_options("s3://b/db", UNREACHABLE, {"timeout": "20s", "region": "eu-west-1"})
    assert options["endpoint"] == "http://127.0.0.1:9" and options["aws_access_key_id"] == "k"
    assert (options["timeout"], options["region"]) == ("20s", "eu-west-1")  # theirs win, key by key
    # under any spelling; and LanceDB's own identity replaces the derived one whole (no mixed key and token)
    temporary = {"config": {**UNREACHABLE["config"], "session_token": "t"}}
    options = db_options(
        "s3://b/db",
        temporary,
        {"access_key_id": "lance", "secret_access_key": "s2", "aws_endpoint": "http://e:1"},
    )
    assert options == {
        "access_key_id": "lance",
        "secret_access_key": "s2",
        "aws_endpoint": "http://e:1",
        "region": "us-east-1",
    }


def test_configuration_given_as_keyword_arguments_reaches_lancedb():
    """obstore's from_url takes configuration keys as keyword arguments too; LanceDB got none of them."""
    options = lancedb_storage_options("s3://b/db", {"endpoint": "http://h:1", "region": "eu-west-1"})
    assert options == {"endpoint": "http://h:1", "region": "eu-west-1"}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"retry_config": {"max_retries": 1, "backoff": {"max_backoff": timedelta(seconds=1)}}}, "backoff"),
        ({"credential_provider": lambda: {"access_key_id": "k"}}, "credential_provider"),
    ],
)
def test_settings_lancedb_cannot_take_are_warned(extra, named):
    with pytest.warns(LancellWarning, match=f"{named}.*cannot be passed to LanceDB"):
        lancedb_storage_options("s3://b/db", {**UNREACHABLE, **extra})


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"])
def test_a_bare_endpoint_from_the_environment_is_a_store_error(monkeypatch, variable):
    """It ended in a Rust panic (pyo3's PanicException, not even an ``Exception``)."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with pytest.raises(StoreError, match=rf"environment variable {variable}='127\.0\.0\.1:9'"):
        RaggedAtlas.checkout_latest("s3://lancell/somewhere/db")
    with pytest.raises(StoreError, match=f"environment variable {variable}"):
        create("s3://lancell/somewhere/db", "s3://lancell/somewhere/arrays", store_kwargs={})


def test_a_bare_endpoint_in_storage_options_or_keyword_arguments_is_a_store_error():
    """Explicit storage_options were never checked (a RustPanic from the LanceDB connection)."""
    options = {"endpoint": "127.0.0.1:9", "region": "us-east-1", "allow_http": "true"}
    with pytest.raises(StoreError, match=r"storage_options setting endpoint='127\.0\.0\.1:9'"):
        create(
            "s3://lancell/x/db", "s3://lancell/x/arrays", store_kwargs=UNREACHABLE, storage_options=options
        )
    with pytest.raises(StoreError, match=r"store_kwargs setting endpoint='127\.0\.0\.1:9'"):
        create("s3://lancell/x/db", "s3://lancell/x/arrays", store_kwargs={"endpoint": "127.0.0.1:9"})


def test_lancedb_only_storage_options_for_an_atlas_on_s3_are_refused():
    """docs/s3.md created with storage_options alone: the metadata and zarr stores never got the endpoint and
    went to AWS instead (an untyped obstore error after the retries)."""
    options = {"endpoint": "http://127.0.0.1:9", "region": "us-east-1", "allow_http": "true"}
    with pytest.raises(StoreError, match=r"storage_options configure LanceDB only.*store_kwargs"):
        create("s3://lancell/x/db", "s3://lancell/x/arrays", storage_options=options)


def test_the_recorded_store_settings_complete_a_readers_credentials(caplog, monkeypatch):
    from lancell.storage.store_settings import with_recorded_config

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_REGION", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    recorded = {
        "endpoint": "http://s3.lab:8333",
        "region": "us-east-1",
        "client_options": {"allow_http": "true"},
    }
    credentials = {"config": {"access_key_id": "k", "secret_access_key": "s"}}
    assert with_recorded_config("s3://b/arrays", credentials, recorded) == {
        "config": {
            "endpoint": "http://s3.lab:8333",
            "region": "us-east-1",
            "access_key_id": "k",
            "secret_access_key": "s",
        },
        "client_options": {"allow_http": "true"},
    }
    # the caller's settings win, under any spelling; another endpoint is logged
    given = {
        "config": {"aws_endpoint": "http://mirror:9000", "region": "eu-west-1"},
        "client_options": {"allow_http": False},
    }
    with caplog.at_level(logging.WARNING):
        assert with_recorded_config("s3://b/arrays", given, recorded) == given
    assert "http://mirror:9000" in caplog.text and "http://s3.lab:8333" in caplog.text
    # and so do the environment's (obstore reads it for a setting not given)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://mirror:9000")
    assert "endpoint" not in with_recorded_config("s3://b/arrays", credentials, recorded)["config"]
    assert with_recorded_config("/data/arrays", credentials, recorded) == credentials  # local: nothing to add


def test_a_local_atlas_with_its_arrays_on_s3_reads_them_with_credentials_only(
    seaweed: Seaweed, tmp_path: Path
):
    """atlas.json records the store's endpoint, region and allow_http; a reader giving credentials only was
    sent to AWS."""
    from lancell.tables.store_location import recorded_store

    db = str(tmp_path / "db")
    create(db, f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/arrays", store_kwargs=seaweed.store_kwargs())
    meta = json.loads((tmp_path / "db" / "_lancell" / "atlas.json").read_text())
    assert meta["store_config"]["endpoint"] == seaweed.endpoint
    credentials = {"config": {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}}
    store = recorded_store(
        None, meta["store_url"], credentials, recorded_config=meta["store_config"], db_uri=db
    )
    assert read_json(store, "zarr.json")["attributes"]["lancell_format"]


def test_store_options_for_a_local_atlas_and_store_are_refused(tmp_path: Path):
    """They were silently ignored (a local path takes no options)."""
    from lancell.tables.store_location import recorded_store

    options = {"config": {"region": "us-east-1"}}
    with pytest.raises(StoreError, match=r"\['config.region'\] would be ignored"):
        create(str(tmp_path / "db"), str(tmp_path / "arrays"), store_kwargs=options)
    assert not (tmp_path / "db").exists()
    create(str(tmp_path / "db"), str(tmp_path / "arrays"))
    with pytest.raises(StoreError, match="would be ignored"):
        recorded_store(None, (tmp_path / "arrays").as_uri(), options, db_uri=str(tmp_path / "db"))


# RaggedAtlas.open/checkout pass the recorded settings and db_uri to recorded_store


def test_checkout_with_credentials_only_reads_arrays_on_s3(seaweed: Seaweed, tmp_path: Path, monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    db = str(tmp_path / "db")
    atlas = create(db, f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/arrays", store_kwargs=seaweed.store_kwargs())
    atlas.snapshot()
    credentials = {"config": {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}}
    assert RaggedAtlas.checkout_latest(db, store_kwargs=credentials).query().count() == 0
    assert RaggedAtlas.open(db, store_kwargs=credentials).query().count() == 0


def test_loader_workers_keep_the_endpoint_given_credentials_only(
    seaweed: Seaweed, tmp_path: Path, monkeypatch
):
    """A loader given credentials only (``to_cell_dataset(store_kwargs=...)``, as docs/s3.md says) had its
    workers reopen the store with those alone: no endpoint, region or retry settings, requests to AWS."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    db = str(tmp_path / "db")
    create(
        db, f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/arrays", store_kwargs=seaweed.store_kwargs()
    ).snapshot()
    atlas = RaggedAtlas.checkout_latest(db, store_kwargs=seaweed.store_kwargs())
    credentials = {"config": {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the handle's own endpoint overrode it
    with pytest.warns(LancellWarning, match="selects no cell"):
        dataset = atlas.query().to_cell_dataset("gene_expression", "counts", store_kwargs=credentials)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    config = dataset.source.store_kwargs["config"]
    assert config["endpoint"] == seaweed.endpoint and config["access_key_id"] == ACCESS_KEY
    assert read_json(dataset.source.open_store(), "zarr.json")["attributes"]["lancell_format"]


def test_store_options_for_a_local_atlas_are_refused_when_it_is_opened(tmp_path: Path):
    db = str(tmp_path / "db")
    create(db, str(tmp_path / "arrays")).snapshot()
    options = {"config": {"region": "us-east-1"}}
    with pytest.raises(StoreError, match="would be ignored"):
        RaggedAtlas.open(db, store_kwargs=options)
    with pytest.raises(StoreError, match="would be ignored"):
        RaggedAtlas.checkout_latest(db, store_kwargs=options)


def test_lancedb_only_storage_options_are_refused_before_any_request_when_opening():
    options = {"endpoint": "http://127.0.0.1:9", "region": "us-east-1", "allow_http": "true"}
    for open_atlas in (RaggedAtlas.open, RaggedAtlas.checkout_latest):
        with pytest.raises(StoreError, match="storage_options configure LanceDB only"):
            open_atlas("s3://lancell/x/db", storage_options=options)


def test_a_lance_io_error_while_connecting_is_a_one_line_store_error(monkeypatch):
    """LanceDB raises a bare RuntimeError when it cannot resolve a bucket's region (no AWS settings): the
    CLI printed its traceback. Other RuntimeErrors are not store failures and pass unchanged."""
    import lancedb

    from lancell.tables.atlas_tables import connect

    def unresolved(*args, **kwargs):
        raise RuntimeError(
            "lance error: LanceError(IO): Generic S3 error: Failed to resolve region for bucket 'b', "
            "aws.rs:319:13\nDebug source: ..."
        )

    monkeypatch.setattr(lancedb, "connect", unresolved)
    with pytest.raises(StoreError) as caught:
        connect("s3://b/atlas/db")
    assert str(caught.value).startswith("cannot connect to the LanceDB database at 's3://b/atlas/db': lance")
    assert "\n" not in str(caught.value)
    monkeypatch.setattr(lancedb, "connect", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        connect("s3://b/atlas/db")


def test_a_store_error_keeps_the_s3_error_code_and_the_refused_connection_on_one_line():
    """Cut at the first line, a 403 lost its S3 code (a wrong secret and an unknown key read alike) and a
    stopped server its "Connection refused"."""
    from lancell.storage.store_failures import store_error

    forbidden = RuntimeError(
        'The operation lacked the necessary privileges: 403 Forbidden: <?xml version="1.0"?>\n'
        "<Error><Code>SignatureDoesNotMatch</Code><Message>The signature does not match</Message></Error>"
        '\n\nDebug source:\nGeneric {\n    store: "S3",\n}'
    )
    message = str(store_error(forbidden, "cannot read the atlas"))
    assert "\n" not in message and "Debug source" not in message
    # the document said as its code and message (obstore quotes it whole: request id, bucket, key)
    assert message.endswith("403 Forbidden: SignatureDoesNotMatch (The signature does not match)")
    refused = RuntimeError(
        "Generic S3 error: Error performing GET http://127.0.0.1:9/b/k - HTTP error: error sending request"
        '\n\nDebug source:\nGeneric {\n  Os {\n    code: 111,\n    message: "Connection refused",\n  },\n}'
    )
    assert str(store_error(refused, "reading")).endswith("error sending request (Connection refused)")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            '<?xml version="1.0"?>\n<Error>\n  <Code>AccessDenied</Code>\n'
            "  <Message>Access Denied</Message>\n  <RequestId>R</RequestId>\n</Error>",
            "AccessDenied (Access Denied)",
        ),
        (
            "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region &apos;us-east-1&apos; is "
            "wrong</Message><Region>eu-west-1</Region></Error>",
            "AuthorizationHeaderMalformed (the region 'us-east-1' is wrong)",
        ),
        (
            "<Error><Code>AccessDenied</Code><Message>Access denied.</Message><Details>sa@p does not have "
            "storage.objects.get access</Details></Error>",
            "AccessDenied (Access denied.: sa@p does not have storage.objects.get access)",
        ),
        ("<Error><Message>Slow down</Message><Code>SlowDown</Code></Error>", "SlowDown (Slow down)"),
    ],
)
def test_an_s3_error_document_is_said_as_its_code_and_message(body: str, said: str):
    """The whole document was quoted (request id, bucket, key); then a pretty-printed one, a message before
    its code, entities and Google's details were lost or left escaped."""
    from lancell.storage.store_failures import one_line

    refused = "Error performing GET http://h/b/k - Server returned non-2xx status code: 403 Forbidden: "
    assert one_line(RuntimeError(refused + body)) == refused + said


def test_lances_rust_debug_rendering_is_cut_to_the_s3_error_it_holds():
    """A missing bucket at create printed Lance's Rust debug rendering: retry settings, a cargo source path
    and "backtrace: MaybeBacktrace", the S3 error code deep inside."""
    from lancell.storage.store_failures import store_error

    missing = RuntimeError(
        'Invalid input, Failed to connect to namespace: IO { source: Generic { store: "S3", source: '
        "ListRequest { source: RetryError(RetryErrorImpl { method: GET, retries: 0, inner: Status { status: "
        '404, body: Some("<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist'
        '</Message></Error>") } }) } }, location: Location { file: "/root/.cargo/registry/src/lance-io/src/'
        'object_store.rs", line: 1506, column: 92 }, backtrace: MaybeBacktrace }'
    )
    assert str(store_error(missing, "cannot connect")) == (
        "cannot connect: Invalid input, Failed to connect to namespace: NoSuchBucket (The specified bucket "
        "does not exist)"
    )
    bare = RuntimeError("Failed: IO { source: Generic { inner: Status { status: 503, body: None } } }")
    assert str(store_error(bare, "reading")) == "reading: Failed: HTTP status 503"


def test_a_missing_allow_http_credentials_or_bucket_are_named(seaweed: Seaweed, s3_root: str, monkeypatch):
    """An endpoint over plain HTTP without allow_http failed with "builder error", no credentials with a
    403 from 169.254.169.254, and a misspelled bucket as a missing atlas.json only."""
    from lancell.errors import AtlasNotFoundError

    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT",
        "AWS_ALLOW_HTTP",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)  # (no credentials: the metadata service)
    kwargs = seaweed.store_kwargs()
    RaggedAtlas.create(
        f"{s3_root}/db", "cells", CellSchema, store=f"{s3_root}/arrays",
        registry_schemas={"gene_expression": GeneFeature}, store_kwargs=kwargs,
    )  # fmt: skip
    without_http = {"config": kwargs["config"]}
    with pytest.raises(StoreError, match=r"needs client_options=\{'allow_http': True\}"):
        RaggedAtlas.open(f"{s3_root}/db", store_kwargs=without_http)
    anonymous = {**kwargs, "config": {"endpoint": seaweed.endpoint, "region": "us-east-1"}}
    with pytest.raises(StoreError, match="no credentials were found"):
        RaggedAtlas.open(f"{s3_root}/db", store_kwargs=anonymous)
    with pytest.raises(AtlasNotFoundError, match="check the bucket and the path"):
        RaggedAtlas.open(f"s3://no-such-bucket/{s3_root.rsplit('/', 1)[-1]}/db", store_kwargs=kwargs)
