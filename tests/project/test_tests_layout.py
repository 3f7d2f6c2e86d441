"""The tests' own layout: test modules sit in the folders of `tests/` that mirror the code's (none at the top, where
only the helpers several folders share live), every folder is a package (pytest's default import mode needs unique
module names), and every lookup of the repository from a test's own path lands on the repository's root, whatever
the depth of the file that makes it (a wrong depth would silently read `tests/attention/` for `attention/`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
ANCESTOR = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?(?P<parents>(?:\.parent\b)+|\.parents\[(?P<index>\d+)\])")


def test_no_test_module_sits_at_the_top_of_tests():
    assert sorted(path.name for path in TESTS.glob("test_*.py")) == []


def test_every_folder_of_tests_is_a_package():
    folders = [path for path in TESTS.rglob("*") if path.is_dir() and path.name != "__pycache__"]
    assert folders and [str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()] == []


def test_every_ancestor_lookup_from_a_tests_path_is_the_repository_root():
    lookups = {}
    for path in sorted(TESTS.rglob("*.py")):
        for match in ANCESTOR.finditer(path.read_text()):
            levels = int(match["index"]) if match["index"] else match["parents"].count(".parent") - 1
            if levels > 0:  # `.parent` alone is the file's own folder
                lookups[f"{path.relative_to(ROOT)}: {match[0]}"] = path.resolve().parents[levels] == ROOT
    assert len(lookups) > 10 and [lookup for lookup, is_root in lookups.items() if not is_root] == []
