"""The one table of ncflow's settings: every problem and solver setting declared once.

Each :class:`Setting` states the API field's name and default, the accepted kind and range (or
choices), when it applies, its command-line flag, its TOML table and its help text. Everything
else is generated from this table: the validation of :class:`~ncflow.problem.Problem` and
:class:`~ncflow.config.Config`, the flags of ``ncflow theory|run|sweep`` and the sweep TOML schema,
so the API, the CLI and config files share one default and one message per setting.

Errors raised here are the section's error class (:class:`~ncflow.errors.ProblemError` for
[problem], :class:`~ncflow.errors.ConfigError` for [solver]) with ``.field`` set to the API name;
the CLI and the sweep loader call the setting by its flag or TOML key with ``err.named(...)``.

A setting "applies" only where another setting takes certain values (``momentum`` only with
optimizer momentum/nesterov, ``alpha`` only with loss rescaled-mse, ...). One given where it does
not apply is refused by :func:`check_applies` with one line naming it. "Given" means: a flag on the
command line, a key in the TOML file, a Config field that is not None (such settings default to
None = "the default where it applies"), a Problem coefficient that differs from its default (a
coefficient is always a number: the engine stacks it over a batch's lanes).

A leaf above :mod:`ncflow.errors`: imports only the standard library, numpy and ncflow.errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np

from ncflow.errors import ConfigError, NcflowError, ProblemError

__all__ = ["ACTIVATIONS", "DTYPES", "ENGINES", "FLOAT32_MAX", "FLOAT32_TINY", "INT32_MAX", "LANE_KEYS", "LOSSES",
           "MATMUL_PRECISIONS", "MAX_CPU_DEVICES", "MAX_DEPTH", "OPTIMIZERS", "PLANS", "PROBLEM", "SETTINGS", "SOLVER",
           "STARTS", "STEP_LAYOUTS", "STOP_RULES", "Setting", "check_applies", "check_required", "field_defaults"]

#: the largest int32: step counts, chunk lengths and lane counts must fit in one
INT32_MAX = 2**31 - 1
#: the largest finite float32: every real-valued setting must be representable in float32
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: the smallest normal float32: a nonzero value below it becomes 0 or a subnormal in a float32 run
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
#: the most XLA CPU devices one process may ask for (``--cpu-devices``): each one costs start-up
#: time and memory (1024 take ~10 s and ~0.7 GB on a 2-core machine; 100,000 grew by ~1 GB per
#: 30 s without ever starting), and more devices than cores only add padding
MAX_CPU_DEVICES = 1024

#: choices
LOSSES = ("mse", "rescaled-mse")
DTYPES = ("float32", "float64")
ENGINES = ("auto", "full", "collapsed")
OPTIMIZERS = ("gd", "momentum", "nesterov", "adam", "flow")
STARTS = ("gaussian", "orthogonal", "small", "saddle")
STOP_RULES = ("certified", "converged")
PLANS = ("auto", "cpu", "wide")
MATMUL_PRECISIONS = ("float32", "tf32", "bf16")
STEP_LAYOUTS = ("vmap", "lanes")
#: activations of a deep UFM's hidden layers (THEORY §9; the output layer is linear)
ACTIVATIONS = ("linear", "relu")
#: the most weight matrices of a deep UFM (``depth``)
MAX_DEPTH = 64

_ERRORS = {"problem": ProblemError, "solver": ConfigError}


def _is_array(v) -> bool:
    """A numpy/JAX array (not a numpy scalar): what the engine puts in coefficient fields."""
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic)


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its API field, accepted values, where it applies and how it is spelled.

    Attributes:
        name: the API field (``Problem.K``, ``Config.max_steps``); also the TOML key.
        section: "problem" or "solver" (the TOML table and the error class).
        kind: "int", "float", "bool", "choice", "sizes" (a list of at least 2 integers in [low, high],
            e.g. class sizes; the text form is comma-separated, ``40,10,2,2``), "ints" (one integer
            or a list of at least 1, each in [low, high]: the deep UFM's hidden widths) or "floats" (a
            list of numbers in the float range: per-layer coefficients).
        default: the value used when the setting is not given (and applies); None = "auto",
            resolved where it is used (``auto`` says how).
        help: one line for ``--help`` and the docs.
        low, high: bounds of "int"/"float" (None: unbounded; floats are always finite and within
            float32); ``low_open``/``high_open`` exclude the bound.
        choices: the accepted strings of a "choice".
        auto: what None means (the setting then also accepts None and the string "auto").
        unset: the API field defaults to None ("not given") and ``default`` is used where the
            setting applies, so that a setting given where it does not apply can be told apart.
        applies: ``(setting, values)``: used only when that setting takes one of ``values``.
        required: must be given wherever it applies (init saddle's ``active``).
        flag, short: the command-line flag and its short alias (None: no flag).
        negate: a bool whose flag turns it off (``--no-bias``, ``--no-early-stop``).
        commands: the sub-commands that have the flag.
        toml: whether a sweep config accepts the key.
        hashed: whether its default enters a sweep's normalized config (and hash) when not given;
            False for settings added to the format later, so older sweeps keep their hash.
        lane: a per-run lane of a batch (points of one batch may differ in it).
        arrays: may hold an array of shape (runs,) inside the engine (problem coefficients).
        per_layer: a "float" that also accepts a list of numbers, one per weight matrix of a deep
            UFM (``lambda_w``; comma-separated on the command line); a list is returned as a tuple.
    """

    name: str
    section: str
    kind: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    auto: str | None = None
    unset: bool = False
    applies: tuple | None = None
    required: bool = False
    flag: str | None = None
    short: str | None = None
    negate: bool = False
    commands: tuple = ("run", "sweep")
    toml: bool = True
    hashed: bool = True
    lane: bool = False
    arrays: bool = False
    per_layer: bool = False

    # ----------------------------------------------------------------- what is accepted
    @property
    def field_default(self):
        """The API field's default: None where the setting is ``unset`` or "auto"."""
        return None if self.unset else self.default

    @property
    def range_text(self) -> str:
        """The accepted values in words, e.g. ``an integer in [1, 2147483647]``."""
        if self.kind == "bool":
            text = "true or false (True or False in Python)"
        elif self.kind == "sizes":
            text = f"a comma-separated list of at least 2 integers, each in [{self.low}, {self.high}]"
        elif self.kind == "ints":
            text = f"an integer in [{self.low}, {self.high}] or a comma-separated list of such integers"
        elif self.kind == "floats":
            text = f"a list of finite numbers {'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.kind == "choice":
            text = "one of " + ", ".join(f'"{c}"' for c in self.choices)
        elif self.kind == "int":
            if self.high is None:
                text = f"an integer >= {self.low}"
            else:
                text = f"an integer in [{self.low}, {self.high}]"
        else:
            if self.high is None:
                text = f"a finite number {'>' if self.low_open else '>='} {_num(self.low)}"
            else:
                text = (f"a number in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                        f"{')' if self.high_open else ']'}")
        return text + (' or "auto"' if self.auto else "")

    def default_text(self) -> str:
        """The default in words, for help texts."""
        if self.default is None:
            return self.auto or "none"
        if self.unset and self.applies:
            cond, values = self.applies
            return f"{_num(self.default)} (with {cond} {' or '.join(map(str, values))})"
        return _num(self.default)

    def error(self, message: str) -> NcflowError:
        """The section's error for ``message`` (which starts with the name), ``.field`` set."""
        return _ERRORS[self.section](message, field=self.name)

    def check(self, value):
        """The normalized value (Python int/float/bool/str, None for "auto"/not given, or a
        validated array for an ``arrays`` setting), or raise the section's error naming the
        setting and the accepted range. Bools are not numbers, strings are not numbers, numpy
        scalars become Python scalars (never wrapped around), floats must be finite in float32."""
        if value is None and (self.auto or self.unset):
            return None
        if self.auto and isinstance(value, str) and value == "auto":
            return None
        def bad() -> NcflowError:  # built only when raised: the repr of a large array is slow
            return self.error(f"{self.name} must be {self.range_text}, got {value!r}")

        if self.kind == "bool":
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            raise bad()
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return str(value)
            raise bad()
        if self.kind == "sizes":
            return self._check_sizes(value, bad)
        if self.kind == "ints":
            return self._check_ints(value, bad)
        if self.kind == "floats":
            return self._check_floats(value, bad)
        if self.per_layer and isinstance(value, (list, tuple)):
            return self._check_per_layer(value)
        if self.arrays and _is_array(value):
            return self._check_array(value, bad)
        if self.kind == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise bad()
            v = int(value)
            if v < self.low or (self.high is not None and v > self.high):
                raise bad()
            return v
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise bad()
        v = float(value)
        if not self._in_range(np.asarray(v)):
            raise bad()
        if abs(v) > FLOAT32_MAX:
            raise self.error(f"{self.name} must be {self.range_text} and at most {FLOAT32_MAX:.4g} (the "
                             f"largest float32), got {value!r}")
        return v

    def _in_range(self, a: np.ndarray) -> bool:
        if not np.all(np.isfinite(a)):
            return False
        if self.low is not None and np.any(a <= self.low if self.low_open else a < self.low):
            return False
        return not (self.high is not None and np.any(a >= self.high if self.high_open else a > self.high))

    def _check_array(self, value, bad):
        try:
            dt = np.dtype(value.dtype)
            a = np.asarray(value, dtype=np.float64)
        except Exception:  # e.g. a tracer: coefficients are validated outside of jit
            raise bad() from None
        if not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)) or not self._in_range(a):
            raise bad()
        if np.any(np.abs(a) > FLOAT32_MAX):
            raise bad()
        return value

    def _check_sizes(self, value, bad):
        """A tuple of Python ints (from a list, tuple, 1-D integer array or "40,10,2,2"); a 2-D array
        (the engine's per-lane values, one row per lane) is range-checked and kept."""
        if self.arrays and _is_array(value) and np.ndim(value) == 2:
            return self._check_array(value, bad)
        if isinstance(value, str):
            try:
                value = [int(t) for t in value.split(",")]
            except ValueError:
                raise bad() from None
        if _is_array(value):
            if np.ndim(value) != 1:
                raise bad()
            value = list(np.asarray(value))
        if not isinstance(value, (list, tuple)) or len(value) < 2:
            raise bad()
        out = []
        for v in value:
            if isinstance(v, (bool, np.bool_)):
                raise bad()
            if isinstance(v, (float, np.floating)) and float(v).is_integer():
                v = int(v)
            if not isinstance(v, (int, np.integer)) or not (self.low <= int(v) <= self.high):
                raise bad()
            out.append(int(v))
        return tuple(out)

    def _check_ints(self, value, bad):
        """One Python int, or a tuple of them (from a list, tuple or 1-D integer array); no text:
        the command line splits its comma-separated form before the check."""
        if _is_array(value):
            if np.ndim(value) != 1 or not np.issubdtype(np.asarray(value).dtype, np.integer):
                raise bad()
            value = [int(v) for v in np.asarray(value)]
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not items:
            raise bad()
        for v in items:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise bad()
            if not self.low <= int(v) <= self.high:
                raise bad()
        return tuple(int(v) for v in items) if isinstance(value, (list, tuple)) else int(value)

    def _check_floats(self, value, bad):
        """A tuple of Python floats (from a list or tuple of numbers), or an ``arrays`` setting's
        array (one row per lane in a batch), range-checked and kept."""
        if self.arrays and _is_array(value):
            return self._check_array(value, bad)
        if not isinstance(value, (list, tuple)):
            raise bad()
        out = []
        for v in value:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise bad()
            if not self._in_range(np.asarray(float(v))) or abs(float(v)) > FLOAT32_MAX:
                raise bad()
            out.append(float(v))
        return tuple(out)

    def _check_per_layer(self, value) -> tuple:
        """A ``per_layer`` list: a tuple of at least one float, each as the scalar check wants."""
        def bad() -> NcflowError:
            return self.error(f"{self.name} must be {self.range_text} or a list of such numbers (one per weight "
                              f"matrix), got {list(value)!r}")
        if not value:
            raise bad()
        out = []
        for v in value:
            try:
                out.append(dataclasses.replace(self, per_layer=False, arrays=False).check(v))
            except NcflowError:
                raise bad() from None
        return tuple(out)

    def applies_to(self, values: Mapping[str, Any]) -> bool:
        """Whether the setting is used under ``values`` (missing settings take their defaults)."""
        if self.applies is None:
            return True
        cond, allowed = self.applies
        return values.get(cond, SETTINGS[cond].field_default) in allowed


def _p(name, kind, default, help, **kw) -> Setting:
    return Setting(name, "problem", kind, default, help, commands=kw.pop("commands", ("theory", "run", "sweep")),
                   **kw)


def _s(name, kind, default, help, **kw) -> Setting:
    return Setting(name, "solver", kind, default, help, **kw)


_COEF = dict(low=0.0, lane=True, arrays=True)
_RESCALED = ("loss", ("rescaled-mse",))

_TABLE = (
    # ------------------------------------------------------------------ [problem]
    _p("K", "int", 10, "number of classes K", low=2, high=2**20, flag="--classes", short="-K"),
    _p("d", "int", 10, "feature dimension d", low=1, high=2**16, flag="--dim", short="-d"),
    _p("n", "int", 100, "samples per class n (N = n K < 2^31)", low=1, high=2**24, flag="--per-class", short="-n"),
    _p("lambda_w", "float", 5e-4, "weight decay λ_W on W (depth > 1: on every weight matrix, or a comma-separated "
       "list of depth values λ_1,...,λ_L, one per weight matrix; the field keeps the output layer's λ_L)",
       flag="--lambda-w", per_layer=True, **_COEF),
    _p("lambda_h", "float", 5e-4, "weight decay λ_H on H", flag="--lambda-h", **_COEF),
    _p("lambda_b", "float", 0.0, "weight decay λ_b on b (0: unregularized bias; must be 0 without a bias)",
       flag="--lambda-b", **_COEF),
    _p("bias", "bool", True, "whether the model has a bias b (False: bias-free, b = 0)", flag="--no-bias",
       negate=True),
    _p("loss", "choice", "mse", "loss: mse, or rescaled-mse (per sample α(z_y − M)² + Σ_{j≠y} z_j²)",
       choices=LOSSES, flag="--loss"),
    _p("alpha", "float", 1.0, "α of rescaled-mse", low=0.0, low_open=True, applies=_RESCALED, flag="--alpha",
       lane=True, arrays=True),
    _p("target_scale", "float", 1.0, "target scale M of rescaled-mse", low=0.0, low_open=True, applies=_RESCALED,
       flag="--target-scale", lane=True, arrays=True),
    _p("dtype", "choice", "float32", "floating-point type of the runs (float64 needs jax_enable_x64)",
       choices=DTYPES, flag="--dtype", commands=("run", "sweep")),
    _p("class_sizes", "sizes", None, "per-class sample counts n_1,...,n_K (imbalanced classes; sets K; N = Σ n_k "
       "< 2^31; default: n for every class)", low=1, high=2**24, unset=True, flag="--class-sizes", lane=True,
       arrays=True, toml=False),
    # the deep UFM (THEORY §9): added after the sweep format, so not in a sweep's hash unless given
    _p("depth", "int", 1, "number of weight matrices L between the free features H and the output (1: the UFM; "
       "> 1: the deep UFM of THEORY §9)", low=1, high=MAX_DEPTH, flag="--depth", hashed=False),
    _p("widths", "ints", None, "hidden widths d_1,...,d_{L-1} of a deep UFM (d_0 = d): one value for every hidden "
       "layer or a comma-separated list of depth - 1 values (default: d for every hidden layer)", low=1, high=2**16,
       unset=True, flag="--widths", short="--width", hashed=False),
    _p("activation", "choice", "linear", "activation of a deep UFM's hidden layers (the output layer is linear): "
       "linear, or relu (balanced classes, no bias: THEORY §9.6)", choices=ACTIVATIONS, flag="--activation",
       hashed=False),
    _p("lambda_hidden", "floats", None, "weight decays λ_1,...,λ_{L-1} of a deep UFM's hidden weight matrices "
       "(None: lambda_w for every layer; set through a list lambda_w)", low=0.0, unset=True, arrays=True,
       toml=False, commands=()),
    # ------------------------------------------------------------------ [solver]
    _s("runs", "int", 1000, "number of random starts R", low=1, high=INT32_MAX, flag="--runs", short="-R",
       lane=True),
    _s("seed", "int", 0, "master seed; run i starts from fold_in(key(seed), i)", low=0, high=2**32 - 1,
       flag="--seed", lane=True),
    _s("lr", "float", None, "step size (flow: its initial dt)", low=0.0, low_open=True,
       auto="the optimizer's default: 1/L = theory.default_step_size for gd and flow, (1/L)(1 − μ) for "
            "momentum/nesterov, 1e-3 for adam", flag="--lr", lane=True),
    _s("max_steps", "int", 30_000, "step budget per run", low=1, high=INT32_MAX, flag="--max-steps"),
    _s("init_scale", "float", 1.0, "Gaussian init scale: entries N(0, scale²/d); 0 = start at the origin", low=0.0,
       flag="--init-scale", lane=True),
    _s("engine", "choice", "auto", "state representation of gd, momentum and nesterov (auto: the cheaper exact one)",
       choices=ENGINES, flag="--engine"),
    _s("early_stop", "bool", True, "stop each run when it converges or diverges (False: every run takes "
       "exactly max_steps steps, for throughput benchmarks)", flag="--no-early-stop", negate=True),
    _s("stop", "choice", "certified", "stop rule: certified (a gd run stops once THEORY §8 certifies that it "
       "converges to a global minimizer; runs without a certificate stop as with converged) or converged (every "
       "run until stationary: convergence rates, full histories)", choices=STOP_RULES, flag="--stop",
       hashed=False),
    _s("chunk", "int", 100, "steps between two stopping checks", low=1, high=INT32_MAX, flag="--chunk"),
    _s("group", "int", None, "runs per cache group", low=1, high=INT32_MAX,
       auto="chosen so a group's state is ~256 KiB", flag="--group"),
    _s("plan", "choice", "auto", "execution plan: cpu (cache-sized groups stepped one after another, the stop rule "
       "on the host after every chunk) or wide (all lanes of a device in ONE vmapped step, the stop rule on the "
       "device, the host visited about once a second); auto: cpu on CPUs, wide on GPUs and TPUs", choices=PLANS,
       flag="--plan", hashed=False),
    _s("matmul_precision", "choice", "float32", "precision of the float32 matrix products of the steps: float32 "
       "(full, the default on every platform), or the opt-in reduced tf32 / bf16 (on a CPU emulated by rounding "
       "the products' operands); float64 runs ignore it", choices=MATMUL_PRECISIONS, flag="--matmul-precision",
       hashed=False),
    _s("step_layout", "choice", "vmap", "how the wide plan steps a device's lanes: vmap (the one-run step vmapped, "
       "the default) or lanes (an opt-in: the state with the run axis last and every small product a multiply-add "
       "across lanes; plan wide, engine collapsed, gd, mse, one-hot labels, full-precision products; not measured "
       "faster on a GPU yet)", choices=STEP_LAYOUTS, flag="--step-layout", hashed=False),
    _s("gtol", "float", None, "stationarity tolerance on the gradient norm", low=0.0, low_open=True,
       auto="from the dtype and the problem", flag="--gtol"),
    _s("history", "bool", False, "record scalar diagnostics at log-spaced steps", flag="--history"),
    _s("progress", "bool", None, "progress bar on stderr", auto="only when stderr is a terminal", toml=False,
       commands=()),
    _s("lanczos_iters", "int", 32, "Lanczos steps used to look for negative curvature", low=2, high=4096,
       flag="--lanczos-iters"),
    _s("memory_limit_bytes", "int", None, "refuse batches estimated above this many bytes", low=1,
       high=2**63 - 1, auto="80% of the free memory", toml=False, commands=()),
    _s("optimizer", "choice", "gd", "gd, momentum (heavy ball), nesterov, adam (optax), or flow (gradient flow "
       "by an adaptive ODE solver)", choices=OPTIMIZERS, flag="--optimizer", hashed=False),
    _s("momentum", "float", 0.9, "momentum coefficient μ", low=0.0, high=1.0, high_open=True, unset=True,
       applies=("optimizer", ("momentum", "nesterov")), flag="--momentum", hashed=False),
    _s("beta1", "float", 0.9, "Adam β1", low=0.0, high=1.0, high_open=True, unset=True,
       applies=("optimizer", ("adam",)), flag="--beta1", hashed=False),
    _s("beta2", "float", 0.999, "Adam β2", low=0.0, high=1.0, high_open=True, unset=True,
       applies=("optimizer", ("adam",)), flag="--beta2", hashed=False),
    _s("adam_eps", "float", 1e-8, "Adam ε", low=0.0, low_open=True, unset=True, applies=("optimizer", ("adam",)),
       flag="--adam-eps", hashed=False),
    _s("flow_time", "float", None, "time horizon of the gradient flow", low=0.0, low_open=True,
       auto="until stationary or max_steps solver steps", applies=("optimizer", ("flow",)), flag="--flow-time",
       hashed=False),
    _s("rtol", "float", None, "relative tolerance of the flow's adaptive solver", low=0.0, low_open=True,
       auto="1e-10 in float64, 1e-6 in float32", applies=("optimizer", ("flow",)), flag="--rtol", hashed=False),
    _s("atol", "float", None, "absolute tolerance of the flow's adaptive solver", low=0.0, low_open=True,
       auto="1e-12 in float64, 1e-8 in float32", applies=("optimizer", ("flow",)), flag="--atol", hashed=False),
    _s("init", "choice", "gaussian", "kind of start: gaussian, orthogonal, small, or saddle (a critical point "
       "plus a perturbation)", choices=STARTS, flag="--init", hashed=False),
    _s("active", "int", None, "active directions s of the saddle start", low=0, high=2**16, unset=True,
       applies=("init", ("saddle",)), required=True, flag="--active", hashed=False),
    _s("perturb", "float", 1e-3, "size of the saddle start's Gaussian perturbation", low=0.0, unset=True,
       applies=("init", ("saddle",)), flag="--perturb", hashed=False),
)

#: every setting by name, in table order (problem first)
SETTINGS: dict[str, Setting] = {s.name: s for s in _TABLE}
#: names of the [problem] and [solver] settings
PROBLEM = tuple(s.name for s in _TABLE if s.section == "problem")
SOLVER = tuple(s.name for s in _TABLE if s.section == "solver")
#: per-run lanes of a batch: points that differ only in these share one compiled batch
LANE_KEYS = tuple(s.name for s in _TABLE if s.lane)


def field_defaults(section: str) -> dict:
    """``{name: API field default}`` of a section's settings."""
    return {s.name: s.field_default for s in _TABLE if s.section == section}


def check_applies(values: Mapping[str, Any], given: Iterable[str]) -> None:
    """Refuse the first setting (in table order) of ``given`` that does not apply under ``values``
    (settings missing from ``values`` take their defaults): the section's error, ``.field`` set."""
    given = set(given)
    for s in _TABLE:
        if s.name in given and not s.applies_to(values):
            cond, allowed = s.applies
            actual = values.get(cond, SETTINGS[cond].field_default)
            raise s.error(f"{s.name} is only used with {cond} {' or '.join(map(str, allowed))} "
                          f"(got {cond} {actual!r})")


def check_required(values: Mapping[str, Any]) -> None:
    """Refuse a ``required`` setting that applies under ``values`` but is None."""
    for s in _TABLE:
        if s.required and s.applies_to(values) and values.get(s.name) is None:
            cond, allowed = s.applies
            raise s.error(f"{s.name} is required by {cond} {' or '.join(allowed)} ({s.help})")
