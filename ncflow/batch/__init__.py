"""MANY runs: where the lanes live (:mod:`.layout`), what they cost (:mod:`.memory`), the
host-side lane table (:mod:`.lanes`), the stop rule (:mod:`.stop`), the process-wide cache of
compiled programs (:mod:`.programs`) and the host loop that drives them (:mod:`.loop`)."""
