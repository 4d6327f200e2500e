"""Reading fairseq-format text files (dictionaries, WordPiece vocabularies) line by line as their own readers do.

fairseq's `Dictionary.add_from_file` and transformers' BERT `load_vocab` (what fairseq's `BertBPE` wraps) both use
a text-mode `readlines()`: a line ends at "\\n", "\\r\\n" or "\\r" only. `str.splitlines()` also breaks at U+2028,
U+2029, U+0085, form feeds and other separators, which are ordinary symbols in these files (OFA's
`utils/BERT_CN_dict/vocab.txt` has U+2028 at line 344), so it would shift every later index.

Only the standard library: the recorder imports this in the original's own (legacy) environment too.
"""

from __future__ import annotations

import os
from typing import List, NamedTuple, Union

OVERWRITE_FLAG = "#fairseq:overwrite"


class DictionaryFormatError(ValueError):
    """A dictionary line fairseq would refuse; `line_number` counts from 1."""

    def __init__(self, path: str, line_number: int, message: str):
        super().__init__("{}:{}: {}".format(path, line_number, message))
        self.path, self.line_number = path, line_number


class DictionaryEntry(NamedTuple):
    symbol: str
    count: int
    overwrite: bool
    line_number: int


def read_lines(path: Union[str, os.PathLike]) -> List[str]:
    """The file's lines, newline removed, split exactly where a text-mode `readlines()` splits."""
    with open(path, "r", encoding="utf-8") as handle:
        return [line[:-1] if line.endswith("\n") else line for line in handle]


def read_dictionary(path: Union[str, os.PathLike]) -> List[DictionaryEntry]:
    """`<symbol> <count> [#fairseq:overwrite]` lines, parsed by fairseq's rules.

    Trailing whitespace (any Unicode whitespace) is dropped, the symbol is everything before the last space (it may
    itself hold spaces or be empty), the count is anything `int()` accepts. A line without a space (a blank line
    included) is refused, as is a symbol seen before without the overwrite flag. The four specials fairseq's
    `Dictionary` starts with are not added here; a duplicate of one of them is the caller's check.
    """
    entries: List[DictionaryEntry] = []
    seen = set()
    for number, raw in enumerate(read_lines(path), 1):
        parts = raw.rstrip().rsplit(" ", 1)
        overwrite = False
        if len(parts) == 2 and parts[1] == OVERWRITE_FLAG:
            overwrite = True
            parts = parts[0].rsplit(" ", 1)
        if len(parts) != 2:
            raise DictionaryFormatError(str(path), number, "expected '<symbol> <count>', got {!r}".format(raw))
        symbol, field = parts
        try:
            count = int(field)
        except ValueError:
            raise DictionaryFormatError(str(path), number, "expected '<symbol> <count>', got {!r}".format(raw)) from None
        if symbol in seen and not overwrite:
            raise DictionaryFormatError(
                str(path), number, "duplicate symbol {!r} (fairseq refuses this dictionary)".format(symbol))
        seen.add(symbol)
        entries.append(DictionaryEntry(symbol, count, overwrite, number))
    return entries
