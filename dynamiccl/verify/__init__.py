"""``dynamiccl verify``: did the table make the user's job faster, measured on their own cluster?

- :mod:`dynamiccl.verify.run`: runs the job per arm (A = NCCL alone, B = with the table through the
  launcher), reads the step timer's rank files and writes the JSON and the report;
- :mod:`dynamiccl.verify.stats`: the comparison (slowest-rank medians, the control's drift, the
  bootstrap interval and the verdict), written to be read top to bottom.
"""

# The ``format`` of the verify.json that ``dynamiccl verify`` writes (and ``dynamiccl report --verify``
# reads); here, so that the report reads it without importing the runner.
FORMAT = "dynamiccl-verify/1"
