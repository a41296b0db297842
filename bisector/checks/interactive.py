"""The interactive check: a person looks at the artifact and answers good, bad or skip.

What it prints for iteration 7, then waits for a line::

    Iteration 7: 12 nodes: Conv_3 .. Relu_9
      artifact: /s/iterations/0007/polygraphy_debug.onnx
      inputs:   /s/iterations/0007/inputs.json
    Is iteration 7 good or bad? [g]ood / [b]ad / [s]kip / [r]etry / [q]uit:

Answers (first letter counts, any case): ``g`` or Polygraphy's ``p`` (pass) = good, ``b`` or
``f`` (fail) = bad, ``s`` = skip, ``r`` = show the artifact again and re-ask (after re-running
something by hand), ``q`` or end of input = stop the session (``SessionAborted``, resumable).
Anything else, an empty line included, asks again.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from bisector.checks.base import Artifact, Check, CheckResult, Verdict
from bisector.errors import SessionAborted

ANSWERS = {"g": Verdict.GOOD, "p": Verdict.GOOD, "b": Verdict.BAD, "f": Verdict.BAD, "s": Verdict.SKIP}
RETRY, QUIT = "r", "q"
PROMPT = "Is iteration {n} good or bad? [g]ood / [b]ad / [s]kip / [r]etry / [q]uit: "
REPROMPT = "Please answer g (good), b (bad), s (skip), r (retry) or q (quit)."
NOTE = "answered by hand"
QUIT_MESSAGE = "quit at the prompt"


class InteractiveCheck(Check):
    """Ask a person. Streams are injectable: tests drive it with ``io.StringIO``.

    Questions are serialized (one prompt at a time, even if the engine runs checks in threads).
    ``parallel = False`` tells the engine to run one check at a time, with no speculation.
    """

    parallel = False
    _prompt_lock = threading.Lock()

    def __init__(self, input_stream: TextIO | None = None, output_stream: TextIO | None = None):
        self.input_stream = input_stream if input_stream is not None else sys.stdin
        self.output_stream = output_stream if output_stream is not None else sys.stderr
        self._terminated = threading.Event()

    def terminate(self) -> None:
        """Refuse further questions (a prompt already waiting is ended by Ctrl-C or EOF)."""
        self._terminated.set()

    def run(self, artifact: Artifact) -> CheckResult:
        """Show the artifact, ask until the answer is one of the accepted letters."""
        with self._prompt_lock:
            start = time.monotonic()
            self._describe(artifact)
            while True:
                if self._terminated.is_set():
                    raise SessionAborted("the check was terminated")
                answer = self._ask(artifact.iteration)
                if answer in ANSWERS:
                    return CheckResult(
                        verdict=ANSWERS[answer], duration_s=time.monotonic() - start, note=NOTE
                    )
                if answer == QUIT:
                    raise SessionAborted(QUIT_MESSAGE)
                if answer == RETRY:
                    self._describe(artifact)
                else:
                    self._write(REPROMPT + "\n")

    def _describe(self, artifact: Artifact) -> None:
        title = f"Iteration {artifact.iteration}"
        if artifact.description:
            title += f": {artifact.description}"
        lines = [title, f"  artifact: {artifact.path}"]
        if artifact.inputs_path is not None:
            lines.append(f"  inputs:   {artifact.inputs_path}")
        self._write("\n".join(lines) + "\n")

    def _ask(self, iteration: int) -> str:
        """The first letter of the answer, lower-cased ('' for an empty line); EOF quits."""
        self._write(PROMPT.format(n=iteration))
        line = self.input_stream.readline()
        if not line:  # end of input: nobody is there to answer
            self._write("\n")
            raise SessionAborted(QUIT_MESSAGE)
        return line.strip()[:1].lower()

    def _write(self, text: str) -> None:
        self.output_stream.write(text)
        self.output_stream.flush()
