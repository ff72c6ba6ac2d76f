"""icsjax: measure internal covariate shift and batch normalisation in JAX.

A study is a config (``configs/*.py``) that expands into compiled groups of
models; every group trains as one jitted, vmapped loop (``icsjax.train``)
and writes labelled record arrays (``icsjax.store``).
"""

__version__ = "0.1.0"
