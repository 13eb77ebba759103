"""Hypothesis strategy shared by the fuzz tests: valid HTTP bytes with a few random edits."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def mutated(draw, seeds: list[bytes], alphabet: bytes, *, max_edits: int, max_copy: int) -> bytes:
    """One of ``seeds`` with up to ``max_edits`` inserts, deletions, replacements (from
    ``alphabet``) or copies of up to ``max_copy`` bytes in place."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_edits))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = bytes([draw(st.sampled_from(alphabet))])
        elif op == "delete" and pos < len(data):
            del data[pos]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.sampled_from(alphabet))
        elif op == "duplicate":
            end = draw(st.integers(pos, min(len(data), pos + max_copy)))
            data[pos:pos] = data[pos:end]
    return bytes(data)
