"""YAML with line numbers: so every mapping-file error can name file, line and key path."""

from __future__ import annotations

from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


# libyaml's parser when PyYAML was built with it: several times faster on large directories.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(Exception):
    """The file is not valid YAML; ``line`` is 1-based."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def load_with_lines(text: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse one YAML document safely; return the data and the 1-based line of every key path.

    Only the safe YAML subset is built (no tags that construct objects), so nothing in a
    mapping file can run code.
    """
    loader = _Loader(text)
    lines: dict[KeyPath, int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        return _build(loader, node, (), lines), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(x for x in (exc.context, exc.problem) if x) or str(exc)
        raise YamlError(message, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc), None) from None
    finally:
        loader.dispose()


def _build(
    loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]
) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise YamlError("mapping keys must be plain values", key_node.start_mark.line + 1)
            if key in out:
                raise YamlError(f"duplicate key {key!r}", key_node.start_mark.line + 1)
            child = (*path, key if isinstance(key, str | int) else str(key))
            out[key] = _build(loader, value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), lines) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]
