"""The ``chatmesh`` command line and its terminal chat client."""

from mesh.cli.main import app, main

__all__ = ["app", "main"]
