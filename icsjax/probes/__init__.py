"""In-loop probes (docs/measurements.md): gradient-ICS and the landscape along
the update read one training step itself; curvature reads the state after it.

Each module holds a probe's pure maths and its ``records`` function, which
icsjax.records registers as a record kind.
"""
