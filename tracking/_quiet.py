"""Silence trackpy's per-frame progress messages inside the pipeline."""
from __future__ import annotations

import logging
from contextlib import contextmanager


@contextmanager
def quiet_trackpy(level: int = logging.WARNING):
    """Raise the 'trackpy' logger's level for the duration (restored after).

    trackpy logs one INFO line per frame when located and again when linked;
    in a Snakemake log that buries the messages that matter. Worker processes
    forked by trackpy.batch inside the block inherit the level.
    """
    logger = logging.getLogger("trackpy")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
