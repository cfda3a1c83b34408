"""Writes ``buf/validate/validate.proto`` from the descriptor the ``protovalidate`` wheel embeds.

chatmesh's contracts import ``buf/validate/validate.proto``, which no registry reachable
from our machines serves. The installed ``protovalidate`` package carries the file's
compiled ``FileDescriptorProto`` (inside its generated ``validate_pb`` module), so we print
``.proto`` source text from that descriptor at generation time instead of committing a
copy of the upstream file. The output therefore always matches the validator that runs.

What gets written into ``OUTDIR``:

* ``buf/validate/validate.proto``: source text, deterministic (same bytes on every run for
  the same ``protovalidate`` version). It compiles back to the embedded descriptor.
* ``buf/validate/validate.binpb``: a ``FileDescriptorSet`` holding the embedded descriptor
  and its dependencies exactly as ``protovalidate`` carries them (dependencies first).

The printer (:func:`render_proto`) is general enough for proto2, proto3 and editions files:
messages (nested types, maps, proto2 groups, oneofs, reserved and extension ranges), enums,
``extend`` blocks, services, and standard or custom options. Custom option values are
decoded against a descriptor pool built from the file itself and its dependencies, then
printed as dotted option paths (``features.field_presence = IMPLICIT``) or, when a value
holds repeated fields, in text-format aggregate syntax (``(.buf.validate.predefined) = {...}``).

Example:
    Command line (writes ``build/protodeps/buf/validate/validate.proto``)::

        python -m tools.protodeps build/protodeps

    From Python::

        >>> from tools.protodeps import embedded_validate_files, render_proto
        >>> files = embedded_validate_files()
        >>> text = render_proto(files[-1], files[:-1])
        >>> 'package buf.validate;' in text
        True
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

if TYPE_CHECKING:
    from protobuf import DescFile

__all__ = [
    "VALIDATE_PROTO",
    "UnsupportedDescriptorError",
    "embedded_descriptor_set",
    "embedded_validate_files",
    "main",
    "protovalidate_version",
    "render_proto",
    "write_deps",
]

logger = logging.getLogger(__name__)

VALIDATE_PROTO = "buf/validate/validate.proto"
"""The import path chatmesh's contracts use, relative to the output directory."""

_FDP = descriptor_pb2.FieldDescriptorProto

# Highest field number (inclusive); ranges reaching it print as ``max``.
_MAX_FIELD_NUMBER = 536_870_911
_MAX_ENUM_NUMBER = 2_147_483_647

_SCALAR_KEYWORDS: dict[int, str] = {
    _FDP.TYPE_DOUBLE: "double",
    _FDP.TYPE_FLOAT: "float",
    _FDP.TYPE_INT64: "int64",
    _FDP.TYPE_UINT64: "uint64",
    _FDP.TYPE_INT32: "int32",
    _FDP.TYPE_FIXED64: "fixed64",
    _FDP.TYPE_FIXED32: "fixed32",
    _FDP.TYPE_BOOL: "bool",
    _FDP.TYPE_STRING: "string",
    _FDP.TYPE_BYTES: "bytes",
    _FDP.TYPE_UINT32: "uint32",
    _FDP.TYPE_SFIXED32: "sfixed32",
    _FDP.TYPE_SFIXED64: "sfixed64",
    _FDP.TYPE_SINT32: "sint32",
    _FDP.TYPE_SINT64: "sint64",
}

_LABEL_KEYWORDS: dict[int, str] = {
    _FDP.LABEL_OPTIONAL: "optional",
    _FDP.LABEL_REQUIRED: "required",
    _FDP.LABEL_REPEATED: "repeated",
}


class UnsupportedDescriptorError(ValueError):
    """The descriptor uses something this printer cannot express faithfully as source."""


def protovalidate_version() -> str:
    """Returns the installed ``protovalidate`` distribution's version, e.g. ``"2.1.0"``."""
    return importlib.metadata.version("protovalidate")


def embedded_validate_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """Returns the descriptors ``protovalidate`` embeds: dependencies first, validate.proto last.

    Returns:
        The transitive closure of ``buf/validate/validate.proto`` in dependency order, parsed
        with ``google.protobuf`` (custom options stay unknown fields until decoded).
    """
    return [descriptor_pb2.FileDescriptorProto.FromString(raw) for _, raw in _embedded_raw_files()]


def embedded_descriptor_set() -> bytes:
    """Returns a serialized ``FileDescriptorSet`` holding the embedded files' exact bytes.

    The set is framed by hand (field 1, length-delimited, per file) because re-serializing
    parsed messages would reorder fields; this way each file's bytes stay exactly the ones
    ``protovalidate`` ships.
    """
    out = bytearray()
    for _, raw in _embedded_raw_files():
        out += b"\x0a" + _varint(len(raw)) + raw
    return bytes(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _embedded_raw_files() -> list[tuple[str, bytes]]:
    """Returns ``(name, serialized FileDescriptorProto)`` for validate.proto and its imports.

    The bytes come from ``validate_pb.desc().proto`` (the protobuf-py runtime's documented
    ``DescFile.proto``), serialized again with protobuf-py. For 2.1.0 that is byte-identical
    to the literal passed to ``file_desc`` in the generated module (the test checks it);
    going through ``desc()`` rather than parsing the module's source keeps working if the
    generator changes how it stores the literal.
    """
    # Imported here: the protobuf-py runtime and the Rust validator load with it, and
    # `render_proto` users with their own descriptors should not pay for that.
    from protovalidate._gen.buf.validate import validate_pb

    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(desc_file: DescFile) -> None:
        if desc_file.name in seen:
            return
        seen.add(desc_file.name)
        for dep in desc_file.dependencies:
            visit(dep)
        ordered.append((desc_file.name, desc_file.proto.to_binary()))

    visit(validate_pb.desc())
    if ordered[-1][0] != VALIDATE_PROTO:
        raise UnsupportedDescriptorError(
            f"protovalidate embeds {ordered[-1][0]!r}, not {VALIDATE_PROTO!r}"
        )
    return ordered


def write_deps(outdir: Path) -> list[Path]:
    """Writes ``validate.proto`` and ``validate.binpb`` under ``outdir/buf/validate/``.

    Files whose content is already current are left untouched, so make-style freshness
    checks based on modification times stay quiet.

    Args:
        outdir: Root of the generated import tree (created if missing).

    Returns:
        The paths of both files, whether rewritten or not.

    Raises:
        UnsupportedDescriptorError: If the embedded descriptor cannot be printed faithfully.
    """
    files = embedded_validate_files()
    version = protovalidate_version()
    header = [
        f"Generated by tools/protodeps.py from protovalidate=={version}'s embedded descriptor.",
        "DO NOT EDIT and do not commit: `python -m tools.protodeps OUTDIR` recreates it.",
        "Source: buf/validate/validate.proto, Copyright Buf Technologies, Inc.,",
        "Apache License 2.0. The descriptor holds no comments, so this file has none.",
    ]
    text = render_proto(files[-1], files[:-1], header=header)
    target = outdir / VALIDATE_PROTO
    binpb = target.with_suffix(".binpb")
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_if_changed(target, text.encode("utf-8"))
    _write_if_changed(binpb, embedded_descriptor_set())
    return [target, binpb]


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        logger.debug("%s is current", path)
        return
    # Write-then-rename so a concurrent protoc run never reads half a file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    logger.info("wrote %s (%d bytes)", path, len(data))


def render_proto(
    file: descriptor_pb2.FileDescriptorProto,
    dependencies: Sequence[descriptor_pb2.FileDescriptorProto] = (),
    *,
    header: Sequence[str] = (),
) -> str:
    """Prints ``.proto`` source text that compiles back to ``file``.

    Type and option names are printed fully qualified with a leading dot, which protoc and
    buf both accept and which cannot resolve differently from the descriptor's meaning.
    Comments are lost (descriptors without ``source_code_info`` have none to give).

    Args:
        file: The descriptor to print.
        dependencies: Descriptors of every file ``file`` imports, transitively, in any order.
            Files missing here are looked up in the default ``google.protobuf`` pool (which
            holds the well-known types once their ``_pb2`` modules are imported).
        header: Lines for a leading ``//`` comment.

    Returns:
        The source text, ending with a newline.

    Raises:
        UnsupportedDescriptorError: If a construct cannot be printed faithfully (for example
            option fields the pool does not know, or oneof fields that are not contiguous).
    """
    pool = _build_pool(file, dependencies)
    printer = _Printer(file, pool)
    for line in header:
        printer.line(f"// {line}".rstrip())
    if header:
        printer.line("")
    printer.file()
    return printer.text()


def _build_pool(
    file: descriptor_pb2.FileDescriptorProto,
    dependencies: Sequence[descriptor_pb2.FileDescriptorProto],
) -> descriptor_pool.DescriptorPool:
    """Builds a private pool holding ``file`` and its imports.

    The pool is how custom options get decoded: options messages parsed with
    ``descriptor_pb2`` keep extensions such as ``(buf.validate.predefined)`` as unknown
    fields, while the same bytes parsed with this pool's ``FieldOptions`` class resolve
    them against the extensions ``file`` itself declares.
    """
    by_name = {dep.name: dep for dep in dependencies}
    by_name[file.name] = file
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        added.add(name)
        proto = by_name.get(name)
        if proto is None:
            proto = descriptor_pb2.FileDescriptorProto()
            try:
                descriptor_pool.Default().FindFileByName(name).CopyToProto(proto)
            except KeyError as exc:
                raise UnsupportedDescriptorError(
                    f"{file.name} imports {name}, which was not supplied"
                ) from exc
        for dep in proto.dependency:
            add(dep)
        pool.Add(proto)

    # Options messages are decoded through this pool even when `file` never imports
    # descriptor.proto (e.g. a proto3 file with only standard options).
    add("google/protobuf/descriptor.proto")
    add(file.name)
    return pool


def _default_json_name(name: str) -> str:
    """Mirrors protoc's ``ToJsonName``: drop underscores, upper-case the letter after each."""
    out: list[str] = []
    upper_next = False
    for ch in name:
        if ch == "_":
            upper_next = True
        elif upper_next:
            out.append(ch.upper())
            upper_next = False
        else:
            out.append(ch)
    return "".join(out)


def _quote_bytes(data: bytes) -> str:
    """Quotes bytes as a ``.proto`` string literal (octal escapes, which every parser knows)."""
    parts = ['"']
    for b in data:
        ch = chr(b)
        if ch in ('"', "\\"):
            parts.append("\\" + ch)
        elif ch == "\n":
            parts.append("\\n")
        elif ch == "\r":
            parts.append("\\r")
        elif ch == "\t":
            parts.append("\\t")
        elif 0x20 <= b < 0x7F:
            parts.append(ch)
        else:
            parts.append(f"\\{b:03o}")
    parts.append('"')
    return "".join(parts)


def _quote_string(value: str) -> str:
    # UTF-8 bytes escaped as octal: the output stays ASCII and protoc rebuilds the same text.
    return _quote_bytes(value.encode("utf-8"))


def _format_float(value: float, *, single: bool) -> str:
    """Shortest text that parses back to the same double (or float32 when ``single``)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if single:
        # A float32 widened to double reprs as e.g. 0.30000001192092896; find the shortest
        # decimal that narrows to the same float32, as protoc itself prints them.
        target = struct.pack("<f", value)
        for digits in range(6, 10):
            text = f"{value:.{digits}g}"
            if struct.pack("<f", float(text)) == target:
                return text
    return repr(value)


def _is_map_entry(message: descriptor_pb2.DescriptorProto) -> bool:
    return message.options.map_entry


@dataclass
class _Printer:
    """Turns one ``FileDescriptorProto`` into source lines."""

    fd: descriptor_pb2.FileDescriptorProto
    pool: descriptor_pool.DescriptorPool
    lines: list[str] = field(default_factory=list)
    depth: int = 0

    # ---- output helpers -------------------------------------------------------------

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def line(self, text: str) -> None:
        """Adds ``text`` at the current depth; continuation lines keep their own indent."""
        pad = "  " * self.depth
        first, *rest = text.split("\n")
        self.lines.append(pad + first if first else "")
        self.lines.extend(pad + item if item else "" for item in rest)

    def block(self, opener: str, body: Callable[[], None]) -> None:
        self.line(opener + " {")
        self.depth += 1
        body()
        self.depth -= 1
        self.line("}")

    # ---- file level -----------------------------------------------------------------

    @property
    def syntax(self) -> str:
        """``proto2``, ``proto3`` or ``editions``."""
        return self.fd.syntax or "proto2"

    def file(self) -> None:
        fd = self.fd
        if self.syntax == "editions":
            edition = descriptor_pb2.Edition.Name(fd.edition).removeprefix("EDITION_")
            self.line(f'edition = "{edition}";')
        elif self.syntax in ("proto2", "proto3"):
            self.line(f'syntax = "{self.syntax}";')
        else:
            raise UnsupportedDescriptorError(f"unknown syntax {fd.syntax!r} in {fd.name}")
        if fd.package:
            self.line("")
            self.line(f"package {fd.package};")
        self.imports()
        file_options = self.option_entries(fd.options, "google.protobuf.FileOptions")
        if file_options:
            self.line("")
            for name, value in file_options:
                self.line(f"option {name} = {value};")
        scope = f".{fd.package}" if fd.package else ""
        for message in fd.message_type:
            self.line("")
            self.message(message, scope)
        for enum in fd.enum_type:
            self.line("")
            self.enum(enum)
        self.extensions(fd.extension, separate=True)
        for service in fd.service:
            self.line("")
            self.service(service)

    def imports(self) -> None:
        fd = self.fd
        if not fd.dependency and not fd.option_dependency:
            return
        self.line("")
        public = set(fd.public_dependency)
        weak = set(fd.weak_dependency)
        for index, dep in enumerate(fd.dependency):
            modifier = "public " if index in public else "weak " if index in weak else ""
            self.line(f"import {modifier}{_quote_string(dep)};")
        for dep in fd.option_dependency:
            self.line(f"import option {_quote_string(dep)};")

    # ---- options --------------------------------------------------------------------

    def decode_options(self, options: Message, full_name: str) -> Message:
        """Re-parses an options message against the private pool so extensions resolve."""
        cls = message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))
        decoded = cls.FromString(options.SerializeToString())
        _reject_unknown_fields(decoded, full_name)
        return decoded

    def option_entries(
        self, options: Message, full_name: str, skip: frozenset[str] = frozenset()
    ) -> list[tuple[str, str]]:
        """Returns ``(name, value)`` pairs for every option set, in field-number order.

        Repeated options yield one pair per element, which protoc appends in order.
        Message values use dotted paths where possible, otherwise aggregate syntax
        ``{ ... }`` (valid for standard and custom options alike).
        """
        entries: list[tuple[str, str]] = []
        if not options.ByteSize():
            return entries
        decoded = self.decode_options(options, full_name)
        for fdesc, value in decoded.ListFields():
            if fdesc.name == "uninterpreted_option" and not fdesc.is_extension:
                # protoc resolves these before writing a descriptor; one left over means
                # the options were never interpreted and would print as something else.
                raise UnsupportedDescriptorError(f"uninterpreted options in {full_name}")
            if fdesc.name in skip and not fdesc.is_extension:
                continue
            name = f"(.{fdesc.full_name})" if fdesc.is_extension else fdesc.name
            if fdesc.is_repeated:
                entries.extend((name, self.option_value(fdesc, item)) for item in value)
            else:
                entries.extend(self.assignments(name, fdesc, value))
        return entries

    def assignments(self, name: str, fdesc: FieldDescriptor, value: Any) -> list[tuple[str, str]]:
        """Spells a singular option as dotted paths when that is lossless, else as one value.

        ``features.field_presence = IMPLICIT`` reads better than an aggregate; a message
        holding a repeated field anywhere (e.g. ``cel`` rules) stays one aggregate, so the
        order of its elements is kept.
        """
        if fdesc.type == FieldDescriptor.TYPE_MESSAGE and _singular_tree(value):
            out: list[tuple[str, str]] = []
            for sub, sub_value in value.ListFields():
                sub_name = f"(.{sub.full_name})" if sub.is_extension else sub.name
                out.extend(self.assignments(f"{name}.{sub_name}", sub, sub_value))
            return out
        return [(name, self.option_value(fdesc, value))]

    def option_value(self, fdesc: FieldDescriptor, value: Any) -> str:
        if fdesc.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            body = text_format.MessageToString(value, as_utf8=False, indent=2)
            return "{\n" + body + "}" if body else "{}"
        if fdesc.type == FieldDescriptor.TYPE_ENUM:
            enum_value = fdesc.enum_type.values_by_number.get(value) if fdesc.enum_type else None
            if enum_value is None:
                raise UnsupportedDescriptorError(
                    f"option {fdesc.full_name} holds unknown enum number {value}"
                )
            return str(enum_value.name)
        if fdesc.type == FieldDescriptor.TYPE_BOOL:
            return "true" if value else "false"
        if fdesc.type == FieldDescriptor.TYPE_STRING:
            return _quote_string(value)
        if fdesc.type == FieldDescriptor.TYPE_BYTES:
            return _quote_bytes(value)
        if fdesc.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            return _format_float(value, single=fdesc.type == FieldDescriptor.TYPE_FLOAT)
        return str(int(value))

    def statement_options(
        self, options: Message, full_name: str, skip: frozenset[str] = frozenset()
    ) -> None:
        for name, value in self.option_entries(options, full_name, skip):
            self.line(f"option {name} = {value};")

    @staticmethod
    def bracket(entries: Sequence[tuple[str, str]]) -> str:
        if not entries:
            return ""
        return " [" + ", ".join(f"{name} = {value}" for name, value in entries) + "]"

    # ---- messages -------------------------------------------------------------------

    def message(self, message: descriptor_pb2.DescriptorProto, scope: str) -> None:
        self.block(
            f"message {message.name}", lambda: self.message_body(message, f"{scope}.{message.name}")
        )

    def message_body(self, message: descriptor_pb2.DescriptorProto, fqn: str) -> None:
        self.statement_options(message.options, "google.protobuf.MessageOptions")
        # Map entries and proto2 groups are declared by their field, so they print there.
        # Other nested types are emitted just before the first field that implicitly
        # declares a later nested type, which keeps `nested_type` in its original order.
        implicit: dict[str, int] = {}
        for index, nested in enumerate(message.nested_type):
            nested_fqn = f"{fqn}.{nested.name}"
            if _is_map_entry(nested) or self.is_group_type(message, nested_fqn):
                implicit[nested_fqn] = index
        pending_list = [
            (i, n) for i, n in enumerate(message.nested_type) if f"{fqn}.{n.name}" not in implicit
        ]

        def flush_nested(before: int) -> None:
            while pending_list and pending_list[0][0] < before:
                _, nested = pending_list.pop(0)
                self.message(nested, fqn)

        real_oneofs = self.real_oneof_indexes(message)
        printed_oneofs: set[int] = set()
        fields = list(message.field)
        position = 0
        while position < len(fields):
            current = fields[position]
            if current.HasField("oneof_index") and current.oneof_index in real_oneofs:
                index = current.oneof_index
                if index in printed_oneofs or index != len(printed_oneofs):
                    raise UnsupportedDescriptorError(
                        f"{fqn}: fields of oneof #{index} are not contiguous"
                        " or oneofs are out of order"
                    )
                printed_oneofs.add(index)
                end = position
                while (
                    end < len(fields)
                    and fields[end].HasField("oneof_index")
                    and fields[end].oneof_index == index
                ):
                    end += 1
                members = fields[position:end]
                for member in members:
                    if member.type_name in implicit:
                        flush_nested(implicit[member.type_name])
                self.oneof(message, index, members, fqn, implicit)
                position = end
                continue
            if current.type_name in implicit:
                flush_nested(implicit[current.type_name])
            self.field(current, message, fqn, implicit, in_oneof=False)
            position += 1
        if len(printed_oneofs) != len(real_oneofs):
            raise UnsupportedDescriptorError(f"{fqn}: a oneof has no fields")
        flush_nested(len(message.nested_type))
        for enum in message.enum_type:
            self.enum(enum)
        for ext_range in message.extension_range:
            entries = self.option_entries(
                ext_range.options, "google.protobuf.ExtensionRangeOptions"
            )
            span = self.range_text(ext_range.start, ext_range.end - 1, _MAX_FIELD_NUMBER)
            self.line(f"extensions {span}{self.bracket(entries)};")
        self.reserved(
            [(r.start, r.end - 1) for r in message.reserved_range],
            message.reserved_name,
            _MAX_FIELD_NUMBER,
        )
        self.extensions(message.extension, separate=False)

    def real_oneof_indexes(self, message: descriptor_pb2.DescriptorProto) -> set[int]:
        synthetic = {f.oneof_index for f in message.field if f.proto3_optional}
        return {i for i in range(len(message.oneof_decl)) if i not in synthetic}

    def oneof(
        self,
        message: descriptor_pb2.DescriptorProto,
        index: int,
        members: Sequence[descriptor_pb2.FieldDescriptorProto],
        fqn: str,
        implicit: dict[str, int],
    ) -> None:
        decl = message.oneof_decl[index]

        def body() -> None:
            self.statement_options(decl.options, "google.protobuf.OneofOptions")
            for member in members:
                self.field(member, message, fqn, implicit, in_oneof=True)

        self.block(f"oneof {decl.name}", body)

    def is_group_type(self, message: descriptor_pb2.DescriptorProto, type_fqn: str) -> bool:
        # Editions express groups as DELIMITED message fields whose type is declared on its
        # own, so only proto2 groups carry their type inline.
        return self.syntax == "proto2" and any(
            f.type == _FDP.TYPE_GROUP and f.type_name == type_fqn for f in message.field
        )

    def field(
        self,
        fdp: descriptor_pb2.FieldDescriptorProto,
        message: descriptor_pb2.DescriptorProto | None,
        scope: str,
        implicit: dict[str, int],
        *,
        in_oneof: bool,
    ) -> None:
        entry = None
        if message is not None and fdp.type_name in implicit:
            entry = message.nested_type[implicit[fdp.type_name]]
        pseudo = self.pseudo_options(fdp)
        entries = pseudo + self.option_entries(fdp.options, "google.protobuf.FieldOptions")
        if entry is not None and _is_map_entry(entry):
            key, value = self.map_entry_types(entry, fdp)
            self.line(f"map<{key}, {value}> {fdp.name} = {fdp.number}{self.bracket(entries)};")
            return
        label = self.label(fdp, in_oneof=in_oneof)
        if entry is not None:
            # proto2 group: the nested type's body follows the field declaration.
            def body() -> None:
                self.message_body(entry, f"{scope}.{entry.name}")

            self.block(f"{label}group {entry.name} = {fdp.number}{self.bracket(entries)}", body)
            return
        self.line(f"{label}{self.type_text(fdp)} {fdp.name} = {fdp.number}{self.bracket(entries)};")

    def label(self, fdp: descriptor_pb2.FieldDescriptorProto, *, in_oneof: bool) -> str:
        if in_oneof:
            return ""
        if fdp.label == _FDP.LABEL_REPEATED:
            return "repeated "
        if self.syntax == "proto2":
            return _LABEL_KEYWORDS[fdp.label] + " "
        if fdp.label == _FDP.LABEL_REQUIRED:
            raise UnsupportedDescriptorError(f"required field {fdp.name} outside proto2")
        if self.syntax == "proto3" and fdp.proto3_optional:
            return "optional "
        return ""

    def type_text(self, fdp: descriptor_pb2.FieldDescriptorProto) -> str:
        if fdp.type in _SCALAR_KEYWORDS:
            return _SCALAR_KEYWORDS[fdp.type]
        if not fdp.type_name.startswith("."):
            raise UnsupportedDescriptorError(
                f"field {fdp.name} has unresolved type {fdp.type_name!r}"
            )
        return fdp.type_name

    def pseudo_options(self, fdp: descriptor_pb2.FieldDescriptorProto) -> list[tuple[str, str]]:
        """``default`` and ``json_name``: stored on the field, written like options."""
        entries: list[tuple[str, str]] = []
        if fdp.HasField("default_value"):
            entries.append(("default", self.default_text(fdp)))
        if fdp.HasField("json_name") and fdp.json_name != _default_json_name(fdp.name):
            if fdp.HasField("extendee"):
                raise UnsupportedDescriptorError(f"extension {fdp.name} has a custom json_name")
            entries.append(("json_name", _quote_string(fdp.json_name)))
        return entries

    @staticmethod
    def default_text(fdp: descriptor_pb2.FieldDescriptorProto) -> str:
        value = fdp.default_value
        if fdp.type == _FDP.TYPE_STRING:
            return _quote_string(value)
        if fdp.type == _FDP.TYPE_BYTES:
            # protoc stores bytes defaults already C-escaped; printed inside quotes verbatim.
            return f'"{value}"'
        return value  # numbers (incl. inf/nan), true/false, enum value names

    def map_entry_types(
        self, entry: descriptor_pb2.DescriptorProto, fdp: descriptor_pb2.FieldDescriptorProto
    ) -> tuple[str, str]:
        by_number = {f.number: f for f in entry.field}
        other_options = self.option_entries(
            entry.options, "google.protobuf.MessageOptions", frozenset({"map_entry"})
        )
        if set(by_number) != {1, 2} or other_options or fdp.label != _FDP.LABEL_REPEATED:
            raise UnsupportedDescriptorError(f"map entry {entry.name} cannot be written as map<>")
        return self.type_text(by_number[1]), self.type_text(by_number[2])

    # ---- shared pieces --------------------------------------------------------------

    @staticmethod
    def range_text(start: int, end_inclusive: int, maximum: int) -> str:
        if start == end_inclusive:
            return str(start)
        end = "max" if end_inclusive == maximum else str(end_inclusive)
        return f"{start} to {end}"

    def reserved(
        self, ranges: Sequence[tuple[int, int]], names: Sequence[str], maximum: int
    ) -> None:
        if ranges:
            self.line(
                "reserved " + ", ".join(self.range_text(s, e, maximum) for s, e in ranges) + ";"
            )
        if names:
            # Editions take reserved names as bare identifiers; proto2/proto3 as strings.
            bare = self.syntax == "editions"
            self.line("reserved " + ", ".join(n if bare else _quote_string(n) for n in names) + ";")

    def extensions(
        self, extensions: Sequence[descriptor_pb2.FieldDescriptorProto], *, separate: bool
    ) -> None:
        """Prints ``extend`` blocks, one per run of consecutive extensions of one extendee."""
        runs: list[list[descriptor_pb2.FieldDescriptorProto]] = []
        for ext in extensions:
            if ext.type == _FDP.TYPE_GROUP:
                raise UnsupportedDescriptorError(f"group extension {ext.name} is not supported")
            if runs and runs[-1][0].extendee == ext.extendee:
                runs[-1].append(ext)
            else:
                runs.append([ext])
        for run in runs:
            if separate:
                self.line("")

            def body(run: list[descriptor_pb2.FieldDescriptorProto] = run) -> None:
                for ext in run:
                    self.field(ext, None, "", {}, in_oneof=False)

            self.block(f"extend {run[0].extendee}", body)

    # ---- enums and services ---------------------------------------------------------

    def enum(self, enum: descriptor_pb2.EnumDescriptorProto) -> None:
        def body() -> None:
            self.statement_options(enum.options, "google.protobuf.EnumOptions")
            for value in enum.value:
                entries = self.option_entries(value.options, "google.protobuf.EnumValueOptions")
                self.line(f"{value.name} = {value.number}{self.bracket(entries)};")
            # Enum reserved ranges are inclusive at both ends, unlike message ones.
            self.reserved(
                [(r.start, r.end) for r in enum.reserved_range],
                enum.reserved_name,
                _MAX_ENUM_NUMBER,
            )

        self.block(f"enum {enum.name}", body)

    def service(self, service: descriptor_pb2.ServiceDescriptorProto) -> None:
        def body() -> None:
            self.statement_options(service.options, "google.protobuf.ServiceOptions")
            for method in service.method:
                request = ("stream " if method.client_streaming else "") + method.input_type
                response = ("stream " if method.server_streaming else "") + method.output_type
                signature = f"rpc {method.name}({request}) returns ({response})"
                entries = self.option_entries(method.options, "google.protobuf.MethodOptions")
                if not entries:
                    self.line(f"{signature};")
                    continue

                def method_body(entries: list[tuple[str, str]] = entries) -> None:
                    for name, value in entries:
                        self.line(f"option {name} = {value};")

                self.block(signature, method_body)

        self.block(f"service {service.name}", body)


def _reject_unknown_fields(message: Message, where: str) -> None:
    """Raises if any (nested) field was not understood: it would vanish from the output."""
    if len(UnknownFieldSet(message)):
        raise UnsupportedDescriptorError(
            f"{where} holds option fields the descriptor pool does not define"
        )
    for fdesc, value in message.ListFields():
        if fdesc.type not in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            continue
        items: Iterator[Any]
        if fdesc.message_type is not None and fdesc.message_type.GetOptions().map_entry:
            items = iter(value.values()) if _map_value_is_message(fdesc) else iter(())
        else:
            items = iter(value) if fdesc.is_repeated else iter([value])
        for item in items:
            _reject_unknown_fields(item, f"{where}.{fdesc.name}")


def _singular_tree(message: Message) -> bool:
    """True if ``message`` has fields set and none of them, at any depth, is repeated."""
    fields = message.ListFields()
    return bool(fields) and all(
        not fdesc.is_repeated
        and (fdesc.type != FieldDescriptor.TYPE_MESSAGE or _singular_tree(value))
        for fdesc, value in fields
    )


def _map_value_is_message(fdesc: FieldDescriptor) -> bool:
    value_field = fdesc.message_type.fields_by_name["value"] if fdesc.message_type else None
    return value_field is not None and value_field.type == FieldDescriptor.TYPE_MESSAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m tools.protodeps OUTDIR``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit status (0 on success).
    """
    parser = argparse.ArgumentParser(
        prog="python -m tools.protodeps",
        description="Write buf/validate/validate.proto (and .binpb) from the descriptor"
        " embedded in the installed protovalidate package.",
    )
    parser.add_argument("outdir", type=Path, help="root of the generated import tree")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        paths = write_deps(args.outdir)
    except UnsupportedDescriptorError:
        logger.exception("cannot print the embedded descriptor")
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
