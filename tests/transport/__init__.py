"""rtcxfer.transport: the plugin contract, the plugin host, and third-party transports."""
