"""Everything that imports napari or Qt: reader, sample data, layer builders, widgets."""
