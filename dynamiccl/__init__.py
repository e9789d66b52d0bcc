"""dynamiccl: learned NCCL algorithm / protocol / channel choices for large-transformer training.

Data flow (one module or package per stage):

    workload.generator / profiler  ->  trace (Parquet)  ->  cost model  ->  tuning env  ->  policy
    ->  table (JSON / NCCL example CSV / plugin text)  ->  tuner plugin + launcher  ->  reports
"""

__version__ = "0.1.0"
