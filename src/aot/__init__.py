"""EDM-AOT: EDM diffusion models trained with Approximated Optimal Transport noise pairing."""

__version__ = "0.1.0"
