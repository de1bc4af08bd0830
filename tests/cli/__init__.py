"""rtcxfer.cli: the ``rtcxfer`` command end to end, as real processes."""
