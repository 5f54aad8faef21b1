"""How transferable are features in deep neural networks? (Yosinski et al., NIPS 2014), as a pipeline."""

from pathlib import Path

__version__ = "0.1.0"

REFERENCE = Path(__file__).with_name("reference")  # the study's class lists and results, shipped with the package
