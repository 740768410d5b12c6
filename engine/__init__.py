"""A thin LLM engine built from kdsl kernels: load, quantise, plan, KV cache, generate."""
