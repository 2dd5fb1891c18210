"""Output: labelled grids (`grid`), A1111 "parameters" metadata (`infotext`) and image writers (`images`).

Import the submodules directly; this package imports nothing so that pure-Python commands stay fast.
"""
