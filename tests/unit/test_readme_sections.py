"""README's generated sections show exactly the pages tools wrote under docs/."""
import pytest

from tests.conftest import load_script


def _readme_tool():
    return load_script("tools/readme.py", "readme_tool")


@pytest.mark.parametrize("name", ["features", "benchmarks"])
def test_readme_section_is_the_generated_page(name):
    tool = _readme_tool()
    with open(tool.README) as f:
        readme = f.read()
    with open(tool.SECTIONS[name]) as f:
        page = f.read()
    assert tool.section(name, readme) == tool.body(page), "run python3 tools/readme.py"


def test_embed_replaces_only_its_section(tmp_path):
    tool = _readme_tool()
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- features -->\nold\n<!-- /features -->\n<!-- benchmarks -->\nkeep\n"
                      "<!-- /benchmarks -->\nend\n")
    tool.embed("features", path=str(readme))
    text = readme.read_text()
    with open(tool.SECTIONS["features"]) as f:
        assert tool.section("features", text) == tool.body(f.read())
    assert "old" not in text and "keep\n" in text and text.startswith("intro\n") and text.endswith("end\n")
