"""Lossy coding in the loop: its typed targets (`options`), the config of a run (`config`), the
per-site budgets they come to (`budgets`), how strongly each channel of a site reaches the output
(`importance`), the agreement expected from logit margins (`agreement`), the lossy settings of
every site (`planner`), and the evaluation itself (`evaluate`)."""

from .options import AgreementTarget, Budget, OutputBudget, SiteBudget, parse_budget

__all__ = ["AgreementTarget", "Budget", "OutputBudget", "SiteBudget", "parse_budget"]
