"""The mapping engine: runs a family's declarative rule file over a state dict, in either direction.

Rule kinds (``mappings/<family>.toml`` tables), one class each that knows both directions:

- ``rename`` (`Rename`)  one key to one key (``transpose = true`` swaps the two dims of a matrix on the way)
- ``split``  (`Split`)   one key to several along ``dim`` (fused q/k/v); backwards it concatenates
- ``drop``   (`Drop`)    a source key with no target, with the reason; backwards it cannot be restored
- ``derive`` (`Derive`)  a source buffer the target recomputes in code; backwards it is regenerated when the
                         caller supplies a generator for it, otherwise reported as not restored
- ``tie``    (`Tie`)     a source key that must equal another source key (shared embeddings): checked bit-exactly
                         and consumed; its target is derived by weight tying. Backwards it is written as a copy.

Any rule may carry ``when = "flag"`` / ``when = "!flag"``: it applies only if the converter's flag says so
(``when = "keep_{head}"`` names the flag through the matched key's placeholders).
Precedence: tie, drop, derive, split, rename; within a kind, file order; the first matching rule wins.

Planning touches only names and shapes, so a strict check (every input key consumed, every expected output
key produced or tied, every shape right) fails before a single tensor is read or anything is written.
Running the plan yields one output tensor at a time.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, ClassVar, Collection, Iterator, Mapping as MappingType

import torch

from hfport.errors import MappingError
from hfport.mappings.templates import Template, collapse_keys

@dataclass(frozen=True)
class Rule:
    """One mapping rule; each subclass says what it does to a matched key in either direction.

    ``source`` templates name original keys, ``target`` templates converted ones. ``when`` may name placeholders
    (``keep_{head}``): they are filled from the matched key."""

    source: tuple[Template, ...]
    target: tuple[Template, ...]
    reason: str = ""
    when: str | None = None
    kind: ClassVar[str] = ""

    def applies(self, flags: MappingType[str, bool], values: MappingType[str, str] | None = None) -> bool:
        if self.when is None:
            return True
        if "{" in self.when and values is None:
            return True  # decided per key, once the key's placeholders are known
        when = Template(self.when).render(values) if "{" in self.when else self.when
        negate = when.startswith("!")
        name = when.lstrip("!")
        if name not in flags:
            raise MappingError(f"mapping rule needs the flag '{name}', which the converter did not set")
        return bool(flags[name]) != negate

    def matching(self, forward: bool) -> tuple[Template, ...]:
        """The templates an input key is matched against in this direction."""
        return self.source if forward else self.target

    def forward(self, draft: "_Draft", key: str, template: Template, values: dict[str, str]) -> None:
        raise NotImplementedError

    def backward(self, draft: "_Draft", key: str, template: Template, values: dict[str, str]) -> None:
        raise NotImplementedError

    def finish_forward(self, draft: "_Draft") -> None:
        """After every input key is claimed (forward)."""

    def finish_backward(self, draft: "_Draft") -> None:
        """After every input key is claimed and split groups are joined (backward)."""

    @classmethod
    def from_toml(cls, entry: dict, path: Path) -> "Rule":
        rule = cls(_templates(entry["source"]), _templates(entry["target"]), entry.get("reason", ""), entry.get("when"))
        rule.validate(entry, path)
        return rule

    def validate(self, entry: dict, path: Path) -> None:
        if set(self.source[0].names) != {n for t in self.target for n in t.names}:
            raise MappingError(f"{path}: both sides of a rule must use the same placeholders ({entry})")


@dataclass(frozen=True)
class Rename(Rule):
    """One key to one key; ``transpose = true`` swaps the two dims of a matrix on the way (either way)."""

    transpose: bool = False
    kind: ClassVar[str] = "rename"

    def forward(self, draft, key, template, values):
        draft.steps.append(self._copy(key, self.target[0].render(values), draft))

    def backward(self, draft, key, template, values):
        draft.steps.append(self._copy(key, self.source[0].render(values), draft))

    def _copy(self, key: str, out: str, draft: "_Draft") -> "Step":
        shape = tuple(draft.input_shapes[key])
        if self.transpose:
            shape = shape[::-1]
        expected = draft.expected
        if expected is not None and out in expected and tuple(expected[out]) != shape:
            raise MappingError(f"shape mismatch: {key} {list(draft.input_shapes[key])} -> {out} expects {list(expected[out])}")
        return Step("copy", [key], [out], transpose=self.transpose)

    @classmethod
    def from_toml(cls, entry, path):
        rule = cls(_templates(entry["source"]), _templates(entry["target"]), entry.get("reason", ""), entry.get("when"),
                   transpose=bool(entry.get("transpose", False)))
        if len(rule.source) != 1 or len(rule.target) != 1:
            raise MappingError(f"{path}: rename rules map one template to one template ({entry})")
        rule.validate(entry, path)
        return rule


@dataclass(frozen=True)
class Split(Rule):
    """One key to several along ``dim`` (fused q/k/v); backwards the pieces are gathered and concatenated."""

    dim: int = 0
    kind: ClassVar[str] = "split"

    def forward(self, draft, key, template, values):
        outs = [t.render(values) for t in self.target]
        shape, expected = draft.input_shapes[key], draft.expected
        total = shape[self.dim] if shape else 0
        if expected is not None and all(o in expected for o in outs):
            sizes = [expected[o][self.dim] for o in outs]
            rest = [tuple(s for d, s in enumerate(expected[o]) if d != self.dim) for o in outs]
            own = tuple(s for d, s in enumerate(shape) if d != self.dim)
            if sum(sizes) != total or any(r != own for r in rest):
                raise MappingError(f"shape mismatch: {key} {list(shape)} cannot be split into "
                                   + ", ".join(f"{o} {list(expected[o])}" for o in outs))
        else:
            if total % len(outs):
                raise MappingError(f"shape mismatch: {key} {list(shape)} does not split in {len(outs)}")
            sizes = [total // len(outs)] * len(outs)
        draft.steps.append(Step("split", [key], outs, dim=self.dim, sizes=sizes))

    def backward(self, draft, key, template, values):  # joined once the whole group is known (see join)
        draft.groups.setdefault((id(self), tuple(sorted(values.items()))), (self, {}))[1][template.text] = key

    def join(self, draft: "_Draft", values: dict[str, str], members: dict[str, str]) -> None:
        wanted = [t.render(values) for t in self.target]
        missing = [w for w, t in zip(wanted, self.target) if t.text not in members]
        if missing:
            raise MappingError(f"{draft.source_name}: incomplete group, missing {collapse_keys(missing)}")
        draft.steps.append(Step("concat", wanted, [self.source[0].render(values)], dim=self.dim))

    @classmethod
    def from_toml(cls, entry, path):
        rule = cls(_templates(entry["source"]), _templates(entry["target"]), entry.get("reason", ""), entry.get("when"),
                   dim=int(entry.get("dim", 0)))
        if len(rule.source) != 1 or len(rule.target) < 2:
            raise MappingError(f"{path}: split rules map one template to several ({entry})")
        rule.validate(entry, path)
        return rule


@dataclass(frozen=True)
class Tie(Rule):
    """A source key that must equal another source key (shared embeddings): checked bit-exactly and consumed; its
    target is derived by weight tying. Backwards it is written as a copy of the key it must equal."""

    same_as: Template | None = None  # the source key this one must equal
    tied_to: Template | None = None  # the target key that owns the weight
    kind: ClassVar[str] = "tie"

    def forward(self, draft, key, template, values):
        owner = self.same_as.render(values)
        if owner not in draft.input_shapes:
            raise MappingError(f"{key} is declared tied to {owner}, which the checkpoint lacks")
        if tuple(draft.input_shapes[owner]) != tuple(draft.input_shapes[key]):
            raise MappingError(f"shape mismatch: {key} {list(draft.input_shapes[key])} is tied to {owner} "
                               f"{list(draft.input_shapes[owner])}")
        draft.steps.append(Step("check", [key, owner], []))
        draft.tied[self.target[0].render(values)] = self.tied_to.render(values)

    def backward(self, draft, key, template, values):
        owner = self.tied_to.render(values)
        if owner in draft.input_shapes:
            draft.steps.append(Step("check", [key, owner], []))

    def finish_forward(self, draft):
        # a tied alias some writers leave out of the file (its owner is there) is still derived by tying
        for values in _enumerate_values(self.source[0]):
            owner = self.same_as.render(values)
            if self.source[0].render(values) not in draft.input_shapes and owner in draft.input_shapes:
                draft.tied.setdefault(self.target[0].render(values), self.tied_to.render(values))

    def finish_backward(self, draft):
        # every alias is a copy of the key it must equal, produced from its owner
        for step in list(draft.steps):
            if step.op != "copy" or len(step.outputs) != 1:
                continue
            values = self.same_as.match(step.outputs[0])
            if values is None:
                continue
            alias = self.source[0].render(values)
            draft.steps.append(Step("copy", list(step.inputs), [alias], transpose=step.transpose))

    @classmethod
    def from_toml(cls, entry, path):
        rule = cls(_templates(entry["source"]), _templates(entry["target"]), entry.get("reason", ""), entry.get("when"),
                   same_as=Template(entry["same_as"]), tied_to=Template(entry["tied_to"]))
        rule.validate(entry, path)
        return rule


@dataclass(frozen=True)
class Drop(Rule):
    """A source key with no target, with the reason; backwards it cannot be restored unless ``regenerate`` names a
    generator the caller supplies."""

    regenerate: str | None = None  # name of the generator that rebuilds it backwards
    kind: ClassVar[str] = "drop"

    def matching(self, forward):
        return self.source if forward else ()

    def forward(self, draft, key, template, values):
        draft.dropped[key] = self.reason

    def finish_backward(self, draft):
        for template in self.source:
            for key in _enumerate(template):
                if self.regenerate and self.regenerate in draft.regenerators:
                    draft.regenerated[key] = self.regenerate
                else:
                    draft.not_restored[key] = self.reason

    @classmethod
    def from_toml(cls, entry, path):
        if not entry.get("reason"):
            raise MappingError(f"{path}: every {cls.kind} rule needs a reason ({entry})")
        return cls(_templates(entry.get("keys", entry.get("source"))), (), entry["reason"], entry.get("when"),
                   regenerate=entry.get("regenerate"))


@dataclass(frozen=True)
class Derive(Drop):
    """A source buffer the target recomputes in code; backwards regenerated when the caller supplies a generator
    for it, otherwise reported as not restored."""

    kind: ClassVar[str] = "derive"


# The TOML tables, in precedence order: a key goes to the first rule that matches it, kinds in this order and
# rules of one kind in file order.
RULE_KINDS: dict[str, type[Rule]] = {"tie": Tie, "drop": Drop, "derive": Derive, "split": Split, "rename": Rename}
KIND_ORDER = tuple(RULE_KINDS)


@dataclass
class Step:
    """One output tensor (or several for a split) computed from input keys."""

    op: str  # "copy" | "split" | "concat" | "check"
    inputs: list[str]
    outputs: list[str]
    dim: int = 0
    transpose: bool = False
    sizes: list[int] = field(default_factory=list)


@dataclass
class _Draft:
    """A plan being built: what the rules add while keys are claimed."""

    input_shapes: MappingType[str, tuple[int, ...]]
    expected: MappingType[str, tuple[int, ...]] | None
    source_name: str
    regenerators: frozenset
    steps: list["Step"] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    not_restored: dict[str, str] = field(default_factory=dict)
    regenerated: dict[str, str] = field(default_factory=dict)
    groups: dict = field(default_factory=dict)  # backwards splits: (rule, placeholder values) -> pieces found


@dataclass
class Plan:
    direction: str
    steps: list[Step]
    dropped: dict[str, str]  # input key -> reason (not carried over)
    tied: dict[str, str]  # output key -> output key it is tied to (not written; the model ties it)
    not_restored: dict[str, str]  # backwards: original keys that cannot be produced, with the reason
    regenerated: dict[str, str]  # backwards: original key -> generator name

    @property
    def output_keys(self) -> list[str]:
        return [k for s in self.steps if s.op != "check" for k in s.outputs]


class Mapping:
    """A parsed mapping file."""

    def __init__(self, path: Path, data: dict, raw: bytes):
        meta = data.get("mapping", {})
        self.path = path
        self.family = meta.get("family", path.stem)
        self.version = int(meta.get("version", 1))
        self.description = meta.get("description", "")
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self.rules: list[Rule] = []
        for kind in KIND_ORDER:
            for entry in data.get(kind, []):
                self.rules.append(_parse_rule(kind, entry, path))

    @classmethod
    def load(cls, name_or_path: str | Path) -> "Mapping":
        path = Path(name_or_path)
        if path.suffix != ".toml":
            path = Path(str(resources.files("hfport.mappings") / f"{name_or_path}.toml"))
        raw = path.read_bytes()
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise MappingError(f"{path}: invalid TOML ({err})") from None
        return cls(path, data, raw)

    # -- planning -------------------------------------------------------------------------------------

    def plan(
        self,
        input_shapes: MappingType[str, tuple[int, ...]],
        expected_outputs: MappingType[str, tuple[int, ...]] | None,
        flags: MappingType[str, bool] | None = None,
        *,
        direction: str = "forward",
        source_name: str = "source",
        regenerators: Collection[str] = (),
    ) -> Plan:
        """Resolve every input key to a rule and check the result against the expected outputs.

        ``expected_outputs`` maps every output key the other side needs to its shape (for HF targets: the
        model's state dict built on the meta device). Backwards it may be None (no inventory to check).
        """
        if direction not in ("forward", "backward"):
            raise ValueError(direction)
        flags = dict(flags or {})
        rules = [r for r in self.rules if r.applies(flags)]
        forward = direction == "forward"
        draft = _Draft(input_shapes, expected_outputs, source_name, frozenset(regenerators))
        unmatched: list[str] = []

        for key in input_shapes:
            for rule in rules:
                hit = next(((t, v) for t in rule.matching(forward) for v in [t.match(key)] if v is not None), None)
                if hit is None:
                    continue
                template, values = hit
                if not rule.applies(flags, values):
                    continue
                (rule.forward if forward else rule.backward)(draft, key, template, values)
                break
            else:
                unmatched.append(key)

        if unmatched:
            raise MappingError(
                f"{source_name}: {len(unmatched)} {'source' if forward else 'converted'} tensors are not mapped: "
                f"{collapse_keys(unmatched)}",
                hint="is this a variant the mapping does not know (adapters, prompts, extra heads)? "
                "see `hfport inspect`",
            )
        for (_, value_items), (rule, members) in draft.groups.items():
            rule.join(draft, dict(value_items), members)
        for rule in rules:
            (rule.finish_forward if forward else rule.finish_backward)(draft)

        self._check_outputs(draft.steps, draft.tied, expected_outputs, source_name, forward)
        return Plan(direction, draft.steps, draft.dropped, draft.tied, draft.not_restored, draft.regenerated)

    def _check_outputs(self, steps, tied, expected, source_name, forward):
        produced: dict[str, int] = {}
        for step in steps:
            if step.op == "check":
                continue
            for out in step.outputs:
                produced[out] = produced.get(out, 0) + 1
        twice = [k for k, n in produced.items() if n > 1]
        if twice:
            raise MappingError(f"{source_name}: several tensors map onto {collapse_keys(twice)}")
        if expected is None:
            return
        missing = [k for k in expected if k not in produced and k not in tied]
        extra = [k for k in produced if k not in expected]
        if missing:
            what = "target parameters" if forward else "original tensors"
            raise MappingError(
                f"{source_name}: {len(missing)} {what} would not be produced: {collapse_keys(missing)}",
                hint="the checkpoint lacks tensors this architecture needs (truncated or different variant?)",
            )
        if extra:
            raise MappingError(
                f"{source_name}: {len(extra)} mapped tensors have no place in the target model: {collapse_keys(extra)}"
            )

    # -- running --------------------------------------------------------------------------------------

    @staticmethod
    def run(
        plan: Plan,
        get: Callable[[str], torch.Tensor],
        source_name: str = "source",
        regenerate: Callable[[str, str], torch.Tensor] | None = None,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (output key, tensor) one at a time; ``get`` fetches one input tensor lazily.

        Backwards, ``regenerate(generator_name, key)`` rebuilds the derived keys the plan lists.
        """
        if regenerate is not None:
            for key, generator in plan.regenerated.items():
                yield key, regenerate(generator, key)
        for step in plan.steps:
            if step.op == "check":
                alias, owner = (get(k) for k in step.inputs)
                if alias.dtype != owner.dtype or not torch.equal(alias, owner):
                    raise MappingError(
                        f"{source_name}: {step.inputs[0]} should equal {step.inputs[1]} (tied weights) but differs",
                        hint="the checkpoint's flags say these are shared; its tensors say otherwise",
                    )
                continue
            if step.op == "copy":
                tensor = get(step.inputs[0])
                yield step.outputs[0], (tensor.t() if step.transpose else tensor)
            elif step.op == "split":
                pieces = torch.split(get(step.inputs[0]), step.sizes, dim=step.dim)
                yield from zip(step.outputs, pieces)
            elif step.op == "concat":
                yield step.outputs[0], torch.cat([get(k) for k in step.inputs], dim=step.dim)


def _templates(value) -> tuple[Template, ...]:
    if value is None:
        return ()
    return tuple(Template(v) for v in ([value] if isinstance(value, str) else value))


def _parse_rule(kind: str, entry: dict, path: Path) -> Rule:
    try:
        return RULE_KINDS[kind].from_toml(entry, path)
    except KeyError as err:
        raise MappingError(f"{path}: a {kind} rule lacks {err}") from None


def _enumerate_values(template: Template) -> list[dict[str, str]]:
    """Every placeholder assignment of an alternatives-only template (none if it has open placeholders)."""
    import itertools
    import re

    options = []
    for m in re.finditer(r"\{(\w+)(\*|:[^}]*)?\}", template.text):
        if not m.group(2) or m.group(2) == "*":
            return []
        options.append((m.group(1), m.group(2)[1:].split("|")))
    return [{name: value for (name, _), value in zip(options, combo)}
            for combo in itertools.product(*(alts for _, alts in options))]


def _enumerate(template: Template) -> list[str]:
    """All keys an alternatives-only template can name (for regenerating derived keys backwards)."""
    return [template.render(values) for values in _enumerate_values(template)]
