"""Train a cell-type classifier from a snapshot (marimo notebook).

The training set is a tagged, frozen atlas version: the same snapshot and seed give the same batches (the
report's batch-order hash), whatever is ingested later. Run headless with
``python notebooks/train_classifier_from_snapshot.py`` or open with ``marimo edit``. It writes an atlas to
``atlas/`` under the current folder: remove ``atlas/`` before running it again (creating an atlas where one
already is raises ``AtlasExistsError``), or run it from another folder.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    from pathlib import Path

    from lancell.atlas import RaggedAtlas
    from lancell.bundled import build_bundled_atlas

    build_bundled_atlas(Path("atlas"))
    version = int(RaggedAtlas.list_versions("atlas/db")["version"].max())
    snapshot = RaggedAtlas.checkout("atlas/db", version)
    print("snapshot", version)
    return RaggedAtlas, snapshot, version


@app.cell
def _(snapshot):
    from lancell.training import train_cell_type_classifier

    report = train_cell_type_classifier(snapshot, layer="log_normalized", epochs=4, seed=0)
    print(report.cells_per_dataset, report.unmeasured_per_dataset)
    accuracy, n_classes = report.test_accuracy, len(report.classes)
    print(f"held-out accuracy {accuracy:.3f} on {report.n_test} cells, {n_classes} classes")
    assert report.snapshot_version is not None
    return report, train_cell_type_classifier


@app.cell
def _(RaggedAtlas, report, train_cell_type_classifier, version):
    # the same snapshot and seed: the same batches, in the same order
    again = train_cell_type_classifier(
        RaggedAtlas.checkout("atlas/db", version), layer="log_normalized", epochs=4
    )
    assert again.batches_sha256 == report.batches_sha256
    print("reproducible:", again.batches_sha256[:16])
    return


if __name__ == "__main__":
    app.run()
