"""The hardened YAML loader of run configurations: size and depth caps, no
aliases, tags or duplicate keys."""

from __future__ import annotations

import os
from typing import Any

import yaml

from starqso.config.fields import fail, shown_value, source_suffix
from starqso.errors import InputError

#: The largest config file read (a full run config is under 2 kB).
MAX_CONFIG_BYTES = 1 << 20

#: The deepest YAML nesting accepted (a run config nests 2 levels).
MAX_CONFIG_DEPTH = 20


class _RefusedYAML(yaml.YAMLError):
    """YAML that parses but that a run config must not use (aliases, deep nesting)."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader without anchors/aliases or duplicate keys, and with a nesting limit.

    An alias repeats a value without copying it, so nine lines of aliases to aliases describe
    a value of 9**9 items ("billion laughs"): loading it is instant, but any code that walks
    or prints it (an error message's repr) runs for minutes into MemoryError. A run config has
    no use for aliases. PyYAML composes nested nodes recursively, so nesting is capped before
    it can reach Python's recursion limit. PyYAML keeps the last of two equal keys, so
    ``num_objects`` written twice would silently run with the second value: refused instead.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _RefusedYAML("uses a YAML anchor or alias (&name / *name), which starqso "
                               "does not allow in a run config; write the values out",
                               event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise _RefusedYAML(f"nests more than {MAX_CONFIG_DEPTH} levels deep (a run "
                                   f"config needs 2)", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<' merges keys that the mapping's own keys may override
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: SafeLoader names that problem
                    continue
                if repeated:
                    shown = key if isinstance(key, str) and len(key) <= 60 else shown_value(key)
                    raise _RefusedYAML(f"has the key '{shown}' more than once (which value "
                                       f"is meant is unknown); keep one of them",
                                       key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_config_text(name: str) -> str:
    """The text of config file ``name``, at most MAX_CONFIG_BYTES of UTF-8."""
    with open(name, "rb") as stream:
        data = stream.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError(f"config file {name} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a "
                         f"run config is a few lines of YAML. Received: more than "
                         f"{MAX_CONFIG_BYTES} bytes")
    return data.decode("utf-8")


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config file strictly: the mapping it holds, without checking its keys.

    Every YAML starqso reads goes through this loader: no anchors or aliases, no key twice in
    one mapping, at most :data:`MAX_CONFIG_BYTES` and :data:`MAX_CONFIG_DEPTH` levels.

    Args:
        path: YAML file; an empty file gives ``{}``.

    Returns:
        The top-level mapping.

    Raises:
        InputError: the file is missing, unreadable, too large, not UTF-8 YAML, uses
            anchors/aliases, repeats a key, nests too deep, or is not a mapping; the message
            names the file (and the line of a repeated key).

    Example:
        >>> load_yaml("run.yaml")  # doctest: +SKIP
        {'preset': 'tiny', 'data': {'num_objects': 600}}
    """
    name = os.fspath(path)
    try:
        content = _read_config_text(name)
    except FileNotFoundError:
        raise InputError(f"config file does not exist: {name}") from None
    except IsADirectoryError:
        raise InputError(f"config path is a folder, expected a YAML file: {name}") from None
    except UnicodeDecodeError as error:
        raise InputError(f"config file is not UTF-8 text ({error.reason}): {name}") from None
    except OSError as error:
        raise InputError(f"cannot read config file {name}: {error.strerror}") from None
    try:
        data = yaml.load(content, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(problem).split())  # keep the message on one line
        if isinstance(error, _RefusedYAML):
            raise InputError(f"config file {name} {problem}{at}") from None
        raise InputError(f"config file {name} is not valid YAML: {problem}{at}") from None
    except (ValueError, RecursionError) as error:
        # ValueError: an integer of more than 4300 digits (Python's int() limit).
        problem = " ".join(str(error).split())[:200]
        raise InputError(f"config file {name} is not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail("the top level", "a mapping such as 'training: {batch_size: 64}'", data,
              source_suffix(name))
    return data
