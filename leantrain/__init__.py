"""leantrain: fine-tune neural networks at a fraction of the usual cost, and prove it.

    import leantrain
    result = leantrain.train("examples/demo.yaml")
    print(result.summary["eval"], result.summary["cost_usd"])
"""
import logging as _logging

# peft imports torchao when it is installed; torchao's optional CUDA kernels and its
# pytree registrations then print warnings on every start that say nothing about the
# user's run (the CPU paths work without them). Keep stderr for what matters.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

from leantrain.engine.run import RunResult, train
from leantrain.errors import LeantrainError, UserError
from leantrain.recipe import Recipe, load_recipe

__all__ = ["train", "RunResult", "Recipe", "load_recipe", "LeantrainError", "UserError"]
__version__ = "0.1.0"
