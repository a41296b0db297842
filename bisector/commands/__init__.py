"""What each CLI command does, without the CLI: parse nothing, print nothing (events and return
values only), so tests and the daemon drive the same code as ``bisector``."""
