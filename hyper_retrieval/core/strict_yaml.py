"""YAML as configuration files need it: no duplicate keys, no aliases, errors that name the file and line.

PyYAML's safe loader keeps the last of two equal keys without a word, and expands aliases: a few hundred bytes of
nested aliases grow into gigabytes. Configuration files need neither, so both are refused here, with the line. So
are YAML 1.1's base-60 and octal numbers (``1:30`` is 90 and ``012`` is 10 to PyYAML, never what was meant), keys
that are lists or mappings, nesting deeper than :data:`MAX_DEPTH` and bytes that are not UTF-8.
"""

from __future__ import annotations

import re
import typing
from typing import Any

import yaml

MAX_DEPTH = 64  # nested lists / mappings a configuration file may hold; deeper is a generated or hostile file
_OCTAL = re.compile(r"[-+]?0[0-7]+")  # YAML 1.1 octal: 012 is 10


class StrictYamlError(ValueError):
    """A YAML text that is malformed or not UTF-8, repeats a key, uses an alias, a complex key, a YAML 1.1 base-60 or
    octal number or nests too deep; the message names the source and line."""


class _StrictLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise StrictYamlError(f"{self.name}:{event.start_mark.line + 1}: aliases (*{event.anchor}) are not "
                                  "allowed in a configuration file; write the value out")
        if self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            if self._depth >= MAX_DEPTH:
                raise StrictYamlError(f"{self.name}:{self.peek_event().start_mark.line + 1}: lists and mappings "
                                      f"nested more than {MAX_DEPTH} deep; a configuration file needs a few levels")
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise StrictYamlError(f"{self.name}:{line}: a key that is a {kind} (a YAML complex key); keys of a "
                                      "configuration file are names")
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise StrictYamlError(f"{self.name}:{line}: duplicate key {short_repr(key)} (first at line "
                                      f"{seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = super().construct_yaml_int(node)
        text = node.value.replace("_", "")
        if ":" in text:
            self._yaml11_number(node, value, "a base-60 number")
        if _OCTAL.fullmatch(text):
            self._yaml11_number(node, value, "an octal number")
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if ":" in node.value:
            self._yaml11_number(node, value, "a base-60 number")
        return value

    def _yaml11_number(self, node: yaml.ScalarNode, value: float, kind: str) -> typing.NoReturn:
        raise StrictYamlError(f"{self.name}:{node.start_mark.line + 1}: {node.value} is {kind} in YAML 1.1 (read as "
                              f"{value}); write the number in plain decimal, or quote it for text")


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)


def load_yaml(text: str | bytes, source: str) -> Any:
    """The value of a YAML text read from ``source`` (a file name, or a description such as "override k=v"); bytes
    (a file's content) must be UTF-8."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            line = text.count(b"\n", 0, err.start) + 1
            raise StrictYamlError(f"{source}:{line}: not UTF-8 text (byte 0x{text[err.start]:02x} at offset "
                                  f"{err.start}); save the file as UTF-8") from None
    try:
        loader = _StrictLoader(text)
    except yaml.reader.ReaderError as err:  # a control character (NUL, ...) the YAML reader refuses up front
        line = text.count("\n", 0, err.position) + 1
        raise StrictYamlError(f"{source}:{line}: character #x{err.character:04x} is not allowed in YAML "
                              "text") from None
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        raise StrictYamlError(f"{where}: YAML syntax error: {getattr(err, 'problem', None) or err}") from None
    finally:
        loader.dispose()


def short_repr(value: Any, limit: int = 60) -> str:
    """repr(value), cut to ``limit`` characters: error messages never print a huge value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} characters)"


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(value: Any) -> str:
    """YAML text of ``value`` (keys in their order) that :func:`load_yaml` reads back: a value referenced twice is
    written out twice, never as an alias."""
    return yaml.dump(value, Dumper=_NoAliasDumper, sort_keys=False)
