"""Random class trees for property tests (Hypothesis): nested mappings whose leaves get ids, shared by the tests
of the taxonomy and of partial labels."""

from hypothesis import strategies as st

names = st.text(alphabet="abcdefghijklmnop", min_size=1, max_size=6)


@st.composite
def trees(draw, depth=0):
    """A random nested mapping whose leaves are placeholders (None), later numbered."""
    n = draw(st.integers(1, 4))
    out = {}
    for _ in range(n):
        key = draw(names)
        if key in out:
            continue
        if depth < 3 and draw(st.booleans()):
            out[key] = draw(trees(depth + 1))
        else:
            out[key] = None
    return out


def _number(tree, counter, prefix=""):
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if v is None:
            out[name] = counter.pop()
        else:
            out[name] = _number(v, counter, name + "_")
    return out


def _count(tree):
    return sum(1 if v is None else _count(v) for v in tree.values())
