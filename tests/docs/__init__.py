"""docs/protocol.md: the document against the code, and a client written from it alone."""
