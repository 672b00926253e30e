"""Every benchmark (`python -m bench`), one percentile rule and the service's playback clock."""
