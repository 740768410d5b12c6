"""Per-device autotuning of the kernel library: search spaces, model shapes and the
`kdsl-autotune` command. The generic machinery (kdsl.autotune, the timing harness
and the tuning database) lives in kdsl; this package knows the library's kernels.
"""
