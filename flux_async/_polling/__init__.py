"""How often to poll: the polling policies, the hazard and latency models, progress, the poll
budget, the adaptive window, regimes.
"""
