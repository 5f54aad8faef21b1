"""How transferable are features in deep neural networks? (Yosinski et al., NIPS 2014), as a pipeline."""

__version__ = "0.1.0"
