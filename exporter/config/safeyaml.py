"""Reading operator-supplied files safely: any bytes give a `ConfigError`, never a traceback,
a hang or unbounded memory.

Every file the exporter reads from an operator (the config file, the web config file, target
files, password files) goes through here. What it bounds, and why:
- size: a file is read up to a cap and refused beyond it (a mistaken path to a log file or
  /dev/zero must not fill memory); only regular files (opening a FIFO with no writer blocks);
- encoding: strict UTF-8, with the position of the first bad byte;
- YAML nesting: PyYAML composes nodes recursively, so deep nesting would end in a
  RecursionError; refused beyond `MAX_DEPTH` levels;
- YAML aliases: an alias reuses a node, so a few lines of nested aliases ("billion laughs")
  stand for an exponential number of nodes once anything walks them (the `${VAR}` expansion
  and validation do); the expanded size is counted while composing and refused beyond
  `MAX_NODES`, and an alias to a node that contains it (a cycle) is refused;
- values: a scalar that resolves to an impossible value (`2020-13-45` as a date, an integer of
  thousands of digits) is a problem at its line, not an exception.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from exporter.config.errors import ConfigError

# Caps: above a config file of 10,000 targets, below what takes seconds and a lot of memory
# to compose (figures: docs/benchmarks.md, "Figures that were in code comments").
MAX_YAML_BYTES = 4 << 20
MAX_SECRET_BYTES = 64 << 10
MAX_DEPTH = 64
MAX_NODES = 200_000
# Digits of an integer scalar (int() of a huge one is refused by Python itself).
MAX_INT_DIGITS = 100


class _LimitError(yaml.YAMLError):
    """A limit of this module, with where it was hit."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _Events(CParser):
        """The YAML event stream of a text, from libyaml (an order of magnitude faster than
        the pure-Python parser); nodes are still composed in Python, within the bounds."""

else:  # pragma: no cover
    # One of the two classes is defined, as PyYAML was built: the checker sees both.
    class _Events(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        """The YAML event stream of a text, from the pure-Python parser."""

        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


class _BoundedLoader(
    yaml.composer.Composer,
    _Events,
    yaml.constructor.SafeConstructor,
    yaml.resolver.Resolver,
):
    """A safe loader that bounds nesting depth and the size of the document with aliases
    expanded, and turns impossible scalar values into YAML errors with a position."""

    def __init__(self, stream: str) -> None:
        _Events.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0
        # id(node) -> size of the node with its aliases expanded; absent while composing.
        self._sizes: dict[int, int] = {}
        # Values composed so far, aliases counted at their expanded size: checked as it
        # grows, so that a huge flat document stops at the cap rather than at its end.
        self._total = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = cast(yaml.AliasEvent, self.peek_event())
            node = self.anchors.get(event.anchor)
            if node is not None and id(node) not in self._sizes:
                raise _LimitError(
                    f"alias *{event.anchor} refers to a node that contains it (a cycle)",
                    event.start_mark,
                )
            if node is not None:
                self._count(self._sizes[id(node)], event.start_mark)
            return super().compose_node(parent, index)
        mark = cast(yaml.Event, self.peek_event()).start_mark  # composing: an event is next
        self._count(1, mark)
        if self._depth >= MAX_DEPTH:
            raise _LimitError(f"nested more than {MAX_DEPTH} levels deep", mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = 1 + self._children_size(node)
        return node

    def _count(self, values: int, mark: Any) -> None:
        self._total += values
        if self._total > MAX_NODES:
            raise _LimitError(f"more than {MAX_NODES:,} values once aliases are expanded", mark)

    def _children_size(self, node: Any) -> int:
        if isinstance(node, yaml.SequenceNode):
            return sum(self._sizes[id(child)] for child in node.value)
        if isinstance(node, yaml.MappingNode):
            return sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        return 0

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:
            raise ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark
            ) from None

    def construct_yaml_int(self, node: Any) -> int:
        value = self.construct_scalar(node)
        if sum(c.isdigit() for c in value) > MAX_INT_DIGITS:
            raise ConstructorError(
                None, None, f"an integer of more than {MAX_INT_DIGITS} digits", node.start_mark
            )
        return super().construct_yaml_int(node)


# The stubs bound a constructor's loader to PyYAML's own loader classes; this one is composed
# of the same parts.
_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)  # type: ignore[type-var]


def read_bytes(path: str | os.PathLike[str], source: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, or a ConfigError. `source` names
    the file in problems (a config key, say: then the path follows it)."""
    named = source if source == str(path) else f"{source}: {path}"

    def cannot_read(why: str) -> ConfigError:
        where = f"{source}: cannot read" if source == str(path) else f"{source}: cannot read {path}"
        return ConfigError([f"{where}: {why}"])

    try:
        # O_NONBLOCK: opening a FIFO nobody writes to would otherwise wait forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise cannot_read(exc.strerror or type(exc).__name__) from None
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise cannot_read("a directory" if stat.S_ISDIR(kind) else "not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise cannot_read(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ConfigError([f"{named}: larger than {_size(max_bytes)}: refused"])
    return data


def decode_utf8(data: bytes, source: str, secret: bool = False) -> str:
    """`data` as UTF-8, or a ConfigError at the first bad byte (not shown for a secret)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = "" if secret else f" (byte 0x{data[exc.start]:02x})"
        raise ConfigError(
            [f"{source}: line {line}, column {column}: not valid UTF-8{byte}"]
        ) from None


def read_text(
    path: str | os.PathLike[str],
    source: str | None = None,
    max_bytes: int = MAX_YAML_BYTES,
    secret: bool = False,
) -> str:
    """A bounded, strictly UTF-8 text file (for a password file: `secret=True`, whose errors
    never quote its bytes)."""
    source = source or str(path)
    named = source if source == str(path) else f"{source}: {path}"
    return decode_utf8(read_bytes(path, source, max_bytes), named, secret)


def parse_yaml(text: str, source: str) -> Any:
    """One YAML document, bounded in nesting and expanded size; problems as a ConfigError."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # refuses a character YAML does not allow
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: {_yaml_problem(exc)}"]) from None
    except RecursionError:  # not expected within MAX_DEPTH; a bound, not a traceback
        raise ConfigError([f"{source}: (parse): invalid YAML: nested too deeply"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(
    path: str | os.PathLike[str], source: str | None = None, max_bytes: int = MAX_YAML_BYTES
) -> Any:
    """Read and parse a YAML file within every bound of this module: the data, or a
    ConfigError naming the file and the problem."""
    source = source or str(path)
    return parse_yaml(read_text(Path(path), source, max_bytes), source)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        # A character YAML does not allow (a control character, say), with its offset.
        return (
            f"character {exc.position + 1}: invalid YAML: "
            f"control character {exc.character!r} is not allowed"
            if isinstance(exc.character, str)
            else f"character {exc.position + 1}: invalid YAML: {exc.reason}"
        )
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(parse)"
    problem = getattr(exc, "problem", None) or str(exc)
    if (
        isinstance(exc, ComposerError)
        and exc.context
        and "expected a single document" in (exc.context or "")
    ):
        problem = "more than one YAML document in the file"
    return f"{where}: invalid YAML: {problem}"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"
