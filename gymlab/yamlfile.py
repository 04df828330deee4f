"""Reading YAML files the lab is handed (configs, sweep files, run files): bounded, regular files only.

A file is read only when it is a regular file (a FIFO would block, a folder is no YAML), at most
:data:`MAX_YAML_BYTES`, as UTF-8; its YAML is parsed by a safe loader that refuses what would
expand past :data:`MAX_YAML_NODES` values or nest past :data:`MAX_YAML_DEPTH`, a key given twice,
and reads ``1e-4`` as a number (YAML 1.2). Every refusal is one line naming the file and its role.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from gymlab.errors import GymlabError

#: The largest YAML file read (configs, sweep files, run files are a few KB).
MAX_YAML_BYTES = 1_000_000
#: The most nodes a YAML document may hold once every alias is expanded as a copy of what it names:
#: a few hundred bytes of nested aliases (``&a [x, x], &b [*a, *a], ...``) otherwise grow into billions.
MAX_YAML_NODES = 100_000
#: The deepest nesting of lists and mappings a YAML document may have.
MAX_YAML_DEPTH = 64


class YamlLimitError(yaml.YAMLError):
    """A YAML document too large once its aliases are expanded, too deep, or recursive."""


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes of ``root`` with aliases expanded (without expanding them) and check the limits.

    The composer shares one node object among an anchor and its aliases, so the graph is small
    while the data it stands for may not be. Sizes are memoised per node object (linear in the
    document), and a node found inside itself (``&a [*a]``) is recursive data, refused too.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]  # (node, depth, children done)
    while stack:
        node, depth, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children: list[yaml.Node] = (
            [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        )
        if children_done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_YAML_NODES:
                raise YamlLimitError(f"it expands to more than {MAX_YAML_NODES:,} values (nested aliases?)")
            continue
        if key in sizes:
            continue
        if key in active:
            raise YamlLimitError("an alias refers to the list or mapping that contains it (recursive data)")
        if depth > MAX_YAML_DEPTH:
            raise YamlLimitError(f"it nests lists and mappings more than {MAX_YAML_DEPTH} deep")
        active.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)


class DuplicateKeyError(YamlLimitError):
    """A mapping that names one key twice: YAML would silently keep the last value."""


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses documents beyond :data:`MAX_YAML_NODES` and :data:`MAX_YAML_DEPTH`.

    It also refuses a mapping with a key given twice (PyYAML keeps the last silently), and reads
    ``1e-4`` as the number YAML 1.2 says it is (YAML 1.1, PyYAML's, makes it text without a dot).
    """

    def compose_document(self) -> yaml.Node | None:
        """Compose the document's node graph, then check its expanded size before anything is built."""
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping, refusing a key given twice (merge keys ``<<`` may repeat what they merge)."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(f"key '{key}' is given twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep)


# YAML 1.2 floats without a dot (1e-4, 2E6): text under YAML 1.1's rules, which PyYAML follows.
BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the safe, bounded loader (may raise :class:`yaml.YAMLError`)."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # a SafeLoader subclass: plain data only
    except RecursionError:  # the composer and constructor recurse per nesting level
        raise YamlLimitError(f"it nests lists and mappings more than {MAX_YAML_DEPTH} deep") from None
    except ValueError as exc:  # a constructor refusing a scalar, e.g. an integer past Python's 4,300 digits
        raise YamlLimitError(f"a value cannot be read ({str(exc).splitlines()[0][:120]})") from None


def read_text_file(path: Path, what: str = "config", limit: int = MAX_YAML_BYTES) -> str:
    """Read a small UTF-8 text file, with one-line errors for a missing, oversized or non-UTF-8 file.

    ``what`` names the file's role in messages (``config``, ``sweep file``, ``run file``).
    """
    try:
        # Non-blocking, so that opening a FIFO does not wait for a writer; only a regular file is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise GymlabError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise GymlabError(f"{what} {path} is {file_kind(kind)}, not a regular file: give the path of a YAML file")
    with os.fdopen(fd, "rb") as f:
        try:
            raw = f.read(limit + 1)
        except OSError as exc:
            raise GymlabError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > limit:
        raise GymlabError(f"{what} {path} is larger than {limit:,} bytes; is it the right file?")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GymlabError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words ("a folder", "a FIFO (named pipe)", ...)."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a special file"


def load_yaml(path: Path, what: str = "config") -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing, oversized, non-UTF-8, malformed or non-mapping file.

    ``what`` names the file's role in messages (``config``, ``sweep file``, ``run file``). Aliases are
    allowed but bounded (see :class:`BoundedLoader`).
    """
    text = read_text_file(path, what)
    try:
        data = parse_yaml(text)
    except YamlLimitError as exc:
        raise GymlabError(f"{what} {path} is refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GymlabError(f"{what} {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GymlabError(f"{what} {path} must be a mapping of key: value, not a {type(data).__name__}")
    return data
