"""bionty as an ontology backend, run as bionty runs offline: its CL table built from the cellxgene ontology
that lancell ships, placed in ``$BIONTY_ROOT_DIR/_dynamic``, and read by bionty's own code in a fresh process.

bionty 2.5.2 asks ``s3://bionty-assets`` for the table before reading the local file; the session's SeaweedFS
server stands in for that bucket (``AWS_ENDPOINT_URL_S3``) and, not holding the table, sends bionty to the
local one, as the real bucket does for a version it lacks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
from cellxgene_ontology_guide.ontology_parser import OntologyParser
from s3server import Seaweed

from lancell.standardize.ontology import CellxgeneOntologyBackend, resolve_terms

LABELS = [
    "CD14+ Monocyte",
    "CD4+/CD25 T Reg",
    "CD56+ NK",
    "Dendritic",
    "monocytes",
    "Tregs",
    "DCs",
    "pDCs",
    "HSCs",
    "MAIT cells",
    "B cell",
    "nerve cell",
    "CL:0000236",
    "not a cell type",
]

SCRIPT = """
import json, sys
from lancell.standardize.ontology import resolve_terms
from lancell.standardize.ontology_bionty import BiontyBackend

backend = BiontyBackend(versions={"CL": sys.argv[1]})
index = backend.index("CL")
matches = resolve_terms(json.loads(sys.argv[2]), "cell_type", backend=backend)
print(json.dumps({
    "names": index.names,
    "labels": {k: sorted(v) for k, v in index.labels.items()},
    "synonyms": {k: sorted(v) for k, v in index.synonyms.items()},
    "matches": [[m.value, m.term_id, m.name, m.match, list(m.candidates)] for m in matches],
}))
"""


def _cl_version() -> str:
    """The CL release the bundled cellxgene ontologies come from, as bionty names versions."""
    return OntologyParser().cxg_schema.supported_ontologies["CL"]["version"].removeprefix("v")


def _closed_endpoint() -> str:
    """An http endpoint on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _bionty_root(root: Path, version: str) -> Path:
    """``root`` laid out as ``$BIONTY_ROOT_DIR``: bionty's ``sources.yaml`` and the CL table bionty's
    ``CellType`` reads (columns and index as bionty's own OWL conversion writes them; deprecated terms
    included, nameless or not, for the backend to leave out)."""
    package = Path(importlib.util.find_spec("bionty").submodule_search_locations[0])  # type: ignore[union-attr]
    shutil.copyfile(package / "base" / "sources.yaml", root / "sources.yaml")
    terms = OntologyParser().cxg_schema.ontology("CL")
    frame = pd.DataFrame(
        {
            "ontology_id": list(terms),
            "name": [t["label"] for t in terms.values()],
            "definition": [t.get("description") for t in terms.values()],
            "synonyms": ["|".join(t.get("synonyms", ())) or None for t in terms.values()],
            "parents": [sorted(a for a, d in t["ancestors"].items() if d == 1) for t in terms.values()],
        }
    ).set_index("ontology_id")
    (root / "_dynamic").mkdir()
    frame.to_parquet(root / "_dynamic" / f"df_all__cl__{version}__CellType.parquet")
    return root


def _run(root: Path, version: str, endpoint: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BIONTY_ROOT_DIR": str(root),
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, version, json.dumps(LABELS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bionty_and_cellxgene_resolve_the_same_cell_types(seaweed: Seaweed, tmp_path: Path) -> None:
    version = _cl_version()
    root = _bionty_root(tmp_path, version)
    done = _run(root, version, seaweed.endpoint)
    assert done.returncode == 0, done.stderr[-3000:]
    bionty = json.loads(done.stdout.strip().splitlines()[-1])

    cellxgene = CellxgeneOntologyBackend().index("CL")
    assert bionty["names"] == cellxgene.names
    assert bionty["labels"] == {k: sorted(v) for k, v in cellxgene.labels.items()}
    assert bionty["synonyms"] == {k: sorted(v) for k, v in cellxgene.synonyms.items()}
    expected = [
        [m.value, m.term_id, m.name, m.match, list(m.candidates)] for m in resolve_terms(LABELS, "cell_type")
    ]
    assert bionty["matches"] == expected
    kinds = {value: kind for value, _, _, kind, _ in bionty["matches"]}
    assert kinds["CL:0000236"] == "id" and kinds["nerve cell"] == "synonym"
    assert kinds["monocytes"] == "normalized" and kinds["CD56+ NK"] == "broader"
    assert kinds["not a cell type"] == "unresolved"


def test_bionty_unreachable_is_a_backend_error_naming_the_table(tmp_path: Path) -> None:
    version = _cl_version()
    root = _bionty_root(tmp_path, version)
    done = _run(root, version, _closed_endpoint())
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    error = f"OntologyBackendError: bionty cannot give CellType (cl {version}) from {root}/_dynamic: "
    assert last.startswith(f"lancell.errors.{error}EndpointConnectionError")
