"""Register prunekit's quantizer (hf_quantizer.py) with transformers when transformers' quantizer registry is
imported, not when prunekit is: the registry pulls in most of transformers (≈ 3 s), which `import prunekit`
does not otherwise need. Where the registry is already imported, registration is immediate.

A failed registration (a transformers whose registry API changed) is a warning: it must never break the import
of transformers itself, only the loading of compact directories through `from_pretrained`."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

REGISTRY = "transformers.quantizers.auto"


def register_with_transformers() -> None:
    if REGISTRY in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


def _register() -> None:
    try:
        from .hf_quantizer import register

        register()
    except Exception as err:  # noqa: BLE001 — see the module docstring
        warnings.warn(f"prunekit could not register its quantizer with transformers ({type(err).__name__}: {err}); "
                      "load compact directories with prunekit.export.load_compact", stacklevel=2)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when the registry is being imported it hands back the registry's own spec with a
    loader that registers prunekit once the module has run, and leaves sys.meta_path."""

    def find_spec(self, name, path, target=None):
        if name != REGISTRY:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _register()

    def __getattr__(self, name):  # get_source, get_filename, ...: the registry's own loader answers
        return getattr(self.loader, name)
