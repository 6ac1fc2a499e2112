"""Store settings the environment used to override, drop or end in a Rust panic, and settings obstore used to
ignore: ``AWS_ENDPOINT_URL_S3`` is checked like the other endpoint variables and never silently replaces an
endpoint given; the environment's client options (``AWS_ALLOW_HTTP``) complete ``client_options`` given
instead of being dropped by them; an endpoint given wins over ``AWS_ENDPOINT_URL`` for LanceDB too; unknown
``retry_config`` keys and client options given as configuration are refused.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from s3server import ACCESS_KEY, BUCKET, SECRET_KEY, Seaweed

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.errors import StoreError
from lancell.storage.store_failures import store_error
from lancell.storage.store_settings import check_endpoint, with_recorded_config
from lancell.storage.stores import lancedb_storage_options, open_store, read_json

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
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No AWS_* setting from the calling shell."""
    for name in (*ENDPOINT_VARIABLES, "AWS_ALLOW_HTTP", "AWS_TIMEOUT", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def create(db_uri: str, store: str, **kwargs: object) -> RaggedAtlas:
    return RaggedAtlas.create(
        db_uri, "cells", CellSchema, store=store, registry_schemas={"gene_expression": GeneFeature}, **kwargs
    )


# --- AWS_ENDPOINT_URL_S3 -----------------------------------------------------------------------------------


def test_a_bare_s3_only_endpoint_variable_is_a_store_error(clean_env):
    """AWS_ENDPOINT_URL_S3='127.0.0.1:port' ended RaggedAtlas.open in pyo3's PanicException (a BaseException),
    even with an endpoint given in store_kwargs (both clients use the variable over it)."""
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "127.0.0.1:9")
    with pytest.raises(StoreError, match=r"environment variable AWS_ENDPOINT_URL_S3='127\.0\.0\.1:9'"):
        RaggedAtlas.open("s3://lancell/somewhere/db", store_kwargs=UNREACHABLE)
    with pytest.raises(StoreError, match="environment variable AWS_ENDPOINT_URL_S3"):
        RaggedAtlas.checkout_latest("s3://lancell/somewhere/db", store_kwargs={})
    with pytest.raises(StoreError, match="environment variable AWS_ENDPOINT_URL_S3"):
        lancedb_storage_options("s3://lancell/somewhere/db", UNREACHABLE)


def test_an_endpoint_the_s3_only_variable_would_replace_is_refused(clean_env):
    """obstore and lance both send every request to AWS_ENDPOINT_URL_S3 when it is set, whatever endpoint
    store_kwargs give: the given one was dropped without a word."""
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    refused = r"endpoint='http://127\.0\.0\.1:9' .* would not be used: .*AWS_ENDPOINT_URL_S3"
    with pytest.raises(StoreError, match=refused):
        open_store("s3://lancell/x/arrays", UNREACHABLE)
    with pytest.raises(StoreError, match=refused):
        lancedb_storage_options("s3://lancell/x/db", UNREACHABLE)
    with pytest.raises(StoreError, match=refused):
        create("s3://lancell/x/db", "s3://lancell/x/arrays", store_kwargs=UNREACHABLE)
    # the same endpoint (a trailing slash aside) is no conflict; none given is the variable's to give
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9/")
    open_store("s3://lancell/x/arrays", UNREACHABLE)
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    open_store("s3://lancell/x/arrays", {"config": {"region": "us-east-1"}})


def test_the_s3_only_variable_is_the_environments_endpoint_for_the_recorded_settings(clean_env):
    """It gives the endpoint the clients use: the recorded endpoint must not be added beside it (it would
    then be refused as replaced)."""
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://mirror:9000")
    recorded = {"endpoint": "http://s3.lab:8333", "region": "us-east-1"}
    kwargs = with_recorded_config("s3://b/arrays", {"config": {"access_key_id": "k"}}, recorded)
    assert "endpoint" not in kwargs["config"] and kwargs["config"]["region"] == "us-east-1"


# --- an endpoint given wins over AWS_ENDPOINT_URL / AWS_ENDPOINT for LanceDB --------------------------------


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"])
def test_lancedb_gets_the_endpoint_given_under_the_name_that_keeps_the_environments_out(clean_env, variable):
    """lance adds the environment's endpoint as aws_endpoint beside an "endpoint" given and used either one
    (a connection went to the variable's endpoint about every other time)."""
    assert "aws_endpoint" not in lancedb_storage_options("s3://b/db", UNREACHABLE)
    clean_env.setenv(variable, "http://127.0.0.1:1")
    options = lancedb_storage_options("s3://b/db", UNREACHABLE)
    assert options["aws_endpoint"] == options["endpoint"] == "http://127.0.0.1:9"
    # LanceDB-only storage_options naming the endpoint otherwise: a coin toss, refused with the remedy
    given = {"endpoint": "http://127.0.0.1:9", "region": "us-east-1"}
    with pytest.raises(
        StoreError, match=rf"LanceDB may use the environment variable {variable}.*aws_endpoint"
    ):
        check_endpoint("s3://b/db", given, "storage_options")
    check_endpoint("s3://b/db", {**given, "aws_endpoint": "http://127.0.0.1:9"}, "storage_options")
    check_endpoint("s3://b/db", given, "store_kwargs")  # obstore uses the one given: no conflict


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"])
def test_an_endpoint_given_wins_over_the_environments_for_both_clients(
    seaweed: Seaweed, s3_root: str, clean_env, variable
):
    """A stale endpoint variable (a shell, a pod spec) sent LanceDB's requests there: the atlas failed to
    open about every other time."""
    kwargs = {
        **seaweed.store_kwargs(),
        "retry_config": {"max_retries": 0, "retry_timeout": timedelta(seconds=5)},
    }
    create(f"{s3_root}/db", f"{s3_root}/arrays", store_kwargs=kwargs)
    clean_env.setenv(variable, "http://127.0.0.1:9")
    for _ in range(6):  # each connection tossed the coin anew
        atlas = RaggedAtlas.open(f"{s3_root}/db", store_kwargs=kwargs)
        assert atlas.query().count() == 0
        assert atlas.list_datasets() is not None


# --- the environment's client options complete client_options given ----------------------------------------


def test_the_environments_client_options_complete_those_given(clean_env):
    from lancell.storage.store_settings import with_environment_client_options

    clean_env.setenv("AWS_ALLOW_HTTP", "true")
    clean_env.setenv("AWS_TIMEOUT", "7s")
    given = {"config": {"region": "us-east-1"}, "client_options": {"timeout": "20s"}}
    assert with_environment_client_options("s3://b/x", given)["client_options"] == {
        "allow_http": "true",
        "timeout": "20s",  # given wins
    }
    assert with_environment_client_options("s3://b/x", {"config": {}}) == {"config": {}}  # obstore reads them
    assert with_environment_client_options("gs://b/x", given) == given  # GOOGLE_* only
    store = open_store("s3://b/x", {"client_options": {"ALLOW_HTTP": False}})
    assert store.client_options == {"allow_http": "false", "timeout": "7s"}  # given under any case wins


def test_the_allow_http_hint_names_what_is_not_set(clean_env):
    """The refusal told to set AWS_ALLOW_HTTP=true where it was set (and dropped by client_options)."""
    refused = RuntimeError(
        "Generic S3 error: Error performing GET http://h:1/b/x in 1ms - HTTP error: builder error"
    )
    assert "(or AWS_ALLOW_HTTP=true)" in str(store_error(refused, "reading"))
    clean_env.setenv("AWS_ALLOW_HTTP", "true")
    message = str(store_error(refused, "reading"))
    assert "(or AWS_ALLOW_HTTP=true)" not in message
    assert "AWS_ALLOW_HTTP is set, but an allow_http given in store_kwargs' client_options" in message


def test_aws_allow_http_is_kept_when_client_options_are_given(seaweed: Seaweed, s3_root: str, clean_env):
    """docs/kubernetes.md's environment (AWS_ALLOW_HTTP=true) with a timeout given (docs/s3.md) was refused
    with "builder error": obstore replaced the environment's client options by the given ones."""
    clean_env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    clean_env.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    clean_env.setenv("AWS_REGION", "us-east-1")
    clean_env.setenv("AWS_ALLOW_HTTP", "true")
    with_timeout = {"client_options": {"timeout": "20s"}}
    create(f"{s3_root}/db", f"{s3_root}/arrays", store_kwargs=with_timeout)
    assert RaggedAtlas.open(f"{s3_root}/db", store_kwargs=with_timeout).query().count() == 0
    assert RaggedAtlas.open(f"{s3_root}/db", store_kwargs={}).query().count() == 0


def test_the_recorded_allow_http_is_not_lost_to_the_environments(seaweed: Seaweed, tmp_path: Path, clean_env):
    """The recorded allow_http was left out because the environment gave one, and obstore then dropped the
    environment's for the client options given: a reader was refused."""
    db = str(tmp_path / "db")
    create(db, f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/arrays", store_kwargs=seaweed.store_kwargs())
    clean_env.setenv("AWS_ALLOW_HTTP", "true")
    reader = {
        "config": {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
        "client_options": {"timeout": "20s"},
    }
    atlas = RaggedAtlas.open(db, store_kwargs=reader)
    assert read_json(atlas.store, "zarr.json")["attributes"]["lancell_format"]


# --- settings obstore ignores or ends in a panic -----------------------------------------------------------


@pytest.mark.parametrize(
    ("retry", "named"),
    [
        ({"max_retry": 0}, r"\['max_retry'\]"),
        ({"max_retries": 1, "retry_timout": timedelta(seconds=5)}, r"\['retry_timout'\]"),
        ({"backoff": {"max_backof": timedelta(seconds=1)}}, r"\['backoff\.max_backof'\]"),
    ],
)
def test_an_unknown_retry_config_key_is_refused(clean_env, retry, named):
    """obstore ignores it without a word (its defaults: 10 retries, 180 s), and the only warning said LanceDB
    could not take it, as if the stores did."""
    kwargs = {**UNREACHABLE, "retry_config": retry}
    known = r"retry_config takes \['backoff', 'max_retries', 'retry_timeout'\]"
    with pytest.raises(StoreError, match=rf"{named}.*{known}"):
        open_store("s3://b/arrays", kwargs)
    with pytest.raises(StoreError, match=named):
        lancedb_storage_options("s3://b/db", kwargs)
    with pytest.raises(StoreError, match=named):
        create("s3://lancell/x/db", "s3://lancell/x/arrays", store_kwargs=kwargs)


def test_every_known_retry_config_key_is_taken(clean_env):
    retry = {
        "max_retries": 1,
        "retry_timeout": timedelta(seconds=5),
        "backoff": {"init_backoff": timedelta(seconds=0.1), "max_backoff": timedelta(seconds=1), "base": 2},
    }
    store = open_store("s3://b/arrays", {**UNREACHABLE, "retry_config": retry})
    assert store.retry_config["max_retries"] == 1
    open_store("s3://b/arrays", {**UNREACHABLE, "retry_config": store.retry_config})  # as a worker reopens it


@pytest.mark.parametrize("key", ["allow_http", "aws_allow_http", "timeout"])
def test_a_client_option_given_as_configuration_is_a_store_error(clean_env, key):
    """obstore ended it with a Rust panic ("Expected config prefix to start with aws_")."""
    kwargs = {"config": {**UNREACHABLE["config"], key: "true" if "allow" in key else "5s"}}
    with pytest.raises(
        StoreError, match=rf"\['{key}'\] .* are client options: give them in .*client_options"
    ):
        open_store("s3://b/arrays", kwargs)
    if not key.startswith("aws_"):
        with pytest.raises(StoreError, match="are client options"):
            open_store("gs://b/arrays", {"config": {key: "true" if "allow" in key else "5s"}})


def test_an_s3_url_is_one_whatever_the_case_of_its_scheme(clean_env):
    """``S3://`` took another path than ``s3://`` (a case-sensitive test beside the settings' own): with an
    endpoint given and AWS_ENDPOINT_URL set, LanceDB's options lacked aws_endpoint and the aws_ names."""
    clean_env.setenv("AWS_ENDPOINT_URL", "http://other:9000")
    given = {"config": {"endpoint": "http://127.0.0.1:9", "access_key_id": "k", "secret_access_key": "s"}}
    lower = lancedb_storage_options("s3://lancell/x/db", given)
    assert lower["aws_endpoint"] == "http://127.0.0.1:9" and lower["aws_access_key_id"] == "k"
    assert lancedb_storage_options("S3://lancell/x/db", given) == lower
    assert lancedb_storage_options("S3A://lancell/x/db", given) == lower
