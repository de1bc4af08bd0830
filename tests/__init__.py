"""rtcxfer's tests, arranged like the package they test (see ``support`` for shared helpers)."""
