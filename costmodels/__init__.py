"""Pure cost models: (model, strategy, hardware) -> time, memory, traffic. Imports `hardware` only."""
from costmodels.model import ModelError, ModelSpec, MoESpec
from costmodels.performance import Evaluation, StageCosts, stage_costs
from costmodels.strategy import Strategy, StrategyError

__all__ = ["ModelError", "ModelSpec", "MoESpec", "Evaluation", "StageCosts", "stage_costs",
           "Strategy", "StrategyError"]
