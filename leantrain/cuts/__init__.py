"""Cost cuts. Every module in this package registers its cut on import.

Discovery is automatic so that adding a cut is one new file and nothing else.
"""
import importlib
import pkgutil

from leantrain.cuts.base import REGISTRY, Cut, CutConfig, CutStack, check_combination, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Cut", "CutConfig", "CutStack", "check_combination", "register", "build_cuts"]


def build_cuts(recipe, instruments: tuple[Cut, ...] = ()) -> CutStack:
    """The recipe's enabled cuts plus run instruments, ordered by each one's ``order``."""
    enabled = recipe.enabled_cuts()
    check_combination(list(enabled))
    return CutStack([REGISTRY[name](cfg) for name, cfg in enabled.items()] + list(instruments))
