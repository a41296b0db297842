"""bisector's command line: the only layer that knows flag names and imports typer and rich.

``app.py`` declares every command and holds ``main``; ``options.py`` the option groups they share;
``build.py`` turns flags into the runner's Command, CheckSpec and RunOptions; ``run.py`` runs them
and shows the answer; ``polygraphy.py`` takes Polygraphy's flags that are not options here;
``progress.py`` and ``tables.py`` render progress and tables.
"""


def main(argv=None, exit: bool = True) -> int:
    """Console entry point (``bisector`` and ``python -m bisector``); see ``bisector.cli.app.main``."""
    from bisector.cli.app import main as app_main

    return app_main(argv, exit)
