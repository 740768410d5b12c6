"""A thin LLM engine built from kdsl kernels: load, quantise, plan, KV cache, generate.

    >>> from engine import LLM
    >>> llm = LLM.load()                      # the embedded SmolLM2-135M-Instruct, m0e4
    >>> print(llm.generate("The capital of France is", max_new_tokens=8))
"""
from .llm import LLM

__all__ = ["LLM"]
