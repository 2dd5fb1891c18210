"""Seed policies: which seed each cell (and each sample of a cell) gets.

- "fixed" (A1111's default): every cell uses the study's seed.
- "vary" (A1111's "Vary seeds for X/Y/Z"): ``seed + ix`` along columns, ``+ iy * xdim`` along rows and
  ``+ iz * xdim * ydim`` along pages, where a dimension counts only if seeds vary along it. The offset is
  added on top of a Seed-axis value, exactly as A1111 does (Seed axis 1,2,3 with vary columns → 1,3,5).
- "per-cell": several samples per cell, sample ``i`` at ``seed + i * span`` (``span`` = 1 unless seeds
  also vary, so that samples never reuse a neighbouring cell's seed).

A seed of -1 is drawn once per plan (``random.randrange(4294967294)``, A1111's range) and then used like
a fixed seed, so a study with seed -1 is still one coherent grid.
"""

from __future__ import annotations

import random

MAX_SEED = 4294967294  # A1111 draws random seeds from range(4294967294)


def resolve_base_seed(seed: int, rng: random.Random | None = None) -> int:
    """``seed`` itself, or a fresh random seed for -1 (drawn from ``rng`` so tests can fix it)."""
    if seed is None or seed == -1:
        return (rng or random.SystemRandom()).randrange(MAX_SEED)
    return int(seed)


def vary_offset(ix: int, iy: int, iz: int, dims: tuple[int, int, int], vary: tuple[bool, bool, bool]) -> int:
    """A1111's seed offset for cell (ix, iy, iz) of a grid with ``dims`` = (nx, ny, nz)."""
    vx, vy, vz = vary
    xdim = dims[0] if vx else 1
    ydim = dims[1] if vy else 1
    offset = 0
    if vx:
        offset += ix
    if vy:
        offset += iy * xdim
    if vz:
        offset += iz * xdim * ydim
    return offset


def sample_seeds(cell_seed: int, n: int, dims: tuple[int, int, int], vary: tuple[bool, bool, bool]) -> list[int]:
    """The seeds of a cell's ``n`` samples (``[cell_seed]`` when n == 1)."""
    span = 1
    for dim, varied in zip(dims, vary):
        if varied:
            span *= max(dim, 1)
    return [(cell_seed + i * span) % (2**32) for i in range(n)]
