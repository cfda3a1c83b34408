"""Server reflection (``grpc.reflection.v1`` and ``v1alpha``) through the edge.

``connectrpc-grpcreflect`` implements both versions as connectrpc ASGI apps,
but on the protobuf-py runtime (``DescFile``), while chatmesh's code is
generated for google.protobuf. The descriptors convert losslessly: each
google ``FileDescriptor`` is serialized to its ``FileDescriptorProto`` bytes
and rebuilt as a ``DescFile`` (dependencies first), so grpcurl sees exactly
the files protoc compiled, custom options (buf.validate) included.

Example:
    >>> from chatmesh.v1 import query_service_pb2
    >>> apps = reflection_apps([query_service_pb2.DESCRIPTOR])
    >>> sorted(apps)
    ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from connectrpc_grpcreflect import (
    ServerReflectionAlphaASGIApplication,
    ServerReflectionAlphaService,
    ServerReflectionASGIApplication,
    ServerReflectionService,
)
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from protobuf import DescFile

# The builder protobuf-py's generated code itself calls to load descriptors.
from protobuf._codegen import file_desc

__all__ = ["reflection_apps", "to_desc_file"]


def to_desc_file(fd: FileDescriptor, cache: dict[str, DescFile] | None = None) -> DescFile:
    """The protobuf-py descriptor of a google.protobuf file descriptor (with its imports).

    Args:
        fd: A generated module's ``DESCRIPTOR``.
        cache: Files converted so far, by name (shared imports are converted once).
    """
    cache = {} if cache is None else cache
    found = cache.get(fd.name)
    if found is not None:
        return found
    deps = [to_desc_file(dep, cache) for dep in fd.dependencies]
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    desc = file_desc(proto.SerializeToString(), deps, {})
    cache[fd.name] = desc
    return desc


def reflection_apps(files: Iterable[FileDescriptor]) -> dict[str, Any]:
    """Reflection ASGI apps (v1 and v1alpha) listing the services of ``files``.

    Returns:
        Full service name -> connectrpc ASGI app serving it.
    """
    cache: dict[str, DescFile] = {}
    descs = [to_desc_file(fd, cache) for fd in files]
    return {
        "grpc.reflection.v1.ServerReflection": ServerReflectionASGIApplication(
            ServerReflectionService(*descs)
        ),
        "grpc.reflection.v1alpha.ServerReflection": ServerReflectionAlphaASGIApplication(
            ServerReflectionAlphaService(*descs)
        ),
    }
