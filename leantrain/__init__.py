"""leantrain: fine-tune neural networks at a fraction of the usual cost, and prove it.

    import leantrain
    result = leantrain.train("examples/demo.yaml")
    print(result.summary["eval"], result.summary["cost_usd"])
"""
import logging as _logging

# With torchao installed (the compress extra), transformers imports it on every model
# load; it logs a warning per CUDA-only extension it cannot load and torch warns about
# its enum registrations. None of it applies to a leantrain run or is actionable.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

from leantrain.engine.run import RunResult, train
from leantrain.errors import LeantrainError, UserError
from leantrain.recipe import Recipe, load_recipe

__all__ = ["train", "RunResult", "Recipe", "load_recipe", "LeantrainError", "UserError"]
__version__ = "0.1.0"
