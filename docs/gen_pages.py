"""Pages generated at build time, so they cannot drift from what they describe.

- settings.md: every setting from the settings definition (flag, variable, default, help).
- benchmarks.md: benchmarks.template.md with the goals and summary tables from
  benchmarks/results/*.json in place of `{goals}` and `{summary}`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from summary import goals_markdown, summary_markdown  # noqa: E402
from tensorgate.settings import reference_markdown  # noqa: E402

with mkdocs_gen_files.open("settings.md", "w") as page:
    page.write(reference_markdown())

with mkdocs_gen_files.open("benchmarks.md", "w") as page:
    template = (ROOT / "docs" / "benchmarks.template.md").read_text()
    results = ROOT / "benchmarks" / "results"
    page.write(
        template.replace("{goals}", goals_markdown(results)).replace(
            "{summary}", summary_markdown(results)
        )
    )
