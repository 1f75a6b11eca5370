"""Primitives every subsystem uses: the clock, backoff, bounded bodies, text and path hygiene, log
redaction, the crash guard.
"""
