"""The outbound orchestrator: the queue's gates, budgets, quiet hours and provider pacing."""
