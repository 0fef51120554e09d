"""optiml-engine: instruction meta-learning of OPT models (OPT-IML), Megatron-style."""

__version__ = "0.1.0"
