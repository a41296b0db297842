"""The engine: the one loop every strategy shares.

It turns candidates into artifacts (through a :class:`Materializer`), runs checks (up to ``jobs``
at once, on speculative candidates too), journals every verdict before the search goes on, never
checks one fingerprint twice, and re-tests the endpoints first.

Results are accepted in the strategy's order (C-Reduce's rule): the strategy is only ever told the
verdict of the candidate it asked for; speculative results wait in the cache until asked for. So
``-j N`` returns exactly the answer of ``-j 1``. Resume is the same loop over a journal that
already holds verdicts: they are answered from the cache, with zero checks.

The package: ``loop.py`` (the :class:`Engine`), ``outcome.py`` (what a run returns and raises:
:class:`Outcome`, :class:`Stats`, :class:`EndpointError`; the :class:`Materializer` contract) and
``records.py`` (what a check leaves behind: the events log line, the iteration clean-up),
``executors.py`` (where a check runs: this process's threads, or a Ray task each) with
``ray_task.py`` (what runs inside such a task).
"""

from bisector.engine.loop import Engine
from bisector.engine.outcome import EndpointError, Listener, Materializer, Outcome, Stats, TrivialFails

__all__ = ["Engine", "EndpointError", "Listener", "Materializer", "Outcome", "Stats", "TrivialFails"]
