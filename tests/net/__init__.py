"""rtcxfer.net: aiortc peers, the signaling server and client, and the two-host bed."""
