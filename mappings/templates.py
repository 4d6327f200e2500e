"""Key templates: the small pattern language of the mapping files.

A template is a parameter name with placeholders, e.g. ``encoder.layers.{i}.attn_ln.{p}``:

- ``{i}`` .. any name made of one letter or ``n``/``layer``/``stage``/``block``: digits (a layer index)
- ``{name}``: one dotted component (``[^.]+``)
- ``{name:a|b}``: one of the listed alternatives
- ``{name*}``: anything, dots included (for whole subtrees)

Templates compile to anchored regexes with named groups, and render back from the captured values, which
is what makes every rule runnable in both directions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

_PLACEHOLDER = re.compile(r"\{(\w+)(\*|:[^}]*)?\}")
_INDEX_NAMES = {"i", "j", "k", "n", "layer", "stage", "block"}


@dataclass(frozen=True)
class Template:
    text: str

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(m.group(1) for m in _PLACEHOLDER.finditer(self.text))

    @cached_property
    def regex(self) -> re.Pattern:
        parts, last = [], 0
        for m in _PLACEHOLDER.finditer(self.text):
            parts.append(re.escape(self.text[last:m.start()]))
            name, modifier = m.group(1), m.group(2)
            if modifier == "*":
                body = r".+?"
            elif modifier:
                body = "|".join(re.escape(a) for a in modifier[1:].split("|"))
            elif name in _INDEX_NAMES:
                body = r"\d+"
            else:
                body = r"[^.]+"
            parts.append(f"(?P<{name}>{body})")
            last = m.end()
        parts.append(re.escape(self.text[last:]))
        return re.compile("^" + "".join(parts) + "$")

    def match(self, key: str) -> dict[str, str] | None:
        m = self.regex.match(key)
        return m.groupdict() if m else None

    def render(self, values: dict[str, str]) -> str:
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)


def collapse_keys(keys, limit: int = 12) -> str:
    """``a.0.w, a.1.w, a.2.w, b`` -> ``a.{0..2}.w, b``: readable lists of many layer-indexed keys."""
    groups: dict[str, list[tuple[int, ...]]] = {}
    for key in sorted(keys):
        numbers = tuple(int(n) for n in re.findall(r"(?<=\.)\d+(?=\.|$)", key))
        shape = re.sub(r"(?<=\.)\d+(?=\.|$)", "#", key)
        groups.setdefault(shape, []).append(numbers)
    rendered = []
    for shape, numbers in groups.items():
        if len(numbers) == 1 or not numbers[0]:
            rendered.extend(_fill(shape, n) for n in numbers)
            continue
        columns = list(zip(*numbers))
        pieces = [_span(sorted(set(column))) for column in columns]
        rendered.append(_fill(shape, pieces))
    text = ", ".join(_visible(r) for r in rendered[:limit])
    if len(rendered) > limit:
        text += f", ... ({len(rendered) - limit} more groups)"
    return text


def _visible(text: str) -> str:
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _span(values: list[int]) -> str:
    """``values`` sorted and distinct; counted, never expanded (an index may be 10**8)."""
    if len(values) == 1:
        return str(values[0])
    if values[-1] - values[0] + 1 == len(values):
        return "{%d..%d}" % (values[0], values[-1])
    shown = ",".join(map(str, values[:8]))
    return "{" + shown + (f",... {len(values) - 8} more" if len(values) > 8 else "") + "}"


def _fill(shape: str, numbers) -> str:
    it = iter(numbers)
    return re.sub("#", lambda _: str(next(it)), shape)
