"""expressiongrid: A1111-style expression x character comparison grids for SD1.5 models."""

__version__ = "0.1.0"
