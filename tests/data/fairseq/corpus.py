"""A tiny deterministic parallel corpus for training fairseq's own families (see make_checkpoints.py).

A toy language pair: every source word has one target word, the target keeps the source order except that an
adjective follows its noun in the source ("haus rot") and precedes it in the target ("red house"). Small enough
to learn in a few hundred CPU updates, structured enough that generation is not degenerate.
"""

import random

NOUNS = {"haus": "house", "hund": "dog", "katze": "cat", "baum": "tree", "auto": "car", "buch": "book",
         "kind": "child", "mann": "man", "frau": "woman", "stadt": "town", "wasser": "water", "brot": "bread"}
ADJECTIVES = {"rot": "red", "gross": "big", "klein": "small", "alt": "old", "neu": "new", "gut": "good"}
VERBS = {"sieht": "sees", "hat": "has", "mag": "likes", "sucht": "seeks", "findet": "finds"}
DETS = {"der": "the", "ein": "a"}


def _phrase(rng):
    src, tgt = [], []
    det = rng.choice(sorted(DETS))
    noun = rng.choice(sorted(NOUNS))
    src += [det, noun]
    tgt += [DETS[det]]
    if rng.random() < 0.5:
        adj = rng.choice(sorted(ADJECTIVES))
        src.append(adj)
        tgt.append(ADJECTIVES[adj])
    tgt.append(NOUNS[noun])
    return src, tgt


def sentence_pair(rng):
    s1, t1 = _phrase(rng)
    if rng.random() < 0.3:
        return s1, t1
    verb = rng.choice(sorted(VERBS))
    s2, t2 = _phrase(rng)
    return s1 + [verb] + s2, t1 + [VERBS[verb]] + t2


def write_corpus(folder, src="de", tgt="en", sizes=(("train", 3000), ("valid", 100), ("test", 50)), seed=7):
    """Write {split}.{src} / {split}.{tgt} under `folder`."""
    import os

    rng = random.Random(seed)
    for split, n in sizes:
        pairs = [sentence_pair(rng) for _ in range(n)]
        with open(os.path.join(folder, split + "." + src), "w") as f:
            f.writelines(" ".join(s) + "\n" for s, _ in pairs)
        with open(os.path.join(folder, split + "." + tgt), "w") as f:
            f.writelines(" ".join(t) + "\n" for _, t in pairs)


def monolingual_lines(n=2000, seed=11):
    """Target-side sentences for the language model / masked LM cases."""
    rng = random.Random(seed)
    return [" ".join(sentence_pair(rng)[1]) for _ in range(n)]
