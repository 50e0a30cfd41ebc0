"""Outlines of a binary raster along pixel edges: exact polygons of merged patch cells.

A positive region of a patch-grid raster is a union of whole cells, so its outline is a
rectilinear polygon whose vertices lie on cell corners. :func:`raster_polygons` traces
those corners exactly (no marching-squares diagonals), per 4-connected region, with
holes, and drops collinear vertices. Coordinates are in raster pixel-edge units:
pixel ``(r, c)`` spans ``[c, c+1] x [r, r+1]`` in ``(x, y)``.
"""

from __future__ import annotations

import numpy as np

# Directions of boundary edges, (dx, dy), y pointing down.
_EAST, _SOUTH, _WEST, _NORTH = (1, 0), (0, 1), (-1, 0), (0, -1)
#: Turning right (clockwise on screen, y down) from each direction.
_RIGHT = {_EAST: _SOUTH, _SOUTH: _WEST, _WEST: _NORTH, _NORTH: _EAST}


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed or open ring of ``(x, y)``; positive when the ring is
    counter-clockwise in a y-up frame (RFC 7946's exterior orientation)."""
    x, y = np.asarray(ring, np.float64).T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _boundary_edges(inside: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Directed boundary edges with the inside on their right (screen coordinates), as
    ``start vertex -> [directions]``."""
    pad = np.pad(inside, 1)
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(starts_x, starts_y, direction):
        for x, y in zip(starts_x.tolist(), starts_y.tolist(), strict=True):
            out.setdefault((x, y), []).append(direction)

    core = pad[1:-1, 1:-1]
    # raster pixel (r, c) = pad (r+1, c+1); its corners are (c, r) .. (c+1, r+1)
    r, c = np.nonzero(core & ~pad[:-2, 1:-1])  # outside above: top edge, going east
    add(c, r, _EAST)
    r, c = np.nonzero(core & ~pad[2:, 1:-1])  # outside below: bottom edge, going west
    add(c + 1, r + 1, _WEST)
    r, c = np.nonzero(core & ~pad[1:-1, :-2])  # outside left: left edge, going north
    add(c, r + 1, _NORTH)
    r, c = np.nonzero(core & ~pad[1:-1, 2:])  # outside right: right edge, going south
    add(c + 1, r, _SOUTH)
    return out


def _trace_rings(inside: np.ndarray) -> list[np.ndarray]:
    """Every closed boundary ring of ``inside``, vertices at direction changes only.

    At a vertex where two regions touch diagonally the walk turns right, so diagonal
    neighbours stay separate regions (4-connectivity). Each walk starts at a vertex
    with one outgoing edge (every ring has such corners), so it ends where it began.
    """
    edges = _boundary_edges(inside)
    rings = []
    while edges:
        start = next(iter(edges))
        if len(edges[start]) > 1:
            start = next(v for v, options in edges.items() if len(options) == 1)
        vertex, prev, corners = start, None, []
        while True:
            options = edges[vertex]
            if len(options) == 1:
                choice = options[0]
            else:
                right = _RIGHT[prev]
                choice = right if right in options else options[0]
            options.remove(choice)
            if not options:
                del edges[vertex]
            if choice != prev:
                corners.append(vertex)
            prev = choice
            vertex = (vertex[0] + choice[0], vertex[1] + choice[1])
            if vertex == start:
                break
        rings.append(_drop_collinear(np.asarray(corners, np.float64)))
    return rings


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove vertices whose neighbours are collinear with them (closing vertex too)."""
    if len(ring) <= 4:
        return ring
    prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    cross = (ring[:, 0] - prev[:, 0]) * (nxt[:, 1] - ring[:, 1]) - (ring[:, 1] - prev[:, 1]) * (
        nxt[:, 0] - ring[:, 0]
    )
    return ring[cross != 0]


def raster_polygons(inside: np.ndarray) -> list[list[np.ndarray]]:
    """Polygons of the nonzero pixels of a 2-D raster: ``[[exterior, *holes], ...]``.

    One polygon per 4-connected region, in the order of the region ids that
    ``scipy.ndimage.label(inside)`` gives (polygon ``k`` is region ``k + 1``). Each
    ring is an open ``(K, 2)`` float array of ``(x, y)`` pixel-corner coordinates,
    exterior counter-clockwise and holes clockwise by the shoelace sign (RFC 7946's
    right-hand rule, read in the numbers' own frame).
    """
    from scipy import ndimage

    inside = np.asarray(inside) != 0
    if inside.ndim != 2:
        raise ValueError(f"a raster must be 2-D, got shape {inside.shape}")
    if not inside.any():
        return []
    regions, n = ndimage.label(inside)  # 4-connectivity, matching the tracing rule
    exteriors: dict[int, np.ndarray] = {}
    holes: dict[int, list[np.ndarray]] = {}
    for ring in _trace_rings(inside):
        # walking with the inside on the right (clockwise on screen, y down), an
        # exterior has a positive shoelace area in these numbers and a hole a negative one
        owner = _owner(ring, regions)
        if signed_area(ring) > 0:
            exteriors[owner] = ring
        else:
            holes.setdefault(owner, []).append(ring)
    return [[exteriors[k], *holes.get(k, [])] for k in sorted(exteriors)]


def _owner(ring: np.ndarray, regions: np.ndarray) -> int:
    """Region id of the pixel just inside the ring's first edge."""
    (x0, y0), (x1, y1) = ring[0], ring[1]
    dx, dy = int(np.sign(x1 - x0)), int(np.sign(y1 - y0))
    # inside is on the right of the walk (screen): for east it is the pixel below
    if (dx, dy) == _EAST:
        r, c = y0, x0
    elif (dx, dy) == _WEST:
        r, c = y0 - 1, x0 - 1
    elif (dx, dy) == _SOUTH:
        r, c = y0, x0 - 1
    else:
        r, c = y0 - 1, x0
    return int(regions[int(r), int(c)])
