"""Lossy coding in the loop: its typed targets (`options`) and the per-site budgets they come to
(`budgets`)."""

from .options import AgreementTarget, Budget, OutputBudget, SiteBudget, parse_budget

__all__ = ["AgreementTarget", "Budget", "OutputBudget", "SiteBudget", "parse_budget"]
