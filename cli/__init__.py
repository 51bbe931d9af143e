"""The ``reason-interp`` command line (typer)."""
