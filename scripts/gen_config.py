"""Write configs/demo.yaml: every setting with its default, regenerated from the config models.

Usage: python scripts/gen_config.py
"""

from pathlib import Path

import yaml

from cemsplit.shared.config import RunConfig

HEADER = """\
# Every setting with its default. Each role reads the sections it needs; see
# `cemsplit <role> --help` for units and meanings. Regenerate with scripts/gen_config.py.
"""


def main() -> None:
    path = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
    path.write_text(HEADER + yaml.safe_dump(RunConfig().model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
