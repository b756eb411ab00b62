"""ONE run's state and how it moves: state spaces (full (W, H, b) or collapsed (W, M, G, b),
:mod:`.spaces`), steppers (GD, optax, the escape recorder, :mod:`.steppers`; gradient flow,
:mod:`.flow`), starts from a key (:mod:`.starts`) and the replay of a run (:mod:`.replay`).
Written for one run; the batch machinery in :mod:`ncflow.batch` vmaps it."""
