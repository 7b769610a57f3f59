"""Installed with slipstream as a top-level module, so every Python process of this environment
runs it at start-up (site.py imports `sitecustomize` after the installed packages' .pth files):
before any user code imports transformers, `import slipstream` hides the vision packages that
cannot load beside the CPU torch (slipstream/__init__.py says which and why). A user's script, a
notebook, Ray's and vLLM's worker processes all start with a sound environment."""

try:
    import slipstream  # noqa: F401  (hides them on import)
except Exception:  # noqa: BLE001 - a start-up hook must never stop Python from starting
    pass
