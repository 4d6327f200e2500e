"""Hostile inputs made on the fly (never stored as binaries): the corpus, its runner, and the reader fuzzer."""
