from optiml_engine.model.kv_cache import KVCache
from optiml_engine.model.opt import OPTForCausalLM

__all__ = ["KVCache", "OPTForCausalLM"]
