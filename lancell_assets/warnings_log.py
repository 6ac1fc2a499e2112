"""The library's warnings during an asset's work, written to the run's event log (not stderr alone)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from lancell.errors import LancellWarning

__all__ = ["logged_warnings"]


@contextmanager
def logged_warnings(
    context: dg.OpExecutionContext | dg.AssetExecutionContext, leave: tuple[type[Warning], ...] = ()
) -> Iterator[list[str]]:
    """Log each :class:`~lancell.errors.LancellWarning` given inside (what was not stored or not used) on
    ``context.log`` as a warning and add its message to the yielded list (for the materialization's
    metadata), but those of the ``leave`` categories (reported otherwise); other warnings are passed on."""
    messages: list[str] = []
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always", LancellWarning)
            caught = recorded
            yield messages
    finally:  # (a failure's warnings too: what it did not store before it failed)
        for warning in caught:
            if issubclass(warning.category, LancellWarning) and not issubclass(warning.category, leave):
                context.log.warning(str(warning.message))
                messages.append(str(warning.message))
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
