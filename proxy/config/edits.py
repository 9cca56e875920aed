"""`add` / `rm`: edit sites.yaml in place with line edits, keeping every comment and all other text.

yaml.compose says where each site's key and value sit (line and column); only those lines change,
nothing is re-serialised. add_site and remove_site are pure (text in, text out); write_atomically
is the one function that touches the disk. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import secrets
from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.config.parse import RootChecker, normalize_site_name, parse_config
from proxy.errors import ConfigError, ConfigErrors, ProxyError

try:  # the same loader as config.py, so both read the file the same way
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

_STR, _INT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int"
_EMPTY_VALUES = ("", "~", "null")  # what config.parse_sites reads as "no sites yet"
_LIST_AT_MOST = 12  # an unknown name lists the sites when there are this many or fewer

Position = tuple[int, int]  # (line, col), both 0-based as yaml marks count them


class SitesFileError(ProxyError):
    """sites.yaml cannot be edited as asked; the message says what to do instead."""


def _no_disk(path: str) -> str | None:
    return None


# ---------------------------------------------------------------- the public functions


def add_site(text: str, file: str, name: str, target: str, *, replace: bool = False, check_root: RootChecker = _no_disk) -> str:
    """Return the new file text with `name: target` added (or its value replaced when replace=True).

    The new line goes right after the last site's value (before any comment lines that follow the
    block), indented like the other sites. With replace=True an existing site (`app1` and
    `app1.localhost` are the same) gets the new one-line value on its key line; a comment after a
    one-line value stays. Raise SitesFileError when the file cannot be edited, ConfigErrors when the
    result would not be a valid config.
    """
    name, target = _one_line(name, "NAME"), _one_line(target, "TARGET")
    doc = _Document.read(text, file, check_root)
    entry = doc.find(normalize_site_name(name))
    if entry is not None and not replace:
        raise SitesFileError(f"{entry.host} is already in {file} at line {entry.key_line + 1} ({doc.summary(entry)}); use --replace to change it")
    doc.check_original(check_root, skip=range(entry.key_line, entry.value_end[0] + 1) if entry else range(0))
    value_text = yaml_target(target)
    if entry is not None:
        lines = doc.replaced(entry, value_text)
        expected = [(e.name, _value_shape(value_text) if e is entry else e.shape) for e in doc.entries]
    else:
        key_text = yaml_key(name)
        lines = doc.appended(key_text, value_text)
        expected = [(e.name, e.shape) for e in doc.entries] + [(name, _value_shape(value_text))]
    return doc.finish(lines, expected, check_root)


def remove_site(text: str, file: str, name: str) -> str:
    """Return the new file text without the site `name`.

    Removed: the key line through the end of its value (a multi-line block value included), the
    more-indented comment lines right below it (commented-out options of that site), and the comment
    lines directly above it at the key's indentation with no blank line in between (a comment that
    describes the site). Kept: comments separated by a blank line, comments below it at the key's
    indentation (such as the commented-out examples at the end of the file), and every other site.
    When the site sat between two blank lines, one of them goes too.
    """
    name = _one_line(name, "NAME")
    doc = _Document.read(text, file, _no_disk)
    host = normalize_site_name(name)
    entry = doc.find(host)
    if entry is None:
        raise SitesFileError(doc.unknown(host))
    first, last = doc.removal_range(entry)
    # A site being removed may be the broken part; only the rest of the file must be valid.
    doc.check_original(_no_disk, skip=range(first, last + 1))
    lines = list(doc.lines)
    del lines[first : last + 1]
    if first > 0 and _is_blank(lines[first - 1]) and (first == len(lines) or _is_blank(lines[first])):
        del lines[first - 1]
    return doc.finish(lines, [(e.name, e.shape) for e in doc.entries if e is not entry], _no_disk)


def write_atomically(path: str, text: str) -> None:
    """Replace the file at `path` with `text` so readers see the old or the new file, never half of one.

    The temporary file sits in the same folder (os.replace cannot cross file systems) and gets the
    original's mode (0o644 for a new file); a symlinked sites.yaml stays a symlink. Raise
    SitesFileError if the file cannot be written; the temporary file never stays behind.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    try:
        mode: int | None = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise SitesFileError(f"cannot read {path}: {exc.strerror}") from None
    temp = ""
    try:
        for _ in range(10):
            temp = os.path.join(folder, f".{os.path.basename(target)}.{secrets.token_hex(4)}.tmp")
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644 if mode is None else mode)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"no free temporary name in {folder}")
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # os.open's mode passes through the umask; keep the original's exactly
            with open(fd, "wb", closefd=False) as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.close(fd)
        os.replace(temp, target)
        temp = ""
        _fsync_folder(folder)
    except OSError as exc:
        raise SitesFileError(f"cannot write {path}: {exc.strerror or exc}; check the folder's permissions and free space") from None
    finally:
        if temp:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _fsync_folder(folder: str) -> None:
    # The rename lives in the folder's entry list: without this a power cut can bring the old file back.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself is done
    finally:
        os.close(fd)


# ---------------------------------------------------------------- YAML text for names and targets


def yaml_key(name: str) -> str:
    """Return NAME as a mapping key: as typed when YAML reads it back as that string, else in double quotes."""
    try:
        root = yaml.compose(f"{name}: 1\n", Loader=_Loader)
    except yaml.YAMLError:
        return _double_quoted(name)
    if isinstance(root, MappingNode) and len(root.value) == 1:
        key = root.value[0][0]
        if isinstance(key, ScalarNode) and not key.style and key.tag == _STR and key.value == name:
            return name
    return _double_quoted(name)


def yaml_target(target: str) -> str:
    """Return TARGET as a one-line YAML value that means what the user typed.

    A flow list or mapping (`[8000, 8001]`, `{root: ./public}`) stays as written; a port, address or
    URL stays plain when YAML reads it back unchanged; anything else, such as `[::1]:4000` (which
    YAML would take for the start of a list), is written in double quotes.
    """
    node = _value_node(target)
    if isinstance(node, (SequenceNode, MappingNode)) and node.flow_style and target[:1] in "[{":
        return target
    if isinstance(node, ScalarNode) and not node.style and node.tag in (_STR, _INT) and node.value == target:
        return target
    return _double_quoted(target)


def _double_quoted(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _value_node(value_text: str) -> Node | None:
    try:
        root = yaml.compose(f"k: {value_text}\n", Loader=_Loader)
    except yaml.YAMLError:
        return None
    if isinstance(root, MappingNode) and len(root.value) == 1:
        node: Node = root.value[0][1]
        return node
    return None


def _value_shape(value_text: str) -> object:
    node = _value_node(value_text)
    return None if node is None else _shape(node)


def _shape(node: Node) -> object:
    """Return what a node means, without positions or styles: what an edit must keep for other sites."""
    if isinstance(node, MappingNode):
        return ("map", tuple((_shape(k), _shape(v)) for k, v in node.value))
    if isinstance(node, SequenceNode):
        return ("seq", tuple(_shape(item) for item in node.value))
    return (node.tag, node.value)


def _one_line(value: str, what: str) -> str:
    value = value.strip()
    if not value or "\n" in value or "\r" in value:
        raise SitesFileError(f"{what} must be one non-empty line, for example `add app1 3000`")
    return value


# ---------------------------------------------------------------- the file as lines and nodes


@dataclass(frozen=True, slots=True)
class _Entry:
    """One site of the `sites:` block and the lines it occupies (0-based)."""

    name: str  # the key's value as written, without quotes
    host: str
    key: ScalarNode
    value: Node
    value_end: Position  # just past the value's last character
    last_line: int  # value_end's line, plus more-indented comment lines right below it
    shape: object

    @property
    def key_line(self) -> int:
        return int(self.key.start_mark.line)


class _Document:
    """sites.yaml split into lines, with the `sites:` key and its entries located."""

    def __init__(self, text: str, file: str, root: Node | None) -> None:
        self.bom = "\ufeff" if text.startswith("\ufeff") else ""
        body = text[len(self.bom) :]
        self.text, self.file, self.root = text, file, root
        self.lines = [line + "\n" for line in body.split("\n")]
        self.lines[-1] = self.lines[-1][:-1]
        if not self.lines[-1]:
            self.lines.pop()
        self.newline = "\r\n" if self.lines and self.lines[0].endswith("\r\n") else "\n"
        self.sites_key: ScalarNode | None = None
        self.sites_value: Node | None = None
        self.entries: list[_Entry] = []

    @classmethod
    def read(cls, text: str, file: str, check_root: RootChecker) -> _Document:
        try:
            root = yaml.compose(text, Loader=_Loader)
        except yaml.YAMLError:
            _check_text(text, file, check_root, range(0))
            raise SitesFileError(f"{file} is not valid YAML; fix it first (`localhost-proxy check` shows where)") from None
        doc = cls(text, file, root)
        if root is None:
            return doc  # empty, or only comments
        if not isinstance(root, MappingNode):
            doc.check_original(check_root, range(0))
            raise SitesFileError(f"{file}: the top level must be a mapping with `sites:`")
        if root.flow_style:
            raise doc.flow_style_error(root)
        for key, value in root.value:
            if isinstance(key, ScalarNode) and key.value == "sites":
                doc.sites_key, doc.sites_value = key, value
                break
        value = doc.sites_value
        if value is None or _is_empty(value):
            doc.check_positions([doc.sites_key])
            return doc
        if not isinstance(value, MappingNode) or not all(isinstance(k, ScalarNode) for k, _ in value.value):
            doc.check_original(check_root, range(0))
            raise SitesFileError(f"{file}: `sites:` must be a mapping of names to targets")
        if value.flow_style:
            raise doc.flow_style_error(value)
        doc.check_positions([doc.sites_key, *(k for k, _ in value.value)])
        doc.entries = [doc.entry(k, v) for k, v in value.value]
        return doc

    # -- reading

    def check_positions(self, nodes: list[Node | None]) -> None:
        """Make sure yaml's line numbers are our line numbers (they differ for \\r alone or U+2028)."""
        starts = [0]
        for line in self.lines:
            starts.append(starts[-1] + len(line))
        for node in nodes:
            if node is None:
                continue
            mark = node.start_mark
            if mark.line >= len(self.lines) or starts[mark.line] + mark.column != mark.index:
                raise SitesFileError(f"{self.file} uses line breaks other than \\n or \\r\\n; save it with ordinary line endings and try again")

    def entry(self, key: Node, value: Node) -> _Entry:
        assert isinstance(key, ScalarNode)  # read() refused other keys
        name = str(key.value)
        key_end: Position = (key.end_mark.line, key.end_mark.column)
        value_end = max(key_end, self.content_end(value))
        last = value_end[0]
        key_col = key.start_mark.column
        while last + 1 < len(self.lines) and _is_comment(self.lines[last + 1]) and _indent(self.lines[last + 1]) > key_col:
            last += 1
        return _Entry(name, normalize_site_name(name), key, value, value_end, last, _shape(value))

    def content_end(self, node: Node) -> Position:
        """Return where a value's last character ends.

        A block collection's end_mark lies past the comments and blank lines that follow it, and a
        block scalar's past its trailing blank lines; the last child (or the last text line) does not.
        """
        end: Position = (node.end_mark.line, node.end_mark.column)
        if isinstance(node, ScalarNode):
            if node.style not in ("|", ">"):
                return end
            line = end[0] if end[1] > 0 else end[0] - 1
            while line > node.start_mark.line and _is_blank(self.lines[line]):
                line -= 1
            return (line, len(self.lines[line].rstrip("\r\n")))
        if not isinstance(node, (MappingNode, SequenceNode)) or node.flow_style or not node.value:
            return end
        if isinstance(node, MappingNode):
            last_key, last_value = node.value[-1]
            return max(self.content_end(last_key), self.content_end(last_value))
        return self.content_end(node.value[-1])

    def find(self, host: str) -> _Entry | None:
        return next((e for e in self.entries if e.host == host), None)

    def key_text(self, entry: _Entry) -> str:
        return self.lines[entry.key_line][entry.key.start_mark.column : entry.key.end_mark.column]

    def summary(self, entry: _Entry) -> str:
        """Return `app1: 3000` for a one-line site, `api.localhost, lines 12-15` for a block."""
        start = entry.value.start_mark
        if start.line == entry.key_line == entry.value_end[0]:
            return f"{self.key_text(entry)}: {self.lines[entry.key_line][start.column : entry.value_end[1]]}"
        return f"{self.key_text(entry)}, lines {entry.key_line + 1}-{entry.value_end[0] + 1}"

    def unknown(self, host: str) -> str:
        names = {e.host: e.name for e in self.entries}
        close = difflib.get_close_matches(host, list(names), n=1, cutoff=0.6)
        message = f"there is no site {host} in {self.file}"
        if close:
            message += f" (did you mean {names[close[0]]}?)"
        if not names:
            return message + "; it has no sites yet"
        if len(names) <= _LIST_AT_MOST:
            return message + f"; its sites are: {', '.join(names.values())}"
        return message + f"; it has {len(names)} sites (`localhost-proxy check` lists them)"

    def flow_style_error(self, node: Node) -> SitesFileError:
        mark = node.start_mark
        return SitesFileError(
            f"{self.file}:{mark.line + 1}:{mark.column + 1}: this mapping is written in flow style ({{...}}); "
            "add and rm edit the block style, one site per line, so convert it first, for example:\n"
            "sites:\n  app1: 3000\n  app2: 127.0.0.1:5173"
        )

    def check_original(self, check_root: RootChecker, skip: range) -> None:
        """Raise SitesFileError if the file as it is has problems outside the lines in `skip`."""
        text = self.text
        if self.sites_key is None and isinstance(self.root, (MappingNode, type(None))):
            # No `sites:` yet: judge the rest as it will be once the block is appended.
            text += ("" if not text or text.endswith("\n") else self.newline) + "sites:" + self.newline
        _check_text(text, self.file, check_root, skip)

    # -- editing; each returns new lines and leaves self.lines alone

    def appended(self, key_text: str, value_text: str) -> list[str]:
        lines = list(self.lines)
        nl = self.newline
        if self.sites_key is None:
            _end_with_newline(lines, nl)
            return [*lines, f"sites:{nl}", f"  {key_text}: {value_text}{nl}"]
        if self.entries:
            at = self.entries[-1].last_line + 1
            indent = self.entries[0].key.start_mark.column
        else:  # `sites:` with nothing (or ~, null, {}) after it: the value gives way to a block
            assert self.sites_value is not None
            key_line = self.sites_key.start_mark.line
            value = self.sites_value
            start, end = value.start_mark, value.end_mark
            if start.index != end.index:
                head = lines[start.line][: start.column]
                lines[start.line] = (head.rstrip(" \t") if start.line == key_line else head) + lines[end.line][end.column :]
                del lines[start.line + 1 : end.line + 1]
            at = key_line + 1
            indent = self.sites_key.start_mark.column + 2
        _end_with_newline(lines, nl, before=at)
        lines.insert(at, f"{' ' * indent}{key_text}: {value_text}{nl}")
        return lines

    def replaced(self, entry: _Entry, value_text: str) -> list[str]:
        lines = list(self.lines)
        key_line = entry.key_line
        start, end = entry.value.start_mark, entry.value_end
        if (start.line, start.column) < (entry.key.end_mark.line, entry.key.end_mark.column):
            raise SitesFileError(f"{self.file}:{key_line + 1}: {entry.name}'s value is a YAML alias (*name); edit that line by hand")
        if start.line == key_line and start.index != entry.value.end_mark.index:
            head, tail_line, tail_col = lines[key_line][: start.column], end[0], end[1]
        else:  # the value sits below the key (or is missing): keep the key line's comment
            colon = lines[key_line].find(":", entry.key.end_mark.column)
            if colon < 0:
                raise SitesFileError(f"{self.file}:{key_line + 1}: cannot find the `:` after {entry.name}; edit that line by hand")
            head, tail_line, tail_col = lines[key_line][: colon + 1] + " ", key_line, colon + 1
        if not head.endswith((" ", "\t")):
            head += " "
        tail = lines[tail_line][tail_col:]
        spaces = len(tail) - len(tail.lstrip(" \t"))
        if tail_line == key_line and tail.lstrip(" \t").startswith("#"):
            # Keep the comment in its column when the new value leaves room for it.
            width = max(1, tail_col + spaces - len(head) - len(value_text))
            tail = " " * width + tail[spaces:]
        lines[key_line : max(key_line, end[0]) + 1] = [head + value_text + tail]
        return lines

    def removal_range(self, entry: _Entry) -> tuple[int, int]:
        first = entry.key_line
        col = entry.key.start_mark.column
        while first > 0 and _is_comment(self.lines[first - 1]) and _indent(self.lines[first - 1]) == col:
            first -= 1
        return first, entry.last_line

    def finish(self, lines: list[str], expected_sites: list[tuple[str, object]], check_root: RootChecker) -> str:
        """Return the edited text after checking it says what was meant and is a valid config."""
        new_text = self.bom + "".join(lines)
        try:
            new_root = yaml.compose(new_text, Loader=_Loader)
        except yaml.YAMLError:
            new_root = None  # parse_config below says where and why
        if new_root is not None and (_sites_shapes(new_root) != expected_sites or _other_shapes(new_root) != _other_shapes(self.root)):
            raise SitesFileError(f"could not edit {self.file} safely (its layout is unusual); nothing was changed, so edit it by hand")
        parse_config(new_text, self.file, check_root=check_root)
        return new_text


def _check_text(text: str, file: str, check_root: RootChecker, skip: range) -> None:
    try:
        parse_config(text, file, check_root=check_root)
    except ConfigErrors as exc:
        errors: list[ConfigError] = [e for e in exc.errors if e.mark.line - 1 not in skip]
        if errors:
            lines = "\n".join(str(e) for e in errors)
            raise SitesFileError(f"{lines}\n{file} already has the problems above; fix them first, then run the command again") from None


def _sites_shapes(root: Node) -> list[tuple[str, object]]:
    for key, value in root.value if isinstance(root, MappingNode) else ():
        if isinstance(key, ScalarNode) and key.value == "sites" and isinstance(value, MappingNode):
            return [(str(k.value), _shape(v)) for k, v in value.value]
    return []


def _other_shapes(root: Node | None) -> list[object]:
    if not isinstance(root, MappingNode):
        return []
    return [(_shape(k), _shape(v)) for k, v in root.value if not (isinstance(k, ScalarNode) and k.value == "sites")]


def _is_empty(node: Node) -> bool:
    if isinstance(node, ScalarNode):
        return node.value in _EMPTY_VALUES
    return isinstance(node, MappingNode) and not node.value


def _end_with_newline(lines: list[str], newline: str, before: int | None = None) -> None:
    """Give the line before index `before` (default: the last line) its line break if it lacks one."""
    index = len(lines) - 1 if before is None else before - 1
    if 0 <= index < len(lines) and not lines[index].endswith("\n"):
        lines[index] += newline


def _is_blank(line: str) -> bool:
    return not line.strip()


def _is_comment(line: str) -> bool:
    return line.lstrip(" \t").startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))
