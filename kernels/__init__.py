"""Numba kernels (CPU ``@njit(nogil=True)`` and CUDA). Pure functions over arrays with
out-parameters; importing this package never touches a GPU and imports nothing from ``server``."""
