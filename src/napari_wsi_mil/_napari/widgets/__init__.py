"""Dock widgets. Each drives core jobs in a napari thread worker and only builds layers."""
