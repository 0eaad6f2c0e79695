"""leantrain: fine-tune neural networks at a fraction of the usual cost, and prove it.

    import leantrain
    result = leantrain.train("examples/demo.yaml")
    print(result.summary["eval"], result.summary["cost_usd"])
"""
from leantrain.engine.run import RunResult, train
from leantrain.errors import LeantrainError, UserError
from leantrain.recipe import Recipe, load_recipe

__all__ = ["train", "RunResult", "Recipe", "load_recipe", "LeantrainError", "UserError"]
__version__ = "0.1.0"
