"""Child of test_vacuum's race: ingest dataset ``victim`` into the atlas at ``argv[1]``; once its group is
written, touch ``argv[2]/claimed``, wait for ``argv[2]/go``, write its cell rows and SIGKILL itself before
its record (its rows are debris, its group a candidate of the vacuum running meanwhile)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import lancell.ingest.write_transaction as transaction
from lancell.atlas import RaggedAtlas

sys.path.insert(0, str(Path(__file__).parent))
from test_vacuum import counts, ingest

db, flags = sys.argv[1], Path(sys.argv[2])
commit_rows = transaction.WriteTransaction._commit_rows


def paused(self, indptr):
    (flags / "claimed").touch()
    while not (flags / "go").exists():
        time.sleep(0.02)
    commit_rows(self, indptr)
    os.kill(os.getpid(), signal.SIGKILL)


transaction.WriteTransaction._commit_rows = paused
ingest(RaggedAtlas.open(db), "victim", counts(1))
