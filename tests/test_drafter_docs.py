"""docs/drafters.md's parameter table is what the code counts."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_parameter_table_in_the_docs_is_current():
    script = runpy.run_path(str(ROOT / "docs" / "drafter_parameter_counts.py"))
    assert script["table"](script["LLAMA_7B"]) in (ROOT / "docs" / "drafters.md").read_text()
