"""Test-session configuration, set once before any backend starts: float64 on, and 4 simulated
CPU devices so that every engine test also exercises the sharded path."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)
