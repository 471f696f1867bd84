"""Registers the lm-eval model ``tsprompt`` in every Python process, at no start-up cost.

lm-eval 0.4.13 discovers no plugins: a model is known only once ``lm_eval.api.registry`` holds it.
The wheel therefore installs ``tsloss_harness_lm_eval.pth`` into site-packages (see
``buildtools/tsloss_build_backend.py``), whose one line imports this module at interpreter start-up.
This module imports nothing heavy: it puts a finder on ``sys.meta_path`` that waits for
``lm_eval.models`` -- lm-eval's table of built-in models, imported before any model is looked up --
and, right after that module has run, registers ``tsprompt`` as a lazy placeholder
(``"tsloss_harness.evaluation:TSPromptLM"``), so torch and this package's model code load only when
``--model tsprompt`` is actually chosen. The finder removes itself after that one import.

Hooking ``lm_eval.api.registry`` instead would break lm-eval: ``get_model`` imports
``lm_eval.models`` (and so learns ``hf``) only while the registry is still empty.
Later lm-eval versions read the ``lm_eval.models`` entry point declared in pyproject.toml; the
``not in model_registry`` check keeps the two from colliding.
"""

from __future__ import annotations

import sys

MODEL_NAME = "tsprompt"
MODEL_TARGET = "tsloss_harness.evaluation:TSPromptLM"
# Further models, registered the same way: ``hf`` plus ACT (tsloss_harness/act_eval.py).
EXTRA_MODELS = {"hf-act": "tsloss_harness.act_eval:ActHFLM"}
TRIGGER_MODULE = "lm_eval.models"


def register() -> None:
    """Register ``tsprompt`` (and ``EXTRA_MODELS``) in lm-eval's model registry (lazily; idempotent)."""
    from lm_eval.api.registry import model_registry

    for name, target in {MODEL_NAME: MODEL_TARGET, **EXTRA_MODELS}.items():
        if name not in model_registry:
            model_registry.register(name, target=target)


class _RegisterAfterExec:
    """Loader wrapper: runs the real loader, then ``register()``; hands the module back its own loader."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        try:
            register()
        except Exception as err:  # never break lm-eval itself; say why tsprompt is missing
            print(f"tsloss_harness: could not register lm-eval model {MODEL_NAME!r}: {err}", file=sys.stderr)


class _Finder:
    """``sys.meta_path`` entry that only reacts to ``lm_eval.models``."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != TRIGGER_MODULE:
            return None
        uninstall()
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def install() -> None:
    """Arrange for ``register()`` to run when lm-eval's model table is imported (now, if it already is)."""
    if TRIGGER_MODULE in sys.modules:
        register()
    elif _Finder not in sys.meta_path:
        sys.meta_path.insert(0, _Finder)


def uninstall() -> None:
    while _Finder in sys.meta_path:
        sys.meta_path.remove(_Finder)
