"""``dynamiccl measure``: time the collectives a trace issues on the user's own cluster, under NCCL's
default and every configuration the tuner plugin can force, through the plugin's override.

- :mod:`~dynamiccl.measure.plan`: what to time (items: collective x communicator shape x size band,
  and their configurations) and where each shape runs on the job's ranks;
- :mod:`~dynamiccl.measure.schedule`: the order, the budget and the pruning rule (rank 0 decides);
- :mod:`~dynamiccl.measure.gemm`: the GEMM-beside mode;
- :mod:`~dynamiccl.measure.worker`: one rank, started under the user's launcher;
- :mod:`~dynamiccl.measure.run`: the command: runs the job, shows progress, writes the calibration
  CSV, the nccl-tests-style table and the JSON report.

The timing loop is :func:`dynamiccl.costmodel.live.time_op`, shared with the live cost model.
"""
