"""Local protoc plugins that ``buf generate`` runs for chatmesh (see ``buf.gen.yaml``).

buf runs plugins as executables; the tiny shell scripts next to this module
(``tools/protoc-gen-grpc_python``, ``tools/protoc-gen-python_betterproto2``) exec
``python -m tools.genplugins NAME``, which reads a ``CodeGeneratorRequest`` on stdin and
writes a ``CodeGeneratorResponse`` on stdout.

* ``grpc_python``: grpcio-tools compiles the gRPC generator into its own ``protoc`` but ships
  no ``protoc-gen-grpc_python`` executable, and buf has no builtin for it. The plugin hands
  the request's descriptors to ``python -m grpc_tools.protoc --descriptor_set_in`` and returns
  what it writes. Files without services would only get an empty ``*_pb2_grpc.py`` (imports
  and a version check), so those are left out.
* ``python_betterproto2``: runs ``betterproto2_compiler`` in an empty scratch directory that
  holds a pinned ``ruff.toml``. The compiler formats its output with the ``ruff`` found on
  ``PATH``, which reads whatever configuration it finds from its working directory upwards
  (the project's ``pyproject.toml``, or ``~/.config/ruff``); pinning it here keeps the SDK's
  bytes independent of the caller's directory and of lint settings that change for other
  reasons.

Example:
    What ``buf generate`` does (``request.binpb`` being a serialized ``CodeGeneratorRequest``)::

        python -m tools.genplugins grpc_python < request.binpb > response.binpb
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

__all__ = ["BETTERPROTO2_RUFF_TOML", "betterproto2", "grpc_python", "main"]

logger = logging.getLogger(__name__)

# A protoc run over a handful of descriptors takes well under a second; this bounds a hang.
_PROTOC_TIMEOUT_S = 120

BETTERPROTO2_RUFF_TOML = """\
# Written by tools/genplugins.py for betterproto2-compiler's ruff calls only.
line-length = 100
target-version = "py311"
"""
"""The ruff configuration the SDK is formatted with (independent of the project's)."""


def grpc_python(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    """Generates ``*_pb2_grpc.py`` for the request's files that declare services.

    Args:
        request: The request buf sends; ``parameter`` is passed on to grpcio-tools'
            generator unchanged (e.g. ``grpc_2_0``).

    Returns:
        The generated files, or a response whose ``error`` carries protoc's message.
    """
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    by_name = {f.name: f for f in request.proto_file}
    wanted = [name for name in request.file_to_generate if by_name[name].service]
    if not wanted:
        return response
    with tempfile.TemporaryDirectory(prefix="chatmesh-grpc-python-") as scratch:
        root = Path(scratch)
        descriptor_set = root / "request.binpb"
        descriptor_set.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        out = root / "out"
        out.mkdir()
        option = f"{request.parameter}:" if request.parameter else ""
        # A child process, not grpc_tools.protoc.main() in-process: protoc may print, and
        # this process's stdout is the plugin response.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--descriptor_set_in={descriptor_set}",
                f"--grpc_python_out={option}{out}",
                *wanted,
            ],
            capture_output=True,
            text=True,
            timeout=_PROTOC_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            response.error = f"grpc_tools.protoc failed: {result.stderr.strip()}"
            return response
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            response.file.add(
                name=path.relative_to(out).as_posix(), content=path.read_text("utf-8")
            )
    return response


def betterproto2(request_bytes: bytes) -> bytes:
    """Runs betterproto2-compiler's plugin on a serialized request with a pinned ruff config.

    Args:
        request_bytes: A serialized ``CodeGeneratorRequest``.

    Returns:
        The serialized ``CodeGeneratorResponse``.
    """
    # Imported here: only this plugin needs the compiler (and its Jinja templates).
    from betterproto2_compiler.lib.google.protobuf.compiler import CodeGeneratorRequest
    from betterproto2_compiler.plugin.parser import generate_code

    request = CodeGeneratorRequest.parse(request_bytes)
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="chatmesh-betterproto2-") as scratch:
        Path(scratch, "ruff.toml").write_text(BETTERPROTO2_RUFF_TOML, encoding="utf-8")
        os.chdir(scratch)
        try:
            response = generate_code(request)
        finally:
            os.chdir(previous)
    return bytes(response.SerializeToString())


def _run_grpc_python(data: bytes) -> bytes:
    request = plugin_pb2.CodeGeneratorRequest.FromString(data)
    return grpc_python(request).SerializeToString()


_PLUGINS: dict[str, Callable[[bytes], bytes]] = {
    "grpc_python": _run_grpc_python,
    "python_betterproto2": betterproto2,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m tools.genplugins {grpc_python,python_betterproto2}``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit status (0 on success; failures inside generation are reported in
        the response's ``error`` field or as a traceback on stderr, which buf shows).
    """
    parser = argparse.ArgumentParser(
        prog="python -m tools.genplugins",
        description="protoc plugins used by buf.gen.yaml (request on stdin, response on stdout)",
    )
    parser.add_argument("plugin", choices=sorted(_PLUGINS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    response = _PLUGINS[args.plugin](sys.stdin.buffer.read())
    sys.stdout.buffer.write(response)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
