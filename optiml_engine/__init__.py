"""optiml-engine: instruction meta-learning of OPT models (OPT-IML) with Megatron-style parallelism."""

__version__ = "0.1.0"
