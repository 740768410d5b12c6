"""Per-device autotuning: config spaces, a timing harness and the tuning database."""
