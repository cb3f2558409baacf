"""YAML as configuration files need it: no duplicate keys, no aliases, errors that name the file and line.

PyYAML's safe loader keeps the last of two equal keys without a word, and expands aliases: a few hundred bytes of
nested aliases grow into gigabytes. Configuration files need neither, so both are refused here, with the line.
"""

from __future__ import annotations

from typing import Any

import yaml


class StrictYamlError(ValueError):
    """A YAML text that is malformed, repeats a key or uses an alias; the message names the source and line."""


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise StrictYamlError(f"{self.name}:{event.start_mark.line + 1}: aliases (*{event.anchor}) are not "
                                  "allowed in a configuration file; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise StrictYamlError(f"{self.name}:{line}: duplicate key {short_repr(key)} (first at line "
                                      f"{seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: str) -> Any:
    """The value of a YAML text read from ``source`` (a file name, or a description such as "override k=v")."""
    loader = _StrictLoader(text)
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
