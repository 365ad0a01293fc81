"""lmstack: the whole large-language-model stack, from raw text to a chat model, in readable Python."""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parents[1]
# Small real corpora shipped with the repository (sources, licences and checksums: data/README.md).
DATA_DIR = REPO_ROOT / "data"
