"""Pseudo-spectral 2D Navier-Stokes (vorticity form) in PyTorch: physics only, no ML imports."""
from .grid import Grid
from .navier_stokes import NavierStokes2D
from .stepping import STEPPERS, make_stepper, stable_time_step

__all__ = ["Grid", "NavierStokes2D", "STEPPERS", "make_stepper", "stable_time_step"]
__version__ = "0.1.0"
