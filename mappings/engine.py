"""The mapping engine: runs a family's declarative rule file over a state dict, in either direction.

Rule kinds (``mappings/<family>.toml``):

- ``rename``  one key to one key (``transpose = true`` swaps the two dims of a matrix on the way)
- ``split``   one key to several along ``dim`` (fused q/k/v); backwards it concatenates
- ``drop``    a source key with no target, with the reason; backwards it cannot be restored
- ``derive``  a source buffer the target recomputes in code; backwards it is regenerated when the caller
              supplies a generator for it, otherwise reported as not restored
- ``tie``     a source key that must equal another source key (shared embeddings): checked bit-exactly and
              consumed; its target is derived by weight tying. Backwards it is written as a copy.
- ``generate`` a target key with no source: the target stores what the original recomputes at load time
              (a sinusoidal table); computed by the converter's named ``generator``, shape-checked; backwards it
              is consumed and not written (the original recomputes it)

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
from typing import Callable, Collection, Iterator, Mapping as MappingType

import torch

from hfport.errors import MappingError
from hfport.mappings.templates import Template, collapse_keys

KIND_ORDER = ("tie", "drop", "derive", "generate", "split", "rename")


@dataclass(frozen=True)
class Rule:
    kind: str
    source: tuple[Template, ...]
    target: tuple[Template, ...]
    reason: str = ""
    when: str | None = None
    dim: int = 0
    transpose: bool = False
    same_as: Template | None = None  # tie: the source key this one must equal
    tied_to: Template | None = None  # tie: the target key that owns the weight
    regenerate: str | None = None  # derive: name of the generator that rebuilds it backwards; generate: forwards

    def applies(self, flags: MappingType[str, bool], values: MappingType[str, str] | None = None) -> bool:
        """``when`` may name placeholders (``keep_{head}``): they are filled from the matched key."""
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


@dataclass
class Step:
    """One output tensor (or several for a split) computed from input keys."""

    op: str  # "copy" | "split" | "concat" | "check" | "generate" (inputs = [generator name])
    inputs: list[str]
    outputs: list[str]
    dim: int = 0
    transpose: bool = False
    sizes: list[int] = field(default_factory=list)


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

    @property
    def generated(self) -> list[str]:
        return [k for s in self.steps if s.op == "generate" for k in s.outputs]


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
        implied_ties: MappingType[str, str] | None = None,
    ) -> Plan:
        """Resolve every input key to a rule and check the result against the expected outputs.

        ``expected_outputs`` maps every output key the other side needs to its shape (for HF targets: the
        model's state dict built on the meta device). Backwards it may be None (no inventory to check).
        ``implied_ties`` (target -> owner) are the ties the target model declares itself (transformers'
        ``_tied_weights_keys``): such a target need not be produced when its owner is.
        """
        if direction not in ("forward", "backward"):
            raise ValueError(direction)
        flags = dict(flags or {})
        rules = [r for r in self.rules if r.applies(flags)]
        forward = direction == "forward"
        steps: list[Step] = []
        dropped: dict[str, str] = {}
        tied: dict[str, str] = {}
        not_restored: dict[str, str] = {}
        regenerated: dict[str, str] = {}
        unmatched: list[str] = []
        claimed: set[str] = set()
        groups: dict[tuple[int, tuple], dict[str, str]] = {}

        for key in input_shapes:
            if key in claimed:
                continue
            for index, rule in enumerate(rules):
                side = rule.source if forward else rule.target
                if rule.kind in ("drop", "derive"):
                    side = rule.source if forward else ()
                if rule.kind == "generate":
                    side = () if forward else rule.target
                if rule.kind == "tie" and not forward:
                    side = rule.target
                hit = next(((t, v) for t in side for v in [t.match(key)] if v is not None), None)
                if hit is None:
                    continue
                template, values = hit
                if not rule.applies(flags, values):
                    continue
                claimed.add(key)
                if rule.kind in ("drop", "derive", "generate"):
                    dropped[key] = rule.reason
                elif rule.kind == "tie":
                    self._plan_tie(rule, values, key, forward, input_shapes, steps, tied)
                elif len(side) > 1:  # backwards split = concat: gather the group first
                    groups.setdefault((index, tuple(sorted(values.items()))), {})[template.text] = key
                else:
                    steps.append(self._plan_single(rule, values, key, forward, input_shapes, expected_outputs))
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
        for (index, value_items), members in groups.items():
            rule, values = rules[index], dict(value_items)
            wanted = [t.render(values) for t in rule.target]
            missing = [w for w, t in zip(wanted, rule.target) if t.text not in members]
            if missing:
                raise MappingError(f"{source_name}: incomplete group, missing {collapse_keys(missing)}")
            out = rule.source[0].render(values)
            steps.append(Step("concat", wanted, [out], dim=rule.dim))

        if forward:
            for rule in rules:
                if rule.kind == "generate":
                    for values in _enumerate_values(rule.target[0]):
                        steps.append(Step("generate", [rule.regenerate], [rule.target[0].render(values)]))
            # a tied alias some writers leave out of the file (its owner is there) is still derived by tying
            for rule in rules:
                if rule.kind == "tie":
                    for values in _enumerate_values(rule.source[0]):
                        owner = rule.same_as.render(values)
                        if rule.source[0].render(values) not in input_shapes and owner in input_shapes:
                            tied.setdefault(rule.target[0].render(values), rule.tied_to.render(values))
        else:
            for rule in rules:
                if rule.kind in ("drop", "derive"):
                    for template in rule.source:
                        for key in _enumerate(template):
                            if rule.regenerate and rule.regenerate in regenerators:
                                regenerated[key] = rule.regenerate
                            else:
                                not_restored[key] = rule.reason
            # ties backwards: every alias is a copy of the key it must equal, produced from its owner
            for rule in rules:
                if rule.kind != "tie":
                    continue
                for step in list(steps):
                    if step.op != "copy" or len(step.outputs) != 1:
                        continue
                    values = rule.same_as.match(step.outputs[0])
                    if values is None:
                        continue
                    alias = rule.source[0].render(values)
                    steps.append(Step("copy", list(step.inputs), [alias], transpose=step.transpose))

        for alias, owner in (implied_ties or {}).items():
            if alias not in tied and not any(alias in s.outputs for s in steps if s.op != "check") and (
                    owner in tied or any(owner in s.outputs for s in steps if s.op != "check")):
                tied[alias] = tied.get(owner, owner)
        self._check_outputs(steps, tied, expected_outputs, source_name, forward)
        return Plan(direction, steps, dropped, tied, not_restored, regenerated)

    def _plan_single(self, rule, values, key, forward, input_shapes, expected):
        if rule.kind == "rename":
            out = (rule.target[0] if forward else rule.source[0]).render(values)
            shape = tuple(input_shapes[key])
            if rule.transpose:
                shape = shape[::-1]
            if expected is not None and out in expected and tuple(expected[out]) != shape:
                raise MappingError(
                    f"shape mismatch: {key} {list(input_shapes[key])} -> {out} expects {list(expected[out])}"
                )
            return Step("copy", [key], [out], transpose=rule.transpose)
        # split forwards
        outs = [t.render(values) for t in rule.target]
        total = input_shapes[key][rule.dim] if input_shapes[key] else 0
        if expected is not None and all(o in expected for o in outs):
            sizes = [expected[o][rule.dim] for o in outs]
            rest = [tuple(s for d, s in enumerate(expected[o]) if d != rule.dim) for o in outs]
            own = tuple(s for d, s in enumerate(input_shapes[key]) if d != rule.dim)
            if sum(sizes) != total or any(r != own for r in rest):
                raise MappingError(
                    f"shape mismatch: {key} {list(input_shapes[key])} cannot be split into "
                    + ", ".join(f"{o} {list(expected[o])}" for o in outs)
                )
        else:
            if total % len(outs):
                raise MappingError(f"shape mismatch: {key} {list(input_shapes[key])} does not split in {len(outs)}")
            sizes = [total // len(outs)] * len(outs)
        return Step("split", [key], outs, dim=rule.dim, sizes=sizes)

    def _plan_tie(self, rule, values, key, forward, input_shapes, steps, tied):
        if forward:
            owner = rule.same_as.render(values)
            if owner not in input_shapes:
                raise MappingError(f"{key} is declared tied to {owner}, which the checkpoint lacks")
            if tuple(input_shapes[owner]) != tuple(input_shapes[key]):
                raise MappingError(
                    f"shape mismatch: {key} {list(input_shapes[key])} is tied to {owner} {list(input_shapes[owner])}"
                )
            steps.append(Step("check", [key, owner], []))
            tied[rule.target[0].render(values)] = rule.tied_to.render(values)
        else:
            owner = rule.tied_to.render(values)
            if owner in input_shapes:
                steps.append(Step("check", [key, owner], []))

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
            elif step.op == "generate":
                if regenerate is None:
                    raise MappingError(f"{source_name}: {step.outputs[0]} needs the generator {step.inputs[0]!r}")
                yield step.outputs[0], regenerate(step.inputs[0], step.outputs[0])


def _parse_rule(kind: str, entry: dict, path: Path) -> Rule:
    def templates(value) -> tuple[Template, ...]:
        if value is None:
            return ()
        return tuple(Template(v) for v in ([value] if isinstance(value, str) else value))

    try:
        if kind in ("drop", "derive"):
            if not entry.get("reason"):
                raise MappingError(f"{path}: every {kind} rule needs a reason ({entry})")
            return Rule(kind, templates(entry.get("keys", entry.get("source"))), (), entry["reason"],
                        entry.get("when"), regenerate=entry.get("regenerate"))
        if kind == "generate":
            if not entry.get("reason") or not entry.get("generator"):
                raise MappingError(f"{path}: every generate rule needs a generator and a reason ({entry})")
            return Rule(kind, (), templates(entry["target"]), entry["reason"], entry.get("when"),
                        regenerate=entry["generator"])
        if kind == "tie":
            return Rule(kind, templates(entry["source"]), templates(entry["target"]), entry.get("reason", ""),
                        entry.get("when"), same_as=Template(entry["same_as"]), tied_to=Template(entry["tied_to"]))
        rule = Rule(kind, templates(entry["source"]), templates(entry["target"]), entry.get("reason", ""),
                    entry.get("when"), dim=int(entry.get("dim", 0)), transpose=bool(entry.get("transpose", False)))
    except KeyError as err:
        raise MappingError(f"{path}: a {kind} rule lacks {err}") from None
    if kind == "rename" and (len(rule.source) != 1 or len(rule.target) != 1):
        raise MappingError(f"{path}: rename rules map one template to one template ({entry})")
    if kind == "split" and (len(rule.source) != 1 or len(rule.target) < 2):
        raise MappingError(f"{path}: split rules map one template to several ({entry})")
    if set(rule.source[0].names) != {n for t in rule.target for n in t.names}:
        raise MappingError(f"{path}: both sides of a rule must use the same placeholders ({entry})")
    return rule


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
