"""The one home of the project store's result kinds: the first folder of every result
(``<kind>/<slide_id>`` or ``<kind>/<name>/<slide_id>``; see ``docs/store-format.md``).

Every reader and writer names a kind through these constants, never as a literal.
"""

#: ``slides/<slide_id>``: the tiling of one slide (coords, tissue mask, geometry).
SLIDES = "slides"
#: ``features/<name>/<slide_id>``: one feature set (array ``features``, one row per patch).
FEATURES = "features"
#: ``tile_labels/<slide_id>``: tile labels painted in napari (array ``labels``).
TILE_LABELS = "tile_labels"
#: ``predictions/<name>/<slide_id>``: one model's predictions (``attention``,
#: ``instance_probability``; probability and thresholds in the attrs).
PREDICTIONS = "predictions"

#: Result kinds with one row per patch in the order of a slide's ``coords``, and whether
#: they are stored per name (``<kind>/<name>/<slide_id>``) or not (``<kind>/<slide_id>``).
#: They are only valid for the tiling they were made from
#: (:meth:`~napari_wsi_mil.store.project.ProjectStore.write_tiles`).
GRID_RESULTS = {FEATURES: True, PREDICTIONS: True, TILE_LABELS: False}
