"""Processes: the supervisor, the plan it runs, stop escalation, the parent-death lifeline."""
