"""Patch features: the extraction job (encoders over tile grids), interop, embeddings.

Import submodules directly; importing this package loads nothing heavy.
"""
