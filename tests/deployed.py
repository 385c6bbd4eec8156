"""Attack one fold as the runner does: deploy the target through the deployment stage, then
hand it to the attack (for tests that drive an attack without the runner)."""

from __future__ import annotations

from serbench.context import Attack, EvalContext
from serbench.deploy import deploy
from serbench.results import FoldResult


def evaluate_fold(attack: Attack, ctx: EvalContext, fold: int) -> FoldResult:
    deployed = deploy(attack.recipe(ctx), ctx.target, fold, ctx.defense, seed=ctx.seed,
                      engine=ctx.engine, reporter=ctx.reporter)
    return attack.evaluate_fold(ctx, fold, deployed)
