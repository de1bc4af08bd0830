"""rtcxfer.web: the browser client and its serving."""
