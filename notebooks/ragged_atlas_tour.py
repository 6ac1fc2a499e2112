"""A ragged atlas tour: build the bundled atlas, query it across gene panels and layers (marimo notebook).

Run headless with ``python notebooks/ragged_atlas_tour.py`` or open with ``marimo edit``. It writes an atlas
to ``atlas/`` under the current folder: remove ``atlas/`` before running it again (creating an atlas where one
already is raises ``AtlasExistsError``), or run it from another folder.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    from pathlib import Path

    from lancell.atlas import RaggedAtlas
    from lancell.bundled import BUNDLED, build_bundled_atlas

    build_bundled_atlas(Path("atlas"))  # three real datasets, three gene panels, snapshot 0 (the first)
    atlas = RaggedAtlas.checkout_latest("atlas/db")
    datasets = atlas.list_datasets()[["uid", "n_cells", "n_features", "layer"]]
    print(datasets)
    return BUNDLED, atlas


@app.cell
def _(atlas):
    # every dataset keeps its own panel, and a layer is read where a dataset stored it: the columns are the
    # union of the panels of the datasets holding "counts" (here celltypist_sample's alone); pbmc68k stored
    # log-normalized values only, so on_unmeasured("keep") returns its 700 cells as empty rows, and presence
    # (of the layer read) is False in its column: an unmeasured gene is never taken for a measured zero
    human = (
        atlas.query()
        .where(organism="Homo sapiens")
        .layers("gene_expression", "counts")
        .on_unmeasured("keep")
        .to_anndata()
    )
    presence = human.varm["presence"]
    print(human.shape, presence.sum().to_dict())
    assert presence["pbmc68k"].sum() == 0 and human[human.obs["dataset_uid"] == "pbmc68k"].X.nnz == 0
    return


@app.cell
def _(BUNDLED, atlas):
    import numpy as np

    # the same genes read back from the atlas equal the input file
    pbmc = BUNDLED[0].read()
    genes = ["LYZ", "CD3D", "MS4A1"]
    back = (
        atlas.query()
        .where(dataset_uid="pbmc68k", cell_type=["Dendritic", "CD14+ Monocyte"])
        .features(genes, "gene_expression")
        .to_anndata()
    )
    chosen = pbmc.obs["cell_type"].isin(["Dendritic", "CD14+ Monocyte"]).to_numpy()
    assert np.array_equal(back.X.toarray(), pbmc[chosen, genes].X.toarray())
    print(back.shape, back.obs["cell_type"].value_counts().to_dict())
    return


@app.cell
def _(atlas):
    from lancell.errors import UnmeasuredDataError

    # a cell whose dataset lacks the layer is never read as zeros: choose what to do with it
    try:
        atlas.query().layers("gene_expression", "counts").to_anndata()
    except UnmeasuredDataError as error:
        print("refused:", error)
    dropped = atlas.query().layers("gene_expression", "counts").on_unmeasured("drop").to_anndata()
    print("counts layer, measured cells only:", dropped.shape, dropped.uns["lancell"])
    return


if __name__ == "__main__":
    app.run()
