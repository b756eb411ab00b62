"""Parameter sweeps: a TOML grid of problems (:mod:`.config`), run shape group by shape group and
written as resumable plain files (:mod:`.run`; the file format is documented there), read back as a
pandas DataFrame (:mod:`.frame`, optional)."""

from ncflow.sweep.config import (
                                 LANE_KEYS,
                                 PROBLEM_SPECS,
                                 SOLVER_SPECS,
                                 SweepConfig,
                                 SweepError,
                                 SweepPoint,
                                 load_config,
                                 parse_config,
)
from ncflow.sweep.frame import sweep_table
from ncflow.sweep.run import SweepReport, check_out_dir, is_complete, load_sweep, run_sweep, write_summary

__all__ = ["LANE_KEYS", "PROBLEM_SPECS", "SOLVER_SPECS", "SweepConfig", "SweepError", "SweepPoint", "SweepReport",
           "check_out_dir", "is_complete", "load_config", "load_sweep", "parse_config", "run_sweep", "sweep_table",
           "write_summary"]
