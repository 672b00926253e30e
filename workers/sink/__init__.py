"""The sink process: audio played or written on the service's machine."""
