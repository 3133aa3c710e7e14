"""Lossy coding in the loop: its typed targets (`options`), the per-site budgets they come to
(`budgets`), and how strongly each channel of a site reaches the output (`importance`)."""

from .options import AgreementTarget, Budget, OutputBudget, SiteBudget, parse_budget

__all__ = ["AgreementTarget", "Budget", "OutputBudget", "SiteBudget", "parse_budget"]
