"""Disk safety: everything that touches a file on behalf of a peer.

Peer paths are checked and opened without following symlinks, ZIP packages are extracted
safely (while they arrive, or afterwards), received files become visible only once complete
and verified, and interrupted uploads are kept for a resume. Nothing here knows about the
network.
"""
