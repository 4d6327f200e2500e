"""Answer / label vocabularies for classification heads (`hfport convert --labels`) and constrained decoding
(`hfport run --answers`).

Accepted files:
- JSON: a list of labels (index = position), `{"0": "yes", ...}` (id -> label), or `{"yes": 0, ...}` (label -> id,
  METER's `ans2label` and OFA's `ans2label_dict`);
- a pickle holding such a dict or list (METER / OFA's `trainval_ans2label.pkl`), read with an unpickler that
  builds only dicts, lists, tuples, strings and numbers: no global is ever imported, so nothing in the file runs;
- plain text: one label per line.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

from hfport.errors import HfportError

MAX_LABEL_FILE_BYTES = 64 * 2**20


class LabelFileError(HfportError):
    pass


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builtin containers, strings and numbers only: any global (a class, a function) is refused by name."""

    def find_class(self, module: str, name: str):
        raise LabelFileError(f"the label pickle refers to {module}.{name}: only dicts/lists of strings and integers "
                             "are read from label files")


def read_labels(path: str | Path) -> list[str]:
    """The labels in index order; refuses gaps, duplicates and anything that is not a label vocabulary."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LabelFileError(f"cannot read label file {path}: {err.strerror or err}") from None
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise LabelFileError(f"label file {path} is larger than {MAX_LABEL_FILE_BYTES >> 20} MiB")
    if data[:1] == b"\x80":  # a pickle protocol marker
        try:
            content = _DataOnlyUnpickler(io.BytesIO(data)).load()
        except LabelFileError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged pickle is bad input, said in one line
            raise LabelFileError(f"label file {path} is not a readable pickle ({type(err).__name__})") from None
    else:
        text = data.decode("utf-8", errors="replace")
        try:
            content = json.loads(text)
        except json.JSONDecodeError:
            content = [line.strip() for line in text.splitlines() if line.strip()]
    return labels_from(content, path)


def labels_from(content, path: Path | str = "labels") -> list[str]:
    if isinstance(content, (list, tuple)):
        labels = [str(label) for label in content]
    elif isinstance(content, dict) and content:
        labels = _labels_from_mapping(content, path)
    else:
        raise LabelFileError(f"{path}: expected a list of labels or a dict of id -> label / label -> id")
    if not labels:
        raise LabelFileError(f"{path} holds no labels")
    duplicates = sorted({label for label in labels if labels.count(label) > 1}) if len(set(labels)) < len(labels) else []
    if duplicates:
        raise LabelFileError(f"{path}: labels appear more than once: {', '.join(duplicates[:5])}")
    return labels


def _labels_from_mapping(content: dict, path) -> list[str]:
    keys, values = list(content), list(content.values())
    if all(_is_index(v) for v in values) and not all(_is_index(k) for k in keys):
        by_id = {int(v): str(k) for k, v in content.items()}  # label -> id (ans2label)
    elif all(_is_index(k) for k in keys):
        by_id = {int(k): str(v) for k, v in content.items()}  # id -> label (id2label)
    else:
        raise LabelFileError(f"{path}: a label dict maps ids to labels or labels to ids")
    if len(by_id) != len(content) or sorted(by_id) != list(range(len(by_id))):
        raise LabelFileError(f"{path}: label ids must be 0..{len(content) - 1}, each once")
    return [by_id[i] for i in range(len(by_id))]


def _is_index(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.isdigit()


def apply_labels(config, labels: list[str], head: str) -> None:
    """Fill `id2label` / `label2id` of a config whose head has `config.num_labels` outputs, or refuse."""
    if len(labels) != config.num_labels:
        raise LabelFileError(f"--labels has {len(labels)} labels but the {head} head has {config.num_labels} outputs")
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
