"""Write the table of the weight phase's keys into docs/configs.md, from the config itself.

Run: python scripts/config_tables.py  (the table is committed; tests/test_docs.py fails until it
equals ``supportnet.config.key_table()``: the choices from ``config.CHOICES``, which are
``supportnet.choices``'s lists, the ranges from ``config.RANGES``, the words from the fields'
comments).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from supportnet.config import key_table  # noqa: E402

DOC = ROOT / "docs" / "configs.md"
BEGIN, END = "<!-- BEGIN key table (scripts/config_tables.py) -->\n", "<!-- END key table -->\n"


def main() -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}{key_table()}{END}{tail}")


if __name__ == "__main__":
    main()
