"""The engine that runs tasks: the scheduler, the active-task limiter, the downloader and its
helpers (atomic writes, deadlines, redirects, EDF order), the pipeline.
"""
