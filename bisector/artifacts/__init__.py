"""The session store: session.json, the fsync'd journal, iteration directories, good/bad sorting,
and the result directory with its reports."""
