"""What a result came from: the versions that made it, the code's digest, a stable hash of a configuration.

Every metrics file records ``versions()``; checkpoints are tagged with ``source_digest()`` so that one
written by other code is never resumed. A leaf module: torch is imported only when versions are asked for.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from transferability import __version__


def versions() -> dict[str, str]:
    import numpy as np
    import torch

    return {"transferability": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def digest(obj: Any) -> str:
    """A stable short hash of any JSON-able value: equal configurations give equal digests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def source_digest() -> str:
    """A digest of the package's own code (every module, in every subpackage): a checkpoint written by
    other code is never resumed."""
    package = Path(__file__).parent
    return digest([[f.relative_to(package).as_posix(), hashlib.sha256(f.read_bytes()).hexdigest()]
                   for f in sorted(package.rglob("*.py"))])
