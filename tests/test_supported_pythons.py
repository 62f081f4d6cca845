"""The supported Python versions are stated in four places; they must say the same thing."""
import re
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_requires_python_classifiers_makefile_and_readme_agree():
    allowed = SpecifierSet(_project()["requires-python"])
    by_specifier = [f"3.{m}" for m in range(0, 30) if f"3.{m}.0" in allowed]
    by_classifiers = [c.rsplit(" :: ", 1)[1] for c in _project()["classifiers"]
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    makefile = re.search(r"^SUPPORTED_PYTHONS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert by_specifier == by_classifiers == makefile.group(1).split()
    stated = ", ".join(by_specifier[:-1]) + " or " + by_specifier[-1]
    assert f"Python {stated}" in (ROOT / "README.md").read_text()

