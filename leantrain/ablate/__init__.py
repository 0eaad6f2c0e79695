"""``leantrain ablate``: measure what each cut saves, on the user's own model and data."""
from leantrain.ablate.ladder import Rung, describe_ladder, parse_target, plan_ladder
from leantrain.ablate.runner import ABLATION_FILE, AblationSettings, run_ablation

__all__ = ["ABLATION_FILE", "AblationSettings", "Rung", "describe_ladder", "parse_target",
           "plan_ladder", "run_ablation"]
