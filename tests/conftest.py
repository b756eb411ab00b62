"""Test-session configuration, set once before any backend starts: float64 on, and 4 simulated
CPU devices so that every engine test also exercises the sharded path; the CLI's persistent
compilation cache off (also for child processes) unless a test names a directory, so the suite
neither reads nor fills the user's cache. Shared fixtures below; shared functions live in
``helpers.py``."""

import os

import jax
import pytest

from helpers import CompileCounter

os.environ.setdefault("NCFLOW_COMPILE_CACHE", "off")
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)
# Start the backend now: a test that runs the CLI in-process (its configure_jax sets the CPU device
# count) can then no longer change the 4 devices, whatever order the tests run in.
jax.devices()


@pytest.fixture
def compile_counter() -> CompileCounter:
    """Counts XLA compilations inside ``with compile_counter:`` blocks (each block restarts at 0)::

        def test_second_call_compiles_nothing(compile_counter):
            f(x)                              # compiles
            with compile_counter:
                f(x)                          # same shapes: cached
            assert compile_counter.count == 0, compile_counter.names
    """
    return CompileCounter()


@pytest.fixture(autouse=True, scope="module")
def _fresh_program_cache():
    """Forget every compiled program after each test module. The whole suite in ONE process compiled
    programs until XLA:CPU segfaulted inside backend_compile_and_load (three clean-clone runs, each at
    tests/test_sharding.py after ~1300 tests; that file alone passes; compiling one program at a time
    did not help): a process-wide accumulation of loaded executables is the suspect, not yet proven.
    Tests that count compilations do so inside one module."""
    yield
    from ncflow.batch import programs

    programs.clear_cache()
    jax.clear_caches()
