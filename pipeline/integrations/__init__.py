"""Integrations with other frameworks: a Pipecat TTS service and a Wyoming (Home Assistant) server.

Each module imports its framework (pipecat, wyoming) itself, so nothing here is
loaded by the core service, and neither module imports torch: both talk to a
running service through `pipeline.client`. Install with the extras
`xtts-stream[pipecat]` or `xtts-stream[wyoming]`.
"""
