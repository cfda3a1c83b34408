"""``python -m mesh.cli``: the chatmesh command."""

from mesh.cli.main import main

main()
