"""The batch command: input files, prompts, the ledger, the run, images, progress, the report, the
CLI.
"""
