"""Planning and metering cost: the hardware/price catalog, the step planner, the live ledger.

``catalog`` (dated, sourced prices and datasheet peaks; ``hourly_price``), ``calibrate``
(this CPU's measured peak), ``meta_model`` + ``trace`` + ``estimate`` (a step's memory
and FLOPs from the config alone), ``workload`` (rows and lengths from the data),
``planner`` + ``recommend`` (per-GPU fit, hours, dollars, the cheapest setup) and
``ledger`` (dollars, MFU and utilization while a run trains).
"""
