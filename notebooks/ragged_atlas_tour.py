"""A ragged atlas tour: build the bundled atlas, query it across gene panels and layers (marimo notebook).

Run headless with ``python notebooks/ragged_atlas_tour.py`` or open with ``marimo edit``. It writes an atlas
to ``atlas/`` under the current folder.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    from pathlib import Path

    from lancell.atlas import RaggedAtlas
    from lancell.bundled import BUNDLED, build_bundled_atlas

    build_bundled_atlas(Path("atlas"))  # three real datasets, three gene panels, snapshot 1
    atlas = RaggedAtlas.checkout_latest("atlas/db")
    datasets = atlas.list_datasets()[["uid", "n_cells", "n_features", "layer"]]
    print(datasets)
    return BUNDLED, atlas


@app.cell
def _(atlas):
    # every dataset keeps its own panel: the union has the features of all, presence says who measured what
    human = (
        atlas.query()
        .where(organism="Homo sapiens")
        .layers("gene_expression", "counts")
        .on_unmeasured("keep")
        .to_anndata()
    )
    presence = human.varm["presence"]
    print(human.shape, presence.sum().to_dict())
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
