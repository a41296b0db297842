"""The in-process compare check: run the candidate on the target and compare with the reference.

No process is started per iteration, and reference values are computed once: a reduce candidate's
reference outputs are the activations recorded from the full model (``artifact.reference``), a
precision candidate's are the fp32 outputs computed at the start.

Verdict: GOOD when every output of every sample is within tolerance (Polygraphy's rules, see
``bisector.compare.comparator``), BAD otherwise. The comparison goes into ``metrics`` (and the journal).
"""

from __future__ import annotations

import time

from bisector.backends.target import Target
from bisector.checks.base import Artifact, Check, CheckResult, Verdict
from bisector.compare.comparator import compare_samples
from bisector.compare.config import CompareConfig


class CompareCheck(Check):
    def __init__(self, target: Target, config: CompareConfig | None = None):
        self.target = target
        self.config = config or CompareConfig()

    def run(self, artifact: Artifact) -> CheckResult:
        if artifact.model is None or artifact.feeds is None or artifact.reference is None:
            raise ValueError("the compare check needs an artifact with model, feeds and reference")
        start = time.monotonic()
        names = list(artifact.reference[0]) if artifact.reference else None
        outputs = self.target.run(artifact.model, artifact.weights_dir, artifact.workdir, artifact.feeds, names)
        cmp = compare_samples(outputs, artifact.reference, self.config)
        verdict = Verdict.GOOD if cmp.passed else Verdict.BAD
        worst = _worst_output(cmp)
        return CheckResult(verdict=verdict, output=cmp.summary(), duration_s=time.monotonic() - start,
                           note="" if cmp.passed else cmp.summary(),  # shown beside the verdict, kept in the report
                           metrics={"worst_output": worst, "target": self.target.describe()})


def _worst_output(cmp) -> str | None:
    for sample in cmp.samples:
        for out in sample.outputs:
            if not out.passed:
                return out.name
    return None
