"""`make bench`: the same clips and face crops through four stages, side by side.

floor (in process, in each member's runtime), triton_stage (gRPC), service (the gateway end to
end) and prototype (eager PyTorch, frame by frame, as the first server), then report (table,
ratios, JSON, plots). `python -m tests.bench --help` lists the knobs.
"""
