"""Generated sections of README.md: the text between <!-- NAME --> and <!-- /NAME -->.

tools/feature_table.py and tests/perf/run.py --markdown write their pages under
docs/ and embed them here, so the README shows the tables without anyone
copying them by hand; tests/unit/test_readme_sections.py checks they agree.

    python3 tools/readme.py            re-embed docs/features.md and docs/benchmarks.md
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
# section name -> the generated page it shows
SECTIONS = {"features": os.path.join(ROOT, "docs", "features.md"),
            "benchmarks": os.path.join(ROOT, "docs", "benchmarks.md")}


def _pattern(name):
    return re.compile(rf"(<!-- {name} -->\n)(.*?)(<!-- /{name} -->)", re.S)


def body(page_text):
    """A page as a README section: without its title line, headings one level down."""
    lines = page_text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#" + line if line.startswith("## ") else line for line in lines).strip() + "\n"


def section(name, readme_text):
    match = _pattern(name).search(readme_text)
    if match is None:
        raise SystemExit(f"README.md has no <!-- {name} --> section")
    return match.group(2)


def embed(name, path=README):
    """Put SECTIONS[name]'s page into README.md's section `name`."""
    with open(SECTIONS[name]) as f:
        text = body(f.read())
    with open(path) as f:
        readme = f.read()
    section(name, readme)  # fails clearly when the markers are missing
    readme = _pattern(name).sub(lambda m: m.group(1) + text + m.group(3), readme)
    with open(path, "w") as f:
        f.write(readme)


if __name__ == "__main__":
    for name in SECTIONS:
        embed(name)
    sys.exit(0)
