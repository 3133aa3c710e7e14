"""Lossy coding in the loop: its typed targets (`options`)."""

from .options import AgreementTarget, Budget, OutputBudget, SiteBudget, parse_budget

__all__ = ["AgreementTarget", "Budget", "OutputBudget", "SiteBudget", "parse_budget"]
