"""The four rooms import one way: kernels and lancell never need dagster or the asset layer."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'dagster', 'lancell_assets', 'resources'}:
            raise ImportError(f'blocked import of {name}')
        return None
sys.meta_path.insert(0, Blocker())
import kernels, lancell
import lancell.atlas, lancell.ingest.from_anndata, lancell.query.atlas_query, lancell.tables.schema
import lancell.errors, lancell.query.reconstruct
import lancell.bundled, lancell.synthetic
print('ok')
"""


def test_library_imports_without_dagster():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
