"""cellprof: single-cell crops, an adversarial progressive VAE, and MOA profiling.

The command line (``cellprof``) is a thin layer over these modules, so everything it
does can be done from Python with the same functions:

- :mod:`cellprof.prepare.crop` — plate images + CellProfiler tables -> one HDF5 crop store
- :mod:`cellprof.example.synth` — a small synthetic screen in the on-disk shape of a real one
- :mod:`cellprof.formats.store` — the crop store's HDF5 layout (the only module that names datasets)
"""

__version__ = "0.1.0"
