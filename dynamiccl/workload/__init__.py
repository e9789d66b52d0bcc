"""The workload generator: Megatron-style training steps from a model, a parallel layout and a cluster.

``spec`` (:class:`~dynamiccl.workload.spec.WorkloadSpec`, what to generate), ``models`` (model
configurations), ``layout`` (parallel layout and rank order), one module per parallelism
(``tensor_parallel``, ``pipeline_parallel``, ``data_parallel``, ``context_parallel``,
``expert_parallel``), ``flops`` and ``context`` (compute time), ``generator`` (one step as a trace).
"""
