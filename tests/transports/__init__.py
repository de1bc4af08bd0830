"""rtcxfer.transports: the built-in rtc-chunked and direct transports."""
