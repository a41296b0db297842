"""The daemon: a queue of bisector jobs on one machine, run unattended and resumed after a crash.

A job is a bisector command line (``reduce``, ``precision``, ``repeat``, ``build``) run as ``python
-m bisector`` in its own process group, with its own session directory and event stream. The state
is one SQLite file under ``$BISECTOR_HOME`` (:mod:`.store`); :mod:`.service` is the daemon's loop.
The daemon knows no flags: the CLI (``bisector/cli/daemon.py``) parses and validates command lines.
"""
