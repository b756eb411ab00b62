"""Test-session configuration: float64 on, set once before any backend starts."""

import jax

jax.config.update("jax_enable_x64", True)
