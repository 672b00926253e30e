"""The XTTS fast path: own batched decode loop over coqui's weights, incremental vocoder."""
