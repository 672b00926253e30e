"""The wire: every message type, the codec, ZeroMQ frames, keys and run paths."""
