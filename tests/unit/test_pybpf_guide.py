"""docs/pybpf.md stays true: its cookbook table counts the lines of docs/examples/ and of the bcc
equivalents in docs/examples/bcc/ the same way, and names every example."""
import io
import os
import re
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "docs", "examples")
GUIDE = os.path.join(ROOT, "docs", "pybpf.md")
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
         tokenize.ENDMARKER}


def code_lines(path):
    """Lines of code: not blank, not only a comment, not the module docstring; the lines of an
    embedded program (bcc's C text) count as lines too."""
    with open(path) as f:
        source = f.read()
    text, lines, first = source.splitlines(), set(), True
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in _SKIP:
            continue
        if first and tok.type == tokenize.STRING:  # the module docstring
            first = False
            continue
        first = False
        lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if text[n - 1].strip())
    return len(lines)


def test_the_cookbook_table_counts_what_is_there():
    with open(GUIDE) as f:
        guide = f.read()
    row = re.compile(r"^\| \[`(\w+\.py)`\]\([^)]*\) \| [^|]* \| (\d+) \| (\d+) \|", re.M)
    table = {m[1]: (int(m[2]), int(m[3])) for m in row.finditer(guide)}
    scripts = sorted(n for n in os.listdir(EXAMPLES) if n.endswith(".py"))
    assert sorted(table) == scripts
    for name in scripts:
        assert table[name] == (code_lines(os.path.join(EXAMPLES, name)),
                               code_lines(os.path.join(EXAMPLES, "bcc", name))), name
