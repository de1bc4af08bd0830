"""The network edge: signaling, the WebRTC peer and the link between a data channel and a
session's protocol engine. The only package that imports aiortc and websockets.
"""
