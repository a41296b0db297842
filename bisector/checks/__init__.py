"""Checks turn an artifact into a verdict: command, compare (in-process), interactive, python."""

from bisector.checks.base import Artifact, Check, CheckResult, Verdict

__all__ = ["Artifact", "Check", "CheckResult", "Verdict"]
