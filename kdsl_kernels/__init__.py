"""The kernel library, written in the kdsl kernel language: one module per kernel family."""
