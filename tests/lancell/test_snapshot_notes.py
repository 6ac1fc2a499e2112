"""A snapshot's note labels it (``find_snapshot``, Dagster's snapshot partitions): one note, one snapshot."""

from __future__ import annotations

import re

import pytest

from lancell import cli
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, ingest_bundled
from lancell.errors import ArgumentError, ArgumentValueError, DuplicateNoteError


def test_a_note_another_snapshot_has_is_refused_naming_that_snapshot(atlas):
    """A second ``snapshot(note="rel1")`` re-pointed the label rel1 to the later version without a word."""
    ingest_bundled(atlas, BUNDLED[0])
    assert atlas.snapshot(note="rel1") == 0
    ingest_bundled(atlas, BUNDLED[1])
    with pytest.raises(DuplicateNoteError, match=r"snapshot 0 already has the note 'rel1'") as raised:
        atlas.snapshot(note="rel1")
    assert isinstance(raised.value, ValueError)
    assert RaggedAtlas.list_versions(atlas.db_uri)["version"].tolist() == [0]  # nothing recorded
    assert RaggedAtlas.find_snapshot(atlas.db_uri, "rel1") == 0
    assert [atlas.snapshot(), atlas.snapshot(), atlas.snapshot(note="rel2")] == [1, 2, 3]  # no note: no limit
    assert RaggedAtlas.find_snapshot(atlas.db_uri, "rel1") == 0


def test_a_note_in_another_unicode_form_is_the_same_note_and_notes_print_escaped(atlas, capsys):
    """A note "café" typed with its accent composed and not was two notes (two Dagster partitions that look
    alike, one model file on a normalizing file system); a NUL in a note went to the terminal as it was."""
    ingest_bundled(atlas, BUNDLED[0])
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert atlas.snapshot(note=composed) == 0
    with pytest.raises(DuplicateNoteError, match="snapshot 0 already has the note"):
        atlas.snapshot(note=decomposed)
    assert RaggedAtlas.find_snapshot(atlas.db_uri, decomposed) == 0
    assert atlas.snapshot(note="a\x00b") == 1
    assert cli.main(["versions", atlas.db_uri]) == 0
    listed = capsys.readouterr().out
    assert "a\\x00b" in listed and "\x00" not in listed


def test_notes_that_differ_in_form_from_before_each_find_their_own_snapshot():
    """An atlas that took both forms before they were one note: the composed form found the later snapshot
    (its own, snapshot 1, could no longer be found by its note, and Dagster's partition trained on 2)."""
    import pandas as pd

    from lancell.tables.versions import noted_version

    frame = pd.DataFrame({"version": [1, 2, 3], "note": ["caf\u00e9", "cafe\u0301", None]})
    assert noted_version(frame, "caf\u00e9") == 1 and noted_version(frame, "cafe\u0301") == 2
    assert noted_version(frame.iloc[[1, 2]], "caf\u00e9") == 2  # another form, where none is as written


def test_a_note_that_is_not_a_str_is_refused_before_anything_is_tagged(atlas):
    """note=123 tagged every table snapshot-1, then failed in pyarrow; the snapshot was never recorded."""
    ingest_bundled(atlas, BUNDLED[0])
    assert atlas.snapshot() == 0
    for note in (123, ["x"]):
        with pytest.raises(ArgumentError, match=re.escape(f"note must be a str or None, got {note!r}")):
            atlas.snapshot(note=note)
    for note in ("", "  "):  # it read as no note, and a second one was refused as a repeat
        with pytest.raises(ArgumentValueError, match="note must be a label or None"):
            atlas.snapshot(note=note)
    for table in atlas.core.tables.handles.values():
        assert "snapshot-1" not in table.tags.list()
    with pytest.raises(ArgumentError, match="note must be a str, got 5"):  # it returned None: no match
        RaggedAtlas.find_snapshot(atlas.db_uri, 5)
    with pytest.raises(ArgumentError, match="dataset_uid must be a dataset uid"):  # pyarrow's error
        atlas.validate(dataset_uid=5)
    assert RaggedAtlas.list_versions(atlas.db_uri)["version"].tolist() == [0]


def test_the_command_line_refuses_a_note_in_use(atlas, capsys):
    ingest_bundled(atlas, BUNDLED[0])
    assert cli.main(["snapshot", atlas.db_uri, "--note", "first"]) == 0
    assert cli.main(["snapshot", atlas.db_uri, "--note", "first"]) == 1
    assert "lancell snapshot: error: snapshot 0 already has the note 'first'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # refused before the atlas is opened (--optimize compacted it)
        cli.main(["snapshot", atlas.db_uri, "--optimize", "--note", " "])
    assert usage.value.code == 2 and "--note ' ' is blank" in capsys.readouterr().err
    assert RaggedAtlas.list_versions(atlas.db_uri)["note"].tolist() == ["first"]


def test_a_snapshot_of_an_unchanged_atlas_is_recorded_with_a_warning_naming_the_same_release(atlas):
    """A snapshot of an atlas unchanged since the last one recorded a second number for the same release
    without a word (a scheduled job snapshotting nothing new)."""
    import warnings

    from lancell.errors import LancellWarning

    ingest_bundled(atlas, BUNDLED[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)
        assert atlas.snapshot() == 0
    with pytest.warns(LancellWarning, match=r"nothing changed since snapshot 0: snapshot 1 records") as said:
        assert atlas.snapshot(note="nightly") == 1  # recorded all the same: the note names it
    assert said[0].filename == __file__  # the caller's line
    assert RaggedAtlas.find_snapshot(atlas.db_uri, "nightly") == 1
    ingest_bundled(atlas, BUNDLED[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)
        assert atlas.snapshot() == 2
