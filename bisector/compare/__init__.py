"""Output comparison: Polygraphy's rules and the array math (``comparator``), their options
(``config``: ``CompareConfig``, tolerance parsing), the JSON-able results (``results``) and their
rich rendering (``render``, which imports rich only when called)."""
