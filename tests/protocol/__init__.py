"""rtcxfer.protocol: the sans-IO frame codec, engine, authentication and the legacy codec."""
