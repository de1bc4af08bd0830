"""rtcxfer.client: the client, choosing a worker, packing and the pack cache."""
