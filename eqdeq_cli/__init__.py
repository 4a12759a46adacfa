"""eqdeq."""
from pathlib import Path

#: The config tree shipped inside the package (a link to the top-level ``configs/`` in a
#: checkout): the Hydra commands compose from it, :mod:`eqdeq_cli.trust` reads its targets.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
