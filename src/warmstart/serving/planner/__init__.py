"""The resource planner (JIZHI's resource manager): traffic logs → fitted service models →
simulated pipeline → searched per-stage knobs → a server config (``warmstart serve plan``).

``fit`` (service-time models, request mix, per-request overhead), ``simulate`` (discrete-event
simulation of stages, micro-batching, admission and cores), ``search`` (capacity by bisection,
knobs by coordinate descent), ``plan`` (the end-to-end command and the written config).
"""
