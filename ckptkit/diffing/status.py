"""The status of a tensor pair in a diff, as the reports and ``--json`` name it."""

COMPARED, SHAPE_CHANGED, ONLY_A, ONLY_B = "compared", "shape_changed", "only_a", "only_b"
UNSUPPORTED = "unsupported"  # a side holds a tensor ckptkit cannot read: not comparable
